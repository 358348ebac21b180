//! The shared [`Store`]: NATS JetStream key-value buckets, so several daemons in one queue
//! group share users, sessions, tokens and spent login states.
//!
//! JetStream has no multi-key transaction, so each change the sled store makes in one
//! transaction is a chain of revision-checked writes here, ordered so that every step either
//! wins against a concurrent writer or is retried from fresh reads, and so that a daemon that
//! dies between two steps leaves something the next login repairs rather than a user locked
//! out:
//!
//! - uniqueness (an identity, an email, a username) is claimed with `create`, which exactly
//!   one writer wins;
//! - a new identity is created first, naming its user's id; the user's email and username
//!   claims and record follow. An identity whose user is missing (its creator died) is
//!   completed by its next login;
//! - a login state is spent by a `create` of its id, which one caller wins;
//! - a refresh token is spent by an update that names the revision read: of two concurrent
//!   refreshes one wins and the other, retried, sees a used token and revokes the family,
//!   exactly as in sled.
//!
//! A write returns once JetStream acknowledged it: stored, and on a replicated bucket stored
//! by a majority of the replicas. Secrets arrive here already sealed by the vault.

use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::policy;

mod bucket;
mod connections;
mod copy;
mod feed;
mod lease;
mod login;
mod sessions;
mod waited;

use bucket::{Bucket, Buckets};

use super::{
    identity_key, state_key, Erased, FamilyRecord, Feed, FeedEvent, IdentityRecord, Lease,
    LoginCommit, LoginOutcome, LoginWatch, LoginWrite, NatsConnection, PendingLogin,
    ProviderRecord, RefreshTerms, Revision, Rotation, SessionRecord, SigningKeyRecord, Snapshot,
    Store, StoreError, StoreResult, TokenRecord, UserPage, UserQuery, UserRecord, WaitedLogin,
    FEED_BUFFER,
};

/// How a deployment's buckets are named and replicated.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// Bucket names start with this (`lanyard` → `lanyard_users`, ...).
    pub bucket_prefix: String,
    /// Replicas of each bucket: 1, or 3 on a three-node cluster.
    pub replicas: usize,
    /// How long a login lives; the bucket of spent states forgets entries after this (plus
    /// a minute's margin), so no sweep is needed.
    pub pending_ttl: Duration,
}

/// How long one read or write waits for JetStream's answer before it is tried again.
pub(super) const OPERATION_TIMEOUT: Duration = Duration::from_secs(4);

/// How many times a change is retried from fresh reads when concurrent writers keep winning.
const MAX_ATTEMPTS: usize = 32;

/// The bucket that holds leases forgets a lease this long after its last renewal, whatever
/// its holder said: a holder that died cannot hold it longer.
const LEASE_BUCKET_AGE: Duration = Duration::from_secs(120);

/// The JetStream store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JetStreamStore {
    /// The ids of spent login states, each forgotten once its state has expired.
    spent: Bucket,
    /// The previous version's pending logins, while its bucket exists.
    pending: std::sync::Arc<tokio::sync::Mutex<Legacy>>,
    users: Bucket,
    identities: Bucket,
    emails: Bucket,
    usernames: Bucket,
    links: Bucket,
    sessions: Bucket,
    families: Bucket,
    /// Each user's session families (see `sessions.rs`).
    user_sessions: Bucket,
    /// Notes of the NATS connections sessions were admitted with (`connections.rs`).
    nats_connections: Bucket,
    /// Logins apps wait for: device and hosted (`waited.rs`).
    waited_logins: Bucket,
    tokens: Bucket,
    providers: Bucket,
    meta: Bucket,
    leases: Bucket,
    holder: String,
    buckets: Buckets,
}

impl JetStreamStore {
    /// Creates (or opens) the buckets. Creating an existing bucket with the same settings is
    /// a no-op, so every daemon of a deployment may do it.
    pub async fn open(client: async_nats::Client, options: &JetStreamOptions) -> StoreResult<Self> {
        let buckets = Buckets::new(client, options);
        let forever = Duration::ZERO;
        let store = Self {
            spent: buckets.open("spent_logins", buckets.login_age()).await?,
            pending: std::sync::Arc::new(tokio::sync::Mutex::new(Legacy {
                bucket: buckets.open_existing("pending").await?,
                looked: std::time::Instant::now(),
            })),
            users: buckets.open("users", forever).await?,
            identities: buckets.open("identities", forever).await?,
            emails: buckets.open("emails", forever).await?,
            usernames: buckets.open("usernames", forever).await?,
            links: buckets.open("user_identities", forever).await?,
            sessions: buckets.open("sessions", forever).await?,
            families: buckets.open("families", forever).await?,
            user_sessions: buckets.open("user_sessions", forever).await?,
            nats_connections: buckets
                .open("nats_connections", connections::CONNECTION_NOTE_AGE)
                .await?,
            waited_logins: buckets
                .open("waited_logins", waited::WAITED_BUCKET_AGE)
                .await?,
            tokens: buckets.open("tokens", forever).await?,
            providers: buckets.open("providers", forever).await?,
            meta: buckets.open("meta", forever).await?,
            leases: buckets.open("leases", LEASE_BUCKET_AGE).await?,
            holder: format!("daemon_{}", ulid::Ulid::new()),
            buckets,
        };
        Box::pin(store.index_families_once()).await?;
        Ok(store)
    }
}

/// The previous version's bucket of pending logins, and when this daemon last looked for it.
#[derive(Debug)]
struct Legacy {
    bucket: Option<Bucket>,
    looked: std::time::Instant,
}

/// How often a daemon without the previous version's bucket looks for it again (a daemon of
/// that version, restarted, makes it anew).
const LOOK_AGAIN: Duration = Duration::from_secs(5);

#[async_trait]
impl Store for JetStreamStore {
    async fn spend_login(&self, id: &[u8; 16], _expires_at: i64) -> StoreResult<bool> {
        // The bucket forgets the mark a minute after the state expires. Of racing creates one
        // wins; the value is this call's own, so a create whose answer was lost and is tried
        // again knows its own write (see `swap_unique`).
        let mark = format!("{}_{}", self.holder, ulid::Ulid::new());
        let spent = self
            .spent
            .swap_unique(&URL_SAFE_NO_PAD.encode(id), &mark, 0)
            .await?;
        Ok(spent.is_some())
    }

    async fn put_pending(&self, state: &str, pending: &PendingLogin) -> StoreResult<()> {
        let key = pending_key(state)
            .ok_or_else(|| StoreError::Corrupt("a login state in the wrong format".into()))?;
        let mut legacy = self.pending.lock().await;
        if legacy.bucket.is_none() {
            legacy.bucket = Some(
                self.buckets
                    .open("pending", self.buckets.login_age())
                    .await?,
            );
        }
        let bucket = legacy.bucket.clone().expect("opened above");
        drop(legacy);
        bucket.put_raw(&key, pending).await
    }

    async fn take_pending(&self, state: &str) -> StoreResult<Option<PendingLogin>> {
        let Some(key) = pending_key(state) else {
            return Ok(None);
        };
        let bucket = {
            let mut legacy = self.pending.lock().await;
            if legacy.bucket.is_none() && legacy.looked.elapsed() >= LOOK_AGAIN {
                legacy.bucket = self.buckets.open_existing("pending").await?;
                legacy.looked = std::time::Instant::now();
            }
            legacy.bucket.clone()
        };
        let Some(bucket) = bucket else {
            return Ok(None);
        };
        let Some((pending, rev)) = bucket.get_raw::<PendingLogin>(&key).await? else {
            return Ok(None);
        };
        // Of any number of daemons racing, the one whose delete names the revision wins.
        if bucket.delete_raw(&key, Some(rev)).await? {
            Ok(Some(pending))
        } else {
            Ok(None)
        }
    }

    async fn sweep_logins(&self, _now: i64) -> StoreResult<usize> {
        // The buckets' max age forgets expired marks and logins on their own. The previous
        // version's bucket stays while its daemons may still run: no daemon can tell, so
        // the operator deletes it (`forget_previous_logins`, `lanyard store
        // forget-pending`).
        Ok(0)
    }

    async fn forget_previous_logins(&self, now: i64) -> StoreResult<usize> {
        let mut legacy = self.pending.lock().await;
        if legacy.bucket.is_none() {
            legacy.bucket = self.buckets.open_existing("pending").await?;
        }
        let Some(bucket) = legacy.bucket.as_ref() else {
            return Ok(0);
        };
        let live = bucket.keys().await?;
        let unexpired = live
            .iter()
            .filter(|key| pending_expiry(key).is_none_or(|e| e >= now))
            .count();
        if unexpired > 0 {
            return Err(StoreError::Conflict(format!(
                "{unexpired} logins of the previous version may still finish; try again once \
                 they expired (pending_ttl_secs)"
            )));
        }
        self.buckets.delete("pending").await?;
        tracing::info!(bucket = %bucket.name, "the previous version's pending logins: bucket deleted");
        legacy.bucket = None;
        legacy.looked = std::time::Instant::now();
        Ok(live.len())
    }

    async fn commit_login(&self, write: &LoginWrite) -> StoreResult<LoginCommit> {
        let ikey = identity_key(&write.provider, &write.profile.subject);
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            // Each step boxed: this future stays small, and so the stack of whoever polls it
            // (a debug build gives every awaited future its own slot in the frame).
            let Some(commit) = Box::pin(self.try_login(write, &ikey)).await? else {
                continue;
            };
            Box::pin(self.write_session(&commit, write, &ikey)).await?;
            return Ok(commit);
        }
        Err(contention())
    }

    async fn flush(&self) -> StoreResult<()> {
        // Every write above returned after JetStream acknowledged it.
        Ok(())
    }

    async fn get_user(&self, user_id: &str) -> StoreResult<Option<UserRecord>> {
        self.users.get(user_id).await
    }

    async fn user_identities(&self, user_id: &str) -> StoreResult<Vec<IdentityRecord>> {
        let mut out = Vec::new();
        for ikey in self.user_links(user_id).await? {
            if let Some(identity) = self.identities.get::<IdentityRecord>(&ikey).await? {
                if identity.user_id == user_id {
                    out.push(identity);
                }
            }
        }
        Ok(out)
    }

    async fn get_family(&self, family_id: &str) -> StoreResult<Option<FamilyRecord>> {
        self.families.get(family_id).await
    }

    async fn rotate_session(&self, old_key: &str, terms: &RefreshTerms) -> StoreResult<Rotation> {
        self.rotate(old_key, terms).await
    }

    async fn revoke_session(&self, key: &str, now: i64) -> StoreResult<Option<(String, String)>> {
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let Some(session) = self.sessions.get::<SessionRecord>(key).await? else {
                return Ok(None);
            };
            let (family, rev) = self
                .families
                .slot::<FamilyRecord>(&session.family_id)
                .await?;
            let Some((family, revoked)) =
                policy::plan_revocation(Some(&session), family.as_ref(), now)
            else {
                return Ok(None);
            };
            if self.families.swap(&session.family_id, &family, rev).await? {
                return Ok(Some(revoked));
            }
        }
        Err(contention())
    }

    async fn user_families(&self, user_id: &str) -> StoreResult<Vec<(String, FamilyRecord)>> {
        self.families_of(user_id).await
    }

    async fn index_sessions(&self) -> StoreResult<usize> {
        self.index_families().await
    }

    async fn revoke_family(&self, user_id: &str, family_id: &str, now: i64) -> StoreResult<bool> {
        self.revoke_one(user_id, family_id, now).await
    }

    async fn list_users(&self, query: &UserQuery) -> StoreResult<UserPage> {
        self.users_page(query).await
    }

    async fn set_user_disabled(
        &self,
        user_id: &str,
        disabled_at: Option<i64>,
    ) -> StoreResult<Option<UserRecord>> {
        self.mark_disabled(user_id, disabled_at).await
    }

    async fn erase_user(&self, user_id: &str, now: i64) -> StoreResult<Option<Erased>> {
        Box::pin(self.erase(user_id, now)).await
    }

    async fn put_nats_connection(
        &self,
        family_id: &str,
        connection: &NatsConnection,
    ) -> StoreResult<()> {
        Box::pin(self.put_connection(family_id, connection)).await
    }

    async fn delete_nats_connection(
        &self,
        family_id: &str,
        connection: &NatsConnection,
    ) -> StoreResult<()> {
        Box::pin(self.delete_connection(family_id, connection)).await
    }

    async fn nats_connections(
        &self,
        family_id: &str,
        now: i64,
    ) -> StoreResult<Vec<NatsConnection>> {
        Box::pin(self.connections_of(family_id, now)).await
    }

    fn attach_metrics(&self, metrics: &std::sync::Arc<crate::metrics::Metrics>) {
        let _ = self.buckets.metrics.set(metrics.clone());
    }

    async fn put_waited_login(&self, key: &str, login: &WaitedLogin) -> StoreResult<()> {
        Box::pin(self.put_waited(key, login)).await
    }

    async fn waited_login(&self, key: &str) -> StoreResult<Option<WaitedLogin>> {
        Box::pin(self.get_waited(key)).await
    }

    async fn end_waited_login(&self, key: &str, outcome: &LoginOutcome) -> StoreResult<bool> {
        Box::pin(self.end_waited(key, outcome)).await
    }

    async fn watch_waited_login(&self, key: &str) -> StoreResult<LoginWatch> {
        self.watch_waited(key).await
    }

    async fn get_tokens(
        &self,
        user_id: &str,
        provider: &str,
    ) -> StoreResult<Option<(IdentityRecord, Option<TokenRecord>)>> {
        let prefix = format!("{provider}\0");
        let links = self.user_links(user_id).await?;
        let Some(ikey) = links.iter().find(|l| l.starts_with(&prefix)) else {
            return Ok(None);
        };
        let Some(identity) = self.identities.get::<IdentityRecord>(ikey).await? else {
            return Ok(None);
        };
        let tokens = self.tokens.get(ikey).await?;
        Ok(Some((identity, tokens)))
    }

    async fn put_tokens(
        &self,
        provider: &str,
        subject: &str,
        tokens: &TokenRecord,
    ) -> StoreResult<()> {
        // Only for an identity that still exists: a refresh at the provider takes seconds, and
        // the identity may have been unlinked or erased meanwhile (whose purge of the tokens
        // this put may follow): read it after the write, and take the write back.
        let key = identity_key(provider, subject);
        self.tokens.put(&key, tokens).await?;
        if self.identities.get::<IdentityRecord>(&key).await?.is_none() {
            self.tokens.erase(&key).await?;
            return Err(StoreError::NotFound(format!(
                "identity {provider}/{subject}"
            )));
        }
        Ok(())
    }

    async fn unlink_identity(
        &self,
        user_id: &str,
        provider: &str,
    ) -> StoreResult<Option<(IdentityRecord, Option<TokenRecord>)>> {
        let prefix = format!("{provider}\0");
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let (links, rev) = self.links.slot::<Vec<String>>(user_id).await?;
            let mut links = links.unwrap_or_default();
            let Some(at) = links.iter().position(|l| l.starts_with(&prefix)) else {
                return Ok(None);
            };
            policy::check_unlink(links.len())?;
            let ikey = links.remove(at);
            // Unlinked from the user first (the check above holds under this revision);
            // then the identity and its tokens go.
            if !self.links.swap(user_id, &links, rev).await? {
                continue;
            }
            let identity = self.identities.get::<IdentityRecord>(&ikey).await?;
            let tokens = self.tokens.get::<TokenRecord>(&ikey).await?;
            self.identities.delete(&ikey, None).await?;
            self.tokens.delete(&ikey, None).await?;
            return Ok(identity.map(|identity| (identity, tokens)));
        }
        Err(contention())
    }

    async fn list_providers(&self) -> StoreResult<Vec<ProviderRecord>> {
        let mut out = Vec::new();
        for key in self.providers.keys().await? {
            if let Some((record, _)) = self.providers.get_raw::<ProviderRecord>(&key).await? {
                out.push(record);
            }
        }
        out.sort_by(|a, b| a.config.id.cmp(&b.config.id));
        Ok(out)
    }

    async fn get_provider(&self, id: &str) -> StoreResult<Option<ProviderRecord>> {
        self.providers.get(id).await
    }

    async fn put_provider(
        &self,
        record: &ProviderRecord,
        expected: Option<u64>,
    ) -> StoreResult<Revision> {
        let id = &record.config.id;
        let (current, rev) = self.providers.slot::<ProviderRecord>(id).await?;
        policy::check_provider_write(id, current.map(|c| c.version), expected)?;
        let seq = self
            .providers
            .swap_unique(id, record, rev)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("provider `{id}` changed meanwhile")))?;
        self.providers.revision(seq).await
    }

    async fn delete_provider(&self, id: &str, expected: u64) -> StoreResult<Revision> {
        let (current, rev) = self.providers.slot::<ProviderRecord>(id).await?;
        policy::check_provider_delete(id, current.map(|c| c.version), expected)?;
        if !self.providers.delete(id, Some(rev)).await? {
            return Err(StoreError::Conflict(format!(
                "provider `{id}` changed meanwhile"
            )));
        }
        // A delete does not report its revision: the key's revision now is the delete
        // marker's, or a later change's.
        let (_, seq) = self.providers.slot::<serde_json::Value>(id).await?;
        self.providers.revision(seq).await
    }

    async fn signing_keys(
        &self,
        candidate: SigningKeyRecord,
    ) -> StoreResult<Vec<SigningKeyRecord>> {
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let (keys, rev) = self
                .meta
                .slot::<Vec<SigningKeyRecord>>(SIGNING_KEYS)
                .await?;
            if let Some(keys) = keys {
                return Ok(keys);
            }
            let first = vec![candidate.clone()];
            if self.meta.swap(SIGNING_KEYS, &first, rev).await? {
                return Ok(first);
            }
        }
        Err(contention())
    }

    async fn current_signing_keys(&self) -> StoreResult<(Revision, Vec<SigningKeyRecord>)> {
        let (keys, seq) = self
            .meta
            .slot::<Vec<SigningKeyRecord>>(SIGNING_KEYS)
            .await?;
        Ok((self.meta.revision(seq).await?, keys.unwrap_or_default()))
    }

    async fn rotate_signing_key(
        &self,
        key: SigningKeyRecord,
        now: i64,
    ) -> StoreResult<(Revision, Vec<SigningKeyRecord>)> {
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let (keys, rev) = self
                .meta
                .slot::<Vec<SigningKeyRecord>>(SIGNING_KEYS)
                .await?;
            let keys = policy::rotate_keys(keys.unwrap_or_default(), key.clone(), now);
            if let Some(seq) = self.meta.swap_unique(SIGNING_KEYS, &keys, rev).await? {
                return Ok((self.meta.revision(seq).await?, keys));
            }
        }
        Err(contention())
    }

    async fn follow(&self) -> StoreResult<Feed> {
        let (snapshot, cursor) = self.shared_snapshot().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(FEED_BUFFER);
        let _ = tx.send(FeedEvent::Snapshot(snapshot)).await;
        let task = tokio::spawn(self.clone().follow_from(cursor, tx));
        Ok(Feed::new(rx, task))
    }

    async fn export(&self) -> StoreResult<Snapshot> {
        self.export_all().await
    }

    async fn import(&self, snapshot: &Snapshot) -> StoreResult<()> {
        self.import_all(snapshot).await
    }

    async fn try_lease(&self, name: &str, ttl: Duration) -> StoreResult<Option<Lease>> {
        self.take_lease(name, ttl).await
    }

    async fn renew_lease(&self, lease: &mut Lease, ttl: Duration) -> StoreResult<bool> {
        self.extend_lease(lease, ttl).await
    }

    async fn release_lease(&self, lease: Lease) -> StoreResult<()> {
        self.give_up_lease(lease).await
    }
}

const SIGNING_KEYS: &str = "signing_keys";

/// Before trying a change again after another writer won: a short pause that grows and is
/// jittered, so writers contending for one record (one user's logins on several daemons)
/// spread out instead of colliding again.
async fn contended(attempt: usize) {
    if attempt > 0 {
        let jitter = u64::from(ulid::Ulid::new().random() as u8 % 4);
        let ms = (attempt as u64).min(8) + jitter;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

fn contention() -> StoreError {
    StoreError::Conflict("too many concurrent changes to the same records; retry".into())
}

/// The expiry a pending login's key starts with.
fn pending_expiry(key: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(key).ok()?;
    let expiry: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    i64::try_from(u64::from_be_bytes(expiry)).ok()
}

/// A pending login's key: its expiry and the state's hash (never the state itself).
fn pending_key(state: &str) -> Option<String> {
    state_key(state).map(|k| URL_SAFE_NO_PAD.encode(k))
}
