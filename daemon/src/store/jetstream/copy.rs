//! Copying the JetStream store: everything but pending logins out, into empty buckets.

use super::{JetStreamStore, SIGNING_KEYS};
use crate::store::policy;
use crate::store::{
    email_key, identity_key, FamilyRecord, IdentityRecord, SessionRecord, SigningKeyRecord,
    Snapshot, Store, StoreError, StoreResult, TokenRecord, UserRecord,
};

impl JetStreamStore {
    /// Every user with their identities (for copying a store).
    pub async fn export_users(&self) -> StoreResult<Vec<(UserRecord, Vec<IdentityRecord>)>> {
        let mut out = Vec::new();
        for key in self.users.keys().await? {
            let Some((user, _)) = self.users.get_raw::<UserRecord>(&key).await? else {
                continue;
            };
            let identities = self.user_identities(&user.id).await?;
            out.push((user, identities));
        }
        Ok(out)
    }

    pub(super) async fn export_all(&self) -> StoreResult<Snapshot> {
        let users = self.export_users().await?;
        let mut tokens = Vec::new();
        for (ikey, record) in self.tokens.entries::<TokenRecord>().await? {
            let (provider, subject) = ikey
                .split_once('\0')
                .ok_or_else(|| StoreError::Corrupt(format!("token key {ikey:?}")))?;
            tokens.push((provider.to_owned(), subject.to_owned(), record));
        }
        let sessions = self.sessions.entries::<SessionRecord>().await?;
        let families = self.families.entries::<FamilyRecord>().await?;
        Ok(Snapshot {
            users,
            tokens,
            sessions,
            families,
            providers: self.list_providers().await?,
            signing_keys: self
                .meta
                .get::<Vec<SigningKeyRecord>>(SIGNING_KEYS)
                .await?
                .unwrap_or_default(),
        })
    }

    pub(super) async fn import_all(&self, snapshot: &Snapshot) -> StoreResult<()> {
        use futures::StreamExt;
        policy::check_import_target(
            !self.users.keys().await?.is_empty(),
            self.meta
                .get::<serde_json::Value>(SIGNING_KEYS)
                .await?
                .is_some(),
        )?;
        // Many writes in flight at once: each waits for its acknowledgement.
        let mut writes: Vec<futures::future::BoxFuture<'_, StoreResult<()>>> = Vec::new();
        for (user, identities) in &snapshot.users {
            writes.push(Box::pin(self.users.put(&user.id, user)));
            writes.push(Box::pin(self.usernames.put(&user.username, &user.id)));
            if let Some(email) = &user.email {
                writes.push(Box::pin(async move {
                    self.emails.put(&email_key(email), &user.id).await
                }));
            }
            let links: Vec<String> = identities
                .iter()
                .map(|i| identity_key(&i.provider, &i.subject))
                .collect();
            for (identity, ikey) in identities.iter().zip(links.clone()) {
                writes.push(Box::pin(async move {
                    self.identities.put(&ikey, identity).await
                }));
            }
            writes.push(Box::pin(
                async move { self.links.put(&user.id, &links).await },
            ));
        }
        for (provider, subject, record) in &snapshot.tokens {
            writes.push(Box::pin(async move {
                self.tokens
                    .put(&identity_key(provider, subject), record)
                    .await
            }));
        }
        for (key, record) in &snapshot.sessions {
            writes.push(Box::pin(self.sessions.put(key, record)));
        }
        for (key, record) in &snapshot.families {
            writes.push(Box::pin(self.index_family(&record.user_id, key)));
            writes.push(Box::pin(self.families.put(key, record)));
        }
        for record in &snapshot.providers {
            writes.push(Box::pin(self.providers.put(&record.config.id, record)));
        }
        let mut results = futures::stream::iter(writes).buffer_unordered(256);
        while let Some(result) = results.next().await {
            result?;
        }
        // The signing keys last: a store with them counts as in use.
        if !snapshot.signing_keys.is_empty() {
            self.meta.put(SIGNING_KEYS, &snapshot.signing_keys).await?;
        }
        Ok(())
    }
}
