//! `[hosted]`: Lanyard's own HTTP listener for the hosted login pages (docs/apps.md), for
//! apps that can open a browser but not receive its redirect. Off unless configured.

use std::net::SocketAddr;

use serde::Deserialize;

use super::ConfigError;

/// The hosted pages' listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostedConfig {
    /// Where the listener binds (`0.0.0.0:8790`, or a loopback address behind a proxy).
    pub listen: SocketAddr,
    /// The pages' base URL as browsers reach them (`https://login.example.com`). Its
    /// `/callback` must be in the `redirect_uris` of every instance hosted logins use (and
    /// registered at the provider). `http` only for a loopback host (development).
    pub public_url: String,
    /// Requests the listener handles at once; beyond it, `429` at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

const fn default_max_in_flight() -> usize {
    1024
}

impl HostedConfig {
    /// The public URL, parsed: https, or http on a loopback host; no query or fragment.
    pub fn public_url(&self) -> Result<url::Url, ConfigError> {
        let key = "hosted.public_url";
        let url = url::Url::parse(self.public_url.trim_end_matches('/'))
            .map_err(|e| ConfigError::at(key, format!("not a URL: {e}")))?;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name == "localhost",
            None => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(ConfigError::at(
                    key,
                    "use https (http only on a loopback host, for development)",
                ))
            }
        }
        if url.query().is_some() || url.fragment().is_some() || url.cannot_be_a_base() {
            return Err(ConfigError::at(key, "no query or fragment"));
        }
        // The pages are served at the root (their cookie is for `Path=/`): a proxy that
        // puts them under a path would break every login.
        if url.path() != "/" {
            return Err(ConfigError::at(
                key,
                "the pages are served at the root: give the origin alone, without a path",
            ));
        }
        Ok(url)
    }

    /// The pages' origin as browsers name it in `Origin` (`https://login.example.com`).
    pub fn origin(&self) -> String {
        self.public_url()
            .map(|url| url.origin().ascii_serialization())
            .unwrap_or_default()
    }

    /// Whether the pages are reached over https (their cookie is then `Secure`).
    pub fn is_secure(&self) -> bool {
        self.public_url().is_ok_and(|url| url.scheme() == "https")
    }

    /// Where providers send the browser back: `{public_url}/callback`.
    pub fn callback_url(&self) -> String {
        self.page_url("callback")
    }

    /// A page's URL under the public base (its origin, as the URL crate writes it).
    pub fn page_url(&self, path: &str) -> String {
        let origin = self
            .public_url()
            .map(|url| url.origin().ascii_serialization())
            .unwrap_or_else(|_| self.public_url.trim_end_matches('/').to_owned());
        format!("{origin}/{path}")
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.public_url()?;
        if self.max_in_flight == 0 {
            return Err(ConfigError::at(
                "hosted.max_in_flight",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
