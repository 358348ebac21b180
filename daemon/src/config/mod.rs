//! The daemon's configuration: a TOML file plus `LANYARD_` environment overrides (figment),
//! validated before anything connects anywhere. Each section's struct documents its keys;
//! `config/lanyard.toml` at the repository's root shows them all.

mod claims;
mod hosted;
mod nats_auth;
mod provider;
mod secret;
mod sections;
mod validate;

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

pub use claims::ClaimsConfig;
pub use hosted::HostedConfig;
pub(crate) use nats_auth::account_seed;
pub use nats_auth::{NatsAuthConfig, NatsAuthMode, NatsPermissionTemplates, SystemUser};
pub use provider::{ProviderConfig, ALLOWED_ALGS};
pub(crate) use secret::{read_secret_file, SecretSource};
pub use sections::{
    AdminConfig, CallerConfig, EventsConfig, HttpConfig, JetStreamConfig, NatsConfig, OpsConfig,
    SessionConfig, SledConfig, StoreKind, TlsConfig, VaultConfig,
};

/// A configuration problem. Its message names the key, or the provider instance, at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key's value cannot be used.
    Invalid {
        key: String,
        message: String,
    },
    /// A provider instance that its plugin or its endpoints rule out.
    Instance {
        id: String,
        message: String,
    },
    /// The file and environment do not parse as a configuration (figment's message, which
    /// names the key).
    Parse(String),
    NoFile(PathBuf),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration error: {}", self.detail())
    }
}

impl ConfigError {
    /// A problem with the value of `key`.
    pub(crate) fn at(key: impl std::fmt::Display, message: impl std::fmt::Display) -> Self {
        Self::Invalid {
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// The problem without the "configuration error" heading, for an admin command's reply
    /// (where the configuration at fault is the request).
    pub(crate) fn detail(&self) -> String {
        match self {
            Self::Invalid { key, message } => format!("`{key}`: {message}"),
            Self::Instance { id, message } => format!("provider `{id}`: {message}"),
            Self::Parse(message) => message.clone(),
            Self::NoFile(path) => format!("the config file {} does not exist", path.display()),
        }
    }

    /// A problem with provider instance `id` as a whole.
    pub(crate) fn instance(id: impl std::fmt::Display, message: impl std::fmt::Display) -> Self {
        Self::Instance {
            id: id.to_string(),
            message: message.to_string(),
        }
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
    /// Start logins as the previous version did (a 54-character state, the login stored),
    /// so daemons of that version can finish them: only while a rolling upgrade mixes the
    /// versions in one queue group. Off: the state carries the login, sealed.
    pub stored_login_states: bool,
    /// Where state lives: `sled` (embedded, for one daemon) or `jetstream` (NATS JetStream
    /// key-value buckets, shared by every daemon of the queue group).
    pub store: StoreKind,
    pub sled: SledConfig,
    pub jetstream: JetStreamConfig,
    pub events: EventsConfig,
    pub nats: NatsConfig,
    /// Lanyard as the NATS server's auth callout.
    pub nats_auth: NatsAuthConfig,
    pub sessions: SessionConfig,
    pub http: HttpConfig,
    pub vault: VaultConfig,
    pub admin: AdminConfig,
    /// Lanyard's hosted login pages (off when absent).
    pub hosted: Option<HostedConfig>,
    /// Health probes and metrics (off when absent).
    pub ops: Option<OpsConfig>,
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
            stored_login_states: false,
            store: StoreKind::Sled,
            sled: SledConfig::default(),
            jetstream: JetStreamConfig::default(),
            events: EventsConfig::default(),
            nats: NatsConfig::default(),
            nats_auth: NatsAuthConfig::default(),
            sessions: SessionConfig::default(),
            http: HttpConfig::default(),
            vault: VaultConfig::default(),
            admin: AdminConfig::default(),
            hosted: None,
            ops: None,
            token_refresh_margin_secs: 60,
            callers: Vec::new(),
            providers: Vec::new(),
        }
    }
}

impl Config {
    /// Loads the file (if any) and the `LANYARD_*` environment (`__` separates nested keys,
    /// e.g. `LANYARD_NATS__URL`), then validates what needs no plugin.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::NoFile(file.to_owned()));
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
            .map_err(|e| ConfigError::Parse(e.to_string().replace("default.", "")))?;
        config.validate()?;
        Ok(config)
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
