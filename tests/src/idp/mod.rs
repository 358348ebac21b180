//! A fake identity provider: a real HTTP server (axum) that speaks OpenID Connect (discovery,
//! JWKS with RS256 and ES256 keys, authorize, token, userinfo) and GitHub's OAuth2 and REST
//! shapes (`/login/oauth/*`, `/api/user`, `/api/user/emails`, `/api/user/orgs`,
//! `/api/user/teams`). It checks what a real provider checks: client authentication,
//! redirect_uri, the PKCE verifier and single-use codes. Knobs make it slow, fail, or mint bad
//! tokens; a [`Gate`] holds a path's requests until the test lets them through.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

/// The user a request's bearer token was issued to (after the knobs' delay), or an early
/// `401` from the handler.
macro_rules! with_user {
    ($state:expr, $headers:expr) => {{
        super::delay(&$state).await;
        match super::oauth::bearer_user(&$state, &$headers) {
            Some(user) => user,
            None => return (StatusCode::UNAUTHORIZED, "bad token").into_response(),
        }
    }};
}

mod apis;
mod device;
mod oauth;

use apis::{gh_emails, gh_orgs, gh_teams, gh_user, routed};
pub use device::DeviceCounts;
pub use oauth::discovery_document;
use oauth::{authorize, discovery, gh_token, jwks, revoke, token, userinfo};
const RSA_KEY: &[u8] = include_bytes!("../../keys/rsa1.pem");
const RSA_ROGUE_KEY: &[u8] = include_bytes!("../../keys/rsa-rogue.pem");
const EC_KEY: &[u8] = include_bytes!("../../keys/ec1.pem");
const RSA_JWK: &str = include_str!("../../keys/rsa1.jwk.json");
const EC_JWK: &str = include_str!("../../keys/ec1.jwk.json");
const RSA_ROGUE_JWK: &str = include_str!("../../keys/rsa-rogue.jwk.json");

/// A user the fake provider signs in.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub name: String,
    /// GitHub: the login, numeric id, orgs and `org/team` pairs.
    pub login: String,
    pub github_id: u64,
    pub orgs: Vec<String>,
    pub teams: Vec<(String, String)>,
    /// Leave `email` out of the ID token (so the host must call userinfo).
    pub email_only_in_userinfo: bool,
}

impl TestUser {
    /// A user derived from an email address, with stable ids.
    pub fn from_email(email: &str) -> Self {
        let local = email.split('@').next().unwrap_or("user").to_owned();
        let github_id = email
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
            % 1_000_000_000;
        Self {
            sub: format!("sub-{local}"),
            email: email.to_owned(),
            email_verified: true,
            name: format!("Test {local}"),
            login: local.replace('.', "-"),
            github_id,
            orgs: vec!["acme".into()],
            teams: vec![("acme".into(), "platform".into())],
            email_only_in_userinfo: false,
        }
    }
}

/// How to spoil the next ID tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tamper {
    #[default]
    None,
    WrongNonce,
    WrongAudience,
    WrongIssuer,
    Expired,
    FutureIat,
    AlgNone,
    UnknownKey,
    /// An `at_hash` that is not the access token's.
    WrongAtHash,
    /// HS256, keyed with the provider's public RSA key (the key-confusion attack).
    KeyConfusion,
    /// No `kid` although the JWKS holds several keys.
    NoKid,
    /// Two audiences and no `azp`.
    ExtraAudienceNoAzp,
    /// No `nonce` claim although the login sent one.
    NoNonce,
}

/// Behaviour switches, changeable while the server runs.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Delay before answering every request.
    pub delay: Duration,
    /// Answer the token endpoint with this status and no tokens.
    pub token_status: Option<u16>,
    pub tamper: Tamper,
    /// Sign ID tokens with ES256 instead of RS256.
    pub es256: bool,
    /// Refuse at the authorize step with `error=access_denied`.
    pub deny: bool,
    /// Rotate to a new signing key (`rsa-2`): the JWKS publishes it and ID tokens use it.
    pub rotated: bool,
    /// `expires_in` of issued access tokens (default 3600 s).
    pub expires_in: Option<i64>,
    /// Refuse refresh-token grants with `invalid_grant`.
    pub refuse_refresh: bool,
    /// Answer refresh grants without a new refresh token (the old one stays valid).
    pub keep_refresh_token: bool,
    /// Extra claims merged into every ID token (a provider's own: `hd`, `tid`, ...).
    pub extra_claims: serde_json::Map<String, Value>,
    /// JSON answered at these paths (with or without the query) to a valid bearer token:
    /// a provider's own API shapes (`/api/users/@me`, `/2.0/user`, ...).
    pub routes: std::collections::BTreeMap<String, Value>,
    /// JSON answered at these paths to anyone (another discovery document, say).
    pub public_routes: std::collections::BTreeMap<String, Value>,
    /// The issuer named in ID tokens and authorization responses, when not the base URL
    /// (a multi-tenant provider's per-tenant issuer).
    pub issuer_override: Option<String>,
    /// Paths answered only after this extra delay (a slow JWKS, say).
    pub slow_paths: std::collections::BTreeMap<String, Duration>,
    /// Paths answered `200 OK` with an HTML body instead of their JSON (a proxy's error
    /// page, a misrouted request).
    pub garbage_paths: std::collections::BTreeSet<String>,
    /// Expect the client secret to be an ES256 JWT (Apple's), signed with the `ec-1` test
    /// key, with this `(iss, kid)`, `sub` = client id and `aud` = Apple's issuer.
    pub client_secret_jwt: Option<(String, String)>,
    /// The device grant's `interval` (default 1 s) and `expires_in` (default 900 s).
    pub device_interval_secs: Option<u64>,
    pub device_expires_in: Option<u64>,
    /// Answer the next device-code poll `slow_down`, however late it comes.
    pub device_slow_down_once: bool,
    /// Show a sign-in page at the authorize step (its form submits itself, as a user who
    /// clicks at once would) instead of redirecting straight back.
    pub login_page: bool,
}

#[derive(Debug, Clone)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    code_challenge: Option<String>,
    nonce: Option<String>,
    user: TestUser,
    scope: String,
}

#[derive(Debug)]
struct Inner {
    issuer: String,
    client_id: String,
    client_secret: String,
    default_user: TestUser,
    knobs: Knobs,
    codes: HashMap<String, Grant>,
    tokens: HashMap<String, TestUser>,
    counter: u64,
    token_requests: u64,
    refresh_requests: u64,
    refresh_tokens: HashMap<String, (TestUser, String)>,
    revoked: Vec<String>,
    rendezvous: Option<Arc<tokio::sync::Barrier>>,
    /// Requests that arrived, by path, counted before any delay.
    arrivals: std::collections::BTreeMap<String, u64>,
    /// Paths whose requests wait, once counted, until their [`Gate`] opens.
    held: std::collections::BTreeMap<String, Arc<tokio::sync::Semaphore>>,
    /// Device codes issued, by code.
    devices: HashMap<String, device::DeviceGrant>,
    device_counts: DeviceCounts,
    device_codes: Vec<String>,
}

/// Requests to a held path wait at the provider until this opens (or is dropped, so a failing
/// test never leaves them hanging): a provider that answers exactly when the test says so.
#[derive(Debug)]
pub struct Gate {
    inner: Shared,
    path: String,
    waiting: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    /// Lets every held request, and every later one, through.
    pub fn open(self) {
        drop(self);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // A closed semaphore fails every `acquire`, waiting or not: that is the way through.
        self.waiting.close();
        let mut inner = lock(&self.inner);
        if inner
            .held
            .get(&self.path)
            .is_some_and(|held| Arc::ptr_eq(held, &self.waiting))
        {
            inner.held.remove(&self.path);
        }
    }
}

/// A running fake identity provider.
#[derive(Debug, Clone)]
pub struct FakeIdp {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

type Shared = Arc<Mutex<Inner>>;

impl FakeIdp {
    /// Starts on a free loopback port with client credentials `client_id` / `client_secret`.
    pub async fn start(client_id: &str, client_secret: &str) -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0", client_id, client_secret).await
    }

    /// Starts on a given address.
    pub async fn start_on(
        bind: &str,
        client_id: &str,
        client_secret: &str,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner {
            issuer: format!("http://{addr}"),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            default_user: TestUser::from_email("ada@example.test"),
            knobs: Knobs::default(),
            codes: HashMap::new(),
            tokens: HashMap::new(),
            counter: 0,
            token_requests: 0,
            refresh_requests: 0,
            refresh_tokens: HashMap::new(),
            revoked: Vec::new(),
            rendezvous: None,
            arrivals: std::collections::BTreeMap::new(),
            held: std::collections::BTreeMap::new(),
            devices: HashMap::new(),
            device_counts: DeviceCounts::default(),
            device_codes: Vec::new(),
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .route("/revoke", post(revoke))
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(gh_token))
            .route("/device/code", post(device::device_authorization))
            .route("/login/device/code", post(device::device_authorization))
            .route("/device", get(device::device_page))
            // Discord's paths.
            .route("/oauth2/authorize", get(authorize))
            .route("/api/oauth2/token", post(token))
            // The example plugin's (and many providers') paths.
            .route("/oauth/authorize", get(authorize))
            .route("/oauth/token", post(token))
            // Bitbucket's paths.
            .route("/site/oauth2/authorize", get(authorize))
            .route("/site/oauth2/access_token", post(token))
            .route("/api/user", get(gh_user))
            .route("/api/user/emails", get(gh_emails))
            .route("/api/user/orgs", get(gh_orgs))
            .route("/api/user/teams", get(gh_teams))
            .fallback(routed)
            .layer(axum::middleware::from_fn_with_state(inner.clone(), faults))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { inner, addr })
    }

    /// The issuer URL (also the base URL for GitHub-style endpoints).
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The GitHub REST base URL.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Changes the knobs.
    pub fn set(&self, change: impl FnOnce(&mut Knobs)) {
        change(&mut lock(&self.inner).knobs);
    }

    /// Changes the user signed in when no `login_hint` names one.
    pub fn set_user(&self, user: TestUser) {
        lock(&self.inner).default_user = user;
    }

    /// Makes every token request wait until `n` of them are in flight at once: a caller that
    /// handles requests one at a time can then never finish.
    pub fn rendezvous(&self, n: usize) {
        lock(&self.inner).rendezvous = Some(Arc::new(tokio::sync::Barrier::new(n)));
    }

    /// Every access and refresh token issued so far (for scanning logs and files for them).
    pub fn issued_tokens(&self) -> Vec<String> {
        let inner = lock(&self.inner);
        inner
            .tokens
            .keys()
            .chain(inner.refresh_tokens.keys())
            .cloned()
            .collect()
    }

    /// How many refresh-token grants arrived.
    pub fn refresh_requests(&self) -> u64 {
        lock(&self.inner).refresh_requests
    }

    /// The tokens revoked through the revocation endpoint.
    pub fn revoked(&self) -> Vec<String> {
        lock(&self.inner).revoked.clone()
    }

    /// How many requests for `path` have arrived (counted on arrival, before any delay).
    pub fn arrivals(&self, path: &str) -> u64 {
        lock(&self.inner).arrivals.get(path).copied().unwrap_or(0)
    }

    /// Waits until `count` requests for `path` have arrived in all (up to
    /// [`PATIENCE`](crate::PATIENCE), which only bounds a request that never comes).
    pub async fn await_arrivals(&self, path: &str, count: u64) {
        let deadline = std::time::Instant::now() + crate::PATIENCE;
        loop {
            let arrived = self.arrivals(path);
            if arrived >= count {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {arrived} of {count} requests for {path} ever reached the provider"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Holds every request for `path` from now on (counted as arrived, then not answered)
    /// until the returned gate opens.
    pub fn hold(&self, path: &str) -> Gate {
        let waiting = Arc::new(tokio::sync::Semaphore::new(0));
        lock(&self.inner)
            .held
            .insert(path.to_owned(), waiting.clone());
        Gate {
            inner: self.inner.clone(),
            path: path.to_owned(),
            waiting,
        }
    }

    /// How many token requests arrived.
    pub fn token_requests(&self) -> u64 {
        lock(&self.inner).token_requests
    }

    /// Plays the browser: follows the authorization URL and returns the callback URL's query
    /// string the provider redirected to.
    pub async fn approve(&self, authorization_url: &str) -> anyhow::Result<String> {
        Self::browse(authorization_url).await
    }

    /// Plays the browser at any provider's authorization URL (no redirect is followed).
    pub async fn browse(authorization_url: &str) -> anyhow::Result<String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let response = client.get(authorization_url).send().await?;
        anyhow::ensure!(
            response.status().is_redirection(),
            "authorize answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("no Location header"))?;
        let url = url::Url::parse(location)?;
        Ok(url.query().unwrap_or_default().to_owned())
    }
}

fn lock(inner: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Per-path faults: a hold until the test's gate opens, the knobs' extra delay, then garbage
/// instead of the real answer.
async fn faults(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let (held, slow, garbage) = {
        let mut inner = lock(&state);
        *inner.arrivals.entry(path.clone()).or_default() += 1;
        (
            inner.held.get(&path).cloned(),
            inner.knobs.slow_paths.get(&path).copied(),
            inner.knobs.garbage_paths.contains(&path),
        )
    };
    if let Some(gate) = held {
        // Never granted a permit: this returns (with an error) when the gate closes it.
        let _ = gate.acquire().await;
    }
    if let Some(slow) = slow {
        tokio::time::sleep(slow).await;
    }
    if garbage {
        return (
            StatusCode::OK,
            [("content-type", "text/html")],
            "<html><body>502 Bad Gateway</body></html>",
        )
            .into_response();
    }
    next.run(request).await
}

async fn delay(state: &Shared) {
    let delay = lock(state).knobs.delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn random() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
