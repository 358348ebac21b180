//! Access tokens whose signature, issuer and audience were checked, remembered by their
//! SHA-256 until they expire: the same token comes back many times (a service verifying
//! each request of a session, a NATS client reconnecting), and its signature check, an
//! Ed25519 verification, was a quarter of an auth callout decision's CPU. Only what cannot
//! change for the same bytes is remembered: whether the session was revoked or its user
//! disabled is read from the store every time, by the caller. A change of the key ring
//! forgets everything.
//!
//! Two generations of at most [`GENERATION`] tokens each: a hit in the older one moves the
//! token to the newer; when the newer fills up, the older is dropped. Tokens in use stay,
//! memory stays bounded.

use std::collections::HashMap;
use std::sync::Mutex;

use lanyard_proto::Claims;

/// Tokens per generation.
const GENERATION: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Verified {
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    newer: HashMap<[u8; 32], Claims>,
    older: HashMap<[u8; 32], Claims>,
    /// How many times the cache was cleared: a verification that began before a clear
    /// (against the ring before it) is not remembered after it.
    epoch: u64,
}

impl Generations {
    fn insert(&mut self, digest: [u8; 32], claims: Claims) {
        if self.newer.len() >= GENERATION {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(digest, claims);
    }
}

/// The key a token is remembered under.
pub(crate) fn digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

impl Verified {
    /// The claims of a token checked before, while it has not expired at `now`.
    pub(crate) fn get(&self, digest: &[u8; 32], now: i64) -> Option<Claims> {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let claims = match generations.newer.get(digest) {
            Some(claims) => claims.clone(),
            None => {
                let claims = generations.older.remove(digest)?;
                generations.insert(*digest, claims.clone());
                claims
            }
        };
        (claims.exp > now).then_some(claims)
    }

    /// The epoch to pass to [`insert`](Self::insert), taken before the verification.
    pub(crate) fn epoch(&self) -> u64 {
        self.generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .epoch
    }

    /// Remembers a token verified since `epoch`, unless the cache was cleared meanwhile.
    pub(crate) fn insert(&self, digest: [u8; 32], claims: Claims, epoch: u64) {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        if generations.epoch == epoch {
            generations.insert(digest, claims);
        }
    }

    /// Forgets every token (the key ring changed).
    pub(crate) fn clear(&self) {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = generations.epoch + 1;
        *generations = Generations {
            epoch,
            ..Generations::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        serde_json::from_value(serde_json::json!({
            "iss": "i", "aud": "a", "sub": "usr_1", "exp": exp, "iat": 0, "jti": "j",
            "sid": "ses_1",
        }))
        .unwrap()
    }

    #[test]
    fn a_token_is_remembered_until_it_expires_within_two_generations() {
        let verified = Verified::default();
        let first = digest("first");
        verified.insert(first, claims(100), 0);
        assert_eq!(verified.get(&first, 99).unwrap().exp, 100);
        assert!(verified.get(&first, 100).is_none(), "expired");

        // A generation's worth of others: `first` moves to the older generation, and a hit
        // there brings it back to the newer.
        for i in 0..GENERATION {
            verified.insert(digest(&format!("other-{i}")), claims(100), 0);
        }
        assert!(verified.get(&first, 0).is_some());
        // Two more generations without it: gone.
        for i in 0..2 * GENERATION {
            verified.insert(digest(&format!("later-{i}")), claims(100), 0);
        }
        assert!(verified.get(&first, 0).is_none());
        let total = {
            let g = verified.generations.lock().unwrap();
            g.newer.len() + g.older.len()
        };
        assert!(total <= 2 * GENERATION);

        verified.insert(first, claims(100), 0);
        verified.clear();
        assert!(verified.get(&first, 0).is_none());
        // A verification that began before the clear is not remembered after it.
        verified.insert(first, claims(100), 0);
        assert!(verified.get(&first, 0).is_none());
        verified.insert(first, claims(100), verified.epoch());
        assert!(verified.get(&first, 0).is_some());
    }
}
