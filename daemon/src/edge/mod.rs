//! The NATS edge: the only module of the daemon that talks NATS. Commands arrive through the
//! async-nats service API (so `$SRV.PING|INFO|STATS` answer and several daemons share load
//! through the queue group); events leave from here too. What goes on the wire (subjects,
//! headers, bodies, the error envelope) is defined in `lanyard-proto`; this module decodes
//! and encodes it.

mod auth;
mod callout;
mod connect;
mod dispatch;
mod events_out;

use std::sync::Arc;

use async_nats::service::ServiceExt;
use async_nats::Client;
use futures::StreamExt;
use tokio::task::JoinHandle;

use lanyard_proto::{Command, SERVICE_NAME};

use crate::config::NatsConfig;
use crate::error::{Error, ErrorCode};
use crate::service::Lanyard;
use auth::Caller;
use dispatch::{envelope, handle, Context};
use events_out::{Publisher, EVENT_DRAIN};
use secrecy::SecretString;

pub use connect::{connect, round_trip};

/// A failure of the daemon's NATS side: connecting, serving, the events stream.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A NATS credential that cannot be read (the message names its key).
    #[error(transparent)]
    Credentials(#[from] crate::config::ConfigError),
    /// `what` the edge was doing when NATS (or the client) failed.
    #[error("{what}: {source}")]
    Nats {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// NATS took a request but never answered within the edge's wait.
    #[error("NATS did not answer a round trip within 10 s")]
    NoAnswer,
    /// The `[nats_auth.system]` user's connection reaches no server's system services.
    #[error(
        "no NATS server answered [nats_auth.system]'s user: is it a user of the system account?"
    )]
    NotSystem,
}

/// Wraps a NATS failure with what the edge was doing.
pub(crate) fn nats_error<E>(what: impl Into<String>) -> impl FnOnce(E) -> EdgeError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let what = what.into();
    move |source| EdgeError::Nats {
        what,
        source: Box::new(source),
    }
}
pub use events_out::replay_events;
pub(crate) use events_out::{ensure_events_stream, EventRoute};

/// How much the edge takes on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_request_bytes: usize,
    /// Requests handled at once; more are answered `rate_limited` at once.
    pub max_in_flight: usize,
    /// How long requests already taken may take to finish when stopping.
    pub shutdown_grace: std::time::Duration,
}

/// Who may do what at the edge: the admin token, the named callers (name, token, rate), and
/// the NATS auth callout when it is on.
#[derive(Debug, Default)]
pub(crate) struct Access {
    pub admin_token: Option<SecretString>,
    pub callers: Vec<(String, SecretString, Option<std::num::NonZeroU32>)>,
    pub nats_callout: Option<Arc<crate::callout::NatsCallout>>,
}

/// The running edge: the service, its endpoint loops and the event publisher.
#[derive(Debug)]
pub(crate) struct Edge {
    tasks: Vec<JoinHandle<()>>,
    events: Option<Publisher>,
    service: Option<async_nats::service::Service>,
    in_flight: Arc<tokio::sync::Semaphore>,
    limits: Limits,
}

impl Edge {
    /// Starts serving every command and publishing events.
    ///
    /// Long because every endpoint's task is built here from the same limits, callers and
    /// admin token, and the refusal beyond `max_in_flight` must stay inline in that loop (a
    /// flood cannot pile up tasks).
    pub async fn start(
        client: Client,
        lanyard: Arc<Lanyard>,
        config: &NatsConfig,
        limits: Limits,
        access: Access,
        events: EventRoute,
    ) -> Result<Self, EdgeError> {
        let Access {
            admin_token,
            callers,
            nats_callout,
        } = access;
        let EventRoute {
            queue: events,
            stream,
        } = events;
        let admin_token = Arc::new(admin_token);
        let callers: Arc<Vec<Caller>> = Arc::new(
            callers
                .into_iter()
                .map(|(name, token, rate)| Caller::new(name, &token, rate))
                .collect(),
        );
        let service = client
            .service_builder()
            .description("Lanyard: OAuth2 / OpenID Connect logins over NATS")
            .queue_group(&config.queue_group)
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| EdgeError::Nats {
                what: "cannot start the NATS service".into(),
                source: e,
            })?;
        let mut tasks = Vec::new();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight));
        let max_request_bytes = limits.max_request_bytes;
        let max_in_flight = limits.max_in_flight;
        let started = std::time::Instant::now();
        for command in Command::SERVICE.into_iter().chain(Command::ADMIN) {
            let (request_schema, reply_schema) = command.schemas();
            // What `nats micro info lanyard` shows for the endpoint.
            let metadata = std::collections::HashMap::from([
                ("description".to_owned(), command.description().to_owned()),
                (
                    "request".to_owned(),
                    format!("lanyard_proto::{request_schema}"),
                ),
                ("reply".to_owned(), format!("lanyard_proto::{reply_schema}")),
                ("docs".to_owned(), "docs/protocol.md".to_owned()),
            ]);
            let mut endpoint = service
                .group(command.group(&config.subject_prefix))
                .endpoint_builder()
                .metadata(metadata)
                .add(command.name())
                .await
                .map_err(|e| EdgeError::Nats {
                    what: format!("cannot serve {}", command.name()),
                    source: e,
                })?;
            let lanyard = lanyard.clone();
            let admin_token = admin_token.clone();
            let callers = callers.clone();
            let in_flight = in_flight.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(request) = endpoint.next().await {
                    // Beyond the limit, refuse at once (inline: a flood cannot pile up tasks).
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        let error = Error::new(
                            ErrorCode::RateLimited,
                            "the daemon is at its limit of requests in flight; retry shortly",
                        );
                        lanyard
                            .events
                            .metrics()
                            .refused(&dispatch::metric_name(command), error.code);
                        let (body, headers) = envelope(&error);
                        let _ = request.respond_with_headers(Ok(body), headers).await;
                        continue;
                    };
                    let context = Context {
                        lanyard: lanyard.clone(),
                        admin_token: admin_token.clone(),
                        callers: callers.clone(),
                        max_request_bytes,
                        in_flight: in_flight.clone(),
                        max_in_flight,
                        started,
                    };
                    tokio::spawn(async move {
                        handle(request, command, context).await;
                        drop(permit);
                    });
                }
            }));
        }
        if let Some(nats_callout) = nats_callout {
            tasks.push(
                callout::serve(
                    client.clone(),
                    lanyard.clone(),
                    nats_callout,
                    config.queue_group.clone(),
                    max_request_bytes,
                    in_flight.clone(),
                )
                .await?,
            );
        }
        round_trip(&client).await?;
        let publisher = Publisher::start(client, config.subject_prefix.clone(), events, stream);
        Ok(Self {
            tasks,
            events: Some(publisher),
            service: Some(service),
            in_flight,
            limits,
        })
    }

    /// Stops taking requests, lets those already taken finish (within the grace period),
    /// then publishes the events they produced. Every step is bounded, whatever NATS is doing:
    /// a connection that is down or reconnecting holds back replies and events, never the
    /// stop. Events that could not be published in time are counted and logged.
    pub async fn stop(mut self) {
        if let Some(service) = self.service.take() {
            // Unsubscribing goes through the client, which holds commands while disconnected.
            if tokio::time::timeout(STOP_STEP, service.stop())
                .await
                .is_err()
            {
                tracing::warn!("NATS did not take the service's unsubscribe in time");
            }
        }
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        let all = u32::try_from(self.limits.max_in_flight).unwrap_or(u32::MAX);
        match tokio::time::timeout(self.limits.shutdown_grace, self.in_flight.acquire_many(all))
            .await
        {
            Ok(_) => tracing::info!("every request in flight has been answered"),
            Err(_) => tracing::warn!(
                still = self.limits.max_in_flight - self.in_flight.available_permits(),
                "requests still in flight after the shutdown grace period"
            ),
        }
        if let Some(publisher) = self.events.take() {
            publisher.drain(EVENT_DRAIN).await;
        }
    }
}

/// How long one step of stopping (unsubscribing, a final flush) may wait for NATS.
const STOP_STEP: std::time::Duration = std::time::Duration::from_secs(2);
