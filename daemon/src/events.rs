//! Domain events. The core emits them after the durable write; the NATS edge publishes them
//! on `{prefix}.events.{name}`. A bounded queue sits between the two so a stalled connection
//! cannot grow memory without bound.
//!
//! While NATS is unreachable, events wait in that queue (and in the client's own buffer) and
//! go out after the reconnect. Beyond the bound they are dropped: counted, logged and shown by
//! `admin.status`, never silently. A daemon stopped or killed during an outage loses the
//! events it still held (see RELIABILITY.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lanyard_proto::EventCounts;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::session::{now, rfc3339};

/// How many events may wait for publishing before new ones are dropped (and counted).
pub const QUEUE_BOUND: usize = 10_000;

/// One event: its name (`user.logged_in`) and its body.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: &'static str,
    pub body: Value,
}

impl Event {
    /// An event with `event_id`, `type`, `occurred_at` and the given ids. Never pass a token
    /// or secret here.
    pub fn new(name: &'static str, fields: Value) -> Self {
        let mut body = Map::new();
        body.insert(
            "event_id".into(),
            json!(format!("evt_{}", ulid::Ulid::new())),
        );
        body.insert("type".into(), json!(name));
        body.insert("occurred_at".into(), json!(rfc3339(now())));
        if let Value::Object(fields) = fields {
            body.extend(fields.into_iter().filter(|(_, v)| !v.is_null()));
        }
        Self {
            name,
            body: Value::Object(body),
        }
    }
}

/// Where the core sends events.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    counts: Arc<Counters>,
}

/// The publishing end: the queue and the counters it reports to.
#[derive(Debug)]
pub struct EventQueue {
    pub rx: mpsc::Receiver<Event>,
    counts: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    emitted: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
}

impl EventSink {
    pub fn channel() -> (Self, EventQueue) {
        let (tx, rx) = mpsc::channel(QUEUE_BOUND);
        let counts = Arc::new(Counters::default());
        (
            Self {
                tx,
                counts: counts.clone(),
            },
            EventQueue { rx, counts },
        )
    }

    pub fn emit(&self, event: Event) {
        let name = event.name;
        match self.tx.try_send(event) {
            Ok(()) => {
                self.counts.emitted.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                let dropped = self.counts.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // The first drop and every thousandth after it: a flood of drops must not
                // become a flood of log lines.
                if dropped % 1000 == 1 {
                    tracing::error!(
                        event = name,
                        dropped_so_far = dropped,
                        reason = %error,
                        "event queue full or closed: event dropped (is NATS reachable?)"
                    );
                }
            }
        }
    }

    pub fn counts(&self) -> EventCounts {
        self.counts.snapshot()
    }
}

/// A handle on the counters, for whoever stops the publisher.
#[derive(Debug, Clone)]
pub struct EventCounter {
    counts: Arc<Counters>,
}

impl EventCounter {
    pub fn counts(&self) -> EventCounts {
        self.counts.snapshot()
    }

    /// Records that `n` events still held were given up (the daemon stopped, or NATS refused
    /// them): they count as dropped.
    pub fn lost_at_stop(&self, n: u64) {
        self.counts.dropped.fetch_add(n, Ordering::Relaxed);
        self.counts.emitted.fetch_sub(n, Ordering::Relaxed);
    }
}

impl EventQueue {
    /// A handle on this queue's counters.
    pub fn counter(&self) -> EventCounter {
        EventCounter {
            counts: self.counts.clone(),
        }
    }

    /// Records that an event could not be published and is given up.
    pub fn failed(&self) {
        self.counter().lost_at_stop(1);
    }

    /// Records that an event left for NATS.
    pub fn published(&self) {
        self.counts.published.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> EventCounts {
        self.counts.snapshot()
    }
}

impl Counters {
    fn snapshot(&self) -> EventCounts {
        let published = self.published.load(Ordering::Relaxed);
        let emitted = self.emitted.load(Ordering::Relaxed);
        EventCounts {
            published,
            dropped: self.dropped.load(Ordering::Relaxed),
            queued: emitted.saturating_sub(published),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (sink, mut queue) = EventSink::channel();
        for _ in 0..QUEUE_BOUND + 3 {
            sink.emit(Event::new("user.logged_in", json!({ "user_id": "usr_1" })));
        }
        assert_eq!(
            sink.counts(),
            EventCounts {
                published: 0,
                dropped: 3,
                queued: QUEUE_BOUND as u64
            }
        );
        queue.rx.try_recv().unwrap();
        queue.published();
        let counts = queue.counts();
        assert_eq!(
            (counts.published, counts.queued),
            (1, QUEUE_BOUND as u64 - 1)
        );
    }
}
