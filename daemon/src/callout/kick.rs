//! Ending the NATS connections a session was admitted with, when the session ends: the
//! server's kick request (`$SYS.REQ.SERVER.<server id>.KICK` with the connection's `cid`),
//! sent through a user of the system account, which the server routes to whichever server
//! of its cluster holds the connection.

use std::time::Duration;

use serde::Deserialize;

use crate::store::NatsConnection;

/// How long one kick waits for its server's answer.
const KICK_TIMEOUT: Duration = Duration::from_secs(2);

/// How many kicks are in flight at once.
const KICKS_AT_ONCE: usize = 16;

/// How long all the kicks of one revocation may take together.
const KICKS_WITHIN: Duration = Duration::from_secs(5);

/// The system account's connection, for kicks.
#[derive(Debug, Clone)]
pub(crate) struct Kicker {
    client: async_nats::Client,
}

/// A server's answer to a monitoring request: an error, or none.
#[derive(Deserialize)]
struct ServerAnswer {
    #[serde(default)]
    error: Option<ServerError>,
}

#[derive(Deserialize)]
struct ServerError {
    #[serde(default)]
    description: String,
}

impl Kicker {
    /// Connects to the system account as `[nats_auth.system]` says, when the callout is on
    /// (`None` without that section: a warning says what is then not done), and checks that
    /// a server answers there: a user outside the system account is a start error, not a
    /// kick that silently reaches nobody.
    pub(crate) async fn connect(
        config: &crate::config::Config,
    ) -> Result<Option<Self>, crate::edge::EdgeError> {
        if !config.nats_auth.enabled {
            return Ok(None);
        }
        let Some(system) = config.nats_auth.system_connection(&config.nats) else {
            tracing::warn!(
                "[nats_auth.system] is not set: a session that ends leaves its NATS \
                 connections open until their access tokens expire"
            );
            return Ok(None);
        };
        let client = crate::edge::connect(&system).await?;
        let ping = client.request("$SYS.REQ.SERVER.PING", "".into());
        match tokio::time::timeout(KICK_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(Some(Self { client })),
            _ => Err(crate::edge::EdgeError::NotSystem),
        }
    }

    /// Asks each connection's server to close it, the newest tokens' first; returns how
    /// many it closed. A connection already gone, or a server gone (restarted: a new id), is
    /// no error: there is nothing left to end. Bounded: each kick waits at most
    /// [`KICK_TIMEOUT`], and all of them together [`KICKS_WITHIN`] (a session noted with
    /// more connections than that allows has the rest end when their tokens expire).
    pub(crate) async fn kick(&self, connections: &[NatsConnection]) -> usize {
        let mut newest_first: Vec<&NatsConnection> = connections.iter().collect();
        newest_first.sort_by_key(|c| std::cmp::Reverse(c.expires_at));
        let deadline = tokio::time::Instant::now() + KICKS_WITHIN;
        let mut closed = 0;
        for (i, chunk) in newest_first.chunks(KICKS_AT_ONCE).enumerate() {
            let kicks = futures::future::join_all(chunk.iter().map(|c| self.kick_one(c)));
            match tokio::time::timeout_at(deadline, kicks).await {
                Ok(kicks) => closed += kicks.into_iter().filter(|&k| k).count(),
                Err(_) => {
                    let left = newest_first.len() - i * KICKS_AT_ONCE;
                    tracing::warn!(
                        left,
                        "out of time for kicks; the rest end when their tokens expire"
                    );
                    break;
                }
            }
        }
        closed
    }

    async fn kick_one(&self, connection: &NatsConnection) -> bool {
        let subject = format!("$SYS.REQ.SERVER.{}.KICK", connection.server_id);
        let body = serde_json::json!({ "cid": connection.cid }).to_string();
        let request = self.client.request(subject, body.into());
        let answer = match tokio::time::timeout(KICK_TIMEOUT, request).await {
            Ok(Ok(message)) => message,
            Ok(Err(error)) => {
                tracing::debug!(server_id = %connection.server_id, cid = connection.cid,
                    %error, "no server took the kick (it is gone, or this user may not ask)");
                return false;
            }
            Err(_) => {
                tracing::warn!(server_id = %connection.server_id, cid = connection.cid,
                    "a kick went unanswered");
                return false;
            }
        };
        match serde_json::from_slice::<ServerAnswer>(&answer.payload) {
            Ok(ServerAnswer { error: None }) => true,
            Ok(ServerAnswer { error: Some(e) }) => {
                tracing::debug!(server_id = %connection.server_id, cid = connection.cid,
                    reason = %e.description, "the connection was gone already");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "a kick's answer was not a server's");
                false
            }
        }
    }
}

impl crate::service::Lanyard {
    /// Ends the NATS connections the auth callout admitted with sessions `session_ids`
    /// (from the store's notes), when a system account user is configured. Bounded: each
    /// kick waits at most [`KICK_TIMEOUT`].
    pub(crate) async fn end_nats_connections(&self, session_ids: &[String]) {
        if self.nats_kicker.is_none() || session_ids.is_empty() {
            return;
        }
        let now = crate::sessions::now();
        let mut connections = Vec::new();
        for session_id in session_ids {
            match self.store.nats_connections(session_id, now).await {
                Ok(found) => connections.extend(found),
                Err(error) => {
                    tracing::warn!(%session_id, %error,
                        "cannot read a session's NATS connections; they last until they expire");
                }
            }
        }
        self.kick_nats(&connections).await;
    }

    /// Ends these connections (see [`end_nats_connections`](Self::end_nats_connections)).
    pub(crate) async fn kick_nats(&self, connections: &[NatsConnection]) {
        let Some(kicker) = &self.nats_kicker else {
            return;
        };
        if connections.is_empty() {
            return;
        }
        let closed = kicker.kick(connections).await;
        tracing::info!(
            connections = connections.len(),
            closed,
            "ended the NATS connections of ended sessions"
        );
    }
}
