//! One key-value bucket with the operations the JetStream store builds its changes from, and
//! the stream each bucket is.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::feed::Position;
use super::{JetStreamOptions, OPERATION_TIMEOUT};
use crate::store::{Revision, StoreError, StoreResult};
use async_nats::jetstream::context::GetStreamErrorKind;

/// Finds or creates bucket `bucket`'s stream with `config` (turning direct gets off on one
/// created otherwise), then opens it as a bucket.
pub(super) async fn ensure_kv_stream(
    js: &async_nats::jetstream::Context,
    ops: &async_nats::jetstream::Context,
    config: &stream::Config,
    bucket: &str,
) -> Result<kv::Store, String> {
    match js.get_stream(&config.name).await {
        // Reads must go to the leader; and records that must live a login's lifetime must not
        // be forgotten sooner (the lifetime grew since the bucket was made).
        Ok(existing)
            if existing.cached_info().config.allow_direct
                || shorter(existing.cached_info().config.max_age, config.max_age) =>
        {
            let mut updated = existing.cached_info().config.clone();
            updated.allow_direct = false;
            if shorter(updated.max_age, config.max_age) {
                updated.max_age = config.max_age;
            }
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

/// Whether a stream's `max_age` forgets records sooner than `wanted` (zero: never).
fn shorter(max_age: Duration, wanted: Duration) -> bool {
    !max_age.is_zero() && (wanted.is_zero() || max_age < wanted)
}

/// One bucket. Keys are arbitrary strings, stored base64url-encoded (JetStream keys allow
/// only `[-/_=.a-zA-Z0-9]`); `*_raw` methods take an already-encoded key.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    pub(super) kv: kv::Store,
    pub(super) name: String,
    /// For a scan's inbox.
    client: async_nats::Client,
    /// Where operation times go, once the daemon's metrics exist.
    metrics: crate::metrics::MetricsSlot,
}

impl Bucket {
    pub(super) fn key(raw: &str) -> String {
        URL_SAFE_NO_PAD.encode(raw.as_bytes())
    }

    /// The key a bucket key stands for.
    pub(super) fn raw_key(key: &str) -> StoreResult<String> {
        URL_SAFE_NO_PAD
            .decode(key)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| StoreError::Corrupt(format!("bucket key {key:?}")))
    }

    pub(super) async fn get<T: DeserializeOwned>(&self, key: &str) -> StoreResult<Option<T>> {
        Ok(self.get_raw(&Self::key(key)).await?.map(|(v, _)| v))
    }

    /// The live value and its revision.
    pub(super) async fn get_raw<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> StoreResult<Option<(T, u64)>> {
        match self.slot_raw(key).await? {
            (Some(value), rev) => Ok(Some((value, rev))),
            (None, _) => Ok(None),
        }
    }

    /// The live value, if any, and the revision a write must name to replace what is there
    /// (0 when the key never existed; a deleted key's tombstone otherwise).
    pub(super) async fn slot<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> StoreResult<(Option<T>, u64)> {
        self.slot_raw(&Self::key(key)).await
    }

    /// Reports an operation that began at `began`.
    fn timed(&self, operation: &str, began: std::time::Instant) {
        if let Some(metrics) = self.metrics.get() {
            metrics.store_operation("jetstream", operation, began.elapsed().as_secs_f64());
        }
    }

    pub(super) async fn slot_raw<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> StoreResult<(Option<T>, u64)> {
        let began = std::time::Instant::now();
        let mut attempt = 0;
        let entry = loop {
            match self.kv.entry(key).await {
                Ok(entry) => break entry,
                Err(e) => self.transient(&mut attempt, "read", e).await?,
            }
        };
        self.timed("read", began);
        match entry {
            Some(entry) if entry.operation == Operation::Put => {
                Ok((Some(decode(&entry.value)?), entry.revision))
            }
            Some(entry) => Ok((None, entry.revision)),
            None => Ok((None, 0)),
        }
    }

    pub(super) async fn put<T: Serialize>(&self, key: &str, value: &T) -> StoreResult<()> {
        self.put_raw(&Self::key(key), value).await
    }

    pub(super) async fn put_raw<T: Serialize>(&self, key: &str, value: &T) -> StoreResult<()> {
        let value = encode(value)?;
        let began = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            match self.kv.put(key, value.clone()).await {
                Ok(_) => {
                    self.timed("write", began);
                    return Ok(());
                }
                Err(e) => self.transient(&mut attempt, "write", e).await?,
            }
        }
    }

    /// Writes `value` if the key is still at `revision` (see [`slot`](Self::slot)); false
    /// when another writer got there first.
    pub(super) async fn swap<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: u64,
    ) -> StoreResult<bool> {
        Ok(self.swap_rev(key, value, revision).await?.is_some())
    }

    pub(super) async fn swap_rev<T: Serialize>(
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
    pub(super) async fn swap_unique<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: u64,
    ) -> StoreResult<Option<u64>> {
        self.swap_checked(key, value, revision, true).await
    }

    pub(super) async fn swap_checked<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        revision: u64,
        unique: bool,
    ) -> StoreResult<Option<u64>> {
        let (key, value) = (Self::key(key), encode(value)?);
        let began = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            match self.kv.update(&key, value.clone(), revision).await {
                Ok(revision) => {
                    self.timed("write", began);
                    return Ok(Some(revision));
                }
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
    pub(super) async fn create<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> StoreResult<Option<u64>> {
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
    pub(super) async fn delete(&self, key: &str, revision: Option<u64>) -> StoreResult<bool> {
        self.delete_raw(&Self::key(key), revision).await
    }

    pub(super) async fn delete_raw(&self, key: &str, revision: Option<u64>) -> StoreResult<bool> {
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
    pub(super) async fn entries<T: DeserializeOwned>(&self) -> StoreResult<Vec<(String, T)>> {
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
    pub(super) async fn revision(&self, seq: u64) -> StoreResult<Revision> {
        Ok(self.position().await?.revision(seq))
    }

    /// Which stream the bucket is and its newest revision (the stream's last sequence).
    pub(super) async fn position(&self) -> StoreResult<Position> {
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

    /// Every live entry whose (encoded) key starts with `prefix` (`""`: all), as encoded key
    /// and value (empty when `values` is false): one ordered consumer reading the newest
    /// message of each key, not a request per key.
    pub(super) async fn scan(
        &self,
        prefix: &str,
        values: bool,
    ) -> StoreResult<Vec<(String, Bytes)>> {
        use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
        let subjects = format!("{}{prefix}>", self.kv.prefix);
        let scan = async {
            let consumer = self
                .kv
                .stream
                .create_consumer(OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    filter_subject: subjects,
                    headers_only: !values,
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(|e| self.error("scan", e))?;
            let mut out = Vec::new();
            if consumer.cached_info().num_pending == 0 {
                return Ok(out);
            }
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| self.error("scan", e))?;
            while let Some(message) = messages
                .try_next()
                .await
                .map_err(|e| self.error("scan", e))?
            {
                let pending = message.info().map_err(|e| self.error("scan", e))?.pending;
                let live = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_none_or(|op| op.as_str() == "PUT");
                if live {
                    let key = message.subject.strip_prefix(self.kv.prefix.as_str());
                    out.push((key.unwrap_or_default().to_owned(), message.payload.clone()));
                }
                if pending == 0 {
                    break;
                }
            }
            Ok(out)
        };
        tokio::time::timeout(SCAN_LIMIT, scan)
            .await
            .map_err(|_| self.error("scan", "it took too long"))?
    }

    /// Removes key `key` (encoded) and every trace of it, its name included, from the
    /// bucket's stream: what an erasure does where a delete would leave a marker under the
    /// key (a user's id, an email) behind.
    pub(super) async fn erase_raw(&self, key: &str) -> StoreResult<()> {
        let subject = format!("{}{key}", self.kv.prefix);
        let mut attempt = 0;
        loop {
            match self.kv.stream.purge().filter(subject.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) => self.transient(&mut attempt, "erase from", e).await?,
            }
        }
    }

    /// [`erase_raw`](Self::erase_raw) for a key not yet encoded.
    pub(super) async fn erase(&self, key: &str) -> StoreResult<()> {
        self.erase_raw(&Self::key(key)).await
    }

    /// Every live key, encoded.
    pub(super) async fn keys(&self) -> StoreResult<Vec<String>> {
        let keys = self.kv.keys().await.map_err(|e| self.error("list", e))?;
        keys.try_collect().await.map_err(|e| self.error("list", e))
    }

    /// After a failed operation: waits and returns `Ok` to have it tried again, while the
    /// failure may pass (a stream's leader lost with its node, and a new one being elected,
    /// takes a few seconds), or returns the error. A write retried after a timeout may have
    /// been applied the first time: a put is the same again, and a revision-checked write
    /// then finds its own revision gone and reports a lost race, which callers handle by
    /// reading again.
    pub(super) async fn transient(
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

    pub(super) fn error(&self, what: &str, error: impl std::fmt::Display) -> StoreError {
        StoreError::Backend(format!("cannot {what} bucket {}: {error}", self.name))
    }
}

/// How long a [`Bucket::scan`] may take (a million records stream in well under it).
const SCAN_LIMIT: Duration = Duration::from_secs(60);

/// How many times a failed bucket operation is tried again (about 8 s of back-off in all, plus
/// up to [`OPERATION_TIMEOUT`] per attempt that goes unanswered, with the
/// back-off): long enough for a replicated stream to elect a new leader.
pub(super) const TRANSIENT_ATTEMPTS: u32 = 20;

/// Whether a revision-checked write failed because the key had moved on. Clustered streams
/// answer with another error code than single servers for the same condition, which
/// async-nats reports as a generic failure; its text still says so.
pub(super) fn lost_race(kind: kv::UpdateErrorKind, error: &impl std::fmt::Display) -> bool {
    kind == kv::UpdateErrorKind::WrongLastRevision
        || error.to_string().contains("wrong last sequence")
}

/// A record as a message payload.
fn encode<T: Serialize>(value: &T) -> StoreResult<Bytes> {
    crate::store::encode(value).map(Bytes::from)
}

pub(super) use crate::store::decode;

/// How this deployment's buckets are made and opened.
#[derive(Debug, Clone)]
pub(super) struct Buckets {
    /// For creating streams: patient, since a cluster's metadata takes a moment.
    js: async_nats::jetstream::Context,
    /// For reads and writes.
    ops: async_nats::jetstream::Context,
    client: async_nats::Client,
    options: JetStreamOptions,
    /// Shared with every bucket: set once the daemon's metrics exist.
    pub(super) metrics: crate::metrics::MetricsSlot,
}

impl Buckets {
    pub(super) fn new(client: async_nats::Client, options: &JetStreamOptions) -> Self {
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
            .build(client.clone());
        Self {
            js,
            ops,
            client,
            options: options.clone(),
            metrics: crate::metrics::MetricsSlot::default(),
        }
    }

    /// How long a login's records live: its lifetime, plus a minute for clocks that differ.
    pub(super) fn login_age(&self) -> Duration {
        self.options.pending_ttl + Duration::from_secs(60)
    }

    fn name(&self, name: &str) -> String {
        format!("{}_{name}", self.options.bucket_prefix)
    }

    /// The bucket `name`, created if missing (or with a `max_age` shorter than asked).
    pub(super) async fn open(&self, name: &str, max_age: Duration) -> StoreResult<Bucket> {
        // Boxed: the store opens a dozen buckets in one function, and a debug build gives
        // each awaited future its own stack slot there (async-nats' stream creation is
        // large): unboxed, opening the store took most of a 2 MiB thread stack.
        Box::pin(self.create_or_open(name, max_age)).await
    }

    async fn create_or_open(&self, name: &str, max_age: Duration) -> StoreResult<Bucket> {
        let bucket = self.name(name);
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
            num_replicas: self.options.replicas,
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
        let kv = loop {
            attempt += 1;
            match ensure_kv_stream(&self.js, &self.ops, &config, &bucket).await {
                Ok(kv) => break kv,
                Err(error) if attempt >= 10 => {
                    return Err(StoreError::Backend(format!(
                        "cannot create bucket {bucket}: {error}"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Ok(Bucket {
            kv,
            name: bucket,
            client: self.client.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// The bucket `name` if it exists (never created).
    pub(super) async fn open_existing(&self, name: &str) -> StoreResult<Option<Bucket>> {
        let bucket = self.name(name);
        match self.js.get_stream(format!("KV_{bucket}")).await {
            Ok(_) => Ok(Some(self.open(name, self.login_age()).await?)),
            Err(error)
                if matches!(error.kind(), GetStreamErrorKind::JetStream(e)
                    if e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(None)
            }
            Err(error) => Err(StoreError::Backend(format!(
                "cannot look for bucket {bucket}: {error}"
            ))),
        }
    }

    /// Deletes the bucket `name`.
    pub(super) async fn delete(&self, name: &str) -> StoreResult<()> {
        let bucket = self.name(name);
        self.js
            .delete_stream(format!("KV_{bucket}"))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Backend(format!("cannot delete bucket {bucket}: {e}")))
    }
}
