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

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

const RSA_KEY: &[u8] = include_bytes!("../keys/rsa1.pem");
const RSA_ROGUE_KEY: &[u8] = include_bytes!("../keys/rsa-rogue.pem");
const EC_KEY: &[u8] = include_bytes!("../keys/ec1.pem");
const RSA_JWK: &str = include_str!("../keys/rsa1.jwk.json");
const EC_JWK: &str = include_str!("../keys/ec1.jwk.json");
const RSA_ROGUE_JWK: &str = include_str!("../keys/rsa-rogue.jwk.json");

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
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .route("/revoke", post(revoke))
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(token))
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

async fn discovery(State(state): State<Shared>) -> Json<Value> {
    delay(&state).await;
    let issuer = lock(&state).issuer.clone();
    Json(discovery_document(&issuer))
}

/// The discovery document of a provider at `issuer` with the fake's endpoints.
pub fn discovery_document(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "revocation_endpoint": format!("{issuer}/revoke"),
        "authorization_response_iss_parameter_supported": true,
    })
}

async fn jwks(State(state): State<Shared>) -> Json<Value> {
    delay(&state).await;
    let rsa: Value = serde_json::from_str(RSA_JWK).unwrap_or_default();
    let ec: Value = serde_json::from_str(EC_JWK).unwrap_or_default();
    let mut keys = vec![rsa, ec];
    if lock(&state).knobs.rotated {
        let mut rotated: Value = serde_json::from_str(RSA_ROGUE_JWK).unwrap_or_default();
        rotated["kid"] = json!("rsa-2");
        keys.push(rotated);
    }
    Json(json!({ "keys": keys }))
}

#[derive(Debug, Deserialize)]
struct AuthorizeQuery {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    state: String,
    #[serde(default)]
    scope: String,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    nonce: Option<String>,
    login_hint: Option<String>,
    /// GitHub's name for the login hint.
    login: Option<String>,
}

async fn authorize(State(state): State<Shared>, Query(q): Query<AuthorizeQuery>) -> Response {
    delay(&state).await;
    let mut inner = lock(&state);
    if q.client_id != inner.client_id {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    if q.response_type != "code" {
        return (StatusCode::BAD_REQUEST, "response_type must be code").into_response();
    }
    if q.code_challenge.is_some() && q.code_challenge_method.as_deref() != Some("S256") {
        return (StatusCode::BAD_REQUEST, "only S256 PKCE").into_response();
    }
    let sep = if q.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    let issuer = inner
        .knobs
        .issuer_override
        .clone()
        .unwrap_or_else(|| inner.issuer.clone());
    let iss = url::form_urlencoded::byte_serialize(issuer.as_bytes()).collect::<String>();
    let state_enc = url::form_urlencoded::byte_serialize(q.state.as_bytes()).collect::<String>();
    if inner.knobs.deny {
        let to = format!(
            "{}{sep}error=access_denied&error_description=the+user+said+no&state={state_enc}&iss={iss}",
            q.redirect_uri
        );
        return Redirect::to(&to).into_response();
    }
    let user = match q.login_hint.or(q.login) {
        Some(hint) if hint.contains('@') => TestUser::from_email(&hint),
        _ => inner.default_user.clone(),
    };
    inner.counter += 1;
    let code = format!("code-{}-{}", inner.counter, random());
    inner.codes.insert(
        code.clone(),
        Grant {
            client_id: q.client_id,
            redirect_uri: q.redirect_uri.clone(),
            code_challenge: q.code_challenge,
            nonce: q.nonce,
            user,
            scope: q.scope,
        },
    );
    let to = format!(
        "{}{sep}code={code}&state={state_enc}&iss={iss}",
        q.redirect_uri
    );
    Redirect::to(&to).into_response()
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    grant_type: String,
    refresh_token: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

async fn token(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    delay(&state).await;
    let rendezvous = lock(&state).rendezvous.clone();
    if let Some(barrier) = rendezvous {
        barrier.wait().await;
    }
    let mut inner = lock(&state);
    inner.token_requests += 1;
    if let Some(status) = inner.knobs.token_status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, "token endpoint failure").into_response();
    }
    // Client authentication: HTTP Basic or the form body, compared in constant time.
    let (id, secret) = match basic_auth(&headers) {
        Some(pair) => pair,
        None => (
            form.client_id.clone().unwrap_or_default(),
            form.client_secret.clone().unwrap_or_default(),
        ),
    };
    let id_ok: bool = id.as_bytes().ct_eq(inner.client_id.as_bytes()).into();
    let secret_ok: bool = match &inner.knobs.client_secret_jwt {
        Some((iss, kid)) => client_assertion_ok(&secret, iss, kid, &inner.client_id),
        None => secret
            .as_bytes()
            .ct_eq(inner.client_secret.as_bytes())
            .into(),
    };
    if !(id_ok && secret_ok) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.grant_type == "refresh_token" {
        return refresh_grant(&mut inner, &form);
    }
    if form.grant_type != "authorization_code" {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let Some(grant) = form.code.as_ref().and_then(|c| inner.codes.remove(c)) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    if grant.client_id != id || form.redirect_uri.as_deref() != Some(&grant.redirect_uri) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    if let Some(challenge) = &grant.code_challenge {
        let verifier = form.code_verifier.clone().unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
        let computed = URL_SAFE_NO_PAD.encode(digest.as_ref());
        if !bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
    }
    let access_token = format!("at-{}", random());
    inner
        .tokens
        .insert(access_token.clone(), grant.user.clone());
    let refresh_token = format!("rt-{}", random());
    inner.refresh_tokens.insert(
        refresh_token.clone(),
        (grant.user.clone(), grant.scope.clone()),
    );
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": inner.knobs.expires_in.unwrap_or(3600),
        "refresh_token": refresh_token,
        "scope": grant.scope,
    });
    if grant.scope.split(' ').any(|s| s == "openid") {
        body["id_token"] = json!(id_token(&inner, &grant, &access_token));
    }
    Json(body).into_response()
}

/// Whether `secret` is a client-secret JWT as Apple checks it.
fn client_assertion_ok(secret: &str, iss: &str, kid: &str, client_id: &str) -> bool {
    let Ok(header) = jsonwebtoken::decode_header(secret) else {
        return false;
    };
    let Ok(jwk) = serde_json::from_str::<jsonwebtoken::jwk::Jwk>(EC_JWK) else {
        return false;
    };
    let Ok(key) = jsonwebtoken::DecodingKey::from_jwk(&jwk) else {
        return false;
    };
    let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
    validation.set_issuer(&[iss]);
    validation.set_audience(&["https://appleid.apple.com"]);
    validation.sub = Some(client_id.to_owned());
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    header.alg == Algorithm::ES256
        && header.kid.as_deref() == Some(kid)
        && jsonwebtoken::decode::<Value>(secret, &key, &validation).is_ok()
}

fn refresh_grant(inner: &mut Inner, form: &TokenForm) -> Response {
    inner.refresh_requests += 1;
    if inner.knobs.refuse_refresh {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let presented = form.refresh_token.clone().unwrap_or_default();
    let Some((user, scope)) = inner.refresh_tokens.get(&presented).cloned() else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let access_token = format!("at-{}", random());
    inner.tokens.insert(access_token.clone(), user.clone());
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": inner.knobs.expires_in.unwrap_or(3600),
        "scope": scope,
    });
    if !inner.knobs.keep_refresh_token {
        // Rotation: the old refresh token stops working.
        inner.refresh_tokens.remove(&presented);
        let next = format!("rt-{}", random());
        inner.refresh_tokens.insert(next.clone(), (user, scope));
        body["refresh_token"] = json!(next);
    }
    Json(body).into_response()
}

#[derive(Debug, Deserialize)]
struct RevokeForm {
    token: String,
}

async fn revoke(State(state): State<Shared>, Form(form): Form<RevokeForm>) -> Response {
    let mut inner = lock(&state);
    inner.tokens.remove(&form.token);
    inner.refresh_tokens.remove(&form.token);
    inner.revoked.push(form.token);
    StatusCode::OK.into_response()
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let decoded = STANDARD.decode(value.strip_prefix("Basic ")?).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

fn id_token(inner: &Inner, grant: &Grant, access_token: &str) -> String {
    let now = now();
    let tamper = inner.knobs.tamper;
    let mut claims = json!({
        "iss": if tamper == Tamper::WrongIssuer { "http://evil.test".to_owned() } else {
            inner.knobs.issuer_override.clone().unwrap_or_else(|| inner.issuer.clone())
        },
        "aud": match tamper {
            Tamper::WrongAudience => json!("someone-else"),
            Tamper::ExtraAudienceNoAzp => json!([grant.client_id, "someone-else"]),
            _ => json!(grant.client_id),
        },
        "sub": grant.user.sub,
        "iat": if tamper == Tamper::FutureIat { now + 3600 } else { now },
        "exp": if tamper == Tamper::Expired { now - 3600 } else { now + 600 },
        "name": grant.user.name,
        "preferred_username": grant.user.login,
    });
    if !grant.user.email_only_in_userinfo {
        claims["email"] = json!(grant.user.email);
        claims["email_verified"] = json!(grant.user.email_verified);
    }
    // Every algorithm the fake signs with hashes with SHA-256.
    let hashed = if tamper == Tamper::WrongAtHash {
        "not-the-access-token"
    } else {
        access_token
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, hashed.as_bytes());
    claims["at_hash"] = json!(URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]));
    for (name, value) in &inner.knobs.extra_claims {
        claims[name] = value.clone();
    }
    if let Some(nonce) = grant.nonce.as_ref().filter(|_| tamper != Tamper::NoNonce) {
        claims["nonce"] = json!(if tamper == Tamper::WrongNonce {
            "not-the-nonce".to_owned()
        } else {
            nonce.clone()
        });
    }
    if tamper == Tamper::AlgNone {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        return format!("{header}.{body}.");
    }
    if tamper == Tamper::KeyConfusion {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let key = EncodingKey::from_secret(RSA_JWK.as_bytes());
        return jsonwebtoken::encode(&header, &claims, &key).expect("HMAC signing");
    }
    let (alg, kid, key) = if inner.knobs.rotated && tamper == Tamper::None {
        (
            Algorithm::RS256,
            "rsa-2",
            EncodingKey::from_rsa_pem(RSA_ROGUE_KEY),
        )
    } else if tamper == Tamper::UnknownKey {
        (
            Algorithm::RS256,
            "rsa-rogue",
            EncodingKey::from_rsa_pem(RSA_ROGUE_KEY),
        )
    } else if inner.knobs.es256 {
        (Algorithm::ES256, "ec-1", EncodingKey::from_ec_pem(EC_KEY))
    } else {
        (
            Algorithm::RS256,
            "rsa-1",
            EncodingKey::from_rsa_pem(RSA_KEY),
        )
    };
    let mut header = Header::new(alg);
    header.kid = (tamper != Tamper::NoKid).then(|| kid.into());
    let key = key.expect("the test keys shipped in tests/keys are valid PEM");
    jsonwebtoken::encode(&header, &claims, &key).expect("signing with a valid test key")
}

fn bearer_user(state: &Shared, headers: &HeaderMap) -> Option<TestUser> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    lock(state).tokens.get(token).cloned()
}

macro_rules! with_user {
    ($state:expr, $headers:expr) => {{
        delay(&$state).await;
        match bearer_user(&$state, &$headers) {
            Some(user) => user,
            None => return (StatusCode::UNAUTHORIZED, "bad token").into_response(),
        }
    }};
}

async fn userinfo(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let user = with_user!(state, headers);
    Json(json!({
        "sub": user.sub,
        "email": user.email,
        "email_verified": user.email_verified,
        "name": user.name,
    }))
    .into_response()
}

async fn gh_user(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let user = with_user!(state, headers);
    Json(json!({
        "login": user.login,
        "id": user.github_id,
        "name": user.name,
        "email": null,
        "avatar_url": format!("https://avatars.example.test/{}", user.github_id),
    }))
    .into_response()
}

async fn gh_emails(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let user = with_user!(state, headers);
    Json(json!([
        { "email": format!("old-{}", user.email), "primary": false, "verified": true },
        { "email": user.email, "primary": true, "verified": user.email_verified },
    ]))
    .into_response()
}

async fn gh_orgs(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let user = with_user!(state, headers);
    let orgs: Vec<Value> = user.orgs.iter().map(|o| json!({ "login": o })).collect();
    Json(Value::Array(orgs)).into_response()
}

async fn gh_teams(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let user = with_user!(state, headers);
    let teams: Vec<Value> = user
        .teams
        .iter()
        .map(|(org, team)| json!({ "slug": team, "organization": { "login": org } }))
        .collect();
    Json(Value::Array(teams)).into_response()
}

/// Any other GET: the JSON a test put in `Knobs::routes` for this path.
async fn routed(State(state): State<Shared>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    if let Some(body) = lock(&state).knobs.public_routes.get(uri.path()) {
        return Json(body.clone()).into_response();
    }
    let _user = with_user!(state, headers);
    let inner = lock(&state);
    let full = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    match inner
        .knobs
        .routes
        .get(full)
        .or_else(|| inner.knobs.routes.get(uri.path()))
    {
        Some(body) => Json(body.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no such route").into_response(),
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
