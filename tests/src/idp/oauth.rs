//! The fake provider's OAuth2 and OpenID Connect endpoints: discovery, JWKS, authorize, token
//! (codes with PKCE, refresh, client authentication by secret or by Apple's client-secret
//! JWT), revocation, ID tokens and userinfo.

use axum::extract::{Form, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::*;

pub(super) async fn discovery(State(state): State<Shared>) -> Json<Value> {
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
        "device_authorization_endpoint": format!("{issuer}/device/code"),
        "authorization_response_iss_parameter_supported": true,
    })
}

pub(super) async fn jwks(State(state): State<Shared>) -> Json<Value> {
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
pub(super) struct AuthorizeQuery {
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
    /// Set by the sign-in page's form (the `login_page` knob).
    confirm: Option<String>,
}

pub(super) async fn authorize(
    State(state): State<Shared>,
    Query(q): Query<AuthorizeQuery>,
    RawQuery(raw): RawQuery,
) -> Response {
    delay(&state).await;
    let mut inner = lock(&state);
    if inner.knobs.login_page && q.confirm.is_none() {
        return sign_in_page(
            &inner.default_user.email,
            raw.as_deref().unwrap_or_default(),
        );
    }
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

/// The provider's sign-in page: the authorize request's parameters in a form that submits
/// itself (with `confirm`), as a user who clicks "Sign in" at once.
fn sign_in_page(email: &str, query: &str) -> Response {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('"', "&quot;")
    };
    let fields: String = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| {
            format!(
                "<input type=hidden name=\"{}\" value=\"{}\">",
                escape(&k),
                escape(&v)
            )
        })
        .collect();
    axum::response::Html(format!(
        "<!doctype html><title>Fake IdP: sign in</title><h1>Sign in to the fake IdP</h1>\
         <form method=get>{fields}<input type=hidden name=confirm value=1>\
         <button>Sign in as {}</button></form>\
         <script>document.forms[0].submit()</script>",
        escape(email)
    ))
    .into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenForm {
    grant_type: String,
    refresh_token: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    device_code: Option<String>,
}

pub(super) fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

pub(super) async fn token(
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
    if form.grant_type == "urn:ietf:params:oauth:grant-type:device_code" {
        let code = form.device_code.clone().unwrap_or_default();
        return super::device::device_grant(&mut inner, &id, &code);
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
    issue_tokens(
        &mut inner,
        &grant.client_id,
        grant.user,
        grant.scope,
        grant.nonce,
    )
}

/// GitHub's token endpoint, which answers its errors with `200 OK`.
pub(super) async fn gh_token(
    state: State<Shared>,
    headers: HeaderMap,
    form: Form<TokenForm>,
) -> Response {
    let response = token(state, headers, form).await;
    if response.status() == StatusCode::BAD_REQUEST {
        let (mut parts, body) = response.into_parts();
        parts.status = StatusCode::OK;
        return Response::from_parts(parts, body);
    }
    response
}

/// Access and refresh tokens for `user`, and an ID token when `scope` has `openid`.
pub(super) fn issue_tokens(
    inner: &mut Inner,
    client_id: &str,
    user: TestUser,
    scope: String,
    nonce: Option<String>,
) -> Response {
    let access_token = format!("at-{}", random());
    inner.tokens.insert(access_token.clone(), user.clone());
    let refresh_token = format!("rt-{}", random());
    inner
        .refresh_tokens
        .insert(refresh_token.clone(), (user.clone(), scope.clone()));
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": inner.knobs.expires_in.unwrap_or(3600),
        "refresh_token": refresh_token,
        "scope": scope,
    });
    if scope.split(' ').any(|s| s == "openid") {
        let grant = Grant {
            client_id: client_id.to_owned(),
            redirect_uri: String::new(),
            code_challenge: None,
            nonce,
            user,
            scope,
        };
        body["id_token"] = json!(id_token(inner, &grant, &access_token));
    }
    Json(body).into_response()
}

/// Whether `secret` is a client-secret JWT as Apple checks it.
pub(super) fn client_assertion_ok(secret: &str, iss: &str, kid: &str, client_id: &str) -> bool {
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

pub(super) fn refresh_grant(inner: &mut Inner, form: &TokenForm) -> Response {
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
pub(super) struct RevokeForm {
    token: String,
}

pub(super) async fn revoke(State(state): State<Shared>, Form(form): Form<RevokeForm>) -> Response {
    let mut inner = lock(&state);
    inner.tokens.remove(&form.token);
    inner.refresh_tokens.remove(&form.token);
    inner.revoked.push(form.token);
    StatusCode::OK.into_response()
}

pub(super) fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
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

pub(super) fn id_token(inner: &Inner, grant: &Grant, access_token: &str) -> String {
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

pub(super) fn bearer_user(state: &Shared, headers: &HeaderMap) -> Option<TestUser> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    lock(state).tokens.get(token).cloned()
}

pub(super) async fn userinfo(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let user = with_user!(state, headers);
    Json(json!({
        "sub": user.sub,
        "email": user.email,
        "email_verified": user.email_verified,
        "name": user.name,
    }))
    .into_response()
}
