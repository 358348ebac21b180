//! The JetStream store's change feed: watches on the shared buckets, resumed from a cursor,
//! with a snapshot again whenever the feed cannot resume.

use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};

use super::bucket::{decode, Bucket};
use super::{JetStreamStore, SIGNING_KEYS};
use crate::store::{
    FeedEvent, ProviderRecord, Revision, SharedSnapshot, SigningKeyRecord, StoreResult,
};

/// Where the change feed stands in each bucket it follows: which stream it is (buckets are
/// streams; one deleted and made again has another creation time and starts its revisions
/// over) and the last revision delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    pub(super) providers: Position,
    pub(super) meta: Position,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) created: time::OffsetDateTime,
    /// The last change delivered (or, of a bucket as it is now, its last change).
    pub(super) last: u64,
}

impl Position {
    /// The revision of change `seq` in this bucket.
    pub(super) fn revision(&self, seq: u64) -> Revision {
        Revision::new(self.created.unix_timestamp_nanos(), seq)
    }

    /// Whether the feed can go on from here in a bucket now at `now`: the same stream, and
    /// not behind what was delivered (JetStream keeps each key's newest change, tombstones
    /// included, so every change after `last` that still matters is there to watch).
    pub(super) fn resumable(&self, now: &Position) -> bool {
        self.created == now.created && now.last >= self.last
    }
}

/// How often the feed checks that it can still resume where it is (a bucket re-created
/// meanwhile would otherwise go unnoticed: the client's own watch resumes from a revision
/// the new stream has not reached).
pub(super) const FEED_CHECK: Duration = Duration::from_secs(5);

/// A watched bucket's entry, tagged with the bucket.
pub(super) type Watched = (FeedBucket, Result<kv::Entry, kv::WatcherError>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FeedBucket {
    Providers,
    Meta,
}

impl JetStreamStore {
    /// Where both buckets stand now.
    pub(super) async fn positions(&self) -> StoreResult<Cursor> {
        Ok(Cursor {
            providers: self.providers.position().await?,
            meta: self.meta.position().await?,
        })
    }

    /// The shared records now, and where each bucket stood before they were read (a watch
    /// from there on sees every change the reads may have missed).
    pub(super) async fn shared_snapshot(&self) -> StoreResult<(SharedSnapshot, Cursor)> {
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
    ///
    /// Long because it is one state machine (open the watches, follow them, check, back
    /// off, resync) whose states share the cursor; split, each piece would pass it around
    /// and hide the order the recovery depends on.
    pub(super) async fn follow_from(
        self,
        mut cursor: Cursor,
        tx: tokio::sync::mpsc::Sender<FeedEvent>,
    ) {
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
                if let Some(metrics) = self.buckets.metrics.get() {
                    let lag = time::OffsetDateTime::now_utc() - entry.created;
                    metrics.feed_lag(lag.as_seconds_f64());
                }
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
    pub(super) async fn check(&self, cursor: Cursor) -> Cursor {
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
    pub(super) async fn resync_if_needed(
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
    pub(super) async fn open_watches(
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
pub(super) fn feed_backoff(failures: u32) -> Duration {
    Duration::from_millis(100 * u64::from(failures.min(20)))
}

pub(super) fn provider_event(
    entry: &kv::Entry,
    revision: Revision,
) -> StoreResult<Option<FeedEvent>> {
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

pub(super) fn keys_event(entry: &kv::Entry, revision: Revision) -> StoreResult<Option<FeedEvent>> {
    if entry.operation != Operation::Put {
        return Ok(None);
    }
    Ok(Some(FeedEvent::SigningKeys {
        revision,
        keys: decode(&entry.value)?,
    }))
}
