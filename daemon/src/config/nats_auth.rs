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
    /// The account the users are placed in (server config mode: its name, `APP`).
    pub account: String,
    /// What a user's connection may do; `{user_id}` and `{session_id}` are filled in.
    pub permissions: NatsPermissionTemplates,
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
pub const PLACEHOLDERS: [&str; 2] = ["{user_id}", "{session_id}"];

impl NatsAuthConfig {
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
        let pair = secrecy::ExposeSecret::expose_secret(&seed);
        match nkeys::KeyPair::from_seed(pair.trim()) {
            Ok(key) if key.key_pair_type() == nkeys::KeyPairType::Account => {}
            _ => {
                return Err(ConfigError::at(
                    "nats_auth.issuer_seed",
                    "must be an account nkey seed (SA…)",
                ))
            }
        }
        if let Some(seed) = self.resolve_xkey()? {
            let seed = secrecy::ExposeSecret::expose_secret(&seed);
            if nkeys::XKey::from_seed(seed.trim()).is_err() {
                return Err(ConfigError::at(
                    "nats_auth.xkey_seed",
                    "must be a curve (xkey) seed (SX…)",
                ));
            }
        }
        if self.account.is_empty() {
            return Err(ConfigError::at(
                "nats_auth.account",
                "name the account the users are placed in",
            ));
        }
        let lists = [
            ("publish", &self.permissions.publish),
            ("subscribe", &self.permissions.subscribe),
            ("deny_publish", &self.permissions.deny_publish),
            ("deny_subscribe", &self.permissions.deny_subscribe),
        ];
        for (name, list) in lists {
            for template in list {
                if !template_ok(template, &PLACEHOLDERS) {
                    return Err(ConfigError::at(
                        format!("nats_auth.permissions.{name}"),
                        format!(
                            "`{template}`: a subject whose only braces are {}",
                            PLACEHOLDERS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl NatsPermissionTemplates {
    /// Checks a caller's permissions: literal subjects, no placeholders.
    pub(crate) fn validate_literal(&self, key: &str) -> Result<(), ConfigError> {
        let all = [
            &self.publish,
            &self.subscribe,
            &self.deny_publish,
            &self.deny_subscribe,
        ];
        match all
            .iter()
            .flat_map(|l| l.iter())
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
