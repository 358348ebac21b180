//! The one serialisation of events: [`EventEnvelope`]'s Serialize and Deserialize both go
//! through `Wire`, the flat set of every field a body can carry. Its fields are in
//! alphabetical order because bodies were sorted JSON maps before this crate existed, so the
//! bytes on the wire stay what they were.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Event, EventEnvelope, RevokeReason};
use crate::error::ErrorCode;

/// Every field an event body can carry, in the order bodies list them. A field an event
/// does not have is left out, never `null`. `S` is `&str` to write a body, `String` to read
/// one.
#[derive(Serialize, Deserialize)]
struct Wire<S> {
    #[serde(skip_serializing_if = "Option::is_none")]
    caller: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<Vec<S>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<ErrorCode>,
    event_id: S,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_user: Option<bool>,
    occurred_at: S,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<RevokeReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<S>,
    #[serde(rename = "type")]
    name: S,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<S>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
}

impl Serialize for EventEnvelope {
    /// Long because it is one `match` with an arm per event type: the one place an event's
    /// wire shape is written, kept whole so a reader sees every shape at once.
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        let mut wire = Wire {
            caller: None,
            changed: None,
            code: None,
            event_id: self.event_id.as_str(),
            kid: None,
            kind: None,
            new_user: None,
            occurred_at: self.occurred_at.as_str(),
            provider: None,
            reason: None,
            session_id: None,
            subject: None,
            name: self.event.name(),
            user_id: None,
            version: None,
        };
        match &self.event {
            Event::UserCreated {
                user_id,
                provider,
                subject,
            }
            | Event::IdentityLinked {
                user_id,
                provider,
                subject,
            }
            | Event::IdentityUnlinked {
                user_id,
                provider,
                subject,
            } => {
                wire.user_id = Some(user_id);
                wire.provider = Some(provider);
                wire.subject = Some(subject);
            }
            Event::UserLoggedIn {
                user_id,
                provider,
                subject,
                new_user,
                session_id,
            } => {
                wire.user_id = Some(user_id);
                wire.provider = Some(provider);
                wire.subject = Some(subject);
                wire.new_user = Some(*new_user);
                wire.session_id = Some(session_id);
            }
            Event::LoginFailed { code, provider } => {
                wire.code = Some(*code);
                wire.provider = provider.as_deref();
            }
            Event::SessionRevoked {
                user_id,
                session_id,
                reason,
            } => {
                wire.user_id = Some(user_id);
                wire.session_id = Some(session_id);
                wire.reason = Some(*reason);
            }
            Event::ProviderCreated {
                provider,
                kind,
                version,
            }
            | Event::ProviderUpdated {
                provider,
                kind,
                version,
            }
            | Event::ProviderDeleted {
                provider,
                kind,
                version,
            } => {
                wire.provider = Some(provider);
                wire.kind = Some(kind);
                wire.version = Some(*version);
            }
            Event::TokenRefreshed { user_id, provider } => {
                wire.user_id = Some(user_id);
                wire.provider = Some(provider);
            }
            Event::TokenRefreshFailed {
                user_id,
                provider,
                code,
            } => {
                wire.user_id = Some(user_id);
                wire.provider = Some(provider);
                wire.code = Some(*code);
            }
            Event::UserDeleted { user_id } => wire.user_id = Some(user_id),
            Event::KeysRotated { kid } => wire.kid = Some(kid),
            Event::NatsAuthorized {
                user_id,
                session_id,
                caller,
            } => {
                wire.user_id = user_id.as_deref();
                wire.session_id = session_id.as_deref();
                wire.caller = caller.as_deref();
            }
            Event::NatsRefused { code } => wire.code = Some(*code),
            Event::UserUpdated {
                user_id,
                provider,
                subject,
                changed,
            } => {
                wire.user_id = Some(user_id);
                wire.provider = Some(provider);
                wire.subject = Some(subject);
                wire.changed = Some(changed.iter().map(String::as_str).collect());
            }
        }
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EventEnvelope {
    /// Reads a body; fields an event does not have are ignored (a newer daemon may add
    /// some), a field it needs that is missing, or an unknown `type`, is an error. Long for
    /// the same reason as `serialize`: one `match`, an arm per event type.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::<String>::deserialize(deserializer)?;
        let name = wire.name.as_str();
        let need = |field: &'static str| D::Error::custom(format!("`{name}` lacks `{field}`"));
        let user_id = || wire.user_id.clone().ok_or_else(|| need("user_id"));
        let provider = || wire.provider.clone().ok_or_else(|| need("provider"));
        let subject = || wire.subject.clone().ok_or_else(|| need("subject"));
        let session_id = || wire.session_id.clone().ok_or_else(|| need("session_id"));
        let kind = || wire.kind.clone().ok_or_else(|| need("kind"));
        let version = || wire.version.ok_or_else(|| need("version"));
        let code = || wire.code.ok_or_else(|| need("code"));
        let event = match name {
            Event::USER_CREATED => Event::UserCreated {
                user_id: user_id()?,
                provider: provider()?,
                subject: subject()?,
            },
            Event::IDENTITY_LINKED => Event::IdentityLinked {
                user_id: user_id()?,
                provider: provider()?,
                subject: subject()?,
            },
            Event::USER_LOGGED_IN => Event::UserLoggedIn {
                user_id: user_id()?,
                provider: provider()?,
                subject: subject()?,
                new_user: wire.new_user.ok_or_else(|| need("new_user"))?,
                session_id: session_id()?,
            },
            Event::LOGIN_FAILED => Event::LoginFailed {
                code: code()?,
                provider: wire.provider.clone(),
            },
            Event::SESSION_REVOKED => Event::SessionRevoked {
                user_id: user_id()?,
                session_id: session_id()?,
                reason: wire.reason.ok_or_else(|| need("reason"))?,
            },
            Event::PROVIDER_CREATED => Event::ProviderCreated {
                provider: provider()?,
                kind: kind()?,
                version: version()?,
            },
            Event::PROVIDER_UPDATED => Event::ProviderUpdated {
                provider: provider()?,
                kind: kind()?,
                version: version()?,
            },
            Event::PROVIDER_DELETED => Event::ProviderDeleted {
                provider: provider()?,
                kind: kind()?,
                version: version()?,
            },
            Event::TOKEN_REFRESHED => Event::TokenRefreshed {
                user_id: user_id()?,
                provider: provider()?,
            },
            Event::TOKEN_REFRESH_FAILED => Event::TokenRefreshFailed {
                user_id: user_id()?,
                provider: provider()?,
                code: code()?,
            },
            Event::IDENTITY_UNLINKED => Event::IdentityUnlinked {
                user_id: user_id()?,
                provider: provider()?,
                subject: subject()?,
            },
            Event::USER_DELETED => Event::UserDeleted {
                user_id: user_id()?,
            },
            Event::KEYS_ROTATED => Event::KeysRotated {
                kid: wire.kid.clone().ok_or_else(|| need("kid"))?,
            },
            Event::NATS_AUTHORIZED => Event::NatsAuthorized {
                user_id: wire.user_id.clone(),
                session_id: wire.session_id.clone(),
                caller: wire.caller.clone(),
            },
            Event::NATS_REFUSED => Event::NatsRefused { code: code()? },
            Event::USER_UPDATED => Event::UserUpdated {
                user_id: user_id()?,
                provider: provider()?,
                subject: subject()?,
                changed: wire.changed.clone().ok_or_else(|| need("changed"))?,
            },
            other => return Err(D::Error::custom(format!("unknown event type `{other}`"))),
        };
        Ok(EventEnvelope {
            event_id: wire.event_id,
            occurred_at: wire.occurred_at,
            event,
        })
    }
}
