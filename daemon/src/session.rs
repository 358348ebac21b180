//! Lanyard's own sessions: EdDSA-signed JWT access tokens, opaque refresh tokens stored only
//! as hashes, and the signing key, created on first start and kept in the store.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::SessionConfig;
use crate::error::{Error, ErrorCode};
use crate::store::{hex_sha256, SessionRecord, SigningKeyRecord, Store, StoreError};

/// The session a login hands out, as it goes on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub refresh_token: String,
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    /// The session family this token belongs to.
    pub sid: String,
}

/// A session about to be stored: its refresh token and the record kept under its hash.
pub struct Prepared {
    refresh_token: String,
    /// The refresh token's hash: the store's key for the session.
    pub session_key: String,
    pub record: SessionRecord,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("family_id", &self.record.family_id)
            .finish_non_exhaustive()
    }
}

/// Issues and verifies session tokens.
pub struct Sessions {
    config: SessionConfig,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_key: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Loads the signing key from the store, creating it on first start.
    pub async fn load(store: &dyn Store, config: SessionConfig) -> Result<Self, StoreError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| StoreError::Backend("cannot generate a signing key".into()))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| StoreError::Backend("cannot read the generated key".into()))?;
        let public = pair.public_key().as_ref().to_vec();
        let candidate = SigningKeyRecord {
            kid: hex_sha256(&public)[..16].to_owned(),
            pkcs8: STANDARD.encode(pkcs8.as_ref()),
            public_key: URL_SAFE_NO_PAD.encode(&public),
            created_at: now(),
        };
        let record = store.signing_key(candidate).await?;
        let pkcs8 = STANDARD
            .decode(&record.pkcs8)
            .map_err(|e| StoreError::Corrupt(format!("signing key: {e}")))?;
        let public = URL_SAFE_NO_PAD
            .decode(&record.public_key)
            .map_err(|e| StoreError::Corrupt(format!("signing key: {e}")))?;
        Ok(Self {
            config,
            kid: record.kid,
            encoding: EncodingKey::from_ed_der(&pkcs8),
            decoding: DecodingKey::from_ed_der(&public),
            public_key: record.public_key,
            rng,
        })
    }

    /// The key id of the current signing key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Starts a new session family: the refresh token and the record the store keeps under
    /// its hash. The store fills in `user_id` when it decides who logged in.
    pub fn prepare(&self, now: i64) -> Result<Prepared, Error> {
        let refresh_token = format!("lrt_{}", random_token(&self.rng)?);
        Ok(Prepared {
            session_key: hex_sha256(refresh_token.as_bytes()),
            refresh_token,
            record: SessionRecord {
                user_id: String::new(),
                family_id: format!("ses_{}", ulid::Ulid::new()),
                created_at: now,
                expires_at: now + self.config.refresh_ttl_secs as i64,
            },
        })
    }

    /// Signs the access token for a stored session and returns the wire session.
    pub fn finish(&self, prepared: Prepared, user_id: &str, now: i64) -> Result<Session, Error> {
        let claims = Claims {
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: user_id.to_owned(),
            exp: now + self.config.access_ttl_secs as i64,
            iat: now,
            jti: ulid::Ulid::new().to_string(),
            sid: prepared.record.family_id,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let access_token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| Error::internal(format!("cannot sign the session token: {e}")))?;
        Ok(Session {
            access_token,
            token_type: "Bearer".into(),
            expires_in: self.config.access_ttl_secs,
            refresh_token: prepared.refresh_token,
        })
    }

    /// Verifies an access token's signature, issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|_| Error::new(ErrorCode::Unauthorized, "the session token is not valid"))
    }

    /// The JWKS that verifies session tokens.
    pub fn jwks(&self) -> Value {
        json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": self.kid,
                "x": self.public_key,
            }]
        })
    }
}

/// A 256-bit random token, base64url.
pub fn random_token(rng: &SystemRandom) -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes)
        .map_err(|_| Error::internal("the system random source failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// RFC 3339 for a Unix time, as replies and events carry it.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
