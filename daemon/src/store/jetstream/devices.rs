//! The JetStream store's device-flow logins: the `device_logins` bucket, keyed by the hex
//! SHA-256 of each login's handle. The bucket forgets a record [`DEVICE_BUCKET_AGE`] after
//! its last write, which covers the longest login and the time an ended one stays readable.

use std::time::Duration;

use futures::StreamExt;

use super::{Bucket, JetStreamStore};
use crate::store::{
    DeviceLoginRecord, DeviceOutcome, DeviceWatch, StoreError, StoreResult, DEVICE_LOGIN_KEPT_SECS,
    DEVICE_LOGIN_MAX_SECS,
};

/// How long the bucket keeps a record after its last write.
pub(super) const DEVICE_BUCKET_AGE: Duration =
    Duration::from_secs((DEVICE_LOGIN_MAX_SECS + DEVICE_LOGIN_KEPT_SECS + 60) as u64);

impl JetStreamStore {
    pub(super) async fn put_device(&self, key: &str, login: &DeviceLoginRecord) -> StoreResult<()> {
        match self.device_logins.create(key, login).await? {
            Some(_) => Ok(()),
            None => Err(StoreError::Conflict(format!("device login {key}"))),
        }
    }

    pub(super) async fn get_device(&self, key: &str) -> StoreResult<Option<DeviceLoginRecord>> {
        self.device_logins.get(key).await
    }

    /// A revision-checked write over a record that has no outcome yet: one ending wins.
    pub(super) async fn end_device(&self, key: &str, outcome: &DeviceOutcome) -> StoreResult<bool> {
        loop {
            let (Some(mut record), revision) =
                self.device_logins.slot::<DeviceLoginRecord>(key).await?
            else {
                return Ok(false);
            };
            if record.outcome.is_some() {
                return Ok(false);
            }
            record.outcome = Some(outcome.clone());
            // The outcome carries its own time and sealed reply: no other writer makes it.
            if self
                .device_logins
                .swap_unique(key, &record, revision)
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
    }

    pub(super) async fn watch_device(&self, key: &str) -> StoreResult<DeviceWatch> {
        let watch = self
            .device_logins
            .kv
            .watch(Bucket::key(key))
            .await
            .map_err(|e| self.device_logins.error("watch", e))?;
        Ok(watch.map(|_| ()).boxed())
    }
}
