//! The provider actors: one ractor actor per provider instance, under a supervisor that
//! restarts a failed actor with back-off while the others keep serving.
//!
//! An actor owns its [`Instance`] (config, endpoints, JWKS cache). It never awaits network
//! work in its own mailbox: each request runs in a task that answers through the reply port,
//! so one slow login never delays the next. A task that sees a plugin panic asks the
//! supervisor to replace the actor *before* it answers, so the caller's next request reaches
//! a fresh actor.

use crate::locks::{read, write};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use secrecy::SecretString;
use tracing::Instrument;

use super::http::{HttpClient, ProviderTokens};
use super::instance::{CompleteArgs, Completed, Health, Instance, LoginArgs, LoginStart};
use crate::config::{ConfigError, ProviderConfig};
use crate::error::{Error, ErrorCode};
use crate::plugin::Plugin;

/// Everything needed to (re)build an instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub config: ProviderConfig,
    pub secret: Option<SecretString>,
    pub plugin: Arc<Plugin>,
    pub http: HttpClient,
    /// Where the instance was defined, for error messages: `providers[2]` or `provider`.
    pub label: String,
    /// Changes when the instance is deleted and created again, so logins started before
    /// cannot finish after.
    pub generation: String,
}

impl InstanceSpec {
    pub fn build(&self) -> Result<Instance, ConfigError> {
        Instance::new(
            self.config.clone(),
            self.secret.clone(),
            self.plugin.clone(),
            self.http.clone(),
            &self.label,
        )
    }
}

/// Messages to a provider actor.
#[derive(Debug)]
pub enum ProviderMsg {
    Login(LoginArgs, RpcReplyPort<Result<LoginStart, Error>>),
    Complete(Box<CompleteArgs>, RpcReplyPort<Result<Completed, Error>>),
    Refresh(SecretString, RpcReplyPort<Result<ProviderTokens, Error>>),
    Revoke(
        SecretString,
        &'static str,
        RpcReplyPort<Result<bool, Error>>,
    ),
}

struct ProviderActor;

struct ProviderState {
    instance: Arc<Instance>,
    supervisor: ActorRef<SupervisorMsg>,
}

impl Actor for ProviderActor {
    type Msg = ProviderMsg;
    type State = ProviderState;
    type Arguments = (Arc<Instance>, ActorRef<SupervisorMsg>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (instance, supervisor): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ProviderState {
            instance,
            supervisor,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let task = Task {
            instance: state.instance.clone(),
            restarter: Restarter {
                supervisor: state.supervisor.clone(),
                actor: myself.get_id(),
            },
        };
        match message {
            ProviderMsg::Login(args, reply) => {
                task.run(reply, move |i| async move { i.login(args).await })
            }
            ProviderMsg::Complete(args, reply) => {
                task.run(reply, move |i| async move { i.complete(*args).await })
            }
            ProviderMsg::Refresh(token, reply) => {
                task.run(reply, move |i| async move { i.refresh(token).await })
            }
            ProviderMsg::Revoke(token, hint, reply) => {
                task.run(reply, move |i| async move { i.revoke(token, hint).await })
            }
        }
        Ok(())
    }
}

/// One request's work, run off the actor's mailbox.
struct Task {
    instance: Arc<Instance>,
    restarter: Restarter,
}

impl Task {
    /// Spawns `work` on the instance inside the provider's span; its result (or `internal`
    /// for a panic) goes to `reply`.
    fn run<T, F, Fut>(self, reply: RpcReplyPort<Result<T, Error>>, work: F)
    where
        T: Send + 'static,
        F: FnOnce(Arc<Instance>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    {
        let span = tracing::info_span!("provider", provider.id = %self.instance.id,
            provider.kind = %self.instance.kind());
        tokio::spawn(
            async move {
                let work = work(self.instance.clone());
                let result = guarded(self.instance, self.restarter, work).await;
                let _ = reply.send(result);
            }
            .instrument(span),
        );
    }
}

/// What a task needs to have its actor replaced.
struct Restarter {
    supervisor: ActorRef<SupervisorMsg>,
    actor: ActorId,
}

/// Runs provider work, turning a panic into `internal`; after a panic (ours or the plugin's)
/// the actor is replaced before the caller hears back.
async fn guarded<T>(
    instance: Arc<Instance>,
    restarter: Restarter,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let (result, host_panic) = match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => (result, false),
        Err(_) => (
            Err(Error::internal("the provider failed; it was restarted")),
            true,
        ),
    };
    if host_panic || instance.panicked() {
        tracing::error!(
            provider = instance.id.as_str(),
            "panic while serving; restarting"
        );
        let id = instance.id.clone();
        let restart = restarter
            .supervisor
            .call(
                |port| SupervisorMsg::Restart(id, restarter.actor, port),
                None,
            )
            .await;
        if restart.is_err() {
            tracing::error!("could not ask the supervisor for a restart");
        }
    }
    result
}

/// Messages to the supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Start an instance, or replace a running one with a new config; answers once it serves.
    Upsert(Box<InstanceSpec>, RpcReplyPort<Result<(), String>>),
    /// Stop an instance and forget it; answers once it no longer serves.
    Remove(String, RpcReplyPort<()>),
    /// Replace this actor of an instance now (it panicked); answers once the new one serves.
    /// A request about an actor already replaced is a no-op, so a burst of panics from one
    /// old actor restarts it once.
    Restart(String, ActorId, RpcReplyPort<()>),
    /// Start an instance's actor again after its back-off.
    Respawn(String),
}

/// Which actor serves an instance now (`None` while it restarts), and its generation.
#[derive(Debug, Clone)]
pub struct Entry {
    actor: Option<ActorRef<ProviderMsg>>,
    generation: String,
    config: Arc<ProviderConfig>,
    /// The instance the actor serves (kept while it restarts, for its health).
    instance: Option<Arc<Instance>>,
}

/// The shared view of the running instances.
pub type Registry = Arc<RwLock<HashMap<String, Entry>>>;

struct Supervisor;

struct SupervisorState {
    specs: HashMap<String, InstanceSpec>,
    registry: Registry,
    by_actor: HashMap<ActorId, String>,
    failures: HashMap<String, (u32, Instant)>,
}

impl SupervisorState {
    async fn spawn(&mut self, myself: &ActorRef<SupervisorMsg>, id: &str) -> Result<(), String> {
        let Some(spec) = self.specs.get(id) else {
            return Err(format!("no provider `{id}`"));
        };
        let generation = spec.generation.clone();
        let config = Arc::new(spec.config.clone());
        let instance = match spec.build() {
            Ok(instance) => Arc::new(instance),
            Err(error) => {
                tracing::error!(provider = id, %error, "cannot build provider");
                return Err(error.to_string());
            }
        };
        match Actor::spawn_linked(
            None,
            ProviderActor,
            (instance.clone(), myself.clone()),
            myself.get_cell(),
        )
        .await
        {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), id.to_owned());
                write(&self.registry).insert(
                    id.to_owned(),
                    Entry {
                        actor: Some(actor),
                        generation,
                        config,
                        instance: Some(instance),
                    },
                );
                Ok(())
            }
            Err(error) => {
                tracing::error!(provider = id, %error, "cannot start provider actor");
                self.schedule_respawn(myself, id);
                Err(format!("cannot start provider `{id}`: {error}"))
            }
        }
    }

    /// Stops an instance's actor on purpose (no restart follows).
    fn stop(&mut self, id: &str) {
        let current = read(&self.registry).get(id).and_then(|e| e.actor.clone());
        if let Some(actor) = current {
            self.by_actor.remove(&actor.get_id());
            actor.stop(Some("replaced or removed".into()));
        }
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
        if let Some(entry) = write(&self.registry).get_mut(id) {
            entry.actor = None;
        }
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
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (Vec<InstanceSpec>, Registry);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (specs, registry): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            specs: specs
                .into_iter()
                .map(|s| (s.config.id.clone(), s))
                .collect(),
            registry,
            by_actor: HashMap::new(),
            failures: HashMap::new(),
        };
        let ids: Vec<String> = state.specs.keys().cloned().collect();
        for id in ids {
            if let Err(error) = state.spawn(&myself, &id).await {
                tracing::error!(provider = %id, %error, "provider not started");
            }
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
            SupervisorMsg::Upsert(spec, reply) => {
                let id = spec.config.id.clone();
                state.stop(&id);
                state.specs.insert(id.clone(), *spec);
                let _ = reply.send(state.spawn(&myself, &id).await);
            }
            SupervisorMsg::Remove(id, reply) => {
                state.stop(&id);
                state.specs.remove(&id);
                state.failures.remove(&id);
                write(&state.registry).remove(&id);
                let _ = reply.send(());
            }
            SupervisorMsg::Restart(id, actor, reply) => {
                let current = read(&state.registry).get(&id).and_then(|e| e.actor.clone());
                if current.is_some_and(|old| old.get_id() == actor) {
                    state.stop(&id);
                    if let Err(error) = state.spawn(&myself, &id).await {
                        tracing::error!(provider = %id, %error, "restart failed");
                    }
                }
                let _ = reply.send(());
            }
            SupervisorMsg::Respawn(id) => {
                let waiting = read(&state.registry)
                    .get(&id)
                    .is_some_and(|e| e.actor.is_none());
                if waiting {
                    if let Err(error) = state.spawn(&myself, &id).await {
                        tracing::error!(provider = %id, %error, "respawn failed");
                    }
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
        // Actors replaced on purpose were already forgotten; only unexpected exits restart.
        if let Some(id) = state.by_actor.remove(&cell.get_id()) {
            tracing::error!(provider = %id, %reason, "provider actor stopped unexpectedly");
            state.schedule_respawn(&myself, &id);
        }
        Ok(())
    }
}

/// One instance in `admin.status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProviderHealth {
    pub id: String,
    pub kind: String,
    #[serde(flatten)]
    pub health: Health,
}

/// The handle the rest of the daemon uses to reach provider actors.
#[derive(Debug, Clone)]
pub struct Providers {
    registry: Registry,
    supervisor: ActorRef<SupervisorMsg>,
}

impl Providers {
    /// Starts the supervisor and one actor per instance.
    pub async fn start(specs: Vec<InstanceSpec>) -> Result<Self, Error> {
        let registry: Registry = Arc::default();
        let (supervisor, _) = Actor::spawn(None, Supervisor, (specs, registry.clone()))
            .await
            .map_err(|e| Error::internal(format!("cannot start the provider supervisor: {e}")))?;
        Ok(Self {
            registry,
            supervisor,
        })
    }

    /// Stops every provider actor and the supervisor.
    pub fn stop(&self) {
        self.supervisor.stop_children(None);
        self.supervisor.stop(None);
    }

    fn actor(&self, id: &str) -> Result<(ActorRef<ProviderMsg>, String), Error> {
        match read(&self.registry).get(id) {
            Some(Entry {
                actor: Some(actor),
                generation,
                ..
            }) => Ok((actor.clone(), generation.clone())),
            Some(_) => Err(Error::unavailable(format!(
                "provider `{id}` is restarting; try again shortly"
            ))),
            None => Err(unknown_provider(id)),
        }
    }

    /// Every instance's id, kind and health, by id.
    pub fn health(&self) -> Vec<ProviderHealth> {
        let mut all: Vec<ProviderHealth> = read(&self.registry)
            .iter()
            .map(|(id, entry)| {
                let mut health = entry.instance.as_ref().map_or(
                    Health {
                        status: "restarting",
                        circuit: "closed",
                        consecutive_failures: 0,
                        stuck_plugin_calls: 0,
                    },
                    |i| i.health(),
                );
                if entry.actor.is_none() {
                    health.status = "restarting";
                }
                ProviderHealth {
                    id: id.clone(),
                    kind: entry.config.kind.clone(),
                    health,
                }
            })
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The config of instance `id`, if it exists.
    pub fn config(&self, id: &str) -> Option<Arc<ProviderConfig>> {
        read(&self.registry).get(id).map(|e| e.config.clone())
    }

    /// Refreshes provider tokens through instance `id`.
    pub async fn refresh(&self, id: &str, token: SecretString) -> Result<ProviderTokens, Error> {
        let (actor, _) = self.actor(id)?;
        flatten(ractor::call!(actor, ProviderMsg::Refresh, token), id)
    }

    /// Revokes a provider token through instance `id`; `false` when it cannot revoke.
    pub async fn revoke(
        &self,
        id: &str,
        token: SecretString,
        hint: &'static str,
    ) -> Result<bool, Error> {
        let (actor, _) = self.actor(id)?;
        flatten(ractor::call!(actor, ProviderMsg::Revoke, token, hint), id)
    }

    /// The generation of instance `id`, if it exists.
    pub fn generation(&self, id: &str) -> Option<String> {
        read(&self.registry).get(id).map(|e| e.generation.clone())
    }

    /// Starts a login; returns it with the instance's generation.
    pub async fn login(&self, id: &str, args: LoginArgs) -> Result<(LoginStart, String), Error> {
        let (actor, generation) = self.actor(id)?;
        let start = flatten(ractor::call!(actor, ProviderMsg::Login, args), id)?;
        Ok((start, generation))
    }

    /// Starts or replaces an instance; returns once it serves.
    pub async fn upsert(&self, spec: InstanceSpec) -> Result<(), Error> {
        let id = spec.config.id.clone();
        let result = ractor::call!(self.supervisor, SupervisorMsg::Upsert, Box::new(spec));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::bad_request(message)),
            Err(error) => Err(Error::internal(format!(
                "cannot start provider `{id}`: {error}"
            ))),
        }
    }

    /// Stops an instance; returns once it no longer serves.
    pub async fn remove(&self, id: &str) -> Result<(), Error> {
        ractor::call!(self.supervisor, SupervisorMsg::Remove, id.to_owned())
            .map_err(|e| Error::internal(format!("cannot stop provider `{id}`: {e}")))
    }

    pub async fn complete(&self, id: &str, args: CompleteArgs) -> Result<Completed, Error> {
        let (actor, _) = self.actor(id)?;
        flatten(
            ractor::call!(actor, ProviderMsg::Complete, Box::new(args)),
            id,
        )
    }
}

/// The error for a provider id nobody configured.
pub fn unknown_provider(id: &str) -> Error {
    Error::new(
        ErrorCode::UnknownProvider,
        format!("no provider instance `{id}` is configured"),
    )
}

fn flatten<T, E: std::fmt::Display>(
    result: Result<Result<T, Error>, E>,
    id: &str,
) -> Result<T, Error> {
    result.unwrap_or_else(|error| {
        tracing::warn!(provider = id, %error, "provider actor did not answer");
        Err(Error::unavailable(format!(
            "provider `{id}` did not answer; try again shortly"
        )))
    })
}
