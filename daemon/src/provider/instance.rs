//! One provider instance as its actor runs it. [`InstanceSpec`] is what an instance is built
//! from (its configuration, secret, plugin and generation); [`Instance`] is the result:
//! validated against its plugin, configured through the bounded plugin path, and fixed for
//! the actor's life. Its methods are the network work of a login (discovery, the
//! authorization URL, the code exchange, ID-token validation, the profile, refresh and
//! revocation); they run in tasks off the actor's mailbox and take what the actor caches
//! (the resolved endpoints, the issuer's keys, the client-secret JWT) as arguments, so what
//! changes while an instance serves lives in its actor (actor.rs).

use std::cell::Cell;
use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::Algorithm;
use lanyard_provider_sdk::{
    AuthorizeInput, AuthorizeParams, CheckClaimsInput, ConfigureInput, Endpoints, ErrorKind,
    HttpRequest, MapProfileInput, Op, Profile, ProfileRequestsInput, Protocol, Settings,
};
use oauth2::{CsrfToken, PkceCodeChallenge, Scope};
use ring::rand::SystemRandom;
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::http::{oauth_client, HttpClient, OAuthClient, ProviderTokens};
use super::oidc::{discover, parse_algs, Expectations, KeySource};
use crate::config::{ConfigError, ProviderConfig};
use crate::error::{Error, ErrorCode};
use crate::plugin::{BoundedError, CallError, Plugin, MAX_HUNG_CALLS};
use crate::session::{now, random_bytes, random_token};
use crate::store::PendingLogin;

/// What a login needs from the caller.
#[derive(Debug, Clone, Default)]
pub struct LoginArgs {
    pub redirect_uri: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub fetch_groups: bool,
    pub login_hint: Option<String>,
    pub prompt: Option<String>,
    /// When the login's state expires (seconds); the state carries it.
    pub expires_at: i64,
}

/// A started login: where to send the user and what to remember until the callback.
#[derive(Debug, Clone)]
pub struct LoginStart {
    pub authorization_url: String,
    pub state: String,
    pub redirect_uri: String,
    pub pkce_verifier: Option<String>,
    pub nonce: Option<String>,
    pub scopes: Vec<String>,
    /// The generation of the instance that started it.
    pub generation: String,
}

/// A callback to finish.
#[derive(Debug)]
pub struct CompleteArgs {
    pub pending: PendingLogin,
    pub code: String,
    pub iss: Option<String>,
    /// The callback's other parameters, for the plugin (Apple's first-login `user`).
    pub params: std::collections::BTreeMap<String, String>,
}

/// A finished provider login, with the instance's policy for storing it (as configured when
/// it finished, so an admin change applies to the next login).
#[derive(Debug)]
pub struct Completed {
    pub profile: Profile,
    pub tokens: ProviderTokens,
    pub trust_email_verified: bool,
    pub store_tokens: bool,
}

/// An instance as other parts of the daemon see it: its configuration and generation.
#[derive(Debug, Clone)]
pub struct Described {
    pub config: Arc<ProviderConfig>,
    pub generation: String,
}

impl Described {
    /// Refuses a `return_to` off the instance's `allowed_return_to` (when it has one).
    pub fn check_return_to(&self, return_to: &str) -> Result<(), Error> {
        let allowed = &self.config.allowed_return_to;
        if allowed.is_empty() || return_to_allowed(return_to, allowed) {
            Ok(())
        } else {
            Err(Error::bad_request(format!(
                "return_to is not under provider `{}`'s allowed_return_to",
                self.config.id
            )))
        }
    }
}

/// Endpoints after discovery.
#[derive(Debug)]
pub struct Resolved {
    issuer: Option<String>,
    /// RFC 7009 revocation, when discovery names it.
    revocation_url: Option<String>,
    endpoints: Endpoints,
    /// The issuer's JWKS, for OpenID Connect instances.
    pub jwks_uri: Option<String>,
    /// The OAuth2 client for these endpoints, built once.
    client: OAuthClient,
}

/// The private key client-secret JWTs are signed with. Its `Debug` shows nothing of it.
struct AssertionKey(jsonwebtoken::EncodingKey);

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AssertionKey(..)")
    }
}

/// An instance's health: `status` is `ok`, `degraded` (failures counted, a probe pending, or
/// plugin calls stuck) or `unavailable` (circuit open, or the plugin disabled after too many
/// stuck calls); the supervisor's view adds `restarting`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub circuit: &'static str,
    pub consecutive_failures: u32,
    pub stuck_plugin_calls: usize,
}

impl Health {
    /// From the circuit's view and the plugin's stuck calls.
    pub fn of(circuit: &'static str, failures: u32, stuck: usize) -> Self {
        let status = if stuck >= MAX_HUNG_CALLS || circuit == "open" {
            "unavailable"
        } else if stuck > 0 || failures > 0 || circuit != "closed" {
            "degraded"
        } else {
            "ok"
        };
        Self {
            status,
            circuit,
            consecutive_failures: failures,
            stuck_plugin_calls: stuck,
        }
    }
}

/// Everything needed to build an instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub config: ProviderConfig,
    pub secret: Option<SecretString>,
    pub plugin: Arc<Plugin>,
    pub http: HttpClient,
    /// Where the instance was defined, for error messages: `providers[2]` or `provider`.
    pub label: String,
    /// Changes when the instance is deleted and created again, so logins started before
    /// cannot finish after.
    pub generation: String,
}

impl InstanceSpec {
    /// Validates the instance against its plugin and configures it (a plugin call, bounded
    /// by the instance's `plugin_timeout_ms`). Does no network I/O: discovery happens on
    /// first use.
    pub async fn build(&self) -> Result<Instance, ConfigError> {
        let config = &self.config;
        let label = &self.label;
        let key = |k: &str| format!("{label}.{k}");
        let plugin = &self.plugin;
        let fields = &plugin.description().config_fields;
        for name in config.settings.keys() {
            if !fields.iter().any(|f| &f.name == name) {
                let known: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                return Err(ConfigError::at(
                    key(name),
                    format!(
                        "unknown key for kind `{}` (its own keys: {known:?})",
                        config.kind
                    ),
                ));
            }
        }
        for field in fields.iter().filter(|f| f.required) {
            if !config.settings.contains_key(&field.name) {
                return Err(ConfigError::at(
                    key(&field.name),
                    format!("required by kind `{}`: {}", config.kind, field.description),
                ));
            }
        }
        // An instance with timeouts of its own gets a client of its own.
        let http = if config.http_timeout_ms.is_some() || config.http_connect_timeout_ms.is_some() {
            let mut own = self.http.config.clone();
            if let Some(ms) = config.http_timeout_ms {
                own.timeout_ms = ms;
            }
            if let Some(ms) = config.http_connect_timeout_ms {
                own.connect_timeout_ms = ms;
            }
            HttpClient::new(own).map_err(|e| {
                ConfigError::instance(&config.id, format!("cannot build its HTTP client: {e}"))
            })?
        } else {
            self.http.clone()
        };
        let settings: Settings = config.settings.clone().into_iter().collect();
        let configured: Endpoints = plugin
            .call_bounded(
                Op::Configure,
                &ConfigureInput {
                    id: config.id.clone(),
                    settings: settings.clone(),
                },
                plugin_limit(config),
            )
            .await
            .map_err(|e| ConfigError::at(key("kind"), e))?;
        for url in [
            &configured.issuer,
            &configured.authorization_url,
            &configured.token_url,
            &configured.userinfo_url,
            &configured.jwks_uri,
        ]
        .into_iter()
        .flatten()
        {
            check_url(url, http.config.allow_insecure_http)
                .map_err(|e| ConfigError::instance(&config.id, e))?;
        }
        let oidc = plugin.description().protocol == Protocol::Oidc;
        if oidc && configured.issuer.is_none() {
            return Err(ConfigError::instance(
                &config.id,
                "an OpenID Connect provider needs an issuer",
            ));
        }
        if !oidc && (configured.authorization_url.is_none() || configured.token_url.is_none()) {
            return Err(ConfigError::instance(
                &config.id,
                "the plugin resolved no authorization or token URL",
            ));
        }
        let assertion_key = match &configured.client_secret_jwt {
            None => None,
            Some(jwt) => {
                if jwt.issuer.is_empty() || jwt.key_id.is_empty() || jwt.audience.is_empty() {
                    return Err(ConfigError::instance(
                        &config.id,
                        "the plugin asked for a client-secret JWT without issuer, key id or audience",
                    ));
                }
                let pem = self.secret.as_ref().ok_or_else(|| {
                    ConfigError::at(
                        key("client_secret"),
                        format!(
                            "kind `{}` signs its client secret: set client_secret (or _file/_env) to the EC private key (PEM)",
                            config.kind
                        ),
                    )
                })?;
                let key = jsonwebtoken::EncodingKey::from_ec_pem(
                    secrecy::ExposeSecret::expose_secret(pem).as_bytes(),
                )
                .map_err(|_| {
                    ConfigError::at(
                        key("client_secret"),
                        format!(
                            "kind `{}` needs an EC P-256 private key in PEM (PKCS#8) here",
                            config.kind
                        ),
                    )
                })?;
                Some(AssertionKey(key))
            }
        };
        Ok(Instance {
            id: config.id.clone(),
            algs: parse_algs(&config.allowed_algs),
            assertion_key,
            config: Arc::new(config.clone()),
            generation: self.generation.clone(),
            plugin: plugin.clone(),
            secret: self.secret.clone(),
            settings,
            configured,
            http,
            rng: SystemRandom::new(),
        })
    }
}

/// How long one plugin call of an instance may take.
fn plugin_limit(config: &ProviderConfig) -> std::time::Duration {
    std::time::Duration::from_millis(config.plugin_timeout_ms.max(1))
}

/// A provider instance, validated and ready to serve; it never changes.
#[derive(Debug)]
pub struct Instance {
    pub id: String,
    pub config: Arc<ProviderConfig>,
    pub generation: String,
    plugin: Arc<Plugin>,
    secret: Option<SecretString>,
    settings: Settings,
    configured: Endpoints,
    algs: Vec<Algorithm>,
    http: HttpClient,
    rng: SystemRandom,
    /// The ES256 key a client-secret JWT is signed with, when the plugin asks for one.
    assertion_key: Option<AssertionKey>,
}

tokio::task_local! {
    /// Set when a plugin call of the current request panicked or overran: the request's
    /// task then has the actor replaced before it answers.
    static PLUGIN_FAULT: Cell<bool>;
}

/// Runs a request's work, and tells whether a plugin call in it panicked or overran.
pub async fn watching_plugin_faults<T>(work: impl std::future::Future<Output = T>) -> (T, bool) {
    PLUGIN_FAULT
        .scope(Cell::new(false), async {
            let out = work.await;
            (out, PLUGIN_FAULT.with(Cell::get))
        })
        .await
}

fn note_plugin_fault() {
    let _ = PLUGIN_FAULT.try_with(|fault| fault.set(true));
}

impl Instance {
    pub fn kind(&self) -> &str {
        self.plugin.kind()
    }

    fn is_oidc(&self) -> bool {
        self.plugin.description().protocol == Protocol::Oidc
    }

    /// How it fares, given its circuit's view.
    pub fn health(&self, circuit: &'static str, failures: u32) -> Health {
        Health::of(
            circuit,
            failures,
            self.plugin.hung.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn describe(&self) -> Described {
        Described {
            config: self.config.clone(),
            generation: self.generation.clone(),
        }
    }

    /// The check a login passes before anything reaches the provider: an allowed redirect
    /// URI. (`return_to` is the service's to check, before anything else: see
    /// [`Described::check_return_to`].)
    pub fn check_login(&self, args: &LoginArgs) -> Result<(), Error> {
        if let Some(uri) = &args.redirect_uri {
            if !self.config.redirect_uris.contains(uri) {
                return Err(Error::bad_request(format!(
                    "redirect_uri is not in provider `{}`'s allow-list",
                    self.id
                )));
            }
        }
        Ok(())
    }

    /// The error for a request refused because the circuit is open.
    pub fn circuit_open(&self) -> Error {
        Error::unavailable(format!(
            "provider `{}` failed repeatedly; not trying it again for up to {} s",
            self.id, self.config.circuit_open_secs
        ))
    }

    /// The endpoints, after discovery for OpenID Connect.
    pub async fn resolve(&self) -> Result<Resolved, Error> {
        let mut endpoints = self.configured.clone();
        let mut revocation_url = None;
        if self.is_oidc() {
            let issuer = endpoints.issuer.clone().unwrap_or_default();
            let doc = discover(&self.http, &issuer, endpoints.discovery_url.as_deref()).await?;
            let fill = |slot: &mut Option<String>, value: Option<String>| {
                if slot.is_none() {
                    *slot = value;
                }
            };
            fill(
                &mut endpoints.authorization_url,
                Some(doc.authorization_endpoint),
            );
            fill(&mut endpoints.token_url, Some(doc.token_endpoint));
            fill(&mut endpoints.userinfo_url, doc.userinfo_endpoint);
            fill(&mut endpoints.jwks_uri, Some(doc.jwks_uri));
            revocation_url = doc.revocation_endpoint;
            for url in [&endpoints.authorization_url, &endpoints.token_url]
                .into_iter()
                .flatten()
            {
                check_url(url, self.http.config.allow_insecure_http).map_err(Error::provider)?;
            }
        }
        let missing = || Error::internal("provider endpoints are incomplete");
        let authorization_url = endpoints.authorization_url.clone().ok_or_else(missing)?;
        let token_url = endpoints.token_url.clone().ok_or_else(missing)?;
        let client = oauth_client(
            &self.config.client_id,
            self.secret.as_ref(),
            &authorization_url,
            &token_url,
            endpoints.token_auth,
        )?;
        Ok(Resolved {
            revocation_url,
            issuer: endpoints.issuer.clone(),
            client,
            jwks_uri: if self.is_oidc() {
                endpoints.jwks_uri.clone()
            } else {
                None
            },
            endpoints,
        })
    }

    /// Fetches the issuer's JWKS.
    pub async fn fetch_jwks(&self, uri: &str) -> Result<Arc<JwkSet>, Error> {
        Ok(Arc::new(self.http.get_json(uri).await?))
    }

    /// Starts a login admitted by [`check_login`](Self::check_login): chooses scopes, creates
    /// state, nonce and PKCE, and builds the authorization URL.
    pub async fn start_login(
        &self,
        resolved: &Resolved,
        args: LoginArgs,
    ) -> Result<LoginStart, Error> {
        // Checked against the allow-list when the actor admitted the login (check_login).
        let redirect_uri = args
            .redirect_uri
            .unwrap_or_else(|| self.config.redirect_uris[0].clone());
        let description = self.plugin.description();
        let mut scopes: Vec<String> = args
            .scopes
            .or_else(|| self.config.scopes.clone())
            .unwrap_or_else(|| description.default_scopes.clone());
        if args.fetch_groups {
            scopes.extend(description.group_scopes.iter().cloned());
        }
        if self.is_oidc() && !scopes.iter().any(|s| s == "openid") {
            scopes.insert(0, "openid".into());
        }
        let mut seen = std::collections::HashSet::new();
        scopes.retain(|s| seen.insert(s.clone()));

        let params: AuthorizeParams = self
            .call(
                Op::AuthorizeParams,
                &AuthorizeInput {
                    settings: self.settings.clone(),
                    scopes: scopes.clone(),
                    fetch_groups: args.fetch_groups,
                    login_hint: args.login_hint,
                    prompt: args.prompt,
                },
            )
            .await?;
        let state = crate::store::new_state(args.expires_at, random_bytes(&self.rng)?);
        let client = &resolved.client;
        let redirect = oauth2::RedirectUrl::new(redirect_uri.clone())
            .map_err(|e| Error::internal(format!("redirect_uri: {e}")))?;
        let mut request = client
            .authorize_url(|| CsrfToken::new(state.clone()))
            .set_redirect_uri(std::borrow::Cow::Owned(redirect))
            .add_scopes(scopes.iter().cloned().map(Scope::new));
        let mut pkce_verifier = None;
        if description.pkce {
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            request = request.set_pkce_challenge(challenge);
            pkce_verifier = Some(verifier.secret().clone());
        }
        let mut nonce = None;
        if self.is_oidc() {
            let value = random_token(&self.rng)?;
            request = request.add_extra_param("nonce", value.clone());
            nonce = Some(value);
        }
        for (name, value) in params.params {
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
                request = request.add_extra_param(name, value);
            }
        }
        let (url, _) = request.url();
        Ok(LoginStart {
            authorization_url: url.to_string(),
            state,
            redirect_uri,
            pkce_verifier,
            nonce,
            scopes,
            generation: self.generation.clone(),
        })
    }

    /// Finishes a login: checks the RFC 9207 `iss`, exchanges the code (with `assertion` as
    /// the client secret when the provider wants one signed), validates the ID token against
    /// `keys`, fetches and maps the profile.
    pub async fn complete(
        &self,
        resolved: &Resolved,
        keys: &impl KeySource,
        assertion: Option<String>,
        args: CompleteArgs,
    ) -> Result<Completed, Error> {
        let CompleteArgs {
            pending,
            code,
            iss,
            params,
        } = args;
        if let (Some(iss), Some(issuer)) = (iss.as_deref(), resolved.issuer.as_deref()) {
            if !super::oidc::issuer_matches(issuer, iss, None) {
                tracing::warn!(provider = %self.id, "callback iss does not match the issuer");
                return Err(Error::new(
                    ErrorCode::InvalidState,
                    "the callback came from a different issuer than the login started with",
                ));
            }
        }
        let client = token_client(resolved, assertion);
        let tokens = self
            .http
            .exchange_code(
                &client,
                code,
                pending.pkce_verifier.clone(),
                pending.redirect_uri.clone(),
            )
            .await?;

        let claims = match (&resolved.jwks_uri, &resolved.issuer) {
            (Some(_), Some(issuer)) => {
                let id_token = tokens.id_token.as_deref().ok_or_else(|| {
                    tracing::warn!(provider = %self.id, "token response has no id_token");
                    Error::invalid_id_token()
                })?;
                let claims = super::oidc::verify(
                    keys,
                    id_token,
                    &Expectations {
                        issuer,
                        client_id: &self.config.client_id,
                        nonce: pending.nonce.as_deref(),
                        allowed_algs: &self.algs,
                        skew_secs: self.config.clock_skew_secs,
                        now: now(),
                        access_token: Some(secrecy::ExposeSecret::expose_secret(
                            &tokens.access_token,
                        )),
                    },
                )
                .await?;
                let () = self
                    .call::<_, serde_json::Value>(
                        Op::CheckClaims,
                        &CheckClaimsInput {
                            settings: self.settings.clone(),
                            endpoints: resolved.endpoints.clone(),
                            claims: claims.clone(),
                        },
                    )
                    .await
                    .map(|_| ())?;
                Some(claims)
            }
            _ => None,
        };

        let requests: Vec<HttpRequest> = self
            .call(
                Op::ProfileRequests,
                &ProfileRequestsInput {
                    settings: self.settings.clone(),
                    endpoints: resolved.endpoints.clone(),
                    claims: claims.clone(),
                    fetch_groups: pending.fetch_groups,
                    granted_scopes: tokens.scopes.clone().unwrap_or_default(),
                },
            )
            .await?;
        self.check_request_targets(&requests, resolved)?;
        let responses = self
            .http
            .profile_requests(&requests, &tokens.access_token)
            .await?;
        let profile: Profile = self
            .call(
                Op::MapProfile,
                &MapProfileInput {
                    settings: self.settings.clone(),
                    claims: claims.clone(),
                    responses,
                    fetch_groups: pending.fetch_groups,
                    callback_params: params,
                },
            )
            .await?;
        if let Some(sub) = claims.as_ref().and_then(|c| c["sub"].as_str()) {
            if sub != profile.subject {
                return Err(Error::internal(
                    "the plugin mapped a subject other than the ID token's",
                ));
            }
        }
        let profile = checked_profile(profile, &self.id)?;
        Ok(Completed {
            profile,
            tokens,
            trust_email_verified: self.config.trust_email_verified,
            store_tokens: self.config.store_tokens,
        })
    }

    /// Refreshes the user's provider tokens with a stored refresh token.
    pub async fn refresh(
        &self,
        resolved: &Resolved,
        assertion: Option<String>,
        refresh_token: SecretString,
    ) -> Result<ProviderTokens, Error> {
        let client = token_client(resolved, assertion);
        self.http
            .exchange_refresh_token(&client, refresh_token)
            .await
    }

    /// Revokes a token at the provider, when it has a revocation endpoint. Returns whether
    /// the provider supports revocation.
    pub async fn revoke(
        &self,
        resolved: &Resolved,
        token: SecretString,
        hint: &'static str,
    ) -> Result<bool, Error> {
        let Some(url) = &resolved.revocation_url else {
            return Ok(false);
        };
        self.http
            .revoke_token(
                url,
                &self.config.client_id,
                self.secret.as_ref(),
                &token,
                hint,
            )
            .await?;
        Ok(true)
    }

    /// The client-secret JWT for the token endpoint when the provider wants one: `cached`
    /// while more than half its life is left, else a new one (which replaces it).
    pub fn assertion(&self, cached: &mut Option<(String, i64)>) -> Result<Option<String>, Error> {
        let (Some(jwt), Some(key)) = (&self.configured.client_secret_jwt, &self.assertion_key)
        else {
            return Ok(None);
        };
        let now = now();
        let lifetime = jwt.lifetime_secs.clamp(60, 180 * 86_400) as i64;
        if let Some((token, expires)) = cached.as_ref() {
            if expires - now > lifetime / 2 {
                return Ok(Some(token.clone()));
            }
        }
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(jwt.key_id.clone());
        let claims = serde_json::json!({
            "iss": jwt.issuer,
            "sub": self.config.client_id,
            "aud": jwt.audience,
            "iat": now,
            "exp": now + lifetime,
        });
        let token = jsonwebtoken::encode(&header, &claims, &key.0)
            .map_err(|e| Error::internal(format!("cannot sign the client secret: {e}")))?;
        *cached = Some((token.clone(), now + lifetime));
        Ok(Some(token))
    }

    /// The user's access token only goes to the provider's own origins (those of its
    /// endpoints and issuer), so a plugin cannot send it anywhere else.
    fn check_request_targets(
        &self,
        requests: &[HttpRequest],
        resolved: &Resolved,
    ) -> Result<(), Error> {
        let origin = |url: &str| url::Url::parse(url).ok().map(|u| u.origin());
        let endpoints = &resolved.endpoints;
        let allowed: Vec<url::Origin> = [
            &endpoints.issuer,
            &endpoints.authorization_url,
            &endpoints.token_url,
            &endpoints.userinfo_url,
        ]
        .into_iter()
        .flatten()
        .filter_map(|u| origin(u))
        .collect();
        for request in requests {
            let target = origin(&request.url).filter(|o| allowed.contains(o));
            let secure = check_url(&request.url, self.http.config.allow_insecure_http).is_ok();
            if target.is_none() || !secure {
                tracing::error!(provider = %self.id, request = %request.name,
                    "plugin asked to send the access token outside the provider's origins");
                return Err(Error::internal(
                    "the provider plugin asked for a request outside the provider's origins",
                ));
            }
        }
        Ok(())
    }

    /// Runs one plugin operation through the bounded path ([`Plugin::call_bounded`], the
    /// instance's `plugin_timeout_ms`). A call that panics or overruns marks the request, whose
    /// task then has the actor replaced; an overrun is `provider_unavailable`.
    async fn call<I: Serialize, O: DeserializeOwned + Send + 'static>(
        &self,
        op: Op,
        input: &I,
    ) -> Result<O, Error> {
        let result = self
            .plugin
            .call_bounded(op, input, plugin_limit(&self.config))
            .await;
        result.map_err(|error| match error {
            BoundedError::Disabled { hung } => Error::unavailable(format!(
                "provider `{}` is unhealthy: its plugin has {hung} calls that never returned; \
                 restart the daemon",
                self.id
            )),
            BoundedError::Overran => {
                tracing::error!(provider = %self.id, op = op.name(),
                    timeout_ms = self.config.plugin_timeout_ms,
                    "plugin call overran its time; restarting the provider");
                note_plugin_fault();
                Error::unavailable(format!(
                    "provider `{}`'s plugin did not answer in time",
                    self.id
                ))
            }
            BoundedError::Call(error) => {
                tracing::error!(provider = %self.id, op = op.name(), %error, "plugin call failed");
                match error {
                    CallError::Panicked { .. } => {
                        note_plugin_fault();
                        Error::internal("the provider plugin failed; the provider was restarted")
                    }
                    CallError::Provider(e) => match e.kind {
                        ErrorKind::InvalidClaims => Error::invalid_id_token(),
                        ErrorKind::InvalidProfile => Error::provider(e.message),
                        ErrorKind::InvalidConfig => Error::internal(format!(
                            "provider `{}` is misconfigured: {}",
                            self.id, e.message
                        )),
                        ErrorKind::Other => Error::internal("the provider plugin failed"),
                    },
                    _ => Error::internal("the provider plugin failed"),
                }
            }
        })
    }
}

/// The OAuth2 client for the token endpoint: the resolved one, with a client-secret JWT as
/// its secret for providers that want one signed.
fn token_client(
    resolved: &Resolved,
    assertion: Option<String>,
) -> std::borrow::Cow<'_, OAuthClient> {
    match assertion {
        None => std::borrow::Cow::Borrowed(&resolved.client),
        Some(jwt) => std::borrow::Cow::Owned(
            resolved
                .client
                .clone()
                .set_client_secret(oauth2::ClientSecret::new(jwt)),
        ),
    }
}

/// Whether `return_to` is on-site: a plain relative path, or an absolute URL under one of
/// `allowed` (same scheme, host and port; path under the entry's).
fn return_to_allowed(return_to: &str, allowed: &[String]) -> bool {
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

/// Bounds on what a plugin's profile may hold, so a buggy or hostile plugin (or provider)
/// cannot store garbage: the subject and email are refused when unusable; display fields are
/// cut to length; an unusable picture and over-long group names are dropped, and groups
/// beyond the limit too (fewer groups can only mean less access).
const MAX_SUBJECT: usize = 255;
const MAX_EMAIL: usize = 254;
const MAX_DISPLAY: usize = 256;
const MAX_PICTURE: usize = 2048;
const MAX_GROUPS: usize = 10_000;
const MAX_GROUP: usize = 1024;

fn checked_profile(mut profile: Profile, provider: &str) -> Result<Profile, Error> {
    let has_control = |s: &str| s.chars().any(char::is_control);
    if profile.subject.is_empty()
        || profile.subject.len() > MAX_SUBJECT
        || has_control(&profile.subject)
    {
        return Err(Error::provider(format!(
            "the provider's profile has no usable subject (1 to {MAX_SUBJECT} bytes, no \
             control characters)"
        )));
    }
    if let Some(email) = &profile.email {
        let plausible = email.len() <= MAX_EMAIL
            && !has_control(email)
            && !email.contains(char::is_whitespace)
            && email
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
        if !plausible {
            return Err(Error::provider(
                "the provider's profile has an email that is not one",
            ));
        }
    }
    for text in [&mut profile.name, &mut profile.username]
        .into_iter()
        .flatten()
    {
        text.retain(|c| !c.is_control());
        truncate(text, MAX_DISPLAY);
    }
    if let Some(picture) = &profile.picture {
        let usable = picture.len() <= MAX_PICTURE
            && url::Url::parse(picture).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
        if !usable {
            profile.picture = None;
        }
    }
    let before = profile.groups.len();
    profile
        .groups
        .retain(|g| !g.is_empty() && g.len() <= MAX_GROUP && !has_control(g));
    profile.groups.truncate(MAX_GROUPS);
    if profile.groups.len() != before {
        tracing::warn!(
            provider,
            given = before,
            kept = profile.groups.len(),
            "dropped empty, over-long or surplus groups from a profile"
        );
    }
    Ok(profile)
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Provider URLs must be https, except on loopback (local development and tests) or when the
/// operator allows plain http explicitly.
fn check_url(url: &str, allow_insecure: bool) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_insecure => Ok(()),
        _ => Err(format!(
            "`{url}` must use https (http is allowed on loopback or with http.allow_insecure_http)"
        )),
    }
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

    fn profile() -> Profile {
        Profile {
            subject: "248289761001".into(),
            email: Some("jane@example.com".into()),
            name: Some("Jane".into()),
            ..Profile::default()
        }
    }

    #[test]
    fn unusable_subjects_and_emails_are_refused() {
        for subject in ["", "a\u{0}b", &"s".repeat(256)] {
            let p = Profile {
                subject: subject.into(),
                ..profile()
            };
            assert_eq!(
                checked_profile(p, "t").unwrap_err().code,
                ErrorCode::ProviderError
            );
        }
        for email in [
            "",
            "jane",
            "@example.com",
            "jane@",
            "ja ne@example.com",
            "jane@example.com\n",
            &format!("{}@example.com", "j".repeat(250)),
        ] {
            let p = Profile {
                email: Some(email.into()),
                ..profile()
            };
            assert!(checked_profile(p, "t").is_err(), "{email:?}");
        }
        assert_eq!(checked_profile(profile(), "t").unwrap(), profile());
    }

    #[test]
    fn display_fields_are_cut_and_bad_pictures_and_groups_dropped() {
        let p = Profile {
            name: Some(format!("{}\u{7}", "é".repeat(300))),
            username: Some("ok".into()),
            picture: Some("javascript:alert(1)".into()),
            groups: (0..MAX_GROUPS + 5)
                .map(|i| format!("g{i}"))
                .chain(["x".repeat(MAX_GROUP + 1), String::new()])
                .collect(),
            ..profile()
        };
        let p = checked_profile(p, "t").unwrap();
        let name = p.name.unwrap();
        assert!(name.len() <= MAX_DISPLAY && name.chars().all(|c| c == 'é'));
        assert_eq!(p.username.as_deref(), Some("ok"));
        assert_eq!(p.picture, None);
        assert_eq!(p.groups.len(), MAX_GROUPS);
        assert!(p
            .groups
            .iter()
            .all(|g| g.len() <= MAX_GROUP && !g.is_empty()));
        let p = Profile {
            picture: Some("https://example.com/a.png".into()),
            ..profile()
        };
        assert!(checked_profile(p, "t").unwrap().picture.is_some());
    }
}
