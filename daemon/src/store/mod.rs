//! Persistence: the [`Store`] trait the rest of the daemon uses, its records, and its two
//! backends: [`SledStore`] (embedded, one daemon) and [`JetStreamStore`] (NATS JetStream
//! key-value buckets, shared by every daemon of a queue group). The store knows nothing of
//! HTTP, and only the JetStream backend of NATS.
//!
//! Every method is async; each multi-record change is one method (a sled transaction, or a
//! chain of revision-checked compare-and-swaps on JetStream); single-use state is "take" (a
//! delete only one caller can win); create-if-absent replaces read-then-write. The rules a
//! change must follow are decided in `policy/`, once for both backends; the conformance
//! suite (`tests/it/store/`) runs the same cases against each.

mod jetstream;
pub(crate) mod policy;
mod sled;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

mod records;

pub use self::sled::SledStore;
pub use jetstream::{JetStreamOptions, JetStreamStore};
pub(crate) use policy::{decode, email_key, encode, username_base};
pub(crate) use records::identity_key;
pub use records::*;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A new identity's email belongs to another user and the linking policy refuses it.
    #[error("an account already holds this email")]
    AccountExists,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The user is disabled (`admin.user.disable`) and may not log in.
    #[error("the user is disabled")]
    Disabled,
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A record of those every daemon keeps in memory, as the change feed names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SharedKey {
    /// An admin-created provider instance, by id.
    Provider(String),
    /// The session signing keys (one record: the whole ring).
    SigningKeys,
}

/// Where a shared record stands in the store. Revisions grow with every change to a record,
/// also across a delete and a re-create, so a follower can tell a newer change from a stale
/// one. `seq` counts changes; `epoch` names the store they count in: 0 for sled, the
/// creation time (ns) of the JetStream bucket, so a bucket deleted and made again (its
/// sequence starting over) still compares newer than everything before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub epoch: i128,
    pub seq: u64,
}

impl Revision {
    pub const fn new(epoch: i128, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

/// The shared records as the store holds them now.
#[derive(Debug, Clone, Default)]
pub struct SharedSnapshot {
    pub providers: Vec<(Revision, ProviderRecord)>,
    /// The signing keys and their revision (none before the first start).
    pub signing_keys: Option<(Revision, Vec<SigningKeyRecord>)>,
}

/// What a store's change feed delivers, in order.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// Everything the feed covers, as it is now: the follower makes its view exactly this
    /// (what is not in it was deleted). The first event, and again after a resync (the feed
    /// could not resume where it left off, e.g. a bucket was re-created).
    Snapshot(SharedSnapshot),
    /// Provider `id` changed at `revision`: it is now `record`, or was deleted (`None`).
    /// The record is the newest the store had when the change was read, which may be newer
    /// than `revision`; a later event then follows.
    Provider {
        id: String,
        revision: Revision,
        record: Option<Box<ProviderRecord>>,
    },
    /// The signing keys changed at `revision`.
    SigningKeys {
        revision: Revision,
        keys: Vec<SigningKeyRecord>,
    },
    /// The feed lost its connection to the store (`false`) or is following again (`true`);
    /// changes made meanwhile arrive after it reconnects.
    Connected(bool),
}

/// The receiving end of a change feed, and the store's task that feeds it.
#[derive(Debug)]
pub struct Feed {
    events: tokio::sync::mpsc::Receiver<FeedEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Feed {
    /// A feed fed by `task` through `events`.
    pub fn new(
        events: tokio::sync::mpsc::Receiver<FeedEvent>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Self { events, task }
    }

    /// The next event; `None` when the store's task ended.
    pub async fn recv(&mut self) -> Option<FeedEvent> {
        self.events.recv().await
    }

    /// Stops the store's task and waits until it is gone (it holds the store open: a sled
    /// database can be opened again once this returns).
    pub async fn close(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Changes to one waited-for login ([`Store::watch_waited_login`]).
pub type LoginWatch = futures::stream::BoxStream<'static, ()>;

/// How many feed events may wait for the follower before the store's task waits.
pub const FEED_BUFFER: usize = 1024;

/// A lease on a name, held across every daemon that shares the store until released or
/// until its time runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    /// The store's revision of the lease record (0 for a store used by one process).
    pub revision: u64,
}

/// The daemon's persistence. A method that returns `Ok` after a write has made it durable.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Marks a login's state spent, durably, before its callback goes to the provider:
    /// `true` for the one call that spent it, of any number racing on any daemon sharing
    /// the store; `false` once spent. The mark is kept at least until `expires_at`, after
    /// which the state itself is refused.
    async fn spend_login(&self, id: &[u8; 16], expires_at: i64) -> StoreResult<bool>;

    /// Records a started login under its state (stored hashed), as the previous version
    /// did at every login start. Nothing in the daemon writes these any more: kept so the
    /// upgrade path (such logins still finish, [`take_pending`](Store::take_pending)) stays
    /// tested, and goes with it.
    async fn put_pending(&self, state: &str, pending: &PendingLogin) -> StoreResult<()>;

    /// Removes and returns the pending login the previous version recorded for `state`.
    /// However many callers race, exactly one gets it. Expiry is the caller's to check. The
    /// removal is durable only after the next durable write or [`flush`](Store::flush): a
    /// login commits right after, and a failed callback must flush before it answers.
    async fn take_pending(&self, state: &str) -> StoreResult<Option<PendingLogin>>;

    /// Deletes spent-state marks, pending logins and NATS connection notes that expired
    /// before `now`; returns how many. sled, which one process owns, also drops the previous
    /// version's tree once it is empty; JetStream's buckets forget expired entries by their
    /// max age.
    async fn sweep_logins(&self, now: i64) -> StoreResult<usize>;

    /// Deletes the previous version's pending logins' tree or bucket, once no daemon of that
    /// version runs (none can tell on its own: `lanyard store forget-pending` is the
    /// operator's); refused (`Conflict`) while any of them is unexpired. Returns how many
    /// expired ones went with it.
    async fn forget_previous_logins(&self, now: i64) -> StoreResult<usize>;

    /// Creates or updates the user and identity for a provider login and stores the new
    /// session, atomically and durably.
    async fn commit_login(&self, write: &LoginWrite) -> StoreResult<LoginCommit>;

    /// Makes every write so far durable.
    async fn flush(&self) -> StoreResult<()>;

    async fn get_user(&self, user_id: &str) -> StoreResult<Option<UserRecord>>;

    async fn user_identities(&self, user_id: &str) -> StoreResult<Vec<IdentityRecord>>;

    async fn get_family(&self, family_id: &str) -> StoreResult<Option<FamilyRecord>>;

    /// Exchanges the refresh token stored under `old_key` for the successor
    /// `terms.candidates[0]`, atomically and durably, and notes the refresh on its family.
    /// A token used before answers its successor again within the grace; otherwise it
    /// revokes its whole family. A disabled or missing user's tokens are refused.
    async fn rotate_session(&self, old_key: &str, terms: &RefreshTerms) -> StoreResult<Rotation>;

    /// Revokes the family of the refresh token stored under `key`; returns its user and
    /// family when there was one to revoke.
    async fn revoke_session(&self, key: &str, now: i64) -> StoreResult<Option<(String, String)>>;

    /// Every session family of the user (live, revoked and expired; the caller picks), by
    /// id, oldest first.
    async fn user_families(&self, user_id: &str) -> StoreResult<Vec<(String, FamilyRecord)>>;

    /// Adds every session family to its user's index (idempotent; the store did it once
    /// when this version first opened it): for families a daemon of the previous version
    /// made during a rolling upgrade. Returns how many families there are.
    async fn index_sessions(&self) -> StoreResult<usize>;

    /// Revokes family `family_id` of user `user_id`, durably; false when there is no such
    /// family of that user or it was revoked already.
    async fn revoke_family(&self, user_id: &str, family_id: &str, now: i64) -> StoreResult<bool>;

    /// Notes that the auth callout is admitting `connection` with a session of family
    /// `family_id`, before it checks the session is live: a revocation that this check
    /// misses then finds the note ([`nats_connections`](Store::nats_connections)). On
    /// JetStream the note is acknowledged; sled writes it with the next flush (a crash
    /// before that loses it, and such a connection then lasts until its user JWT expires).
    async fn put_nats_connection(
        &self,
        family_id: &str,
        connection: &NatsConnection,
    ) -> StoreResult<()>;

    /// Takes back a note whose connection was refused.
    async fn delete_nats_connection(
        &self,
        family_id: &str,
        connection: &NatsConnection,
    ) -> StoreResult<()>;

    /// The noted connections of family `family_id` that have not expired at `now`.
    async fn nats_connections(&self, family_id: &str, now: i64)
        -> StoreResult<Vec<NatsConnection>>;

    /// Stores a new waited-for login (device or hosted) under `key` (its handle's hex SHA-256), durably;
    /// `Conflict` when the key is taken.
    async fn put_waited_login(&self, key: &str, login: &WaitedLogin) -> StoreResult<()>;

    /// The waited-for login under `key`, unless the store forgot it
    /// ([`WaitedLogin::forget_after`]; it may still be there after that).
    async fn waited_login(&self, key: &str) -> StoreResult<Option<WaitedLogin>>;

    /// Records, durably, how the waited-for login under `key` ended: exactly once of any number
    /// of racing calls on any daemon (false for the others, and when it is gone).
    async fn end_waited_login(&self, key: &str, outcome: &LoginOutcome) -> StoreResult<bool>;

    /// A stream that yields whenever the waited-for login under `key` may have changed (read it
    /// again to see how). Subscribe before the first read, so no change falls between.
    async fn watch_waited_login(&self, key: &str) -> StoreResult<LoginWatch>;

    /// A page of users, in id order ([`UserQuery`]).
    async fn list_users(&self, query: &UserQuery) -> StoreResult<UserPage>;

    /// Disables the user from `disabled_at` (`Some`), or enables it (`None`), durably;
    /// returns the user as it is now, `None` for an unknown user. Disabling one already
    /// disabled keeps its first time.
    async fn set_user_disabled(
        &self,
        user_id: &str,
        disabled_at: Option<i64>,
    ) -> StoreResult<Option<UserRecord>>;

    /// Erases the user: first marks it disabled (so nothing new starts for it), then removes
    /// every identity and its provider tokens, every session family with its refresh-token
    /// records and NATS connection notes, the email and username claims and the user,
    /// durably. `None` for an unknown user.
    /// Safe to run again after a failure part-way.
    async fn erase_user(&self, user_id: &str, now: i64) -> StoreResult<Option<Erased>>;

    /// The user's identity at `provider` and the tokens stored for it.
    async fn get_tokens(
        &self,
        user_id: &str,
        provider: &str,
    ) -> StoreResult<Option<(IdentityRecord, Option<TokenRecord>)>>;

    /// Replaces the tokens of identity (`provider`, `subject`), durably; `NotFound` (and
    /// nothing kept) when the identity no longer exists.
    async fn put_tokens(
        &self,
        provider: &str,
        subject: &str,
        tokens: &TokenRecord,
    ) -> StoreResult<()>;

    /// Removes the user's identity at `provider` and its tokens, atomically and durably;
    /// returns them. Refuses (`Conflict`) to remove a user's last identity.
    async fn unlink_identity(
        &self,
        user_id: &str,
        provider: &str,
    ) -> StoreResult<Option<(IdentityRecord, Option<TokenRecord>)>>;

    async fn list_providers(&self) -> StoreResult<Vec<ProviderRecord>>;

    async fn get_provider(&self, id: &str) -> StoreResult<Option<ProviderRecord>>;

    /// Writes a provider if the stored one has version `expected` (`None`: there must be
    /// none); `Conflict` otherwise. Returns the revision the change feed reports it under.
    async fn put_provider(
        &self,
        record: &ProviderRecord,
        expected: Option<u64>,
    ) -> StoreResult<Revision>;

    /// Deletes a provider if the stored one has version `expected`; `Conflict` otherwise.
    /// Returns a revision at or after the deletion's in the change feed.
    async fn delete_provider(&self, id: &str, expected: u64) -> StoreResult<Revision>;

    /// The signing keys, oldest first. When there are none yet, stores `candidate` first;
    /// concurrent first starts agree on one key.
    async fn signing_keys(&self, candidate: SigningKeyRecord)
        -> StoreResult<Vec<SigningKeyRecord>>;

    /// The signing keys as stored now, and their revision (read, never created).
    async fn current_signing_keys(&self) -> StoreResult<(Revision, Vec<SigningKeyRecord>)>;

    /// Adds `key` as the signing key and retires the current one at `now`; returns the keys
    /// and the revision of the change.
    async fn rotate_signing_key(
        &self,
        key: SigningKeyRecord,
        now: i64,
    ) -> StoreResult<(Revision, Vec<SigningKeyRecord>)>;

    /// Follows the shared records ([`SharedKey`]): a [`FeedEvent::Snapshot`] first, then
    /// the changes any process makes, in order for each record. A backend that keeps only
    /// each record's newest change (JetStream) may skip a change that a newer one replaced
    /// before the feed read it: a follower gets every record's newest state, not every step. Where the store is
    /// reached over a network, the feed resumes after a lost connection from the last
    /// revision it delivered, or sends a new snapshot when it cannot.
    async fn follow(&self) -> StoreResult<Feed>;

    /// Everything but pending logins, for copying to another store.
    async fn export(&self) -> StoreResult<Snapshot>;

    /// Writes a snapshot into this store, which must hold no users and no signing keys yet
    /// (`Conflict` otherwise): a copy, never a merge.
    async fn import(&self, snapshot: &Snapshot) -> StoreResult<()>;

    /// Reports operation times to the daemon's `metrics` from now on (a store is opened
    /// before they exist). The default reports nothing.
    fn attach_metrics(&self, _metrics: &std::sync::Arc<crate::metrics::Metrics>) {}

    /// Takes lease `name` for `ttl` unless another holder has it (`None`). The default suits
    /// a store one process uses alone (sled): the caller's in-process lock is the lease.
    async fn try_lease(&self, name: &str, _ttl: std::time::Duration) -> StoreResult<Option<Lease>> {
        Ok(Some(Lease {
            name: name.to_owned(),
            revision: 0,
        }))
    }

    /// Extends a held lease by `ttl` from now; false when it lapsed and was taken.
    async fn renew_lease(
        &self,
        _lease: &mut Lease,
        _ttl: std::time::Duration,
    ) -> StoreResult<bool> {
        Ok(true)
    }

    /// Gives a lease up (if it is still ours).
    async fn release_lease(&self, _lease: Lease) -> StoreResult<()> {
        Ok(())
    }
}

/// A login's state: its expiry (seconds, 8 bytes big-endian) then 32 random bytes, in
/// unpadded base64url. Carrying the expiry lets a store keep pending logins in expiry order
/// (a sweep reads only what expired) and still find one from the state alone. The expiry is
/// no secret; the random part is the state's strength.
pub fn new_state(expires_at: i64, random: [u8; 32]) -> String {
    let mut bytes = [0u8; 40];
    bytes[..8].copy_from_slice(&expiry_bytes(expires_at));
    bytes[8..].copy_from_slice(&random);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The key a pending login is stored under: its state's expiry, then the state's SHA-256,
/// so the store never holds a usable state. `None` for a string no login ever issued.
pub fn state_key(state: &str) -> Option<[u8; 40]> {
    let mut bytes = [0u8; 40];
    match URL_SAFE_NO_PAD.decode_slice(state, &mut bytes) {
        Ok(40) => {}
        _ => return None,
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, state.as_bytes());
    bytes[8..].copy_from_slice(digest.as_ref());
    Some(bytes)
}

/// An expiry as the big-endian prefix of pending-login keys (negative times sort first).
pub fn expiry_bytes(expires_at: i64) -> [u8; 8] {
    u64::try_from(expires_at).unwrap_or(0).to_be_bytes()
}

/// Lower-case hex SHA-256.
pub fn hex_sha256(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
