//! The embedded [`Store`]: sled trees, multi-tree transactions for logins, and group commit so
//! that concurrent writers share one flush instead of flushing in series.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::oneshot;

use super::{
    email_key, expiry_bytes, identity_key, state_key, username_base, FamilyRecord, Feed, FeedEvent,
    IdentityRecord, LoginCommit, LoginWrite, PendingLogin, ProviderRecord, Revision, Rotation,
    SessionRecord, SharedKey, SharedSnapshot, SigningKeyRecord, Snapshot, Store, StoreError,
    StoreResult, TokenRecord, UserRecord, FEED_BUFFER,
};

const SIGNING_KEYS: &[u8] = b"signing_keys";

/// The sled store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    pending: sled::Tree,
    users: sled::Tree,
    identities: sled::Tree,
    emails: sled::Tree,
    usernames: sled::Tree,
    user_identities: sled::Tree,
    sessions: sled::Tree,
    families: sled::Tree,
    providers: sled::Tree,
    tokens: sled::Tree,
    meta: sled::Tree,
    /// The revision of each shared record ([`SharedKey`]), bumped in the same transaction
    /// as the record: the change feed follows this tree.
    revisions: sled::Tree,
    flusher: GroupFlush,
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with a 64 MiB page cache, and starts its flush
    /// thread.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        Self::open_with(dir, 64 * 1024 * 1024)
    }

    /// Opens (or creates) the store in `dir` with a page cache of `cache_bytes`.
    /// A dropped database's file lock is released only when sled's background work for it
    /// has finished, which can lag the drop by tens of milliseconds (190 ms seen; more on a
    /// loaded machine): a held lock is waited for, up to 10 s, before it is an error (another
    /// process holds it; the wait costs only while the lock is held).
    /// This matters to a daemon restarted in the same process (tests); processes release
    /// their locks when they exit.
    pub fn open_with(dir: &Path, cache_bytes: u64) -> StoreResult<Self> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from our explicit group flushes, not a timer.
            .flush_every_ms(None);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // sled reports a held lock as `Other`, naming it in the message.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(backend(e)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        Ok(Self {
            pending: tree("pending")?,
            users: tree("users")?,
            identities: tree("identities")?,
            emails: tree("emails")?,
            usernames: tree("usernames")?,
            user_identities: tree("user_identities")?,
            sessions: tree("sessions")?,
            families: tree("families")?,
            providers: tree("providers")?,
            tokens: tree("tokens")?,
            meta: tree("meta")?,
            revisions: tree("revisions")?,
            flusher: GroupFlush::start(db.clone())?,
            db,
        })
    }

    /// How many flushes have run: with group commit, fewer than durable writes.
    pub fn flush_count(&self) -> u64 {
        self.flusher.count.load(Ordering::Relaxed)
    }

    /// The on-disk size in bytes, as sled reports it.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    async fn durable(&self) -> StoreResult<()> {
        self.flusher.flush().await
    }

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
}

/// The key of a shared record in the revisions tree.
fn revision_key(key: &SharedKey) -> Vec<u8> {
    match key {
        SharedKey::Provider(id) => format!("provider\0{id}").into_bytes(),
        SharedKey::SigningKeys => SIGNING_KEYS.to_vec(),
    }
}

/// A shared record's entry in the revisions tree: how many changes it has seen and what it
/// is now. The change feed reads these entries alone, so it never waits on another tree
/// while a writer (which fills the subscription sled delivers them through) waits on it.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Tracked {
    Provider {
        seq: u64,
        record: Option<Box<ProviderRecord>>,
    },
    SigningKeys {
        seq: u64,
        keys: Vec<SigningKeyRecord>,
    },
}

impl Tracked {
    fn seq(&self) -> u64 {
        match self {
            Tracked::Provider { seq, .. } | Tracked::SigningKeys { seq, .. } => *seq,
        }
    }

    /// The feed event this entry reports, for record `key` (its key in the tree).
    fn event(self, key: &[u8]) -> Option<FeedEvent> {
        match self {
            Tracked::SigningKeys { seq, keys } => Some(FeedEvent::SigningKeys {
                revision: sled_revision(seq),
                keys,
            }),
            Tracked::Provider { seq, record } => {
                let id = key.strip_prefix(b"provider\0")?;
                Some(FeedEvent::Provider {
                    id: String::from_utf8_lossy(id).into_owned(),
                    revision: sled_revision(seq),
                    record,
                })
            }
        }
    }
}

/// A sled store's revisions count in one epoch: the store is never re-created under a
/// running daemon.
const fn sled_revision(seq: u64) -> Revision {
    Revision::new(0, seq)
}

/// Records a change of a shared record inside the transaction that makes it: its next
/// revision and what it is now (`change` builds the entry from the revision's count).
fn track(
    revisions: &TransactionalTree,
    key: &SharedKey,
    change: impl FnOnce(u64) -> Tracked,
) -> TxResult<Revision> {
    let key = revision_key(key);
    let seq = tx_get::<Tracked>(revisions, &key)
        .ok()
        .flatten()
        .map_or(0, |tracked| tracked.seq())
        + 1;
    tx_put(revisions, &key, &change(seq))?;
    Ok(sled_revision(seq))
}

impl SledStore {
    fn revision(&self, key: &SharedKey) -> StoreResult<Revision> {
        let seq = get::<Tracked>(&self.revisions, &revision_key(key))?.map_or(0, |t| t.seq());
        Ok(sled_revision(seq))
    }

    fn shared_snapshot(&self) -> StoreResult<SharedSnapshot> {
        let mut providers = Vec::new();
        for entry in self.providers.iter() {
            let (_, value) = entry.map_err(backend)?;
            let record: ProviderRecord = decode(&value)?;
            let revision = self.revision(&SharedKey::Provider(record.config.id.clone()))?;
            providers.push((revision, record));
        }
        let signing_keys = get::<Vec<SigningKeyRecord>>(&self.meta, SIGNING_KEYS)?
            .map(|keys| Ok::<_, StoreError>((self.revision(&SharedKey::SigningKeys)?, keys)))
            .transpose()?;
        Ok(SharedSnapshot {
            providers,
            signing_keys,
        })
    }
}

#[async_trait]
impl Store for SledStore {
    async fn put_pending(&self, state: &str, pending: &PendingLogin) -> StoreResult<()> {
        let key = state_key(state)
            .ok_or_else(|| StoreError::Corrupt("a login state in the wrong format".into()))?;
        // Keys lead with the expiry, so new logins append at the tree's right edge.
        self.pending
            .insert(key, encode(pending)?)
            .map_err(backend)?;
        self.durable().await
    }

    async fn take_pending(&self, state: &str) -> StoreResult<Option<PendingLogin>> {
        // `remove` is atomic: of any number of racing callers, one sees the old value. Not
        // flushed here: the login's commit flush (or the caller's `flush` on failure) makes
        // the removal durable before anyone hears back.
        let Some(key) = state_key(state) else {
            return Ok(None);
        };
        match self.pending.remove(key).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn sweep_pending(&self, now: i64) -> StoreResult<usize> {
        // Keys are in expiry order: read only the ones that expired before `now`.
        let mut removed = 0;
        for entry in self.pending.range(..expiry_bytes(now)) {
            let (key, _) = entry.map_err(backend)?;
            // A login consumed meanwhile is not counted twice.
            if self.pending.remove(&key).map_err(backend)?.is_some() {
                removed += 1;
            }
        }
        if removed > 0 {
            self.durable().await?;
        }
        Ok(removed)
    }

    async fn commit_login(&self, write: &LoginWrite) -> StoreResult<LoginCommit> {
        let trees = (
            &self.users,
            &self.identities,
            &self.emails,
            &self.usernames,
            &self.user_identities,
            &self.sessions,
            &self.families,
            &self.tokens,
        );
        let result = trees.transaction(
            |(users, identities, emails, usernames, links, sessions, families, tokens)| {
                let commit = login_tx(write, users, identities, emails, usernames, links)?;
                if let Some(record) = &write.tokens {
                    let key = identity_key(&write.provider, &write.profile.subject);
                    tx_put(tokens, key.as_bytes(), record)?;
                }
                let session = SessionRecord {
                    user_id: commit.user.id.clone(),
                    ..write.session.clone()
                };
                tx_put(sessions, write.session_key.as_bytes(), &session)?;
                let family = FamilyRecord {
                    user_id: commit.user.id.clone(),
                    created_at: write.now,
                    revoked_at: None,
                };
                tx_put(families, session.family_id.as_bytes(), &family)?;
                Ok(commit)
            },
        );
        let commit = unwrap_tx(result)?;
        self.durable().await?;
        Ok(commit)
    }

    async fn flush(&self) -> StoreResult<()> {
        self.durable().await
    }

    async fn get_user(&self, user_id: &str) -> StoreResult<Option<UserRecord>> {
        get(&self.users, user_id.as_bytes())
    }

    async fn user_identities(&self, user_id: &str) -> StoreResult<Vec<IdentityRecord>> {
        let prefix = format!("{user_id}\0");
        let mut out = Vec::new();
        for entry in self.user_identities.scan_prefix(prefix.as_bytes()) {
            let (_, identity_key) = entry.map_err(backend)?;
            if let Some(identity) = get(&self.identities, &identity_key)? {
                out.push(identity);
            }
        }
        Ok(out)
    }

    async fn get_session(&self, session_key: &str) -> StoreResult<Option<SessionRecord>> {
        get(&self.sessions, session_key.as_bytes())
    }

    async fn get_family(&self, family_id: &str) -> StoreResult<Option<FamilyRecord>> {
        get(&self.families, family_id.as_bytes())
    }

    async fn rotate_session(
        &self,
        old_key: &str,
        new_key: &str,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<Rotation> {
        let result = (&self.sessions, &self.families).transaction(|(sessions, families)| {
            let Some(mut old) = tx_get::<SessionRecord>(sessions, old_key.as_bytes())? else {
                return Ok(Rotation::Refused);
            };
            let Some(mut family) = tx_get::<FamilyRecord>(families, old.family_id.as_bytes())?
            else {
                return Ok(Rotation::Refused);
            };
            if family.revoked_at.is_some() || old.expires_at < now {
                return Ok(Rotation::Refused);
            }
            if old.used_at.is_some() {
                family.revoked_at = Some(now);
                tx_put(families, old.family_id.as_bytes(), &family)?;
                return Ok(Rotation::Reused {
                    user_id: old.user_id,
                    family_id: old.family_id,
                });
            }
            old.used_at = Some(now);
            tx_put(sessions, old_key.as_bytes(), &old)?;
            let new = SessionRecord {
                user_id: old.user_id.clone(),
                family_id: old.family_id.clone(),
                created_at: now,
                expires_at,
                used_at: None,
            };
            tx_put(sessions, new_key.as_bytes(), &new)?;
            Ok(Rotation::Rotated {
                user_id: old.user_id,
                family_id: old.family_id,
            })
        });
        let rotation = unwrap_tx(result)?;
        if rotation != Rotation::Refused {
            self.durable().await?;
        }
        Ok(rotation)
    }

    async fn revoke_session(&self, key: &str, now: i64) -> StoreResult<Option<(String, String)>> {
        let result = (&self.sessions, &self.families).transaction(|(sessions, families)| {
            let Some(session) = tx_get::<SessionRecord>(sessions, key.as_bytes())? else {
                return Ok(None);
            };
            let Some(mut family) = tx_get::<FamilyRecord>(families, session.family_id.as_bytes())?
            else {
                return Ok(None);
            };
            if family.revoked_at.is_some() {
                return Ok(None);
            }
            family.revoked_at = Some(now);
            tx_put(families, session.family_id.as_bytes(), &family)?;
            Ok(Some((session.user_id, session.family_id)))
        });
        let revoked = unwrap_tx(result)?;
        if revoked.is_some() {
            self.durable().await?;
        }
        Ok(revoked)
    }

    async fn get_tokens(
        &self,
        user_id: &str,
        provider: &str,
    ) -> StoreResult<Option<(IdentityRecord, Option<TokenRecord>)>> {
        let prefix = format!("{user_id}\0{provider}\0");
        let Some(entry) = self.user_identities.scan_prefix(prefix.as_bytes()).next() else {
            return Ok(None);
        };
        let (_, key) = entry.map_err(backend)?;
        let Some(identity) = get::<IdentityRecord>(&self.identities, &key)? else {
            return Ok(None);
        };
        let tokens = get(&self.tokens, &key)?;
        Ok(Some((identity, tokens)))
    }

    async fn put_tokens(
        &self,
        provider: &str,
        subject: &str,
        tokens: &TokenRecord,
    ) -> StoreResult<()> {
        self.tokens
            .insert(identity_key(provider, subject).as_bytes(), encode(tokens)?)
            .map_err(backend)?;
        self.durable().await
    }

    async fn unlink_identity(
        &self,
        user_id: &str,
        provider: &str,
    ) -> StoreResult<Option<(IdentityRecord, Option<TokenRecord>)>> {
        // The user's links are read outside the transaction (sled transactions cannot scan);
        // the transaction re-checks each one it relies on, so a concurrent change conflicts.
        let user_prefix = format!("{user_id}\0");
        let links: Vec<(sled::IVec, sled::IVec)> = self
            .user_identities
            .scan_prefix(user_prefix.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        let target = format!("{user_id}\0{provider}\0");
        let Some((link_key, identity_key)) = links
            .iter()
            .find(|(k, _)| k.starts_with(target.as_bytes()))
            .cloned()
        else {
            return Ok(None);
        };
        let result = (&self.user_identities, &self.identities, &self.tokens).transaction(
            |(tx_links, identities, tokens)| {
                let live = links
                    .iter()
                    .filter(|(k, _)| matches!(tx_links.get(k), Ok(Some(_))))
                    .count();
                if live <= 1 {
                    return abort(StoreError::Conflict(
                        "this is the user's last identity; it cannot be unlinked".into(),
                    ));
                }
                let Some(identity) = tx_get::<IdentityRecord>(identities, &identity_key)? else {
                    return Ok(None);
                };
                let token = tx_get::<TokenRecord>(tokens, &identity_key)?;
                tx_links.remove(&link_key)?;
                identities.remove(&identity_key)?;
                tokens.remove(&identity_key)?;
                Ok(Some((identity, token)))
            },
        );
        let removed = unwrap_tx(result)?;
        if removed.is_some() {
            self.durable().await?;
        }
        Ok(removed)
    }

    async fn list_providers(&self) -> StoreResult<Vec<ProviderRecord>> {
        self.providers
            .iter()
            .values()
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    async fn get_provider(&self, id: &str) -> StoreResult<Option<ProviderRecord>> {
        get(&self.providers, id.as_bytes())
    }

    async fn put_provider(
        &self,
        record: &ProviderRecord,
        expected: Option<u64>,
    ) -> StoreResult<Revision> {
        let id = &record.config.id;
        let revision = unwrap_tx((&self.providers, &self.revisions).transaction(
            |(providers, revisions)| {
                let version =
                    tx_get::<ProviderRecord>(providers, id.as_bytes())?.map(|c| c.version);
                if version != expected {
                    return abort(StoreError::Conflict(format!(
                        "provider `{id}` changed meanwhile (version {version:?}, expected \
                         {expected:?})"
                    )));
                }
                tx_put(providers, id.as_bytes(), record)?;
                track(revisions, &SharedKey::Provider(id.clone()), |seq| {
                    Tracked::Provider {
                        seq,
                        record: Some(Box::new(record.clone())),
                    }
                })
            },
        ))?;
        self.durable().await?;
        Ok(revision)
    }

    async fn delete_provider(&self, id: &str, expected: u64) -> StoreResult<Revision> {
        let revision = unwrap_tx((&self.providers, &self.revisions).transaction(
            |(providers, revisions)| {
                let Some(current) = tx_get::<ProviderRecord>(providers, id.as_bytes())? else {
                    return abort(StoreError::NotFound(format!("provider `{id}`")));
                };
                if current.version != expected {
                    return abort(StoreError::Conflict(format!(
                        "provider `{id}` changed meanwhile"
                    )));
                }
                providers.remove(id.as_bytes())?;
                track(revisions, &SharedKey::Provider(id.to_owned()), |seq| {
                    Tracked::Provider { seq, record: None }
                })
            },
        ))?;
        self.durable().await?;
        Ok(revision)
    }

    async fn signing_keys(
        &self,
        candidate: SigningKeyRecord,
    ) -> StoreResult<Vec<SigningKeyRecord>> {
        let (keys, created) = unwrap_tx((&self.meta, &self.revisions).transaction(
            |(meta, revisions)| {
                if let Some(keys) = tx_get::<Vec<SigningKeyRecord>>(meta, SIGNING_KEYS)? {
                    return Ok((keys, false));
                }
                let first = vec![candidate.clone()];
                tx_put(meta, SIGNING_KEYS, &first)?;
                track(revisions, &SharedKey::SigningKeys, |seq| {
                    Tracked::SigningKeys {
                        seq,
                        keys: first.clone(),
                    }
                })?;
                Ok((first, true))
            },
        ))?;
        if created {
            self.durable().await?;
        }
        Ok(keys)
    }

    async fn current_signing_keys(&self) -> StoreResult<(Revision, Vec<SigningKeyRecord>)> {
        Ok((
            self.revision(&SharedKey::SigningKeys)?,
            get(&self.meta, SIGNING_KEYS)?.unwrap_or_default(),
        ))
    }

    async fn rotate_signing_key(
        &self,
        key: SigningKeyRecord,
        now: i64,
    ) -> StoreResult<(Revision, Vec<SigningKeyRecord>)> {
        // One transaction: a concurrent rotation makes it run again on that one's result
        // instead of overwriting it.
        let rotated = unwrap_tx(
            (&self.meta, &self.revisions).transaction(|(meta, revisions)| {
                let mut keys: Vec<SigningKeyRecord> =
                    tx_get(meta, SIGNING_KEYS)?.unwrap_or_default();
                for old in keys.iter_mut().filter(|k| k.retired_at.is_none()) {
                    old.retired_at = Some(now);
                }
                keys.push(key.clone());
                tx_put(meta, SIGNING_KEYS, &keys)?;
                let revision = track(revisions, &SharedKey::SigningKeys, |seq| {
                    Tracked::SigningKeys {
                        seq,
                        keys: keys.clone(),
                    }
                })?;
                Ok((revision, keys))
            }),
        )?;
        self.durable().await?;
        Ok(rotated)
    }

    async fn follow(&self) -> StoreResult<Feed> {
        // Subscribed before the snapshot is read, so no change falls between the two (one
        // made meanwhile arrives twice; followers ignore what is not newer).
        let mut changes = self.revisions.watch_prefix(b"");
        let snapshot = self.shared_snapshot()?;
        let (tx, rx) = tokio::sync::mpsc::channel(FEED_BUFFER);
        let _ = tx.send(FeedEvent::Snapshot(snapshot)).await;
        let task = tokio::spawn(async move {
            loop {
                // Ends when the follower goes (or closes the feed): its subscription keeps
                // the database open.
                let event = tokio::select! {
                    () = tx.closed() => return,
                    event = &mut changes => match event {
                        Some(event) => event,
                        None => return,
                    },
                };
                let sled::Event::Insert { key, value } = event else {
                    continue;
                };
                let event = match decode::<Tracked>(&value) {
                    Ok(tracked) => match tracked.event(&key) {
                        Some(event) => event,
                        None => continue,
                    },
                    Err(error) => {
                        tracing::error!(%error, "cannot read a changed shared record");
                        continue;
                    }
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(Feed::new(rx, task))
    }

    async fn export(&self) -> StoreResult<Snapshot> {
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

    async fn import(&self, snapshot: &Snapshot) -> StoreResult<()> {
        if !self.users.is_empty() || self.meta.contains_key(SIGNING_KEYS).map_err(backend)? {
            return Err(StoreError::Conflict(
                "the target store is not empty (it has users or a signing key)".into(),
            ));
        }
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

fn unwrap_tx<T>(result: Result<T, TransactionError<StoreError>>) -> StoreResult<T> {
    match result {
        Ok(value) => Ok(value),
        Err(TransactionError::Abort(error)) => Err(error),
        Err(TransactionError::Storage(error)) => Err(backend(error)),
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(error: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error))
}

/// The user/identity part of a login, inside a transaction.
fn login_tx(
    write: &LoginWrite,
    users: &TransactionalTree,
    identities: &TransactionalTree,
    emails: &TransactionalTree,
    usernames: &TransactionalTree,
    links: &TransactionalTree,
) -> TxResult<LoginCommit> {
    let profile = &write.profile;
    let identity_key = identity_key(&write.provider, &profile.subject);
    let email = profile.email.as_deref().map(email_key);

    if let Some(mut identity) = tx_get::<IdentityRecord>(identities, identity_key.as_bytes())? {
        // A returning identity: refresh what the provider says now.
        if let Err(error) = write.refresh(&mut identity) {
            return abort(error);
        }
        tx_put(identities, identity_key.as_bytes(), &identity)?;
        let Some(user) = tx_get::<UserRecord>(users, identity.user_id.as_bytes())? else {
            return abort(StoreError::Corrupt(format!(
                "identity points at missing user {}",
                identity.user_id
            )));
        };
        return Ok(LoginCommit {
            user,
            identity,
            new_user: false,
            new_identity: false,
        });
    }

    let email_owner = match &email {
        Some(e) => {
            tx_get_raw(emails, e.as_bytes())?.map(|v| String::from_utf8_lossy(&v).into_owned())
        }
        None => None,
    };
    let (user, new_user) = match (&write.link_user, email_owner) {
        (Some(link_user), _) => {
            let Some(user) = tx_get::<UserRecord>(users, link_user.as_bytes())? else {
                return abort(StoreError::NotFound(format!("user {link_user}")));
            };
            (user, false)
        }
        (None, Some(owner)) => {
            if !(write.trust_email_verified && profile.email_verified) {
                return abort(StoreError::AccountExists);
            }
            let Some(user) = tx_get::<UserRecord>(users, owner.as_bytes())? else {
                return abort(StoreError::Corrupt(format!(
                    "email points at missing {owner}"
                )));
            };
            (user, false)
        }
        (None, None) => {
            let username = unique_username(usernames, &username_base(profile))?;
            let user = write.new_user(format!("usr_{}", ulid::Ulid::new()), username.clone());
            tx_put(users, user.id.as_bytes(), &user)?;
            usernames.insert(username.as_bytes(), user.id.as_bytes())?;
            if let Some(e) = &email {
                emails.insert(e.as_bytes(), user.id.as_bytes())?;
            }
            (user, true)
        }
    };
    let identity = write.new_identity(&user.id);
    tx_put(identities, identity_key.as_bytes(), &identity)?;
    links.insert(
        format!("{}\0{identity_key}", user.id).as_bytes(),
        identity_key.as_bytes(),
    )?;
    Ok(LoginCommit {
        user,
        identity,
        new_user,
        new_identity: true,
    })
}

fn unique_username(usernames: &TransactionalTree, base: &str) -> TxResult<String> {
    if tx_get_raw(usernames, base.as_bytes())?.is_none() {
        return Ok(base.to_owned());
    }
    for n in 2..1000 {
        let candidate = format!("{base}-{n}");
        if tx_get_raw(usernames, candidate.as_bytes())?.is_none() {
            return Ok(candidate);
        }
    }
    // A thousand people share this name: fall back to a random suffix.
    Ok(format!(
        "{base}-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    ))
}

fn tx_get_raw(tree: &TransactionalTree, key: &[u8]) -> TxResult<Option<sled::IVec>> {
    tree.get(key).map_err(Into::into)
}

fn tx_get<T: DeserializeOwned>(tree: &TransactionalTree, key: &[u8]) -> TxResult<Option<T>> {
    match tx_get_raw(tree, key)? {
        Some(bytes) => decode(&bytes)
            .map(Some)
            .map_err(ConflictableTransactionError::Abort),
        None => Ok(None),
    }
}

fn tx_put<T: Serialize>(tree: &TransactionalTree, key: &[u8], value: &T) -> TxResult<()> {
    let bytes = encode(value).map_err(ConflictableTransactionError::Abort)?;
    tree.insert(key, bytes)?;
    Ok(())
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> StoreResult<Option<T>> {
    tree.get(key)
        .map_err(backend)?
        .map(|b| decode(&b))
        .transpose()
}

fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

/// Group commit: callers queue for a flush; one flush covers everyone queued when it starts,
/// and writers arriving during a flush share the next one.
///
/// The flushes run on a dedicated thread calling sled's blocking `flush`: `flush_async`
/// would hand each one to sled's I/O pool first, one more thread wake-up per flush.
#[derive(Debug, Clone)]
struct GroupFlush {
    thread: Arc<FlushThread>,
    count: Arc<AtomicU64>,
}

/// The flush thread's handle. When the last store clone goes, its drop closes the queue and
/// waits for the thread, so the database is closed (and its lock released) when the store
/// is: a daemon restarted in the same process can open it again at once.
#[derive(Debug)]
struct FlushThread {
    requests: Option<std::sync::mpsc::Sender<oneshot::Sender<Result<(), String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FlushThread {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl GroupFlush {
    fn start(db: sled::Db) -> StoreResult<Self> {
        let (requests, rx) = std::sync::mpsc::channel::<oneshot::Sender<Result<(), String>>>();
        let count = Arc::new(AtomicU64::new(0));
        let counter = count.clone();
        let thread = std::thread::Builder::new()
            .name("lanyard-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiters = vec![first];
                    waiters.extend(rx.try_iter());
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    counter.fetch_add(1, Ordering::Relaxed);
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the flush thread: {e}")))?;
        Ok(Self {
            thread: Arc::new(FlushThread {
                requests: Some(requests),
                thread: Some(thread),
            }),
            count,
        })
    }

    async fn flush(&self) -> StoreResult<()> {
        let (tx, rx) = oneshot::channel();
        self.thread
            .requests
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the flusher has stopped".into()))?
            .send(tx)
            .map_err(|_| StoreError::Backend("the flusher has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the flusher has stopped".into()))?
            .map_err(StoreError::Backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::new_state;
    use lanyard_provider_sdk::Profile;

    fn pending(expires_at: i64) -> PendingLogin {
        PendingLogin {
            provider: "oidc".into(),
            generation: "config".into(),
            redirect_uri: "https://app.test/cb".into(),
            pkce_verifier: Some("verifier".into()),
            nonce: Some("nonce".into()),
            scopes: vec!["openid".into()],
            fetch_groups: false,
            return_to: None,
            link_user: None,
            created_at: 0,
            expires_at,
        }
    }

    fn login(subject: &str, email: &str) -> LoginWrite {
        LoginWrite {
            provider: "oidc".into(),
            profile: Profile {
                subject: subject.into(),
                email: Some(email.into()),
                email_verified: true,
                ..Profile::default()
            },
            trust_email_verified: false,
            link_user: None,
            tokens: None,
            session_key: format!("session-{subject}"),
            session: SessionRecord {
                user_id: String::new(),
                family_id: format!("ses_{subject}"),
                created_at: 0,
                expires_at: 10,
                used_at: None,
            },
            now: 1,
        }
    }

    #[tokio::test]
    async fn concurrent_writers_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let writes = (0..64u8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_pending(&new_state(100, [i; 32]), &pending(100))
                    .await
            })
        });
        for write in futures::future::join_all(writes).await {
            write.unwrap().unwrap();
        }
        assert!(
            store.flush_count() < 64,
            "{} flushes for 64 writes",
            store.flush_count()
        );
        assert!(store.flush_count() >= 1);
    }

    #[tokio::test]
    async fn imported_users_log_in_as_returning_users() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let user = UserRecord {
            id: "usr_imported".into(),
            username: "x".into(),
            email: Some("X@example.test".into()),
            email_verified: true,
            name: None,
            picture: None,
            created_at: 1,
        };
        let identity = IdentityRecord {
            provider: "oidc".into(),
            subject: "a".into(),
            user_id: user.id.clone(),
            email: user.email.clone(),
            email_verified: true,
            groups: vec![],
            created_at: 1,
            updated_at: 1,
        };
        store
            .import_users(&[(user.clone(), vec![identity.clone()])])
            .await
            .unwrap();
        assert_eq!(store.get_user("usr_imported").await.unwrap(), Some(user));
        assert_eq!(
            store.user_identities("usr_imported").await.unwrap(),
            vec![identity]
        );
        let commit = store
            .commit_login(&login("a", "x@example.test"))
            .await
            .unwrap();
        assert!(!commit.new_user && !commit.new_identity);
        assert_eq!(commit.user.id, "usr_imported");
        // The email index came along too: another identity with that email is refused.
        let other = store.commit_login(&login("b", "x@example.test")).await;
        assert!(matches!(other, Err(StoreError::AccountExists)));
    }

    #[tokio::test]
    async fn a_dropped_store_can_be_reopened_at_once() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20u8 {
            let store = SledStore::open(dir.path()).unwrap();
            let state = new_state(100, [round; 32]);
            store.put_pending(&state, &pending(100)).await.unwrap();
            // The flush thread holds the database too; dropping the store must close it.
            drop(store);
            let reopened = SledStore::open(dir.path()).expect("the lock was released");
            assert!(reopened.take_pending(&state).await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn a_state_is_taken_once_and_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let state = new_state(100, [7; 32]);
        store.put_pending(&state, &pending(100)).await.unwrap();
        let (key, _) = store.pending.first().unwrap().unwrap();
        assert!(
            !key.windows(32).any(|w| w == [7; 32]),
            "the state's random part is not in the key"
        );
        assert!(store.take_pending("not-a-state").await.unwrap().is_none());
        let forged = new_state(100, [8; 32]);
        assert!(store.take_pending(&forged).await.unwrap().is_none());
        let takers = (0..20).map(|_| {
            let store = store.clone();
            let state = state.clone();
            tokio::spawn(async move { store.take_pending(&state).await.unwrap() })
        });
        let taken = futures::future::join_all(takers)
            .await
            .into_iter()
            .filter(|r| r.as_ref().unwrap().is_some())
            .count();
        assert_eq!(taken, 1);
    }

    #[tokio::test]
    async fn sweep_removes_only_expired_logins() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (old, edge, new) = (
            new_state(5, [1; 32]),
            new_state(50, [2; 32]),
            new_state(100, [3; 32]),
        );
        store.put_pending(&old, &pending(5)).await.unwrap();
        store.put_pending(&edge, &pending(50)).await.unwrap();
        store.put_pending(&new, &pending(100)).await.unwrap();
        assert_eq!(store.sweep_pending(50).await.unwrap(), 1);
        assert!(store.take_pending(&old).await.unwrap().is_none());
        assert!(
            store.take_pending(&edge).await.unwrap().is_some(),
            "expires at 50, not before"
        );
        assert!(store.take_pending(&new).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_refused_login_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let first = store
            .commit_login(&login("a", "x@example.test"))
            .await
            .unwrap();
        assert!(first.new_user);
        let sessions_before = store.sessions.len();
        let refused = store.commit_login(&login("b", "X@example.test")).await;
        assert!(matches!(refused, Err(StoreError::AccountExists)));
        assert_eq!(
            store.sessions.len(),
            sessions_before,
            "no session for a refused login"
        );
        assert!(store.identities.get("oidc\0b").unwrap().is_none());
        assert_eq!(store.users.len(), 1);
        let session = store.get_session("session-a").await.unwrap().unwrap();
        assert_eq!(session.user_id, first.user.id);
    }

    fn key(kid: &str) -> SigningKeyRecord {
        SigningKeyRecord {
            kid: kid.into(),
            private: crate::vault::Vault::from_key_bytes(&[1; 32])
                .seal(b"k", "test")
                .unwrap(),
            public_key: String::new(),
            created_at: 0,
            retired_at: None,
        }
    }

    #[tokio::test]
    async fn the_first_signing_key_wins_and_rotation_retires_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.signing_keys(key("one")).await.unwrap()[0].kid, "one");
        assert_eq!(store.signing_keys(key("two")).await.unwrap().len(), 1);
        let (revision, keys) = store.rotate_signing_key(key("three"), 42).await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].retired_at, Some(42));
        assert_eq!((keys[1].kid.as_str(), keys[1].retired_at), ("three", None));
        assert_eq!(
            store.current_signing_keys().await.unwrap(),
            (revision, keys)
        );
    }

    fn provider(id: &str, version: u64) -> ProviderRecord {
        ProviderRecord {
            config: serde_json::from_value(serde_json::json!({
                "id": id,
                "kind": "oidc",
                "client_id": "c",
                "redirect_uris": ["https://app.test/cb"],
            }))
            .unwrap(),
            secret: None,
            generation: format!("gen-{id}"),
            version,
            created_at: 0,
            updated_at: 0,
        }
    }

    /// The change feed starts with what is stored, then reports every change with a
    /// revision that grows per record, also across a delete and a re-create.
    #[tokio::test]
    async fn the_feed_reports_a_snapshot_then_every_shared_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.signing_keys(key("one")).await.unwrap();
        let first = store.put_provider(&provider("a", 1), None).await.unwrap();
        let mut feed = store.follow().await.unwrap();
        let Some(FeedEvent::Snapshot(snapshot)) = feed.recv().await else {
            panic!("a snapshot first");
        };
        assert_eq!(snapshot.providers.len(), 1);
        assert_eq!(snapshot.providers[0].0, first);
        assert_eq!(snapshot.signing_keys.as_ref().unwrap().1[0].kid, "one");

        let updated = store
            .put_provider(&provider("a", 2), Some(1))
            .await
            .unwrap();
        let deleted = store.delete_provider("a", 2).await.unwrap();
        let again = store.put_provider(&provider("a", 1), None).await.unwrap();
        let (rotated, _) = store.rotate_signing_key(key("two"), 7).await.unwrap();
        assert!(first < updated && updated < deleted && deleted < again);
        let mut seen = Vec::new();
        while seen.len() < 4 {
            match feed.recv().await.unwrap() {
                FeedEvent::Provider { id, revision, .. } => {
                    assert_eq!(id, "a");
                    seen.push(revision);
                }
                FeedEvent::SigningKeys { revision, keys } => {
                    assert_eq!(revision, rotated);
                    assert_eq!(keys.len(), 2);
                    seen.push(revision);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, vec![updated, deleted, again, rotated]);
        // A stale version is refused and reports nothing.
        assert!(matches!(
            store.put_provider(&provider("a", 5), Some(3)).await,
            Err(StoreError::Conflict(_))
        ));
        // Closed, the feed's task lets go of the database.
        feed.close().await;
        drop(store);
        SledStore::open(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn a_reused_refresh_token_revokes_its_family() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let commit = store
            .commit_login(&login("a", "a@example.test"))
            .await
            .unwrap();
        let rotated = store
            .rotate_session("session-a", "second", 2, 100)
            .await
            .unwrap();
        assert_eq!(
            rotated,
            Rotation::Rotated {
                user_id: commit.user.id.clone(),
                family_id: "ses_a".into()
            }
        );
        let replay = store
            .rotate_session("session-a", "third", 3, 100)
            .await
            .unwrap();
        assert!(matches!(replay, Rotation::Reused { .. }));
        // The family is gone for the honest holder too.
        let honest = store
            .rotate_session("second", "fourth", 4, 100)
            .await
            .unwrap();
        assert_eq!(honest, Rotation::Refused);
        let family = store.get_family("ses_a").await.unwrap().unwrap();
        assert_eq!(family.revoked_at, Some(3));
    }
}
