//! The daemon's configuration: a TOML file plus `LANYARD_` environment overrides (figment),
//! validated before anything connects anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A configuration problem. Its message names the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn at(key: impl std::fmt::Display, message: impl std::fmt::Display) -> Self {
        Self(format!("`{key}`: {message}"))
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the sled store lives. Created on first start.
    pub data_dir: PathBuf,
    /// Where provider plugins are loaded from. Default: the binary's directory (and its parent
    /// when the binary sits in a cargo `deps/` directory).
    pub plugin_dir: Option<PathBuf>,
    /// The largest request body accepted, in bytes; larger ones get `payload_too_large`.
    pub max_request_bytes: usize,
    /// Requests handled at once; beyond it the daemon answers `rate_limited` at once instead
    /// of queueing without bound.
    pub max_in_flight: usize,
    /// On SIGTERM, how long requests already taken may take to finish, in seconds.
    pub shutdown_grace_secs: u64,
    /// How long a started login may take before its state expires, in seconds.
    pub pending_ttl_secs: u64,
    /// Where state lives: `sled` (embedded, for one daemon) or `jetstream` (NATS JetStream
    /// key-value buckets, shared by every daemon of the queue group).
    pub store: StoreKind,
    pub sled: SledConfig,
    pub jetstream: JetStreamConfig,
    pub events: EventsConfig,
    pub nats: NatsConfig,
    pub sessions: SessionConfig,
    pub http: HttpConfig,
    pub vault: crate::vault::VaultConfig,
    pub admin: AdminConfig,
    /// Refresh a stored provider token this many seconds before it expires.
    pub token_refresh_margin_secs: u64,
    /// Named callers: services that identify themselves to read provider tokens.
    pub callers: Vec<CallerConfig>,
    pub providers: Vec<ProviderConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./.lanyard/data"),
            plugin_dir: None,
            max_request_bytes: 64 * 1024,
            max_in_flight: 4096,
            shutdown_grace_secs: 10,
            pending_ttl_secs: 600,
            store: StoreKind::Sled,
            sled: SledConfig::default(),
            jetstream: JetStreamConfig::default(),
            events: EventsConfig::default(),
            nats: NatsConfig::default(),
            sessions: SessionConfig::default(),
            http: HttpConfig::default(),
            vault: crate::vault::VaultConfig::default(),
            admin: AdminConfig::default(),
            token_refresh_margin_secs: 60,
            callers: Vec::new(),
            providers: Vec::new(),
        }
    }
}

/// Which [`Store`](crate::store::Store) holds the daemon's state.
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
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            issuer: "lanyard".into(),
            audience: "lanyard".into(),
            access_ttl_secs: 15 * 60,
            refresh_ttl_secs: 30 * 24 * 3600,
        }
    }
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
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(ConfigError::at(
                "admin.token",
                "set token or token_file, not both",
            )),
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(path)) => read_secret_file(path)
                .map(Some)
                .map_err(|e| ConfigError::at("admin.token_file", e)),
            (None, None) => Ok(None),
        }
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
}

impl CallerConfig {
    /// The caller's token from whichever source is set.
    pub fn resolve_token(&self, label: &str) -> Result<SecretString, ConfigError> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), None) => token.clone(),
            (None, Some(path)) => read_secret_file(path)
                .map_err(|e| ConfigError::at(format!("{label}.token_file"), e))?,
            _ => {
                return Err(ConfigError::at(
                    format!("{label}.token"),
                    "set exactly one of token and token_file",
                ))
            }
        };
        if token.expose_secret().len() < 16 {
            return Err(ConfigError::at(
                format!("{label}.token"),
                "use at least 16 characters",
            ));
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

/// One provider instance. Keys besides these are the plugin's own (`issuer`, `base_url`, ...),
/// checked against the fields the plugin describes. Serializing it never writes a secret.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ProviderConfig {
    /// The instance id callers name in `provider`.
    pub id: String,
    /// The plugin kind, e.g. `oidc` or `github`.
    pub kind: String,
    pub client_id: String,
    #[serde(default, skip_serializing)]
    pub client_secret: Option<SecretString>,
    /// Read the client secret from this file (trailing newline trimmed).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Read the client secret from this environment variable.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Scopes to request; default: the plugin's default scopes.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// The allowed redirect URIs; the first is the default.
    pub redirect_uris: Vec<String>,
    /// Link a new identity to the user who already has its email, when the provider says
    /// the email is verified. Off by default: such a login gets `account_exists`.
    #[serde(default)]
    pub trust_email_verified: bool,
    /// ID-token signature algorithms accepted. Never HS* or `none`.
    #[serde(default = "default_algs")]
    pub allowed_algs: Vec<String>,
    /// Allowed clock difference for ID-token `exp`, `iat` and `nbf`, in seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u64,
    /// Keep the provider's access and refresh tokens (sealed) so services can call the
    /// provider's API for the user through `token.get`.
    #[serde(default)]
    pub store_tokens: bool,
    /// The callers (by `[[callers]]` name) allowed to read this provider's tokens; `"*"`
    /// allows anyone who may publish to `token.get` (fence it with NATS permissions).
    #[serde(default)]
    pub token_readers: Vec<String>,
    /// Where a login's `return_to` may point: absolute URL prefixes (same scheme, host and
    /// port, path under theirs). Relative paths (`/account`) are always on-site. Empty:
    /// anything goes (the caller checks).
    #[serde(default)]
    pub allowed_return_to: Vec<String>,
    /// Logins per second this instance starts (bursts up to as many); beyond it,
    /// `rate_limited`. Callbacks follow admitted logins. Unlimited when absent.
    #[serde(default)]
    pub rate_limit_per_sec: Option<std::num::NonZeroU32>,
    /// This instance's HTTP timeouts, in milliseconds, when not `[http]`'s: connecting, and
    /// each whole request (connect included). Overruns are `provider_unavailable`.
    #[serde(default)]
    pub http_connect_timeout_ms: Option<u64>,
    #[serde(default)]
    pub http_timeout_ms: Option<u64>,
    /// How long one plugin operation may take, in milliseconds. A call that overruns is
    /// answered `provider_unavailable` and the instance is restarted.
    #[serde(default = "default_plugin_timeout")]
    pub plugin_timeout_ms: u64,
    /// Consecutive failures to reach the provider (timeouts, 5xx, refused connections) that
    /// open the instance's circuit: it then answers `provider_unavailable` at once.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit stays open before one request probes the provider again.
    #[serde(default = "default_circuit_open")]
    pub circuit_open_secs: u64,
    /// The plugin's own settings.
    #[serde(flatten)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

fn default_algs() -> Vec<String> {
    ["RS256", "ES256", "PS256", "EdDSA"]
        .map(String::from)
        .to_vec()
}

const fn default_skew() -> u64 {
    60
}

const fn default_plugin_timeout() -> u64 {
    2000
}

const fn default_circuit_failures() -> u32 {
    5
}

const fn default_circuit_open() -> u64 {
    30
}

/// The signature algorithms an operator may allow for ID tokens.
pub const ALLOWED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl ProviderConfig {
    /// Checks the common keys; `label` names the instance in messages (`providers[2]`).
    /// The plugin's own keys are checked when the instance is built.
    pub fn validate(&self, label: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{label}.{k}");
        if self.id.is_empty()
            || self.id.len() > 64
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::at(
                key("id"),
                "use 1 to 64 letters, digits, '-' and '_'",
            ));
        }
        if self.client_id.is_empty() {
            return Err(ConfigError::at(key("client_id"), "must not be empty"));
        }
        for (name, value) in [
            ("http_timeout_ms", self.http_timeout_ms),
            ("http_connect_timeout_ms", self.http_connect_timeout_ms),
        ] {
            if value == Some(0) {
                return Err(ConfigError::at(key(name), "must be at least 1"));
            }
        }
        for entry in &self.allowed_return_to {
            let ok = url::Url::parse(entry)
                .is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
            if !ok {
                return Err(ConfigError::at(
                    key("allowed_return_to"),
                    format!("`{entry}` is not an absolute http(s) URL"),
                ));
            }
        }
        if self.redirect_uris.is_empty() {
            return Err(ConfigError::at(
                key("redirect_uris"),
                "list at least one redirect URI",
            ));
        }
        for uri in &self.redirect_uris {
            let parsed = url::Url::parse(uri).map_err(|e| {
                ConfigError::at(key("redirect_uris"), format!("`{uri}` is not a URL: {e}"))
            })?;
            if parsed.fragment().is_some() {
                return Err(ConfigError::at(
                    key("redirect_uris"),
                    format!("`{uri}` must not have a fragment"),
                ));
            }
        }
        for alg in &self.allowed_algs {
            if !ALLOWED_ALGS.contains(&alg.as_str()) {
                return Err(ConfigError::at(
                    key("allowed_algs"),
                    format!("`{alg}` is not allowed; choose from {ALLOWED_ALGS:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Checks that `token_readers` names configured callers (a typo would deny silently).
    pub fn check_readers(
        &self,
        label: &str,
        callers: &std::collections::HashSet<&str>,
    ) -> Result<(), ConfigError> {
        for reader in &self.token_readers {
            if reader != "*" && !callers.contains(reader.as_str()) {
                return Err(ConfigError::at(
                    format!("{label}.token_readers"),
                    format!("no [[callers]] entry is named `{reader}`"),
                ));
            }
        }
        Ok(())
    }

    /// The client secret from whichever of its three sources is set.
    pub fn resolve_secret(&self, label: &str) -> Result<Option<SecretString>, ConfigError> {
        let key = |k: &str| format!("{label}.{k}");
        let sources = [
            self.client_secret.is_some(),
            self.client_secret_file.is_some(),
            self.client_secret_env.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(ConfigError::at(
                key("client_secret"),
                "set only one of client_secret, client_secret_file, client_secret_env",
            ));
        }
        if let Some(secret) = &self.client_secret {
            return Ok(Some(secret.clone()));
        }
        if let Some(path) = &self.client_secret_file {
            return read_secret_file(path)
                .map(Some)
                .map_err(|e| ConfigError::at(key("client_secret_file"), e));
        }
        if let Some(var) = &self.client_secret_env {
            return std::env::var(var)
                .map(|v| Some(SecretString::from(v)))
                .map_err(|_| {
                    ConfigError::at(key("client_secret_env"), format!("${var} is not set"))
                });
        }
        Ok(None)
    }
}

/// Reads a secret from a file, trimming the trailing newline editors add.
pub fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    std::fs::read_to_string(path)
        .map(|s| SecretString::from(s.trim_end_matches(['\n', '\r']).to_owned()))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl Config {
    /// Loads the file (if any) and the `LANYARD_*` environment (`__` separates nested keys,
    /// e.g. `LANYARD_NATS__URL`), then validates what needs no plugin.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!(
                    "the config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(
            // The command line's own variables are not configuration keys. Figment hands the
            // key over as written (upper case), so compare without case.
            Env::prefixed("LANYARD_")
                .filter(|k| {
                    !["config", "log", "log_format"]
                        .iter()
                        .any(|own| k.as_str().eq_ignore_ascii_case(own))
                })
                .split("__"),
        );
        Self::from_figment(figment)
    }

    /// Parses configuration from a TOML string (used by tests and `config/` checks).
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(toml)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError(e.to_string().replace("default.", "")))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.nats.subject_prefix.is_empty()
            || self
                .nats
                .subject_prefix
                .contains(|c: char| c.is_whitespace() || matches!(c, '*' | '>'))
        {
            return Err(ConfigError::at(
                "nats.subject_prefix",
                "must be a non-empty subject token without spaces or wildcards",
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1 << 20 {
            return Err(ConfigError::at(
                "max_in_flight",
                "must be between 1 and 1048576",
            ));
        }
        if self.max_request_bytes == 0 {
            return Err(ConfigError::at("max_request_bytes", "must be positive"));
        }
        if self.pending_ttl_secs == 0 {
            return Err(ConfigError::at("pending_ttl_secs", "must be positive"));
        }
        if self.sled.cache_mb == 0 || self.sled.cache_mb > 1024 * 1024 {
            return Err(ConfigError::at(
                "sled.cache_mb",
                "must be between 1 and 1048576",
            ));
        }
        let name_ok = |name: &str| {
            !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.jetstream.bucket_prefix) {
            return Err(ConfigError::at(
                "jetstream.bucket_prefix",
                "use 1 to 64 letters, digits, '-' and '_'",
            ));
        }
        if !name_ok(&self.events.stream_name) {
            return Err(ConfigError::at(
                "events.stream_name",
                "use 1 to 64 letters, digits, '-' and '_'",
            ));
        }
        for (key, replicas) in [
            ("jetstream.replicas", self.jetstream.replicas),
            ("events.replicas", self.events.replicas),
        ] {
            if !(1..=5).contains(&replicas) {
                return Err(ConfigError::at(
                    key,
                    "must be between 1 and 5 (JetStream's limit)",
                ));
            }
        }
        if self.store == StoreKind::Jetstream
            && self.vault.master_key.is_none()
            && self.vault.master_key_file.is_none()
        {
            return Err(ConfigError::at(
                "vault.master_key",
                "with store = \"jetstream\" every daemon must seal with the same master key: \
                 set vault.master_key_file (or LANYARD_VAULT__MASTER_KEY) on each",
            ));
        }
        if self.events.max_age_hours == 0 {
            return Err(ConfigError::at("events.max_age_hours", "must be positive"));
        }
        if let Some(token) = self.admin.resolve_token()? {
            if token.expose_secret().len() < 16 {
                return Err(ConfigError::at("admin.token", "use at least 16 characters"));
            }
        }
        let mut callers = std::collections::HashSet::new();
        for (i, caller) in self.callers.iter().enumerate() {
            let label = format!("callers[{i}]");
            caller.resolve_token(&label)?;
            if caller.name.is_empty() || caller.name == "*" || !callers.insert(caller.name.as_str())
            {
                return Err(ConfigError::at(
                    format!("{label}.name"),
                    "names must be unique, non-empty and not `*`",
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let label = format!("providers[{i}]");
            p.validate(&label)?;
            p.check_readers(&label, &callers)?;
            if !seen.insert(p.id.as_str()) {
                return Err(ConfigError::at(
                    format!("{label}.id"),
                    format!("`{}` is used twice", p.id),
                ));
            }
            p.resolve_secret(&label)?;
        }
        Ok(())
    }

    /// The directories plugins are loaded from, in order.
    pub fn plugin_dirs(&self) -> Vec<PathBuf> {
        if let Some(dir) = &self.plugin_dir {
            return vec![dir.clone()];
        }
        let mut dirs = Vec::new();
        if let Some(exe_dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            // Test binaries and examples live in target/<profile>/deps; plugins one level up.
            if exe_dir.ends_with("deps") || exe_dir.ends_with("examples") {
                if let Some(parent) = exe_dir.parent() {
                    dirs.push(parent.to_path_buf());
                }
            }
            dirs.push(exe_dir);
        }
        dirs
    }
}

/// Renders a secret for a log or a reply: never the secret itself.
pub fn mask(secret: &Option<SecretString>) -> &'static str {
    match secret {
        Some(s) if !s.expose_secret().is_empty() => "********",
        _ => "",
    }
}
