//! The sled store's login records: the ids of spent login states (kept until their states
//! expire), and the previous version's pending logins while any are left.

use super::tx::{backend, decode, encode};
use super::{SledStore, PENDING};
use crate::store::{expiry_bytes, state_key, PendingLogin, StoreError, StoreResult};

impl SledStore {
    /// [`Store::spend_login`](crate::store::Store::spend_login).
    pub(super) async fn spend(&self, id: &[u8; 16], expires_at: i64) -> StoreResult<bool> {
        let mut key = [0u8; 24];
        key[..8].copy_from_slice(&expiry_bytes(expires_at));
        key[8..].copy_from_slice(id);
        // Of any number of racing callers, one swaps the empty slot.
        let spent = self
            .spent
            .compare_and_swap(key, None::<&[u8]>, Some(&[][..]))
            .map_err(backend)?
            .is_ok();
        if spent {
            self.durable().await?;
        }
        Ok(spent)
    }

    /// [`Store::put_pending`](crate::store::Store::put_pending).
    pub(super) async fn put_previous(
        &self,
        state: &str,
        pending: &PendingLogin,
    ) -> StoreResult<()> {
        let key = state_key(state)
            .ok_or_else(|| StoreError::Corrupt("a login state in the wrong format".into()))?;
        {
            let mut legacy = self.legacy();
            let tree = match legacy.as_ref() {
                Some(tree) => tree.clone(),
                None => legacy
                    .insert(self.db.open_tree(PENDING).map_err(backend)?)
                    .clone(),
            };
            tree.insert(key, encode(pending)?).map_err(backend)?;
        }
        self.durable().await
    }

    /// [`Store::take_pending`](crate::store::Store::take_pending).
    pub(super) fn take_previous(&self, state: &str) -> StoreResult<Option<PendingLogin>> {
        // `remove` is atomic: of any number of racing callers, one sees the old value. Not
        // flushed here: the login's commit flush (or the caller's `flush` on failure) makes
        // the removal durable before anyone hears back.
        let Some(key) = state_key(state) else {
            return Ok(None);
        };
        let legacy = self.legacy();
        let Some(tree) = legacy.as_ref() else {
            return Ok(None);
        };
        match tree.remove(key).map_err(backend)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// [`Store::sweep_logins`](crate::store::Store::sweep_logins).
    pub(super) async fn sweep_expired(&self, now: i64) -> StoreResult<usize> {
        let mut removed = sweep(&self.spent, now)?;
        {
            let mut legacy = self.legacy();
            if let Some(tree) = legacy.as_ref() {
                removed += sweep(tree, now)?;
                // This version writes none: once the previous version's are gone, so is
                // their tree.
                if tree.is_empty() {
                    self.db.drop_tree(PENDING).map_err(backend)?;
                    *legacy = None;
                    tracing::info!(
                        "the previous version's pending logins have all expired; tree dropped"
                    );
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            self.durable().await?;
        }
        Ok(removed)
    }

    /// [`Store::forget_previous_logins`](crate::store::Store::forget_previous_logins).
    pub(super) async fn forget_previous(&self, now: i64) -> StoreResult<usize> {
        let removed = {
            let mut legacy = self.legacy();
            let Some(tree) = legacy.as_ref() else {
                return Ok(0);
            };
            let removed = sweep(tree, now)?;
            if !tree.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "{} logins of the previous version may still finish; try again once they \
                     expired (pending_ttl_secs)",
                    tree.len()
                )));
            }
            self.db.drop_tree(PENDING).map_err(backend)?;
            *legacy = None;
            removed
        };
        self.durable().await?;
        Ok(removed)
    }

    /// The previous version's tree of pending logins, if it is still there.
    fn legacy(&self) -> std::sync::MutexGuard<'_, Option<sled::Tree>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Deletes the entries of a tree keyed by expiry that expired before `now`.
fn sweep(tree: &sled::Tree, now: i64) -> StoreResult<usize> {
    // Keys lead with the expiry: read only the ones that expired before `now`.
    let mut removed = 0;
    for entry in tree.range(..expiry_bytes(now)) {
        let (key, _) = entry.map_err(backend)?;
        // One consumed meanwhile is not counted twice.
        if tree.remove(&key).map_err(backend)?.is_some() {
            removed += 1;
        }
    }
    Ok(removed)
}
