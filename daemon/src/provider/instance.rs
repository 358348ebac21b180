//! One configured provider instance: its plugin, resolved endpoints and caches, and the two
//! halves of a login (build the authorization URL; turn a code into a verified profile).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
use tokio::sync::OnceCell;

use super::http::{oauth_client, HttpClient, ProviderTokens};
use super::oidc::{discover, parse_algs, Expectations, JwksCache};
use crate::config::{ConfigError, ProviderConfig};
use crate::error::{Error, ErrorCode};
use crate::plugin::{CallError, Plugin};
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

/// A finished provider login.
#[derive(Debug)]
pub struct Completed {
    pub profile: Profile,
    pub tokens: ProviderTokens,
}

/// Endpoints after discovery.
#[derive(Debug)]
struct Resolved {
    issuer: Option<String>,
    /// RFC 7009 revocation, when discovery names it.
    revocation_url: Option<String>,
    endpoints: Endpoints,
    jwks: Option<JwksCache>,
    /// The OAuth2 client for these endpoints, built once.
    client: super::http::OAuthClient,
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

/// A provider instance, validated and ready to serve.
#[derive(Debug)]
pub struct Instance {
    pub id: String,
    pub config: ProviderConfig,
    plugin: Arc<Plugin>,
    secret: Option<SecretString>,
    settings: Settings,
    configured: Endpoints,
    algs: Vec<Algorithm>,
    http: HttpClient,
    resolved: OnceCell<Resolved>,
    rng: SystemRandom,
    panicked: AtomicBool,
    /// The ES256 key a client-secret JWT is signed with, when the plugin asks for one.
    assertion_key: Option<AssertionKey>,
    /// The last client-secret JWT and when it expires.
    assertion: std::sync::Mutex<Option<(String, i64)>>,
    breaker: super::breaker::Breaker,
    /// Logins this instance may start per second.
    limiter: Option<governor::DefaultDirectRateLimiter>,
}

impl Instance {
    /// Validates an instance against its plugin and resolves its static endpoints. Does no
    /// network I/O: discovery happens on first use.
    pub fn new(
        config: ProviderConfig,
        secret: Option<SecretString>,
        plugin: Arc<Plugin>,
        http: HttpClient,
        label: &str,
    ) -> Result<Self, ConfigError> {
        let key = |k: &str| format!("`{label}.{k}`");
        let fields = &plugin.description().config_fields;
        for name in config.settings.keys() {
            if !fields.iter().any(|f| &f.name == name) {
                let known: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                return Err(ConfigError(format!(
                    "{}: unknown key for kind `{}` (its own keys: {known:?})",
                    key(name),
                    config.kind
                )));
            }
        }
        for field in fields.iter().filter(|f| f.required) {
            if !config.settings.contains_key(&field.name) {
                return Err(ConfigError(format!(
                    "{}: required by kind `{}`: {}",
                    key(&field.name),
                    config.kind,
                    field.description
                )));
            }
        }
        // An instance with timeouts of its own gets a client of its own.
        let http = if config.http_timeout_ms.is_some() || config.http_connect_timeout_ms.is_some() {
            let mut own = http.config.clone();
            if let Some(ms) = config.http_timeout_ms {
                own.timeout_ms = ms;
            }
            if let Some(ms) = config.http_connect_timeout_ms {
                own.connect_timeout_ms = ms;
            }
            HttpClient::new(own).map_err(|e| {
                ConfigError(format!(
                    "provider `{}`: cannot build its HTTP client: {e}",
                    config.id
                ))
            })?
        } else {
            http
        };
        let settings: Settings = config.settings.clone().into_iter().collect();
        let configured: Endpoints = plugin
            .call(
                Op::Configure,
                &ConfigureInput {
                    id: config.id.clone(),
                    settings: settings.clone(),
                },
            )
            .map_err(|e| ConfigError(format!("{}: {e}", key("kind"))))?;
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
                .map_err(|e| ConfigError(format!("provider `{}`: {e}", config.id)))?;
        }
        let oidc = plugin.description().protocol == Protocol::Oidc;
        if oidc && configured.issuer.is_none() {
            return Err(ConfigError(format!(
                "provider `{}`: an OpenID Connect provider needs an issuer",
                config.id
            )));
        }
        if !oidc && (configured.authorization_url.is_none() || configured.token_url.is_none()) {
            return Err(ConfigError(format!(
                "provider `{}`: the plugin resolved no authorization or token URL",
                config.id
            )));
        }
        let assertion_key = match &configured.client_secret_jwt {
            None => None,
            Some(jwt) => {
                if jwt.issuer.is_empty() || jwt.key_id.is_empty() || jwt.audience.is_empty() {
                    return Err(ConfigError(format!(
                        "provider `{}`: the plugin asked for a client-secret JWT without issuer, key id or audience",
                        config.id
                    )));
                }
                let pem = secret.as_ref().ok_or_else(|| {
                    ConfigError(format!(
                        "{}: kind `{}` signs its client secret: set client_secret (or _file/_env) to the EC private key (PEM)",
                        key("client_secret"),
                        config.kind
                    ))
                })?;
                let key = jsonwebtoken::EncodingKey::from_ec_pem(
                    secrecy::ExposeSecret::expose_secret(pem).as_bytes(),
                )
                .map_err(|_| {
                    ConfigError(format!(
                        "{}: kind `{}` needs an EC P-256 private key in PEM (PKCS#8) here",
                        key("client_secret"),
                        config.kind
                    ))
                })?;
                Some(AssertionKey(key))
            }
        };
        Ok(Self {
            id: config.id.clone(),
            algs: parse_algs(&config.allowed_algs),
            assertion_key,
            assertion: std::sync::Mutex::new(None),
            limiter: config
                .rate_limit_per_sec
                .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r))),
            breaker: super::breaker::Breaker::new(
                config.circuit_failures,
                std::time::Duration::from_secs(config.circuit_open_secs),
            ),
            config,
            plugin,
            secret,
            settings,
            configured,
            http,
            resolved: OnceCell::new(),
            rng: SystemRandom::new(),
            panicked: AtomicBool::new(false),
        })
    }

    pub fn kind(&self) -> &str {
        self.plugin.kind()
    }

    fn is_oidc(&self) -> bool {
        self.plugin.description().protocol == Protocol::Oidc
    }

    /// How the instance fares now, for `admin.status`.
    pub fn health(&self) -> Health {
        let (circuit, failures) = self.breaker.view(std::time::Instant::now());
        let stuck = self.plugin.hung.load(Ordering::Relaxed);
        let status = if stuck >= MAX_HUNG_CALLS || circuit == "open" {
            "unavailable"
        } else if stuck > 0 || failures > 0 || circuit != "closed" {
            "degraded"
        } else {
            "ok"
        };
        Health {
            status,
            circuit,
            consecutive_failures: failures,
            stuck_plugin_calls: stuck,
        }
    }

    /// Whether a plugin call panicked; the actor is then restarted.
    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::Relaxed)
    }

    /// Starts a login: checks the redirect URI, chooses scopes, creates state, nonce and PKCE,
    /// and builds the authorization URL.
    pub async fn login(&self, args: LoginArgs) -> Result<LoginStart, Error> {
        // Starting a login reaches the provider only for discovery; while its circuit is
        // open there is no point sending a user there.
        if let Some(limiter) = &self.limiter {
            limiter.check().map_err(|_| {
                Error::new(
                    ErrorCode::RateLimited,
                    format!(
                        "provider `{}` is over its login rate limit; retry shortly",
                        self.id
                    ),
                )
            })?;
        }
        self.breaker
            .check(std::time::Instant::now())
            .map_err(|_| self.circuit_open())?;
        self.network(self.login_inner(args), false).await
    }

    async fn login_inner(&self, args: LoginArgs) -> Result<LoginStart, Error> {
        let redirect_uri = match args.redirect_uri {
            Some(uri) if self.config.redirect_uris.contains(&uri) => uri,
            Some(_) => {
                return Err(Error::bad_request(format!(
                    "redirect_uri is not in provider `{}`'s allow-list",
                    self.id
                )))
            }
            None => self.config.redirect_uris[0].clone(),
        };
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

        let resolved = self.resolved().await?;
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
        })
    }

    /// Finishes a login: checks the RFC 9207 `iss`, exchanges the code, validates the ID
    /// token, fetches and maps the profile.
    pub async fn complete(&self, args: CompleteArgs) -> Result<Completed, Error> {
        self.network(self.complete_inner(args), true).await
    }

    async fn complete_inner(&self, args: CompleteArgs) -> Result<Completed, Error> {
        let CompleteArgs {
            pending,
            code,
            iss,
            params,
        } = args;
        let resolved = self.resolved().await?;
        if let (Some(iss), Some(issuer)) = (iss.as_deref(), resolved.issuer.as_deref()) {
            if !super::oidc::issuer_matches(issuer, iss, None) {
                tracing::warn!(provider = %self.id, "callback iss does not match the issuer");
                return Err(Error::new(
                    ErrorCode::InvalidState,
                    "the callback came from a different issuer than the login started with",
                ));
            }
        }
        let client = self.token_client(resolved)?;
        let tokens = self
            .http
            .exchange_code(
                &client,
                code,
                pending.pkce_verifier.clone(),
                pending.redirect_uri.clone(),
            )
            .await?;

        let claims = match (&resolved.jwks, &resolved.issuer) {
            (Some(jwks), Some(issuer)) => {
                let id_token = tokens.id_token.as_deref().ok_or_else(|| {
                    tracing::warn!(provider = %self.id, "token response has no id_token");
                    Error::invalid_id_token()
                })?;
                let claims = jwks
                    .verify(
                        &self.http,
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
        Ok(Completed { profile, tokens })
    }

    /// Refreshes the user's provider tokens with a stored refresh token.
    pub async fn refresh(&self, refresh_token: SecretString) -> Result<ProviderTokens, Error> {
        self.network(
            async {
                let resolved = self.resolved().await?;
                let client = self.token_client(resolved)?;
                self.http
                    .exchange_refresh_token(&client, refresh_token)
                    .await
            },
            true,
        )
        .await
    }

    /// Runs work that reaches the provider through the instance's circuit breaker. With
    /// `admit`, the work needs the circuit closed (or takes the one probe when it half-opens);
    /// without, it only reports. `provider_unavailable` counts as a failure to reach the
    /// provider; anything else (even a refusal) shows the provider is there.
    async fn network<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>>,
        admit: bool,
    ) -> Result<T, Error> {
        if admit {
            self.breaker
                .admit(std::time::Instant::now())
                .map_err(|_| self.circuit_open())?;
        }
        let result = work.await;
        let reached = !matches!(&result, Err(e) if e.code == ErrorCode::ProviderUnavailable);
        if admit || !reached {
            self.breaker.record(reached, std::time::Instant::now());
        }
        result
    }

    fn circuit_open(&self) -> Error {
        Error::unavailable(format!(
            "provider `{}` failed repeatedly; not trying it again for up to {} s",
            self.id, self.config.circuit_open_secs
        ))
    }

    /// Revokes a token at the provider, when it has a revocation endpoint. Returns whether
    /// the provider supports revocation.
    pub async fn revoke(&self, token: SecretString, hint: &'static str) -> Result<bool, Error> {
        self.network(self.revoke_inner(token, hint), true).await
    }

    async fn revoke_inner(&self, token: SecretString, hint: &'static str) -> Result<bool, Error> {
        let resolved = self.resolved().await?;
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

    /// The oauth2 client for this instance's endpoints and credentials.
    /// The endpoints, after discovery for OpenID Connect. Concurrent first callers share one
    /// discovery; a failed one is retried by the next caller.
    async fn resolved(&self) -> Result<&Resolved, Error> {
        self.resolved
            .get_or_try_init(|| async {
                let mut endpoints = self.configured.clone();
                let mut revocation_url = None;
                if self.is_oidc() {
                    let issuer = endpoints.issuer.clone().unwrap_or_default();
                    let doc =
                        discover(&self.http, &issuer, endpoints.discovery_url.as_deref()).await?;
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
                        check_url(url, self.http.config.allow_insecure_http)
                            .map_err(Error::provider)?;
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
                    jwks: if self.is_oidc() {
                        endpoints.jwks_uri.clone().map(JwksCache::new)
                    } else {
                        None
                    },
                    endpoints,
                })
            })
            .await
    }

    /// The user's access token only goes to the provider's own origins (those of its
    /// endpoints and issuer), so a plugin cannot send it anywhere else.
    /// The OAuth2 client for the token endpoint: the resolved one, or for providers that
    /// want a signed client secret, that client with a current client-secret JWT.
    fn token_client<'a>(
        &self,
        resolved: &'a Resolved,
    ) -> Result<std::borrow::Cow<'a, super::http::OAuthClient>, Error> {
        let (Some(jwt), Some(key)) = (&self.configured.client_secret_jwt, &self.assertion_key)
        else {
            return Ok(std::borrow::Cow::Borrowed(&resolved.client));
        };
        let now = now();
        let mut cached = self
            .assertion
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let lifetime = jwt.lifetime_secs.clamp(60, 180 * 86_400) as i64;
        let fresh = match cached.as_ref() {
            // Renewed once half its lifetime has passed.
            Some((token, expires)) if expires - now > lifetime / 2 => token.clone(),
            _ => {
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
                token
            }
        };
        Ok(std::borrow::Cow::Owned(
            resolved
                .client
                .clone()
                .set_client_secret(oauth2::ClientSecret::new(fresh)),
        ))
    }

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

    /// Runs one plugin operation on a blocking thread, bounded by the instance's
    /// `plugin_timeout_ms`. A plugin that overruns is answered `provider_unavailable` and
    /// its instance restarted; the stuck thread cannot be stopped, so it is counted, and a
    /// plugin with [`MAX_HUNG_CALLS`] such threads is not called again until the daemon
    /// restarts (its instances answer `provider_unavailable` at once).
    async fn call<I: Serialize, O: DeserializeOwned + Send + 'static>(
        &self,
        op: Op,
        input: &I,
    ) -> Result<O, Error> {
        use std::sync::atomic::AtomicU8;
        const RUNNING: u8 = 0;
        const DONE: u8 = 1;
        const ABANDONED: u8 = 2;
        let hung = self.plugin.hung.load(Ordering::Relaxed);
        if hung >= MAX_HUNG_CALLS {
            return Err(Error::unavailable(format!(
                "provider `{}` is unhealthy: its plugin has {hung} calls that never returned; \
                 restart the daemon",
                self.id
            )));
        }
        let input = serde_json::to_vec(input)
            .map_err(|e| Error::internal(format!("cannot encode a plugin input: {e}")))?;
        let plugin = self.plugin.clone();
        let state = Arc::new(AtomicU8::new(RUNNING));
        let seen = state.clone();
        let task = tokio::task::spawn_blocking(move || {
            let result = plugin.call_json::<O>(op, &input);
            if seen.swap(DONE, Ordering::AcqRel) == ABANDONED {
                plugin.hung.fetch_sub(1, Ordering::Relaxed);
            }
            result
        });
        let limit = std::time::Duration::from_millis(self.config.plugin_timeout_ms.max(1));
        let result = match tokio::time::timeout(limit, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CallError::Panicked {
                op: op.name(),
                message: "the plugin call's thread failed".into(),
            }),
            Err(_) => {
                if state.swap(ABANDONED, Ordering::AcqRel) == RUNNING {
                    self.plugin.hung.fetch_add(1, Ordering::Relaxed);
                }
                tracing::error!(provider = %self.id, op = op.name(), timeout_ms = self.config.plugin_timeout_ms,
                    "plugin call overran its time; restarting the provider");
                self.panicked.store(true, Ordering::Relaxed);
                return Err(Error::unavailable(format!(
                    "provider `{}`'s plugin did not answer in time",
                    self.id
                )));
            }
        };
        result.map_err(|error| {
            tracing::error!(provider = %self.id, op = op.name(), %error, "plugin call failed");
            match error {
                CallError::Panicked { .. } => {
                    self.panicked.store(true, Ordering::Relaxed);
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
        })
    }
}

/// Plugin calls that overran and still hold a thread, beyond which a plugin is not called.
const MAX_HUNG_CALLS: usize = 8;

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
