//! The auth callout's NATS side: `$SYS.REQ.USER.AUTH` in the daemons' queue group (so
//! several daemons share the decisions), each request bounded in size and counted against
//! `max_in_flight` like any command; one beyond the bound gets no answer (the server times
//! out and refuses the connection).

use std::sync::Arc;

use async_nats::Client;
use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::callout::NatsCallout;
use crate::service::Lanyard;

use super::{nats_error, EdgeError};

/// The subject nats-server sends authorization requests to.
pub(crate) const AUTH_SUBJECT: &str = "$SYS.REQ.USER.AUTH";

/// The header carrying the server's xkey on an encrypted request.
const SERVER_XKEY_HEADER: &str = "Nats-Server-Xkey";

/// Answers one request: opened (decrypted when the callout has an xkey), decided, sealed
/// for the server, sent.
async fn answer(
    client: &Client,
    lanyard: &Lanyard,
    callout: &NatsCallout,
    message: async_nats::Message,
    reply: async_nats::Subject,
) {
    let server_xkey = message
        .headers
        .as_ref()
        .and_then(|h| h.get(SERVER_XKEY_HEADER))
        .map(|v| v.as_str().to_owned());
    let server_xkey = server_xkey.as_deref();
    let Some(request) = callout.open(&message.payload, server_xkey) else {
        tracing::warn!(
            encrypted = server_xkey.is_some(),
            "an auth callout request this daemon cannot open (is [nats_auth] xkey_seed the \
             key the server's auth_callout.xkey names?); ignored"
        );
        return;
    };
    let response = lanyard.nats_authorize(callout, &request).await;
    if let Some(response) = response.and_then(|r| callout.seal(r, server_xkey)) {
        if let Err(error) = client.publish(reply, response.into()).await {
            tracing::warn!(%error, "cannot send an auth callout response");
        }
    }
}

/// Starts answering the server's authorization requests.
pub(crate) async fn serve(
    client: Client,
    lanyard: Arc<Lanyard>,
    callout: Arc<NatsCallout>,
    queue_group: String,
    max_request_bytes: usize,
    in_flight: Arc<tokio::sync::Semaphore>,
) -> Result<JoinHandle<()>, EdgeError> {
    let mut requests = client
        .queue_subscribe(AUTH_SUBJECT, queue_group)
        .await
        .map_err(nats_error("cannot serve the auth callout"))?;
    Ok(tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            if message.payload.len() > max_request_bytes {
                tracing::warn!(
                    bytes = message.payload.len(),
                    "an oversized auth callout request"
                );
                continue;
            }
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                tracing::warn!("at max_in_flight: an auth callout request is left unanswered");
                continue;
            };
            let (client, lanyard, callout) = (client.clone(), lanyard.clone(), callout.clone());
            tokio::spawn(async move {
                answer(&client, &lanyard, &callout, message, reply).await;
                drop(permit);
            });
        }
    }))
}
