//! Shared state as a change feed. Each daemon follows the store's feed ([`Store::follow`])
//! and hands every change to the part of the daemon that owns that state: stored provider
//! instances to the provider supervisor (which starts, replaces or stops their actors), the
//! signing keys to the key ring. So a change made through any daemon is applied by every
//! daemon, and one that starts later, or reconnects after an outage, catches up.
//!
//! What each change became on this daemon is recorded in [`Applied`] (applied.rs).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::applied::{Applied, NotServing};
use crate::providers::Providers;
use crate::sessions::Sessions;
use crate::store::{FeedEvent, Revision, SharedKey, SharedSnapshot, Store, StoreError};

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
