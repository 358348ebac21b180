//! Lanyard's own sessions: EdDSA-signed JWT access tokens, opaque refresh tokens stored only
//! as hashes, and the signing keys, created on first start and kept in the store.
//!
//! The key ring is a copy of the store's signing keys that follows the change feed (feed.rs),
//! so a key rotated through any daemon signs and verifies on all of them. A token naming a
//! key the ring lacks (signed by a daemon whose rotation has not reached this one yet) makes
//! the ring reload from the store, at most once per [`KEY_RELOAD_INTERVAL`]: a flood of
//! made-up key ids cannot become a flood of store reads.

pub(crate) mod claims;
mod verified;

use crate::locks::{read, write};
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;

use lanyard_proto::{Claims, Jwk, Jwks, Session, UserClaims};

use crate::config::SessionConfig;
use crate::crypto::Vault;
use crate::error::{Error, ErrorCode};
use crate::store::{hex_sha256, Revision, SessionRecord, SigningKeyRecord, Store, StoreError};
use secrecy::ExposeSecret;

/// A refresh token about to be stored, and the hash it is stored under.
pub(crate) struct Prepared {
    refresh_token: String,
    /// The refresh token's hash: the store's key for the session.
    pub session_key: String,
    /// The family a new login starts (a rotation keeps its old family instead).
    pub family_id: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("family_id", &self.family_id)
            .finish_non_exhaustive()
    }
}

/// Issues and verifies session tokens.
pub(crate) struct Sessions {
    config: SessionConfig,
    vault: Arc<Vault>,
    /// Derive a refresh token's successor: one per master key, the current first.
    successor_keys: Vec<ring::hmac::Key>,
    ring: RwLock<Ring>,
    /// Tokens whose signature was checked (verified.rs).
    verified: verified::Verified,
    rng: SystemRandom,
    /// When the ring last reloaded for an unknown key id; held while a reload runs, so
    /// concurrent unknown ids share one.
    last_reload: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    reloads: std::sync::atomic::AtomicU64,
}

/// How often a token with an unknown key id may make the key ring reload from the store.
pub(crate) const KEY_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long such a reload may wait for the store.
const KEY_RELOAD_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The signing keys in use, oldest first, as of a revision of the store's record.
#[derive(Default)]
struct Ring {
    revision: Revision,
    keys: Vec<LoadedKey>,
}

/// Why a token did not verify.
enum Refused {
    /// Its key id names no key in the ring (yet).
    UnknownKey,
    Invalid,
}

/// A signing key ready to use.
struct LoadedKey {
    kid: String,
    /// The parsed key pair. jsonwebtoken 9 re-derives it from the PKCS#8 seed on every
    /// signature (a scalar multiplication, ~3% of the daemon's CPU under load), so session
    /// tokens are signed here with this cached pair; jsonwebtoken still verifies them.
    signer: Ed25519KeyPair,
    /// The token header for this key, JSON then base64url: the same for every token.
    header: String,
    decoding: DecodingKey,
    public_key: String,
    retired_at: Option<i64>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Loads the signing keys from the store, creating the first on first start.
    pub(crate) async fn load(
        store: &dyn Store,
        vault: Arc<Vault>,
        config: SessionConfig,
    ) -> Result<Self, StoreError> {
        let rng = SystemRandom::new();
        let candidate = new_key(&vault, &rng)?;
        store.signing_keys(candidate).await?;
        let (revision, records) = store.current_signing_keys().await?;
        let successor_keys = vault
            .derived(b"lanyard refresh successor v1")
            .iter()
            .map(|key| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.bytes))
            .collect();
        let sessions = Self {
            config,
            successor_keys,
            vault,
            ring: RwLock::new(Ring::default()),
            verified: verified::Verified::default(),
            rng,
            last_reload: tokio::sync::Mutex::new(None),
            reloads: std::sync::atomic::AtomicU64::new(0),
        };
        sessions.install(revision, &records, true)?;
        Ok(sessions)
    }

    /// Makes a new signing key current; the previous one keeps verifying the tokens it signed
    /// until they expire. Returns the new key id and the revision of the store's change; the
    /// ring here has it at once (the feed brings it to the other daemons).
    pub(crate) async fn rotate(&self, store: &dyn Store) -> Result<(String, Revision), Error> {
        let record = new_key(&self.vault, &self.rng)?;
        let kid = record.kid.clone();
        let (revision, records) = store.rotate_signing_key(record, now()).await?;
        self.install(revision, &records, false)?;
        tracing::info!(%kid, "rotated the session signing key");
        Ok((kid, revision))
    }

    /// Makes the ring the store's keys as of `revision`, unless it already has a newer
    /// revision (`reset`: whatever it has, as after a resync).
    pub(crate) fn install(
        &self,
        revision: Revision,
        records: &[SigningKeyRecord],
        reset: bool,
    ) -> Result<(), StoreError> {
        if !reset && read(&self.ring).revision > revision {
            return Ok(());
        }
        let keys = records
            .iter()
            .map(|record| self.load_key(record))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(StoreError::Corrupt("no signing key".into()));
        }
        let mut ring = write(&self.ring);
        if reset || ring.revision <= revision {
            *ring = Ring { revision, keys };
            self.verified.clear();
        }
        Ok(())
    }

    /// Reloads the ring from the store for a token whose key id it lacks, unless a reload
    /// ran less than [`KEY_RELOAD_INTERVAL`] ago; whether the ring now knows `kid`.
    async fn reload_for(&self, kid: &str, store: &dyn Store) -> bool {
        let mut last = self.last_reload.lock().await;
        // A reload that ran while this one waited (or the feed) may have brought it.
        if self.knows(kid) {
            return true;
        }
        let now = tokio::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < KEY_RELOAD_INTERVAL) {
            return false;
        }
        *last = Some(now);
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Bounded: others with unknown key ids wait for this one.
        match tokio::time::timeout(KEY_RELOAD_LIMIT, store.current_signing_keys()).await {
            Ok(Ok((revision, records))) => {
                if let Err(error) = self.install(revision, &records, false) {
                    tracing::error!(%error, "cannot load the signing keys");
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot read the signing keys"),
            Err(_) => tracing::warn!("reading the signing keys took too long"),
        }
        self.knows(kid)
    }

    fn knows(&self, kid: &str) -> bool {
        read(&self.ring).keys.iter().any(|k| k.kid == kid)
    }

    #[cfg(test)]
    /// How many times the ring reloaded for an unknown key id.
    pub(crate) fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn load_key(&self, record: &SigningKeyRecord) -> Result<LoadedKey, StoreError> {
        let pkcs8 = self
            .vault
            .open(&record.private, &key_slot(&record.kid))
            .map_err(|e| StoreError::Corrupt(format!("signing key {}: {e}", record.kid)))?;
        let public = URL_SAFE_NO_PAD
            .decode(&record.public_key)
            .map_err(|e| StoreError::Corrupt(format!("signing key {}: {e}", record.kid)))?;
        Ok(LoadedKey {
            kid: record.kid.clone(),
            signer: Ed25519KeyPair::from_pkcs8(pkcs8.expose_secret()).map_err(|_| {
                StoreError::Corrupt(format!("signing key {}: bad PKCS#8", record.kid))
            })?,
            header: URL_SAFE_NO_PAD
                .encode(json!({ "typ": "JWT", "alg": "EdDSA", "kid": record.kid }).to_string()),
            decoding: DecodingKey::from_ed_der(&public),
            public_key: record.public_key.clone(),
            retired_at: record.retired_at,
        })
    }

    /// The key id of the current signing key.
    pub(crate) fn kid(&self) -> String {
        read(&self.ring)
            .keys
            .last()
            .map(|k| k.kid.clone())
            .unwrap_or_default()
    }

    /// Starts a new session family: a refresh token and the hash the store keeps it under.
    pub(crate) fn prepare(&self, now: i64) -> Result<Prepared, Error> {
        let refresh_token = format!("lrt_{}", random_token(&self.rng)?);
        Ok(Prepared {
            session_key: hex_sha256(refresh_token.as_bytes()),
            refresh_token,
            family_id: format!("ses_{}", ulid::Ulid::new()),
            expires_at: now + self.config.refresh_ttl_secs as i64,
        })
    }

    /// The successors refresh token `token` may have: derived from it under each master
    /// key (HMAC-SHA256), the current key's first, so every daemon derives the same one and
    /// a use within the reuse grace can answer it again without storing it.
    pub(crate) fn successors(&self, token: &str, now: i64) -> Vec<Prepared> {
        self.successor_keys
            .iter()
            .map(|key| {
                let tag = ring::hmac::sign(key, token.as_bytes());
                let refresh_token = format!("lrt_{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
                Prepared {
                    session_key: hex_sha256(refresh_token.as_bytes()),
                    refresh_token,
                    family_id: String::new(),
                    expires_at: now + self.config.refresh_ttl_secs as i64,
                }
            })
            .collect()
    }

    /// `refresh_reuse_grace_secs`.
    pub(crate) fn reuse_grace_secs(&self) -> i64 {
        self.config.refresh_reuse_grace_secs as i64
    }

    /// The record a login stores for a prepared session (the store sets `user_id`).
    pub(crate) fn record(&self, prepared: &Prepared, now: i64) -> SessionRecord {
        SessionRecord {
            user_id: String::new(),
            family_id: prepared.family_id.clone(),
            created_at: now,
            expires_at: prepared.expires_at,
            used_at: None,
            successor: None,
        }
    }

    /// `[sessions.claims]`: what tokens carry unless the login's instance says otherwise.
    pub(crate) fn claims(&self) -> &crate::config::ClaimsConfig {
        &self.config.claims
    }

    /// Signs the access token for a stored session of `family_id`, carrying `user`'s
    /// claims, and returns the session.
    pub(crate) fn finish(
        &self,
        prepared: Prepared,
        user_id: &str,
        family_id: &str,
        now: i64,
        user: UserClaims,
    ) -> Result<Session, Error> {
        let claims = Claims {
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: user_id.to_owned(),
            exp: now + self.config.access_ttl_secs as i64,
            iat: now,
            jti: ulid::Ulid::new().to_string(),
            sid: family_id.to_owned(),
            user,
        };
        let ring = read(&self.ring);
        let key = ring
            .keys
            .last()
            .ok_or_else(|| Error::internal("no signing key is loaded"))?;
        // JWS compact serialisation (RFC 7515 section 7.1): header.payload.signature.
        let payload = serde_json::to_vec(&claims)
            .map_err(|e| Error::internal(format!("cannot encode the session claims: {e}")))?;
        let signing_input = format!("{}.{}", key.header, URL_SAFE_NO_PAD.encode(payload));
        let signature = key.signer.sign(signing_input.as_bytes());
        let access_token = format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        );
        Ok(Session {
            access_token,
            token_type: "Bearer".into(),
            expires_in: self.config.access_ttl_secs,
            refresh_token: prepared.refresh_token,
        })
    }

    /// Verifies an access token's signature (by its `kid`), issuer, audience and expiry (or
    /// finds it verified before: verified.rs); a `kid` the ring lacks makes it reload from
    /// `store` first (rate-limited). Revocation is
    /// the caller's to check, against the store.
    pub(crate) async fn verify(&self, token: &str, store: &dyn Store) -> Result<Claims, Error> {
        let invalid = || Error::new(ErrorCode::Unauthorized, "the session token is not valid");
        let digest = verified::digest(token);
        if let Some(claims) = self.verified.get(&digest, now()) {
            return Ok(claims);
        }
        let epoch = self.verified.epoch();
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid());
        }
        let kid = header.kid.unwrap_or_default();
        let claims = match self.verify_with_ring(token, &kid) {
            Ok(claims) => claims,
            Err(Refused::UnknownKey) if self.reload_for(&kid, store).await => {
                self.verify_with_ring(token, &kid).map_err(|_| invalid())?
            }
            Err(_) => return Err(invalid()),
        };
        self.verified.insert(digest, claims.clone(), epoch);
        Ok(claims)
    }

    fn verify_with_ring(&self, token: &str, kid: &str) -> Result<Claims, Refused> {
        let ring = read(&self.ring);
        let key = ring
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(Refused::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|_| Refused::Invalid)
    }

    /// The JWKS that verifies session tokens: the current key, and retired keys while tokens
    /// they signed may still be unexpired.
    pub(crate) fn jwks(&self, now: i64) -> Jwks {
        let ttl = self.config.access_ttl_secs as i64;
        let keys = read(&self.ring)
            .keys
            .iter()
            .rev()
            .filter(|k| k.retired_at.is_none_or(|at| at + ttl >= now))
            .map(|k| Jwk::ed25519(&k.kid, &k.public_key))
            .collect();
        Jwks { keys }
    }

    /// The hash a refresh token is stored under.
    pub(crate) fn session_key(refresh_token: &str) -> String {
        hex_sha256(refresh_token.as_bytes())
    }
}

/// The vault slot of a signing key.
fn key_slot(kid: &str) -> String {
    format!("signing-key/{kid}")
}

fn new_key(vault: &Vault, rng: &SystemRandom) -> Result<SigningKeyRecord, StoreError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(rng)
        .map_err(|_| StoreError::Backend("cannot generate a signing key".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| StoreError::Backend("cannot read the generated key".into()))?;
    let public = pair.public_key().as_ref().to_vec();
    // Key ids are unique per key (hash of the public key), so a kid names one key forever.
    let kid = hex_sha256(&public)[..16].to_owned();
    let private = vault
        .seal(pkcs8.as_ref(), &key_slot(&kid))
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(SigningKeyRecord {
        kid,
        private,
        public_key: URL_SAFE_NO_PAD.encode(&public),
        created_at: now(),
        retired_at: None,
    })
}

/// A 256-bit random token, base64url.
pub(crate) fn random_token(rng: &SystemRandom) -> Result<String, Error> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes(rng)?))
}

/// 32 bytes from the system's random source.
pub(crate) fn random_bytes(rng: &SystemRandom) -> Result<[u8; 32], Error> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes)
        .map_err(|_| Error::internal("the system random source failed"))?;
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn sessions() -> SessionConfig {
        SessionConfig::default()
    }

    /// A token signed with a key this daemon's ring has not got yet (another daemon rotated
    /// it, and the feed has not brought it) verifies: the unknown key id reloads the ring.
    /// Made-up key ids reload it at most once per interval, however many arrive.
    #[tokio::test(start_paused = true)]
    async fn an_unknown_key_id_reloads_the_ring_at_most_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let vault = Arc::new(Vault::from_key_bytes(&[7; 32]));
        let here = Sessions::load(&store, vault.clone(), sessions())
            .await
            .unwrap();
        let elsewhere = Sessions::load(&store, vault.clone(), sessions())
            .await
            .unwrap();
        elsewhere.rotate(&store).await.unwrap();
        let now = now();
        let token = elsewhere
            .finish(
                elsewhere.prepare(now).unwrap(),
                "usr_1",
                "ses_1",
                now,
                UserClaims::default(),
            )
            .unwrap()
            .access_token;
        assert_eq!(here.verify(&token, &store).await.unwrap().sub, "usr_1");
        assert_eq!(here.reloads(), 1);

        // A flood of tokens naming keys nobody has: one reload per interval.
        let forged = |kid: &str| {
            let header = URL_SAFE_NO_PAD
                .encode(json!({ "typ": "JWT", "alg": "EdDSA", "kid": kid }).to_string());
            format!("{header}.e30.AAAA")
        };
        tokio::time::advance(KEY_RELOAD_INTERVAL).await;
        for i in 0..1000 {
            let refused = here.verify(&forged(&format!("made-up-{i}")), &store).await;
            assert_eq!(refused.unwrap_err().code, ErrorCode::Unauthorized);
        }
        assert_eq!(here.reloads(), 2, "one reload for the whole flood");
        tokio::time::advance(KEY_RELOAD_INTERVAL).await;
        assert!(here.verify(&forged("another"), &store).await.is_err());
        assert_eq!(here.reloads(), 3, "the next interval may reload again");
        // Keys it has need no reload.
        assert_eq!(here.verify(&token, &store).await.unwrap().sub, "usr_1");
        assert_eq!(here.reloads(), 3);
    }

    /// The ring takes the store's keys as of a revision, never an older one (the feed and a
    /// reload may deliver out of order), unless told the revision was reset.
    #[tokio::test]
    async fn the_ring_keeps_the_newest_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let vault = Arc::new(Vault::from_key_bytes(&[7; 32]));
        let ring = Sessions::load(&store, vault.clone(), sessions())
            .await
            .unwrap();
        let (old_revision, old_keys) = store.current_signing_keys().await.unwrap();
        let (kid, revision) = ring.rotate(&store).await.unwrap();
        assert!(revision > old_revision);
        ring.install(old_revision, &old_keys, false).unwrap();
        assert_eq!(ring.kid(), kid, "an older revision changes nothing");
        ring.install(old_revision, &old_keys, true).unwrap();
        assert_ne!(ring.kid(), kid, "a reset takes what it is given");
    }
}
