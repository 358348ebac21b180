//! A client for [Lanyard](https://github.com/)'s NATS protocol: a typed call for every
//! command (the request and reply types are `lanyard-proto`'s, re-exported here), the
//! documented error codes as an enum, and local verification of session access tokens
//! against the daemon's JWKS.
//!
//! ```no_run
//! # async fn example() -> Result<(), lanyard_client::Error> {
//! use lanyard_client::{Client, LoginRequest};
//!
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let lanyard = Client::new(nats);
//! let login = lanyard
//!     .login(&LoginRequest {
//!         provider: "github".into(),
//!         redirect_uri: None,
//!         scopes: None,
//!         fetch_groups: false,
//!         return_to: None,
//!         login_hint: None,
//!         prompt: None,
//!         link_session: None,
//!         hosted: false,
//!     })
//!     .await?;
//! println!("send the browser to {}", login.authorization_url);
//! # Ok(())
//! # }
//! ```
//!
//! Local verification checks a token's signature, issuer, audience and expiry without a
//! request; it cannot see a revocation, which `session.verify` reads from the store:
//!
//! ```no_run
//! # async fn example(lanyard: lanyard_client::Client, token: &str) -> Result<(), lanyard_client::Error> {
//! let verifier = lanyard.verifier("lanyard", "lanyard");
//! verifier.follow_rotations().await?;
//! let claims = verifier.verify(token).await?;
//! println!("user {}", claims.sub);
//! # Ok(())
//! # }
//! ```

mod verify;

use std::time::Duration;

pub use lanyard_proto::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
pub use verify::Verifier;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Lanyard refused, with a documented code (`invalid_state`, `unauthorized`, ...).
    #[error("{code}: {message}")]
    Lanyard { code: ErrorCode, message: String },
    /// Lanyard refused with a code newer than this client knows.
    #[error("{code}: {message}")]
    Other { code: String, message: String },
    /// NATS could not carry the request, or no daemon answered in time.
    #[error("NATS: {0}")]
    Nats(String),
    /// The reply was not what the contract says.
    #[error("an unexpected reply: {0}")]
    Decode(String),
    /// A token that does not verify locally (signature, issuer, audience, expiry, key).
    #[error("the token does not verify: {0}")]
    InvalidToken(String),
}

impl Error {
    /// The Lanyard error code, for a refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Lanyard { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<async_nats::ConnectError> for Error {
    fn from(error: async_nats::ConnectError) -> Self {
        Error::Nats(error.to_string())
    }
}

/// A connection to Lanyard over an existing NATS client.
#[derive(Debug, Clone)]
pub struct Client {
    nats: async_nats::Client,
    prefix: String,
    caller_token: Option<String>,
    admin_token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// A client of the daemons under the default subject prefix (`lanyard`).
    pub fn new(nats: async_nats::Client) -> Self {
        Self {
            nats,
            prefix: "lanyard".into(),
            caller_token: None,
            admin_token: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// The daemons' `nats.subject_prefix`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Name this service on every request (`Lanyard-Caller-Token`), as `[[callers]]` knows it.
    pub fn with_caller_token(mut self, token: impl Into<String>) -> Self {
        self.caller_token = Some(token.into());
        self
    }

    /// The admin token, for admin commands (`Lanyard-Admin-Token`).
    pub fn with_admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// How long a request waits for its answer (default 10 s; the waits of `device_wait`
    /// and `login_wait` add their own `timeout_secs`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The NATS client underneath.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// The prefix of event subjects (`{prefix}.events`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Sends `command` with `body` and reads its reply (or its error), waiting `extra`
    /// besides the client's timeout.
    pub async fn call<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        command: Command,
        body: &Req,
        extra: Duration,
    ) -> Result<Rep, Error> {
        let payload = serde_json::to_vec(body).map_err(|e| Error::Decode(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        if let Some(token) = &self.caller_token {
            headers.insert(CALLER_TOKEN_HEADER, token.as_str());
        }
        if command.is_admin() {
            if let Some(token) = &self.admin_token {
                headers.insert(ADMIN_TOKEN_HEADER, token.as_str());
            }
        }
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(payload.into())
            .timeout(Some(self.timeout + extra));
        let reply = self
            .nats
            .send_request(command.subject(&self.prefix), request)
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_slice(&reply.payload).map_err(|e| Error::Decode(e.to_string()))?;
        if let Some(error) = value.get("error") {
            let message = error["message"].as_str().unwrap_or_default().to_owned();
            let code = error["code"].clone();
            return Err(match serde_json::from_value::<ErrorCode>(code.clone()) {
                Ok(code) => Error::Lanyard { code, message },
                Err(_) => Error::Other {
                    code: code.as_str().unwrap_or_default().to_owned(),
                    message,
                },
            });
        }
        serde_json::from_value(value).map_err(|e| Error::Decode(e.to_string()))
    }

    async fn ask<Req: Serialize, Rep: DeserializeOwned>(
        &self,
        command: Command,
        body: &Req,
    ) -> Result<Rep, Error> {
        self.call(command, body, Duration::ZERO).await
    }

    /// A verifier of session access tokens issued by `issuer` for `audience` (the
    /// daemons' `[sessions]`), with the JWKS fetched on first use.
    pub fn verifier(&self, issuer: &str, audience: &str) -> Verifier {
        Verifier::new(self.clone(), issuer, audience)
    }

    pub async fn login(&self, request: &LoginRequest) -> Result<LoginReply, Error> {
        self.ask(Command::Login, request).await
    }

    pub async fn callback(&self, request: &CallbackRequest) -> Result<CallbackReply, Error> {
        self.ask(Command::Callback, request).await
    }

    pub async fn jwks(&self) -> Result<Jwks, Error> {
        self.ask(Command::Jwks, &Empty {}).await
    }

    /// `session.verify`: the token checked by a daemon, revocation included.
    pub async fn verify(&self, token: &str) -> Result<Claims, Error> {
        self.ask(
            Command::SessionVerify,
            &serde_json::json!({ "token": token }),
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<RefreshReply, Error> {
        let body = RefreshTokenRequest {
            refresh_token: refresh_token.into(),
        };
        self.ask(Command::SessionRefresh, &body).await
    }

    pub async fn revoke(&self, request: &RevokeRequest) -> Result<Empty, Error> {
        self.ask(Command::SessionRevoke, request).await
    }

    pub async fn list_sessions(&self, user_id: &str) -> Result<SessionListReply, Error> {
        let body = UserSessionsRequest {
            user_id: user_id.into(),
        };
        self.ask(Command::SessionList, &body).await
    }

    pub async fn revoke_all(&self, user_id: &str) -> Result<RevokeAllReply, Error> {
        let body = UserSessionsRequest {
            user_id: user_id.into(),
        };
        self.ask(Command::SessionRevokeAll, &body).await
    }

    pub async fn user(&self, user_id: &str) -> Result<UserGetReply, Error> {
        let body = UserGetRequest {
            user_id: user_id.into(),
        };
        self.ask(Command::UserGet, &body).await
    }

    pub async fn token(&self, request: &TokenGetRequest) -> Result<TokenReply, Error> {
        self.ask(Command::TokenGet, request).await
    }

    pub async fn unlink(&self, request: &UnlinkRequest) -> Result<UnlinkReply, Error> {
        self.ask(Command::IdentityUnlink, request).await
    }

    pub async fn device_start(
        &self,
        request: &DeviceStartRequest,
    ) -> Result<DeviceStartReply, Error> {
        self.ask(Command::DeviceStart, request).await
    }

    /// `device.wait`: the request waits up to the wait's own `timeout_secs` longer.
    pub async fn device_wait(&self, request: &WaitRequest) -> Result<WaitReply, Error> {
        let extra = Duration::from_secs(request.timeout_secs.unwrap_or(25).min(60));
        self.call(Command::DeviceWait, request, extra).await
    }

    /// `login.wait`, a hosted login's outcome.
    pub async fn login_wait(&self, request: &WaitRequest) -> Result<WaitReply, Error> {
        let extra = Duration::from_secs(request.timeout_secs.unwrap_or(25).min(60));
        self.call(Command::LoginWait, request, extra).await
    }

    pub async fn rotate_keys(&self) -> Result<RotateKeysReply, Error> {
        self.ask(Command::AdminKeysRotate, &Empty {}).await
    }

    pub async fn provider_create(
        &self,
        instance: &ProviderInstance,
    ) -> Result<ProviderReply, Error> {
        self.ask(Command::ProviderCreate, instance).await
    }

    pub async fn provider_update(
        &self,
        instance: &ProviderInstance,
    ) -> Result<ProviderReply, Error> {
        self.ask(Command::ProviderUpdate, instance).await
    }

    pub async fn provider_patch(&self, patch: &ProviderPatch) -> Result<ProviderReply, Error> {
        self.ask(Command::ProviderPatch, patch).await
    }

    pub async fn provider_delete(&self, id: &str) -> Result<Empty, Error> {
        let body = ProviderIdRequest { id: id.into() };
        self.ask(Command::ProviderDelete, &body).await
    }

    pub async fn provider_get(&self, id: &str) -> Result<ProviderReply, Error> {
        let body = ProviderIdRequest { id: id.into() };
        self.ask(Command::ProviderGet, &body).await
    }

    pub async fn provider_list(&self) -> Result<ProviderListReply, Error> {
        self.ask(Command::ProviderList, &Empty {}).await
    }

    pub async fn status(&self) -> Result<StatusReply, Error> {
        self.ask(Command::AdminStatus, &Empty {}).await
    }

    pub async fn user_list(&self, query: &UserListRequest) -> Result<UserListReply, Error> {
        self.ask(Command::UserList, query).await
    }

    pub async fn admin_user(&self, user_id: &str) -> Result<AdminUserReply, Error> {
        let body = UserGetRequest {
            user_id: user_id.into(),
        };
        self.ask(Command::AdminUserGet, &body).await
    }

    pub async fn user_disable(&self, user_id: &str) -> Result<UserReply, Error> {
        let body = UserGetRequest {
            user_id: user_id.into(),
        };
        self.ask(Command::UserDisable, &body).await
    }

    pub async fn user_enable(&self, user_id: &str) -> Result<UserReply, Error> {
        let body = UserGetRequest {
            user_id: user_id.into(),
        };
        self.ask(Command::UserEnable, &body).await
    }

    pub async fn user_delete(&self, user_id: &str) -> Result<UserDeleteReply, Error> {
        let body = UserGetRequest {
            user_id: user_id.into(),
        };
        self.ask(Command::UserDelete, &body).await
    }
}
