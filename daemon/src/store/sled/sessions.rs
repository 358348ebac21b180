//! The sled store's sessions and users' lives: refresh-token rotation, revocation, a user's
//! session families (the `user_sessions` index: `{user}\0{family}`), and erasure.

use sled::Transactional;

use super::tx::{abort, backend, get, tx_get, tx_put, unwrap_tx};
use super::SledStore;
use crate::store::policy::{self, Presented, RotationPlan};
use crate::store::{
    Erased, FamilyRecord, IdentityRecord, RefreshTerms, Rotation, SessionRecord, StoreResult,
    TokenRecord, UserRecord,
};

/// The `meta` key that says every family is in the `user_sessions` index (families the
/// previous version made were indexed once, when this version first opened the store).
const INDEXED: &[u8] = b"user_sessions_indexed";

/// The key of family `family_id` in user `user_id`'s index.
pub(super) fn index_key(user_id: &str, family_id: &str) -> Vec<u8> {
    format!("{user_id}\0{family_id}").into_bytes()
}

impl SledStore {
    /// Indexes every family by its user, once: the families the previous version made.
    pub(super) fn index_families_once(&self) -> StoreResult<()> {
        if self.meta.contains_key(INDEXED).map_err(backend)? {
            return Ok(());
        }
        let indexed = self.index_families()?;
        self.meta.insert(INDEXED, &[][..]).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        if indexed > 0 {
            tracing::info!(families = indexed, "indexed the session families by user");
        }
        Ok(())
    }

    /// Writes every family's index entry; how many.
    pub(super) fn index_families(&self) -> StoreResult<usize> {
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for entry in self.families.iter() {
            let (key, value) = entry.map_err(backend)?;
            let family: FamilyRecord = super::tx::decode(&value)?;
            let family_id = String::from_utf8_lossy(&key);
            batch.insert(index_key(&family.user_id, &family_id), &[][..]);
            count += 1;
        }
        self.user_sessions.apply_batch(batch).map_err(backend)?;
        Ok(count)
    }

    pub(super) async fn rotate(
        &self,
        old_key: &str,
        terms: &RefreshTerms,
    ) -> StoreResult<Rotation> {
        let trees = (
            &self.sessions,
            &self.families,
            &self.users,
            &self.user_sessions,
        );
        let result = trees.transaction(|(sessions, families, users, index)| {
            let old = tx_get::<SessionRecord>(sessions, old_key.as_bytes())?;
            let (family, user) = match &old {
                Some(old) => (
                    tx_get::<FamilyRecord>(families, old.family_id.as_bytes())?,
                    tx_get::<UserRecord>(users, old.user_id.as_bytes())?,
                ),
                None => (None, None),
            };
            let presented = Presented {
                old: old.as_ref(),
                family: family.as_ref(),
                user: user.as_ref(),
            };
            match policy::plan_rotation(presented, terms) {
                RotationPlan::Refuse => Ok(Rotation::Refused),
                RotationPlan::Repeat { outcome, family } => {
                    if let (Some(family), Some(old)) = (family, &old) {
                        tx_put(families, old.family_id.as_bytes(), &family)?;
                    }
                    Ok(outcome)
                }
                RotationPlan::RevokeFamily {
                    family_id,
                    family,
                    outcome,
                } => {
                    tx_put(families, family_id.as_bytes(), &family)?;
                    Ok(outcome)
                }
                RotationPlan::Rotate {
                    spent,
                    successor,
                    family,
                    outcome,
                } => {
                    tx_put(sessions, old_key.as_bytes(), &spent)?;
                    let new_key = spent.successor.as_deref().unwrap_or_default();
                    tx_put(sessions, new_key.as_bytes(), &successor)?;
                    if presented.family.is_some_and(policy::needs_index) {
                        index.insert(index_key(&family.user_id, &spent.family_id), &[][..])?;
                    }
                    tx_put(families, spent.family_id.as_bytes(), &family)?;
                    Ok(outcome)
                }
            }
        });
        let rotation = unwrap_tx(result)?;
        if rotation != Rotation::Refused {
            self.durable().await?;
        }
        Ok(rotation)
    }

    pub(super) fn families_of(&self, user_id: &str) -> StoreResult<Vec<(String, FamilyRecord)>> {
        let prefix = index_key(user_id, "");
        let mut out = Vec::new();
        for entry in self.user_sessions.scan_prefix(&prefix) {
            let (key, _) = entry.map_err(backend)?;
            let family_id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let Some(family) = get::<FamilyRecord>(&self.families, family_id.as_bytes())? {
                out.push((family_id, family));
            }
        }
        Ok(policy::own_families(user_id, out))
    }

    pub(super) async fn revoke_one(
        &self,
        user_id: &str,
        family_id: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let revoked = unwrap_tx(self.families.transaction(|families| {
            let Some(family) = tx_get::<FamilyRecord>(families, family_id.as_bytes())? else {
                return Ok(false);
            };
            let Some(revoked) = policy::revoke_family(&family, user_id, now) else {
                return Ok(false);
            };
            tx_put(families, family_id.as_bytes(), &revoked)?;
            Ok(true)
        }))?;
        if revoked {
            self.durable().await?;
        }
        Ok(revoked)
    }

    pub(super) async fn mark_disabled(
        &self,
        user_id: &str,
        disabled_at: Option<i64>,
    ) -> StoreResult<Option<UserRecord>> {
        let marked = unwrap_tx(self.users.transaction(|users| {
            let Some(mut user) = tx_get::<UserRecord>(users, user_id.as_bytes())? else {
                return Ok(None);
            };
            let next = policy::disabled_from(&user, disabled_at);
            if next != user.disabled_at {
                user.disabled_at = next;
                tx_put(users, user_id.as_bytes(), &user)?;
            }
            Ok(Some(user))
        }))?;
        self.durable().await?;
        Ok(marked)
    }

    pub(super) async fn erase(&self, user_id: &str, now: i64) -> StoreResult<Option<Erased>> {
        // Disabled first, in its own transaction: a login or refresh that commits after it
        // reads a disabled user and is refused, so what is collected below is all there is.
        let Some(user) = self.mark_disabled(user_id, Some(now)).await? else {
            return Ok(None);
        };
        let plan = self.erasure_plan(&user, now)?;
        let trees = [
            &self.users,
            &self.identities,
            &self.user_identities,
            &self.tokens,
            &self.emails,
            &self.usernames,
            &self.sessions,
            &self.families,
            &self.user_sessions,
            &self.nats_connections,
        ];
        unwrap_tx(trees[..].transaction(|t| {
            let [users, identities, links, tokens, emails, usernames, sessions, families, index, connections] =
                &t[..]
            else {
                return abort(crate::store::StoreError::Backend("ten trees".into()));
            };
            for key in &plan.identities {
                identities.remove(key.as_bytes())?;
                tokens.remove(key.as_bytes())?;
                links.remove(format!("{user_id}\0{key}").as_bytes())?;
            }
            let claims = plan.emails.iter().map(|e| (emails, e));
            for (tree, key) in claims.chain(plan.username.iter().map(|u| (usernames, u))) {
                if tree.get(key.as_bytes())?.as_deref() == Some(user_id.as_bytes()) {
                    tree.remove(key.as_bytes())?;
                }
            }
            for key in &plan.sessions {
                sessions.remove(key.as_bytes())?;
            }
            for key in &plan.connection_keys {
                connections.remove(key)?;
            }
            for family_id in &plan.families {
                families.remove(family_id.as_bytes())?;
                index.remove(index_key(user_id, family_id))?;
            }
            users.remove(user_id.as_bytes())?;
            Ok(())
        }))?;
        self.durable().await?;
        Ok(Some(Erased {
            user,
            identities: plan.removed,
            live_families: plan.live_families,
            nats_connections: plan.connections,
        }))
    }

    /// What an erasure of the (disabled) user removes.
    fn erasure_plan(&self, user: &UserRecord, now: i64) -> StoreResult<ErasurePlan> {
        let prefix = format!("{}\0", user.id);
        let mut plan = ErasurePlan {
            username: Some(user.username.clone()),
            ..ErasurePlan::default()
        };
        plan.emails
            .extend(user.email.as_deref().map(crate::store::email_key));
        for entry in self.user_identities.scan_prefix(prefix.as_bytes()) {
            let (_, ikey) = entry.map_err(backend)?;
            let ikey = String::from_utf8_lossy(&ikey).into_owned();
            if let Some(identity) = get::<IdentityRecord>(&self.identities, ikey.as_bytes())? {
                let tokens = get::<TokenRecord>(&self.tokens, ikey.as_bytes())?;
                plan.emails
                    .extend(identity.email.as_deref().map(crate::store::email_key));
                plan.removed.push((identity, tokens));
            }
            plan.identities.push(ikey);
        }
        let mut legacy = std::collections::HashSet::new();
        for (family_id, family) in self.families_of(&user.id)? {
            if policy::is_live(&family, now) {
                plan.live_families.push(family_id.clone());
            }
            for (key, connection) in self.connections_of(&family_id)? {
                plan.connection_keys.push(key);
                if connection.expires_at >= now {
                    plan.connections.push(connection);
                }
            }
            // A chain the previous version rotated lost its links: scan for its tokens.
            let whole = match &family.first {
                Some(first) => self.walk_chain(first, &mut plan.sessions)?,
                None => false,
            };
            if !whole {
                legacy.insert(family_id.clone());
            }
            plan.families.push(family_id);
        }
        if !legacy.is_empty() {
            // Families the previous version made do not name their first token: find their
            // tokens by scanning (rare, and only for those users).
            for entry in self.sessions.iter() {
                let (key, value) = entry.map_err(backend)?;
                let session: SessionRecord = super::tx::decode(&value)?;
                if legacy.contains(&session.family_id) {
                    plan.sessions
                        .push(String::from_utf8_lossy(&key).into_owned());
                }
            }
        }
        Ok(plan)
    }

    /// Every refresh-token record of a chain, from its first; false when the chain broke off
    /// before its newest token (a record missing, or a used one naming no successor: the
    /// previous version rotated it).
    fn walk_chain(&self, first: &str, out: &mut Vec<String>) -> StoreResult<bool> {
        let mut next = Some(first.to_owned());
        let mut steps = 0;
        while let Some(key) = next.take() {
            let Some(session) = get::<SessionRecord>(&self.sessions, key.as_bytes())? else {
                return Ok(false);
            };
            out.push(key);
            match (session.used_at, session.successor) {
                (Some(_), None) => return Ok(false),
                (_, successor) => next = successor,
            }
            steps += 1;
            if steps > policy::MAX_CHAIN {
                return Err(crate::store::StoreError::Corrupt(format!(
                    "a session chain longer than {} tokens",
                    policy::MAX_CHAIN
                )));
            }
        }
        Ok(true)
    }
}

/// The keys an erasure removes, collected before its transaction.
#[derive(Debug, Default)]
struct ErasurePlan {
    identities: Vec<String>,
    removed: Vec<(IdentityRecord, Option<TokenRecord>)>,
    /// The addresses of the user and its identities (their claims go if they name it).
    emails: Vec<String>,
    username: Option<String>,
    sessions: Vec<String>,
    families: Vec<String>,
    live_families: Vec<String>,
    connection_keys: Vec<sled::IVec>,
    /// The unexpired NATS connections of the user's sessions.
    connections: Vec<crate::store::NatsConnection>,
}

impl SledStore {
    pub(super) fn users_page(
        &self,
        query: &crate::store::UserQuery,
    ) -> StoreResult<crate::store::UserPage> {
        use crate::store::UserPage;
        let links = |user_id: &str| -> StoreResult<Vec<String>> {
            self.user_identities
                .scan_prefix(format!("{user_id}\0").as_bytes())
                .map(|entry| {
                    let (_, ikey) = entry.map_err(backend)?;
                    Ok(String::from_utf8_lossy(&ikey).into_owned())
                })
                .collect()
        };
        let matches = |user: &UserRecord| -> StoreResult<bool> {
            let links = links(&user.id)?;
            Ok(
                policy::has_provider(links.iter().map(String::as_str), query.provider.as_deref())
                    && query.username.as_ref().is_none_or(|u| *u == user.username),
            )
        };
        // A user named by email or username: one lookup, no paging.
        let named = match (&query.email, &query.username) {
            (Some(email), _) => Some(
                self.emails
                    .get(crate::store::email_key(email))
                    .map_err(backend)?,
            ),
            (None, Some(username)) => Some(self.usernames.get(username).map_err(backend)?),
            (None, None) => None,
        };
        if let Some(id) = named {
            let mut users = Vec::new();
            if let Some(id) = id {
                if let Some(user) = get::<UserRecord>(&self.users, &id)? {
                    if matches(&user)? && query.after.as_ref().is_none_or(|a| *a < user.id) {
                        users.push(user);
                    }
                }
            }
            return Ok(UserPage { users, next: None });
        }
        let start = match &query.after {
            Some(after) => std::ops::Bound::Excluded(after.as_bytes().to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        let budget = query.limit.saturating_mul(policy::EXAMINED_PER_USER).max(1);
        let mut page = UserPage::default();
        let mut last = None;
        for (examined, entry) in self
            .users
            .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
            .enumerate()
        {
            if page.users.len() == query.limit || examined == budget {
                page.next = last;
                return Ok(page);
            }
            let (_, value) = entry.map_err(backend)?;
            let user: UserRecord = super::tx::decode(&value)?;
            last = Some(user.id.clone());
            if matches(&user)? {
                page.users.push(user);
            }
        }
        Ok(page)
    }
}
