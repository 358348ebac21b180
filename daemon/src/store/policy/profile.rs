//! The profile-refresh rule: what a returning login changes about the identity and its
//! user, from what the provider says now. Both backends apply it; the user's primary email
//! moves only to an address the provider verified, only when the old one came from this
//! identity, and only when no other user holds the new one (the backend checks that last
//! part against its email claims).

use super::super::{email_key, IdentityRecord, LoginWrite, StoreError, StoreResult, UserRecord};

/// What a returning login does to its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserUpdate {
    /// The user as it should be written (unchanged when `changed` is empty).
    pub user: UserRecord,
    /// The primary email moves: the claim on the old address (if any) goes, and one on
    /// the new address (normalised) is made. The backend drops the move (`keep_email`) when
    /// another user holds the new address.
    pub email_move: Option<EmailMove>,
    /// The user's fields that changed: `name`, `picture`, `email`, `email_verified`.
    pub changed: Vec<&'static str>,
}

/// A move of the user's primary email claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EmailMove {
    pub from: Option<String>,
    pub to: String,
}

impl UserUpdate {
    /// The update without the email move (the new address belongs to someone else).
    pub(crate) fn keep_email(self, before: &UserRecord) -> Self {
        let mut user = self.user;
        user.email = before.email.clone();
        user.email_verified = before.email_verified;
        let changed = self
            .changed
            .into_iter()
            .filter(|f| *f != "email" && *f != "email_verified")
            .collect();
        Self {
            user,
            email_move: None,
            changed,
        }
    }
}

impl LoginWrite {
    /// Checks a returning identity against the login (a `link_session` login must be for the
    /// identity's own user: `Conflict` otherwise) and refreshes what the provider says now;
    /// returns which of its fields changed (`identity.email`, `identity.email_verified`,
    /// `identity.groups`).
    pub fn refresh(&self, identity: &mut IdentityRecord) -> StoreResult<Vec<&'static str>> {
        if let Some(link_user) = &self.link_user {
            if *link_user != identity.user_id {
                return Err(StoreError::Conflict(
                    "this identity is already linked to another user".into(),
                ));
            }
        }
        let mut changed = Vec::new();
        if identity.email != self.profile.email {
            changed.push("identity.email");
            identity.email = self.profile.email.clone();
        }
        if identity.email_verified != self.profile.email_verified {
            changed.push("identity.email_verified");
            identity.email_verified = self.profile.email_verified;
        }
        if identity.groups != self.profile.groups {
            changed.push("identity.groups");
            identity.groups = self.profile.groups.clone();
        }
        identity.updated_at = self.now;
        Ok(changed)
    }

    /// What this returning login changes about `user`, whose identity had email
    /// `identity_email` before it. A name or picture the provider no longer sends is kept.
    pub(crate) fn update_user(
        &self,
        user: &UserRecord,
        identity_email: Option<&str>,
    ) -> UserUpdate {
        let profile = &self.profile;
        let mut next = user.clone();
        let mut changed = Vec::new();
        if profile.name.is_some() && profile.name != user.name {
            next.name = profile.name.clone();
            changed.push("name");
        }
        if profile.picture.is_some() && profile.picture != user.picture {
            next.picture = profile.picture.clone();
            changed.push("picture");
        }
        let current = user.email.as_deref().map(email_key);
        let mut email_move = None;
        if let (Some(email), true) = (&profile.email, profile.email_verified) {
            let new = email_key(email);
            let from_this_identity = current.is_none() || current == identity_email.map(email_key);
            if current.as_deref() == Some(new.as_str()) {
                if !user.email_verified {
                    next.email_verified = true;
                    changed.push("email_verified");
                }
            } else if from_this_identity {
                next.email = Some(email.clone());
                next.email_verified = true;
                changed.push("email");
                if !user.email_verified {
                    changed.push("email_verified");
                }
                email_move = Some(EmailMove {
                    from: current,
                    to: new,
                });
            }
        }
        UserUpdate {
            user: next,
            email_move,
            changed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_provider_sdk::Profile;

    fn login(email: &str, verified: bool) -> LoginWrite {
        LoginWrite {
            provider: "oidc".into(),
            profile: Profile {
                subject: "sub".into(),
                email: Some(email.into()),
                email_verified: verified,
                name: Some("Ada L.".into()),
                picture: None,
                groups: vec!["new".into()],
                ..Profile::default()
            },
            trust_email_verified: false,
            link_user: None,
            client: None,
            tokens: None,
            session_key: "k".into(),
            session: crate::store::SessionRecord {
                user_id: String::new(),
                family_id: "ses_1".into(),
                created_at: 0,
                expires_at: 1,
                used_at: None,
                successor: None,
            },
            now: 9,
        }
    }

    fn user(email: Option<&str>) -> UserRecord {
        UserRecord {
            id: "usr_1".into(),
            username: "ada".into(),
            email: email.map(str::to_owned),
            email_verified: true,
            name: Some("Ada".into()),
            picture: Some("https://pic".into()),
            created_at: 0,
            disabled_at: None,
        }
    }

    #[test]
    fn name_changes_and_a_picture_no_longer_sent_stays() {
        let update =
            login("ada@a.test", true).update_user(&user(Some("ada@a.test")), Some("ada@a.test"));
        assert_eq!(update.changed, ["name"]);
        assert_eq!(update.user.name.as_deref(), Some("Ada L."));
        assert_eq!(update.user.picture.as_deref(), Some("https://pic"));
        assert_eq!(update.email_move, None);
    }

    #[test]
    fn the_primary_email_moves_only_to_a_verified_address_from_the_same_identity() {
        let moved = login("Ada@New.test", true)
            .update_user(&user(Some("ada@old.test")), Some("ada@old.test"));
        assert_eq!(moved.changed, ["name", "email"]);
        assert_eq!(moved.user.email.as_deref(), Some("Ada@New.test"));
        assert_eq!(
            moved.email_move,
            Some(EmailMove {
                from: Some("ada@old.test".into()),
                to: "ada@new.test".into()
            })
        );
        // Unverified: never.
        let unverified = login("ada@new.test", false)
            .update_user(&user(Some("ada@old.test")), Some("ada@old.test"));
        assert_eq!(unverified.user.email.as_deref(), Some("ada@old.test"));
        assert_eq!(unverified.email_move, None);
        // The primary email came from another identity: this one does not move it.
        let other = login("ada@new.test", true)
            .update_user(&user(Some("ada@old.test")), Some("ada@elsewhere.test"));
        assert_eq!(other.email_move, None);
        // Held by someone else: the backend keeps the email, and the other changes.
        let kept = moved.keep_email(&user(Some("ada@old.test")));
        assert_eq!(kept.changed, ["name"]);
        assert_eq!(kept.user.email.as_deref(), Some("ada@old.test"));
    }

    #[test]
    fn identity_changes_are_named() {
        let write = login("ada@new.test", false);
        let mut identity = write.new_identity("usr_1");
        assert!(write.refresh(&mut identity).unwrap().is_empty());
        let again = login("ada@newer.test", true);
        assert_eq!(
            again.refresh(&mut identity).unwrap(),
            ["identity.email", "identity.email_verified"]
        );
    }
}
