//! The core of Lanyard: what each command does, independent of how it arrived. It ties the
//! provider actors, the store, sessions and events together; it knows nothing of NATS.

use std::sync::Arc;

use lanyard_proto::{
    CallbackReply, CallbackRequest, Claims, Empty, Event, EventCounts, IdentityView, Jwks,
    LoginReply, LoginRequest, RefreshTokenRequest, RevokeReason, RotateKeysReply, Session,
    UnlinkReply, UnlinkRequest, UserGetReply, UserGetRequest, UserView, UserWithIdentities,
    VerifyRequest,
};

use crate::admin::ProviderAdmin;
use crate::error::{Error, ErrorCode};
use crate::events::EventSink;
use crate::provider_tokens::TokenVault;
use crate::providers::{CompleteArgs, LoginArgs, Providers};
use crate::sessions::{now, rfc3339, Sessions};
use crate::store::{IdentityRecord, LoginWrite, PendingLogin, Rotation, Store, UserRecord};

/// The generation of every config-file instance (stored ones have one per create).
pub const CONFIG_GENERATION: &str = "config";

/// Limits on free-text request fields, so one request cannot bloat the store.
const MAX_FIELD: usize = 2048;
const PROMPTS: &[&str] = &["none", "login", "consent", "select_account", "create"];

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
    store: Arc<dyn Store>,
    /// Runtime provider administration.
    pub admin: ProviderAdmin,
    /// The provider token vault.
    pub tokens: TokenVault,
    providers: Providers,
    sessions: Arc<Sessions>,
    events: EventSink,
    pending_ttl_secs: u64,
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
        pending_ttl_secs: u64,
    ) -> Self {
        Self {
            store,
            admin,
            tokens,
            providers,
            sessions,
            events,
            pending_ttl_secs,
        }
    }

    /// `login`: starts a login and remembers it durably under its state.
    pub async fn login(&self, request: LoginRequest) -> Result<LoginReply, Error> {
        check_len("provider", Some(&request.provider))?;
        check_len("return_to", request.return_to.as_ref())?;
        if let (Some(return_to), Ok(described)) = (
            request.return_to.as_deref(),
            self.providers.describe(&request.provider),
        ) {
            described.check_return_to(return_to)?;
        }
        check_len("login_hint", request.login_hint.as_ref())?;
        check_len("redirect_uri", request.redirect_uri.as_ref())?;
        if let Some(prompt) = &request.prompt {
            if !prompt.split(' ').all(|p| PROMPTS.contains(&p)) {
                return Err(Error::bad_request(format!(
                    "prompt must be one or more of {PROMPTS:?}, space-separated"
                )));
            }
        }
        if let Some(scopes) = &request.scopes {
            if scopes.len() > 50 || scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
                return Err(Error::bad_request(
                    "scopes must be at most 50 non-empty scope tokens without spaces",
                ));
            }
        }
        let link_user = match &request.link_session {
            Some(token) => Some(self.sessions.verify(token, self.store.as_ref()).await?.sub),
            None => None,
        };
        let created_at = now();
        let expires_at = created_at + self.pending_ttl_secs as i64;
        let start = self
            .providers
            .login(
                &request.provider,
                LoginArgs {
                    redirect_uri: request.redirect_uri,
                    scopes: request.scopes,
                    fetch_groups: request.fetch_groups,
                    login_hint: request.login_hint,
                    prompt: request.prompt,
                    expires_at,
                },
            )
            .await?;
        let pending = PendingLogin {
            provider: request.provider,
            generation: start.generation,
            redirect_uri: start.redirect_uri,
            pkce_verifier: start.pkce_verifier,
            nonce: start.nonce,
            scopes: start.scopes,
            fetch_groups: request.fetch_groups,
            return_to: request.return_to,
            link_user,
            created_at,
            expires_at,
        };
        self.store.put_pending(&start.state, &pending).await?;
        Ok(LoginReply {
            authorization_url: start.authorization_url,
            state: start.state,
            expires_at: rfc3339(expires_at),
        })
    }

    /// `callback`: consumes the state, finishes the login at the provider, creates or links
    /// the user, stores the session, and only then replies and emits events.
    pub async fn callback(&self, request: CallbackRequest) -> Result<CallbackReply, Error> {
        let input = CallbackInput::parse(request)?;
        let mut seen = Seen {
            provider: input.expected_provider.clone(),
            taken: false,
        };
        let result = self.finish_callback(&input, &mut seen).await;
        if result.is_err() && seen.taken {
            // The state may have been consumed: make that durable before answering, so a
            // crash cannot bring a refused state back.
            if let Err(error) = self.store.flush().await {
                tracing::error!(%error, "cannot flush a consumed state");
            }
        }
        if let Err(error) = &result {
            self.events.emit(Event::LoginFailed {
                code: error.code,
                provider: seen.provider,
            });
        }
        result
    }

    /// Finishes a callback, noting in `seen` what a failure report needs.
    async fn finish_callback(
        &self,
        input: &CallbackInput,
        seen: &mut Seen,
    ) -> Result<CallbackReply, Error> {
        let pending = self
            .store
            .take_pending(&input.state)
            .await?
            .ok_or_else(Error::invalid_state)?;
        seen.taken = true;
        if seen.provider.is_none() {
            seen.provider = Some(pending.provider.clone());
        }
        if pending.expires_at < now() {
            return Err(Error::invalid_state());
        }
        if let Some(expected) = &input.expected_provider {
            if *expected != pending.provider {
                return Err(Error::invalid_state());
            }
        }
        if let Some(expected) = &input.expected_redirect_uri {
            if *expected != pending.redirect_uri {
                return Err(Error::invalid_state());
            }
        }
        // A provider deleted since (even if created again) cannot finish its old logins.
        // A stored instance is checked against the store itself, not this daemon's copy:
        // once any daemon answered the delete, no daemon completes them, however far its
        // change feed lags. Its actor checks the generation again when it takes the code.
        let generation = if pending.generation == CONFIG_GENERATION {
            self.providers
                .describe(&pending.provider)
                .ok()
                .map(|d| d.generation)
        } else {
            self.store
                .get_provider(&pending.provider)
                .await?
                .map(|record| record.generation)
        };
        if generation.as_ref() != Some(&pending.generation) {
            return Err(Error::invalid_state());
        }
        let code = match (&input.code, &input.error) {
            (_, Some(error)) => {
                let described = input
                    .error_description
                    .as_deref()
                    .map(|d| format!(": {}", truncate(d, 200)))
                    .unwrap_or_default();
                let code = if error == "access_denied" {
                    ErrorCode::AccessDenied
                } else {
                    ErrorCode::ProviderError
                };
                return Err(Error::new(
                    code,
                    format!("the provider answered {}{described}", truncate(error, 64)),
                ));
            }
            (Some(code), None) => code.clone(),
            (None, None) => unreachable_input()?,
        };
        let provider = pending.provider.clone();
        let completed = self
            .providers
            .complete(
                &provider,
                CompleteArgs {
                    pending: pending.clone(),
                    code,
                    iss: input.iss.clone(),
                    params: input.params.clone(),
                },
            )
            .await?;

        let now = now();
        let prepared = self.sessions.prepare(now)?;
        let family_id = prepared.family_id.clone();
        let tokens = if completed.store_tokens {
            Some(self.tokens.seal_login(
                &provider,
                &completed.profile.subject,
                &completed.tokens,
                now,
            )?)
        } else {
            None
        };
        let write = LoginWrite {
            provider: provider.clone(),
            tokens,
            profile: completed.profile,
            // The instance's policy when the login finished, so admin changes apply to the
            // next login.
            trust_email_verified: completed.trust_email_verified,
            link_user: pending.link_user.clone(),
            session_key: prepared.session_key.clone(),
            session: self.sessions.record(&prepared, now),
            now,
        };
        let commit = self.store.commit_login(&write).await?;
        let session = self
            .sessions
            .finish(prepared, &commit.user.id, &family_id, now)?;

        let user_id = &commit.user.id;
        let subject = &commit.identity.subject;
        if commit.new_user {
            self.events.emit(Event::UserCreated {
                user_id: user_id.clone(),
                provider: provider.clone(),
                subject: subject.clone(),
            });
        }
        if commit.new_identity {
            self.events.emit(Event::IdentityLinked {
                user_id: user_id.clone(),
                provider: provider.clone(),
                subject: subject.clone(),
            });
        }
        self.events.emit(Event::UserLoggedIn {
            user_id: user_id.clone(),
            provider,
            subject: subject.clone(),
            new_user: commit.new_user,
            session_id: family_id,
        });
        Ok(CallbackReply {
            user: user_view(&commit.user),
            identity: identity_view(&commit.identity),
            new_user: commit.new_user,
            session,
            return_to: pending.return_to,
        })
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

    /// Deletes expired pending logins.
    pub async fn sweep(&self) {
        match self.store.sweep_pending(now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "swept expired pending logins"),
            Err(error) => tracing::warn!(%error, "sweeping pending logins failed"),
        }
    }
}

/// What a callback got to before it failed.
#[derive(Debug)]
struct Seen {
    /// The login's provider, once known, for `login.failed`.
    provider: Option<String>,
    /// Whether the state was consumed (its removal must be made durable).
    taken: bool,
}

/// A callback request, normalised from its three accepted shapes.
#[derive(Debug)]
struct CallbackInput {
    state: String,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    iss: Option<String>,
    expected_provider: Option<String>,
    expected_redirect_uri: Option<String>,
    /// The query's (or form body's) other parameters, for the provider plugin.
    params: std::collections::BTreeMap<String, String>,
}

/// At most this many extra callback parameters reach the plugin, each at most this long.
const MAX_CALLBACK_PARAMS: usize = 16;
const MAX_CALLBACK_PARAM_BYTES: usize = 4096;

impl CallbackInput {
    fn parse(request: CallbackRequest) -> Result<Self, Error> {
        let mut r = request;
        let mut params = std::collections::BTreeMap::new();
        if let Some(query) = r.query.take() {
            if r.state.is_some() || r.code.is_some() || r.error.is_some() || r.iss.is_some() {
                return Err(Error::bad_request(
                    "send either `query` or `state` with `code`/`error`, not both",
                ));
            }
            let query = query.strip_prefix('?').unwrap_or(&query);
            for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
                let slot = match key.as_ref() {
                    "state" => &mut r.state,
                    "code" => &mut r.code,
                    "error" => &mut r.error,
                    "error_description" => &mut r.error_description,
                    "iss" => &mut r.iss,
                    _ => {
                        if params.len() >= MAX_CALLBACK_PARAMS
                            || value.len() > MAX_CALLBACK_PARAM_BYTES
                            || key.len() > 64
                        {
                            return Err(Error::bad_request(
                                "the callback carries too many or too large parameters",
                            ));
                        }
                        if params
                            .insert(key.into_owned(), value.into_owned())
                            .is_some()
                        {
                            return Err(Error::bad_request("a parameter appears twice in query"));
                        }
                        continue;
                    }
                };
                if slot.is_some() {
                    return Err(Error::bad_request(format!(
                        "`{key}` appears twice in query"
                    )));
                }
                *slot = Some(value.into_owned());
            }
        }
        for (name, value) in [
            ("state", &r.state),
            ("code", &r.code),
            ("error", &r.error),
            ("iss", &r.iss),
            ("provider", &r.provider),
            ("redirect_uri", &r.redirect_uri),
        ] {
            check_len(name, value.as_ref())?;
        }
        let state = r
            .state
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::bad_request("`state` is required"))?;
        if r.code.is_none() && r.error.is_none() {
            return Err(Error::bad_request("`code` or `error` is required"));
        }
        if r.code.is_some() && r.error.is_some() {
            return Err(Error::bad_request("send `code` or `error`, not both"));
        }
        Ok(Self {
            state,
            code: r.code,
            error: r.error,
            error_description: r.error_description,
            iss: r.iss,
            expected_provider: r.provider,
            expected_redirect_uri: r.redirect_uri,
            params,
        })
    }
}

/// A user as replies show it.
fn user_view(user: &UserRecord) -> UserView {
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
fn identity_view(identity: &IdentityRecord) -> IdentityView {
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

fn unreachable_input<T>() -> Result<T, Error> {
    Err(Error::bad_request("`code` or `error` is required"))
}

fn check_len(name: &str, value: Option<&String>) -> Result<(), Error> {
    match value {
        Some(v) if v.len() > MAX_FIELD => Err(Error::bad_request(format!(
            "`{name}` is longer than {MAX_FIELD} bytes"
        ))),
        _ => Ok(()),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
