//! `[nats_auth]`: Lanyard as the NATS server's auth callout. A client connects to NATS with
//! its Lanyard session access token as the connection's token; the server asks Lanyard
//! (`$SYS.REQ.USER.AUTH`), which answers with a user JWT, signed by the issuer account key,
//! whose permissions come from the templates here.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfigError, SecretSource};

/// The auth callout. Off unless `enabled`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsAuthConfig {
    pub enabled: bool,
    /// The issuer account's nkey seed (`SA…`): the key the server's `auth_callout.issuer`
    /// names. A value, a file or an environment variable, exactly one.
    pub issuer_seed: Option<SecretString>,
    pub issuer_seed_file: Option<PathBuf>,
    pub issuer_seed_env: Option<String>,
    /// The callout's curve key seed (`SX…`) when the server's `auth_callout.xkey` names its
    /// public key: requests and responses are then encrypted. Required in production (the
    /// requests carry the clients' tokens).
    pub xkey_seed: Option<SecretString>,
    pub xkey_seed_file: Option<PathBuf>,
    pub xkey_seed_env: Option<String>,
    /// How the server names accounts: `config` (in its config file, by name) or `operator`
    /// (as JWTs an operator signed, by public key).
    pub mode: NatsAuthMode,
    /// The account the users are placed in: its name in config mode (`APP`), its public key
    /// (`A…`) in operator mode.
    pub account: String,
    /// Operator mode, when `issuer_seed` is a signing key of the callout account: that
    /// account's public key (`A…`).
    pub issuer_account: Option<String>,
    /// Operator mode: the key that signs the user JWTs, `account`'s own key or one of its
    /// signing keys (`SA…`). Absent: `issuer_seed` signs them (users placed in the callout
    /// account, or in an account that lists it as a signing key).
    pub user_signing_seed: Option<SecretString>,
    pub user_signing_seed_file: Option<PathBuf>,
    pub user_signing_seed_env: Option<String>,
    /// Connection requests each daemon decides per second (a burst of as many); more are
    /// refused (`rate_limited`) until the next second. Unbounded when absent (each daemon's
    /// `max_in_flight` still bounds what it decides at once).
    pub max_connects_per_sec: Option<std::num::NonZeroU32>,
    /// What a user's connection may do; `{user_id}`, `{session_id}` and `{username}` are
    /// filled in.
    pub permissions: NatsPermissionTemplates,
    /// More a connection may do when its session's access token carries a role
    /// (`[sessions.claims] roles`): `[nats_auth.roles.admin] subscribe = ["audit.>"]`. The
    /// lists add to `permissions`' (a deny in either wins).
    pub roles: std::collections::BTreeMap<String, NatsPermissionTemplates>,
    /// A user of the system account, through which a revoked session's connections are
    /// ended (`$SYS.REQ.SERVER.<id>.KICK`). Without it they last until their access token
    /// expires.
    pub system: Option<SystemUser>,
}

/// How the NATS server knows its accounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatsAuthMode {
    /// Accounts in the server's config file; the user JWT's `aud` names the account.
    #[default]
    Config,
    /// Accounts are JWTs (`nsc`); the user JWT's issuer places the user.
    Operator,
}

/// `[nats_auth.system]`: how Lanyard connects to the system account (the URL and TLS are
/// `[nats]`'s): a user and password (config mode) or a credentials file (operator mode).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemUser {
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
}

/// Subject templates for a connection's permissions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsPermissionTemplates {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub deny_publish: Vec<String>,
    pub deny_subscribe: Vec<String>,
}

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 3] = ["{user_id}", "{session_id}", "{username}"];

impl NatsAuthConfig {
    /// How to connect to the system account: `[nats]` with the system user's credentials.
    pub(crate) fn system_connection(&self, nats: &super::NatsConfig) -> Option<super::NatsConfig> {
        let system = self.system.as_ref()?;
        Some(super::NatsConfig {
            name: format!("{}-system", nats.name),
            user: system.user.clone(),
            password: system.password.clone(),
            password_file: system.password_file.clone(),
            token: None,
            token_file: None,
            nkey_seed: None,
            nkey_seed_file: None,
            creds_file: system.creds_file.clone(),
            ..nats.clone()
        })
    }

    /// The issuer's seed, from whichever source is set.
    pub(crate) fn resolve_seed(&self) -> Result<Option<SecretString>, ConfigError> {
        SecretSource {
            key: "nats_auth.issuer_seed",
            value: self.issuer_seed.as_ref(),
            file: self.issuer_seed_file.as_deref(),
            env: Some(self.issuer_seed_env.as_deref()),
        }
        .resolve()
    }

    /// The key that signs user JWTs in operator mode, if one is set apart.
    pub(crate) fn resolve_user_signing_seed(&self) -> Result<Option<SecretString>, ConfigError> {
        SecretSource {
            key: "nats_auth.user_signing_seed",
            value: self.user_signing_seed.as_ref(),
            file: self.user_signing_seed_file.as_deref(),
            env: Some(self.user_signing_seed_env.as_deref()),
        }
        .resolve()
    }

    /// The callout's xkey seed, if one is set.
    pub(crate) fn resolve_xkey(&self) -> Result<Option<SecretString>, ConfigError> {
        SecretSource {
            key: "nats_auth.xkey_seed",
            value: self.xkey_seed.as_ref(),
            file: self.xkey_seed_file.as_deref(),
            env: Some(self.xkey_seed_env.as_deref()),
        }
        .resolve()
    }

    /// Checks the section (when enabled): an account seed, an account name, templates whose
    /// braces name known placeholders, a curve seed for the xkey if any.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let seed = self.resolve_seed()?.ok_or_else(|| {
            ConfigError::at(
                "nats_auth.issuer_seed",
                "required when nats_auth is enabled",
            )
        })?;
        account_seed("nats_auth.issuer_seed", &seed)?;
        if let Some(seed) = self.resolve_user_signing_seed()? {
            account_seed("nats_auth.user_signing_seed", &seed)?;
        }
        self.validate_mode()?;
        if let Some(seed) = self.resolve_xkey()? {
            let seed = secrecy::ExposeSecret::expose_secret(&seed);
            if nkeys::XKey::from_seed(seed.trim()).is_err() {
                return Err(ConfigError::at(
                    "nats_auth.xkey_seed",
                    "must be a curve (xkey) seed (SX…)",
                ));
            }
        }
        if let Some(system) = &self.system {
            let password = SecretSource {
                key: "nats_auth.system.password",
                value: system.password.as_ref(),
                file: system.password_file.as_deref(),
                env: None,
            }
            .resolve()?;
            match (&system.user, password.is_some(), &system.creds_file) {
                (Some(_), true, None) | (None, false, Some(_)) => {}
                _ => {
                    return Err(ConfigError::at(
                        "nats_auth.system",
                        "give `user` and `password` (or `password_file`), or `creds_file`",
                    ))
                }
            }
        }
        if self.account.is_empty() {
            return Err(ConfigError::at(
                "nats_auth.account",
                "name the account the users are placed in",
            ));
        }
        self.permissions
            .validate_templates("nats_auth.permissions")?;
        for (role, templates) in &self.roles {
            templates.validate_templates(&format!("nats_auth.roles.{role}"))?;
        }
        Ok(())
    }
}

impl NatsAuthConfig {
    /// Operator mode's keys name accounts by public key; config mode has none of them.
    fn validate_mode(&self) -> Result<(), ConfigError> {
        let operator_only = self.issuer_account.is_some()
            || self.user_signing_seed.is_some()
            || self.user_signing_seed_file.is_some()
            || self.user_signing_seed_env.is_some();
        match self.mode {
            NatsAuthMode::Config if operator_only => Err(ConfigError::at(
                "nats_auth.mode",
                "issuer_account and user_signing_seed are for mode = \"operator\"",
            )),
            NatsAuthMode::Config => Ok(()),
            NatsAuthMode::Operator => {
                let keys = [("account", Some(&self.account))]
                    .into_iter()
                    .chain([("issuer_account", self.issuer_account.as_ref())]);
                for (name, key) in keys {
                    let Some(key) = key else { continue };
                    if !is_account_key(key) {
                        return Err(ConfigError::at(
                            format!("nats_auth.{name}"),
                            "in operator mode, an account's public key (A…)",
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Whether `key` is an account's public nkey.
pub(crate) fn is_account_key(key: &str) -> bool {
    key.starts_with('A') && nkeys::from_public_key(key).is_ok()
}

/// The key pair of `seed`, an account key's seed (an account's own key or a signing key);
/// `key` names the setting in the error.
pub(crate) fn account_seed(key: &str, seed: &SecretString) -> Result<nkeys::KeyPair, ConfigError> {
    let pair = secrecy::ExposeSecret::expose_secret(seed);
    match nkeys::KeyPair::from_seed(pair.trim()) {
        Ok(pair) if pair.key_pair_type() == nkeys::KeyPairType::Account => Ok(pair),
        _ => Err(ConfigError::at(key, "must be an account nkey seed (SA…)")),
    }
}

impl NatsPermissionTemplates {
    fn lists(&self) -> [(&'static str, &Vec<String>); 4] {
        [
            ("publish", &self.publish),
            ("subscribe", &self.subscribe),
            ("deny_publish", &self.deny_publish),
            ("deny_subscribe", &self.deny_subscribe),
        ]
    }

    /// Whether any list uses `placeholder`.
    pub(crate) fn uses(&self, placeholder: &str) -> bool {
        self.lists()
            .iter()
            .any(|(_, list)| list.iter().any(|t| t.contains(placeholder)))
    }

    /// Checks templates: subjects whose only braces are [`PLACEHOLDERS`].
    fn validate_templates(&self, key: &str) -> Result<(), ConfigError> {
        for (name, list) in self.lists() {
            if let Some(template) = list.iter().find(|t| !template_ok(t, &PLACEHOLDERS)) {
                return Err(ConfigError::at(
                    format!("{key}.{name}"),
                    format!(
                        "`{template}`: a subject whose only braces are {}",
                        PLACEHOLDERS.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks a caller's permissions: literal subjects, no placeholders.
    pub(crate) fn validate_literal(&self, key: &str) -> Result<(), ConfigError> {
        match self
            .lists()
            .into_iter()
            .flat_map(|(_, l)| l.iter())
            .find(|s| !template_ok(s, &[]))
        {
            Some(subject) => Err(ConfigError::at(
                key,
                format!("`{subject}`: a subject, without braces or spaces"),
            )),
            None => Ok(()),
        }
    }
}

/// Whether a template is a subject with only the given placeholders in braces.
fn template_ok(template: &str, placeholders: &[&str]) -> bool {
    let mut rest = template.to_owned();
    for placeholder in placeholders {
        rest = rest.replace(placeholder, "x");
    }
    !template.is_empty()
        && !rest.contains(['{', '}'])
        && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn check(section: &str) -> Result<(), String> {
        let seed = nkeys::KeyPair::new_account().seed().unwrap();
        let toml = format!(
            "[nats_auth]\nenabled = true\nissuer_seed = \"{seed}\"\naccount = \"APP\"\n{section}"
        );
        let config = Config::from_toml(&toml).map_err(|e| e.to_string())?;
        config.nats_auth.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn the_section_is_checked_where_it_is_wrong() {
        check("[nats_auth.permissions]\npublish = [\"app.{user_id}.{username}.>\"]\n").unwrap();
        check("[nats_auth.system]\nuser = \"sys\"\npassword = \"pw\"\n").unwrap();
        check("[nats_auth.system]\ncreds_file = \"/etc/sys.creds\"\n").unwrap();

        let app = nkeys::KeyPair::new_account().public_key();
        let operator_ok = format!(
            "[nats_auth]\nenabled = true\nmode = \"operator\"\naccount = \"{app}\"\n\
             issuer_seed = \"{}\"\nuser_signing_seed = \"{}\"\nissuer_account = \"{app}\"\n",
            nkeys::KeyPair::new_account().seed().unwrap(),
            nkeys::KeyPair::new_account().seed().unwrap(),
        );
        Config::from_toml(&operator_ok).unwrap();
        let config_mode_with_operator_keys = format!("issuer_account = \"{app}\"\n");
        let cases = [
            ("mode = \"operator\"\n", "nats_auth.account"),
            (config_mode_with_operator_keys.as_str(), "nats_auth.mode"),
            (
                "[nats_auth.permissions]\npublish = [\"app.{email}\"]\n",
                "nats_auth.permissions.publish",
            ),
            (
                "[nats_auth.roles.ops]\nsubscribe = [\"ops {user_id}\"]\n",
                "nats_auth.roles.ops.subscribe",
            ),
            ("[nats_auth.system]\nuser = \"sys\"\n", "nats_auth.system"),
            (
                "[nats_auth.system]\nuser = \"sys\"\npassword = \"pw\"\ncreds_file = \"/x\"\n",
                "nats_auth.system",
            ),
            ("xkey_seed = \"SXnot\"\n", "nats_auth.xkey_seed"),
        ];
        for (section, key) in cases {
            let error = check(section).unwrap_err();
            assert!(error.contains(key), "{section}: {error}");
        }
        let user_seed = nkeys::KeyPair::new_user().seed().unwrap();
        let toml = format!(
            "[nats_auth]\nenabled = true\nissuer_seed = \"{user_seed}\"\naccount = \"APP\"\n"
        );
        let error = Config::from_toml(&toml).unwrap_err().to_string();
        assert!(error.contains("account nkey seed"), "{error}");
    }
}
