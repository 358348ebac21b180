//! OpenID Connect on the host side: discovery, the rule for refetching a JWKS on an unknown
//! `kid`, and full ID-token validation (signature, alg allow-list, iss, aud/azp, exp, iat
//! with bounded skew, nbf, nonce). Failures log their reason and surface only as
//! `invalid_id_token`. The key set itself belongs to the provider actor, which hands it out
//! through [`KeySource`].

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::http::HttpClient;
use crate::error::Error;

/// How often an unknown `kid` may trigger a JWKS refetch.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Where ID-token validation gets the issuer's keys: the cached set, or (`force`) a fresh
/// one when the token names a key the cache lacks (at most once per
/// [`JWKS_REFETCH_INTERVAL`]; the cached set otherwise).
pub trait KeySource {
    fn keys(
        &self,
        force: bool,
    ) -> impl std::future::Future<Output = Result<Arc<JwkSet>, Error>> + Send;
}

/// The JWKS an actor holds: the keys, when a forced refetch last ran, and who waits for a
/// fetch in progress.
#[derive(Debug)]
pub struct JwksState<W> {
    pub keys: Option<Arc<JwkSet>>,
    pub last_forced: Option<Instant>,
    /// A fetch in progress (and whether it was forced), with everyone waiting for it.
    pub fetching: Option<(bool, Vec<W>)>,
}

impl<W> Default for JwksState<W> {
    fn default() -> Self {
        Self {
            keys: None,
            last_forced: None,
            fetching: None,
        }
    }
}

impl<W> JwksState<W> {
    /// The cached keys, when a request (`force`: its token names a key they lack) may have
    /// them rather than a fetch.
    pub fn cached(&self, force: bool, now: Instant) -> Option<Arc<JwkSet>> {
        let recently_forced = self
            .last_forced
            .is_some_and(|t| now.saturating_duration_since(t) < JWKS_REFETCH_INTERVAL);
        self.keys.clone().filter(|_| !force || recently_forced)
    }

    /// Queues `waiter` for the fetch in progress; `true` when there is none, and the caller
    /// must start one.
    pub fn wait(&mut self, force: bool, waiter: W) -> bool {
        match &mut self.fetching {
            Some((forced, waiters)) => {
                *forced |= force;
                waiters.push(waiter);
                false
            }
            None => {
                self.fetching = Some((force, vec![waiter]));
                true
            }
        }
    }

    /// A fetch ended: keeps its keys, and returns who waited for them. A forced fetch
    /// counts against the interval whether it worked or not: a JWKS endpoint that fails is
    /// not asked again and again either.
    pub fn fetched(&mut self, result: &Result<Arc<JwkSet>, Error>, now: Instant) -> Vec<W> {
        let (forced, waiters) = self.fetching.take().unwrap_or((false, Vec::new()));
        if let Ok(keys) = result {
            self.keys = Some(keys.clone());
        }
        if forced {
            self.last_forced = Some(now);
        }
        waiters
    }
}

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
    /// RFC 8628's device authorization endpoint, when the issuer offers the device flow.
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
}

/// The placeholder a multi-tenant issuer carries for the token's `tid` claim.
pub const TENANT_PLACEHOLDER: &str = "{tenantid}";

/// Whether `iss` is `issuer`, or for a multi-tenant issuer, the issuer with `tid` (when
/// given; any tenant id otherwise) in place of the placeholder. Tenant ids are letters,
/// digits, `-` and `.`, so a crafted `tid` cannot smuggle in a path.
pub fn issuer_matches(issuer: &str, iss: &str, tid: Option<&str>) -> bool {
    let Some((prefix, suffix)) = issuer.split_once(TENANT_PLACEHOLDER) else {
        return iss == issuer;
    };
    let Some(middle) = iss
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
    else {
        return false;
    };
    let well_formed = !middle.is_empty()
        && middle.len() <= 64
        && middle
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    well_formed && tid.is_none_or(|tid| tid == middle)
}

/// Fetches the discovery document (from `url`, else `{issuer}/.well-known/...`) and checks
/// it names the same issuer.
pub async fn discover(
    http: &HttpClient,
    issuer: &str,
    url: Option<&str>,
) -> Result<Discovery, Error> {
    let url = url.map(str::to_owned).unwrap_or_else(|| {
        format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
    });
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
    /// The access token issued with the ID token, checked against `at_hash` when present.
    pub access_token: Option<&'a str>,
}

/// Validates an ID token against the issuer's keys and returns its claims.
pub async fn verify(
    keys: &impl KeySource,
    token: &str,
    expect: &Expectations<'_>,
) -> Result<Value, Error> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| reject("header", &e))?;
    if !expect.allowed_algs.contains(&header.alg) {
        return Err(reject("alg not allowed", &format!("{:?}", header.alg)));
    }
    let mut set = keys.keys(false).await?;
    let mut key = find_key(&set, header.kid.as_deref(), header.alg);
    if key.is_none() {
        // Keys rotate: look again once before refusing.
        set = keys.keys(true).await?;
        key = find_key(&set, header.kid.as_deref(), header.alg);
    }
    let key = key.ok_or_else(|| reject("no matching key", &header.kid.unwrap_or_default()))?;

    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    let templated = expect.issuer.contains(TENANT_PLACEHOLDER);
    if !templated {
        validation.set_issuer(&[expect.issuer]);
    }
    validation.set_audience(&[expect.client_id]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    validation.leeway = expect.skew_secs;
    validation.validate_nbf = true;
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|e| reject("signature or claims", &e))?
        .claims;

    // A multi-tenant issuer: `iss` must be the issuer for the token's own tenant. Checked
    // after the signature, so `tid` and `iss` are the provider's word.
    if templated
        && !issuer_matches(
            expect.issuer,
            claims["iss"].as_str().unwrap_or_default(),
            Some(claims["tid"].as_str().unwrap_or_default()),
        )
    {
        return Err(reject("iss for the token's tenant", &"mismatch"));
    }
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
    // OIDC Core 3.1.3.6: `at_hash`, when present, binds the access token to this ID token.
    if let (Some(at_hash), Some(access_token)) = (claims.get("at_hash"), expect.access_token) {
        let expected = token_hash(header.alg, access_token);
        let given = at_hash.as_str().unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(reject("at_hash", &"does not match the access token"));
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

/// The left half of the token's hash with the ID token's algorithm's hash function,
/// base64url: `at_hash` (OIDC Core 3.1.3.6; EdDSA tokens use SHA-512).
pub fn token_hash(alg: Algorithm, token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let digest_alg = match alg {
        Algorithm::RS384 | Algorithm::PS384 | Algorithm::ES384 | Algorithm::HS384 => {
            &ring::digest::SHA384
        }
        Algorithm::RS512 | Algorithm::PS512 | Algorithm::HS512 | Algorithm::EdDSA => {
            &ring::digest::SHA512
        }
        _ => &ring::digest::SHA256,
    };
    let digest = ring::digest::digest(digest_alg, token.as_bytes());
    let bytes = digest.as_ref();
    URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() / 2])
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
        // No kid: allowed only when the set holds a single key (OIDC Core 10.1).
        None if set.keys.len() > 1 => None,
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

#[cfg(test)]
mod tests {
    use super::issuer_matches;

    #[test]
    fn a_templated_issuer_matches_only_its_own_tenant() {
        let template = "https://login.example/{tenantid}/v2.0";
        let iss = "https://login.example/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0";
        assert!(issuer_matches(
            template,
            iss,
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        ));
        assert!(
            issuer_matches(template, iss, None),
            "any well-formed tenant"
        );
        assert!(!issuer_matches(template, iss, Some("another-tenant")));
        assert!(!issuer_matches(template, iss, Some("")));
        for crafted in [
            "https://login.example//v2.0",
            "https://login.example/a/b/v2.0",
            "https://login.example/a?x=/v2.0",
            "https://evil.example/72f988bf/v2.0",
        ] {
            assert!(!issuer_matches(template, crafted, None), "{crafted}");
        }
        assert!(issuer_matches(
            "https://plain.example",
            "https://plain.example",
            None
        ));
        assert!(!issuer_matches(
            "https://plain.example",
            "https://plain.example/",
            None
        ));
    }
}
