//! The admin commands' bodies: provider instances (`admin.provider.*`),
//! `admin.keys.rotate` and `admin.status`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `admin.provider.create` and `admin.provider.update`: an instance, the same object as a
/// `[[providers]]` table of the config file (`id`, `kind`, `client_id`, `client_secret`,
/// `redirect_uris`, ... and the plugin's own keys). Which keys exist depends on the plugin,
/// so the contract keeps it as a JSON object; the daemon validates it like the file's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProviderInstance(pub Map<String, Value>);

/// `admin.provider.patch`: `id` and the keys to change; `null` removes a key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProviderPatch(pub Map<String, Value>);

/// `admin.provider.delete` / `admin.provider.get`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderIdRequest {
    pub id: String,
}

/// An instance as admin replies show it: its config, the secret masked, and bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderView {
    #[serde(flatten)]
    pub config: Map<String, Value>,
    /// `config` (from the config file, read-only here) or `admin`.
    pub source: String,
    pub version: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderReply {
    pub provider: ProviderView,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderListReply {
    pub providers: Vec<ProviderView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateKeysReply {
    pub kid: String,
}

/// `admin.status`: what an operator checks first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The daemon's version.
    pub version: String,
    pub uptime_secs: u64,
    pub requests_in_flight: u64,
    pub max_in_flight: u64,
    pub events: EventCounts,
    pub shared_changes: SharedChanges,
    pub providers: Vec<ProviderStatus>,
}

/// How many events this daemon has published, dropped, and holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Handed to the NATS client (acknowledged by the stream, with `[events] stream`).
    pub published: u64,
    /// Lost: the queue was full, or the daemon stopped while it still held them.
    pub dropped: u64,
    /// Waiting to be published (during a NATS outage).
    pub queued: u64,
}

/// Whether the daemon follows the store's changes to shared state (provider instances,
/// signing keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedChanges {
    Following,
    /// It cannot now; it catches up when it is back.
    Reconnecting,
}

/// One provider instance in `admin.status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStatus {
    pub id: String,
    pub kind: String,
    pub status: InstanceState,
    pub circuit: CircuitState,
    pub consecutive_failures: u32,
    pub stuck_plugin_calls: u64,
    /// Why the instance does not run on this daemon, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a provider instance is doing on a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Serving, nothing amiss.
    Ok,
    /// Serving, but the provider failed lately, its circuit is probing, or a plugin call is
    /// stuck.
    Degraded,
    /// Not serving: the circuit is open, too many plugin calls are stuck, or the instance
    /// cannot run on this daemon.
    Unavailable,
    /// Its actor is being replaced, or did not answer in time.
    Restarting,
}

/// An instance's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    /// A probe is out, or the next request will be one.
    HalfOpen,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_status_reply_is_pinned() {
        let reply = StatusReply {
            version: "0.1.0".into(),
            uptime_secs: 3600,
            requests_in_flight: 3,
            max_in_flight: 4096,
            events: EventCounts {
                published: 1520,
                dropped: 0,
                queued: 0,
            },
            shared_changes: SharedChanges::Following,
            providers: vec![
                ProviderStatus {
                    id: "github".into(),
                    kind: "github".into(),
                    status: InstanceState::Ok,
                    circuit: CircuitState::Closed,
                    consecutive_failures: 0,
                    stuck_plugin_calls: 0,
                    error: None,
                },
                ProviderStatus {
                    id: "acme".into(),
                    kind: "oidc".into(),
                    status: InstanceState::Unavailable,
                    circuit: CircuitState::Closed,
                    consecutive_failures: 0,
                    stuck_plugin_calls: 0,
                    error: Some("no plugin of kind `oidc` on this daemon".into()),
                },
            ],
        };
        // Field order as the daemon has always written them.
        let expected = concat!(
            r#"{"version":"0.1.0","uptime_secs":3600,"requests_in_flight":3,"#,
            r#""max_in_flight":4096,"events":{"published":1520,"dropped":0,"queued":0},"#,
            r#""shared_changes":"following","providers":["#,
            r#"{"id":"github","kind":"github","status":"ok","circuit":"closed","#,
            r#""consecutive_failures":0,"stuck_plugin_calls":0},"#,
            r#"{"id":"acme","kind":"oidc","status":"unavailable","circuit":"closed","#,
            r#""consecutive_failures":0,"stuck_plugin_calls":0,"#,
            r#""error":"no plugin of kind `oidc` on this daemon"}]}"#
        );
        assert_eq!(serde_json::to_string(&reply).unwrap(), expected);
        assert_eq!(
            serde_json::from_str::<StatusReply>(expected).unwrap(),
            reply
        );
        assert_eq!(
            serde_json::to_value(SharedChanges::Reconnecting).unwrap(),
            json!("reconnecting")
        );
    }

    #[test]
    fn a_provider_view_lists_its_config_then_its_bookkeeping() {
        let mut config = Map::new();
        config.insert("kind".into(), json!("oidc"));
        config.insert("id".into(), json!("acme"));
        config.insert("client_secret".into(), json!("********"));
        let reply = ProviderReply {
            provider: ProviderView {
                config,
                source: "admin".into(),
                version: 2,
                created_at: Some("2026-11-22T05:47:58Z".into()),
                updated_at: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            concat!(
                r#"{"provider":{"client_secret":"********","id":"acme","kind":"oidc","#,
                r#""source":"admin","version":2,"created_at":"2026-11-22T05:47:58Z","#,
                r#""updated_at":null}}"#
            )
        );
    }
}
