//! The login: starting one (`login`) and finishing it (`callback`). A login's start checks
//! the request and asks the provider's actor for the authorization URL, then remembers the
//! pending login under its state; its callback normalises the request (input.rs), takes the
//! pending login (exactly one taker), has the actor finish it at the provider, and commits
//! user, identity and session (complete.rs).

mod complete;
mod input;

use lanyard_proto::{CallbackReply, CallbackRequest, Event, LoginReply, LoginRequest};

use crate::error::Error;
use crate::providers::LoginArgs;
use crate::service::{check_len, Lanyard};
use crate::sessions::{now, rfc3339};
use crate::store::PendingLogin;

use input::{CallbackInput, Seen};

/// Limits on free-text request fields, so one request cannot bloat the store.
const PROMPTS: &[&str] = &["none", "login", "consent", "select_account", "create"];

impl Lanyard {
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
}
