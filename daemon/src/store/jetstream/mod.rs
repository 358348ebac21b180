//! The shared [`Store`]: NATS JetStream key-value buckets, so several daemons in one queue
//! group share users, sessions, tokens and pending logins.
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
//! - a state is taken by a delete that names the revision read, which one caller wins;
//! - a refresh token is spent by an update that names the revision read: of two concurrent
//!   refreshes one wins and the other, retried, sees a used token and revokes the family,
//!   exactly as in sled.
//!
//! A write returns once JetStream acknowledged it: stored, and on a replicated bucket stored
//! by a majority of the replicas. Secrets arrive here already sealed by the vault.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream;
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    email_key, identity_key, state_key, username_base, FamilyRecord, Feed, FeedEvent,
    IdentityRecord, Lease, LoginCommit, LoginWrite, PendingLogin, ProviderRecord, Revision,
    Rotation, SessionRecord, SharedSnapshot, SigningKeyRecord, Snapshot, Store, StoreError,
    StoreResult, TokenRecord, UserRecord, FEED_BUFFER,
};

/// How a deployment's buckets are named and replicated.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// Bucket names start with this (`lanyard` → `lanyard_users`, ...).
    pub bucket_prefix: String,
    /// Replicas of each bucket: 1, or 3 on a three-node cluster.
    pub replicas: usize,
    /// How long a pending login lives; its bucket forgets entries after this (plus a
    /// minute's margin), so no sweep is needed.
    pub pending_ttl: Duration,
}

/// How long one read or write waits for JetStream's answer before it is tried again.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(4);

/// How many times a change is retried from fresh reads when concurrent writers keep winning.
const MAX_ATTEMPTS: usize = 32;

/// The bucket that holds leases forgets a lease this long after its last renewal, whatever
/// its holder said: a holder that died cannot hold it longer.
const LEASE_BUCKET_AGE: Duration = Duration::from_secs(120);

/// The JetStream store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JetStreamStore {
    pending: Bucket,
    users: Bucket,
    identities: Bucket,
    emails: Bucket,
    usernames: Bucket,
    links: Bucket,
    sessions: Bucket,
    families: Bucket,
    tokens: Bucket,
    providers: Bucket,
    meta: Bucket,
    leases: Bucket,
    holder: String,
}

impl JetStreamStore {
    /// Creates (or opens) the buckets. Creating an existing bucket with the same settings is
    /// a no-op, so every daemon of a deployment may do it.
    pub async fn open(client: async_nats::Client, options: &JetStreamOptions) -> StoreResult<Self> {
        // Creating replicated streams takes the cluster a moment, longer when several
        // daemons start together.
        let js = async_nats::jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_secs(20))
            .build(client.clone());
        // Reads and writes, by contrast, are quick or go to a stream leader that died with
        // its node: a short wait and another try (the transient retries) reaches the new
        // leader, where a long one would hold the request for the whole wait.
        let ops = async_nats::jetstream::context::ContextBuilder::new()
            .timeout(OPERATION_TIMEOUT)
            .build(client);
        let open = |name: &'static str, max_age: Duration| {
            let js = js.clone();
            let ops = ops.clone();
            let bucket = format!("{}_{name}", options.bucket_prefix);
            let replicas = options.replicas;
            async move {
                let cannot = |e: &dyn std::fmt::Display| {
                    StoreError::Backend(format!("cannot create bucket {bucket}: {e}"))
                };
                // The stream a key-value bucket is, as async-nats would create it, except that
                // reads go to the stream's leader rather than "direct gets" any replica
                // answers: a replica may lag, and a daemon must read what another just wrote
                // (a user right after its login, tokens right after a refresh).
                let config = stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some(format!("Lanyard {name}")),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    max_age,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: false,
                    discard: stream::DiscardPolicy::New,
                    ..Default::default()
                };
                // Other daemons may be creating it at the same moment, and a cluster's
                // metadata takes a moment to reach every node: look, create, open, and try
                // again a few times.
                let mut attempt = 0;
                let store = loop {
                    attempt += 1;
                    match ensure_kv_stream(&js, &ops, &config, &bucket).await {
                        Ok(store) => break store,
                        Err(error) if attempt >= 10 => return Err(cannot(&error)),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                };
                Ok::<_, StoreError>(Bucket {
                    kv: store,
                    name: bucket,
                })
            }
        };
        let forever = Duration::ZERO;
        Ok(Self {
            pending: open("pending", options.pending_ttl + Duration::from_secs(60)).await?,
            users: open("users", forever).await?,
            identities: open("identities", forever).await?,
            emails: open("emails", forever).await?,
            usernames: open("usernames", forever).await?,
            links: open("user_identities", forever).await?,
            sessions: open("sessions", forever).await?,
            families: open("families", forever).await?,
            tokens: open("tokens", forever).await?,
            providers: open("providers", forever).await?,
            meta: open("meta", forever).await?,
            leases: open("leases", LEASE_BUCKET_AGE).await?,
            holder: format!("daemon_{}", ulid::Ulid::new()),
        })
    }

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

    /// The user/identity half of a login; `None` when a concurrent writer won a step and the
    /// whole thing must be read again.
    async fn try_login(&self, write: &LoginWrite, ikey: &str) -> StoreResult<Option<LoginCommit>> {
        let profile = &write.profile;
        let (existing, irev) = self.identities.slot::<IdentityRecord>(ikey).await?;
        if let Some(mut identity) = existing {
            // A returning identity: refresh what the provider says now.
            write.refresh(&mut identity)?;
            if !self.identities.swap(ikey, &identity, irev).await? {
                return Ok(None);
            }
            // Its creator may have died before the user was written: complete it now.
            let (user, new_user) = match self.users.get::<UserRecord>(&identity.user_id).await? {
                Some(user) => (user, false),
                None => match self.create_user(&identity.user_id, write).await? {
                    Some(user) => (user, true),
                    None => return Ok(None),
                },
            };
            self.link(&user.id, ikey).await?;
            return Ok(Some(LoginCommit {
                user,
                identity,
                new_user,
                new_identity: false,
            }));
        }

        let email = profile.email.as_deref().map(email_key);
        let owner = match &email {
            Some(e) => self.emails.get::<String>(e).await?,
            None => None,
        };
        let (user_id, known_user) = match (&write.link_user, owner) {
            (Some(link_user), _) => {
                let Some(user) = self.users.get::<UserRecord>(link_user).await? else {
                    return Err(StoreError::NotFound(format!("user {link_user}")));
                };
                (user.id.clone(), Some(user))
            }
            (None, Some(owner)) => {
                if !(write.trust_email_verified && profile.email_verified) {
                    // The identity and the email were read apart: a concurrent first login
                    // of this same identity may have created both in between. Then this is
                    // a returning login, not someone else's account.
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
                let user = self.users.get::<UserRecord>(&owner).await?;
                (owner, user)
            }
            (None, None) => (format!("usr_{}", ulid::Ulid::new()), None),
        };
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
        }))
    }

    /// Claims the email and a username for user `id` and writes the user; `None` when the
    /// email belongs to another user. Idempotent for the same id (a repair).
    async fn create_user(&self, id: &str, write: &LoginWrite) -> StoreResult<Option<UserRecord>> {
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

    async fn claim_username(&self, id: &str, base: &str) -> StoreResult<String> {
        let candidates = std::iter::once(base.to_owned())
            .chain((2..1000).map(|n| format!("{base}-{n}")))
            .chain(std::iter::once(format!(
                "{base}-{}",
                ulid::Ulid::new().to_string().to_lowercase()
            )));
        for candidate in candidates {
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
    async fn link(&self, user_id: &str, ikey: &str) -> StoreResult<()> {
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

    async fn user_links(&self, user_id: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .links
            .get::<Vec<String>>(user_id)
            .await?
            .unwrap_or_default())
    }
}

/// Where the change feed stands in each bucket it follows: which stream it is (buckets are
/// streams; one deleted and made again has another creation time and starts its revisions
/// over) and the last revision delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    providers: Position,
    meta: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    created: time::OffsetDateTime,
    /// The last change delivered (or, of a bucket as it is now, its last change).
    last: u64,
}

impl Position {
    /// The revision of change `seq` in this bucket.
    fn revision(&self, seq: u64) -> Revision {
        Revision::new(self.created.unix_timestamp_nanos(), seq)
    }

    /// Whether the feed can go on from here in a bucket now at `now`: the same stream, and
    /// not behind what was delivered (JetStream keeps each key's newest change, tombstones
    /// included, so every change after `last` that still matters is there to watch).
    fn resumable(&self, now: &Position) -> bool {
        self.created == now.created && now.last >= self.last
    }
}

/// How often the feed checks that it can still resume where it is (a bucket re-created
/// meanwhile would otherwise go unnoticed: the client's own watch resumes from a revision
/// the new stream has not reached).
const FEED_CHECK: Duration = Duration::from_secs(5);

/// A watched bucket's entry, tagged with the bucket.
type Watched = (FeedBucket, Result<kv::Entry, kv::WatcherError>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedBucket {
    Providers,
    Meta,
}

impl JetStreamStore {
    /// Where both buckets stand now.
    async fn positions(&self) -> StoreResult<Cursor> {
        Ok(Cursor {
            providers: self.providers.position().await?,
            meta: self.meta.position().await?,
        })
    }

    /// The shared records now, and where each bucket stood before they were read (a watch
    /// from there on sees every change the reads may have missed).
    async fn shared_snapshot(&self) -> StoreResult<(SharedSnapshot, Cursor)> {
        let cursor = self.positions().await?;
        let mut providers = Vec::new();
        for key in self.providers.keys().await? {
            if let Some((record, seq)) = self.providers.get_raw::<ProviderRecord>(&key).await? {
                providers.push((cursor.providers.revision(seq), record));
            }
        }
        let signing_keys = self
            .meta
            .get_raw::<Vec<SigningKeyRecord>>(&Bucket::key(SIGNING_KEYS))
            .await?
            .map(|(keys, seq)| (cursor.meta.revision(seq), keys));
        Ok((
            SharedSnapshot {
                providers,
                signing_keys,
            },
            cursor,
        ))
    }

    /// Watches both buckets from `cursor` on and turns each change into a feed event, until
    /// the follower goes. async-nats's watch survives reconnects by itself; when it fails
    /// anyway (an error, a stream that ended), the watches are opened again from the last
    /// revision delivered. Every [`FEED_CHECK`] (and after a failure) the feed checks it can
    /// resume where it is; where it cannot (a bucket was re-created), a new snapshot
    /// replaces the follower's view.
    async fn follow_from(self, mut cursor: Cursor, tx: tokio::sync::mpsc::Sender<FeedEvent>) {
        use futures::StreamExt;
        let mut failures = 0u32;
        loop {
            if let Some(fresh) = self.resync_if_needed(cursor, &tx).await {
                cursor = fresh;
            }
            if tx.is_closed() {
                return;
            }
            let opened = tokio::select! {
                () = tx.closed() => return,
                opened = self.open_watches(cursor) => opened,
            };
            let mut changes = match opened {
                Ok(changes) => {
                    if failures > 0 {
                        tracing::info!("following the shared records again");
                        let _ = tx.send(FeedEvent::Connected(true)).await;
                    }
                    failures = 0;
                    changes
                }
                Err(error) => {
                    if failures == 0 {
                        tracing::warn!(%error, "cannot watch the shared records; retrying");
                        let _ = tx.send(FeedEvent::Connected(false)).await;
                    }
                    failures += 1;
                    tokio::time::sleep(feed_backoff(failures)).await;
                    continue;
                }
            };
            let mut check = tokio::time::interval(FEED_CHECK);
            check.tick().await;
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = changes.next() => next,
                    _ = check.tick() => {
                        if self.check(cursor).await != cursor {
                            break;
                        }
                        continue;
                    }
                };
                let Some((bucket, entry)) = next else {
                    failures += 1;
                    break;
                };
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(error) => {
                        tracing::warn!(%error, "the shared records' watch failed; resuming");
                        failures += 1;
                        break;
                    }
                };
                let event = match bucket {
                    FeedBucket::Providers => {
                        cursor.providers.last = cursor.providers.last.max(entry.revision);
                        provider_event(&entry, cursor.providers.revision(entry.revision))
                    }
                    FeedBucket::Meta => {
                        cursor.meta.last = cursor.meta.last.max(entry.revision);
                        keys_event(&entry, cursor.meta.revision(entry.revision))
                    }
                };
                match event {
                    Ok(Some(event)) => {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(error) => tracing::error!(%error, "cannot read a changed shared record"),
                }
            }
            if failures > 0 {
                let _ = tx.send(FeedEvent::Connected(false)).await;
                tokio::time::sleep(feed_backoff(failures)).await;
            }
        }
    }

    /// `cursor` when the feed can resume from it, else where the buckets stand now (a
    /// resync is due). When the buckets cannot be asked, `cursor` (keep going).
    async fn check(&self, cursor: Cursor) -> Cursor {
        match self.positions().await {
            Ok(now)
                if !cursor.providers.resumable(&now.providers)
                    || !cursor.meta.resumable(&now.meta) =>
            {
                now
            }
            _ => cursor,
        }
    }

    /// Sends a new snapshot when the feed cannot resume from `cursor`; the new cursor when it
    /// did. (When the buckets cannot be asked, the watches will tell when they can.)
    async fn resync_if_needed(
        &self,
        cursor: Cursor,
        tx: &tokio::sync::mpsc::Sender<FeedEvent>,
    ) -> Option<Cursor> {
        if self.check(cursor).await == cursor {
            return None;
        }
        tracing::warn!("the shared records cannot be followed from where the feed was (a bucket was re-created?); reading them whole again");
        match self.shared_snapshot().await {
            Ok((snapshot, fresh)) => {
                if tx.send(FeedEvent::Snapshot(snapshot)).await.is_err() {
                    return None;
                }
                Some(fresh)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the shared records");
                None
            }
        }
    }

    /// Both watches from after `cursor`, merged.
    async fn open_watches(
        &self,
        cursor: Cursor,
    ) -> StoreResult<futures::stream::BoxStream<'static, Watched>> {
        use futures::StreamExt;
        let providers = self
            .providers
            .kv
            .watch_all_from_revision(cursor.providers.last + 1)
            .await
            .map_err(|e| self.providers.error("watch", e))?
            .map(|entry| (FeedBucket::Providers, entry));
        let meta = self
            .meta
            .kv
            .watch_from_revision(Bucket::key(SIGNING_KEYS), cursor.meta.last + 1)
            .await
            .map_err(|e| self.meta.error("watch", e))?
            .map(|entry| (FeedBucket::Meta, entry));
        Ok(futures::stream::select(providers, meta).boxed())
    }
}

/// How long the feed waits before watching again after its `failures`-th failure in a row.
fn feed_backoff(failures: u32) -> Duration {
    Duration::from_millis(100 * u64::from(failures.min(20)))
}

fn provider_event(entry: &kv::Entry, revision: Revision) -> StoreResult<Option<FeedEvent>> {
    let id = Bucket::raw_key(&entry.key)?;
    let record = match entry.operation {
        Operation::Put => Some(Box::new(decode::<ProviderRecord>(&entry.value)?)),
        Operation::Delete | Operation::Purge => None,
    };
    Ok(Some(FeedEvent::Provider {
        id,
        revision,
        record,
    }))
}

fn keys_event(entry: &kv::Entry, revision: Revision) -> StoreResult<Option<FeedEvent>> {
    if entry.operation != Operation::Put {
        return Ok(None);
    }
    Ok(Some(FeedEvent::SigningKeys {
        revision,
        keys: decode(&entry.value)?,
    }))
}

#[async_trait]
impl Store for JetStreamStore {
    async fn put_pending(&self, state: &str, pending: &PendingLogin) -> StoreResult<()> {
        let key = pending_key(state)
            .ok_or_else(|| StoreError::Corrupt("a login state in the wrong format".into()))?;
        self.pending.put_raw(&key, pending).await
    }

    async fn take_pending(&self, state: &str) -> StoreResult<Option<PendingLogin>> {
        let Some(key) = pending_key(state) else {
            return Ok(None);
        };
        let Some((pending, rev)) = self.pending.get_raw::<PendingLogin>(&key).await? else {
            return Ok(None);
        };
        // Of any number of daemons racing, the one whose delete names the revision wins.
        if self.pending.delete_raw(&key, Some(rev)).await? {
            Ok(Some(pending))
        } else {
            Ok(None)
        }
    }

    async fn sweep_pending(&self, _now: i64) -> StoreResult<usize> {
        // The bucket's max age forgets expired logins on its own.
        Ok(0)
    }

    async fn commit_login(&self, write: &LoginWrite) -> StoreResult<LoginCommit> {
        let ikey = identity_key(&write.provider, &write.profile.subject);
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let Some(commit) = self.try_login(write, &ikey).await? else {
                continue;
            };
            if let Some(record) = &write.tokens {
                self.tokens.put(&ikey, record).await?;
            }
            // The family before the session that names it.
            let family = FamilyRecord {
                user_id: commit.user.id.clone(),
                created_at: write.now,
                revoked_at: None,
            };
            self.families.put(&write.session.family_id, &family).await?;
            let session = SessionRecord {
                user_id: commit.user.id.clone(),
                ..write.session.clone()
            };
            self.sessions.put(&write.session_key, &session).await?;
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

    async fn get_session(&self, session_key: &str) -> StoreResult<Option<SessionRecord>> {
        self.sessions.get(session_key).await
    }

    async fn get_family(&self, family_id: &str) -> StoreResult<Option<FamilyRecord>> {
        self.families.get(family_id).await
    }

    async fn rotate_session(
        &self,
        old_key: &str,
        new_key: &str,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<Rotation> {
        for attempt in 0..MAX_ATTEMPTS {
            contended(attempt).await;
            let (old, old_rev) = self.sessions.slot::<SessionRecord>(old_key).await?;
            let Some(mut old) = old else {
                return Ok(Rotation::Refused);
            };
            let (family, family_rev) = self.families.slot::<FamilyRecord>(&old.family_id).await?;
            let Some(mut family) = family else {
                return Ok(Rotation::Refused);
            };
            if family.revoked_at.is_some() || old.expires_at < now {
                return Ok(Rotation::Refused);
            }
            if old.used_at.is_some() {
                family.revoked_at = Some(now);
                if self
                    .families
                    .swap(&old.family_id, &family, family_rev)
                    .await?
                {
                    return Ok(Rotation::Reused {
                        user_id: old.user_id,
                        family_id: old.family_id,
                    });
                }
                continue;
            }
            // The new token first: until the old one is spent nobody knows the new one, so a
            // crash here leaves only an unreachable record.
            let new = SessionRecord {
                user_id: old.user_id.clone(),
                family_id: old.family_id.clone(),
                created_at: now,
                expires_at,
                used_at: None,
            };
            self.sessions.put(new_key, &new).await?;
            old.used_at = Some(now);
            if self.sessions.swap(old_key, &old, old_rev).await? {
                return Ok(Rotation::Rotated {
                    user_id: old.user_id,
                    family_id: old.family_id,
                });
            }
            // Spent meanwhile by someone else: the next round sees it used.
            self.sessions.delete(new_key, None).await?;
        }
        Err(contention())
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
            let Some(mut family) = family else {
                return Ok(None);
            };
            if family.revoked_at.is_some() {
                return Ok(None);
            }
            family.revoked_at = Some(now);
            if self.families.swap(&session.family_id, &family, rev).await? {
                return Ok(Some((session.user_id, session.family_id)));
            }
        }
        Err(contention())
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
        self.tokens
            .put(&identity_key(provider, subject), tokens)
            .await
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
            if links.len() <= 1 {
                return Err(StoreError::Conflict(
                    "this is the user's last identity; it cannot be unlinked".into(),
                ));
            }
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
        let version = current.map(|c| c.version);
        if version != expected {
            return Err(StoreError::Conflict(format!(
                "provider `{id}` changed meanwhile (version {version:?}, expected {expected:?})"
            )));
        }
        let seq = self
            .providers
            .swap_unique(id, record, rev)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("provider `{id}` changed meanwhile")))?;
        self.providers.revision(seq).await
    }

    async fn delete_provider(&self, id: &str, expected: u64) -> StoreResult<Revision> {
        let (current, rev) = self.providers.slot::<ProviderRecord>(id).await?;
        let Some(current) = current else {
            return Err(StoreError::NotFound(format!("provider `{id}`")));
        };
        if current.version != expected || !self.providers.delete(id, Some(rev)).await? {
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
            let mut keys = keys.unwrap_or_default();
            for old in keys.iter_mut().filter(|k| k.retired_at.is_none()) {
                old.retired_at = Some(now);
            }
            keys.push(key.clone());
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

    async fn import(&self, snapshot: &Snapshot) -> StoreResult<()> {
        use futures::StreamExt;
        if !self.users.keys().await?.is_empty()
            || self
                .meta
                .get::<serde_json::Value>(SIGNING_KEYS)
                .await?
                .is_some()
        {
            return Err(StoreError::Conflict(
                "the target store is not empty (it has users or a signing key)".into(),
            ));
        }
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

    async fn try_lease(&self, name: &str, ttl: Duration) -> StoreResult<Option<Lease>> {
        let now = now_ms();
        let (held, rev) = self.leases.slot::<LeaseRecord>(name).await?;
        if held.is_some_and(|h| h.expires_at_ms > now) {
            return Ok(None);
        }
        let record = LeaseRecord {
            holder: self.holder.clone(),
            expires_at_ms: now + ttl.as_millis() as i64,
        };
        match self.leases.swap_rev(name, &record, rev).await? {
            Some(revision) => Ok(Some(Lease {
                name: name.to_owned(),
                revision,
            })),
            None => Ok(None),
        }
    }

    async fn renew_lease(&self, lease: &mut Lease, ttl: Duration) -> StoreResult<bool> {
        let record = LeaseRecord {
            holder: self.holder.clone(),
            expires_at_ms: now_ms() + ttl.as_millis() as i64,
        };
        match self
            .leases
            .swap_rev(&lease.name, &record, lease.revision)
            .await?
        {
            Some(revision) => {
                lease.revision = revision;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn release_lease(&self, lease: Lease) -> StoreResult<()> {
        // Only if still ours: a lease that lapsed and was taken is the new holder's.
        self.leases
            .delete(&lease.name, Some(lease.revision))
            .await?;
        Ok(())
    }
}

/// Finds or creates bucket `bucket`'s stream with `config` (turning direct gets off on one
/// created otherwise), then opens it as a bucket.
async fn ensure_kv_stream(
    js: &async_nats::jetstream::Context,
    ops: &async_nats::jetstream::Context,
    config: &stream::Config,
    bucket: &str,
) -> Result<kv::Store, String> {
    match js.get_stream(&config.name).await {
        Ok(existing) if existing.cached_info().config.allow_direct => {
            let mut updated = existing.cached_info().config.clone();
            updated.allow_direct = false;
            js.update_stream(updated).await.map_err(|e| e.to_string())?;
        }
        Ok(_) => {}
        // An identical config created by another daemon meanwhile is accepted.
        Err(_) => {
            js.create_stream(config.clone())
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    ops.get_key_value(bucket).await.map_err(|e| e.to_string())
}

const SIGNING_KEYS: &str = "signing_keys";

#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    expires_at_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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

/// A pending login's key: its expiry and the state's hash (never the state itself).
fn pending_key(state: &str) -> Option<String> {
    state_key(state).map(|k| URL_SAFE_NO_PAD.encode(k))
}

/// One bucket. Keys are arbitrary strings, stored base64url-encoded (JetStream keys allow
/// only `[-/_=.a-zA-Z0-9]`); `*_raw` methods take an already-encoded key.
#[derive(Debug, Clone)]
struct Bucket {
    kv: kv::Store,
    name: String,
}

impl Bucket {
    fn key(raw: &str) -> String {
        URL_SAFE_NO_PAD.encode(raw.as_bytes())
    }

    /// The key a bucket key stands for.
    fn raw_key(key: &str) -> StoreResult<String> {
        URL_SAFE_NO_PAD
            .decode(key)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| StoreError::Corrupt(format!("bucket key {key:?}")))
    }

    async fn get<T: DeserializeOwned>(&self, key: &str) -> StoreResult<Option<T>> {
        Ok(self.get_raw(&Self::key(key)).await?.map(|(v, _)| v))
    }

    /// The live value and its revision.
    async fn get_raw<T: DeserializeOwned>(&self, key: &str) -> StoreResult<Option<(T, u64)>> {
        match self.slot_raw(key).await? {
            (Some(value), rev) => Ok(Some((value, rev))),
            (None, _) => Ok(None),
        }
    }

    /// The live value, if any, and the revision a write must name to replace what is there
    /// (0 when the key never existed; a deleted key's tombstone otherwise).
    async fn slot<T: DeserializeOwned>(&self, key: &str) -> StoreResult<(Option<T>, u64)> {
        self.slot_raw(&Self::key(key)).await
    }

    async fn slot_raw<T: DeserializeOwned>(&self, key: &str) -> StoreResult<(Option<T>, u64)> {
        let mut attempt = 0;
        let entry = loop {
            match self.kv.entry(key).await {
                Ok(entry) => break entry,
                Err(e) => self.transient(&mut attempt, "read", e).await?,
            }
        };
        match entry {
            Some(entry) if entry.operation == Operation::Put => {
                Ok((Some(decode(&entry.value)?), entry.revision))
            }
            Some(entry) => Ok((None, entry.revision)),
            None => Ok((None, 0)),
        }
    }

    async fn put<T: Serialize>(&self, key: &str, value: &T) -> StoreResult<()> {
        self.put_raw(&Self::key(key), value).await
    }

    async fn put_raw<T: Serialize>(&self, key: &str, value: &T) -> StoreResult<()> {
        let value = encode(value)?;
        let mut attempt = 0;
        loop {
            match self.kv.put(key, value.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) => self.transient(&mut attempt, "write", e).await?,
            }
        }
    }

    /// Writes `value` if the key is still at `revision` (see [`slot`](Self::slot)); false
    /// when another writer got there first.
    async fn swap<T: Serialize>(&self, key: &str, value: &T, revision: u64) -> StoreResult<bool> {
        Ok(self.swap_rev(key, value, revision).await?.is_some())
    }

    async fn swap_rev<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: u64,
    ) -> StoreResult<Option<u64>> {
        self.swap_checked(key, value, revision, false).await
    }

    /// [`swap_rev`](Self::swap_rev) for a value no other writer can produce (it carries an id
    /// or version of this write's own). A try whose answer was lost (a timeout while a
    /// leader moved) may have been applied: when the retry then finds the key moved on, and
    /// to exactly this value, the write is this one's, not a lost race. (Never for values two
    /// writers could both make, such as a spent refresh token: one of them would then wrongly
    /// believe it won.)
    async fn swap_unique<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: u64,
    ) -> StoreResult<Option<u64>> {
        self.swap_checked(key, value, revision, true).await
    }

    async fn swap_checked<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: u64,
        unique: bool,
    ) -> StoreResult<Option<u64>> {
        let (key, value) = (Self::key(key), encode(value)?);
        let mut attempt = 0;
        loop {
            match self.kv.update(&key, value.clone(), revision).await {
                Ok(revision) => return Ok(Some(revision)),
                Err(e) if lost_race(e.kind(), &e) => {
                    if unique && attempt > 0 {
                        if let Ok(Some(entry)) = self.kv.entry(&key).await {
                            if entry.operation == Operation::Put && entry.value == value {
                                return Ok(Some(entry.revision));
                            }
                        }
                    }
                    return Ok(None);
                }
                Err(e) => self.transient(&mut attempt, "write", e).await?,
            }
        }
    }

    /// Creates the key; `None` when it exists, or when another writer raced this one (the
    /// caller reads again). A deleted key may be created again.
    async fn create<T: Serialize>(&self, key: &str, value: &T) -> StoreResult<Option<u64>> {
        // One round trip for a key that never existed (the usual case: a new user's claims);
        // a read only when it did, to tell a tombstone (which may be replaced) from a value.
        if let Some(revision) = self.swap_rev(key, value, 0).await? {
            return Ok(Some(revision));
        }
        match self.slot::<serde_json::Value>(key).await? {
            (Some(_), _) => Ok(None),
            (None, 0) => Ok(None),
            (None, tombstone) => self.swap_rev(key, value, tombstone).await,
        }
    }

    /// Deletes the key (if still at `revision`, when given); false when it was not.
    async fn delete(&self, key: &str, revision: Option<u64>) -> StoreResult<bool> {
        self.delete_raw(&Self::key(key), revision).await
    }

    async fn delete_raw(&self, key: &str, revision: Option<u64>) -> StoreResult<bool> {
        let mut attempt = 0;
        loop {
            match self.kv.delete_expect_revision(key, revision).await {
                Ok(()) => return Ok(true),
                Err(e) if lost_race(e.kind(), &e) => return Ok(false),
                Err(e) => self.transient(&mut attempt, "delete", e).await?,
            }
        }
    }

    /// Every live record with its (decoded) key.
    async fn entries<T: DeserializeOwned>(&self) -> StoreResult<Vec<(String, T)>> {
        let mut out = Vec::new();
        for key in self.keys().await? {
            if let Some((record, _)) = self.get_raw::<T>(&key).await? {
                out.push((Self::raw_key(&key)?, record));
            }
        }
        Ok(out)
    }

    /// The revision of this bucket's change `seq`, in the bucket as it is now (its epoch is
    /// the stream's creation time: one more request, on the rare writes that need it).
    async fn revision(&self, seq: u64) -> StoreResult<Revision> {
        Ok(self.position().await?.revision(seq))
    }

    /// Which stream the bucket is and its newest revision (the stream's last sequence).
    async fn position(&self) -> StoreResult<Position> {
        let info = self
            .kv
            .stream
            .get_info()
            .await
            .map_err(|e| self.error("read the state of", e))?;
        Ok(Position {
            created: info.created,
            last: info.state.last_sequence,
        })
    }

    /// Every live key, encoded.
    async fn keys(&self) -> StoreResult<Vec<String>> {
        let keys = self.kv.keys().await.map_err(|e| self.error("list", e))?;
        keys.try_collect().await.map_err(|e| self.error("list", e))
    }

    /// After a failed operation: waits and returns `Ok` to have it tried again, while the
    /// failure may pass (a stream's leader lost with its node, and a new one being elected,
    /// takes a few seconds), or returns the error. A write retried after a timeout may have
    /// been applied the first time: a put is the same again, and a revision-checked write
    /// then finds its own revision gone and reports a lost race, which callers handle by
    /// reading again.
    async fn transient(
        &self,
        attempt: &mut u32,
        what: &str,
        error: impl std::fmt::Display,
    ) -> StoreResult<()> {
        *attempt += 1;
        if *attempt > TRANSIENT_ATTEMPTS {
            return Err(self.error(what, error));
        }
        if *attempt == 1 {
            tracing::warn!(bucket = %self.name, %error, "JetStream {what} failed; retrying");
        }
        let backoff = Duration::from_millis(50 * u64::from((*attempt).min(10)));
        tokio::time::sleep(backoff).await;
        Ok(())
    }

    fn error(&self, what: &str, error: impl std::fmt::Display) -> StoreError {
        StoreError::Backend(format!("cannot {what} bucket {}: {error}", self.name))
    }
}

/// How many times a failed bucket operation is tried again (about 8 s of back-off in all, plus
/// up to [`OPERATION_TIMEOUT`] per attempt that goes unanswered, with the
/// back-off): long enough for a replicated stream to elect a new leader.
const TRANSIENT_ATTEMPTS: u32 = 20;

/// Whether a revision-checked write failed because the key had moved on. Clustered streams
/// answer with another error code than single servers for the same condition, which
/// async-nats reports as a generic failure; its text still says so.
fn lost_race(kind: kv::UpdateErrorKind, error: &impl std::fmt::Display) -> bool {
    kind == kv::UpdateErrorKind::WrongLastRevision
        || error.to_string().contains("wrong last sequence")
}

fn encode<T: Serialize>(value: &T) -> StoreResult<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}
