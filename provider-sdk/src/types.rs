//! The JSON payloads of the v1 operations. Unknown fields are ignored in both directions so
//! that host and plugin can each be newer than the other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An instance's provider-specific settings (`issuer`, `base_url`, `tenant`, ...), exactly as
/// the operator configured them, without the common keys and without secrets.
pub type Settings = Map<String, Value>;

/// Whether the provider speaks OpenID Connect (ID tokens, discovery) or plain OAuth2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Oidc,
    #[serde(rename = "oauth2")]
    OAuth2,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenAuth {
    /// HTTP Basic with client id and secret (RFC 6749 section 2.3.1, preferred).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// One provider-specific setting an instance may carry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigField {
    pub name: String,
    pub required: bool,
    pub description: String,
}

impl ConfigField {
    pub fn required(name: &str, description: &str) -> Self {
        Self {
            name: name.into(),
            required: true,
            description: description.into(),
        }
    }

    pub fn optional(name: &str, description: &str) -> Self {
        Self {
            name: name.into(),
            required: false,
            description: description.into(),
        }
    }
}

/// The answer to `describe`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Description {
    /// Filled in by the SDK from [`Provider::KIND`](crate::Provider::KIND).
    pub kind: String,
    pub display_name: String,
    pub protocol: Protocol,
    /// Scopes requested when an instance configures none.
    pub default_scopes: Vec<String>,
    /// Scopes added when a login asks for `fetch_groups`.
    pub group_scopes: Vec<String>,
    /// Whether the provider supports PKCE (S256). The host uses it whenever this is true.
    pub pkce: bool,
    /// Provider-specific settings an instance may carry; any other key is a config error.
    pub config_fields: Vec<ConfigField>,
    /// Fixed endpoints, when they do not depend on settings.
    pub endpoints: Option<Endpoints>,
}

impl Default for Description {
    fn default() -> Self {
        Self {
            kind: String::new(),
            display_name: String::new(),
            protocol: Protocol::default(),
            default_scopes: Vec::new(),
            group_scopes: Vec::new(),
            pkce: true,
            config_fields: Vec::new(),
            endpoints: None,
        }
    }
}

/// An instance's endpoints. For OpenID Connect, any URL left out is taken from the issuer's
/// discovery document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Endpoints {
    /// The OpenID Connect issuer. It may contain `{tenantid}` for a multi-tenant issuer
    /// (Microsoft's `common`, say): an ID token's `iss` must then equal it with the token's
    /// own `tid` claim in place of the placeholder.
    pub issuer: Option<String>,
    /// Where the discovery document lives, when not at
    /// `{issuer}/.well-known/openid-configuration` (a templated issuer has no such URL).
    pub discovery_url: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub userinfo_url: Option<String>,
    pub jwks_uri: Option<String>,
    /// The RFC 8628 device authorization endpoint: set it when the provider offers the device
    /// flow (an OpenID Connect issuer's discovery document may name it instead). A plugin
    /// that sets none does not offer it.
    pub device_authorization_url: Option<String>,
    pub token_auth: TokenAuth,
    /// When set, the client secret sent to the token endpoint is a short-lived ES256 JWT the
    /// host signs with the instance's configured secret, which is then an EC private key
    /// (PEM). Apple requires this. `token_auth` still says where the secret goes.
    pub client_secret_jwt: Option<ClientSecretJwt>,
}

/// The claims of a client-secret JWT the host signs (RFC 7523 style, as Apple wants it):
/// header `alg: ES256`, `kid: key_id`; claims `iss`, `sub` = client id, `aud`, `iat`, `exp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientSecretJwt {
    /// `iss`: who signs (Apple: the developer team id).
    pub issuer: String,
    /// The signing key's id, sent as `kid`.
    pub key_id: String,
    /// `aud` (Apple: `https://appleid.apple.com`).
    pub audience: String,
    /// How long each JWT is valid; the host signs a new one when half of it has passed.
    pub lifetime_secs: u64,
}

/// The input of `configure`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigureInput {
    /// The instance id, e.g. `acme-entra`.
    pub id: String,
    pub settings: Settings,
}

/// The input of `authorize_params`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthorizeInput {
    pub settings: Settings,
    pub scopes: Vec<String>,
    pub fetch_groups: bool,
    pub login_hint: Option<String>,
    pub prompt: Option<String>,
}

/// The output of `authorize_params`: extra query parameters for the authorization URL.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthorizeParams {
    pub params: BTreeMap<String, String>,
}

/// The input of `profile_requests`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileRequestsInput {
    pub settings: Settings,
    pub endpoints: Endpoints,
    /// The verified ID-token claims, for OpenID Connect providers.
    pub claims: Option<Value>,
    pub fetch_groups: bool,
    /// The scopes the provider granted, when it said.
    pub granted_scopes: Vec<String>,
}

/// An HTTP GET the host makes with the user's access token as a bearer token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpRequest {
    /// The key its response has in [`MapProfileInput::responses`].
    pub name: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// When true, a failed request is passed on with its status instead of failing the login.
    pub optional: bool,
}

impl HttpRequest {
    /// A required GET request.
    pub fn get(name: &str, url: &str) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            ..Self::default()
        }
    }

    /// Marks the request optional: its failure does not fail the login.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// The host's answer to one [`HttpRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpResponse {
    pub status: u16,
    /// The body as JSON, or `null` when it was not JSON.
    pub body: Value,
}

/// The input of `map_profile`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MapProfileInput {
    pub settings: Settings,
    pub claims: Option<Value>,
    pub responses: BTreeMap<String, HttpResponse>,
    pub fetch_groups: bool,
    /// The callback's parameters other than `code`, `state`, `iss` and `error*`, as the
    /// browser brought them (Apple's first-login `user`). Unauthenticated: use them only for
    /// what the provider documents, never for identity or email.
    pub callback_params: BTreeMap<String, String>,
}

impl MapProfileInput {
    /// The body of a successful response by name, or an error naming the missing response.
    pub fn response(&self, name: &str) -> Result<&Value, ProviderError> {
        match self.responses.get(name) {
            Some(r) if (200..300).contains(&r.status) => Ok(&r.body),
            Some(r) => Err(ProviderError::invalid_profile(format!(
                "the {name} request answered HTTP {}",
                r.status
            ))),
            None => Err(ProviderError::invalid_profile(format!(
                "no {name} response"
            ))),
        }
    }

    /// The body of a response by name when it succeeded, else `None`.
    pub fn optional_response(&self, name: &str) -> Option<&Value> {
        self.responses
            .get(name)
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| &r.body)
    }
}

/// The canonical profile every provider maps to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    /// The provider's stable, unique id for the user. Never an email.
    pub subject: String,
    pub email: Option<String>,
    /// True only when the provider vouches that the user controls `email`.
    pub email_verified: bool,
    pub name: Option<String>,
    pub username: Option<String>,
    pub picture: Option<String>,
    pub groups: Vec<String>,
    /// The provider's own data, kept for the caller.
    pub raw: Value,
}

/// The input of `check_claims`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckClaimsInput {
    pub settings: Settings,
    pub endpoints: Endpoints,
    pub claims: Value,
}

/// What kind of failure a plugin reports; the host maps it to a wire error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The instance's settings are wrong (a config error).
    InvalidConfig,
    /// The ID token's claims break a provider rule (`invalid_id_token`).
    InvalidClaims,
    /// The provider's responses do not make a usable profile (`provider_error`).
    InvalidProfile,
    /// Anything else (`internal`).
    #[default]
    #[serde(other)]
    Other,
}

/// An error a plugin returns from an operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }

    pub fn invalid_claims(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidClaims, message)
    }

    pub fn invalid_profile(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidProfile, message)
    }
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ProviderError {}

/// Reads a string setting, if present.
pub fn setting_str<'a>(settings: &'a Settings, name: &str) -> Option<&'a str> {
    settings.get(name).and_then(Value::as_str)
}

/// A non-empty string field of a JSON object (blank strings count as absent).
pub fn str_field<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// A boolean field of a JSON object. `true` or the string `"true"` (some providers send
/// strings) is true; anything else, or nothing, is false.
pub fn bool_field(value: &Value, name: &str) -> bool {
    match value.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// The strings of an array field (other elements skipped); empty when absent.
pub fn string_list(value: &Value, name: &str) -> Vec<String> {
    value
        .get(name)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A list setting: an array of strings (other elements skipped); empty when absent.
pub fn setting_list(settings: &Settings, name: &str) -> Vec<String> {
    settings
        .get(name)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A boolean setting; `false` when absent.
pub fn setting_bool(settings: &Settings, name: &str) -> bool {
    settings.get(name).and_then(Value::as_bool).unwrap_or(false)
}

/// A URL setting (or `default` when absent): it must be http(s); returned without a
/// trailing slash, ready for `format!("{base}/path")`.
pub fn setting_url(
    settings: &Settings,
    name: &str,
    default: &str,
) -> Result<String, ProviderError> {
    let url = setting_str(settings, name).unwrap_or(default);
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ProviderError::invalid_config(format!(
            "`{name}` must be an http(s) URL, not `{url}`"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

impl ProfileRequestsInput {
    /// Whether the verified ID-token claims carry a non-empty string `name`.
    pub fn has_claim(&self, name: &str) -> bool {
        self.claims
            .as_ref()
            .and_then(|c| str_field(c, name))
            .is_some()
    }

    /// The userinfo request (optional: its failure does not fail the login), when the
    /// endpoints name a userinfo URL. Its answer reaches `map_profile` as `userinfo`.
    pub fn userinfo(&self) -> Option<HttpRequest> {
        self.endpoints
            .userinfo_url
            .as_deref()
            .map(|url| HttpRequest::get("userinfo", url).optional())
    }
}

/// An OpenID Connect login's verified claims, with the userinfo answer when there is one
/// about the same subject (OIDC Core 5.3.2: an answer about anyone else is ignored).
#[derive(Debug, Clone, Copy)]
pub struct OidcProfile<'a> {
    pub claims: &'a Value,
    pub subject: &'a str,
    pub userinfo: Option<&'a Value>,
}

impl MapProfileInput {
    /// The ID-token claims, their `sub`, and the matching userinfo answer; an error when
    /// there are no claims or no subject.
    pub fn oidc(&self) -> Result<OidcProfile<'_>, ProviderError> {
        let claims = self
            .claims
            .as_ref()
            .ok_or_else(|| ProviderError::invalid_profile("no ID-token claims"))?;
        let subject = str_field(claims, "sub")
            .ok_or_else(|| ProviderError::invalid_profile("the ID token has no `sub`"))?;
        let userinfo = self
            .optional_response("userinfo")
            .filter(|u| str_field(u, "sub") == Some(subject));
        Ok(OidcProfile {
            claims,
            subject,
            userinfo,
        })
    }
}

impl OidcProfile<'_> {
    /// A string from the ID token, else from userinfo.
    pub fn text(&self, name: &str) -> Option<String> {
        str_field(self.claims, name)
            .or_else(|| self.userinfo.and_then(|u| str_field(u, name)))
            .map(str::to_owned)
    }

    /// The email and whether it is verified, both from the same source: the ID token when
    /// it has an email, else userinfo. Never verified without an email.
    pub fn email(&self) -> (Option<String>, bool) {
        let source = match (str_field(self.claims, "email"), self.userinfo) {
            (None, Some(userinfo)) => userinfo,
            _ => self.claims,
        };
        let email = str_field(source, "email").map(str::to_owned);
        let verified = email.is_some() && bool_field(source, "email_verified");
        (email, verified)
    }
}
