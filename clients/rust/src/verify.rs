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

/// Verifies session access tokens locally. Cheap to clone (the cache is shared).
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    validation: Validation,
    keys: RwLock<HashMap<String, DecodingKey>>,
    /// When the JWKS was last fetched.
    fetched: Mutex<Option<Instant>>,
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
        let mut key = read(&self.inner.keys).get(&kid).cloned();
        if key.is_none() {
            self.fetch(false).await?;
            key = read(&self.inner.keys).get(&kid).cloned();
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

    /// Fetches the JWKS, replacing the cache: now when `force`, else only if the last fetch
    /// is over a second old (tokens with made-up key ids cannot make it fetch more often,
    /// nor wait in line; a key rotated within a second of a fetch is found by the
    /// `keys.rotated` event, or by the first unknown kid a second later).
    pub async fn fetch(&self, force: bool) -> Result<(), Error> {
        let _one = self.inner.fetching.lock().await;
        let recent = self
            .inner
            .fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < REFETCH_EVERY);
        if recent && !force {
            return Ok(());
        }
        let jwks = self.inner.client.jwks().await?;
        let mut keys = HashMap::new();
        for jwk in jwks.keys {
            match DecodingKey::from_ed_components(&jwk.x) {
                Ok(key) => {
                    keys.insert(jwk.kid, key);
                }
                Err(error) => {
                    tracing::warn!(kid = %jwk.kid, %error, "a JWKS key that is not Ed25519")
                }
            }
        }
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        *self
            .inner
            .fetched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        Ok(())
    }

    /// Fetches the JWKS, then again at every `keys.rotated` event, in a task that lives as
    /// long as the NATS connection's subscription.
    pub async fn follow_rotations(&self) -> Result<(), Error> {
        let client = &self.inner.client;
        let subject = event_subject(client.prefix(), Event::KEYS_ROTATED);
        let mut events = client
            .nats()
            .subscribe(subject)
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        self.fetch(true).await?;
        let verifier = self.clone();
        tokio::spawn(async move {
            while events.next().await.is_some() {
                if let Err(error) = verifier.fetch(true).await {
                    tracing::warn!(%error, "cannot fetch the JWKS after a key rotation");
                }
            }
        });
        Ok(())
    }
}
