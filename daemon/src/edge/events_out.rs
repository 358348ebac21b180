//! Events leaving the daemon: the publisher task (core NATS, or the events stream with acknowledgements and de-duplication), the stream itself, and replay for `lanyard events --since`.

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;

use lanyard_proto::{all_events_subject, event_name, EventEnvelope};

use super::{nats_error, EdgeError};
use crate::events::EventQueue;

/// How long a stopping daemon tries to publish the events it still holds.
pub(super) const EVENT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The task that publishes events, and how to tell it to drain and stop.
#[derive(Debug)]
pub(super) struct Publisher {
    pub(super) task: JoinHandle<()>,
    pub(super) drain: tokio::sync::oneshot::Sender<()>,
    pub(super) counts: crate::events::EventCounter,
}

impl Publisher {
    /// Starts publishing what `events` receives on `{prefix}.events.*`: to the events stream
    /// (acknowledged, de-duplicated) when `stream`, else to core NATS.
    pub(super) fn start(client: Client, prefix: String, events: EventQueue, stream: bool) -> Self {
        let (drain, drained) = tokio::sync::oneshot::channel::<()>();
        let counts = events.counter();
        let task = if stream {
            tokio::spawn(publish_to_stream(client, prefix, events, drained))
        } else {
            tokio::spawn(publish_to_core(client, prefix, events, drained))
        };
        Self {
            task,
            drain,
            counts,
        }
    }

    /// Asks the publisher to send what it holds, waits up to `limit`, then stops it. What
    /// was not published by then is lost (the daemon is stopping): counted and logged.
    pub(super) async fn drain(self, limit: std::time::Duration) {
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
) -> Result<(), EdgeError> {
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
        .map_err(nats_error(format!(
            "cannot create the events stream `{}` (is JetStream enabled on the NATS server?)",
            config.stream_name
        )))
}

/// How long the events stream remembers event ids to drop retried publishes.
pub(super) const EVENT_DEDUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// At most this many events wait for the stream's acknowledgement at once.
pub(super) const MAX_UNACKED_EVENTS: usize = 256;

/// An event ready to publish: serialised once (lanyard-proto's one serialisation of events),
/// then published, and retried to the stream, as these bytes.
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    pub(super) name: &'static str,
    pub(super) subject: String,
    pub(super) event_id: String,
    pub(super) body: Bytes,
}

impl Outgoing {
    /// Encodes `envelope` for `{prefix}.events.{name}`. An event that cannot be encoded
    /// (never seen: its fields are strings, numbers and enums) is counted as lost and logged.
    pub(super) fn encode(
        prefix: &str,
        envelope: EventEnvelope,
        events: &EventQueue,
    ) -> Option<Self> {
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
pub(super) async fn publish_to_core(
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
pub(super) const RECONNECT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// JetStream: each event published with its id as `Nats-Msg-Id` and counted only once the
/// stream acknowledged it; a publish that fails or goes unacknowledged (NATS away, the
/// stream's leader moving) is retried with back-off, and the stream drops the duplicates a
/// retry can make. Up to [`MAX_UNACKED_EVENTS`] wait for acknowledgements at once.
pub(super) async fn publish_to_stream(
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
) -> Result<impl futures::Stream<Item = (String, Bytes)>, EdgeError> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_stream(&config.stream_name)
        .await
        .map_err(nats_error(format!(
            "no events stream `{}` to replay from (set [events] stream = true on the daemons)",
            config.stream_name
        )))?;
    let start_time = time::OffsetDateTime::now_utc() - since;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await
        .map_err(nats_error("cannot read the events stream"))?;
    let messages = consumer
        .messages()
        .await
        .map_err(nats_error("cannot read the events stream"))?;
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
