//! Domain events. The core emits them after the durable write; the NATS edge publishes them
//! on `{prefix}.events.{name}`. A bounded queue sits between the two so a stalled connection
//! cannot grow memory without bound.

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
}

impl EventSink {
    pub fn channel() -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(QUEUE_BOUND);
        (Self { tx }, rx)
    }

    pub fn emit(&self, event: Event) {
        if let Err(error) = self.tx.try_send(event) {
            tracing::warn!(%error, "event queue full or closed; event dropped");
        }
    }
}
