//! The JetStream store's waited-for logins (device and hosted): the `waited_logins` bucket,
//! keyed by the hex SHA-256 of each login's handle. The bucket forgets a record
//! [`WAITED_BUCKET_AGE`] after its last write, which covers the longest login (a device
//! login's; a hosted one lives no longer than a login state) and the time an ended one stays
//! readable.

use std::time::Duration;

use futures::StreamExt;

use super::{Bucket, JetStreamStore};
use crate::store::{
    LoginOutcome, LoginWatch, StoreError, StoreResult, WaitedLogin, LOGIN_KEPT_SECS,
    WAITED_LOGIN_MAX_SECS,
};

/// How long the bucket keeps a record after its last write.
pub(super) const WAITED_BUCKET_AGE: Duration =
    Duration::from_secs((WAITED_LOGIN_MAX_SECS + LOGIN_KEPT_SECS + 60) as u64);

impl JetStreamStore {
    pub(super) async fn put_waited(&self, key: &str, login: &WaitedLogin) -> StoreResult<()> {
        match self.waited_logins.create(key, login).await? {
            Some(_) => Ok(()),
            None => Err(StoreError::Conflict(format!("waited-for login {key}"))),
        }
    }

    pub(super) async fn get_waited(&self, key: &str) -> StoreResult<Option<WaitedLogin>> {
        self.waited_logins.get(key).await
    }

    /// A revision-checked write over a record that has no outcome yet: one ending wins.
    pub(super) async fn end_waited(&self, key: &str, outcome: &LoginOutcome) -> StoreResult<bool> {
        loop {
            let (Some(mut record), revision) = self.waited_logins.slot::<WaitedLogin>(key).await?
            else {
                return Ok(false);
            };
            if record.outcome.is_some() {
                return Ok(false);
            }
            record.outcome = Some(outcome.clone());
            // The outcome carries its own time and sealed reply: no other writer makes it.
            if self
                .waited_logins
                .swap_unique(key, &record, revision)
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
    }

    pub(super) async fn watch_waited(&self, key: &str) -> StoreResult<LoginWatch> {
        let watch = self
            .waited_logins
            .kv
            .watch(Bucket::key(key))
            .await
            .map_err(|e| self.waited_logins.error("watch", e))?;
        Ok(watch.map(|_| ()).boxed())
    }
}
