//! The user/identity half of a login on JetStream: a chain of revision-checked writes.

use super::{contended, contention, JetStreamStore, MAX_ATTEMPTS};
use crate::store::policy::{self, Owner};
use crate::store::{
    email_key, username_base, IdentityRecord, LoginCommit, LoginWrite, StoreError, StoreResult,
    UserRecord,
};

impl JetStreamStore {
    /// The user/identity half of a login; `None` when a concurrent writer won a step and the
    /// whole thing must be read again.
    pub(super) async fn try_login(
        &self,
        write: &LoginWrite,
        ikey: &str,
    ) -> StoreResult<Option<LoginCommit>> {
        let profile = &write.profile;
        let (existing, irev) = self.identities.slot::<IdentityRecord>(ikey).await?;
        if let Some(identity) = existing {
            return self.returning(write, identity, ikey, irev).await;
        }

        let email = profile.email.as_deref().map(email_key);
        let owner = match &email {
            Some(e) => self.emails.get::<String>(e).await?,
            None => None,
        };
        let owner = match policy::owner_of_new_identity(write, owner) {
            Ok(owner) => owner,
            Err(StoreError::AccountExists) => {
                // The identity and the email were read apart: a concurrent first login of
                // this same identity may have created both in between. Then this is a
                // returning login, not someone else's account.
                if self
                    .identities
                    .slot::<IdentityRecord>(ikey)
                    .await?
                    .0
                    .is_some()
                {
                    return Ok(None);
                }
                return Err(StoreError::AccountExists);
            }
            Err(error) => return Err(error),
        };
        let (user_id, known_user) = match owner {
            Owner::Linking(link_user) => {
                let Some(user) = self.users.get::<UserRecord>(&link_user).await? else {
                    return Err(StoreError::NotFound(format!("user {link_user}")));
                };
                (user.id.clone(), Some(user))
            }
            Owner::HoldsEmail(owner) => {
                let user = self.users.get::<UserRecord>(&owner).await?;
                (owner, user)
            }
            Owner::NewUser => (policy::new_user_id(), None),
        };
        // Before anything is written for it: a disabled user (or one an erasure is
        // removing) gets no new identity.
        if let Some(user) = &known_user {
            policy::check_may_log_in(user)?;
        }
        let identity = write.new_identity(&user_id);
        // The identity first: of concurrent first logins, one creates it; the others read
        // again and return as that identity.
        let Some(identity_rev) = self.identities.create(ikey, &identity).await? else {
            return Ok(None);
        };
        let (user, new_user) = match known_user {
            Some(user) => (user, false),
            None => match self.create_user(&user_id, write).await? {
                Some(user) => (user, true),
                None => {
                    // Another user claimed this email meanwhile: undo, and decide again
                    // (the linking policy now applies to that user).
                    self.identities.delete(ikey, Some(identity_rev)).await?;
                    return Ok(None);
                }
            },
        };
        self.link(&user.id, ikey).await?;
        Ok(Some(LoginCommit {
            user,
            identity,
            new_user,
            new_identity: true,
            changed: Vec::new(),
        }))
    }

    /// A returning identity: refresh what the provider says now (a swap against `irev`, the
    /// revision read; `None` when another writer won it).
    async fn returning(
        &self,
        write: &LoginWrite,
        mut identity: IdentityRecord,
        ikey: &str,
        irev: u64,
    ) -> StoreResult<Option<LoginCommit>> {
        // A returning identity: refresh what the provider says now.
        let previous_email = identity.email.clone();
        let identity_changes = write.refresh(&mut identity)?;
        if !self.identities.swap(ikey, &identity, irev).await? {
            return Ok(None);
        }
        // Its creator may have died before the user was written: complete it now. Unless
        // the identity is gone again (an erasure purges identities before the user): then
        // this login starts over, as a new identity, and never brings an erased id back.
        let (user, new_user, user_changes) =
            match Box::pin(self.update_user(write, &identity.user_id, previous_email)).await? {
                Some((user, changed)) => (user, false, changed),
                None => {
                    let now = self.identities.get::<IdentityRecord>(ikey).await?;
                    if now.is_none_or(|i| i.user_id != identity.user_id) {
                        return Ok(None);
                    }
                    match self.create_user(&identity.user_id, write).await? {
                        Some(user) => (user, true, Vec::new()),
                        None => return Ok(None),
                    }
                }
            };
        self.link(&user.id, ikey).await?;
        let changed = user_changes
            .iter()
            .chain(&identity_changes)
            .map(|f| (*f).to_owned())
            .collect();
        Ok(Some(LoginCommit {
            user,
            identity,
            new_user,
            new_identity: false,
            changed,
        }))
    }

    /// A returning login's changes to its user (`policy::profile`), written against the
    /// revision read; the email claim moves first when the primary email does. `None` when
    /// the user is missing.
    async fn update_user(
        &self,
        write: &LoginWrite,
        user_id: &str,
        previous_email: Option<String>,
    ) -> StoreResult<Option<(UserRecord, Vec<&'static str>)>> {
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let (user, rev) = self.users.slot::<UserRecord>(user_id).await?;
            let Some(user) = user else {
                return Ok(None);
            };
            policy::check_may_log_in(&user)?;
            let mut update = write.update_user(&user, previous_email.as_deref());
            let mut claimed = None;
            if let Some(moved) = update.email_move.clone() {
                let owner = match self.emails.create(&moved.to, &user.id).await? {
                    Some(_) => {
                        claimed = Some(moved.to.clone());
                        Some(user.id.clone())
                    }
                    None => self.emails.get::<String>(&moved.to).await?,
                };
                if owner.as_deref() != Some(user_id) {
                    update = update.keep_email(&user);
                }
            }
            if update.changed.is_empty() {
                return Ok(Some((user, update.changed)));
            }
            if !self.users.swap(user_id, &update.user, rev).await? {
                // The move did not commit: a claim made for it goes (the next round, or a
                // disable that won, decides again), so no claim names the user for an
                // address it does not have.
                if let Some(address) = claimed {
                    self.emails.erase(&address).await?;
                }
                continue;
            }
            if let Some(from) = update.email_move.as_ref().and_then(|m| m.from.as_ref()) {
                // Nobody else can claim it while it is this user's; purged, not deleted, so
                // no marker keeps the old address.
                if self.emails.get::<String>(from).await?.as_deref() == Some(user_id) {
                    self.emails.erase(from).await?;
                }
            }
            return Ok(Some((update.user, update.changed)));
        }
        Err(contention())
    }

    /// Claims the email and a username for user `id` and writes the user; `None` when the
    /// email belongs to another user. Idempotent for the same id (a repair).
    pub(super) async fn create_user(
        &self,
        id: &str,
        write: &LoginWrite,
    ) -> StoreResult<Option<UserRecord>> {
        let profile = &write.profile;
        if let Some(email) = profile.email.as_deref().map(email_key) {
            if self.emails.create(&email, &id.to_owned()).await?.is_none() {
                let owner = self.emails.get::<String>(&email).await?;
                if owner.as_deref() != Some(id) {
                    return Ok(None);
                }
            }
        }
        let username = self.claim_username(id, &username_base(profile)).await?;
        let user = write.new_user(id.to_owned(), username);
        if self.users.create(id, &user).await?.is_none() {
            // Written by an earlier attempt for the same id: that one stands.
            if let Some(stored) = self.users.get::<UserRecord>(id).await? {
                return Ok(Some(stored));
            }
        }
        Ok(Some(user))
    }

    pub(super) async fn claim_username(&self, id: &str, base: &str) -> StoreResult<String> {
        for candidate in policy::username_candidates(base) {
            if self
                .usernames
                .create(&candidate, &id.to_owned())
                .await?
                .is_some()
                || self.usernames.get::<String>(&candidate).await?.as_deref() == Some(id)
            {
                return Ok(candidate);
            }
        }
        Err(StoreError::Conflict("no free username".into()))
    }

    /// Adds identity `ikey` to the user's list, if it is not there yet.
    pub(super) async fn link(&self, user_id: &str, ikey: &str) -> StoreResult<()> {
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let (links, rev) = self.links.slot::<Vec<String>>(user_id).await?;
            let mut links = links.unwrap_or_default();
            if links.iter().any(|l| l == ikey) {
                return Ok(());
            }
            links.push(ikey.to_owned());
            if self.links.swap(user_id, &links, rev).await? {
                return Ok(());
            }
        }
        Err(contention())
    }

    /// Removes identity `ikey` from the user's list, if it is there.
    pub(super) async fn unlink_key(&self, user_id: &str, ikey: &str) -> StoreResult<()> {
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let (links, rev) = self.links.slot::<Vec<String>>(user_id).await?;
            let mut links = links.unwrap_or_default();
            let before = links.len();
            links.retain(|l| l != ikey);
            if links.len() == before || self.links.swap(user_id, &links, rev).await? {
                return Ok(());
            }
        }
        Err(contention())
    }

    pub(super) async fn user_links(&self, user_id: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .links
            .get::<Vec<String>>(user_id)
            .await?
            .unwrap_or_default())
    }
}
