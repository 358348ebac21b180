//! One provider instance as its actor runs it. [`InstanceSpec`] is what an instance is built
//! from (its configuration, secret, plugin and generation); [`Instance`] is the result:
//! validated against its plugin, configured through the bounded plugin path, and fixed for
//! the actor's life. Its methods are the network work of a login (discovery, the
//! authorization URL, the code exchange, ID-token validation, the profile, refresh and
//! revocation); they run in tasks off the actor's mailbox and take what the actor caches
//! (the resolved endpoints, the issuer's keys, the client-secret JWT) as arguments, so what
//! changes while an instance serves lives in its actor (actor.rs).

mod build;
mod calls;
mod complete;
mod device;
mod login;
mod profile;
mod tokens;

use build::check_url;
use login::return_to_allowed;

use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::Algorithm;
use lanyard_proto::{CircuitState, InstanceState};
use lanyard_provider_sdk::{Endpoints, Profile, Protocol, Settings};
use secrecy::SecretString;
use serde::Serialize;

use super::http::{oauth_client, DeviceGrant, HttpClient, OAuthClient, ProviderTokens};
use super::oidc::discover;
use crate::config::ProviderConfig;
use crate::error::Error;
use crate::login_state::{Fingerprint, LoginState, LoginStates, Secrets};
use crate::providers::plugin::{Plugin, MAX_HUNG_CALLS};

/// What a login needs from the caller.
#[derive(Debug)]
pub struct LoginArgs {
    pub redirect_uri: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub login_hint: Option<String>,
    pub prompt: Option<String>,
    /// What the login's state carries; the instance adds its generation and the redirect
    /// URI it chose, then seals it with `states`.
    pub state: LoginState,
    /// The state to send instead, for a login stored as the previous version stored them
    /// (`stored_login_states`).
    pub stored_state: Option<String>,
    /// The login's PKCE verifier and nonce.
    pub secrets: Secrets,
    pub states: Arc<LoginStates>,
}

/// A started login: where to send the user, and the sealed state.
#[derive(Debug, Clone)]
pub struct LoginStart {
    pub authorization_url: String,
    pub state: String,
    /// The redirect URI the provider was given.
    pub redirect_uri: String,
    /// The generation of the instance that started it.
    pub generation: String,
    /// Whether the URL carries a PKCE challenge and an OpenID Connect nonce.
    pub pkce: bool,
    pub oidc: bool,
}

/// A login to finish, as its state (or the previous version's pending record) tells it.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub provider: String,
    /// The instance generation that started it.
    pub generation: Fingerprint,
    pub redirect_uri: String,
    /// Used when the plugin asks for PKCE.
    pub pkce_verifier: Option<String>,
    /// Checked against the ID token, for OpenID Connect.
    pub nonce: Option<String>,
    pub fetch_groups: bool,
    pub return_to: Option<String>,
    /// Link the new identity to this user (a `link_session` login).
    pub link_user: Option<String>,
}

/// A callback to finish.
#[derive(Debug)]
pub struct CompleteArgs {
    pub ticket: Ticket,
    pub code: String,
    pub iss: Option<String>,
    /// The callback's other parameters, for the plugin (Apple's first-login `user`).
    pub params: std::collections::BTreeMap<String, String>,
}

/// A device login's start at the provider: the device code and what to show the user, and
/// the generation of the instance that started it.
#[derive(Debug)]
pub struct DeviceStarted {
    pub grant: DeviceGrant,
    pub generation: String,
}

/// A device login to poll for (RFC 8628).
#[derive(Debug)]
pub struct DevicePoll {
    /// The provider's device authorization response, as it answered it.
    pub grant: DeviceGrant,
    /// When the device code expires (capped by the daemon).
    pub expires_at: i64,
    pub fetch_groups: bool,
    /// The instance generation that started it.
    pub generation: Fingerprint,
    /// Turns true (or its sender goes) when whoever asked stops waiting: polling stops too.
    pub abandoned: tokio::sync::watch::Receiver<bool>,
}

/// A finished provider login, with the instance's policy for storing it (as configured when
/// it finished, so an admin change applies to the next login).
#[derive(Debug)]
pub struct Completed {
    pub profile: Profile,
    pub tokens: ProviderTokens,
    pub trust_email_verified: bool,
    pub store_tokens: bool,
}

/// An instance as other parts of the daemon see it: its configuration and generation.
#[derive(Debug, Clone)]
pub struct Described {
    pub config: Arc<ProviderConfig>,
    pub generation: String,
}

impl Described {
    /// Refuses a `return_to` that is neither a relative path nor under the instance's
    /// `allowed_return_to`: never an open redirect.
    pub fn check_return_to(&self, return_to: &str) -> Result<(), Error> {
        if return_to_allowed(return_to, &self.config.allowed_return_to) {
            Ok(())
        } else {
            Err(Error::bad_request(format!(
                "return_to must be a relative path (`/account`) or under provider `{}`'s \
                 allowed_return_to",
                self.config.id
            )))
        }
    }
}

/// Endpoints after discovery.
#[derive(Debug)]
pub struct Resolved {
    issuer: Option<String>,
    /// RFC 7009 revocation, when discovery names it.
    revocation_url: Option<String>,
    endpoints: Endpoints,
    /// The issuer's JWKS, for OpenID Connect instances.
    pub jwks_uri: Option<String>,
    /// The OAuth2 client for these endpoints, built once.
    client: OAuthClient,
}

/// The private key client-secret JWTs are signed with. Its `Debug` shows nothing of it.
struct AssertionKey(jsonwebtoken::EncodingKey);

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AssertionKey(..)")
    }
}

/// An instance's health: `status` is `ok`, `degraded` (failures counted, a probe pending, or
/// plugin calls stuck) or `unavailable` (circuit open, or the plugin disabled after too many
/// stuck calls); the supervisor's view adds `restarting`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub status: InstanceState,
    pub circuit: CircuitState,
    pub consecutive_failures: u32,
    pub stuck_plugin_calls: usize,
}

impl Health {
    /// From the circuit's view and the plugin's stuck calls.
    pub fn of(circuit: CircuitState, failures: u32, stuck: usize) -> Self {
        let status = if stuck >= MAX_HUNG_CALLS || circuit == CircuitState::Open {
            InstanceState::Unavailable
        } else if stuck > 0 || failures > 0 || circuit != CircuitState::Closed {
            InstanceState::Degraded
        } else {
            InstanceState::Ok
        };
        Self {
            status,
            circuit,
            consecutive_failures: failures,
            stuck_plugin_calls: stuck,
        }
    }
}

/// A provider instance, validated and ready to serve; it never changes.
#[derive(Debug)]
pub struct Instance {
    pub id: String,
    pub config: Arc<ProviderConfig>,
    pub generation: String,
    plugin: Arc<Plugin>,
    secret: Option<SecretString>,
    settings: Settings,
    configured: Endpoints,
    algs: Vec<Algorithm>,
    http: HttpClient,
    /// The ES256 key a client-secret JWT is signed with, when the plugin asks for one.
    assertion_key: Option<AssertionKey>,
    /// The plugin's authorization parameters by input, as it answered them (see
    /// [`Instance::remembered_params`]).
    authorize_params: std::sync::Mutex<
        std::collections::HashMap<login::ParamsKey, Arc<lanyard_provider_sdk::AuthorizeParams>>,
    >,
}

impl Instance {
    pub fn kind(&self) -> &str {
        self.plugin.kind()
    }

    fn is_oidc(&self) -> bool {
        self.plugin.description().protocol == Protocol::Oidc
    }

    /// How it fares, given its circuit's view.
    pub fn health(&self, circuit: CircuitState, failures: u32) -> Health {
        Health::of(
            circuit,
            failures,
            self.plugin.hung.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn describe(&self) -> Described {
        Described {
            config: self.config.clone(),
            generation: self.generation.clone(),
        }
    }

    /// The check a login passes before anything reaches the provider: an allowed redirect
    /// URI. (`return_to` is the service's to check, before anything else: see
    /// [`Described::check_return_to`].)
    pub fn check_login(&self, args: &LoginArgs) -> Result<(), Error> {
        if let Some(uri) = &args.redirect_uri {
            if !self.config.allows_redirect(uri) {
                return Err(Error::bad_request(format!(
                    "redirect_uri is not in provider `{}`'s allow-list",
                    self.id
                )));
            }
        }
        Ok(())
    }

    /// The error for a request refused because the circuit is open.
    pub fn circuit_open(&self) -> Error {
        Error::unavailable(format!(
            "provider `{}` failed repeatedly; not trying it again for up to {} s",
            self.id, self.config.circuit_open_secs
        ))
    }

    /// The endpoints, after discovery for OpenID Connect.
    pub async fn resolve(&self) -> Result<Resolved, Error> {
        let mut endpoints = self.configured.clone();
        let mut revocation_url = None;
        if self.is_oidc() {
            let issuer = endpoints.issuer.clone().unwrap_or_default();
            let doc = discover(&self.http, &issuer, endpoints.discovery_url.as_deref()).await?;
            let fill = |slot: &mut Option<String>, value: Option<String>| {
                if slot.is_none() {
                    *slot = value;
                }
            };
            fill(
                &mut endpoints.authorization_url,
                Some(doc.authorization_endpoint),
            );
            fill(&mut endpoints.token_url, Some(doc.token_endpoint));
            fill(&mut endpoints.userinfo_url, doc.userinfo_endpoint);
            fill(&mut endpoints.jwks_uri, Some(doc.jwks_uri));
            fill(
                &mut endpoints.device_authorization_url,
                doc.device_authorization_endpoint,
            );
            revocation_url = doc.revocation_endpoint;
            for url in [
                &endpoints.authorization_url,
                &endpoints.token_url,
                &endpoints.device_authorization_url,
            ]
            .into_iter()
            .flatten()
            {
                check_url(url, self.http.config.allow_insecure_http).map_err(Error::provider)?;
            }
        }
        let missing = || Error::internal("provider endpoints are incomplete");
        let authorization_url = endpoints.authorization_url.clone().ok_or_else(missing)?;
        let token_url = endpoints.token_url.clone().ok_or_else(missing)?;
        let client = oauth_client(
            &self.config.client_id,
            self.secret.as_ref(),
            &authorization_url,
            &token_url,
            endpoints.token_auth,
        )?;
        Ok(Resolved {
            revocation_url,
            issuer: endpoints.issuer.clone(),
            client,
            jwks_uri: if self.is_oidc() {
                endpoints.jwks_uri.clone()
            } else {
                None
            },
            endpoints,
        })
    }

    /// Fetches the issuer's JWKS.
    pub async fn fetch_jwks(&self, uri: &str) -> Result<Arc<JwkSet>, Error> {
        Ok(Arc::new(self.http.get_json(uri).await?))
    }
}

pub use build::InstanceSpec;
pub use calls::watching_plugin_faults;
