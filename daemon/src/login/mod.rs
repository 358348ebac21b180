//! The login: starting one (`login`) and finishing it (`callback`). A login's start checks
//! the request, seals what its callback will need into its state (login_state.rs) and asks
//! the provider's actor for the authorization URL: it writes nothing. Its callback normalises
//! the request (input.rs), opens the state, spends it (exactly one callback per state, on
//! any daemon), checks the browser binding, has the actor finish the login at the provider,
//! and commits user, identity and session (complete.rs).

mod complete;
mod device;
mod hosted;
mod input;
mod waited;

use std::sync::Arc;

use lanyard_proto::{CallbackReply, CallbackRequest, Event, LoginReply, LoginRequest};

use crate::error::Error;
use crate::login_state::{LoginState, LoginStates, MAX_RETURN_TO};
use crate::providers::LoginArgs;
use crate::service::{check_len, Lanyard};
use crate::sessions::{now, rfc3339};
use crate::store::{hex_sha256, PendingLogin, WAITED_LOGIN_MAX_SECS};

pub(crate) use device::DevicePollers;
pub(crate) use hosted::BindingCookie;
use input::{CallbackInput, Seen};

/// What starting and finishing logins needs beyond the other parts of the daemon.
#[derive(Debug)]
pub struct Logins {
    /// Seals and opens login states.
    pub states: Arc<LoginStates>,
    /// How long a started login may take to come back (`pending_ttl_secs`).
    pub ttl_secs: u64,
    /// Store logins as the previous version did (`stored_login_states`).
    pub stored: bool,
    /// Seals what a waited-for login keeps in the store.
    pub vault: Arc<crate::crypto::Vault>,
    /// The hosted pages (`[hosted]`), when on.
    pub hosted: Option<crate::config::HostedConfig>,
}

/// Limits on free-text request fields, so one request cannot bloat the store.
const PROMPTS: &[&str] = &["none", "login", "consent", "select_account", "create"];

/// Requested scopes: at most 50 scope tokens, none empty or with a space.
fn check_scopes(scopes: &[String]) -> Result<(), Error> {
    if scopes.len() > 50 || scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
        return Err(Error::bad_request(
            "scopes must be at most 50 non-empty scope tokens without spaces",
        ));
    }
    Ok(())
}

impl Lanyard {
    /// `login`: starts a login. Nothing is written: the state carries the login, sealed
    /// (unless `stored_login_states`, for a rolling upgrade). A hosted login is stored for
    /// its start page and the app's wait (hosted.rs).
    pub async fn login(&self, mut request: LoginRequest) -> Result<LoginReply, Error> {
        self.check_login_request(&request)?;
        if request.hosted {
            if request.redirect_uri.is_some() {
                return Err(Error::bad_request(
                    "a hosted login comes back to Lanyard's own page: leave out redirect_uri",
                ));
            }
            if self.logins.stored {
                return Err(Error::bad_request(
                    "hosted logins are off while stored_login_states is on",
                ));
            }
            request.redirect_uri = Some(self.hosted_config()?.callback_url());
            let allowed = self
                .providers
                .describe(&request.provider)
                .is_ok_and(|d| d.config.hosted_logins);
            if !allowed {
                return Err(Error::bad_request(format!(
                    "provider `{}` does not allow hosted logins (set `hosted_logins = true` \
                     on it)",
                    request.provider
                )));
            }
        }
        let link_user = match &request.link_session {
            Some(token) => Some(self.sessions.verify(token, self.store.as_ref()).await?.sub),
            None => None,
        };
        let ttl = match request.hosted {
            // A hosted login's record is kept at most this long: so is its state.
            true => self.logins.ttl_secs.min(WAITED_LOGIN_MAX_SECS as u64),
            false => self.logins.ttl_secs,
        };
        let expires_at = now() + ttl as i64;
        let states = &self.logins.states;
        let id = states.new_id()?;
        let secrets = states.secrets(&id);
        let binding = secrets.binding.clone();
        let stored_state = match self.logins.stored {
            true => Some(states.new_stored_state(expires_at)?),
            false => None,
        };
        let to_store = stored_state.as_ref().map(|_| PendingLogin {
            provider: request.provider.clone(),
            // The actor's choices, filled in below.
            generation: String::new(),
            redirect_uri: String::new(),
            pkce_verifier: Some(secrets.pkce_verifier.clone()),
            nonce: Some(secrets.nonce.clone()),
            scopes: Vec::new(),
            fetch_groups: request.fetch_groups,
            return_to: request.return_to.clone(),
            link_user: link_user.clone(),
            created_at: now(),
            expires_at,
            binding_hash: Some(hex_sha256(binding.as_bytes())),
        });
        let provider = request.provider.clone();
        let hosted = request.hosted.then(|| secrets.clone());
        let start = self
            .providers
            .login(
                &provider,
                LoginArgs {
                    redirect_uri: request.redirect_uri,
                    scopes: request.scopes,
                    login_hint: request.login_hint,
                    prompt: request.prompt,
                    state: LoginState {
                        id,
                        expires_at,
                        provider: request.provider,
                        // The instance names these when it seals the state.
                        generation: [0; 8],
                        redirect_uri: [0; 8],
                        fetch_groups: request.fetch_groups,
                        link_user,
                        return_to: request.return_to,
                    },
                    stored_state,
                    secrets,
                    states: states.clone(),
                },
            )
            .await?;
        if let Some(pending) = to_store {
            // As the previous version did, so that its daemons can finish the login too.
            let pending = PendingLogin {
                generation: start.generation.clone(),
                redirect_uri: start.redirect_uri,
                pkce_verifier: pending.pkce_verifier.filter(|_| start.pkce),
                nonce: pending.nonce.filter(|_| start.oidc),
                ..pending
            };
            self.store.put_pending(&start.state, &pending).await?;
        }
        let (authorization_url, handle) = match hosted {
            // Lanyard's callback takes GET: a provider told to POST back (Apple's form_post)
            // would never reach it with the binding cookie.
            Some(_) if start.authorization_url.contains("response_mode=form_post") => {
                return Err(Error::bad_request(format!(
                    "provider `{provider}` answers with form_post, which hosted logins do not take"
                )));
            }
            Some(secrets) => {
                let (page, handle) = self
                    .store_hosted(
                        &provider,
                        start.generation,
                        start.authorization_url,
                        &secrets,
                        expires_at,
                        request.fetch_groups,
                    )
                    .await?;
                (page, Some(handle))
            }
            None => (start.authorization_url, None),
        };
        self.events.metrics().login_started(&provider);
        Ok(LoginReply {
            authorization_url,
            state: start.state,
            binding,
            expires_at: rfc3339(expires_at),
            handle,
        })
    }

    /// A `login` request's own checks: field lengths, `return_to` on-site, known prompts,
    /// well-formed scopes.
    fn check_login_request(&self, request: &LoginRequest) -> Result<(), Error> {
        check_len("provider", Some(&request.provider))?;
        if let Some(return_to) = request.return_to.as_deref() {
            if return_to.len() > MAX_RETURN_TO {
                return Err(Error::bad_request(format!(
                    "`return_to` is longer than {MAX_RETURN_TO} bytes"
                )));
            }
            if let Ok(described) = self.providers.describe(&request.provider) {
                described.check_return_to(return_to)?;
            }
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
            check_scopes(scopes)?;
        }
        Ok(())
    }

    /// `callback`: spends the state, finishes the login at the provider, creates or links
    /// the user, stores the session, and only then replies and emits events.
    pub async fn callback(&self, request: CallbackRequest) -> Result<CallbackReply, Error> {
        self.callback_spending(request).await.0
    }

    /// [`callback`](Self::callback), and whether this call spent the state (the login's
    /// outcome is then this call's).
    pub(super) async fn callback_spending(
        &self,
        request: CallbackRequest,
    ) -> (Result<CallbackReply, Error>, bool) {
        let input = match CallbackInput::parse(request) {
            Ok(input) => input,
            Err(error) => return (Err(error), false),
        };
        // The provider `login.failed` names comes from the login itself (its sealed state,
        // or the stored login), never from what the caller says it expects.
        let mut seen = Seen {
            provider: None,
            taken: false,
            spent: false,
        };
        let result = self.finish_callback(&input, &mut seen).await;
        if result.is_err() && seen.taken {
            // A pending login of the previous version may have been consumed: make that
            // durable before answering, so a crash cannot bring a refused state back.
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
        (result, seen.spent)
    }
}
