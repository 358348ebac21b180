//! The configuration's sections other than providers: store, events, NATS, sessions, admin,
//! callers, outgoing HTTP and the vault's master key.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::secret::SecretSource;
use super::ConfigError;

/// Which store holds the daemon's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sled,
    Jetstream,
}

/// The JetStream store's buckets (with `store = "jetstream"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    /// Bucket names start with this: `lanyard_users`, `lanyard_sessions`, ...
    pub bucket_prefix: String,
    /// Replicas of every bucket: 1 on a single server, 3 (or 5) on a cluster.
    pub replicas: usize,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            bucket_prefix: "lanyard".into(),
            replicas: 1,
        }
    }
}

/// Where events go besides core NATS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Keep events in a JetStream stream, so operators can replay them (`lanyard events
    /// --since 1h`); publishing then waits for the stream's acknowledgement.
    pub stream: bool,
    /// The stream's name.
    pub stream_name: String,
    /// How long the stream keeps an event, in hours.
    pub max_age_hours: u64,
    /// Replicas of the stream.
    pub replicas: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            stream: false,
            stream_name: "LANYARD_EVENTS".into(),
            max_age_hours: 24 * 7,
            replicas: 1,
        }
    }
}

/// Tuning of the embedded sled store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SledConfig {
    /// The page cache's size in MiB: records read or written recently stay in memory up to
    /// this much (sled's own estimate; the process's RSS runs somewhat above it).
    pub cache_mb: u64,
}

impl Default for SledConfig {
    fn default() -> Self {
        Self { cache_mb: 64 }
    }
}

/// How the daemon reaches NATS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub url: String,
    /// The first token of every subject: `{prefix}.v1.login`, `{prefix}.events.>`.
    pub subject_prefix: String,
    /// The queue group several daemons share load through.
    pub queue_group: String,
    /// The connection name shown by `nats server report connections`.
    pub name: String,
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
    pub token: Option<SecretString>,
    pub token_file: Option<PathBuf>,
    pub nkey_seed: Option<SecretString>,
    pub nkey_seed_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
    pub tls: TlsConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: "lanyard".into(),
            queue_group: "lanyard".into(),
            name: "lanyard".into(),
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            nkey_seed: None,
            nkey_seed_file: None,
            creds_file: None,
            tls: TlsConfig::default(),
        }
    }
}

/// TLS towards NATS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Require TLS even when the URL says `nats://`.
    pub required: bool,
    /// Extra root certificates (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Lanyard's own session tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// `iss` of issued access tokens.
    pub issuer: String,
    /// `aud` of issued access tokens.
    pub audience: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    /// How long a used refresh token still answers the successor it was exchanged for (two
    /// tabs refreshing at once, a retry after a lost reply); 0: never, every reuse revokes
    /// the session. At most 300.
    pub refresh_reuse_grace_secs: u64,
    /// What access tokens carry about the user, unless the login's provider instance sets
    /// its own `claims`.
    pub claims: super::ClaimsConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            issuer: "lanyard".into(),
            audience: "lanyard".into(),
            access_ttl_secs: 15 * 60,
            refresh_ttl_secs: 30 * 24 * 3600,
            refresh_reuse_grace_secs: 5,
            claims: super::ClaimsConfig::default(),
        }
    }
}

/// `[ops]`: the operators' HTTP listener (`/healthz`, `/readyz`, `/metrics`), on an address
/// of its own so it can stay private while the hosted pages are public. Off when absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Where it binds (`127.0.0.1:9464`).
    pub listen: std::net::SocketAddr,
}

/// `[admin]`: who may run `{prefix}.v1.admin.*` commands. NATS permissions on those
/// subjects are the first fence; a token adds a second.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// When set, admin requests must carry it in the `Lanyard-Admin-Token` header.
    pub token: Option<SecretString>,
    pub token_file: Option<PathBuf>,
}

impl AdminConfig {
    /// The admin token from whichever source is set.
    pub fn resolve_token(&self) -> Result<Option<SecretString>, ConfigError> {
        SecretSource::new(
            "admin.token",
            self.token.as_ref(),
            self.token_file.as_deref(),
        )
        .resolve()
    }
}

/// `[[callers]]`: a service that identifies itself with a token in the
/// `Lanyard-Caller-Token` header, so providers can name it in `token_readers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    pub name: String,
    #[serde(default)]
    pub token: Option<SecretString>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Requests per second this caller may make (bursts up to as many); beyond it,
    /// `rate_limited`. Unlimited when absent.
    #[serde(default)]
    pub rate_limit_per_sec: Option<std::num::NonZeroU32>,
    /// With `[nats_auth]`: this caller may connect to NATS with its token and gets these
    /// permissions (literal subjects). Without it, its token opens no NATS connection.
    #[serde(default)]
    pub nats_permissions: Option<super::NatsPermissionTemplates>,
}

impl CallerConfig {
    /// The caller's token from whichever source is set.
    pub fn resolve_token(&self, label: &str) -> Result<SecretString, ConfigError> {
        let key = format!("{label}.token");
        let token =
            SecretSource::new(&key, self.token.as_ref(), self.token_file.as_deref()).require()?;
        if token.expose_secret().len() < 16 {
            return Err(ConfigError::at(key, "use at least 16 characters"));
        }
        Ok(token)
    }
}

/// Outgoing HTTP to identity providers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub connect_timeout_ms: u64,
    /// The whole request, connect included.
    pub timeout_ms: u64,
    /// Allow `http://` provider URLs on hosts other than loopback (never in production).
    pub allow_insecure_http: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 3_000,
            timeout_ms: 10_000,
            allow_insecure_http: false,
        }
    }
}

/// `[vault]`: where the master key comes from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// The master key: 32 random bytes, base64 (`head -c 32 /dev/urandom | base64`).
    pub master_key: Option<SecretString>,
    /// Read the master key from this file instead.
    pub master_key_file: Option<PathBuf>,
    /// Earlier master keys (files), still used to open what they sealed.
    pub previous_key_files: Vec<PathBuf>,
}

impl VaultConfig {
    /// The configured master key (base64, not yet parsed), if one is set.
    pub(crate) fn master_key(&self) -> Result<Option<SecretString>, ConfigError> {
        SecretSource::new(
            "vault.master_key",
            self.master_key.as_ref(),
            self.master_key_file.as_deref(),
        )
        .resolve()
    }
}
