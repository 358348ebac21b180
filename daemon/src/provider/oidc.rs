//! OpenID Connect on the host side: discovery, a JWKS cache that refetches on an unknown `kid`,
//! and full ID-token validation (signature, alg allow-list, iss, aud/azp, exp, iat with bounded
//! skew, nbf, nonce). Failures log their reason and surface only as `invalid_id_token`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::RwLock;

use super::http::HttpClient;
use crate::error::Error;

/// How often an unknown `kid` may trigger a JWKS refetch.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// The parts of a discovery document Lanyard uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: String,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
}

/// Fetches `{issuer}/.well-known/openid-configuration` and checks it names the same issuer.
pub async fn discover(http: &HttpClient, issuer: &str) -> Result<Discovery, Error> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc: Discovery = http.get_json(&url).await?;
    if doc.issuer != issuer {
        return Err(Error::provider(
            "the discovery document names a different issuer than configured",
        ));
    }
    Ok(doc)
}

/// What an ID token must satisfy.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: Option<&'a str>,
    pub allowed_algs: &'a [Algorithm],
    pub skew_secs: u64,
    pub now: i64,
}

/// A JWKS, fetched lazily and refetched when a token names a key it lacks.
#[derive(Debug)]
pub struct JwksCache {
    uri: String,
    state: RwLock<JwksState>,
}

#[derive(Debug, Default)]
struct JwksState {
    keys: Option<Arc<JwkSet>>,
    /// When a token last forced a refetch; such refetches are rate-limited so a stream of
    /// tokens with unknown keys cannot hammer the provider.
    last_forced: Option<Instant>,
}

impl JwksCache {
    pub fn new(uri: String) -> Self {
        Self {
            uri,
            state: RwLock::new(JwksState::default()),
        }
    }

    async fn keys(&self, http: &HttpClient, force: bool) -> Result<Arc<JwkSet>, Error> {
        let seen = {
            let state = self.state.read().await;
            let recently_forced = state
                .last_forced
                .is_some_and(|t| t.elapsed() < JWKS_REFETCH_INTERVAL);
            match &state.keys {
                Some(keys) if !force || recently_forced => return Ok(keys.clone()),
                other => other.clone(),
            }
        };
        let mut state = self.state.write().await;
        // Another task may have fetched while we waited for the lock: use its result.
        match (&state.keys, &seen) {
            (Some(current), Some(seen)) if !Arc::ptr_eq(current, seen) => {
                return Ok(current.clone())
            }
            (Some(current), None) => return Ok(current.clone()),
            _ => {}
        }
        let keys: Arc<JwkSet> = Arc::new(http.get_json(&self.uri).await?);
        state.keys = Some(keys.clone());
        if force {
            state.last_forced = Some(Instant::now());
        }
        Ok(keys)
    }

    /// Validates an ID token and returns its claims.
    pub async fn verify(
        &self,
        http: &HttpClient,
        token: &str,
        expect: &Expectations<'_>,
    ) -> Result<Value, Error> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| reject("header", &e))?;
        if !expect.allowed_algs.contains(&header.alg) {
            return Err(reject("alg not allowed", &format!("{:?}", header.alg)));
        }
        let mut set = self.keys(http, false).await?;
        let mut key = find_key(&set, header.kid.as_deref(), header.alg);
        if key.is_none() {
            // Keys rotate: look again once before refusing.
            set = self.keys(http, true).await?;
            key = find_key(&set, header.kid.as_deref(), header.alg);
        }
        let key = key.ok_or_else(|| reject("no matching key", &header.kid.unwrap_or_default()))?;

        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[expect.issuer]);
        validation.set_audience(&[expect.client_id]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = expect.skew_secs;
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| reject("signature or claims", &e))?
            .claims;

        let iat = claims["iat"]
            .as_i64()
            .ok_or_else(|| reject("iat", &"not a number"))?;
        if iat > expect.now + expect.skew_secs as i64 {
            return Err(reject("iat in the future", &iat));
        }
        // With several audiences, `azp` must name us (OIDC Core 3.1.3.7).
        if let Value::Array(auds) = &claims["aud"] {
            if auds.len() > 1 && claims["azp"].as_str() != Some(expect.client_id) {
                return Err(reject("azp", &"missing or not ours"));
            }
        }
        if let Some(expected) = expect.nonce {
            let got = claims["nonce"].as_str().unwrap_or_default();
            if !bool::from(got.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(reject("nonce", &"mismatch"));
            }
        }
        Ok(claims)
    }
}

fn find_key(set: &JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
    let usable = |jwk: &&jsonwebtoken::jwk::Jwk| {
        let alg_ok = jwk
            .common
            .key_algorithm
            .map(|a| Algorithm::from_str(&a.to_string()).ok() == Some(alg))
            .unwrap_or(true);
        let use_ok = !matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        );
        alg_ok && use_ok
    };
    let jwk = match kid {
        Some(kid) => set
            .keys
            .iter()
            .filter(usable)
            .find(|k| k.common.key_id.as_deref() == Some(kid)),
        // No kid: only unambiguous when exactly one key fits.
        None => {
            let mut fitting = set.keys.iter().filter(usable);
            match (fitting.next(), fitting.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
    }?;
    DecodingKey::from_jwk(jwk).ok()
}

fn reject(check: &str, detail: &dyn std::fmt::Display) -> Error {
    tracing::warn!(check, detail = %detail, "ID token rejected");
    Error::invalid_id_token()
}

/// Parses the operator's allow-list; config validation already refused anything else.
pub fn parse_algs(names: &[String]) -> Vec<Algorithm> {
    names
        .iter()
        .filter_map(|n| Algorithm::from_str(n).ok())
        .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        .collect()
}
