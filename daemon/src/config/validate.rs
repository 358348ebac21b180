//! Checks of the whole configuration that need no plugin and no network, run before anything
//! connects anywhere; each failure names the key at fault.

use std::collections::HashSet;

use secrecy::ExposeSecret;

use super::secret::SecretSource;
use super::{Config, ConfigError, NatsConfig, StoreKind};

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.check_limits()?;
        self.check_shared_state()?;
        if let Some(token) = self.admin.resolve_token()? {
            if token.expose_secret().len() < 16 {
                return Err(ConfigError::at("admin.token", "use at least 16 characters"));
            }
        }
        if let Some(hosted) = &self.hosted {
            hosted.validate()?;
        }
        let callers = self.check_callers()?;
        self.check_providers(&callers)
    }

    fn check_limits(&self) -> Result<(), ConfigError> {
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
        if self.events.max_age_hours == 0 {
            return Err(ConfigError::at("events.max_age_hours", "must be positive"));
        }
        self.sessions.claims.validate("sessions.claims")?;
        self.nats_auth.validate()?;
        if self.sessions.refresh_reuse_grace_secs > 300 {
            return Err(ConfigError::at(
                "sessions.refresh_reuse_grace_secs",
                "must be at most 300 (a reuse grace is for races, not for keeping stolen tokens)",
            ));
        }
        Ok(())
    }

    /// The JetStream buckets and events stream, and the master key every daemon sharing them
    /// must have.
    fn check_shared_state(&self) -> Result<(), ConfigError> {
        for (key, name) in [
            ("jetstream.bucket_prefix", &self.jetstream.bucket_prefix),
            ("events.stream_name", &self.events.stream_name),
        ] {
            if !is_name(name) {
                return Err(ConfigError::at(
                    key,
                    "use 1 to 64 letters, digits, '-' and '_'",
                ));
            }
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
        Ok(())
    }

    /// The callers' names, unique, each with a token.
    fn check_callers(&self) -> Result<HashSet<&str>, ConfigError> {
        let mut callers = HashSet::new();
        for (i, caller) in self.callers.iter().enumerate() {
            let label = format!("callers[{i}]");
            caller.resolve_token(&label)?;
            if let Some(permissions) = &caller.nats_permissions {
                permissions.validate_literal(&format!("{label}.nats_permissions"))?;
            }
            if caller.name.is_empty() || caller.name == "*" || !callers.insert(caller.name.as_str())
            {
                return Err(ConfigError::at(
                    format!("{label}.name"),
                    "names must be unique, non-empty and not `*`",
                ));
            }
        }
        Ok(callers)
    }

    fn check_providers(&self, callers: &HashSet<&str>) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let label = format!("providers[{i}]");
            p.validate(&label)?;
            p.check_readers(&label, callers)?;
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
}

impl NatsConfig {
    /// Checks what can be checked before connecting: credential files exist and read, each
    /// secret has one source, and what goes together is together.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("nats.creds_file", &self.creds_file),
            ("nats.tls.ca_file", &self.tls.ca_file),
            ("nats.tls.cert_file", &self.tls.cert_file),
            ("nats.tls.key_file", &self.tls.key_file),
        ] {
            if let Some(path) = path {
                std::fs::metadata(path).map_err(|e| {
                    ConfigError::at(key, format!("cannot read {}: {e}", path.display()))
                })?;
            }
        }
        for source in self.secrets() {
            source.resolve()?;
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::at(
                "nats.tls.cert_file",
                "goes with `nats.tls.key_file`: set both or neither",
            ));
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.user.is_none() {
            return Err(ConfigError::at("nats.user", "a password needs a user"));
        }
        Ok(())
    }

    /// The password, token and nkey seed, each from its value or its file.
    pub(crate) fn secrets(&self) -> [SecretSource<'_>; 3] {
        [
            SecretSource::new(
                "nats.password",
                self.password.as_ref(),
                self.password_file.as_deref(),
            ),
            SecretSource::new(
                "nats.token",
                self.token.as_ref(),
                self.token_file.as_deref(),
            ),
            SecretSource::new(
                "nats.nkey_seed",
                self.nkey_seed.as_ref(),
                self.nkey_seed_file.as_deref(),
            ),
        ]
    }
}

/// A bucket prefix or stream name: 1 to 64 letters, digits, `-` and `_`.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key a configuration is refused for, or `None` when it is accepted.
    fn refused_key(toml: &str) -> Option<String> {
        match Config::from_toml(toml) {
            Ok(_) => None,
            Err(ConfigError::Invalid { key, .. }) => Some(key),
            Err(other) => Some(other.to_string()),
        }
    }

    #[test]
    fn each_refusal_names_its_key() {
        assert_eq!(refused_key(""), None);
        let cases = [
            ("max_in_flight = 0", "max_in_flight"),
            ("pending_ttl_secs = 0", "pending_ttl_secs"),
            (
                "[sessions]\nrefresh_reuse_grace_secs = 301",
                "sessions.refresh_reuse_grace_secs",
            ),
            (
                "[sessions.claims]\ngroups = true\nmax_groups = 101",
                "sessions.claims.max_groups",
            ),
            (
                "[sessions.claims.roles]\nadmin = []",
                "sessions.claims.roles.admin",
            ),
            ("[nats]\nsubject_prefix = \"a.>\"", "nats.subject_prefix"),
            ("[jetstream]\nreplicas = 6", "jetstream.replicas"),
            ("[events]\nstream_name = \"a b\"", "events.stream_name"),
            ("store = \"jetstream\"", "vault.master_key"),
            ("[admin]\ntoken = \"short\"", "admin.token"),
            (
                "[[callers]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\n\
                 [[callers]]\nname = \"a\"\ntoken = \"fedcba9876543210\"",
                "callers[1].name",
            ),
            (
                "[[providers]]\nid = \"x\"\nkind = \"oidc\"\nclient_id = \"c\"\n\
                 redirect_uris = [\"https://a.test/cb\"]\ntoken_readers = [\"nobody\"]",
                "providers[0].token_readers",
            ),
        ];
        for (toml, key) in cases {
            assert_eq!(refused_key(toml).as_deref(), Some(key), "{toml}");
        }
    }

    #[test]
    fn nats_credentials_are_checked_before_connecting() {
        let config = |extra: &str| Config::from_toml(&format!("[nats]\n{extra}")).unwrap();
        assert!(config("").nats.check().is_ok());
        let err = config("password = \"p\"").nats.check().unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { ref key, .. } if key == "nats.user"));
        let err = config("tls.cert_file = \"/nonexistent/cert.pem\"")
            .nats
            .check()
            .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { ref key, .. } if key == "nats.tls.cert_file"));
    }
}
