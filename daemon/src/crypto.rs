//! Encryption at rest. A 32-byte master key seals secrets (signing keys, provider tokens,
//! client secrets of admin-created providers) with XChaCha20-Poly1305. Every sealed value
//! names the key that sealed it, so the master key can rotate: the new key seals, previous
//! keys still open. The associated data binds a value to its slot, so a sealed value copied
//! to another record does not open.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{read_secret_file, ConfigError, VaultConfig};

/// The file the dev-mode key is kept in, inside `data_dir`.
pub const DEV_KEY_FILE: &str = "master.key";

/// A vault failure.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no key `{0}` to open this value (was a previous master key dropped?)")]
    UnknownKey(String),
    #[error("a sealed value does not open: wrong key, wrong slot, or tampered")]
    Open,
    #[error("sealing failed")]
    Seal,
    #[error("sealed value is malformed: {0}")]
    Malformed(String),
}

/// A sealed secret as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The id of the master key that sealed it.
    pub kid: String,
    pub nonce: String,
    pub ciphertext: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

struct MasterKey {
    id: String,
    cipher: XChaCha20Poly1305,
    /// The root other keys are derived from ([`Vault::derived`]).
    root: ring::hkdf::Prk,
}

/// A key derived from one master key for one purpose, named by a short id of that master key.
pub(crate) struct DerivedKey {
    /// Two bytes of the master key's id: enough to pick among the current and previous keys.
    pub(crate) kid: [u8; 2],
    pub(crate) bytes: [u8; 32],
}

/// Seals and opens secrets.
pub struct Vault {
    current: MasterKey,
    previous: Vec<MasterKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("kid", &self.current.id)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Loads the configured master key, or in dev mode (no key configured) the key file in
    /// `data_dir`, creating it with mode 0600 on first start.
    pub(crate) fn load(config: &VaultConfig, data_dir: &Path) -> Result<Self, ConfigError> {
        let configured = config.master_key()?;
        let current = match configured {
            Some(key) => {
                let source = if config.master_key.is_some() {
                    "vault.master_key"
                } else {
                    "vault.master_key_file"
                };
                parse_key(&key).map_err(|e| ConfigError::at(source, e))?
            }
            None => {
                let path = data_dir.join(DEV_KEY_FILE);
                if !path.exists() {
                    create_dev_key(&path).map_err(|e| ConfigError::at("vault", e))?;
                    tracing::warn!(path = %path.display(),
                        "created a master key next to the data (dev mode); in production set \
                         vault.master_key_file");
                }
                read_key(&path).map_err(|e| ConfigError::at("vault", e))?
            }
        };
        let previous = config
            .previous_key_files
            .iter()
            .map(|p| read_key(p).map_err(|e| ConfigError::at("vault.previous_key_files", e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            current,
            previous,
            rng: SystemRandom::new(),
        })
    }

    /// A vault with a given key, for tests.
    pub fn from_key_bytes(key: &[u8; 32]) -> Self {
        Self {
            current: master_key(key),
            previous: Vec::new(),
            rng: SystemRandom::new(),
        }
    }

    /// This vault, still opening what `previous` sealed (a rotation), for tests.
    #[cfg(test)]
    pub(crate) fn and_previous(mut self, previous: &[u8; 32]) -> Self {
        self.previous.push(master_key(previous));
        self
    }

    #[cfg(test)]
    /// The id of the key that seals now.
    pub(crate) fn key_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plaintext` for the slot named by `context` (e.g. `token/usr_1/github`).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Sealed, VaultError> {
        let mut nonce = [0u8; 24];
        self.rng.fill(&mut nonce).map_err(|_| VaultError::Seal)?;
        let ciphertext = self
            .current
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Seal)?;
        Ok(Sealed {
            kid: self.current.id.clone(),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
        })
    }

    /// Opens a sealed value for the same `context` it was sealed for.
    pub(crate) fn open(
        &self,
        sealed: &Sealed,
        context: &str,
    ) -> Result<secrecy::SecretSlice<u8>, VaultError> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == sealed.kid)
            .ok_or_else(|| VaultError::UnknownKey(sealed.kid.clone()))?;
        let nonce = STANDARD
            .decode(&sealed.nonce)
            .map_err(|e| VaultError::Malformed(e.to_string()))?;
        if nonce.len() != 24 {
            return Err(VaultError::Malformed("nonce length".into()));
        }
        let ciphertext = STANDARD
            .decode(&sealed.ciphertext)
            .map_err(|e| VaultError::Malformed(e.to_string()))?;
        key.cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map(Into::into)
            .map_err(|_| VaultError::Open)
    }

    /// The key for `purpose` (e.g. `b"login-state v1"`) derived (HKDF-SHA256) from each master
    /// key, the current one's first: what the current key seals, any of them opens.
    pub(crate) fn derived(&self, purpose: &[u8]) -> Vec<DerivedKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|key| {
                let mut bytes = [0u8; 32];
                key.root
                    .expand(&[purpose], ring::hkdf::HKDF_SHA256)
                    .and_then(|okm| okm.fill(&mut bytes))
                    .expect("32 bytes is a valid HKDF-SHA256 output length");
                let digest = ring::digest::digest(&ring::digest::SHA256, key.id.as_bytes());
                DerivedKey {
                    kid: [digest.as_ref()[0], digest.as_ref()[1]],
                    bytes,
                }
            })
            .collect()
    }

    /// Seals a UTF-8 secret.
    pub(crate) fn seal_str(
        &self,
        secret: &SecretString,
        context: &str,
    ) -> Result<Sealed, VaultError> {
        self.seal(secret.expose_secret().as_bytes(), context)
    }

    /// Opens a sealed UTF-8 secret.
    pub(crate) fn open_str(
        &self,
        sealed: &Sealed,
        context: &str,
    ) -> Result<SecretString, VaultError> {
        let bytes = self.open(sealed, context)?;
        String::from_utf8(bytes.expose_secret().to_vec())
            .map(SecretString::from)
            .map_err(|_| VaultError::Malformed("not UTF-8".into()))
    }
}

/// The SHA-256 a bearer token is kept as (named callers: only the hash is held).
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// The item whose token hash (`hash_of`) is `token`'s: compared in constant time against
/// every item, so timing tells nothing about which one nearly matched.
pub(crate) fn find_by_token<'a, T>(
    items: &'a [T],
    hash_of: impl Fn(&T) -> &[u8; 32],
    token: &str,
) -> Option<&'a T> {
    use subtle::ConstantTimeEq;
    let given = token_hash(token);
    let mut found = None;
    for item in items {
        if bool::from(hash_of(item).ct_eq(&given)) {
            found = Some(item);
        }
    }
    found
}

fn master_key(bytes: &[u8; 32]) -> MasterKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let id = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    MasterKey {
        id: format!("mk-{id}"),
        cipher: XChaCha20Poly1305::new(bytes.into()),
        root: ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"lanyard derived keys")
            .extract(bytes),
    }
}

fn parse_key(encoded: &SecretString) -> Result<MasterKey, String> {
    let bytes = STANDARD
        .decode(encoded.expose_secret().trim())
        .map_err(|_| "the master key must be base64".to_owned())?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "the master key must be 32 bytes (base64 of 32 random bytes)".to_owned())?;
    Ok(master_key(&bytes))
}

fn read_key(path: &Path) -> Result<MasterKey, String> {
    let key = read_secret_file(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_key(&key)
}

fn create_dev_key(path: &Path) -> Result<(), String> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| "the system random source failed".to_owned())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    std::io::Write::write_all(&mut file, STANDARD.encode(key).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_slot_and_with_their_key() {
        let vault = Vault::from_key_bytes(&[7; 32]);
        let sealed = vault.seal(b"secret", "token/usr_1/github").unwrap();
        assert!(!sealed.ciphertext.contains("secret"));
        let opened = vault.open(&sealed, "token/usr_1/github").unwrap();
        assert_eq!(opened.expose_secret(), b"secret");
        assert!(matches!(
            vault.open(&sealed, "token/usr_2/github"),
            Err(VaultError::Open)
        ));
        let other = Vault::from_key_bytes(&[8; 32]);
        assert!(matches!(
            other.open(&sealed, "token/usr_1/github"),
            Err(VaultError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_previous_key_still_opens_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.key");
        let new = dir.path().join("new.key");
        std::fs::write(&old, STANDARD.encode([1u8; 32])).unwrap();
        std::fs::write(&new, STANDARD.encode([2u8; 32])).unwrap();
        let before = Vault::load(
            &VaultConfig {
                master_key_file: Some(old.clone()),
                ..VaultConfig::default()
            },
            dir.path(),
        )
        .unwrap();
        let sealed = before.seal(b"x", "slot").unwrap();
        let after = Vault::load(
            &VaultConfig {
                master_key_file: Some(new),
                previous_key_files: vec![old],
                ..VaultConfig::default()
            },
            dir.path(),
        )
        .unwrap();
        assert_ne!(after.key_id(), before.key_id());
        assert_eq!(after.open(&sealed, "slot").unwrap().expose_secret(), b"x");
        assert_eq!(after.seal(b"y", "slot").unwrap().kid, after.key_id());
    }

    #[cfg(unix)]
    #[test]
    fn dev_mode_creates_a_private_key_file_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = Vault::load(&VaultConfig::default(), dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(DEV_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = Vault::load(&VaultConfig::default(), dir.path()).unwrap();
        assert_eq!(first.key_id(), second.key_id());
    }

    #[test]
    fn a_short_key_is_a_config_error_naming_the_key() {
        let error = Vault::load(
            &VaultConfig {
                master_key: Some(SecretString::from(STANDARD.encode([1u8; 16]))),
                ..VaultConfig::default()
            },
            Path::new("/nonexistent"),
        )
        .unwrap_err();
        assert!(error.to_string().contains("vault.master_key"), "{error}");
    }
}
