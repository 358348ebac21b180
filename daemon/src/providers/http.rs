//! Outgoing HTTP to identity providers: one reqwest client (rustls, redirects off, timeouts),
//! the oauth2 code exchange over it, and the profile requests plugins ask for.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use lanyard_provider_sdk::{HttpRequest, HttpResponse, TokenAuth};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    ExtraTokenFields, PkceCodeVerifier, RedirectUrl, RequestTokenError, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::HttpConfig;
use crate::error::Error;

/// The largest provider response body the daemon reads.
const MAX_BODY: usize = 1024 * 1024;

/// The OpenID Connect addition to the token response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

type TokenResponseWithId = StandardTokenResponse<IdTokenField, BasicTokenType>;

/// The oauth2 client shape Lanyard uses: authorization and token endpoints set.
pub type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    TokenResponseWithId,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// A provider's device authorization response (RFC 8628 §3.2): the device code, the user
/// code and where to enter it, its lifetime and the polling interval.
pub type DeviceGrant = oauth2::StandardDeviceAuthorizationResponse;

/// Tokens from the provider's token endpoint. Secrets stay wrapped.
#[derive(Debug)]
pub struct ProviderTokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<Duration>,
    pub scopes: Option<Vec<String>>,
    pub id_token: Option<String>,
}

impl ProviderTokens {
    fn from_response(response: &TokenResponseWithId) -> Self {
        Self {
            access_token: SecretString::from(response.access_token().secret().clone()),
            refresh_token: response
                .refresh_token()
                .map(|t| SecretString::from(t.secret().clone())),
            expires_in: response.expires_in(),
            scopes: response
                .scopes()
                .map(|s| s.iter().map(|s| s.to_string()).collect()),
            id_token: response.extra_fields().id_token.clone(),
        }
    }
}

/// Why a request to the provider failed, before it is mapped to a wire code.
#[derive(Debug, thiserror::Error)]
pub enum HttpFailure {
    #[error("transport: {0}")]
    Transport(String),
    #[error("HTTP {0}")]
    Status(u16),
}

/// The daemon's HTTP client towards providers.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    pub config: HttpConfig,
}

impl HttpClient {
    pub fn new(config: HttpConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .timeout(Duration::from_millis(config.timeout_ms))
            .user_agent(concat!("lanyard/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, config })
    }

    /// GETs a JSON document (discovery, JWKS).
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, Error> {
        let response = self
            .client
            .get(url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| unavailable(url, &e))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Error::unavailable(format!("{url} answered HTTP {status}")));
        }
        if !status.is_success() {
            return Err(Error::provider(format!("{url} answered HTTP {status}")));
        }
        let bytes = read_body(response)
            .await
            .map_err(|e| unavailable(url, &e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::provider(format!("{url} did not answer valid JSON: {e}")))
    }

    /// Exchanges an authorization code at the token endpoint.
    pub async fn exchange_code(
        &self,
        client: &OAuthClient,
        code: String,
        pkce_verifier: Option<String>,
        redirect_uri: String,
    ) -> Result<ProviderTokens, Error> {
        let redirect = RedirectUrl::new(redirect_uri)
            .map_err(|e| Error::internal(format!("stored redirect_uri is invalid: {e}")))?;
        let mut request = client
            .exchange_code(AuthorizationCode::new(code))
            .set_redirect_uri(Cow::Owned(redirect));
        if let Some(verifier) = pkce_verifier {
            request = request.set_pkce_verifier(PkceCodeVerifier::new(verifier));
        }
        let http = OAuthHttp(self.clone());
        let response = request.request_async(&http).await.map_err(token_error)?;
        Ok(ProviderTokens::from_response(&response))
    }

    /// Exchanges a refresh token for new tokens. The provider refusing it (e.g.
    /// `invalid_grant`) is `reauth_required`: only a new login can help.
    pub async fn exchange_refresh_token(
        &self,
        client: &OAuthClient,
        refresh_token: SecretString,
    ) -> Result<ProviderTokens, Error> {
        let token = oauth2::RefreshToken::new(refresh_token.expose_secret().to_owned());
        let http = OAuthHttp(self.clone());
        let response = client
            .exchange_refresh_token(&token)
            .request_async(&http)
            .await
            .map_err(|error| match error {
                // Only a refusal of the token itself (GitHub says `bad_refresh_token`) means
                // a new login; another (bad client credentials, say) is the deployment's.
                RequestTokenError::ServerResponse(response)
                    if matches!(response.error().as_ref(), "invalid_grant" | "bad_refresh_token") =>
                {
                    Error::new(
                        crate::error::ErrorCode::ReauthRequired,
                        format!(
                            "the provider refused the stored refresh token ({}); the user must log in again",
                            response.error()
                        ),
                    )
                }
                RequestTokenError::ServerResponse(response) => Error::provider(format!(
                    "the token endpoint refused the refresh ({})",
                    response.error()
                )),
                other => token_error(other),
            })?;
        Ok(ProviderTokens::from_response(&response))
    }

    /// Asks the device authorization endpoint `url` for a device code (RFC 8628 §3.1).
    pub async fn device_authorization(
        &self,
        client: &OAuthClient,
        url: &str,
        scopes: &[String],
    ) -> Result<DeviceGrant, Error> {
        let url = oauth2::DeviceAuthorizationUrl::new(url.to_owned())
            .map_err(|e| Error::internal(format!("device authorization URL: {e}")))?;
        let client = client.clone().set_device_authorization_url(url);
        let http = OAuthHttp(self.clone());
        client
            .exchange_device_code()
            .add_scopes(scopes.iter().cloned().map(oauth2::Scope::new))
            .request_async(&http)
            .await
            .map_err(|error| match error {
                RequestTokenError::ServerResponse(response) => Error::provider(format!(
                    "the device authorization endpoint refused ({})",
                    response.error()
                )),
                other => endpoint_error("device authorization", other),
            })
    }

    /// Polls the token endpoint with a device code until the user approves or refuses, or
    /// `timeout` passes: oauth2's loop, which waits the grant's interval between polls,
    /// 5 s more after each `slow_down`, and backs off (up to 10 s) while the provider fails.
    pub async fn device_token(
        &self,
        client: &OAuthClient,
        grant: &DeviceGrant,
        timeout: Duration,
    ) -> Result<ProviderTokens, Error> {
        let http = OAuthHttp(self.clone());
        // After a failed request oauth2 doubles its wait, up to this (never below the
        // provider's interval, which RFC 8628 §3.5 asks clients to keep).
        let max_backoff = (grant.interval() * 4).max(Duration::from_secs(10));
        let response = client
            .exchange_device_access_token(grant)
            .set_max_backoff_interval(max_backoff)
            .request_async(&http, tokio::time::sleep, Some(timeout))
            .await
            .map_err(|error| match error {
                RequestTokenError::ServerResponse(response) => {
                    use oauth2::DeviceCodeErrorResponseType as Kind;
                    match response.error() {
                        Kind::AccessDenied => Error::new(
                            crate::error::ErrorCode::AccessDenied,
                            "the user refused the login at the provider",
                        ),
                        Kind::ExpiredToken => Error::new(
                            crate::error::ErrorCode::LoginExpired,
                            "the device code expired before the user finished the login",
                        ),
                        other => Error::provider(format!(
                            "the token endpoint refused the device code ({other})"
                        )),
                    }
                }
                other => endpoint_error("token", other),
            })?;
        Ok(ProviderTokens::from_response(&response))
    }

    /// Revokes a token at the provider's RFC 7009 endpoint, authenticating as the client.
    pub async fn revoke_token(
        &self,
        url: &str,
        client_id: &str,
        secret: Option<&SecretString>,
        token: &SecretString,
        hint: &str,
    ) -> Result<(), Error> {
        let mut form = vec![
            ("token", token.expose_secret().to_owned()),
            ("token_type_hint", hint.to_owned()),
        ];
        let mut request = self.client.post(url);
        match secret {
            Some(secret) => request = request.basic_auth(client_id, Some(secret.expose_secret())),
            None => form.push(("client_id", client_id.to_owned())),
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| unavailable(url, &e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(Error::provider(format!(
                "the revocation endpoint answered HTTP {}",
                response.status()
            )))
        }
    }

    /// Runs an oauth2 request; 5xx and 429 become failures so they map to
    /// `provider_unavailable` rather than a parse error.
    async fn send_oauth(
        &self,
        request: oauth2::HttpRequest,
    ) -> Result<oauth2::HttpResponse, HttpFailure> {
        let (parts, body) = request.into_parts();
        let response = self
            .client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| HttpFailure::Transport(transport_reason(&e)))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(HttpFailure::Status(status.as_u16()));
        }
        let headers = response.headers().clone();
        let bytes = read_body(response)
            .await
            .map_err(|e| HttpFailure::Transport(transport_reason(&e)))?;
        // GitHub answers its token endpoint's errors (`authorization_pending`,
        // `bad_verification_code`) with 200: read them as the errors RFC 6749 says they are.
        let status = if status == reqwest::StatusCode::OK && is_error_body(&bytes) {
            reqwest::StatusCode::BAD_REQUEST
        } else {
            status
        };
        let mut out = http::Response::builder().status(status);
        if let Some(h) = out.headers_mut() {
            *h = headers;
        }
        out.body(bytes)
            .map_err(|e| HttpFailure::Transport(e.to_string()))
    }

    /// Makes the plugin's profile requests with the user's access token, concurrently.
    pub async fn profile_requests(
        &self,
        requests: &[HttpRequest],
        access_token: &SecretString,
    ) -> Result<BTreeMap<String, HttpResponse>, Error> {
        let calls = requests
            .iter()
            .map(|r| self.profile_request(r, access_token));
        let results = futures::future::join_all(calls).await;
        let mut out = BTreeMap::new();
        for (request, result) in requests.iter().zip(results) {
            match result {
                Ok(response) if (200..300).contains(&response.status) || request.optional => {
                    out.insert(request.name.clone(), response);
                }
                Ok(response) if response.status >= 500 || response.status == 429 => {
                    return Err(Error::unavailable(format!(
                        "the provider's {} endpoint answered HTTP {}",
                        request.name, response.status
                    )));
                }
                Ok(response) => {
                    return Err(Error::provider(format!(
                        "the provider's {} endpoint answered HTTP {}",
                        request.name, response.status
                    )));
                }
                Err(error) if request.optional => {
                    tracing::warn!(request = %request.name, %error, "optional profile request failed");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(out)
    }

    async fn profile_request(
        &self,
        request: &HttpRequest,
        access_token: &SecretString,
    ) -> Result<HttpResponse, Error> {
        let mut builder = self
            .client
            .get(&request.url)
            .bearer_auth(access_token.expose_secret())
            .header("Accept", "application/json");
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let response = builder
            .send()
            .await
            .map_err(|e| unavailable(&request.url, &e))?;
        let status = response.status().as_u16();
        let bytes = read_body(response)
            .await
            .map_err(|e| unavailable(&request.url, &e))?;
        Ok(HttpResponse {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        })
    }
}

/// The oauth2 crate's view of our client. A named type rather than a closure: oauth2's blanket
/// impl for closures is generic over a lifetime in a way that makes callers' futures fail the
/// `Send` check tokio needs.
struct OAuthHttp(HttpClient);

impl<'c> oauth2::AsyncHttpClient<'c> for OAuthHttp {
    type Error = HttpFailure;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<oauth2::HttpResponse, HttpFailure>> + Send + 'c,
        >,
    >;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.0.send_oauth(request))
    }
}

/// Builds the oauth2 client for one instance.
pub fn oauth_client(
    client_id: &str,
    secret: Option<&SecretString>,
    authorization_url: &str,
    token_url: &str,
    token_auth: TokenAuth,
) -> Result<OAuthClient, Error> {
    let auth = AuthUrl::new(authorization_url.to_owned())
        .map_err(|e| Error::internal(format!("authorization URL: {e}")))?;
    let token = TokenUrl::new(token_url.to_owned())
        .map_err(|e| Error::internal(format!("token URL: {e}")))?;
    let mut client = oauth2::Client::new(ClientId::new(client_id.to_owned()))
        .set_auth_uri(auth)
        .set_token_uri(token)
        .set_auth_type(match token_auth {
            TokenAuth::ClientSecretBasic => AuthType::BasicAuth,
            TokenAuth::ClientSecretPost => AuthType::RequestBody,
        });
    if let Some(secret) = secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
    }
    Ok(client)
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY {
            // A body this large is not a provider response we can use; stop reading.
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether a token endpoint's body is an RFC 6749 §5.2 error (an `error`, and no
/// `access_token` or `device_code`).
fn is_error_body(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Shape {
        error: Option<serde_json::Value>,
        access_token: Option<serde_json::Value>,
        device_code: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Shape>(bytes).is_ok_and(|shape| {
        shape.error.is_some_and(|e| e.is_string())
            && shape.access_token.is_none()
            && shape.device_code.is_none()
    })
}

fn transport_reason(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

fn unavailable(url: &str, error: &reqwest::Error) -> Error {
    Error::unavailable(format!(
        "the identity provider is unreachable ({}: {})",
        url_origin(url),
        transport_reason(error)
    ))
}

fn url_origin(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "provider".into())
}

/// An oauth2 request's failure other than the provider's own refusal, at `endpoint`.
fn endpoint_error<T: oauth2::ErrorResponse>(
    endpoint: &str,
    error: RequestTokenError<HttpFailure, T>,
) -> Error {
    match error {
        RequestTokenError::ServerResponse(response) => {
            Error::provider(format!("the {endpoint} endpoint refused ({response:?})"))
        }
        RequestTokenError::Request(HttpFailure::Status(status)) => {
            Error::unavailable(format!("the {endpoint} endpoint answered HTTP {status}"))
        }
        RequestTokenError::Request(HttpFailure::Transport(reason)) => {
            Error::unavailable(format!("the {endpoint} endpoint is unreachable ({reason})"))
        }
        RequestTokenError::Parse(_, _) => Error::provider(format!(
            "the {endpoint} endpoint's answer is not what RFC 6749 / 8628 describe"
        )),
        RequestTokenError::Other(reason) => {
            Error::provider(format!("the {endpoint} endpoint failed: {reason}"))
        }
    }
}

fn token_error(error: RequestTokenError<HttpFailure, BasicErrorResponse>) -> Error {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let code = response.error().to_string();
            // Errors a user can cause (a stale or reused code) are the provider refusing.
            Error::provider(format!("the token endpoint refused the code ({code})"))
        }
        RequestTokenError::Request(HttpFailure::Status(status)) => {
            Error::unavailable(format!("the token endpoint answered HTTP {status}"))
        }
        RequestTokenError::Request(HttpFailure::Transport(reason)) => {
            Error::unavailable(format!("the token endpoint is unreachable ({reason})"))
        }
        RequestTokenError::Parse(_, _) => {
            Error::provider("the token endpoint's answer is not a valid token response")
        }
        RequestTokenError::Other(reason) => {
            Error::provider(format!("the token endpoint failed: {reason}"))
        }
    }
}
