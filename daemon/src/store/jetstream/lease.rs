//! Leases on JetStream: a record in the `_leases` bucket, taken and renewed with
//! revision-checked writes, so one daemon holds a name at a time (the bucket's max age
//! frees what a dead holder kept).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JetStreamStore;
use crate::store::{Lease, StoreResult};

/// A lease's record: who holds it, until when.
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

impl JetStreamStore {
    pub(super) async fn take_lease(&self, name: &str, ttl: Duration) -> StoreResult<Option<Lease>> {
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

    pub(super) async fn extend_lease(&self, lease: &mut Lease, ttl: Duration) -> StoreResult<bool> {
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

    pub(super) async fn give_up_lease(&self, lease: Lease) -> StoreResult<()> {
        // Only if still ours: a lease that lapsed and was taken is the new holder's.
        self.leases
            .delete(&lease.name, Some(lease.revision))
            .await?;
        Ok(())
    }
}
