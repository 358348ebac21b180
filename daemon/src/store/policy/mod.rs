//! The decisions both store backends must make identically, written once: a backend reads
//! what a decision needs, asks here, and writes what the answer says. sled does it inside a
//! transaction, JetStream as revision-checked writes retried from fresh reads; neither
//! decides anything itself. The store conformance suite (`tests/it/store/`) runs the same
//! cases against both backends; the unit tests below pin each rule.

use lanyard_provider_sdk::Profile;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    FamilyRecord, IdentityRecord, LoginWrite, SessionRecord, SigningKeyRecord, StoreError,
    StoreResult, UserRecord,
};

mod profile;
mod sessions;
pub(crate) use sessions::*;

/// The user a new identity joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// The signed-in user of a `link_session` login (the backend checks that it exists).
    Linking(String),
    /// The user who holds the identity's email, which the provider verified and the
    /// instance trusts.
    HoldsEmail(String),
    /// Nobody: a new user.
    NewUser,
}

/// The account-linking rule: whom a new identity belongs to, given the user (if any) who
/// holds its email. An email held by another user joins that user only when the instance
/// trusts the provider's `email_verified` and the provider says it is verified; otherwise
/// the login is refused (`AccountExists`) rather than create a second account for one
/// address, or hand an account to whoever claims its address.
pub(crate) fn owner_of_new_identity(
    write: &LoginWrite,
    email_owner: Option<String>,
) -> StoreResult<Owner> {
    match (&write.link_user, email_owner) {
        (Some(link_user), _) => Ok(Owner::Linking(link_user.clone())),
        (None, Some(owner)) if write.trust_email_verified && write.profile.email_verified => {
            Ok(Owner::HoldsEmail(owner))
        }
        (None, Some(_)) => Err(StoreError::AccountExists),
        (None, None) => Ok(Owner::NewUser),
    }
}

impl LoginWrite {
    /// The identity this login creates, for user `user_id`.
    pub fn new_identity(&self, user_id: &str) -> IdentityRecord {
        IdentityRecord {
            provider: self.provider.clone(),
            subject: self.profile.subject.clone(),
            user_id: user_id.to_owned(),
            email: self.profile.email.clone(),
            email_verified: self.profile.email_verified,
            groups: self.profile.groups.clone(),
            created_at: self.now,
            updated_at: self.now,
        }
    }

    /// The user this login creates.
    pub fn new_user(&self, id: String, username: String) -> UserRecord {
        UserRecord {
            id,
            username,
            email: self.profile.email.clone(),
            email_verified: self.profile.email_verified,
            name: self.profile.name.clone(),
            picture: self.profile.picture.clone(),
            created_at: self.now,
            disabled_at: None,
        }
    }

    /// The login's session, for the user the login resolved to.
    pub(crate) fn session_for(&self, user_id: &str) -> SessionRecord {
        SessionRecord {
            user_id: user_id.to_owned(),
            ..self.session.clone()
        }
    }

    /// The login's new session family, for the user the login resolved to.
    pub(crate) fn family_for(&self, user_id: &str) -> FamilyRecord {
        FamilyRecord {
            user_id: user_id.to_owned(),
            created_at: self.now,
            revoked_at: None,
            provider: Some(self.provider.clone()),
            subject: Some(self.profile.subject.clone()),
            client: self.client.clone(),
            refreshed_at: None,
            expires_at: Some(self.session.expires_at),
            first: Some(self.session_key.clone()),
        }
    }
}

/// A new user's id.
pub(crate) fn new_user_id() -> String {
    format!("usr_{}", ulid::Ulid::new())
}

/// The username a new user starts from: the email's local part, else the provider username,
/// else `user`; lower-cased, limited to `[a-z0-9._-]`, at most 32 characters.
pub(crate) fn username_base(profile: &Profile) -> String {
    let source = profile
        .email
        .as_deref()
        .and_then(|e| e.split('@').next())
        .filter(|s| !s.is_empty())
        .or(profile.username.as_deref())
        .unwrap_or("user");
    let cleaned: String = source
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(32)
        .collect();
    let cleaned = cleaned.trim_matches(|c| matches!(c, '.' | '_' | '-'));
    if cleaned.is_empty() {
        "user".to_owned()
    } else {
        cleaned.to_owned()
    }
}

/// The usernames a new user may get, in the order they are tried: the base, then `base-2`
/// to `base-999`, then (a thousand people share this name) the base with a random suffix.
pub(crate) fn username_candidates(base: &str) -> impl Iterator<Item = String> + '_ {
    std::iter::once(base.to_owned())
        .chain((2..1000).map(move |n| format!("{base}-{n}")))
        .chain(std::iter::once_with(move || {
            format!("{base}-{}", ulid::Ulid::new().to_string().to_lowercase())
        }))
}

/// The normalised form emails are indexed under.
pub(crate) fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The last-identity rule: a user keeps at least one identity, or nobody could log in as
/// them again. `linked` counts the user's identities now, the one to unlink included.
pub(crate) fn check_unlink(linked: usize) -> StoreResult<()> {
    if linked <= 1 {
        return Err(StoreError::Conflict(
            "this is the user's last identity; it cannot be unlinked".into(),
        ));
    }
    Ok(())
}

/// The provider version rule for a write: the stored instance must be at the version the
/// writer read (`None`: there must be none), so of two admins' concurrent changes one wins
/// and the other hears `Conflict` instead of silently undoing it.
pub(crate) fn check_provider_write(
    id: &str,
    stored: Option<u64>,
    expected: Option<u64>,
) -> StoreResult<()> {
    if stored != expected {
        return Err(StoreError::Conflict(format!(
            "provider `{id}` changed meanwhile (version {stored:?}, expected {expected:?})"
        )));
    }
    Ok(())
}

/// The provider version rule for a delete: the instance must exist (`NotFound`) at the
/// version the deleter read (`Conflict`).
pub(crate) fn check_provider_delete(
    id: &str,
    stored: Option<u64>,
    expected: u64,
) -> StoreResult<()> {
    match stored {
        None => Err(StoreError::NotFound(format!("provider `{id}`"))),
        Some(version) if version != expected => Err(StoreError::Conflict(format!(
            "provider `{id}` changed meanwhile"
        ))),
        Some(_) => Ok(()),
    }
}

/// The key-retirement rule: `key` becomes the signing key, and every key still signing is
/// retired at `now` (it keeps verifying for a while; the key ring decides how long).
pub(crate) fn rotate_keys(
    mut keys: Vec<SigningKeyRecord>,
    key: SigningKeyRecord,
    now: i64,
) -> Vec<SigningKeyRecord> {
    for old in keys.iter_mut().filter(|k| k.retired_at.is_none()) {
        old.retired_at = Some(now);
    }
    keys.push(key);
    keys
}

/// The import rule: a copy goes into an empty store, never merged into one in use (one that
/// has users or a signing key).
pub(crate) fn check_import_target(has_users: bool, has_signing_keys: bool) -> StoreResult<()> {
    if has_users || has_signing_keys {
        return Err(StoreError::Conflict(
            "the target store is not empty (it has users or a signing key)".into(),
        ));
    }
    Ok(())
}

/// A record as both backends store it (JSON).
pub(crate) fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A record as both backends read it back; what does not parse is `Corrupt`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(link_user: Option<&str>, trust: bool, verified: bool) -> LoginWrite {
        LoginWrite {
            provider: "oidc".into(),
            profile: Profile {
                subject: "sub".into(),
                email: Some("ada@example.test".into()),
                email_verified: verified,
                ..Profile::default()
            },
            trust_email_verified: trust,
            link_user: link_user.map(str::to_owned),
            tokens: None,
            session_key: "key".into(),
            session: SessionRecord {
                user_id: String::new(),
                family_id: "ses_1".into(),
                created_at: 5,
                expires_at: 10,
                used_at: None,
                successor: None,
            },
            client: None,
            now: 5,
        }
    }

    #[test]
    fn an_email_held_by_another_user_links_only_when_verified_and_trusted() {
        let owner = Some("usr_owner".to_owned());
        assert_eq!(
            owner_of_new_identity(&write(None, true, true), owner.clone()).unwrap(),
            Owner::HoldsEmail("usr_owner".into())
        );
        for (trust, verified) in [(false, true), (true, false), (false, false)] {
            assert!(matches!(
                owner_of_new_identity(&write(None, trust, verified), owner.clone()),
                Err(StoreError::AccountExists)
            ));
        }
        assert_eq!(
            owner_of_new_identity(&write(None, false, false), None).unwrap(),
            Owner::NewUser
        );
        // A link_session login links to the signed-in user whoever holds the email.
        assert_eq!(
            owner_of_new_identity(&write(Some("usr_me"), false, false), owner).unwrap(),
            Owner::Linking("usr_me".into())
        );
    }

    #[test]
    fn a_returning_identity_cannot_be_linked_to_another_user() {
        let mut identity = write(None, false, false).new_identity("usr_1");
        assert!(matches!(
            write(Some("usr_2"), false, false).refresh(&mut identity),
            Err(StoreError::Conflict(_))
        ));
        write(Some("usr_1"), false, true)
            .refresh(&mut identity)
            .unwrap();
        assert!(identity.email_verified);
    }

    #[test]
    fn username_comes_from_email_local_part() {
        let profile = Profile {
            email: Some("Ada.Lovelace+x@Example.test".into()),
            username: Some("ada".into()),
            ..Profile::default()
        };
        assert_eq!(username_base(&profile), "ada.lovelacex");
        let profile = Profile {
            username: Some("Octo-Cat".into()),
            ..Profile::default()
        };
        assert_eq!(username_base(&profile), "octo-cat");
        assert_eq!(username_base(&Profile::default()), "user");
    }

    #[test]
    fn username_candidates_count_up_then_go_random() {
        let all: Vec<String> = username_candidates("ada").collect();
        assert_eq!(all.len(), 1000);
        assert_eq!(&all[..3], ["ada", "ada-2", "ada-3"]);
        assert_eq!(all[998], "ada-999");
        assert!(all[999].starts_with("ada-") && all[999].len() == 4 + 26);
    }

    #[test]
    fn the_last_identity_stays() {
        assert!(matches!(check_unlink(1), Err(StoreError::Conflict(_))));
        assert!(matches!(check_unlink(0), Err(StoreError::Conflict(_))));
        check_unlink(2).unwrap();
    }

    #[test]
    fn provider_writes_name_the_version_they_replace() {
        check_provider_write("p", None, None).unwrap();
        check_provider_write("p", Some(3), Some(3)).unwrap();
        assert!(check_provider_write("p", Some(3), None).is_err());
        assert!(check_provider_write("p", None, Some(3)).is_err());
        assert!(check_provider_write("p", Some(4), Some(3)).is_err());
        check_provider_delete("p", Some(3), 3).unwrap();
        assert!(matches!(
            check_provider_delete("p", None, 3),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            check_provider_delete("p", Some(4), 3),
            Err(StoreError::Conflict(_))
        ));
    }

    fn key(kid: &str, retired_at: Option<i64>) -> SigningKeyRecord {
        SigningKeyRecord {
            kid: kid.into(),
            private: crate::crypto::Sealed {
                kid: "m".into(),
                nonce: String::new(),
                ciphertext: String::new(),
            },
            public_key: String::new(),
            created_at: 0,
            retired_at,
        }
    }

    #[test]
    fn a_new_signing_key_retires_the_current_one_only() {
        let keys = rotate_keys(vec![key("a", Some(1)), key("b", None)], key("c", None), 9);
        let retired: Vec<_> = keys
            .iter()
            .map(|k| (k.kid.as_str(), k.retired_at))
            .collect();
        assert_eq!(retired, [("a", Some(1)), ("b", Some(9)), ("c", None)]);
    }

    #[test]
    fn an_import_goes_into_an_empty_store_only() {
        check_import_target(false, false).unwrap();
        assert!(check_import_target(true, false).is_err());
        assert!(check_import_target(false, true).is_err());
    }
}
