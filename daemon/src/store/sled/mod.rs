//! The embedded [`Store`]: sled trees, multi-tree transactions for logins, and group commit so
//! that concurrent writers share one flush instead of flushing in series.

use std::path::Path;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use sled::Transactional;

use super::{
    identity_key, Erased, FamilyRecord, Feed, FeedEvent, IdentityRecord, LoginCommit, LoginOutcome,
    LoginWatch, LoginWrite, NatsConnection, PendingLogin, ProviderRecord, RefreshTerms, Revision,
    Rotation, SessionRecord, SharedKey, SigningKeyRecord, Snapshot, Store, StoreError, StoreResult,
    TokenRecord, UserPage, UserQuery, UserRecord, WaitedLogin, FEED_BUFFER,
};

mod connections;
mod copy;
mod feed;
mod flush;
mod logins;
mod sessions;
mod tx;
mod waited;

use super::policy;
use feed::{track, Tracked};
use flush::GroupFlush;
use tx::{abort, backend, decode, get, login_tx, tx_get, tx_put, unwrap_tx};

const SIGNING_KEYS: &[u8] = b"signing_keys";
/// The previous version's tree of pending logins.
const PENDING: &[u8] = b"pending";

/// The sled store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SledStore {
    /// The ids of spent login states, keyed by their expiry first (the sweep reads only
    /// what expired).
    spent: sled::Tree,
    /// The previous version's pending logins, while any may be left.
    pending: std::sync::Arc<std::sync::Mutex<Option<sled::Tree>>>,
    db: sled::Db,
    users: sled::Tree,
    identities: sled::Tree,
    emails: sled::Tree,
    usernames: sled::Tree,
    user_identities: sled::Tree,
    sessions: sled::Tree,
    families: sled::Tree,
    /// Each user's session families, `{user}\0{family}`.
    user_sessions: sled::Tree,
    /// Notes of the NATS connections sessions were admitted with (`connections.rs`).
    nats_connections: sled::Tree,
    /// Logins apps wait for: device and hosted (`waited.rs`).
    waited_logins: sled::Tree,
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
                Err(sled::Error::Io(e))
                    if lock_held(&e) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(backend(e)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let pending = match db.tree_names().iter().any(|n| n == PENDING) {
            true => Some(tree("pending")?),
            false => None,
        };
        let store = Self {
            spent: tree("spent_logins")?,
            pending: std::sync::Arc::new(std::sync::Mutex::new(pending)),
            users: tree("users")?,
            identities: tree("identities")?,
            emails: tree("emails")?,
            usernames: tree("usernames")?,
            user_identities: tree("user_identities")?,
            sessions: tree("sessions")?,
            families: tree("families")?,
            user_sessions: tree("user_sessions")?,
            nats_connections: tree("nats_connections")?,
            waited_logins: tree("waited_logins")?,
            providers: tree("providers")?,
            tokens: tree("tokens")?,
            meta: tree("meta")?,
            revisions: tree("revisions")?,
            flusher: GroupFlush::start(db.clone())?,
            db,
        };
        store.index_families_once()?;
        Ok(store)
    }

    /// How many flushes have run: with group commit, fewer than durable writes.
    pub fn flush_count(&self) -> u64 {
        self.flusher.count.load(Ordering::Relaxed)
    }

    async fn durable(&self) -> StoreResult<()> {
        self.flusher.flush().await
    }
}

/// Whether sled failed to open because another handle holds the database's file lock. sled
/// reports that as an `Other` I/O error and says so only in its message: the one place the
/// store matches an error's text.
fn lock_held(error: &std::io::Error) -> bool {
    error.to_string().contains("could not acquire lock")
}

#[async_trait]
impl Store for SledStore {
    async fn spend_login(&self, id: &[u8; 16], expires_at: i64) -> StoreResult<bool> {
        self.spend(id, expires_at).await
    }

    async fn put_pending(&self, state: &str, pending: &PendingLogin) -> StoreResult<()> {
        self.put_previous(state, pending).await
    }

    async fn take_pending(&self, state: &str) -> StoreResult<Option<PendingLogin>> {
        self.take_previous(state)
    }

    async fn sweep_logins(&self, now: i64) -> StoreResult<usize> {
        Ok(self.sweep_expired(now).await?
            + self.sweep_connections(now)?
            + self.sweep_waited(now)?)
    }

    async fn forget_previous_logins(&self, now: i64) -> StoreResult<usize> {
        self.forget_previous(now).await
    }

    async fn commit_login(&self, write: &LoginWrite) -> StoreResult<LoginCommit> {
        let trees = [
            &self.users,
            &self.identities,
            &self.emails,
            &self.usernames,
            &self.user_identities,
            &self.sessions,
            &self.families,
            &self.tokens,
            &self.user_sessions,
        ];
        let result = trees[..].transaction(|t| {
            let [users, identities, emails, usernames, links, sessions, families, tokens, index] =
                &t[..]
            else {
                return abort(StoreError::Backend("nine trees".into()));
            };
            let commit = login_tx(write, users, identities, emails, usernames, links)?;
            if let Some(record) = &write.tokens {
                let key = identity_key(&write.provider, &write.profile.subject);
                tx_put(tokens, key.as_bytes(), record)?;
            }
            let session = write.session_for(&commit.user.id);
            tx_put(sessions, write.session_key.as_bytes(), &session)?;
            let family = write.family_for(&commit.user.id);
            tx_put(families, session.family_id.as_bytes(), &family)?;
            index.insert(
                sessions::index_key(&commit.user.id, &session.family_id),
                &[][..],
            )?;
            Ok(commit)
        });
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

    async fn get_family(&self, family_id: &str) -> StoreResult<Option<FamilyRecord>> {
        get(&self.families, family_id.as_bytes())
    }

    async fn rotate_session(&self, old_key: &str, terms: &RefreshTerms) -> StoreResult<Rotation> {
        self.rotate(old_key, terms).await
    }

    async fn revoke_session(&self, key: &str, now: i64) -> StoreResult<Option<(String, String)>> {
        let result = (&self.sessions, &self.families).transaction(|(sessions, families)| {
            let Some(session) = tx_get::<SessionRecord>(sessions, key.as_bytes())? else {
                return Ok(None);
            };
            let family = tx_get::<FamilyRecord>(families, session.family_id.as_bytes())?;
            let Some((family, revoked)) =
                policy::plan_revocation(Some(&session), family.as_ref(), now)
            else {
                return Ok(None);
            };
            tx_put(families, session.family_id.as_bytes(), &family)?;
            Ok(Some(revoked))
        });
        let revoked = unwrap_tx(result)?;
        if revoked.is_some() {
            self.durable().await?;
        }
        Ok(revoked)
    }

    async fn user_families(&self, user_id: &str) -> StoreResult<Vec<(String, FamilyRecord)>> {
        self.families_of(user_id)
    }

    async fn index_sessions(&self) -> StoreResult<usize> {
        let count = self.index_families()?;
        self.durable().await?;
        Ok(count)
    }

    async fn revoke_family(&self, user_id: &str, family_id: &str, now: i64) -> StoreResult<bool> {
        self.revoke_one(user_id, family_id, now).await
    }

    async fn list_users(&self, query: &UserQuery) -> StoreResult<UserPage> {
        self.users_page(query)
    }

    async fn set_user_disabled(
        &self,
        user_id: &str,
        disabled_at: Option<i64>,
    ) -> StoreResult<Option<UserRecord>> {
        self.mark_disabled(user_id, disabled_at).await
    }

    async fn erase_user(&self, user_id: &str, now: i64) -> StoreResult<Option<Erased>> {
        self.erase(user_id, now).await
    }

    async fn put_nats_connection(
        &self,
        family_id: &str,
        connection: &NatsConnection,
    ) -> StoreResult<()> {
        self.put_connection(family_id, connection)
    }

    async fn delete_nats_connection(
        &self,
        family_id: &str,
        connection: &NatsConnection,
    ) -> StoreResult<()> {
        self.delete_connection(family_id, connection)
    }

    async fn nats_connections(
        &self,
        family_id: &str,
        now: i64,
    ) -> StoreResult<Vec<NatsConnection>> {
        let notes = self.connections_of(family_id)?.into_iter().map(|(_, c)| c);
        Ok(notes.filter(|c| c.expires_at >= now).collect())
    }

    fn attach_metrics(&self, metrics: &std::sync::Arc<crate::metrics::Metrics>) {
        let _ = self.flusher.metrics.set(metrics.clone());
    }

    async fn put_waited_login(&self, key: &str, login: &WaitedLogin) -> StoreResult<()> {
        self.put_waited(key, login).await
    }

    async fn waited_login(&self, key: &str) -> StoreResult<Option<WaitedLogin>> {
        self.get_waited(key)
    }

    async fn end_waited_login(&self, key: &str, outcome: &LoginOutcome) -> StoreResult<bool> {
        self.end_waited(key, outcome).await
    }

    async fn watch_waited_login(&self, key: &str) -> StoreResult<LoginWatch> {
        Ok(self.watch_waited(key))
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
        // Only for an identity that still exists: a refresh at the provider takes seconds,
        // and the identity may have been unlinked or erased meanwhile.
        let key = identity_key(provider, subject);
        unwrap_tx(
            (&self.identities, &self.tokens).transaction(|(identities, stored)| {
                if identities.get(key.as_bytes())?.is_none() {
                    return abort(StoreError::NotFound(format!(
                        "identity {provider}/{subject}"
                    )));
                }
                tx_put(stored, key.as_bytes(), tokens)
            }),
        )?;
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
                if let Err(error) = policy::check_unlink(live) {
                    return abort(error);
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
                if let Err(error) = policy::check_provider_write(id, version, expected) {
                    return abort(error);
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
                let version =
                    tx_get::<ProviderRecord>(providers, id.as_bytes())?.map(|c| c.version);
                if let Err(error) = policy::check_provider_delete(id, version, expected) {
                    return abort(error);
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
                let keys: Vec<SigningKeyRecord> = tx_get(meta, SIGNING_KEYS)?.unwrap_or_default();
                let keys = policy::rotate_keys(keys, key.clone(), now);
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
        self.export_all().await
    }

    async fn import(&self, snapshot: &Snapshot) -> StoreResult<()> {
        self.import_all(snapshot).await
    }
}

#[cfg(test)]
mod tests;
