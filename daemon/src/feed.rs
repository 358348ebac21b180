//! Shared state as a change feed. Each daemon follows the store's feed ([`Store::follow`])
//! and hands every change to the part of the daemon that owns that state: stored provider
//! instances to the provider supervisor (which starts, replaces or stops their actors), the
//! signing keys to the key ring. So a change made through any daemon is applied by every
//! daemon, and one that starts later, or reconnects after an outage, catches up.
//!
//! [`Applied`] records which revision of each shared record this daemon serves: a command
//! that changed one (an admin command) answers only once its change serves here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ConfigError;
use crate::providers::Providers;
use crate::sessions::Sessions;
use crate::store::{FeedEvent, Revision, SharedKey, SharedSnapshot, Store, StoreError};

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

    fn set_following(&self, following: bool) {
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

/// How long a daemon starting up waits for the stored providers to be built.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Follows the store's change feed for the daemon's life.
#[derive(Debug)]
pub struct Follower {
    task: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Follower {
    /// Starts following. Returns once the first snapshot is in (the signing keys installed,
    /// every stored provider started or found unable to run here), so a daemon serves what
    /// the store holds before it takes requests.
    pub async fn start(
        store: &dyn Store,
        sessions: Arc<Sessions>,
        providers: Providers,
        applied: Applied,
    ) -> Result<Self, StoreError> {
        let mut feed = store.follow().await?;
        let Some(FeedEvent::Snapshot(first)) = feed.recv().await else {
            return Err(StoreError::Backend(
                "the store's change feed did not start with a snapshot".into(),
            ));
        };
        let waits: Vec<(SharedKey, Revision)> = first
            .providers
            .iter()
            .map(|(revision, record)| (SharedKey::Provider(record.config.id.clone()), *revision))
            .collect();
        let this = Apply {
            sessions,
            providers,
            applied: applied.clone(),
        };
        this.snapshot(first);
        for (key, revision) in waits {
            if applied.wait(&key, revision, START_LIMIT).await.is_none() {
                tracing::warn!(?key, "a stored provider was not ready at start-up");
            }
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    event = feed.recv() => match event {
                        Some(event) => this.event(event),
                        None => {
                            tracing::error!(
                                "the store's change feed ended; shared changes are not followed"
                            );
                            this.applied.set_following(false);
                            break;
                        }
                    },
                }
            }
            feed.close().await;
        });
        Ok(Self { task, stop })
    }

    /// Stops following, and waits until the store's feed let go of the store.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Hands feed events to the owners of the state they change.
struct Apply {
    sessions: Arc<Sessions>,
    providers: Providers,
    applied: Applied,
}

impl Apply {
    fn event(&self, event: FeedEvent) {
        match event {
            FeedEvent::Snapshot(snapshot) => self.snapshot(snapshot),
            FeedEvent::Provider {
                id,
                revision,
                record,
            } => self.providers.apply(id, revision, record),
            FeedEvent::SigningKeys { revision, keys } => self.keys(revision, &keys, false),
            FeedEvent::Connected(following) => {
                if following {
                    tracing::info!("following the store's changes again");
                } else {
                    tracing::warn!("lost the store's change feed; changes wait until it is back");
                }
                self.applied.set_following(following);
            }
        }
    }

    fn snapshot(&self, snapshot: SharedSnapshot) {
        if let Some((revision, keys)) = snapshot.signing_keys {
            self.keys(revision, &keys, true);
        }
        self.providers.resync(snapshot.providers);
    }

    fn keys(&self, revision: Revision, keys: &[crate::store::SigningKeyRecord], reset: bool) {
        let outcome = self
            .sessions
            .install(revision, keys, reset)
            .map_err(|e| NotServing::Keys(Arc::new(e)));
        if let Err(error) = &outcome {
            tracing::error!(%error, "cannot install the signing keys");
        }
        self.applied.mark(SharedKey::SigningKeys, revision, outcome);
    }
}
