//! Domain events on their way out. The core emits a `lanyard_proto::Event` after the durable
//! write; the sink stamps it with its id and time, and the NATS edge serialises and publishes
//! it on `{prefix}.events.{name}`. A bounded queue sits between the two so a stalled
//! connection cannot grow memory without bound.
//!
//! While NATS is unreachable, events wait in that queue (and in the client's own buffer) and
//! go out after the reconnect. Beyond the bound they are dropped: counted, logged and shown by
//! `admin.status`, never silently. A daemon stopped or killed during an outage loses the
//! events it still held (see RELIABILITY.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lanyard_proto::{Event, EventCounts, EventEnvelope};
use tokio::sync::mpsc;

use crate::sessions::{now, rfc3339};

/// How many events may wait for publishing before new ones are dropped (and counted).
pub const QUEUE_BOUND: usize = 10_000;

/// Where the core sends events.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<EventEnvelope>,
    counts: Arc<Counters>,
    /// The daemon's metrics; the outcomes events report are counted there.
    metrics: Arc<crate::metrics::Metrics>,
}

/// The publishing end: the queue and the counters it reports to.
#[derive(Debug)]
pub struct EventQueue {
    pub rx: mpsc::Receiver<EventEnvelope>,
    counts: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    emitted: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
}

impl EventSink {
    /// A sink that counts into the daemon's `metrics`.
    pub fn channel_with(metrics: Arc<crate::metrics::Metrics>) -> (Self, EventQueue) {
        let (tx, rx) = mpsc::channel(QUEUE_BOUND);
        let counts = Arc::new(Counters::default());
        (
            Self {
                tx,
                counts: counts.clone(),
                metrics,
            },
            EventQueue { rx, counts },
        )
    }

    /// The daemon's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Queues `event`, stamped with a new id (`evt_` + ULID) and the time now. Events carry
    /// ids, never a token or a secret.
    pub fn emit(&self, event: Event) {
        self.metrics.event(&event);
        let name = event.name();
        let event = EventEnvelope {
            event_id: format!("evt_{}", ulid::Ulid::new()),
            occurred_at: rfc3339(now()),
            event,
        };
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

    /// The counters as they are now (tests read them here).
    #[cfg(test)]
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
        let (sink, mut queue) = EventSink::channel_with(Arc::default());
        for _ in 0..QUEUE_BOUND + 3 {
            sink.emit(Event::TokenRefreshed {
                user_id: "usr_1".into(),
                provider: "github".into(),
            });
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
