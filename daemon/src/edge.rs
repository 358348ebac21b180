//! The NATS edge: the only module of the daemon that talks NATS. Commands arrive through the
//! async-nats service API (so `$SRV.PING|INFO|STATS` answer and several daemons share load
//! through the queue group); events leave from here too. What goes on the wire (subjects,
//! headers, bodies, the error envelope) is defined in `lanyard-proto`; this module decodes
//! and encodes it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_nats::service::ServiceExt;
use async_nats::{Client, ConnectOptions, HeaderMap};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::Instrument;

use lanyard_proto::{
    all_events_subject, event_name, CallbackRequest, Command, Empty, ErrorBody, ErrorReply,
    EventEnvelope, LoginRequest, ProviderStatus, SharedChanges, StatusReply, ADMIN_TOKEN_HEADER,
    CALLER_TOKEN_HEADER, ERROR_CODE_HEADER, ERROR_STATUS_HEADER, SERVICE_NAME,
};

use crate::config::{NatsConfig, SecretSource};
use crate::error::{Error, ErrorCode};
use crate::events::EventQueue;
use crate::providers::ProviderHealth;
use crate::service::Lanyard;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Connects to NATS with the configured authentication and TLS. The client reconnects on its
/// own and restores its subscriptions.
pub async fn connect(config: &NatsConfig) -> Result<Client, String> {
    let secret = |source: &SecretSource<'_>| {
        source
            .resolve()
            .map(|s| s.map(|s| s.expose_secret().to_owned()))
            .map_err(|e| e.to_string())
    };
    let [password, token, nkey_seed] = config.secrets();
    let mut options = ConnectOptions::new()
        .name(&config.name)
        .max_reconnects(None)
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        });
    if let (Some(user), Some(password)) = (&config.user, secret(&password)?) {
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(token) = secret(&token)? {
        options = options.token(token);
    }
    if let Some(seed) = secret(&nkey_seed)? {
        options = options.nkey(seed);
    }
    if let Some(creds) = &config.creds_file {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| format!("nats.creds_file: {e}"))?;
    }
    if let Some(ca) = &config.tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls.required {
        options = options.require_tls(true);
    }
    // Several servers of a cluster may be listed, comma-separated; the client also learns the
    // others from the one it reaches.
    let urls: Vec<&str> = config
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    options
        .connect(urls)
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", config.url))
}

/// How much the edge takes on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    /// Requests handled at once; more are answered `rate_limited` at once.
    pub max_in_flight: usize,
    /// How long requests already taken may take to finish when stopping.
    pub shutdown_grace: std::time::Duration,
}

/// The running edge: the service, its endpoint loops and the event publisher.
#[derive(Debug)]
pub struct Edge {
    tasks: Vec<JoinHandle<()>>,
    events: Option<Publisher>,
    service: Option<async_nats::service::Service>,
    in_flight: Arc<tokio::sync::Semaphore>,
    limits: Limits,
}

impl Edge {
    /// Starts serving every command and publishing events.
    pub async fn start(
        client: Client,
        lanyard: Arc<Lanyard>,
        config: &NatsConfig,
        limits: Limits,
        admin_token: Option<SecretString>,
        callers: Vec<(String, SecretString, Option<std::num::NonZeroU32>)>,
        events: EventRoute,
    ) -> Result<Self, String> {
        let EventRoute {
            queue: events,
            stream,
        } = events;
        let admin_token = Arc::new(admin_token);
        let callers: Arc<Vec<Caller>> = Arc::new(
            callers
                .into_iter()
                .map(|(name, token, rate)| {
                    let digest = ring::digest::digest(
                        &ring::digest::SHA256,
                        token.expose_secret().as_bytes(),
                    );
                    let mut hash = [0u8; 32];
                    hash.copy_from_slice(digest.as_ref());
                    Caller {
                        name,
                        hash,
                        limiter: rate
                            .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r))),
                    }
                })
                .collect(),
        );
        let service = client
            .service_builder()
            .description("Lanyard: OAuth2 / OpenID Connect logins over NATS")
            .queue_group(&config.queue_group)
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| format!("cannot start the NATS service: {e}"))?;
        let mut tasks = Vec::new();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight));
        let max_request_bytes = limits.max_request_bytes;
        let max_in_flight = limits.max_in_flight;
        let started = std::time::Instant::now();
        for command in Command::SERVICE.into_iter().chain(Command::ADMIN) {
            let mut endpoint = service
                .group(command.group(&config.subject_prefix))
                .endpoint(command.name())
                .await
                .map_err(|e| format!("cannot serve {}: {e}", command.name()))?;
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
        round_trip(&client).await?;
        let prefix = config.subject_prefix.clone();
        let (drain, drained) = tokio::sync::oneshot::channel::<()>();
        let counts = events.counter();
        let task = if stream {
            tokio::spawn(publish_to_stream(client, prefix, events, drained))
        } else {
            tokio::spawn(publish_to_core(client, prefix, events, drained))
        };
        Ok(Self {
            tasks,
            events: Some(Publisher {
                task,
                drain,
                counts,
            }),
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

/// How long a stopping daemon tries to publish the events it still holds.
const EVENT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The task that publishes events, and how to tell it to drain and stop.
#[derive(Debug)]
struct Publisher {
    task: JoinHandle<()>,
    drain: tokio::sync::oneshot::Sender<()>,
    counts: crate::events::EventCounter,
}

impl Publisher {
    /// Asks the publisher to send what it holds, waits up to `limit`, then stops it. What
    /// was not published by then is lost (the daemon is stopping): counted and logged.
    async fn drain(self, limit: std::time::Duration) {
        let Publisher {
            mut task,
            drain,
            counts,
        } = self;
        let _ = drain.send(());
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
        let left = counts.counts().queued;
        if left > 0 {
            counts.lost_at_stop(left);
            tracing::error!(
                lost = left,
                "events could not all be published within {} s of stopping (is NATS \
                 reachable?); those still held are lost",
                limit.as_secs()
            );
        } else {
            tracing::info!("every event has been published");
        }
    }
}

/// Where events go: the queue they come from, and whether a JetStream stream keeps them
/// (`[events] stream = true`).
#[derive(Debug)]
pub struct EventRoute {
    pub queue: EventQueue,
    pub stream: bool,
}

/// Creates the events stream, or updates it to the configured limits: it captures every
/// `{prefix}.events.>` subject, and drops a publish whose `Nats-Msg-Id` (the event id) it
/// saw in the last two minutes, so a retried publish is stored once.
pub async fn ensure_events_stream(
    client: &Client,
    prefix: &str,
    config: &crate::config::EventsConfig,
) -> Result<(), String> {
    use async_nats::jetstream::stream;
    let js = async_nats::jetstream::new(client.clone());
    let stream_config = stream::Config {
        name: config.stream_name.clone(),
        description: Some("Lanyard's events".into()),
        subjects: vec![all_events_subject(prefix)],
        max_age: std::time::Duration::from_secs(config.max_age_hours * 3600),
        num_replicas: config.replicas,
        duplicate_window: EVENT_DEDUP_WINDOW,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    js.create_or_update_stream(stream_config)
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "cannot create the events stream `{}` (is JetStream enabled on the NATS \
                 server?): {e}",
                config.stream_name
            )
        })
}

/// How long the events stream remembers event ids to drop retried publishes.
const EVENT_DEDUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// At most this many events wait for the stream's acknowledgement at once.
const MAX_UNACKED_EVENTS: usize = 256;

/// An event ready to publish: serialised once (lanyard-proto's one serialisation of events),
/// then published, and retried to the stream, as these bytes.
#[derive(Debug, Clone)]
struct Outgoing {
    name: &'static str,
    subject: String,
    event_id: String,
    body: Bytes,
}

impl Outgoing {
    /// Encodes `envelope` for `{prefix}.events.{name}`. An event that cannot be encoded
    /// (never seen: its fields are strings, numbers and enums) is counted as lost and logged.
    fn encode(prefix: &str, envelope: EventEnvelope, events: &EventQueue) -> Option<Self> {
        let name = envelope.event.name();
        match serde_json::to_vec(&envelope) {
            Ok(body) => Some(Self {
                name,
                subject: envelope.event.subject(prefix),
                event_id: envelope.event_id,
                body: Bytes::from(body),
            }),
            Err(error) => {
                tracing::error!(%error, event = name, "cannot encode an event; it is dropped");
                events.failed();
                None
            }
        }
    }
}

/// Core NATS: each event handed to the client once it is connected. While NATS is away,
/// events wait in the bounded queue (counted as queued, shown by `admin.status`) rather than
/// in the client's own buffer, where a daemon stopped during the outage would lose them
/// without counting them; they go out after the reconnect.
async fn publish_to_core(
    client: Client,
    prefix: String,
    mut events: EventQueue,
    mut drained: tokio::sync::oneshot::Receiver<()>,
) {
    let mut draining = false;
    loop {
        let envelope = if draining {
            // Stopping: publish what is queued, then go.
            match events.rx.try_recv() {
                Ok(envelope) => envelope,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                envelope = events.rx.recv() => match envelope {
                    Some(envelope) => envelope,
                    None => break,
                },
                _ = &mut drained => {
                    draining = true;
                    continue;
                }
            }
        };
        let Some(event) = Outgoing::encode(&prefix, envelope, &events) else {
            continue;
        };
        while client.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(RECONNECT_POLL).await;
        }
        match client.publish(event.subject, event.body).await {
            Ok(()) => events.published(),
            Err(error) => {
                tracing::warn!(%error, event = event.name, "cannot publish event");
                events.failed();
            }
        }
    }
    // Hand what the client buffers to the server. While NATS is away there is nothing to
    // wait for (events wait in the queue, not the client); the stop that waits for this task
    // bounds a connection that drops meanwhile.
    if client.connection_state() == async_nats::connection::State::Connected {
        let _ = client.flush().await;
    }
}

/// How often a publisher holding events looks whether NATS is back.
const RECONNECT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// JetStream: each event published with its id as `Nats-Msg-Id` and counted only once the
/// stream acknowledged it; a publish that fails or goes unacknowledged (NATS away, the
/// stream's leader moving) is retried with back-off, and the stream drops the duplicates a
/// retry can make. Up to [`MAX_UNACKED_EVENTS`] wait for acknowledgements at once.
async fn publish_to_stream(
    client: Client,
    prefix: String,
    mut events: EventQueue,
    mut drained: tokio::sync::oneshot::Receiver<()>,
) {
    use futures::future::BoxFuture;
    use futures::stream::FuturesUnordered;
    let js = async_nats::jetstream::context::ContextBuilder::new()
        .ack_timeout(std::time::Duration::from_secs(5))
        .build(client);
    let send = |event: Outgoing, attempt: u32| -> BoxFuture<'static, (Outgoing, u32, bool)> {
        let js = js.clone();
        Box::pin(async move {
            if attempt > 0 {
                let backoff = 100u64 << attempt.min(5);
                tokio::time::sleep(std::time::Duration::from_millis(backoff)).await;
            }
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.as_str());
            let published =
                js.publish_with_headers(event.subject.clone(), headers, event.body.clone());
            let acked = match published.await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            (event, attempt + 1, acked)
        })
    };
    let mut unacked: FuturesUnordered<BoxFuture<'static, (Outgoing, u32, bool)>> =
        FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            Some((event, attempts, acked)) = unacked.next(), if !unacked.is_empty() => {
                if acked {
                    events.published();
                } else {
                    if attempts == 1 {
                        tracing::warn!(event = event.name, "the events stream did not acknowledge an event; retrying");
                    }
                    unacked.push(send(event, attempts));
                }
            }
            envelope = events.rx.recv(), if open && unacked.len() < MAX_UNACKED_EVENTS => match envelope {
                Some(envelope) => unacked.extend(Outgoing::encode(&prefix, envelope, &events).map(|e| send(e, 0))),
                None => open = false,
            },
            _ = &mut drained, if open => {
                // Stopping: send what is queued; the caller bounds how long acks may take.
                while let Ok(envelope) = events.rx.try_recv() {
                    unacked.extend(Outgoing::encode(&prefix, envelope, &events).map(|e| send(e, 0)));
                }
                open = false;
            }
            else => break,
        }
        if !open && unacked.is_empty() {
            break;
        }
    }
}

/// The events the stream kept since `since` ago, oldest first, then new ones as they come:
/// each as its name (`user.logged_in`) and JSON body.
pub async fn replay_events(
    client: &Client,
    prefix: &str,
    config: &crate::config::EventsConfig,
    since: std::time::Duration,
) -> Result<impl futures::Stream<Item = (String, Bytes)>, String> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(&config.stream_name).await.map_err(|e| {
        format!(
            "no events stream `{}` to replay from (set [events] stream = true on the \
             daemons): {e}",
            config.stream_name
        )
    })?;
    let start_time = time::OffsetDateTime::now_utc() - since;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot read the events stream: {e}"))?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| format!("cannot read the events stream: {e}"))?;
    let prefix = prefix.to_owned();
    Ok(messages.filter_map(move |message| {
        let named = message.ok().map(|m| {
            let name = event_name(&prefix, m.subject.as_str())
                .unwrap_or_default()
                .to_owned();
            (name, m.payload.clone())
        });
        std::future::ready(named)
    }))
}

/// Waits for a message to our own inbox to come back. The server handles one connection's
/// operations in order, so once it does, every subscription made before is live: "started"
/// then means "serving". (`Client::flush` only writes; it does not wait for the server.)
pub async fn round_trip(client: &Client) -> Result<(), String> {
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| format!("cannot subscribe: {e}"))?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(|e| format!("cannot publish: {e}"))?;
    match tokio::time::timeout(std::time::Duration::from_secs(10), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        _ => Err("NATS did not answer a round trip within 10 s".into()),
    }
}

/// What every request handler shares.
#[derive(Clone)]
struct Context {
    lanyard: Arc<Lanyard>,
    admin_token: Arc<Option<SecretString>>,
    callers: Arc<Vec<Caller>>,
    max_request_bytes: usize,
    in_flight: Arc<tokio::sync::Semaphore>,
    max_in_flight: usize,
    started: std::time::Instant,
}

impl Context {
    /// `admin.status`: what an operator checks first.
    async fn status(&self) -> StatusReply {
        let health = self.lanyard.health().await;
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            requests_in_flight: (self.max_in_flight - self.in_flight.available_permits()) as u64,
            max_in_flight: self.max_in_flight as u64,
            events: health.events,
            shared_changes: if health.following_changes {
                SharedChanges::Following
            } else {
                SharedChanges::Reconnecting
            },
            providers: health.providers.iter().map(provider_status).collect(),
        }
    }
}

/// An instance's health as `admin.status` shows it.
fn provider_status(health: &ProviderHealth) -> ProviderStatus {
    ProviderStatus {
        id: health.id.clone(),
        kind: health.kind.clone(),
        status: health.health.status.to_owned(),
        circuit: health.health.circuit.to_owned(),
        consecutive_failures: health.health.consecutive_failures,
        stuck_plugin_calls: health.health.stuck_plugin_calls as u64,
        error: health.error.clone(),
    }
}

/// A named caller: the SHA-256 of its token, and its rate limit.
struct Caller {
    name: String,
    hash: [u8; 32],
    limiter: Option<governor::DefaultDirectRateLimiter>,
}

impl Context {
    /// The caller a request authenticates as: none without the header; `unauthorized` for a
    /// token no caller has. Tokens are compared as hashes, in constant time, against every
    /// caller, so timing tells nothing about which one nearly matched.
    fn caller(&self, headers: Option<&HeaderMap>) -> Result<Option<&str>, Error> {
        let Some(given) = headers.and_then(|h| h.get(CALLER_TOKEN_HEADER)) else {
            return Ok(None);
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, given.as_str().as_bytes());
        let mut found = None;
        for caller in self.callers.iter() {
            if bool::from(digest.as_ref().ct_eq(&caller.hash)) {
                found = Some(caller);
            }
        }
        let caller = found.ok_or_else(|| {
            Error::new(
                ErrorCode::Unauthorized,
                format!("{CALLER_TOKEN_HEADER} names no configured caller"),
            )
        })?;
        if let Some(limiter) = &caller.limiter {
            limiter.check().map_err(|_| {
                Error::new(
                    ErrorCode::RateLimited,
                    format!(
                        "caller `{}` is over its rate limit; retry shortly",
                        caller.name
                    ),
                )
            })?;
        }
        Ok(Some(caller.name.as_str()))
    }
}

/// Checks the admin token, when one is configured, in constant time.
fn authorize_admin(
    expected: &Option<SecretString>,
    headers: Option<&HeaderMap>,
) -> Result<(), Error> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = headers
        .and_then(|h| h.get(ADMIN_TOKEN_HEADER))
        .map(|v| v.as_str())
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::Unauthorized,
            format!("admin commands need a valid {ADMIN_TOKEN_HEADER} header"),
        ))
    }
}

async fn handle(request: async_nats::service::Request, command: Command, context: Context) {
    let request_id = ulid::Ulid::new().to_string();
    let span = tracing::info_span!("command", command = command.name(), %request_id);
    async move {
        let payload = &request.message.payload;
        let work = async {
            if command.is_admin() {
                authorize_admin(&context.admin_token, request.message.headers.as_ref())?;
            }
            run(command, &context, request.message.headers.as_ref(), payload).await
        };
        let result = AssertUnwindSafe(work)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!("command handler panicked");
                Err(Error::internal("the command failed unexpectedly"))
            });
        let (body, headers) = match result {
            Ok(body) => (body, HeaderMap::new()),
            Err(error) => {
                if error.code == ErrorCode::Internal {
                    tracing::error!(code = %error.code, message = %error.message, "command failed");
                } else {
                    tracing::info!(code = %error.code, message = %error.message, "command refused");
                }
                envelope(&error)
            }
        };
        if let Err(error) = request.respond_with_headers(Ok(body), headers).await {
            tracing::warn!(%error, "cannot send the reply");
        }
    }
    .instrument(span)
    .await
}

async fn run(
    command: Command,
    context: &Context,
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<Bytes, Error> {
    let lanyard = &context.lanyard;
    let max_request_bytes = context.max_request_bytes;
    if payload.len() > max_request_bytes {
        return Err(Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request is {} bytes; the limit is {max_request_bytes}",
                payload.len()
            ),
        ));
    }
    // Each command's future is boxed: `run`, and so every spawned request, stays as small
    // as its arguments instead of as large as the largest command (a callback's HTTP and
    // crypto state), which tokio would copy on every spawn.
    // A caller that names itself is checked (and rate limited) on every command.
    let caller = context.caller(headers)?;
    match command {
        Command::Login => reply(&Box::pin(lanyard.login(decode::<LoginRequest>(payload)?)).await?),
        Command::Callback => {
            reply(&Box::pin(lanyard.callback(decode::<CallbackRequest>(payload)?)).await?)
        }
        Command::Jwks => {
            empty(payload)?;
            reply(&lanyard.jwks())
        }
        Command::SessionVerify => reply(&Box::pin(lanyard.verify(decode(payload)?)).await?),
        Command::SessionRefresh => reply(&Box::pin(lanyard.refresh(decode(payload)?)).await?),
        Command::SessionRevoke => reply(&Box::pin(lanyard.revoke(decode(payload)?)).await?),
        Command::UserGet => reply(&Box::pin(lanyard.user(decode(payload)?)).await?),
        Command::TokenGet => reply(&Box::pin(lanyard.tokens.get(decode(payload)?, caller)).await?),
        Command::IdentityUnlink => reply(&Box::pin(lanyard.unlink(decode(payload)?)).await?),
        Command::AdminKeysRotate => {
            empty(payload)?;
            reply(&Box::pin(lanyard.rotate_keys()).await?)
        }
        Command::ProviderCreate => reply(&Box::pin(lanyard.admin.create(decode(payload)?)).await?),
        Command::ProviderUpdate => reply(&Box::pin(lanyard.admin.update(decode(payload)?)).await?),
        Command::ProviderPatch => reply(&Box::pin(lanyard.admin.patch(decode(payload)?)).await?),
        Command::ProviderDelete => reply(&Box::pin(lanyard.admin.delete(decode(payload)?)).await?),
        Command::ProviderGet => reply(&Box::pin(lanyard.admin.get(decode(payload)?)).await?),
        Command::ProviderList => {
            empty(payload)?;
            reply(&Box::pin(lanyard.admin.list()).await?)
        }
        Command::AdminStatus => {
            empty(payload)?;
            reply(&context.status().await)
        }
    }
}

/// Commands without arguments take `{}` or an empty body.
fn empty(payload: &[u8]) -> Result<(), Error> {
    if !payload.is_empty() {
        decode::<Empty>(payload)?;
    }
    Ok(())
}

/// Decodes a request body, which must be one JSON object.
fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(Error::bad_request("the request body must be a JSON object"));
    }
    serde_json::from_slice(payload).map_err(|e| Error::bad_request(format!("invalid request: {e}")))
}

fn reply<T: Serialize>(value: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| Error::internal(format!("cannot encode the reply: {e}")))
}

/// The error envelope: `{"error": {"code", "message"}}` plus the NATS micro headers.
fn envelope(error: &Error) -> (Bytes, HeaderMap) {
    let body = ErrorReply {
        error: ErrorBody {
            code: error.code,
            message: error.message.clone(),
        },
    };
    let body = serde_json::to_vec(&body).expect("an error envelope (an enum, a string) encodes");
    let mut headers = HeaderMap::new();
    headers.insert(ERROR_CODE_HEADER, error.code.as_str());
    headers.insert(
        ERROR_STATUS_HEADER,
        error.code.status().to_string().as_str(),
    );
    (Bytes::from(body), headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_headers_are_the_ones_nats_micro_reads() {
        assert_eq!(ERROR_CODE_HEADER, async_nats::service::NATS_SERVICE_ERROR);
        assert_eq!(
            ERROR_STATUS_HEADER,
            async_nats::service::NATS_SERVICE_ERROR_CODE
        );
    }

    #[test]
    fn the_envelope_carries_the_code_in_body_and_headers() {
        let (body, headers) = envelope(&Error::invalid_state());
        let reply: ErrorReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(reply.error.code, ErrorCode::InvalidState);
        assert_eq!(
            headers.get(ERROR_CODE_HEADER).map(|v| v.as_str()),
            Some("invalid_state")
        );
        assert_eq!(
            headers.get(ERROR_STATUS_HEADER).map(|v| v.as_str()),
            Some("400")
        );
    }
}
