//! Sessions and users' lives on JetStream: refresh-token rotation, a user's session families
//! (the `user_sessions` bucket, keyed `{user}.{family}` in base64url so one user's keys
//! share a subject prefix and stream in one scan), and erasure.
//!
//! Without transactions, each change is ordered so that a racing erasure never leaves a
//! record behind: an erasure first marks the user disabled, and every writer that may add a
//! record for a user (a login, a rotation) checks the user or the family again after its
//! writes and takes them back if the user went meanwhile.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::bucket::Bucket;
use super::{contended, contention, JetStreamStore, MAX_ATTEMPTS};
use crate::store::policy::{self, Presented, RotationPlan};
use crate::store::{
    email_key, Erased, FamilyRecord, IdentityRecord, RefreshTerms, Rotation, SessionRecord,
    StoreError, StoreResult, TokenRecord, UserRecord,
};

/// The `user_sessions` key of family `family_id` of user `user_id` (already encoded).
pub(super) fn index_key(user_id: &str, family_id: &str) -> String {
    format!(
        "{}{}",
        user_prefix(user_id),
        URL_SAFE_NO_PAD.encode(family_id)
    )
}

fn user_prefix(user_id: &str) -> String {
    format!("{}.", URL_SAFE_NO_PAD.encode(user_id))
}

impl JetStreamStore {
    pub(super) async fn rotate(
        &self,
        old_key: &str,
        terms: &RefreshTerms,
    ) -> StoreResult<Rotation> {
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let (old, old_rev) = self.sessions.slot::<SessionRecord>(old_key).await?;
            let ((family, family_rev), user) = match &old {
                Some(old) => tokio::try_join!(
                    self.families.slot::<FamilyRecord>(&old.family_id),
                    self.users.get::<UserRecord>(&old.user_id)
                )?,
                None => ((None, 0), None),
            };
            let presented = Presented {
                old: old.as_ref(),
                family: family.as_ref(),
                user: user.as_ref(),
            };
            match policy::plan_rotation(presented, terms) {
                RotationPlan::Refuse => return Ok(Rotation::Refused),
                RotationPlan::Repeat { outcome, family } => {
                    if let (Some(repaired), Some(old)) = (family, &old) {
                        // Best effort: a concurrent change to the family wins.
                        self.families
                            .swap(&old.family_id, &repaired, family_rev)
                            .await?;
                    }
                    return Ok(outcome);
                }
                RotationPlan::RevokeFamily {
                    family_id,
                    family,
                    outcome,
                } => {
                    if self.families.swap(&family_id, &family, family_rev).await? {
                        return Ok(outcome);
                    }
                }
                RotationPlan::Rotate {
                    spent,
                    successor,
                    family,
                    outcome,
                } => {
                    let new_key = spent.successor.clone().unwrap_or_default();
                    if presented.family.is_some_and(policy::needs_index) {
                        self.index_family(&family.user_id, &spent.family_id).await?;
                    }
                    // The successor first: until the old token names it nobody reaches it.
                    // It may exist already (a concurrent rotation derived the same one).
                    self.sessions.create(&new_key, &successor).await?;
                    if !self.sessions.swap(old_key, &spent, old_rev).await? {
                        self.drop_unnamed(old_key, &new_key).await?;
                        continue;
                    }
                    if self
                        .note_refresh(&spent.family_id, family, family_rev, terms)
                        .await?
                    {
                        return Ok(outcome);
                    }
                    // The family was erased or revoked meanwhile: take the successor back.
                    self.sessions.delete(&new_key, None).await?;
                    return Ok(Rotation::Refused);
                }
            }
        }
        Err(contention())
    }

    /// After a lost swap of `old_key`: deletes successor `new_key` unless the old token
    /// names it (a concurrent rotation that derived the same successor won).
    async fn drop_unnamed(&self, old_key: &str, new_key: &str) -> StoreResult<()> {
        let old = self.sessions.get::<SessionRecord>(old_key).await?;
        if old.and_then(|o| o.successor).as_deref() != Some(new_key) {
            self.sessions.delete(new_key, None).await?;
        }
        Ok(())
    }

    /// Writes `family` (refreshed) over revision `rev`, merging with concurrent changes;
    /// false when the family is gone or revoked.
    async fn note_refresh(
        &self,
        family_id: &str,
        mut family: FamilyRecord,
        mut rev: u64,
        terms: &RefreshTerms,
    ) -> StoreResult<bool> {
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            if self.families.swap(family_id, &family, rev).await? {
                return Ok(true);
            }
            let (now, now_rev) = self.families.slot::<FamilyRecord>(family_id).await?;
            match now {
                Some(current) if current.revoked_at.is_none() => {
                    family = policy::refreshed(&current, terms.now, terms.expires_at);
                    rev = now_rev;
                }
                _ => return Ok(false),
            }
        }
        Err(contention())
    }

    /// Indexes a new family under its user (before the family is written: an entry whose
    /// family is missing is skipped when read).
    pub(super) async fn index_family(&self, user_id: &str, family_id: &str) -> StoreResult<()> {
        self.user_sessions
            .put_raw(&index_key(user_id, family_id), &())
            .await
    }

    pub(super) async fn families_of(
        &self,
        user_id: &str,
    ) -> StoreResult<Vec<(String, FamilyRecord)>> {
        use futures::{StreamExt, TryStreamExt};
        let prefix = user_prefix(user_id);
        let ids = self
            .user_sessions
            .scan(&prefix, false)
            .await?
            .iter()
            .map(|(key, _)| Bucket::raw_key(&key[prefix.len()..]))
            .collect::<StoreResult<Vec<_>>>()?;
        // The families read a few at a time, not one round trip after another.
        let found: Vec<Option<(String, FamilyRecord)>> = futures::stream::iter(ids)
            .map(|id| async move {
                let family = self.families.get::<FamilyRecord>(&id).await?;
                Ok::<_, StoreError>(family.map(|f| (id, f)))
            })
            .buffered(16)
            .try_collect()
            .await?;
        Ok(policy::own_families(user_id, found.into_iter().flatten()))
    }

    pub(super) async fn revoke_one(
        &self,
        user_id: &str,
        family_id: &str,
        now: i64,
    ) -> StoreResult<bool> {
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let (family, rev) = self.families.slot::<FamilyRecord>(family_id).await?;
            let Some(revoked) = family.and_then(|f| policy::revoke_family(&f, user_id, now)) else {
                return Ok(false);
            };
            if self.families.swap(family_id, &revoked, rev).await? {
                return Ok(true);
            }
        }
        Err(contention())
    }

    /// Disables (or enables) the user; `None` when there is none.
    pub(super) async fn mark_disabled(
        &self,
        user_id: &str,
        disabled_at: Option<i64>,
    ) -> StoreResult<Option<UserRecord>> {
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let (user, rev) = self.users.slot::<UserRecord>(user_id).await?;
            let Some(mut user) = user else {
                return Ok(None);
            };
            let next = policy::disabled_from(&user, disabled_at);
            if next == user.disabled_at {
                return Ok(Some(user));
            }
            user.disabled_at = next;
            if self.users.swap(user_id, &user, rev).await? {
                return Ok(Some(user));
            }
        }
        Err(contention())
    }

    pub(super) async fn erase(&self, user_id: &str, now: i64) -> StoreResult<Option<Erased>> {
        let Some(user) = self.mark_disabled(user_id, Some(now)).await? else {
            return Ok(None);
        };
        // Identities first: a login through one of them from now on starts a new user.
        let removed = self.erase_identities(user_id).await?;
        let (live_families, nats_connections) = self.erase_families(user_id, now).await?;
        // The claims on every address the user or its identities had (a claim a crashed
        // email move left too), and on its username; only those naming this user.
        let mut emails: Vec<String> = removed
            .iter()
            .filter_map(|(i, _)| i.email.as_deref().map(email_key))
            .chain(user.email.as_deref().map(email_key))
            .collect();
        emails.sort_unstable();
        emails.dedup();
        let claims = emails
            .into_iter()
            .map(|e| (&self.emails, e))
            .chain([(&self.usernames, user.username.clone())]);
        for (bucket, key) in claims {
            // Nobody can claim it while it is the user's.
            if bucket.get::<String>(&key).await?.as_deref() == Some(user_id) {
                bucket.erase(&key).await?;
            }
        }
        self.users.erase(user_id).await?;
        // A login that linked an identity while this ran took it back itself (it re-checks
        // the user after its writes); one more look catches a list it wrote meanwhile.
        let late = self.erase_identities(user_id).await?;
        Ok(Some(Erased {
            user,
            identities: removed.into_iter().chain(late).collect(),
            live_families,
            nats_connections,
        }))
    }

    /// Purges the user's identities that still name it, their tokens and the user's list of
    /// them; returns them with their tokens.
    async fn erase_identities(
        &self,
        user_id: &str,
    ) -> StoreResult<Vec<(IdentityRecord, Option<TokenRecord>)>> {
        let mut removed = Vec::new();
        for ikey in self.user_links(user_id).await? {
            let Some(identity) = self.identities.get::<IdentityRecord>(&ikey).await? else {
                self.tokens.erase(&ikey).await?;
                continue;
            };
            if identity.user_id != user_id {
                continue; // Another user's now: a new login after a crashed erasure.
            }
            let tokens = self.tokens.get::<TokenRecord>(&ikey).await?;
            self.identities.erase(&ikey).await?;
            self.tokens.erase(&ikey).await?;
            removed.push((identity, tokens));
        }
        self.links.erase(user_id).await?;
        Ok(removed)
    }

    /// Deletes every family of the user with its chain of refresh tokens, its NATS
    /// connection notes and its index entry; returns the ids of those that were live, and
    /// their unexpired connections.
    async fn erase_families(
        &self,
        user_id: &str,
        now: i64,
    ) -> StoreResult<(Vec<String>, Vec<crate::store::NatsConnection>)> {
        let mut live = Vec::new();
        let mut connections = Vec::new();
        let mut legacy = Vec::new();
        let prefix = user_prefix(user_id);
        for (key, _) in self.user_sessions.scan(&prefix, false).await? {
            let family_id = Bucket::raw_key(&key[prefix.len()..])?;
            for attempt in 0..MAX_ATTEMPTS {
                contended(attempt).await;
                let (family, rev) = self.families.slot::<FamilyRecord>(&family_id).await?;
                let Some(family) = family else { break };
                // A chain the previous version rotated lost its links: scan for its tokens.
                let whole = match &family.first {
                    Some(first) => Box::pin(self.delete_chain(first)).await?,
                    None => false,
                };
                if !whole && !legacy.contains(&family_id) {
                    legacy.push(family_id.clone());
                }
                // A rotation that noted itself on the family meanwhile made a link more:
                // walk again.
                if self.families.delete(&family_id, Some(rev)).await? {
                    self.families.erase(&family_id).await?;
                    if policy::is_live(&family, now) {
                        live.push(family_id.clone());
                    }
                    break;
                }
                if attempt + 1 == MAX_ATTEMPTS {
                    return Err(contention());
                }
            }
            connections.extend(self.erase_connections(&family_id, now).await?);
            self.user_sessions.erase_raw(&key).await?;
        }
        if !legacy.is_empty() {
            // Families the previous version made do not name their first token: find their
            // tokens in one scan of every token's record (rare, and only for such users).
            for (key, value) in self.sessions.scan("", true).await? {
                let session: SessionRecord = crate::store::decode(&value)?;
                if legacy.contains(&session.family_id) {
                    self.sessions.erase_raw(&key).await?;
                }
            }
        }
        Ok((live, connections))
    }

    /// Deletes a chain of refresh-token records, from its first; false when the chain broke
    /// off before its newest token (a record missing, or a used one naming no successor:
    /// the previous version rotated it), so the family's other tokens must be searched for.
    async fn delete_chain(&self, first: &str) -> StoreResult<bool> {
        let mut next = Some(first.to_owned());
        let mut steps = 0;
        while let Some(key) = next.take() {
            let Some(session) = self.sessions.get::<SessionRecord>(&key).await? else {
                return Ok(false);
            };
            self.sessions.erase(&key).await?;
            match (session.used_at, session.successor) {
                (Some(_), None) => return Ok(false),
                (_, successor) => next = successor,
            }
            steps += 1;
            if steps > policy::MAX_CHAIN {
                return Err(StoreError::Corrupt(format!(
                    "a session chain longer than {} tokens",
                    policy::MAX_CHAIN
                )));
            }
        }
        Ok(true)
    }
}

impl JetStreamStore {
    /// A login's session, for the user it resolved to: the provider's tokens, the index
    /// entry, then the family, then the session that names it; then the check that the user
    /// is still there.
    pub(super) async fn write_session(
        &self,
        commit: &crate::store::LoginCommit,
        write: &crate::store::LoginWrite,
        ikey: &str,
    ) -> StoreResult<()> {
        policy::check_may_log_in(&commit.user)?;
        if let Some(record) = &write.tokens {
            self.tokens.put(ikey, record).await?;
        }
        let family_id = &write.session.family_id;
        self.index_family(&commit.user.id, family_id).await?;
        let family = write.family_for(&commit.user.id);
        self.families.put(family_id, &family).await?;
        let session = write.session_for(&commit.user.id);
        self.sessions.put(&write.session_key, &session).await?;
        Box::pin(self.check_still_allowed(commit, write)).await
    }

    /// After a login's writes: the user may have been disabled or erased since the login
    /// read it. Then its family goes again and the login ends in `Disabled`, so an erasure
    /// that collected the user's families before they were written leaves none behind; and
    /// so does an identity this login added (with its tokens and link), or, the user gone,
    /// whatever it wrote for the identity.
    pub(super) async fn check_still_allowed(
        &self,
        commit: &crate::store::LoginCommit,
        write: &crate::store::LoginWrite,
    ) -> StoreResult<()> {
        let user_id = commit.user.id.as_str();
        let user = self.users.get::<UserRecord>(user_id).await?;
        if policy::may_hold_sessions(user.as_ref()) {
            return Ok(());
        }
        let ikey = crate::store::identity_key(&write.provider, &write.profile.subject);
        if user.is_none() || commit.new_identity {
            let identity = self.identities.get::<IdentityRecord>(&ikey).await?;
            if identity.is_none_or(|i| i.user_id == user_id) {
                self.identities.erase(&ikey).await?;
                self.tokens.erase(&ikey).await?;
            }
        }
        if user.is_none() {
            self.links.erase(user_id).await?;
        } else if commit.new_identity {
            self.unlink_key(user_id, &ikey).await?;
        }
        self.sessions.erase(&write.session_key).await?;
        self.families.erase(&write.session.family_id).await?;
        self.user_sessions
            .erase_raw(&index_key(user_id, &write.session.family_id))
            .await?;
        Err(StoreError::Disabled)
    }
}

/// The `meta` key that says every family is in the `user_sessions` index.
const INDEXED: &str = "user_sessions_indexed";

impl JetStreamStore {
    /// Indexes every family by its user once (the families the previous version made), the
    /// first time a daemon of this version opens the store. Idempotent: daemons starting
    /// together may both do it.
    pub(super) async fn index_families_once(&self) -> StoreResult<()> {
        if self.meta.get::<bool>(INDEXED).await?.is_some() {
            return Ok(());
        }
        let indexed = self.index_families().await?;
        self.meta.put(INDEXED, &true).await?;
        if indexed > 0 {
            tracing::info!(families = indexed, "indexed the session families by user");
        }
        Ok(())
    }

    /// Writes every family's index entry; how many.
    pub(super) async fn index_families(&self) -> StoreResult<usize> {
        let families = self.families.scan("", true).await?;
        for (key, value) in &families {
            let family: FamilyRecord = crate::store::decode(value)?;
            self.index_family(&family.user_id, &Bucket::raw_key(key)?)
                .await?;
        }
        Ok(families.len())
    }
}

impl JetStreamStore {
    pub(super) async fn users_page(
        &self,
        query: &crate::store::UserQuery,
    ) -> StoreResult<crate::store::UserPage> {
        use crate::store::UserPage;
        let named = match (&query.email, &query.username) {
            (Some(email), _) => Some(self.emails.get::<String>(&email_key(email)).await?),
            (None, Some(username)) => Some(self.usernames.get::<String>(username).await?),
            (None, None) => None,
        };
        if let Some(id) = named {
            let mut users = Vec::new();
            if let Some(user) = match id {
                Some(id) => self.users.get::<UserRecord>(&id).await?,
                None => None,
            } {
                let after = query.after.as_ref().is_none_or(|a| *a < user.id);
                if after && self.user_matches(&user, query).await? {
                    users.push(user);
                }
            }
            return Ok(UserPage { users, next: None });
        }
        // The bucket's keys stream in one scan; the users are read a page at a time.
        let mut ids = self
            .users
            .scan("", false)
            .await?
            .iter()
            .map(|(key, _)| Bucket::raw_key(key))
            .collect::<StoreResult<Vec<_>>>()?;
        ids.sort_unstable();
        let from = match &query.after {
            Some(after) => ids.partition_point(|id| id <= after),
            None => 0,
        };
        let budget = query.limit.saturating_mul(policy::EXAMINED_PER_USER).max(1);
        let mut page = UserPage::default();
        for (examined, id) in ids[from..].iter().enumerate() {
            if page.users.len() == query.limit || examined == budget {
                // The last one examined (`examined` is at least 1 here: limit and budget are).
                page.next = Some(ids[from + examined - 1].clone());
                return Ok(page);
            }
            if let Some(user) = self.users.get::<UserRecord>(id).await? {
                if self.user_matches(&user, query).await? {
                    page.users.push(user);
                }
            }
        }
        Ok(page)
    }

    async fn user_matches(
        &self,
        user: &UserRecord,
        query: &crate::store::UserQuery,
    ) -> StoreResult<bool> {
        if query.username.as_ref().is_some_and(|u| *u != user.username) {
            return Ok(false);
        }
        if query.provider.is_none() {
            return Ok(true);
        }
        let links = self.user_links(&user.id).await?;
        Ok(policy::has_provider(
            links.iter().map(String::as_str),
            query.provider.as_deref(),
        ))
    }
}
