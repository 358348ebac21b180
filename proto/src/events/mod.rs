//! The events: what happened, published on `{prefix}.events.{name}` after the durable write.
//! A body carries `event_id` (`evt_` + ULID), `type` (the name), `occurred_at` (RFC 3339
//! UTC) and the ids involved; never a token or a secret.
//!
//! [`EventEnvelope`] is the body; its serde impls (wire.rs) are the one serialisation of
//! events.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;

#[cfg(test)]
mod tests;
mod wire;

/// The subject an event named `name` (`user.logged_in`) is published on.
pub fn event_subject(prefix: &str, name: &str) -> String {
    format!("{prefix}.events.{name}")
}

/// `{prefix}.events.>`: every event (what the events stream captures).
pub fn all_events_subject(prefix: &str) -> String {
    format!("{prefix}.events.>")
}

/// The event name of a subject under `{prefix}.events.`, if it is one.
pub fn event_name<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    subject
        .strip_prefix(prefix)?
        .strip_prefix(".events.")
        .filter(|name| !name.is_empty())
}

/// An event as published: the event, its id and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEnvelope {
    /// `evt_` + a ULID. With the events stream it is also the message's `Nats-Msg-Id`, so a
    /// retried publish is stored once.
    pub event_id: String,
    /// RFC 3339 UTC.
    pub occurred_at: String,
    pub event: Event,
}

/// What happened. Each variant is one event type of docs/protocol.md; its [name](Self::name)
/// is the body's `type` and the end of its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `user.created`: a login made a new user.
    UserCreated {
        user_id: String,
        provider: String,
        subject: String,
    },
    /// `identity.linked`: a login added an identity to a user (a new user's first one too).
    IdentityLinked {
        user_id: String,
        provider: String,
        subject: String,
    },
    /// `user.logged_in`: a callback succeeded and issued a session.
    UserLoggedIn {
        user_id: String,
        provider: String,
        subject: String,
        new_user: bool,
        /// The session family.
        session_id: String,
    },
    /// `login.failed`: a callback was refused.
    LoginFailed {
        code: ErrorCode,
        /// The login's provider, when the callback got far enough to know it.
        provider: Option<String>,
    },
    /// `session.revoked`: a session family was logged out or revoked for reuse.
    SessionRevoked {
        user_id: String,
        session_id: String,
        reason: RevokeReason,
    },
    /// `provider.created`: an admin created a provider instance.
    ProviderCreated {
        provider: String,
        kind: String,
        version: u64,
    },
    /// `provider.updated`: an admin updated or patched a provider instance.
    ProviderUpdated {
        provider: String,
        kind: String,
        version: u64,
    },
    /// `provider.deleted`: an admin deleted a provider instance.
    ProviderDeleted {
        provider: String,
        kind: String,
        version: u64,
    },
    /// `token.refreshed`: a user's provider tokens were refreshed.
    TokenRefreshed { user_id: String, provider: String },
    /// `token.refresh_failed`: refreshing a user's provider tokens failed.
    TokenRefreshFailed {
        user_id: String,
        provider: String,
        code: ErrorCode,
    },
    /// `identity.unlinked`: an identity was removed from its user.
    IdentityUnlinked {
        user_id: String,
        provider: String,
        subject: String,
    },
    /// `user.deleted`: an admin erased a user (`admin.user.delete`). Ids only.
    UserDeleted { user_id: String },
    /// `keys.rotated`: a new key signs session tokens from now on (`admin.keys.rotate`);
    /// verifiers fetch the JWKS again.
    KeysRotated { kid: String },
    /// `nats.authorized`: the auth callout admitted a NATS connection: a user's, with its
    /// session (`user_id`, `session_id`), or a named caller's (`caller`).
    NatsAuthorized {
        user_id: Option<String>,
        session_id: Option<String>,
        caller: Option<String>,
    },
    /// `nats.refused`: the auth callout refused a NATS connection (`code` says why).
    NatsRefused { code: ErrorCode },
    /// `user.updated`: a returning login brought new profile facts. `changed` names the
    /// fields (`name`, `picture`, `email`, `email_verified`, `identity.email`,
    /// `identity.email_verified`, `identity.groups`), never their values.
    UserUpdated {
        user_id: String,
        provider: String,
        subject: String,
        changed: Vec<String>,
    },
}

/// Why a session family was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// `session.revoke` with the session's refresh token.
    Logout,
    /// A used refresh token came back: two parties hold it.
    RefreshTokenReused,
    /// `session.revoke` of a session by its id (another device logged out).
    Revoked,
    /// `session.revoke_all`: the user logged out everywhere.
    LogoutEverywhere,
    /// `admin.user.delete`: the user was erased.
    UserDeleted,
}

impl Event {
    pub const USER_CREATED: &'static str = "user.created";
    pub const IDENTITY_LINKED: &'static str = "identity.linked";
    pub const USER_LOGGED_IN: &'static str = "user.logged_in";
    pub const LOGIN_FAILED: &'static str = "login.failed";
    pub const SESSION_REVOKED: &'static str = "session.revoked";
    pub const PROVIDER_CREATED: &'static str = "provider.created";
    pub const PROVIDER_UPDATED: &'static str = "provider.updated";
    pub const PROVIDER_DELETED: &'static str = "provider.deleted";
    pub const TOKEN_REFRESHED: &'static str = "token.refreshed";
    pub const TOKEN_REFRESH_FAILED: &'static str = "token.refresh_failed";
    pub const IDENTITY_UNLINKED: &'static str = "identity.unlinked";
    pub const USER_DELETED: &'static str = "user.deleted";
    pub const KEYS_ROTATED: &'static str = "keys.rotated";
    pub const USER_UPDATED: &'static str = "user.updated";
    pub const NATS_AUTHORIZED: &'static str = "nats.authorized";
    pub const NATS_REFUSED: &'static str = "nats.refused";

    /// The event's name: its body's `type` and the end of its subject.
    pub const fn name(&self) -> &'static str {
        match self {
            Event::UserCreated { .. } => Self::USER_CREATED,
            Event::IdentityLinked { .. } => Self::IDENTITY_LINKED,
            Event::UserLoggedIn { .. } => Self::USER_LOGGED_IN,
            Event::LoginFailed { .. } => Self::LOGIN_FAILED,
            Event::SessionRevoked { .. } => Self::SESSION_REVOKED,
            Event::ProviderCreated { .. } => Self::PROVIDER_CREATED,
            Event::ProviderUpdated { .. } => Self::PROVIDER_UPDATED,
            Event::ProviderDeleted { .. } => Self::PROVIDER_DELETED,
            Event::TokenRefreshed { .. } => Self::TOKEN_REFRESHED,
            Event::TokenRefreshFailed { .. } => Self::TOKEN_REFRESH_FAILED,
            Event::IdentityUnlinked { .. } => Self::IDENTITY_UNLINKED,
            Event::UserDeleted { .. } => Self::USER_DELETED,
            Event::KeysRotated { .. } => Self::KEYS_ROTATED,
            Event::UserUpdated { .. } => Self::USER_UPDATED,
            Event::NatsAuthorized { .. } => Self::NATS_AUTHORIZED,
            Event::NatsRefused { .. } => Self::NATS_REFUSED,
        }
    }

    /// The subject this event is published on.
    pub fn subject(&self, prefix: &str) -> String {
        event_subject(prefix, self.name())
    }
}
