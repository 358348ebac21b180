//! [`Providers`]: the handle the rest of the daemon reaches provider actors through. It reads
//! the supervisor's routing table (never writes it) and asks the actor that serves an
//! instance now, each ask bounded.

use std::sync::Arc;
use std::time::Duration;

use lanyard_proto::{CircuitState, InstanceState};
use ractor::{Actor, ActorRef};
use secrecy::SecretString;
use tokio::sync::watch;

use super::actor::ProviderMsg;
use super::http::ProviderTokens;
use super::instance::{
    CompleteArgs, Completed, Described, DevicePoll, DeviceStarted, Health, Instance, LoginArgs,
    LoginStart,
};
use super::supervisor::{RecordSpecs, Route, Routes, Supervisor, SupervisorArgs, SupervisorMsg};
use crate::applied::Applied;
use crate::error::{Error, ErrorCode};
use crate::store::{ProviderRecord, Revision};

/// One instance in `admin.status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProviderHealth {
    pub id: String,
    pub kind: String,
    #[serde(flatten)]
    pub health: Health,
    /// Why the instance does not run on this daemon, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How long `admin.status` waits for an actor's health.
const HEALTH_WAIT: Duration = Duration::from_secs(2);

/// The handle the rest of the daemon uses to reach provider actors.
#[derive(Debug, Clone)]
pub struct Providers {
    routes: watch::Receiver<Routes>,
    supervisor: ActorRef<SupervisorMsg>,
}

impl Providers {
    /// Starts the supervisor with an actor per config-file instance; stored instances come
    /// from the change feed ([`apply`](Self::apply), [`resync`](Self::resync)).
    pub async fn start(
        from_config: Vec<Instance>,
        specs: Arc<dyn RecordSpecs>,
        applied: Applied,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, Error> {
        let (routes, reader) = watch::channel(Routes::default());
        let args = SupervisorArgs {
            from_config: from_config.into_iter().map(Arc::new).collect(),
            specs,
            applied,
            routes,
            metrics,
        };
        let (supervisor, _) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|e| Error::internal(format!("cannot start the provider supervisor: {e}")))?;
        Ok(Self {
            routes: reader,
            supervisor,
        })
    }

    /// Stops every provider actor and the supervisor.
    pub fn stop(&self) {
        self.supervisor.stop_children(None);
        self.supervisor.stop(None);
    }

    /// Hands the supervisor a change of stored provider `id` from the feed.
    pub fn apply(&self, id: String, revision: Revision, record: Option<Box<ProviderRecord>>) {
        let _ = self.supervisor.cast(SupervisorMsg::Apply {
            id,
            revision,
            record,
        });
    }

    /// Hands the supervisor every stored provider (a feed snapshot).
    pub fn resync(&self, records: Vec<(Revision, ProviderRecord)>) {
        let _ = self.supervisor.cast(SupervisorMsg::Resync(records));
    }

    fn actor(&self, id: &str) -> Result<ActorRef<ProviderMsg>, Error> {
        match self.routes.borrow().get(id) {
            Some(Route {
                actor: Some(actor), ..
            }) => Ok(actor.clone()),
            Some(Route {
                down: Some(why), ..
            }) => Err(Error::unavailable(format!(
                "provider `{id}` cannot run on this daemon: {why}"
            ))),
            Some(_) => Err(Error::unavailable(format!(
                "provider `{id}` is restarting; try again shortly"
            ))),
            None => Err(unknown_provider(id)),
        }
    }

    /// Every instance's id, kind and health, by id.
    pub async fn health(&self) -> Vec<ProviderHealth> {
        let routes = self.routes.borrow().clone();
        // Every actor asked at once: a busy one holds up the answer (admin.status, a metrics
        // scrape) by at most HEALTH_WAIT, not by that times the instances.
        let asks = routes.iter().map(|(id, route)| async move {
            let restarting = Health {
                status: InstanceState::Restarting,
                circuit: CircuitState::Closed,
                consecutive_failures: 0,
                stuck_plugin_calls: 0,
            };
            let health = match &route.actor {
                Some(actor) => {
                    ractor::call_t!(actor, ProviderMsg::Health, HEALTH_WAIT.as_millis() as u64)
                        .unwrap_or(restarting)
                }
                None if route.down.is_some() => Health {
                    status: InstanceState::Unavailable,
                    ..restarting
                },
                None => restarting,
            };
            ProviderHealth {
                id: id.clone(),
                kind: route.kind.clone(),
                health,
                error: route.down.clone(),
            }
        });
        let mut all = futures::future::join_all(asks).await;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The instances that have no running actor now (restarting, or unable to run here):
    /// what a readiness probe lists. Reads the routing table only.
    pub fn not_serving(&self) -> Vec<String> {
        self.routes
            .borrow()
            .iter()
            .filter(|(_, route)| route.actor.is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether any instance served here sets its own `claims`.
    pub fn any_claims(&self) -> bool {
        self.routes.borrow().values().any(|route| {
            route
                .described
                .as_ref()
                .is_some_and(|d| d.config.claims.as_ref().is_some_and(|c| c.any()))
        })
    }

    /// The configuration and generation of instance `id` (those of the actor that serves
    /// it, or will once it restarted).
    pub fn describe(&self, id: &str) -> Result<Described, Error> {
        match self.routes.borrow().get(id) {
            Some(Route {
                described: Some(described),
                ..
            }) => Ok(described.clone()),
            Some(Route {
                down: Some(why), ..
            }) => Err(Error::unavailable(format!(
                "provider `{id}` cannot run on this daemon: {why}"
            ))),
            _ => Err(unknown_provider(id)),
        }
    }

    /// Starts a login through instance `id`.
    pub async fn login(&self, id: &str, args: LoginArgs) -> Result<LoginStart, Error> {
        let actor = self.actor(id)?;
        flatten(ractor::call!(actor, ProviderMsg::Login, Box::new(args)), id)
    }

    /// Finishes a login through instance `id`.
    pub async fn complete(&self, id: &str, args: CompleteArgs) -> Result<Completed, Error> {
        let actor = self.actor(id)?;
        flatten(
            ractor::call!(actor, ProviderMsg::Complete, Box::new(args)),
            id,
        )
    }

    /// Starts a device login at instance `id`'s provider.
    pub async fn device_start(
        &self,
        id: &str,
        scopes: Option<Vec<String>>,
        fetch_groups: bool,
    ) -> Result<DeviceStarted, Error> {
        let actor = self.actor(id)?;
        flatten(
            ractor::call!(actor, ProviderMsg::DeviceStart, scopes, fetch_groups),
            id,
        )
    }

    /// Polls for a device login at instance `id`'s provider until the user answers or its
    /// code expires, and finishes it there.
    pub async fn device_poll(&self, id: &str, poll: DevicePoll) -> Result<Completed, Error> {
        let actor = self.actor(id)?;
        flatten(
            ractor::call!(actor, ProviderMsg::DevicePoll, Box::new(poll)),
            id,
        )
    }

    /// Refreshes provider tokens through instance `id`.
    pub async fn refresh(&self, id: &str, token: SecretString) -> Result<ProviderTokens, Error> {
        let actor = self.actor(id)?;
        flatten(ractor::call!(actor, ProviderMsg::Refresh, token), id)
    }

    /// Revokes a provider token through instance `id`; `false` when it cannot revoke.
    pub async fn revoke(
        &self,
        id: &str,
        token: SecretString,
        hint: &'static str,
    ) -> Result<bool, Error> {
        let actor = self.actor(id)?;
        flatten(ractor::call!(actor, ProviderMsg::Revoke, token, hint), id)
    }
}

/// The error for a provider id nobody configured.
pub fn unknown_provider(id: &str) -> Error {
    Error::new(
        ErrorCode::UnknownProvider,
        format!("no provider instance `{id}` is configured"),
    )
}

fn unanswered(id: &str, error: &dyn std::fmt::Display) -> Error {
    tracing::warn!(provider = id, %error, "provider actor did not answer");
    Error::unavailable(format!("provider `{id}` did not answer; try again shortly"))
}

fn flatten<T, E: std::fmt::Display>(
    result: Result<Result<T, Error>, E>,
    id: &str,
) -> Result<T, Error> {
    result.unwrap_or_else(|error| Err(unanswered(id, &error)))
}
