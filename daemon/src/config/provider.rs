//! `[[providers]]`: one provider instance, the keys every kind shares. The plugin's own keys
//! are checked when the instance is built (`providers::instance`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use super::secret::SecretSource;
use super::ConfigError;

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
    /// The allowed redirect URIs; the first is the default. A loopback one
    /// (`http://127.0.0.1/cb`, `http://[::1]/cb`) allows the same URI on any port (RFC 8252
    /// section 7.3: a native app listens where it can); a private-use scheme
    /// (`com.example.app:/cb`) is allowed as written.
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
    /// Where a login's `return_to` may point besides relative paths (`/account`, always
    /// on-site): absolute URL prefixes (same scheme, host and port, path under theirs).
    /// Empty: relative paths only.
    #[serde(default)]
    pub allowed_return_to: Vec<String>,
    /// Refuse a callback that does not bring its login's browser binding (`invalid_state`).
    /// `false` only for a migration period, while services learn to send it: the daemon
    /// warns at start-up for each instance that sets it.
    #[serde(default = "default_true")]
    pub require_binding: bool,
    /// Allow logins through the device authorization grant (`device.start`, RFC 8628), when
    /// the provider offers it. Off by default: a device code can be phished (someone sends
    /// a user a code of their own to enter), so turn it on only for instances that apps
    /// without a browser of their own use.
    #[serde(default)]
    pub device_flow: bool,
    /// Allow logins through Lanyard's hosted pages (`login` with `hosted`; `[hosted]`). Off
    /// by default: whoever opens a hosted login's start page signs in for the app that
    /// started it, so a start link sent to someone else is a phishing lure, as a device
    /// code is.
    #[serde(default)]
    pub hosted_logins: bool,
    /// Device logins this instance polls for at once on each daemon; beyond it
    /// `device.start` is `rate_limited`.
    #[serde(default = "default_max_device_logins")]
    pub max_device_logins: usize,
    /// What access tokens of sessions logged in through this instance carry about the user,
    /// instead of `[sessions.claims]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<super::ClaimsConfig>,
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
    /// How long one plugin call may take, in milliseconds: one operation, or the operations
    /// a callback runs together (no I/O between them). A call that overruns is answered
    /// `provider_unavailable` and the instance is restarted.
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

const fn default_true() -> bool {
    true
}

const fn default_max_device_logins() -> usize {
    200
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
        if let Some(claims) = &self.claims {
            claims.validate(&key("claims"))?;
        }
        for (name, value) in [
            ("http_timeout_ms", self.http_timeout_ms),
            ("http_connect_timeout_ms", self.http_connect_timeout_ms),
        ] {
            if value == Some(0) {
                return Err(ConfigError::at(key(name), "must be at least 1"));
            }
        }
        if self.max_device_logins == 0 {
            return Err(ConfigError::at(
                key("max_device_logins"),
                "must be at least 1",
            ));
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
        let key = format!("{label}.client_secret");
        SecretSource {
            env: Some(self.client_secret_env.as_deref()),
            ..SecretSource::new(
                &key,
                self.client_secret.as_ref(),
                self.client_secret_file.as_deref(),
            )
        }
        .resolve()
    }
}

impl ProviderConfig {
    /// Whether a login may use redirect URI `uri`: one of `redirect_uris`, or a loopback one
    /// of them on another port.
    pub fn allows_redirect(&self, uri: &str) -> bool {
        self.redirect_uris
            .iter()
            .any(|allowed| allowed == uri || same_loopback_but_the_port(allowed, uri))
    }
}

/// Whether `allowed` and `uri` are the same `http` URI on a loopback IP literal (`127.0.0.1`,
/// `[::1]`), but for the port. `localhost` is not one: a name can resolve elsewhere
/// (RFC 8252 section 8.3).
fn same_loopback_but_the_port(allowed: &str, uri: &str) -> bool {
    let (Ok(mut allowed), Ok(mut uri)) = (url::Url::parse(allowed), url::Url::parse(uri)) else {
        return false;
    };
    let loopback = |u: &url::Url| {
        u.scheme() == "http"
            && match u.host() {
                Some(url::Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
                Some(url::Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
                _ => false,
            }
    };
    if !loopback(&allowed) || !loopback(&uri) {
        return false;
    }
    // Both are http URLs with a host: a port can always be cleared.
    let _ = (allowed.set_port(None), uri.set_port(None));
    allowed == uri
}

#[cfg(test)]
mod redirect_tests {
    use super::*;

    fn config(uris: &[&str]) -> ProviderConfig {
        use figment::providers::Format;
        let mut toml =
            String::from("id = \"p\"\nkind = \"oidc\"\nclient_id = \"c\"\nredirect_uris = [");
        for uri in uris {
            toml.push_str(&format!("\"{uri}\","));
        }
        toml.push(']');
        figment::Figment::from(figment::providers::Toml::string(&toml))
            .extract()
            .unwrap()
    }

    #[test]
    fn a_loopback_redirect_matches_on_any_port_and_nothing_else_does() {
        let c = config(&[
            "http://127.0.0.1/cb",
            "http://[::1]:8080/cb",
            "com.example.app:/cb",
        ]);
        for ok in [
            "http://127.0.0.1/cb",
            "http://127.0.0.1:51234/cb",
            "http://[::1]/cb",
            "http://[::1]:3000/cb",
            "com.example.app:/cb",
        ] {
            assert!(c.allows_redirect(ok), "{ok}");
        }
        for refused in [
            "http://127.0.0.1:51234/other",
            "http://127.0.0.1:51234/cb?x=1",
            "https://127.0.0.1:51234/cb",
            "http://localhost:51234/cb",
            "http://127.0.0.2:51234/cb",
            "http://user@127.0.0.1:51234/cb",
            "com.example.app:/other",
            "com.evil.app:/cb",
        ] {
            assert!(!c.allows_redirect(refused), "{refused}");
        }
        // Not loopback: exact only.
        let c = config(&["https://app.test/cb"]);
        assert!(!c.allows_redirect("https://app.test:8443/cb"));
    }
}
