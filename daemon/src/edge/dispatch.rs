//! One request: decoded into its proto type, run against the core, answered with the reply or the error envelope.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use lanyard_proto::{
    CallbackRequest, Command, Empty, ErrorBody, ErrorReply, LoginRequest, ProviderStatus,
    SharedChanges, StatusReply, ERROR_CODE_HEADER, ERROR_STATUS_HEADER,
};

use crate::error::{Error, ErrorCode};
use crate::providers::ProviderHealth;
use crate::service::Lanyard;
use secrecy::SecretString;

use super::auth::{authorize_admin, Caller};

/// What every request handler shares.
#[derive(Clone)]
pub(super) struct Context {
    pub(super) lanyard: Arc<Lanyard>,
    pub(super) admin_token: Arc<Option<SecretString>>,
    pub(super) callers: Arc<Vec<Caller>>,
    pub(super) max_request_bytes: usize,
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
    pub(super) max_in_flight: usize,
    pub(super) started: std::time::Instant,
}

impl Context {
    /// `admin.status`: what an operator checks first.
    pub(super) async fn status(&self) -> StatusReply {
        let health = self.lanyard.health().await;
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            requests_in_flight: (self.max_in_flight - self.in_flight.available_permits()) as u64,
            max_in_flight: self.max_in_flight as u64,
            events: health.events,
            shared_changes: if health.following_changes {
                SharedChanges::Following
            } else {
                SharedChanges::Reconnecting
            },
            providers: health.providers.iter().map(provider_status).collect(),
        }
    }
}

/// An instance's health as `admin.status` shows it.
pub(super) fn provider_status(health: &ProviderHealth) -> ProviderStatus {
    ProviderStatus {
        id: health.id.clone(),
        kind: health.kind.clone(),
        status: health.health.status,
        circuit: health.health.circuit,
        consecutive_failures: health.health.consecutive_failures,
        stuck_plugin_calls: health.health.stuck_plugin_calls as u64,
        error: health.error.clone(),
    }
}

pub(super) async fn handle(
    request: async_nats::service::Request,
    command: Command,
    context: Context,
) {
    let request_id = ulid::Ulid::new().to_string();
    let span = tracing::info_span!("command", command = command.name(), %request_id);
    let began = std::time::Instant::now();
    async move {
        let payload = &request.message.payload;
        let work = async {
            if command.is_admin() {
                authorize_admin(&context.admin_token, request.message.headers.as_ref())?;
            }
            run(command, &context, request.message.headers.as_ref(), payload).await
        };
        let result = AssertUnwindSafe(work)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!("command handler panicked");
                Err(Error::internal("the command failed unexpectedly"))
            });
        context.lanyard.events.metrics().request(
            &metric_name(command),
            result.as_ref().err().map(|e| e.code),
            began.elapsed().as_secs_f64(),
        );
        let (body, headers) = match result {
            Ok(body) => (body, HeaderMap::new()),
            Err(error) => {
                if error.code == ErrorCode::Internal {
                    tracing::error!(code = %error.code, reason = %error.message, "command failed");
                } else {
                    tracing::info!(code = %error.code, reason = %error.message, "command refused");
                }
                envelope(&error)
            }
        };
        if let Err(error) = request.respond_with_headers(Ok(body), headers).await {
            tracing::warn!(%error, "cannot send the reply");
        }
    }
    .instrument(span)
    .await
}

pub(super) async fn run(
    command: Command,
    context: &Context,
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<Bytes, Error> {
    let lanyard = &context.lanyard;
    let max_request_bytes = context.max_request_bytes;
    if payload.len() > max_request_bytes {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request is {} bytes; the limit is {max_request_bytes}",
                payload.len()
            ),
        ));
    }
    // Each command's future is boxed: `run`, and so every spawned request, stays as small
    // as its arguments instead of as large as the largest command (a callback's HTTP and
    // crypto state), which tokio would copy on every spawn.
    // A caller that names itself is checked (and rate limited) on every command.
    let caller = context.caller(headers)?;
    match command {
        Command::Login => reply(&Box::pin(lanyard.login(decode::<LoginRequest>(payload)?)).await?),
        Command::Callback => {
            reply(&Box::pin(lanyard.callback(decode::<CallbackRequest>(payload)?)).await?)
        }
        Command::Jwks => {
            empty(payload)?;
            reply(&lanyard.jwks())
        }
        Command::SessionVerify => reply(&Box::pin(lanyard.verify(decode(payload)?)).await?),
        Command::SessionRefresh => reply(&lanyard_proto::RefreshReply::new(
            Box::pin(lanyard.refresh(decode(payload)?)).await?,
        )),
        Command::SessionRevoke => reply(&Box::pin(lanyard.revoke(decode(payload)?)).await?),
        Command::SessionList => reply(&Box::pin(lanyard.list_sessions(decode(payload)?)).await?),
        Command::SessionRevokeAll => reply(&Box::pin(lanyard.revoke_all(decode(payload)?)).await?),
        Command::UserList => reply(&Box::pin(lanyard.list_users(decode(payload)?)).await?),
        Command::AdminUserGet => reply(&Box::pin(lanyard.admin_user(decode(payload)?)).await?),
        Command::UserDisable => {
            reply(&Box::pin(lanyard.set_disabled(decode(payload)?, true)).await?)
        }
        Command::UserEnable => {
            reply(&Box::pin(lanyard.set_disabled(decode(payload)?, false)).await?)
        }
        Command::UserDelete => reply(&Box::pin(lanyard.delete_user(decode(payload)?)).await?),
        Command::UserGet => reply(&Box::pin(lanyard.user(decode(payload)?)).await?),
        Command::TokenGet => reply(&Box::pin(lanyard.tokens.get(decode(payload)?, caller)).await?),
        Command::IdentityUnlink => reply(&Box::pin(lanyard.unlink(decode(payload)?)).await?),
        Command::DeviceStart => reply(&Box::pin(lanyard.device_start(decode(payload)?)).await?),
        Command::DeviceWait => reply(&Box::pin(lanyard.device_wait(decode(payload)?)).await?),
        Command::LoginWait => reply(&Box::pin(lanyard.login_wait(decode(payload)?)).await?),
        Command::AdminKeysRotate => {
            empty(payload)?;
            reply(&Box::pin(lanyard.rotate_keys()).await?)
        }
        Command::ProviderCreate => reply(&Box::pin(lanyard.admin.create(decode(payload)?)).await?),
        Command::ProviderUpdate => reply(&Box::pin(lanyard.admin.update(decode(payload)?)).await?),
        Command::ProviderPatch => reply(&Box::pin(lanyard.admin.patch(decode(payload)?)).await?),
        Command::ProviderDelete => reply(&Box::pin(lanyard.admin.delete(decode(payload)?)).await?),
        Command::ProviderGet => reply(&Box::pin(lanyard.admin.get(decode(payload)?)).await?),
        Command::ProviderList => {
            empty(payload)?;
            reply(&Box::pin(lanyard.admin.list()).await?)
        }
        Command::AdminStatus => {
            empty(payload)?;
            reply(&context.status().await)
        }
    }
}

/// A command's name in metrics: its subject after the version (`admin.user.get` apart from
/// `user.get`).
pub(super) fn metric_name(command: Command) -> String {
    if command.is_admin() {
        format!("admin.{}", command.name())
    } else {
        command.name().to_owned()
    }
}

/// Commands without arguments take `{}` or an empty body.
pub(super) fn empty(payload: &[u8]) -> Result<(), Error> {
    if !payload.is_empty() {
        decode::<Empty>(payload)?;
    }
    Ok(())
}

/// Decodes a request body, which must be one JSON object.
pub(super) fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(Error::bad_request("the request body must be a JSON object"));
    }
    serde_json::from_slice(payload).map_err(|e| Error::bad_request(format!("invalid request: {e}")))
}

pub(super) fn reply<T: Serialize>(value: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("cannot encode the reply: {e}")))
}

/// The error envelope: `{"error": {"code", "message"}}` plus the NATS micro headers.
pub(super) fn envelope(error: &Error) -> (Bytes, HeaderMap) {
    let body = ErrorReply {
        error: ErrorBody {
            code: error.code,
            message: error.message.clone(),
        },
    };
    let body = serde_json::to_vec(&body).expect("an error envelope (an enum, a string) encodes");
    let mut headers = HeaderMap::new();
    headers.insert(ERROR_CODE_HEADER, error.code.as_str());
    headers.insert(
        ERROR_STATUS_HEADER,
        error.code.status().to_string().as_str(),
    );
    (Bytes::from(body), headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn the_error_headers_are_the_ones_nats_micro_reads() {
        assert_eq!(ERROR_CODE_HEADER, async_nats::service::NATS_SERVICE_ERROR);
        assert_eq!(
            ERROR_STATUS_HEADER,
            async_nats::service::NATS_SERVICE_ERROR_CODE
        );
    }

    #[test]
    pub(super) fn the_envelope_carries_the_code_in_body_and_headers() {
        let (body, headers) = envelope(&Error::invalid_state());
        let reply: ErrorReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(reply.error.code, ErrorCode::InvalidState);
        assert_eq!(
            headers.get(ERROR_CODE_HEADER).map(|v| v.as_str()),
            Some("invalid_state")
        );
        assert_eq!(
            headers.get(ERROR_STATUS_HEADER).map(|v| v.as_str()),
            Some("400")
        );
    }
}
