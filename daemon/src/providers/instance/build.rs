//! Building an instance: its configuration checked against its plugin, configured through the
//! bounded plugin path, its endpoints checked.

use std::sync::Arc;

use lanyard_provider_sdk::{ConfigureInput, Endpoints, Op, Protocol, Settings};
use secrecy::SecretString;

use super::{AssertionKey, Instance};
use crate::config::{ConfigError, ProviderConfig};
use crate::providers::http::HttpClient;
use crate::providers::oidc::parse_algs;
use crate::providers::plugin::Plugin;

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
        self.check_settings()?;
        let http = self.http_client()?;
        let settings: Settings = config.settings.clone().into_iter().collect();
        let configured: Endpoints = self
            .plugin
            .call_bounded(
                Op::Configure,
                &ConfigureInput {
                    id: config.id.clone(),
                    settings: settings.clone(),
                },
                plugin_limit(config),
            )
            .await
            .map_err(|e| ConfigError::at(self.key("kind"), e))?;
        self.check_endpoints(&configured, &http)?;
        let assertion_key = self.assertion_key(&configured)?;
        if !config.require_binding {
            tracing::warn!(provider = %config.id,
                "require_binding = false: this instance finishes callbacks that do not come \
                 from the browser that started the login (login CSRF); set it back once every \
                 service sends `binding`");
        }
        Ok(Instance {
            id: config.id.clone(),
            algs: parse_algs(&config.allowed_algs),
            assertion_key,
            config: Arc::new(config.clone()),
            generation: self.generation.clone(),
            plugin: self.plugin.clone(),
            secret: self.secret.clone(),
            settings,
            configured,
            http,
            authorize_params: std::sync::Mutex::default(),
        })
    }

    /// The instance's key `k` as messages name it (`providers[2].issuer`).
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.label)
    }

    /// The plugin's own keys: none unknown to the plugin, none it requires missing.
    fn check_settings(&self) -> Result<(), ConfigError> {
        let config = &self.config;
        let fields = &self.plugin.description().config_fields;
        for name in config.settings.keys() {
            if !fields.iter().any(|f| &f.name == name) {
                let known: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                return Err(ConfigError::at(
                    self.key(name),
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
                    self.key(&field.name),
                    format!("required by kind `{}`: {}", config.kind, field.description),
                ));
            }
        }
        Ok(())
    }

    /// The shared HTTP client, or one of the instance's own when it sets its own timeouts.
    fn http_client(&self) -> Result<HttpClient, ConfigError> {
        let config = &self.config;
        if config.http_timeout_ms.is_none() && config.http_connect_timeout_ms.is_none() {
            return Ok(self.http.clone());
        }
        let mut own = self.http.config.clone();
        if let Some(ms) = config.http_timeout_ms {
            own.timeout_ms = ms;
        }
        if let Some(ms) = config.http_connect_timeout_ms {
            own.connect_timeout_ms = ms;
        }
        HttpClient::new(own).map_err(|e| {
            ConfigError::instance(&config.id, format!("cannot build its HTTP client: {e}"))
        })
    }

    /// The endpoints the plugin resolved: https (or allowed http), and the ones its protocol
    /// needs.
    fn check_endpoints(
        &self,
        configured: &Endpoints,
        http: &HttpClient,
    ) -> Result<(), ConfigError> {
        let id = &self.config.id;
        for url in [
            &configured.issuer,
            &configured.authorization_url,
            &configured.token_url,
            &configured.userinfo_url,
            &configured.jwks_uri,
            &configured.device_authorization_url,
        ]
        .into_iter()
        .flatten()
        {
            check_url(url, http.config.allow_insecure_http)
                .map_err(|e| ConfigError::instance(id, e))?;
        }
        let oidc = self.plugin.description().protocol == Protocol::Oidc;
        if oidc && configured.issuer.is_none() {
            return Err(ConfigError::instance(
                id,
                "an OpenID Connect provider needs an issuer",
            ));
        }
        if !oidc && (configured.authorization_url.is_none() || configured.token_url.is_none()) {
            return Err(ConfigError::instance(
                id,
                "the plugin resolved no authorization or token URL",
            ));
        }
        Ok(())
    }

    /// The key a client-secret JWT is signed with, when the plugin asks for one: the client
    /// secret, which must then be an EC P-256 private key.
    fn assertion_key(&self, configured: &Endpoints) -> Result<Option<AssertionKey>, ConfigError> {
        let Some(jwt) = &configured.client_secret_jwt else {
            return Ok(None);
        };
        let kind = &self.config.kind;
        if jwt.issuer.is_empty() || jwt.key_id.is_empty() || jwt.audience.is_empty() {
            return Err(ConfigError::instance(
                &self.config.id,
                "the plugin asked for a client-secret JWT without issuer, key id or audience",
            ));
        }
        let pem = self.secret.as_ref().ok_or_else(|| {
            ConfigError::at(
                self.key("client_secret"),
                format!(
                    "kind `{kind}` signs its client secret: set client_secret (or _file/_env) to the EC private key (PEM)"
                ),
            )
        })?;
        let key = jsonwebtoken::EncodingKey::from_ec_pem(
            secrecy::ExposeSecret::expose_secret(pem).as_bytes(),
        )
        .map_err(|_| {
            ConfigError::at(
                self.key("client_secret"),
                format!("kind `{kind}` needs an EC P-256 private key in PEM (PKCS#8) here"),
            )
        })?;
        Ok(Some(AssertionKey(key)))
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
