//! The daemon's Prometheus metrics (prometheus-client), served by the ops listener
//! (`web/ops.rs`). Labels are bounded: commands and error codes are fixed sets, providers
//! are configured instances; never a user, a session or a state.
//!
//! Counters and histograms are updated where things happen (the edge per request, the login
//! path per login, the auth callout per decision); what is a state rather than an event
//! (event queue counts, each instance's health) is read when the metrics are scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use lanyard_proto::{CircuitState, Event, EventCounts, InstanceState};

use crate::error::ErrorCode;
use crate::providers::ProviderHealth;

/// A command and how it ended (`ok`, or its error code).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: String,
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    pub command: String,
}

/// A provider instance, and an outcome (`ok` or an error code) where one applies.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderOutcome {
    pub provider: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// An operation of a provider instance (`callback`, `refresh`, `discovery`, ...), and how it
/// ended where that applies.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub provider: String,
    pub operation: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub provider: String,
    pub operation: String,
}

/// A plugin kind and how its call ended (`ok`, `error`, `overran`, `disabled`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Where a part built before the daemon's metrics exist (the store) finds them once they do.
pub type MetricsSlot = std::sync::Arc<std::sync::OnceLock<std::sync::Arc<Metrics>>>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub store: String,
    pub operation: String,
}

/// Every metric, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<CommandLabels, Counter>,
    request_seconds: Family<CommandLabel, Histogram>,
    logins_started: Family<ProviderLabel, Counter>,
    logins_finished: Family<ProviderOutcome, Counter>,
    nats_auth: Family<ResultLabel, Counter>,
    events_published: Counter,
    events_queued: Gauge,
    events_dropped: Counter,
    /// One scrape at a time: it brings the counters up to date and rebuilds the per-instance
    /// series.
    rendering: std::sync::Mutex<()>,
    circuit: Family<ProviderLabel, Gauge>,
    instance_up: Family<ProviderLabel, Gauge>,
    operations: Family<OperationLabels, Counter>,
    operation_seconds: Family<OperationLabel, Histogram>,
    plugin_calls: Family<PluginLabels, Counter>,
    plugin_seconds: Family<KindLabel, Histogram>,
    store_seconds: Family<StoreLabels, Histogram>,
    feed_lag: Histogram,
    /// Provider label values in use ([`Metrics::provider_label`]).
    providers_seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct provider label values before the rest count as `other`.
const MAX_PROVIDER_LABELS: usize = 256;

/// Latency buckets from 0.5 ms to about 33 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lanyard");
        let requests = Family::<CommandLabels, Counter>::default();
        registry.register(
            "requests",
            "Commands answered, by command and code (ok or the error code)",
            requests.clone(),
        );
        let request_seconds =
            Family::<CommandLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Time to answer a command, by command",
            request_seconds.clone(),
        );
        let logins_started = Family::<ProviderLabel, Counter>::default();
        registry.register(
            "logins_started",
            "Logins started (login, device.start), by provider instance",
            logins_started.clone(),
        );
        let logins_finished = Family::<ProviderOutcome, Counter>::default();
        registry.register(
            "logins_finished",
            "Logins that ended, by provider instance and outcome (ok or the error code)",
            logins_finished.clone(),
        );
        let nats_auth = Family::<ResultLabel, Counter>::default();
        registry.register(
            "nats_auth_decisions",
            "Auth callout decisions: authorized, or the refusal's code",
            nats_auth.clone(),
        );
        let events_published = Counter::default();
        registry.register(
            "events_published",
            "Events handed to NATS (acknowledged by the stream with [events] stream)",
            events_published.clone(),
        );
        let events_queued = Gauge::default();
        registry.register(
            "events_queued",
            "Events waiting to be published (NATS away)",
            events_queued.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Events lost (the queue was full, or the daemon stopped holding them)",
            events_dropped.clone(),
        );
        let circuit = Family::<ProviderLabel, Gauge>::default();
        registry.register(
            "provider_circuit_state",
            "Each instance's circuit: 0 closed, 1 half open, 2 open",
            circuit.clone(),
        );
        let instance_up = Family::<ProviderLabel, Gauge>::default();
        registry.register(
            "provider_up",
            "Each instance's health: 2 ok, 1 degraded, 0 unavailable or restarting",
            instance_up.clone(),
        );
        let operations = Family::<OperationLabels, Counter>::default();
        registry.register(
            "provider_operations",
            "Work a provider instance did at its provider (discovery, jwks, callback, refresh, \
             revoke, device_start, device_poll, login), by result (ok or the error code)",
            operations.clone(),
        );
        let operation_seconds =
            Family::<OperationLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "provider_operation_duration_seconds",
            "Time a provider instance's operation took, the provider's answers included",
            operation_seconds.clone(),
        );
        let plugin_calls = Family::<PluginLabels, Counter>::default();
        registry.register(
            "plugin_calls",
            "Bounded plugin calls by plugin kind and result (ok, error, overran, disabled)",
            plugin_calls.clone(),
        );
        let plugin_seconds =
            Family::<KindLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "plugin_call_duration_seconds",
            "Time a bounded plugin call took (an overrun counts its limit)",
            plugin_seconds.clone(),
        );
        let store_seconds =
            Family::<StoreLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "store_operation_duration_seconds",
            "Store operations' time: JetStream reads, writes, deletes and scans (each with its \
             retries), sled's durable flushes",
            store_seconds.clone(),
        );
        let feed_lag = latency();
        registry.register(
            "feed_lag_seconds",
            "From a shared record's change in the JetStream store to this daemon's change feed \
             reading it",
            feed_lag.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            logins_started,
            logins_finished,
            nats_auth,
            events_published,
            events_queued,
            events_dropped,
            rendering: std::sync::Mutex::default(),
            circuit,
            instance_up,
            operations,
            operation_seconds,
            plugin_calls,
            plugin_seconds,
            store_seconds,
            feed_lag,
            providers_seen: std::sync::Mutex::default(),
        }
    }
}

/// `ok`, or the error's code.
pub fn outcome(code: Option<ErrorCode>) -> String {
    code.map_or_else(|| "ok".to_owned(), |code| code.as_str().to_owned())
}

impl Metrics {
    /// A command refused before it ran (`rate_limited` at the edge): counted, no latency.
    pub fn refused(&self, command: &str, code: ErrorCode) {
        self.requests
            .get_or_create(&CommandLabels {
                command: command.to_owned(),
                code: code.as_str().to_owned(),
            })
            .inc();
    }

    /// A command answered after `seconds`, with `code` when it failed.
    pub fn request(&self, command: &str, code: Option<ErrorCode>, seconds: f64) {
        self.requests
            .get_or_create(&CommandLabels {
                command: command.to_owned(),
                code: outcome(code),
            })
            .inc();
        self.request_seconds
            .get_or_create(&CommandLabel {
                command: command.to_owned(),
            })
            .observe(seconds);
    }

    pub fn login_started(&self, provider: &str) {
        self.logins_started
            .get_or_create(&ProviderLabel {
                provider: self.provider_label(provider),
            })
            .inc();
    }

    pub fn login_finished(&self, provider: &str, code: Option<ErrorCode>) {
        self.logins_finished
            .get_or_create(&ProviderOutcome {
                provider: self.provider_label(provider),
                outcome: outcome(code),
            })
            .inc();
    }

    /// An auth-callout decision: `authorized`, or the refusal's code.
    pub fn nats_auth(&self, code: Option<ErrorCode>) {
        let result = code.map_or_else(|| "authorized".to_owned(), |c| c.as_str().to_owned());
        self.nats_auth.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts the outcomes an event reports: logins finished, auth-callout decisions.
    pub fn event(&self, event: &Event) {
        match event {
            Event::UserLoggedIn { provider, .. } => self.login_finished(provider, None),
            Event::LoginFailed { code, provider } => {
                self.login_finished(provider.as_deref().unwrap_or("unknown"), Some(*code))
            }
            Event::NatsAuthorized { .. } => self.nats_auth(None),
            Event::NatsRefused { code } => self.nats_auth(Some(*code)),
            _ => {}
        }
    }

    /// An operation of provider instance `provider`, and how it ended.
    pub fn provider_operation(
        &self,
        provider: &str,
        operation: &str,
        code: Option<ErrorCode>,
        seconds: f64,
    ) {
        let provider = self.provider_label(provider);
        self.operations
            .get_or_create(&OperationLabels {
                provider: provider.clone(),
                operation: operation.to_owned(),
                result: outcome(code),
            })
            .inc();
        self.operation_seconds
            .get_or_create(&OperationLabel {
                provider,
                operation: operation.to_owned(),
            })
            .observe(seconds);
    }

    /// A store operation of `store` (`sled`, `jetstream`) that took `seconds`.
    pub fn store_operation(&self, store: &str, operation: &str, seconds: f64) {
        self.store_seconds
            .get_or_create(&StoreLabels {
                store: store.to_owned(),
                operation: operation.to_owned(),
            })
            .observe(seconds);
    }

    /// A change the feed read `seconds` after it was written.
    pub fn feed_lag(&self, seconds: f64) {
        self.feed_lag.observe(seconds.max(0.0));
    }

    /// A bounded plugin call of plugin `kind`; `seconds` is `None` for one never made.
    pub fn plugin_call(&self, kind: &str, result: &str, seconds: Option<f64>) {
        self.plugin_calls
            .get_or_create(&PluginLabels {
                kind: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        let Some(seconds) = seconds else { return };
        self.plugin_seconds
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .observe(seconds);
    }

    /// `provider` as a label value: a failed callback may name any provider, so beyond
    /// [`MAX_PROVIDER_LABELS`] distinct ones the rest count as `other`.
    fn provider_label(&self, provider: &str) -> String {
        // Only what an instance id can be (`config::provider`'s rule): nothing to escape.
        let plausible = !provider.is_empty()
            && provider.len() <= 64
            && provider
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plausible {
            return "unknown".to_owned();
        }
        let mut seen = crate::locks::lock(&self.providers_seen);
        if seen.contains(provider) {
            return provider.to_owned();
        }
        if seen.len() < MAX_PROVIDER_LABELS {
            seen.insert(provider.to_owned());
            return provider.to_owned();
        }
        "other".to_owned()
    }

    /// The Prometheus text exposition, with the states read now.
    pub fn render(&self, events: EventCounts, providers: &[ProviderHealth]) -> String {
        let _one = crate::locks::lock(&self.rendering);
        // The sink's totals only grow: the counters catch up with them.
        let catch_up = |counter: &Counter, total: u64| {
            if let Some(delta) = total.checked_sub(counter.get()) {
                counter.inc_by(delta);
            }
        };
        catch_up(&self.events_published, events.published);
        catch_up(&self.events_dropped, events.dropped);
        self.events_queued
            .set(i64::try_from(events.queued).unwrap_or(i64::MAX));
        // Only instances that exist now: a deleted one leaves no stale series.
        self.circuit.clear();
        self.instance_up.clear();
        for health in providers {
            let label = ProviderLabel {
                provider: health.id.clone(),
            };
            let circuit = match health.health.circuit {
                CircuitState::Closed => 0,
                CircuitState::HalfOpen => 1,
                CircuitState::Open => 2,
            };
            self.circuit.get_or_create(&label).set(circuit);
            let up = match health.health.status {
                InstanceState::Ok => 2,
                InstanceState::Degraded => 1,
                _ => 0,
            };
            self.instance_up.get_or_create(&label).set(up);
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            tracing::error!("cannot encode the metrics");
        }
        text
    }
}
