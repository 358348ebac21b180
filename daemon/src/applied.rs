//! [`Applied`]: which revision of each shared record this daemon serves, or why it does not.
//! The feed's follower and the supervisor record it; a command that changed shared state (an
//! admin command) answers only once its change serves here. Its own module so that those who
//! record and those who wait depend on it, not on each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::ConfigError;
use crate::store::{Revision, SharedKey, StoreError};

/// What became of a change on this daemon: it serves it, or why it cannot.
pub type Outcome = Result<(), NotServing>;

/// Why a change does not serve on this daemon. Cloned to everyone waiting on it, hence the
/// shared errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotServing {
    /// The provider instance cannot be built here (its plugin, its secret, its endpoints).
    #[error("{0}")]
    Build(Arc<ConfigError>),
    /// The signing keys cannot be installed (a key does not open with this master key).
    #[error("{0}")]
    Keys(Arc<StoreError>),
}

/// Which revision of each shared record this daemon serves. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Applied {
    state: Arc<watch::Sender<AppliedState>>,
}

#[derive(Debug)]
struct AppliedState {
    revisions: HashMap<SharedKey, (Revision, Outcome)>,
    /// Whether the feed follows the store now (false while it reconnects).
    following: bool,
}

impl Default for Applied {
    fn default() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(AppliedState {
                revisions: HashMap::new(),
                following: true,
            })),
        }
    }
}

impl Applied {
    /// Records that `key` serves as of `revision` (or could not: `outcome`). An older
    /// revision than the one recorded changes nothing.
    pub fn mark(&self, key: SharedKey, revision: Revision, outcome: Outcome) {
        self.state.send_if_modified(|state| {
            let newer = state
                .revisions
                .get(&key)
                .is_none_or(|(known, _)| *known <= revision);
            if newer {
                state.revisions.insert(key, (revision, outcome));
            }
            newer
        });
    }

    /// Waits until `key` serves as of `revision` or later, at most `limit`; its outcome, or
    /// `None` when it did not happen in time.
    pub async fn wait(
        &self,
        key: &SharedKey,
        revision: Revision,
        limit: Duration,
    ) -> Option<Outcome> {
        self.until(key, revision, limit, false).await
    }

    /// As [`wait`](Self::wait), looking past a failure there (a build tried again may yet
    /// work): `Ok` once it serves, else the last outcome seen.
    pub async fn wait_ok(
        &self,
        key: &SharedKey,
        revision: Revision,
        limit: Duration,
    ) -> Option<Outcome> {
        self.until(key, revision, limit, true).await
    }

    async fn until(
        &self,
        key: &SharedKey,
        revision: Revision,
        limit: Duration,
        only_ok: bool,
    ) -> Option<Outcome> {
        let reached =
            |(r, outcome): &(Revision, Outcome)| *r >= revision && (!only_ok || outcome.is_ok());
        let mut state = self.state.subscribe();
        let _ = tokio::time::timeout(
            limit,
            state.wait_for(|s| s.revisions.get(key).is_some_and(reached)),
        )
        .await;
        let state = self.state.borrow();
        let (r, outcome) = state.revisions.get(key)?;
        (*r >= revision).then(|| outcome.clone())
    }

    pub(crate) fn set_following(&self, following: bool) {
        self.state.send_if_modified(|state| {
            let changed = state.following != following;
            state.following = following;
            changed
        });
    }

    /// Whether the feed follows the store now, for `admin.status`.
    pub fn following(&self) -> bool {
        self.state.borrow().following
    }
}
