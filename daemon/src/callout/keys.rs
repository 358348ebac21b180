//! The servers' keys, read once: the key that verifies a server's requests, and the box
//! shared with a server's xkey. `nkeys` decodes a public key (a point decompression) and
//! computes an X25519 shared key on every call; a server sends every request with the same
//! keys, so both are kept per server, for at most [`MAX_SERVERS`] servers (a cluster's; a
//! fuller cache starts over).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crypto_box::aead::Aead;
use crypto_box::SalsaBox;

/// How many servers' keys are kept.
const MAX_SERVERS: usize = 256;

/// The version tag of an xkey-sealed message, as nkeys writes it: `xkv1`, the 24-byte
/// nonce, the sealed bytes.
const SEALED_V1: &[u8] = b"xkv1";

/// Keys kept per server.
pub(crate) struct ServerKeys {
    /// The callout's own curve key, when requests come encrypted.
    own: Option<crypto_box::SecretKey>,
    verifiers: Mutex<HashMap<String, Arc<nkeys::KeyPair>>>,
    boxes: Mutex<HashMap<String, Arc<SalsaBox>>>,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys")
            .field("encrypted", &self.own.is_some())
            .finish_non_exhaustive()
    }
}

/// The value for `key`, from `map` or made by `make` (and kept).
fn kept<T>(
    map: &Mutex<HashMap<String, Arc<T>>>,
    key: &str,
    make: impl FnOnce() -> Option<T>,
) -> Option<Arc<T>> {
    if let Some(found) = map.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
        return Some(found.clone());
    }
    let made = Arc::new(make()?);
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_SERVERS {
        map.clear();
    }
    map.insert(key.to_owned(), made.clone());
    Some(made)
}

impl ServerKeys {
    /// With the callout's curve key seed (`SX…`), if requests come encrypted; `None` for a
    /// seed that is not a curve key's.
    pub(crate) fn new(xkey_seed: Option<&str>) -> Option<Self> {
        let own = match xkey_seed {
            Some(seed) => {
                // XKey checks the seed is a curve key's; its raw bytes make the box's key.
                nkeys::XKey::from_seed(seed.trim()).ok()?;
                let (_, raw) = nkeys::decode_seed(seed.trim()).ok()?;
                Some(crypto_box::SecretKey::from_bytes(raw))
            }
            None => None,
        };
        Some(Self {
            own,
            verifiers: Mutex::default(),
            boxes: Mutex::default(),
        })
    }

    /// The key that verifies server `id`'s signatures (a server's public nkey, `N…`).
    pub(crate) fn verifier(&self, id: &str) -> Option<Arc<nkeys::KeyPair>> {
        if !id.starts_with('N') {
            return None;
        }
        kept(&self.verifiers, id, || {
            nkeys::KeyPair::from_public_key(id).ok()
        })
    }

    fn shared(&self, server_xkey: &str) -> Option<Arc<SalsaBox>> {
        let own = self.own.as_ref()?;
        kept(&self.boxes, server_xkey, || {
            let (_, raw) = nkeys::from_public_key(server_xkey).ok()?;
            nkeys::XKey::from_public_key(server_xkey).ok()?;
            Some(SalsaBox::new(&crypto_box::PublicKey::from(raw), own))
        })
    }

    /// The request's JWT: opened with the box shared with the server's xkey (`server_xkey`,
    /// the request's `Nats-Server-Xkey` header) when the callout has one. A request that is
    /// not encrypted when it must be, or encrypted when it cannot be opened, is `None`.
    pub(crate) fn open(&self, payload: &[u8], server_xkey: Option<&str>) -> Option<Vec<u8>> {
        match (&self.own, server_xkey) {
            (None, None) => Some(payload.to_vec()),
            (Some(_), Some(server)) => {
                let shared = self.shared(server)?;
                let sealed = payload.strip_prefix(SEALED_V1)?;
                let size = crypto_box::Nonce::default().len();
                if sealed.len() <= size {
                    return None;
                }
                let (nonce, sealed) = sealed.split_at(size);
                shared.decrypt(nonce.into(), sealed).ok()
            }
            (None, Some(_)) | (Some(_), None) => None,
        }
    }

    /// The response as the server reads it: sealed for the server's xkey when encrypted.
    pub(crate) fn seal(&self, response: String, server_xkey: Option<&str>) -> Option<Vec<u8>> {
        let (Some(_), Some(server)) = (&self.own, server_xkey) else {
            return Some(response.into_bytes());
        };
        let shared = self.shared(server)?;
        let mut nonce = crypto_box::Nonce::default();
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).ok()?;
        let sealed = shared.encrypt(&nonce, response.as_bytes()).ok()?;
        let mut out = Vec::with_capacity(SEALED_V1.len() + nonce.len() + sealed.len());
        out.extend_from_slice(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sealed here, opened by nkeys, and the other way round: the same format.
    #[test]
    fn sealed_boxes_agree_with_nkeys_both_ways() {
        let own = nkeys::XKey::new();
        let server = nkeys::XKey::new();
        let keys = ServerKeys::new(Some(&own.seed().unwrap())).unwrap();
        let server_public = server.public_key();

        let request = server.seal(b"a request", &own).unwrap();
        let opened = keys.open(&request, Some(&server_public)).unwrap();
        assert_eq!(opened, b"a request");

        let sealed = keys.seal("an answer".into(), Some(&server_public)).unwrap();
        let own_public = nkeys::XKey::from_public_key(&own.public_key()).unwrap();
        assert_eq!(server.open(&sealed, &own_public).unwrap(), b"an answer");

        // Another server's box does not open it; plain requests are refused when encrypted.
        let stranger = nkeys::XKey::new();
        assert!(keys.open(&request, Some(&stranger.public_key())).is_none());
        assert!(keys.open(b"eyJ...", None).is_none());
        let plain = ServerKeys::new(None).unwrap();
        assert!(plain.open(&request, Some(&server_public)).is_none());
        assert_eq!(plain.open(b"eyJ", None).unwrap(), b"eyJ");
    }

    #[test]
    fn a_server_key_verifies_and_anything_else_is_none() {
        let keys = ServerKeys::new(None).unwrap();
        let server = nkeys::KeyPair::new_server();
        let verifier = keys.verifier(&server.public_key()).unwrap();
        let signature = server.sign(b"x").unwrap();
        verifier.verify(b"x", &signature).unwrap();
        assert!(Arc::ptr_eq(
            &verifier,
            &keys.verifier(&server.public_key()).unwrap()
        ));
        assert!(keys
            .verifier(&nkeys::KeyPair::new_account().public_key())
            .is_none());
        assert!(keys.verifier("Nnot-a-key").is_none());
        assert!(ServerKeys::new(Some("SXnot-a-seed")).is_none());
    }
}
