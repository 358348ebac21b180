//! Copying the sled store: everything but pending logins out (`export`), into an empty
//! store (`import`), and users in bulk (`import_users`, for copies and the benchmark).

use super::tx::{backend, decode, encode};
use super::{SledStore, SIGNING_KEYS};
use crate::store::policy;
use crate::store::{
    email_key, identity_key, IdentityRecord, Snapshot, Store, StoreError, StoreResult, UserRecord,
};

impl SledStore {
    /// Writes users and their identities in bulk, for copying stores and for benchmarks: one
    /// batch per tree, then one flush. The caller vouches for the records' consistency
    /// (unique ids, usernames and emails; identities naming their users), as a copy of a
    /// consistent store has; nothing here checks them against what the store already holds.
    pub async fn import_users(
        &self,
        users: &[(UserRecord, Vec<IdentityRecord>)],
    ) -> StoreResult<()> {
        let mut batches: [sled::Batch; 5] = Default::default();
        let [users_batch, usernames, emails, identities, links] = &mut batches;
        for (user, user_identities) in users {
            users_batch.insert(user.id.as_bytes(), encode(user)?);
            usernames.insert(user.username.as_bytes(), user.id.as_bytes());
            if let Some(email) = &user.email {
                emails.insert(email_key(email).as_bytes(), user.id.as_bytes());
            }
            for identity in user_identities {
                let key = identity_key(&identity.provider, &identity.subject);
                identities.insert(key.as_bytes(), encode(identity)?);
                links.insert(format!("{}\0{key}", user.id).as_bytes(), key.as_bytes());
            }
        }
        let trees = [
            &self.users,
            &self.usernames,
            &self.emails,
            &self.identities,
            &self.user_identities,
        ];
        for (tree, batch) in trees.into_iter().zip(batches) {
            tree.apply_batch(batch).map_err(backend)?;
        }
        self.durable().await
    }

    pub(super) async fn export_all(&self) -> StoreResult<Snapshot> {
        let mut by_user: std::collections::HashMap<String, Vec<IdentityRecord>> =
            std::collections::HashMap::new();
        for entry in self.identities.iter() {
            let (_, value) = entry.map_err(backend)?;
            let identity: IdentityRecord = decode(&value)?;
            by_user
                .entry(identity.user_id.clone())
                .or_default()
                .push(identity);
        }
        let mut users = Vec::new();
        for entry in self.users.iter() {
            let (_, value) = entry.map_err(backend)?;
            let user: UserRecord = decode(&value)?;
            let identities = by_user.remove(&user.id).unwrap_or_default();
            users.push((user, identities));
        }
        let mut tokens = Vec::new();
        for entry in self.tokens.iter() {
            let (key, value) = entry.map_err(backend)?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let (provider, subject) = key
                .split_once('\0')
                .ok_or_else(|| StoreError::Corrupt(format!("token key {key:?}")))?;
            tokens.push((provider.to_owned(), subject.to_owned(), decode(&value)?));
        }
        let keyed = |tree: &sled::Tree| -> StoreResult<Vec<(String, Vec<u8>)>> {
            tree.iter()
                .map(|entry| {
                    let (key, value) = entry.map_err(backend)?;
                    Ok((String::from_utf8_lossy(&key).into_owned(), value.to_vec()))
                })
                .collect()
        };
        let sessions = keyed(&self.sessions)?
            .into_iter()
            .map(|(k, v)| Ok((k, decode(&v)?)))
            .collect::<StoreResult<_>>()?;
        let families = keyed(&self.families)?
            .into_iter()
            .map(|(k, v)| Ok((k, decode(&v)?)))
            .collect::<StoreResult<_>>()?;
        let signing_keys = match self.meta.get(SIGNING_KEYS).map_err(backend)? {
            Some(bytes) => decode(&bytes)?,
            None => Vec::new(),
        };
        Ok(Snapshot {
            users,
            tokens,
            sessions,
            families,
            providers: self.list_providers().await?,
            signing_keys,
        })
    }

    pub(super) async fn import_all(&self, snapshot: &Snapshot) -> StoreResult<()> {
        policy::check_import_target(
            !self.users.is_empty(),
            self.meta.contains_key(SIGNING_KEYS).map_err(backend)?,
        )?;
        self.import_users(&snapshot.users).await?;
        let mut tokens = sled::Batch::default();
        for (provider, subject, record) in &snapshot.tokens {
            tokens.insert(identity_key(provider, subject).as_bytes(), encode(record)?);
        }
        self.tokens.apply_batch(tokens).map_err(backend)?;
        let mut sessions = sled::Batch::default();
        for (key, record) in &snapshot.sessions {
            sessions.insert(key.as_bytes(), encode(record)?);
        }
        self.sessions.apply_batch(sessions).map_err(backend)?;
        let mut families = sled::Batch::default();
        for (key, record) in &snapshot.families {
            families.insert(key.as_bytes(), encode(record)?);
        }
        self.families.apply_batch(families).map_err(backend)?;
        self.index_families()?;
        let mut providers = sled::Batch::default();
        for record in &snapshot.providers {
            providers.insert(record.config.id.as_bytes(), encode(record)?);
        }
        self.providers.apply_batch(providers).map_err(backend)?;
        if !snapshot.signing_keys.is_empty() {
            self.meta
                .insert(SIGNING_KEYS, encode(&snapshot.signing_keys)?)
                .map_err(backend)?;
        }
        self.durable().await
    }
}
