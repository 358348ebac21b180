//! Finishing a login: the callback's issuer, the code exchange, ID-token validation and the
//! profile.

use lanyard_provider_sdk::{
    CheckClaimsInput, HttpRequest, MapProfileInput, Op, Profile, ProfileRequestsInput,
};

use super::profile::checked_profile;
use super::tokens::token_client;
use super::{CompleteArgs, Completed, Instance, Resolved};
use crate::error::{Error, ErrorCode};
use crate::providers::http::ProviderTokens;
use crate::providers::oidc::{Expectations, KeySource};
use crate::sessions::now;

impl Instance {
    /// Finishes a login: checks the RFC 9207 `iss`, exchanges the code (with `assertion` as
    /// the client secret when the provider wants one signed), validates the ID token against
    /// `keys`, fetches and maps the profile.
    pub async fn complete(
        &self,
        resolved: &Resolved,
        keys: &impl KeySource,
        assertion: Option<String>,
        args: CompleteArgs,
    ) -> Result<Completed, Error> {
        let CompleteArgs {
            ticket,
            code,
            iss,
            params,
        } = args;
        if let (Some(iss), Some(issuer)) = (iss.as_deref(), resolved.issuer.as_deref()) {
            if !crate::providers::oidc::issuer_matches(issuer, iss, None) {
                tracing::warn!(provider = %self.id, "callback iss does not match the issuer");
                return Err(Error::new(
                    ErrorCode::InvalidState,
                    "the callback came from a different issuer than the login started with",
                ));
            }
        }
        let client = token_client(resolved, assertion);
        let tokens = self
            .http
            .exchange_code(
                &client,
                code,
                ticket
                    .pkce_verifier
                    .filter(|_| self.plugin.description().pkce),
                ticket.redirect_uri,
            )
            .await?;

        let claims = self
            .id_token_claims(resolved, keys, &tokens, ticket.nonce.as_deref())
            .await?;
        self.completed(resolved, tokens, claims, ticket.fetch_groups, params)
            .await
    }

    /// The rest of a login once the provider gave tokens and the ID token (if any) is
    /// valid: the profile, fetched and mapped, for the ID token's subject.
    pub(super) async fn completed(
        &self,
        resolved: &Resolved,
        tokens: ProviderTokens,
        claims: Option<serde_json::Value>,
        fetch_groups: bool,
        params: std::collections::BTreeMap<String, String>,
    ) -> Result<Completed, Error> {
        let sub = claims
            .as_ref()
            .and_then(|c| c["sub"].as_str())
            .map(str::to_owned);
        let profile = self
            .profile(resolved, &tokens, claims, fetch_groups, params)
            .await?;
        if let Some(sub) = sub {
            if sub != profile.subject {
                return Err(Error::internal(
                    "the plugin mapped a subject other than the ID token's",
                ));
            }
        }
        let profile = checked_profile(profile, &self.id)?;
        Ok(Completed {
            profile,
            tokens,
            trust_email_verified: self.config.trust_email_verified,
            store_tokens: self.config.store_tokens,
        })
    }

    /// The ID token's claims, for an OpenID Connect provider: signature, issuer, audience,
    /// nonce, times and `at_hash` checked (the plugin's own claim checks come with the
    /// profile). `None` for a plain OAuth2 provider.
    pub(super) async fn id_token_claims(
        &self,
        resolved: &Resolved,
        keys: &impl KeySource,
        tokens: &ProviderTokens,
        nonce: Option<&str>,
    ) -> Result<Option<serde_json::Value>, Error> {
        let (Some(_), Some(issuer)) = (&resolved.jwks_uri, &resolved.issuer) else {
            return Ok(None);
        };
        let id_token = tokens.id_token.as_deref().ok_or_else(|| {
            tracing::warn!(provider = %self.id, "token response has no id_token");
            Error::invalid_id_token()
        })?;
        let claims = crate::providers::oidc::verify(
            keys,
            id_token,
            &Expectations {
                issuer,
                client_id: &self.config.client_id,
                nonce,
                allowed_algs: &self.algs,
                skew_secs: self.config.clock_skew_secs,
                now: now(),
                access_token: Some(secrecy::ExposeSecret::expose_secret(&tokens.access_token)),
            },
        )
        .await?;
        Ok(Some(claims))
    }

    /// The profile, as the plugin maps it from the claims (after its own claim checks) and
    /// the API responses it asks for, fetched only from the provider's own origins. The
    /// plugin's operations with no I/O between them share one hand-off to its thread: all
    /// three when it asks for no requests (an ID token with the email), else the checks and
    /// the requests, then the mapping.
    async fn profile(
        &self,
        resolved: &Resolved,
        tokens: &ProviderTokens,
        claims: Option<serde_json::Value>,
        fetch_groups: bool,
        params: std::collections::BTreeMap<String, String>,
    ) -> Result<Profile, Error> {
        let settings = self.settings.clone();
        let endpoints = resolved.endpoints.clone();
        let granted_scopes = tokens.scopes.clone().unwrap_or_default();
        let first = self
            .call_together(
                "check_claims, profile_requests, map_profile",
                move |plugin| {
                    if let Some(claims) = &claims {
                        plugin.call::<_, serde_json::Value>(
                            Op::CheckClaims,
                            &CheckClaimsInput {
                                settings: settings.clone(),
                                endpoints: endpoints.clone(),
                                claims: claims.clone(),
                            },
                        )?;
                    }
                    let requests: Vec<HttpRequest> = plugin.call(
                        Op::ProfileRequests,
                        &ProfileRequestsInput {
                            settings: settings.clone(),
                            endpoints,
                            claims: claims.clone(),
                            fetch_groups,
                            granted_scopes,
                        },
                    )?;
                    if !requests.is_empty() {
                        return Ok(Profiled::Fetch(requests, claims, params));
                    }
                    let profile = plugin.call(
                        Op::MapProfile,
                        &MapProfileInput {
                            settings,
                            claims,
                            responses: Default::default(),
                            fetch_groups,
                            callback_params: params,
                        },
                    )?;
                    Ok(Profiled::Mapped(profile))
                },
            )
            .await?;
        let (requests, claims, params) = match first {
            Profiled::Mapped(profile) => return Ok(profile),
            Profiled::Fetch(requests, claims, params) => (requests, claims, params),
        };
        self.check_request_targets(&requests, resolved)?;
        let responses = self
            .http
            .profile_requests(&requests, &tokens.access_token)
            .await?;
        self.call(
            Op::MapProfile,
            &MapProfileInput {
                settings: self.settings.clone(),
                claims,
                responses,
                fetch_groups,
                callback_params: params,
            },
        )
        .await
    }
}

/// How far the plugin's first hand-off got: the mapped profile, or the requests the mapping
/// needs first (with what it needs besides).
enum Profiled {
    Mapped(Profile),
    Fetch(
        Vec<HttpRequest>,
        Option<serde_json::Value>,
        std::collections::BTreeMap<String, String>,
    ),
}
