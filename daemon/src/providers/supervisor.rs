//! The provider supervisor: it keeps one provider actor running per instance, restarting a
//! failed one with back-off while the others keep serving, and reconciles the actors to the
//! instances this daemon must serve: those of the config file (fixed for its life) and the
//! stored ones, as the store's change feed reports them (see feed.rs). A created instance
//! starts an actor, an updated one replaces it, a deleted one stops it; building an instance
//! (a bounded plugin call) runs in a task, so the supervisor's mailbox never waits on it.
//!
//! The supervisor alone writes the routing table ([`Providers`](super::Providers) reads it): which actor serves
//! each instance id now. Everything else about an instance is its actor's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;

use super::actor::{ProviderActor, ProviderMsg};
use super::instance::{Described, Instance, InstanceSpec};
use crate::applied::{Applied, NotServing};
use crate::config::ConfigError;
use crate::store::{ProviderRecord, Revision, SharedKey};

/// Turns a stored provider record into what builds it (the vault opens its secret, the
/// plugin set names its plugin); admin.rs knows how records are sealed.
pub trait RecordSpecs: Send + Sync + std::fmt::Debug + 'static {
    fn spec(&self, record: &ProviderRecord) -> Result<InstanceSpec, ConfigError>;
}

/// Which actor serves an instance id on this daemon, and which instance it is (its
/// configuration and generation, fixed for the actor's life).
#[derive(Debug, Clone)]
pub(super) struct Route {
    /// `None` while the actor restarts, or when the instance cannot run here.
    pub(super) actor: Option<ActorRef<ProviderMsg>>,
    pub(super) kind: String,
    pub(super) described: Option<Described>,
    /// Why the instance does not run on this daemon (it failed to build here).
    pub(super) down: Option<String>,
}

pub(super) type Routes = Arc<HashMap<String, Route>>;

/// Messages to the supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// From the change feed: stored provider `id` is `record` as of `revision` (`None`:
    /// deleted).
    Apply {
        id: String,
        revision: Revision,
        record: Option<Box<ProviderRecord>>,
    },
    /// From the change feed: every stored provider as it is now; the others are gone.
    Resync(Vec<(Revision, ProviderRecord)>),
    /// A build of a stored provider finished (`attempt` counts its failed predecessors).
    Built {
        id: String,
        revision: Revision,
        record: Box<ProviderRecord>,
        result: Result<Arc<Instance>, ConfigError>,
        attempt: u32,
    },
    /// Replace this actor of an instance now (it panicked, or a plugin call overran);
    /// answers once the new one serves. A request about an actor already replaced is a
    /// no-op, so a burst of faults from one old actor restarts it once.
    Restart(String, ActorId, RpcReplyPort<()>),
    /// Start an instance's actor again after its back-off.
    Respawn(String),
}

/// An instance this daemon serves.
#[derive(Debug)]
struct Slot {
    instance: Arc<Instance>,
    actor: Option<ActorRef<ProviderMsg>>,
    /// The stored record it runs (`None` for the config file's).
    record: Option<(String, u64)>,
}

pub(super) struct Supervisor;

pub(super) struct SupervisorState {
    slots: HashMap<String, Slot>,
    /// Instance ids the config file defines: they win over stored ones.
    from_config: HashSet<String>,
    /// The revision of each stored instance this daemon has taken in.
    revisions: HashMap<String, Revision>,
    /// Builds in progress or to be tried again: the revision each is for.
    building: HashMap<String, Revision>,
    /// Stored instances that failed to build here, and why.
    down: HashMap<String, (String, String)>,
    by_actor: HashMap<ActorId, String>,
    failures: HashMap<String, (u32, Instant)>,
    routes: watch::Sender<Routes>,
    specs: Arc<dyn RecordSpecs>,
    applied: Applied,
    /// Handed to each actor, which counts its calls to the provider there.
    metrics: Arc<crate::metrics::Metrics>,
}

/// What the supervisor starts with.
pub(super) struct SupervisorArgs {
    pub(super) from_config: Vec<Arc<Instance>>,
    pub(super) specs: Arc<dyn RecordSpecs>,
    pub(super) applied: Applied,
    pub(super) routes: watch::Sender<Routes>,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
}

impl SupervisorState {
    /// Publishes the routing table as the slots now are.
    fn publish(&self) {
        let mut routes: HashMap<String, Route> = self
            .slots
            .iter()
            .map(|(id, slot)| {
                (
                    id.clone(),
                    Route {
                        actor: slot.actor.clone(),
                        kind: slot.instance.kind().to_owned(),
                        described: Some(slot.instance.describe()),
                        down: None,
                    },
                )
            })
            .collect();
        for (id, (kind, why)) in &self.down {
            routes.entry(id.clone()).or_insert_with(|| Route {
                actor: None,
                kind: kind.clone(),
                described: None,
                down: Some(why.clone()),
            });
        }
        self.routes.send_replace(Arc::new(routes));
    }

    /// Starts an actor for `instance` under `id`, replacing the one there; the new one
    /// serves before the old one stops.
    async fn start(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: &str,
        instance: Arc<Instance>,
        record: Option<(String, u64)>,
    ) {
        self.down.remove(id);
        let old = self.slots.insert(
            id.to_owned(),
            Slot {
                instance: instance.clone(),
                actor: None,
                record,
            },
        );
        self.spawn(myself, id).await;
        if let Some(actor) = old.and_then(|slot| slot.actor) {
            self.by_actor.remove(&actor.get_id());
            retire(&actor);
        }
    }

    /// Spawns the actor of slot `id`, publishing its route.
    async fn spawn(&mut self, myself: &ActorRef<SupervisorMsg>, id: &str) {
        let Some(instance) = self.slots.get(id).map(|slot| slot.instance.clone()) else {
            return;
        };
        match Actor::spawn_linked(
            None,
            ProviderActor,
            (instance, myself.clone(), self.metrics.clone()),
            myself.get_cell(),
        )
        .await
        {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), id.to_owned());
                if let Some(slot) = self.slots.get_mut(id) {
                    slot.actor = Some(actor);
                }
                self.publish();
            }
            Err(error) => {
                tracing::error!(provider = id, %error, "cannot start provider actor");
                self.schedule_respawn(myself, id);
            }
        }
    }

    /// Stops instance `id` on purpose (no restart follows) and forgets it.
    fn remove(&mut self, id: &str) {
        self.down.remove(id);
        self.failures.remove(id);
        if let Some(actor) = self.slots.remove(id).and_then(|slot| slot.actor) {
            self.by_actor.remove(&actor.get_id());
            retire(&actor);
        }
        self.publish();
    }

    fn schedule_respawn(&mut self, myself: &ActorRef<SupervisorMsg>, id: &str) {
        let entry = self
            .failures
            .entry(id.to_owned())
            .or_insert((0, Instant::now()));
        // A minute of health forgives earlier failures.
        if entry.1.elapsed() > Duration::from_secs(60) {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = Instant::now();
        let delay =
            Duration::from_millis(50 * 2u64.pow(entry.0.min(10) - 1)).min(Duration::from_secs(30));
        if let Some(slot) = self.slots.get_mut(id) {
            slot.actor = None;
        }
        self.publish();
        tracing::warn!(
            provider = id,
            delay_ms = delay.as_millis() as u64,
            "restarting provider"
        );
        let myself = myself.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = myself.cast(SupervisorMsg::Respawn(id));
        });
    }

    /// Takes in a change of stored instance `id`. `reset`: from a snapshot, which is the
    /// truth whatever revisions came before.
    fn apply(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: String,
        revision: Revision,
        record: Option<ProviderRecord>,
        reset: bool,
    ) {
        let key = SharedKey::Provider(id.clone());
        if self.from_config.contains(&id) {
            if record.is_some() {
                tracing::warn!(provider = %id,
                    "a stored provider has the id of a config-file provider; the file wins");
            }
            self.applied.mark(key, revision, Ok(()));
            return;
        }
        if !reset && self.revisions.get(&id).is_some_and(|r| *r >= revision) {
            // Already taken in: the answering daemon's admin command and the feed both bring
            // its change, a snapshot and the watch may both report one. A build still running
            // for it reports when it serves.
            if !self.building.contains_key(&id) {
                self.applied.mark(key, revision, Ok(()));
            }
            return;
        }
        self.revisions.insert(id.clone(), revision);
        let Some(record) = record else {
            self.building.remove(&id);
            if self.slots.contains_key(&id) || self.down.contains_key(&id) {
                tracing::info!(provider = %id, "provider deleted; stopping it");
                self.remove(&id);
            }
            self.applied.mark(key, revision, Ok(()));
            return;
        };
        let identity = (record.generation.clone(), record.version);
        let running = self
            .slots
            .get(&id)
            .is_some_and(|slot| slot.record.as_ref() == Some(&identity));
        if running {
            self.building.remove(&id);
            self.applied.mark(key, revision, Ok(()));
            return;
        }
        self.building.insert(id.clone(), revision);
        self.build(myself, id, revision, Box::new(record), 0, Duration::ZERO);
    }

    /// Builds stored instance `id` at `revision` in a task (after `delay`), which reports
    /// back with [`SupervisorMsg::Built`].
    fn build(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        id: String,
        revision: Revision,
        record: Box<ProviderRecord>,
        attempt: u32,
        delay: Duration,
    ) {
        let specs = self.specs.clone();
        let myself = myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let result = match specs.spec(&record) {
                Ok(spec) => spec.build().await.map(Arc::new),
                Err(error) => Err(error),
            };
            let _ = myself.cast(SupervisorMsg::Built {
                id,
                revision,
                record,
                result,
                attempt,
            });
        });
    }

    async fn built(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: String,
        revision: Revision,
        record: Box<ProviderRecord>,
        result: Result<Arc<Instance>, ConfigError>,
        attempt: u32,
    ) {
        if self.building.get(&id) != Some(&revision) {
            // A newer change (or a delete) came meanwhile and decides.
            return;
        }
        let key = SharedKey::Provider(id.clone());
        match result {
            Ok(instance) => {
                self.building.remove(&id);
                let identity = (record.generation.clone(), record.version);
                if self.slots.contains_key(&id) {
                    tracing::info!(provider = %id, version = record.version, "provider changed; replacing it");
                } else {
                    tracing::info!(provider = %id, "provider created; starting it");
                }
                self.start(myself, &id, instance, Some(identity)).await;
                self.applied.mark(key, revision, Ok(()));
            }
            Err(error) => {
                // The store says this is the instance now; this daemon cannot run it (its
                // plugin is missing here, or configuring it overran on a busy machine).
                // Serving the old one would disagree with the other daemons: it stops, and
                // requests hear why. The build is tried again, with back-off, until it works
                // or another change replaces it; the first failure is reported at once.
                let delay = Duration::from_millis(100 * 2u64.pow(attempt.min(9))).min(REBUILD_MAX);
                if attempt == 0 {
                    tracing::error!(provider = %id, %error, retry_ms = delay.as_millis() as u64,
                        "a stored provider cannot run on this daemon; trying again");
                    if let Some(actor) = self.slots.remove(&id).and_then(|slot| slot.actor) {
                        self.by_actor.remove(&actor.get_id());
                        retire(&actor);
                    }
                    self.down
                        .insert(id.clone(), (record.config.kind.clone(), error.to_string()));
                    self.publish();
                    self.applied
                        .mark(key, revision, Err(NotServing::Build(Arc::new(error))));
                } else {
                    tracing::debug!(provider = %id, %error, attempt, "a stored provider still cannot run");
                }
                self.build(myself, id, revision, record, attempt + 1, delay);
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            slots: HashMap::new(),
            from_config: args.from_config.iter().map(|i| i.id.clone()).collect(),
            revisions: HashMap::new(),
            building: HashMap::new(),
            down: HashMap::new(),
            by_actor: HashMap::new(),
            failures: HashMap::new(),
            routes: args.routes,
            specs: args.specs,
            applied: args.applied,
            metrics: args.metrics,
        };
        for instance in args.from_config {
            let id = instance.id.clone();
            state.start(&myself, &id, instance, None).await;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Apply {
                id,
                revision,
                record,
            } => state.apply(&myself, id, revision, record.map(|r| *r), false),
            SupervisorMsg::Resync(records) => {
                let present: HashSet<&str> =
                    records.iter().map(|(_, r)| r.config.id.as_str()).collect();
                let gone: Vec<String> = state
                    .revisions
                    .keys()
                    .filter(|id| !present.contains(id.as_str()))
                    .cloned()
                    .collect();
                for id in gone {
                    let revision = state.revisions.remove(&id).unwrap_or_default();
                    state.building.remove(&id);
                    if state.slots.contains_key(&id) || state.down.contains_key(&id) {
                        tracing::info!(provider = %id, "provider no longer stored; stopping it");
                        state.remove(&id);
                    }
                    state
                        .applied
                        .mark(SharedKey::Provider(id), revision, Ok(()));
                }
                for (revision, record) in records {
                    let id = record.config.id.clone();
                    state.apply(&myself, id, revision, Some(record), true);
                }
            }
            SupervisorMsg::Built {
                id,
                revision,
                record,
                result,
                attempt,
            } => {
                state
                    .built(&myself, id, revision, record, result, attempt)
                    .await
            }
            SupervisorMsg::Restart(id, actor, reply) => {
                let current = state.slots.get(&id).and_then(|s| s.actor.clone());
                if let Some(old) = current.filter(|old| old.get_id() == actor) {
                    state.by_actor.remove(&old.get_id());
                    retire(&old);
                    if let Some(slot) = state.slots.get_mut(&id) {
                        slot.actor = None;
                    }
                    state.spawn(&myself, &id).await;
                }
                let _ = reply.send(());
            }
            SupervisorMsg::Respawn(id) => {
                let waiting = state.slots.get(&id).is_some_and(|s| s.actor.is_none());
                if waiting {
                    state.spawn(&myself, &id).await;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "terminated".into()))
            }
            _ => return Ok(()),
        };
        // Actors stopped on purpose were already forgotten; only unexpected exits restart.
        if let Some(id) = state.by_actor.remove(&cell.get_id()) {
            tracing::error!(provider = %id, %reason, "provider actor stopped unexpectedly");
            state.schedule_respawn(&myself, &id);
        }
        Ok(())
    }
}

/// Has an actor that no longer serves its instance stop once its work in progress is done
/// (its successor, if any, takes new requests already).
fn retire(actor: &ActorRef<ProviderMsg>) {
    if actor.cast(ProviderMsg::Retire).is_err() {
        actor.stop(Some("retired".into()));
    }
}

/// The longest wait before a failed build of a stored instance is tried again.
const REBUILD_MAX: Duration = Duration::from_secs(30);
