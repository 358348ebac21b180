//! The core of Lanyard: what each command does, independent of how it arrived. It ties the
//! provider actors, the store, sessions and events together; it knows nothing of NATS.

use std::sync::Arc;

use lanyard_proto::{
    Claims, Empty, Event, EventCounts, IdentityView, Jwks, RefreshTokenRequest, RevokeAllReply,
    RevokeReason, RevokeRequest, RotateKeysReply, Session, SessionListReply, SessionView,
    UnlinkReply, UnlinkRequest, UserClaims, UserGetReply, UserGetRequest, UserSessionsRequest,
    UserView, UserWithIdentities, VerifyRequest,
};

use crate::admin::ProviderAdmin;
use crate::config::ClaimsConfig;
use crate::error::{Error, ErrorCode};
use crate::events::EventSink;
use crate::login::Logins;
use crate::provider_tokens::TokenVault;
use crate::providers::Providers;
use crate::sessions::claims::user_claims;
use crate::sessions::{now, rfc3339, Sessions};
use crate::store::{
    policy, FamilyRecord, IdentityRecord, RefreshTerms, Rotation, Store, UserRecord,
};

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
    /// Ends NATS connections whose sessions end (`[nats_auth.system]`).
    pub(crate) nats_kicker: Option<crate::callout::Kicker>,
    /// The device logins this daemon polls for.
    pub(crate) devices: crate::login::DevicePollers,
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
            nats_kicker: None,
            devices: crate::login::DevicePollers::default(),
        }
    }

    /// With a connection to the NATS system account, through which the connections the
    /// auth callout admitted are ended when their sessions end.
    pub(crate) fn with_nats_kicker(mut self, kicker: Option<crate::callout::Kicker>) -> Self {
        self.nats_kicker = kicker;
        self
    }

    /// `jwks`: the keys that verify session tokens.
    pub fn jwks(&self) -> Jwks {
        self.sessions.jwks(now())
    }

    /// `session.verify`: the claims of a valid access token whose session is not revoked
    /// and whose user exists and is not disabled (both read from the store, together).
    pub async fn verify(&self, request: VerifyRequest) -> Result<Claims, Error> {
        let claims = self
            .sessions
            .verify(&request.token, self.store.as_ref())
            .await?;
        self.check_live(&claims).await?;
        Ok(claims)
    }

    /// Whether the session `claims` (already verified) name is still live: its family is
    /// unrevoked and its user enabled, as the store says now. Returns the user.
    pub(crate) async fn check_live(&self, claims: &Claims) -> Result<UserRecord, Error> {
        let (family, user) = tokio::try_join!(
            self.store.get_family(&claims.sid),
            self.store.get_user(&claims.sub)
        )?;
        match (family, user) {
            (Some(family), Some(user))
                if family.revoked_at.is_none()
                    && family.user_id == claims.sub
                    && policy::may_hold_sessions(Some(&user)) =>
            {
                Ok(user)
            }
            _ => Err(Error::new(
                ErrorCode::Unauthorized,
                "the session was revoked or does not exist, or its user is disabled",
            )),
        }
    }

    /// `session.refresh`: exchanges a refresh token for a new session. The successor is
    /// derived from the token, so the same token presented again within
    /// `refresh_reuse_grace_secs` gets the same successor back (on any daemon); after that,
    /// a used token revokes its whole session family: one of its holders is not its owner.
    pub async fn refresh(&self, request: RefreshTokenRequest) -> Result<Session, Error> {
        let now = now();
        let mut successors = self.sessions.successors(&request.refresh_token, now);
        let terms = RefreshTerms {
            candidates: successors.iter().map(|p| p.session_key.clone()).collect(),
            now,
            expires_at: successors[0].expires_at,
            grace_secs: self.sessions.reuse_grace_secs(),
        };
        let old_key = Sessions::session_key(&request.refresh_token);
        match self.store.rotate_session(&old_key, &terms).await? {
            Rotation::Rotated { user_id, family_id } => {
                let claims = self.stored_claims(&user_id, &family_id).await?;
                self.sessions
                    .finish(successors.swap_remove(0), &user_id, &family_id, now, claims)
            }
            Rotation::Repeated {
                user_id,
                family_id,
                index,
            } => {
                tracing::debug!(session_id = %family_id, "a refresh repeated within the reuse grace");
                let claims = self.stored_claims(&user_id, &family_id).await?;
                let successor = successors.swap_remove(index);
                self.sessions
                    .finish(successor, &user_id, &family_id, now, claims)
            }
            Rotation::Reused { user_id, family_id } => {
                tracing::warn!(%user_id, session_id = %family_id,
                    "a used refresh token came back; the session family is revoked");
                self.sessions_ended(&user_id, &[family_id], RevokeReason::RefreshTokenReused)
                    .await;
                Err(refresh_refused())
            }
            Rotation::Refused => Err(refresh_refused()),
        }
    }

    /// `session.revoke`: logs out the refresh token's whole session family, or session
    /// `session_id` of user `user_id`. Answers `{}` for an unknown or already revoked
    /// token too (RFC 7009), so it leaks nothing; by id, an unknown session is `not_found`.
    pub async fn revoke(&self, request: RevokeRequest) -> Result<Empty, Error> {
        let now = now();
        match request {
            RevokeRequest {
                refresh_token: Some(token),
                user_id: None,
                session_id: None,
            } => {
                let key = Sessions::session_key(&token);
                if let Some((user_id, family_id)) = self.store.revoke_session(&key, now).await? {
                    self.sessions_ended(&user_id, &[family_id], RevokeReason::Logout)
                        .await;
                }
            }
            RevokeRequest {
                refresh_token: None,
                user_id: Some(user_id),
                session_id: Some(session_id),
            } => {
                check_id("user_id", &user_id)?;
                check_id("session_id", &session_id)?;
                if self.store.revoke_family(&user_id, &session_id, now).await? {
                    self.sessions_ended(&user_id, &[session_id], RevokeReason::Revoked)
                        .await;
                } else {
                    let family = self.store.get_family(&session_id).await?;
                    if family.is_none_or(|f| f.user_id != user_id) {
                        return Err(Error::new(
                            ErrorCode::NotFound,
                            "the user has no such session",
                        ));
                    }
                }
            }
            _ => {
                return Err(Error::bad_request(
                    "give either `refresh_token`, or `user_id` and `session_id`",
                ))
            }
        }
        Ok(Empty {})
    }

    /// `session.list`: the user's live sessions, oldest first.
    pub async fn list_sessions(
        &self,
        request: UserSessionsRequest,
    ) -> Result<SessionListReply, Error> {
        check_id("user_id", &request.user_id)?;
        let now = now();
        let sessions = self
            .store
            .user_families(&request.user_id)
            .await?
            .into_iter()
            .filter(|(_, family)| policy::is_live(family, now))
            .map(|(id, family)| session_view(id, &family))
            .collect();
        Ok(SessionListReply { sessions })
    }

    /// `session.revoke_all`: logs the user out everywhere.
    pub async fn revoke_all(&self, request: UserSessionsRequest) -> Result<RevokeAllReply, Error> {
        check_id("user_id", &request.user_id)?;
        let now = now();
        let mut revoked = Vec::new();
        let mut failed = None;
        for (family_id, family) in self.store.user_families(&request.user_id).await? {
            if !policy::is_live(&family, now) {
                continue;
            }
            match self
                .store
                .revoke_family(&request.user_id, &family_id, now)
                .await
            {
                Ok(true) => revoked.push(family_id),
                Ok(false) => {}
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        // Those revoked before a failure end (events, connections) all the same.
        self.sessions_ended(&request.user_id, &revoked, RevokeReason::LogoutEverywhere)
            .await;
        match failed {
            Some(error) => Err(error.into()),
            None => Ok(RevokeAllReply { revoked }),
        }
    }

    /// The claims of instance `provider`'s sessions: its own `claims`, else
    /// `[sessions.claims]`.
    pub(crate) fn claims_config(&self, provider: Option<&str>) -> ClaimsConfig {
        provider
            .and_then(|id| self.providers.describe(id).ok())
            .and_then(|d| d.config.claims.clone())
            .unwrap_or_else(|| self.sessions.claims().clone())
    }

    /// A refreshed token's claims, read from the store now (a changed group list shows on
    /// the next refresh); no read when no claims are configured anywhere.
    async fn stored_claims(&self, user_id: &str, family_id: &str) -> Result<UserClaims, Error> {
        if !self.sessions.claims().any() && !self.providers.any_claims() {
            return Ok(UserClaims::default());
        }
        let Some(family) = self.store.get_family(family_id).await? else {
            return Ok(UserClaims::default());
        };
        let config = self.claims_config(family.provider.as_deref());
        if !config.any() {
            return Ok(UserClaims::default());
        }
        let (user, identities) = tokio::try_join!(
            self.store.get_user(user_id),
            self.store.user_identities(user_id)
        )?;
        let Some(user) = user else {
            return Err(refresh_refused());
        };
        // The identity the session logged in with (a user may hold two at one instance).
        let identity = identities.iter().find(|i| {
            Some(&i.provider) == family.provider.as_ref()
                && family.subject.as_ref().is_none_or(|s| *s == i.subject)
        });
        Ok(user_claims(&config, &user, identity))
    }

    /// After sessions `session_ids` of user `user_id` were revoked: `session.revoked` for
    /// each, and their NATS connections ended.
    pub(crate) async fn sessions_ended(
        &self,
        user_id: &str,
        session_ids: &[String],
        reason: RevokeReason,
    ) {
        for session_id in session_ids {
            self.events.emit(Event::SessionRevoked {
                user_id: user_id.to_owned(),
                session_id: session_id.clone(),
                reason,
            });
        }
        self.end_nats_connections(session_ids).await;
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
        self.events.emit(Event::KeysRotated { kid: kid.clone() });
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

/// A session family as `session.list` shows it.
pub(crate) fn session_view(session_id: String, family: &FamilyRecord) -> SessionView {
    SessionView {
        session_id,
        created_at: rfc3339(family.created_at),
        refreshed_at: family.refreshed_at.map(rfc3339),
        expires_at: family.expires_at.map(rfc3339),
        provider: family.provider.clone(),
        client: family.client.clone(),
    }
}

/// An id a request names: non-empty and bounded.
pub(crate) fn check_id(name: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > 128 {
        return Err(Error::bad_request(format!(
            "`{name}` must be 1 to 128 bytes"
        )));
    }
    Ok(())
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
        disabled_at: user.disabled_at.map(rfc3339),
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
