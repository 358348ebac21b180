//! The sled store's device-flow logins: the `device_logins` tree, keyed by the hex SHA-256
//! of each login's handle, swept with the logins once forgotten.

use futures::StreamExt;

use super::tx::{backend, decode, encode, get};
use super::SledStore;
use crate::store::{DeviceLoginRecord, DeviceOutcome, DeviceWatch, StoreError, StoreResult};

impl SledStore {
    pub(super) async fn put_device(&self, key: &str, login: &DeviceLoginRecord) -> StoreResult<()> {
        let swapped = self
            .device_logins
            .compare_and_swap(key, None::<&[u8]>, Some(encode(login)?))
            .map_err(backend)?;
        if swapped.is_err() {
            return Err(StoreError::Conflict(format!("device login {key}")));
        }
        self.durable().await
    }

    pub(super) fn get_device(&self, key: &str) -> StoreResult<Option<DeviceLoginRecord>> {
        get(&self.device_logins, key.as_bytes())
    }

    /// Swaps in the outcome only over a record that has none, so exactly one ending wins.
    pub(super) async fn end_device(&self, key: &str, outcome: &DeviceOutcome) -> StoreResult<bool> {
        loop {
            let Some(old) = self.device_logins.get(key).map_err(backend)? else {
                return Ok(false);
            };
            let mut record: DeviceLoginRecord = decode(&old)?;
            if record.outcome.is_some() {
                return Ok(false);
            }
            record.outcome = Some(outcome.clone());
            let swapped = self
                .device_logins
                .compare_and_swap(key, Some(old), Some(encode(&record)?))
                .map_err(backend)?;
            if swapped.is_ok() {
                self.durable().await?;
                return Ok(true);
            }
        }
    }

    pub(super) fn watch_device(&self, key: &str) -> DeviceWatch {
        let subscriber = self.device_logins.watch_prefix(key.as_bytes());
        futures::stream::unfold(subscriber, |mut subscriber| async move {
            (&mut subscriber).await.map(|_| ((), subscriber))
        })
        .boxed()
    }

    /// Deletes the device logins a store may forget at `now`.
    pub(super) fn sweep_devices(&self, now: i64) -> StoreResult<usize> {
        let mut swept = 0;
        for entry in self.device_logins.iter() {
            let (key, value) = entry.map_err(backend)?;
            let record: DeviceLoginRecord = decode(&value)?;
            if record.forget_after() < now {
                self.device_logins.remove(key).map_err(backend)?;
                swept += 1;
            }
        }
        Ok(swept)
    }
}
