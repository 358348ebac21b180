//! A login's `state`, sealed: everything its callback needs travels in the state itself, so
//! starting a login writes nothing, and any daemon with the same master key can finish a login
//! another started.
//!
//! `state` is unpadded base64url of
//!
//! ```text
//! version (1) | kid (2) | id (16) | XChaCha20-Poly1305( expiry (8, i64 BE) | flags (1)
//!     | generation fingerprint (8) | redirect URI fingerprint (8)
//!     | provider, link user, return_to (each a length byte, then the bytes) ) | tag (16)
//! ```
//!
//! under a key derived from the master key (`kid` names it, so the master key rotates), with
//! `version | kid | id` as associated data and `id | 0⁸` as the nonce. The id is random and
//! unique to the login: the callback spends it (single use), and the login's other secrets
//! are derived from it with a keyed function rather than carried: the PKCE verifier, the
//! OpenID Connect nonce and the browser binding. Fingerprints (8 bytes of SHA-256) stand for
//! strings the callback compares but need not carry: the instance's generation and the
//! redirect URI (found again in the instance's allow-list). Sealed, a state cannot be made or
//! changed without the key; the fingerprints only tell apart values the daemon itself chose.
//!
//! The longest state any accepted request yields is 511 characters (a 64-byte provider id,
//! link user and a [`MAX_RETURN_TO`] `return_to`); `a_state_stays_under_512_characters` pins
//! it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ring::hmac;

use crate::crypto::Vault;
use crate::error::Error;

/// The longest `return_to` a login accepts, in bytes: what keeps `state` under 512
/// characters.
pub const MAX_RETURN_TO: usize = 192;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 2 + 16;
const TAG: usize = 16;
/// The longest provider id and link user (config validation keeps ids to 64).
const MAX_NAME: usize = 64;

/// 8 bytes of a value's SHA-256: tells apart values the daemon chose, inside a sealed state.
pub type Fingerprint = [u8; 8];

/// The fingerprint of `value`.
pub fn fingerprint(value: &str) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest.as_ref()[..8]);
    out
}

/// What a state carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginState {
    /// Random and unique to the login; the callback spends it.
    pub id: [u8; 16],
    pub expires_at: i64,
    pub provider: String,
    /// The instance generation that started the login.
    pub generation: Fingerprint,
    /// The redirect URI the provider was given.
    pub redirect_uri: Fingerprint,
    pub fetch_groups: bool,
    /// Link the new identity to this user (a `link_session` login).
    pub link_user: Option<String>,
    pub return_to: Option<String>,
}

/// The login's secrets, derived from its id: never stored, never in the state.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    /// What the service keeps in the browser that started the login (a cookie) and hands
    /// back with the callback.
    pub binding: String,
    /// The PKCE code verifier (43 characters of base64url, as RFC 7636 allows).
    pub pkce_verifier: String,
    /// The OpenID Connect nonce.
    pub nonce: String,
    /// A hosted login's handle, for `login.wait` (derived so that the hosted callback finds
    /// the login from its state alone).
    pub handle: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

impl Secrets {
    /// Whether `binding` is this login's, compared in constant time.
    pub fn binds(&self, binding: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.binding.as_bytes().ct_eq(binding.as_bytes()).into()
    }
}

struct StateKey {
    kid: [u8; 2],
    cipher: XChaCha20Poly1305,
    secrets: hmac::Key,
}

/// Seals and opens login states under keys derived from the master keys.
pub struct LoginStates {
    /// The current master key's first; previous keys still open.
    keys: Vec<StateKey>,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for LoginStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginStates").finish_non_exhaustive()
    }
}

impl LoginStates {
    pub fn new(vault: &Vault) -> Self {
        let secrets = vault.derived(b"lanyard login secrets v1");
        let keys = vault
            .derived(b"lanyard login state v1")
            .into_iter()
            .zip(secrets)
            .map(|(state, secrets)| StateKey {
                kid: state.kid,
                cipher: XChaCha20Poly1305::new((&state.bytes).into()),
                secrets: hmac::Key::new(hmac::HMAC_SHA256, &secrets.bytes),
            })
            .collect();
        Self {
            keys,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// A fresh login id.
    pub fn new_id(&self) -> Result<[u8; 16], Error> {
        let mut id = [0u8; 16];
        ring::rand::SecureRandom::fill(&self.rng, &mut id)
            .map_err(|_| Error::internal("the system random source failed"))?;
        Ok(id)
    }

    /// A state in the previous version's format, for a login stored as that version stored
    /// them (`stored_login_states`): its expiry, then 32 random bytes.
    pub fn new_stored_state(&self, expires_at: i64) -> Result<String, Error> {
        let mut random = [0u8; 32];
        ring::rand::SecureRandom::fill(&self.rng, &mut random)
            .map_err(|_| Error::internal("the system random source failed"))?;
        Ok(crate::store::new_state(expires_at, random))
    }

    /// The secrets of a login about to start (under the current key).
    pub fn secrets(&self, id: &[u8; 16]) -> Secrets {
        derive_secrets(&self.keys[0].secrets, id)
    }

    /// `state` for a login, sealed under the current key.
    pub fn seal(&self, state: &LoginState) -> Result<String, Error> {
        let key = &self.keys[0];
        let mut header = [0u8; HEADER];
        header[0] = VERSION;
        header[1..3].copy_from_slice(&key.kid);
        header[3..].copy_from_slice(&state.id);
        let plaintext = encode(state)?;
        let sealed = key
            .cipher
            .encrypt(
                &nonce(&state.id),
                Payload {
                    msg: &plaintext,
                    aad: &header,
                },
            )
            .map_err(|_| Error::internal("cannot seal a login state"))?;
        let mut out = Vec::with_capacity(HEADER + sealed.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&sealed);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// The login a state stands for, with its secrets; `None` for anything this daemon's
    /// keys did not seal (malformed, tampered, another deployment's, or a dropped key's).
    pub fn open(&self, state: &str) -> Option<(LoginState, Secrets)> {
        let bytes = URL_SAFE_NO_PAD.decode(state).ok()?;
        if bytes.len() < HEADER + TAG || bytes[0] != VERSION {
            return None;
        }
        let (header, sealed) = bytes.split_at(HEADER);
        let id: [u8; 16] = header[3..].try_into().ok()?;
        self.keys
            .iter()
            .filter(|key| key.kid == header[1..3])
            .find_map(|key| {
                let plaintext = key
                    .cipher
                    .decrypt(
                        &nonce(&id),
                        Payload {
                            msg: sealed,
                            aad: header,
                        },
                    )
                    .ok()?;
                let state = decode(id, &plaintext)?;
                Some((state, derive_secrets(&key.secrets, &id)))
            })
    }
}

/// Whether `state` is in the previous version's format (a pending login in the store):
/// 40 bytes, the first of them the high byte of an expiry (zero for centuries).
pub fn is_legacy(state: &str) -> bool {
    crate::store::state_key(state).is_some_and(|key| key[0] == 0)
}

fn nonce(id: &[u8; 16]) -> XNonce {
    let mut nonce = [0u8; 24];
    nonce[..16].copy_from_slice(id);
    nonce.into()
}

fn derive_secrets(key: &hmac::Key, id: &[u8; 16]) -> Secrets {
    let derive = |purpose: &[u8]| {
        let mut context = hmac::Context::with_key(key);
        context.update(purpose);
        context.update(id);
        URL_SAFE_NO_PAD.encode(context.sign().as_ref())
    };
    Secrets {
        binding: derive(b"binding"),
        pkce_verifier: derive(b"pkce"),
        nonce: derive(b"nonce"),
        handle: derive(b"hosted-handle"),
    }
}

fn encode(state: &LoginState) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(40 + state.provider.len());
    out.extend_from_slice(&state.expires_at.to_be_bytes());
    out.push(u8::from(state.fetch_groups));
    out.extend_from_slice(&state.generation);
    out.extend_from_slice(&state.redirect_uri);
    for (value, max) in [
        (Some(state.provider.as_str()), MAX_NAME),
        (state.link_user.as_deref(), MAX_NAME),
        (state.return_to.as_deref(), MAX_RETURN_TO),
    ] {
        let value = value.unwrap_or_default();
        if value.len() > max {
            return Err(Error::internal("a login state field is too long"));
        }
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    Ok(out)
}

fn decode(id: [u8; 16], bytes: &[u8]) -> Option<LoginState> {
    let (expires_at, rest) = bytes.split_first_chunk::<8>()?;
    let (&flags, rest) = rest.split_first()?;
    let (generation, rest) = rest.split_first_chunk::<8>()?;
    let (redirect_uri, mut rest) = rest.split_first_chunk::<8>()?;
    let mut next = || {
        let (&len, tail) = rest.split_first()?;
        let (value, tail) = tail.split_at_checked(usize::from(len))?;
        rest = tail;
        String::from_utf8(value.to_vec()).ok()
    };
    let provider = next()?;
    let link_user = Some(next()?).filter(|s| !s.is_empty());
    let return_to = Some(next()?).filter(|s| !s.is_empty());
    if !rest.is_empty() {
        return None;
    }
    Some(LoginState {
        id,
        expires_at: i64::from_be_bytes(*expires_at),
        provider,
        generation: *generation,
        redirect_uri: *redirect_uri,
        fetch_groups: flags & 1 == 1,
        link_user,
        return_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(states: &LoginStates) -> LoginState {
        LoginState {
            id: states.new_id().unwrap(),
            expires_at: 1_900_000_000,
            provider: "oidc".into(),
            generation: fingerprint("config"),
            redirect_uri: fingerprint("https://app.example/callback"),
            fetch_groups: true,
            link_user: None,
            return_to: Some("/account".into()),
        }
    }

    #[test]
    fn a_state_opens_to_what_was_sealed_with_the_same_secrets() {
        let states = LoginStates::new(&Vault::from_key_bytes(&[1; 32]));
        let login = state(&states);
        let sealed = states.seal(&login).unwrap();
        let (opened, secrets) = states.open(&sealed).unwrap();
        assert_eq!(opened, login);
        assert_eq!(secrets, states.secrets(&login.id));
        assert!(secrets.binds(&secrets.binding));
        assert!(!secrets.binds(&states.secrets(&states.new_id().unwrap()).binding));
        assert!(!secrets.binds(""));
        assert_eq!(secrets.pkce_verifier.len(), 43);
        assert!(!is_legacy(&sealed));
    }

    #[test]
    fn a_changed_or_foreign_state_does_not_open() {
        let states = LoginStates::new(&Vault::from_key_bytes(&[1; 32]));
        let sealed = states.seal(&state(&states)).unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in [0, 1, 3, 20, bytes.len() - 1] {
            bytes[i] ^= 1;
            assert!(
                states.open(&URL_SAFE_NO_PAD.encode(&bytes)).is_none(),
                "byte {i}"
            );
            bytes[i] ^= 1;
        }
        assert!(states.open(&sealed[..sealed.len() - 1]).is_none());
        assert!(states.open("").is_none());
        assert!(states.open("not base64 !").is_none());
        let other = LoginStates::new(&Vault::from_key_bytes(&[2; 32]));
        assert!(other.open(&sealed).is_none());
    }

    #[test]
    fn a_state_sealed_before_a_key_rotation_still_opens_with_the_same_secrets() {
        let before = LoginStates::new(&Vault::from_key_bytes(&[1; 32]));
        let login = state(&before);
        let sealed = before.seal(&login).unwrap();
        let after = LoginStates::new(&Vault::from_key_bytes(&[2; 32]).and_previous(&[1; 32]));
        let (opened, secrets) = after.open(&sealed).unwrap();
        assert_eq!(opened, login);
        assert_eq!(secrets, before.secrets(&login.id));
        let resealed = after.seal(&login).unwrap();
        assert!(before.open(&resealed).is_none(), "the new key seals");
    }

    #[test]
    fn a_state_stays_under_512_characters() {
        let states = LoginStates::new(&Vault::from_key_bytes(&[1; 32]));
        let longest = LoginState {
            provider: "p".repeat(MAX_NAME),
            link_user: Some("u".repeat(MAX_NAME)),
            return_to: Some("/".repeat(MAX_RETURN_TO)),
            ..state(&states)
        };
        let sealed = states.seal(&longest).unwrap();
        assert!(sealed.len() < 512, "{}", sealed.len());
        assert_eq!(states.open(&sealed).unwrap().0, longest);
        let too_long = LoginState {
            return_to: Some("/".repeat(MAX_RETURN_TO + 1)),
            ..longest
        };
        assert!(states.seal(&too_long).is_err());
    }

    #[test]
    fn the_previous_version_s_states_are_told_apart() {
        let legacy = crate::store::new_state(1_900_000_000, [7; 32]);
        assert!(is_legacy(&legacy));
        let states = LoginStates::new(&Vault::from_key_bytes(&[1; 32]));
        assert!(states.open(&legacy).is_none());
    }
}
