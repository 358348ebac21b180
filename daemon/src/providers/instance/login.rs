//! Starting a login: scopes, state, nonce and PKCE, and the authorization URL; where a login may
//! return to.

use lanyard_provider_sdk::{AuthorizeInput, AuthorizeParams, Op};
use oauth2::{CsrfToken, PkceCodeChallenge, PkceCodeVerifier, Scope};

use super::{Instance, LoginArgs, LoginStart, Resolved};
use crate::error::Error;
use crate::login_state::{fingerprint, LoginState};

/// At most this many authorization-parameter answers are remembered per instance.
const REMEMBERED_PARAMS: usize = 64;

/// What a login's authorization parameters depend on besides the instance's settings: the
/// inputs of `authorize_params` that are not per user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ParamsKey {
    scopes: Option<Vec<String>>,
    fetch_groups: bool,
    prompt: Option<String>,
}

impl ParamsKey {
    /// The key of a login whose parameters may be remembered: not one with a `login_hint`,
    /// which is per user (remembering those would keep one answer per user).
    fn of(args: &LoginArgs) -> Option<Self> {
        args.login_hint.is_none().then(|| Self {
            scopes: args.scopes.clone(),
            fetch_groups: args.state.fetch_groups,
            prompt: args.prompt.clone(),
        })
    }
}

impl Instance {
    /// The plugin's authorization parameters for this login, when a login with the same
    /// input asked for them before. Plugins are pure (the same input gives the same answer),
    /// so such a login is computation only: no plugin call, no task.
    pub fn remembered_params(&self, args: &LoginArgs) -> Option<std::sync::Arc<AuthorizeParams>> {
        let key = ParamsKey::of(args)?;
        self.authorize_params
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
            .cloned()
    }

    /// Starts a login admitted by [`check_login`](Self::check_login): asks the plugin for its
    /// authorization parameters (and remembers them, see
    /// [`remembered_params`](Self::remembered_params)), then [`authorize`](Self::authorize).
    pub async fn start_login(
        &self,
        resolved: &Resolved,
        args: LoginArgs,
    ) -> Result<LoginStart, Error> {
        let scopes = self.scopes(args.scopes.clone(), args.state.fetch_groups);
        let params: AuthorizeParams = self
            .call(
                Op::AuthorizeParams,
                &AuthorizeInput {
                    settings: self.settings.clone(),
                    scopes,
                    fetch_groups: args.state.fetch_groups,
                    login_hint: args.login_hint.clone(),
                    prompt: args.prompt.clone(),
                },
            )
            .await?;
        let params = std::sync::Arc::new(params);
        if let Some(key) = ParamsKey::of(&args) {
            let mut remembered = self
                .authorize_params
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Full (callers sending ever new scopes or prompts): start over, so the inputs
            // in use now are remembered again rather than the first ones ever seen.
            if remembered.len() >= REMEMBERED_PARAMS {
                remembered.clear();
            }
            remembered.insert(key, params.clone());
        }
        self.authorize(resolved, args, &params)
    }

    /// The rest of a login's start, given the plugin's parameters: chooses scopes, seals
    /// the state, and builds the authorization URL with the login's nonce and PKCE challenge.
    pub fn authorize(
        &self,
        resolved: &Resolved,
        args: LoginArgs,
        params: &AuthorizeParams,
    ) -> Result<LoginStart, Error> {
        // Checked against the allow-list when the actor admitted the login (check_login).
        let redirect_uri = args
            .redirect_uri
            .unwrap_or_else(|| self.config.redirect_uris[0].clone());
        let description = self.plugin.description();
        let scopes = self.scopes(args.scopes, args.state.fetch_groups);
        let state = match args.stored_state {
            Some(stored) => stored,
            None => args.states.seal(&LoginState {
                generation: fingerprint(&self.generation),
                redirect_uri: fingerprint(&redirect_uri),
                ..args.state
            })?,
        };
        let client = &resolved.client;
        let redirect = oauth2::RedirectUrl::new(redirect_uri.clone())
            .map_err(|e| Error::internal(format!("redirect_uri: {e}")))?;
        let mut request = client
            .authorize_url(|| CsrfToken::new(state.clone()))
            .set_redirect_uri(std::borrow::Cow::Owned(redirect))
            .add_scopes(scopes.iter().cloned().map(Scope::new));
        if description.pkce {
            let verifier = PkceCodeVerifier::new(args.secrets.pkce_verifier.clone());
            request =
                request.set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier));
        }
        if self.is_oidc() {
            request = request.add_extra_param("nonce", args.secrets.nonce.clone());
        }
        for (name, value) in &params.params {
            // The security parameters are the host's; a plugin cannot override them.
            if !matches!(
                name.as_str(),
                "state"
                    | "nonce"
                    | "code_challenge"
                    | "code_challenge_method"
                    | "redirect_uri"
                    | "client_id"
                    | "response_type"
                    | "scope"
            ) {
                request = request.add_extra_param(name.clone(), value.clone());
            }
        }
        let (url, _) = request.url();
        Ok(LoginStart {
            authorization_url: url.to_string(),
            state,
            redirect_uri,
            generation: self.generation.clone(),
            pkce: description.pkce,
            oidc: self.is_oidc(),
        })
    }
}

impl Instance {
    /// The scopes a login asks for: the request's, else the instance's, else the plugin's
    /// defaults; plus the group scopes when groups are wanted, and `openid` for OpenID
    /// Connect; each once.
    pub(super) fn scopes(&self, requested: Option<Vec<String>>, fetch_groups: bool) -> Vec<String> {
        let description = self.plugin.description();
        let mut scopes: Vec<String> = requested
            .or_else(|| self.config.scopes.clone())
            .unwrap_or_else(|| description.default_scopes.clone());
        if fetch_groups {
            scopes.extend(description.group_scopes.iter().cloned());
        }
        if self.is_oidc() && !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        let mut seen = std::collections::HashSet::new();
        scopes.retain(|s| seen.insert(s.clone()));
        scopes
    }
}

/// Whether `return_to` is on-site: a plain relative path, or an absolute URL under one of
/// `allowed` (same scheme, host and port; path under the entry's).
pub(super) fn return_to_allowed(return_to: &str, allowed: &[String]) -> bool {
    if return_to.starts_with('/') {
        // `//host` and `/\host` are other sites to a browser.
        let second = return_to.chars().nth(1);
        return !matches!(second, Some('/') | Some('\\'))
            && !return_to.chars().any(|c| c.is_control());
    }
    let Ok(url) = url::Url::parse(return_to) else {
        return false;
    };
    allowed.iter().any(|entry| {
        url::Url::parse(entry).is_ok_and(|base| {
            base.origin() == url.origin()
                && url.path().starts_with(base.path())
                && url.username().is_empty()
                && url.password().is_none()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_on_site_destinations_pass() {
        let allowed = vec![
            "https://app.example.com/".to_owned(),
            "https://example.com/docs/".to_owned(),
        ];
        for ok in [
            "/account",
            "/",
            "https://app.example.com/settings?tab=1",
            "https://example.com/docs/intro",
        ] {
            assert!(return_to_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "//evil.test/x",
            "/\\evil.test",
            "https://evil.test/",
            "https://app.example.com.evil.test/",
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "https://example.com/other",
            "https://user@app.example.com/",
            "javascript:alert(1)",
            "evil.test",
        ] {
            assert!(!return_to_allowed(bad, &allowed), "{bad}");
        }
    }
}
