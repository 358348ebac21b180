//! The sled store's waited-for logins (device and hosted): the `waited_logins` tree, keyed
//! by the hex SHA-256 of each login's handle, swept with the logins once forgotten.

use futures::StreamExt;

use super::tx::{backend, decode, encode, get};
use super::SledStore;
use crate::store::{LoginOutcome, LoginWatch, StoreError, StoreResult, WaitedLogin};

impl SledStore {
    pub(super) async fn put_waited(&self, key: &str, login: &WaitedLogin) -> StoreResult<()> {
        let swapped = self
            .waited_logins
            .compare_and_swap(key, None::<&[u8]>, Some(encode(login)?))
            .map_err(backend)?;
        if swapped.is_err() {
            return Err(StoreError::Conflict(format!("waited-for login {key}")));
        }
        self.durable().await
    }

    pub(super) fn get_waited(&self, key: &str) -> StoreResult<Option<WaitedLogin>> {
        get(&self.waited_logins, key.as_bytes())
    }

    /// Swaps in the outcome only over a record that has none, so exactly one ending wins.
    pub(super) async fn end_waited(&self, key: &str, outcome: &LoginOutcome) -> StoreResult<bool> {
        loop {
            let Some(old) = self.waited_logins.get(key).map_err(backend)? else {
                return Ok(false);
            };
            let mut record: WaitedLogin = decode(&old)?;
            if record.outcome.is_some() {
                return Ok(false);
            }
            record.outcome = Some(outcome.clone());
            let swapped = self
                .waited_logins
                .compare_and_swap(key, Some(old), Some(encode(&record)?))
                .map_err(backend)?;
            if swapped.is_ok() {
                self.durable().await?;
                return Ok(true);
            }
        }
    }

    pub(super) fn watch_waited(&self, key: &str) -> LoginWatch {
        let subscriber = self.waited_logins.watch_prefix(key.as_bytes());
        futures::stream::unfold(subscriber, |mut subscriber| async move {
            (&mut subscriber).await.map(|_| ((), subscriber))
        })
        .boxed()
    }

    /// Deletes the waited-for logins a store may forget at `now`.
    pub(super) fn sweep_waited(&self, now: i64) -> StoreResult<usize> {
        let mut swept = 0;
        for entry in self.waited_logins.iter() {
            let (key, value) = entry.map_err(backend)?;
            let record: WaitedLogin = decode(&value)?;
            if record.forget_after() < now {
                self.waited_logins.remove(key).map_err(backend)?;
                swept += 1;
            }
        }
        Ok(swept)
    }
}
