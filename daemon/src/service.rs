//! The core of Lanyard: what each command does, independent of how it arrived. It ties the
//! provider actors, the store, sessions and events together; it knows nothing of NATS.

use std::sync::Arc;

use lanyard_proto::{
    Claims, Empty, Event, EventCounts, IdentityView, Jwks, RefreshTokenRequest, RevokeReason,
    RotateKeysReply, Session, UnlinkReply, UnlinkRequest, UserGetReply, UserGetRequest, UserView,
    UserWithIdentities, VerifyRequest,
};

use crate::admin::ProviderAdmin;
use crate::error::{Error, ErrorCode};
use crate::events::EventSink;
use crate::login::Logins;
use crate::provider_tokens::TokenVault;
use crate::providers::Providers;
use crate::sessions::{now, rfc3339, Sessions};
use crate::store::{IdentityRecord, Rotation, Store, UserRecord};

/// The generation of every config-file instance (stored ones have one per create).
pub const CONFIG_GENERATION: &str = "config";

/// Limits on free-text request fields, so one request cannot bloat the store.
const MAX_FIELD: usize = 2048;

/// What `admin.status` reports of the core.
#[derive(Debug)]
pub struct Health {
    pub providers: Vec<crate::providers::ProviderHealth>,
    pub events: EventCounts,
    /// Whether the daemon follows the store's shared changes now.
    pub following_changes: bool,
}

/// The command handlers.
#[derive(Debug)]
pub struct Lanyard {
    pub(crate) store: Arc<dyn Store>,
    /// Runtime provider administration.
    pub admin: ProviderAdmin,
    /// The provider token vault.
    pub tokens: TokenVault,
    pub(crate) providers: Providers,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) events: EventSink,
    pub(crate) logins: Logins,
}

impl Lanyard {
    /// Every provider instance's health, and the event counters (for `admin.status`).
    pub async fn health(&self) -> Health {
        Health {
            providers: self.providers.health().await,
            events: self.events.counts(),
            following_changes: self.admin.following(),
        }
    }

    pub fn new(
        store: Arc<dyn Store>,
        admin: ProviderAdmin,
        tokens: TokenVault,
        providers: Providers,
        sessions: Arc<Sessions>,
        events: EventSink,
        logins: Logins,
    ) -> Self {
        Self {
            store,
            admin,
            tokens,
            providers,
            sessions,
            events,
            logins,
        }
    }

    /// `jwks`: the keys that verify session tokens.
    pub fn jwks(&self) -> Jwks {
        self.sessions.jwks(now())
    }

    /// `session.verify`: the claims of a valid, unrevoked access token.
    pub async fn verify(&self, request: VerifyRequest) -> Result<Claims, Error> {
        let claims = self
            .sessions
            .verify(&request.token, self.store.as_ref())
            .await?;
        match self.store.get_family(&claims.sid).await? {
            Some(family) if family.revoked_at.is_none() && family.user_id == claims.sub => {
                Ok(claims)
            }
            _ => Err(Error::new(
                ErrorCode::Unauthorized,
                "the session was revoked or does not exist",
            )),
        }
    }

    /// `session.refresh`: exchanges a refresh token for a new session. A refresh token used
    /// twice revokes its whole session family: one of its holders is not its owner.
    pub async fn refresh(&self, request: RefreshTokenRequest) -> Result<Session, Error> {
        let now = now();
        let prepared = self.sessions.prepare(now)?;
        let old_key = Sessions::session_key(&request.refresh_token);
        let rotation = self
            .store
            .rotate_session(&old_key, &prepared.session_key, now, prepared.expires_at)
            .await?;
        match rotation {
            Rotation::Rotated { user_id, family_id } => {
                self.sessions.finish(prepared, &user_id, &family_id, now)
            }
            Rotation::Reused { user_id, family_id } => {
                tracing::warn!(%user_id, session_id = %family_id,
                    "a used refresh token came back; the session family is revoked");
                self.events.emit(Event::SessionRevoked {
                    user_id,
                    session_id: family_id,
                    reason: RevokeReason::RefreshTokenReused,
                });
                Err(refresh_refused())
            }
            Rotation::Refused => Err(refresh_refused()),
        }
    }

    /// `session.revoke`: logs out the refresh token's whole session family. Answers `{}`
    /// for an unknown or already revoked token too (RFC 7009), so it leaks nothing.
    pub async fn revoke(&self, request: RefreshTokenRequest) -> Result<Empty, Error> {
        let key = Sessions::session_key(&request.refresh_token);
        if let Some((user_id, family_id)) = self.store.revoke_session(&key, now()).await? {
            self.events.emit(Event::SessionRevoked {
                user_id,
                session_id: family_id,
                reason: RevokeReason::Logout,
            });
        }
        Ok(Empty {})
    }

    /// `user.get`: a user with its identities.
    pub async fn user(&self, request: UserGetRequest) -> Result<UserGetReply, Error> {
        check_len("user_id", Some(&request.user_id))?;
        let user = self
            .store
            .get_user(&request.user_id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, "no such user"))?;
        let identities = self.store.user_identities(&user.id).await?;
        Ok(UserGetReply {
            user: UserWithIdentities {
                user: user_view(&user),
                identities: identities.iter().map(identity_view).collect(),
            },
        })
    }

    /// `identity.unlink`: removes a user's identity at a provider (never the last one) and
    /// revokes its provider tokens where the provider supports revocation.
    pub async fn unlink(&self, request: UnlinkRequest) -> Result<UnlinkReply, Error> {
        let (identity, tokens) = self
            .store
            .unlink_identity(&request.user_id, &request.provider)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, "the user has no such identity"))?;
        let tokens_revoked = match &tokens {
            Some(record) => self.tokens.revoke_at_provider(&identity, record).await,
            None => false,
        };
        self.events.emit(Event::IdentityUnlinked {
            user_id: request.user_id,
            provider: identity.provider.clone(),
            subject: identity.subject.clone(),
        });
        Ok(UnlinkReply {
            identity: identity_view(&identity),
            tokens_revoked,
        })
    }

    /// `admin.keys.rotate`: a new session signing key.
    pub async fn rotate_keys(&self) -> Result<RotateKeysReply, Error> {
        let (kid, _) = self.sessions.rotate(self.store.as_ref()).await?;
        Ok(RotateKeysReply { kid })
    }

    /// Forgets expired login states.
    pub async fn sweep(&self) {
        match self.store.sweep_logins(now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "swept expired login states"),
            Err(error) => tracing::warn!(%error, "sweeping expired login states failed"),
        }
    }
}

/// A user as replies show it.
pub(crate) fn user_view(user: &UserRecord) -> UserView {
    UserView {
        id: user.id.clone(),
        username: user.username.clone(),
        email: user.email.clone(),
        email_verified: user.email_verified,
        name: user.name.clone(),
        picture: user.picture.clone(),
        created_at: rfc3339(user.created_at),
    }
}

/// An identity as replies show it.
pub(crate) fn identity_view(identity: &IdentityRecord) -> IdentityView {
    IdentityView {
        provider: identity.provider.clone(),
        subject: identity.subject.clone(),
        email: identity.email.clone(),
        email_verified: identity.email_verified,
        groups: identity.groups.clone(),
    }
}

fn refresh_refused() -> Error {
    Error::new(
        ErrorCode::Unauthorized,
        "the refresh token is not valid (unknown, expired, used or revoked); log in again",
    )
}

pub(crate) fn check_len(name: &str, value: Option<&String>) -> Result<(), Error> {
    match value {
        Some(v) if v.len() > MAX_FIELD => Err(Error::bad_request(format!(
            "`{name}` is longer than {MAX_FIELD} bytes"
        ))),
        _ => Ok(()),
    }
}
