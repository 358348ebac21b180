//! Local verification of session access tokens: EdDSA JWTs checked against the daemons'
//! JWKS, kept in memory. A token whose `kid` the cache lacks makes it fetch the JWKS again
//! (at most once a second, one fetch at a time); `keys.rotated` events make it fetch at
//! once when followed. A revocation is not seen here: `Client::verify` asks a daemon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lanyard_proto::{event_subject, Claims, Event};

use crate::{Client, Error};

/// How often unknown `kid`s may make the verifier fetch the JWKS.
const REFETCH_EVERY: Duration = Duration::from_secs(1);

/// How long a key the JWKS stopped listing stays in the cache.
const KEEP_UNLISTED: Duration = Duration::from_secs(3600);

/// Verifies session access tokens locally. Cheap to clone (the cache is shared).
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    validation: Validation,
    /// Each key, and when a fetched JWKS last listed it.
    keys: RwLock<HashMap<String, (DecodingKey, Instant)>>,
    /// When a fetch was last attempted.
    fetched: Mutex<Option<Instant>>,
    /// Whether `follow_rotations` runs.
    following: std::sync::atomic::AtomicBool,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = read(&self.inner.keys).keys().cloned().collect();
        f.debug_struct("Verifier").field("kids", &kids).finish()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Verifier {
    pub(crate) fn new(client: Client, issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 0;
        Self {
            inner: Arc::new(Inner {
                client,
                validation,
                keys: RwLock::default(),
                fetched: Mutex::default(),
                fetching: tokio::sync::Mutex::default(),
                following: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The token's claims, if its signature is one of the daemons' keys and its issuer,
    /// audience and expiry hold.
    pub async fn verify(&self, token: &str) -> Result<Claims, Error> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| Error::InvalidToken(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(Error::InvalidToken(format!(
                "{:?} is not EdDSA",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| Error::InvalidToken("no kid".into()))?;
        let cached = |verifier: &Self| read(&verifier.inner.keys).get(&kid).map(|(k, _)| k.clone());
        let mut key = cached(self);
        if key.is_none() {
            self.fetch(false).await?;
            key = cached(self);
        }
        let key = key.ok_or_else(|| Error::InvalidToken(format!("no key {kid} in the JWKS")))?;
        jsonwebtoken::decode::<Claims>(token, &key, &self.inner.validation)
            .map(|data| data.claims)
            .map_err(|e| Error::InvalidToken(e.to_string()))
    }

    /// The key ids it holds now.
    pub fn kids(&self) -> Vec<String> {
        read(&self.inner.keys).keys().cloned().collect()
    }

    /// Fetches the JWKS into the cache: when `force`, at once; else only if the last
    /// attempt is over a second old (tokens with made-up key ids cannot make it fetch more
    /// often, and do not wait in line behind a fetch). Keys the JWKS no longer lists stay
    /// for an hour (their tokens expire before that): a daemon whose feed lags cannot make
    /// the cache forget a key another daemon still signs with.
    pub async fn fetch(&self, force: bool) -> Result<(), Error> {
        if !force && self.attempted_recently() {
            return Ok(());
        }
        let Ok(_one) = self.inner.fetching.try_lock() else {
            // Another fetch is in flight: it brings what this one would.
            return Ok(());
        };
        *self
            .inner
            .fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        let jwks = self.inner.client.jwks().await?;
        let now = Instant::now();
        let mut keys = self
            .inner
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for jwk in jwks.keys {
            match DecodingKey::from_ed_components(&jwk.x) {
                Ok(key) => {
                    keys.insert(jwk.kid, (key, now));
                }
                Err(error) => {
                    tracing::warn!(kid = %jwk.kid, %error, "a JWKS key that is not Ed25519")
                }
            }
        }
        keys.retain(|_, (_, seen)| now.duration_since(*seen) < KEEP_UNLISTED);
        Ok(())
    }

    fn attempted_recently(&self) -> bool {
        self.inner
            .fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < REFETCH_EVERY)
    }

    /// Fetches the JWKS, then again at every `keys.rotated` event naming a key it lacks
    /// (until the JWKS lists it: the daemon that answers may not have it yet), in a task
    /// that ends when every handle on this verifier is gone. Calling it again does nothing.
    pub async fn follow_rotations(&self) -> Result<(), Error> {
        if self
            .inner
            .following
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(());
        }
        let client = &self.inner.client;
        let subject = event_subject(client.prefix(), Event::KEYS_ROTATED);
        let mut events = client
            .nats()
            .subscribe(subject)
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        self.fetch(true).await?;
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            while let Some(message) = events.next().await {
                let Some(inner) = weak.upgrade() else { return };
                let verifier = Verifier { inner };
                let kid = serde_json::from_slice::<serde_json::Value>(&message.payload)
                    .ok()
                    .and_then(|body| body["kid"].as_str().map(str::to_owned));
                let Some(kid) = kid else { continue };
                for _ in 0..10 {
                    if read(&verifier.inner.keys).contains_key(&kid) {
                        break;
                    }
                    if let Err(error) = verifier.fetch(true).await {
                        tracing::warn!(%error, "cannot fetch the JWKS after a key rotation");
                    }
                    if read(&verifier.inner.keys).contains_key(&kid) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Ok(())
    }
}
