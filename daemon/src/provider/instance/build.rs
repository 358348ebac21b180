//! Building an instance: its configuration checked against its plugin, configured through the
//! bounded plugin path, its endpoints checked.

use std::sync::Arc;

use lanyard_provider_sdk::{ConfigureInput, Endpoints, Op, Protocol, Settings};
use ring::rand::SystemRandom;
use secrecy::SecretString;

use super::{AssertionKey, Instance};
use crate::config::{ConfigError, ProviderConfig};
use crate::plugin::Plugin;
use crate::provider::http::HttpClient;
use crate::provider::oidc::parse_algs;

/// Everything needed to build an instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub config: ProviderConfig,
    pub secret: Option<SecretString>,
    pub plugin: Arc<Plugin>,
    pub http: HttpClient,
    /// Where the instance was defined, for error messages: `providers[2]` or `provider`.
    pub label: String,
    /// Changes when the instance is deleted and created again, so logins started before
    /// cannot finish after.
    pub generation: String,
}

impl InstanceSpec {
    /// Validates the instance against its plugin and configures it (a plugin call, bounded
    /// by the instance's `plugin_timeout_ms`). Does no network I/O: discovery happens on
    /// first use.
    pub async fn build(&self) -> Result<Instance, ConfigError> {
        let config = &self.config;
        let label = &self.label;
        let key = |k: &str| format!("{label}.{k}");
        let plugin = &self.plugin;
        let fields = &plugin.description().config_fields;
        for name in config.settings.keys() {
            if !fields.iter().any(|f| &f.name == name) {
                let known: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                return Err(ConfigError::at(
                    key(name),
                    format!(
                        "unknown key for kind `{}` (its own keys: {known:?})",
                        config.kind
                    ),
                ));
            }
        }
        for field in fields.iter().filter(|f| f.required) {
            if !config.settings.contains_key(&field.name) {
                return Err(ConfigError::at(
                    key(&field.name),
                    format!("required by kind `{}`: {}", config.kind, field.description),
                ));
            }
        }
        // An instance with timeouts of its own gets a client of its own.
        let http = if config.http_timeout_ms.is_some() || config.http_connect_timeout_ms.is_some() {
            let mut own = self.http.config.clone();
            if let Some(ms) = config.http_timeout_ms {
                own.timeout_ms = ms;
            }
            if let Some(ms) = config.http_connect_timeout_ms {
                own.connect_timeout_ms = ms;
            }
            HttpClient::new(own).map_err(|e| {
                ConfigError::instance(&config.id, format!("cannot build its HTTP client: {e}"))
            })?
        } else {
            self.http.clone()
        };
        let settings: Settings = config.settings.clone().into_iter().collect();
        let configured: Endpoints = plugin
            .call_bounded(
                Op::Configure,
                &ConfigureInput {
                    id: config.id.clone(),
                    settings: settings.clone(),
                },
                plugin_limit(config),
            )
            .await
            .map_err(|e| ConfigError::at(key("kind"), e))?;
        for url in [
            &configured.issuer,
            &configured.authorization_url,
            &configured.token_url,
            &configured.userinfo_url,
            &configured.jwks_uri,
        ]
        .into_iter()
        .flatten()
        {
            check_url(url, http.config.allow_insecure_http)
                .map_err(|e| ConfigError::instance(&config.id, e))?;
        }
        let oidc = plugin.description().protocol == Protocol::Oidc;
        if oidc && configured.issuer.is_none() {
            return Err(ConfigError::instance(
                &config.id,
                "an OpenID Connect provider needs an issuer",
            ));
        }
        if !oidc && (configured.authorization_url.is_none() || configured.token_url.is_none()) {
            return Err(ConfigError::instance(
                &config.id,
                "the plugin resolved no authorization or token URL",
            ));
        }
        let assertion_key = match &configured.client_secret_jwt {
            None => None,
            Some(jwt) => {
                if jwt.issuer.is_empty() || jwt.key_id.is_empty() || jwt.audience.is_empty() {
                    return Err(ConfigError::instance(
                        &config.id,
                        "the plugin asked for a client-secret JWT without issuer, key id or audience",
                    ));
                }
                let pem = self.secret.as_ref().ok_or_else(|| {
                    ConfigError::at(
                        key("client_secret"),
                        format!(
                            "kind `{}` signs its client secret: set client_secret (or _file/_env) to the EC private key (PEM)",
                            config.kind
                        ),
                    )
                })?;
                let key = jsonwebtoken::EncodingKey::from_ec_pem(
                    secrecy::ExposeSecret::expose_secret(pem).as_bytes(),
                )
                .map_err(|_| {
                    ConfigError::at(
                        key("client_secret"),
                        format!(
                            "kind `{}` needs an EC P-256 private key in PEM (PKCS#8) here",
                            config.kind
                        ),
                    )
                })?;
                Some(AssertionKey(key))
            }
        };
        Ok(Instance {
            id: config.id.clone(),
            algs: parse_algs(&config.allowed_algs),
            assertion_key,
            config: Arc::new(config.clone()),
            generation: self.generation.clone(),
            plugin: plugin.clone(),
            secret: self.secret.clone(),
            settings,
            configured,
            http,
            rng: SystemRandom::new(),
        })
    }
}

/// How long one plugin call of an instance may take.
pub(super) fn plugin_limit(config: &ProviderConfig) -> std::time::Duration {
    std::time::Duration::from_millis(config.plugin_timeout_ms.max(1))
}

/// Provider URLs must be https, except on loopback (local development and tests) or when the
/// operator allows plain http explicitly.
pub(super) fn check_url(url: &str, allow_insecure: bool) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_insecure => Ok(()),
        _ => Err(format!(
            "`{url}` must use https (http is allowed on loopback or with http.allow_insecure_http)"
        )),
    }
}
