//! The provider's tokens after a login: refresh, revocation, and the client-secret JWT some token
//! endpoints want.

use jsonwebtoken::Algorithm;
use secrecy::SecretString;

use super::{Instance, Resolved};
use crate::error::Error;
use crate::providers::http::{OAuthClient, ProviderTokens};
use crate::sessions::now;

impl Instance {
    /// Refreshes the user's provider tokens with a stored refresh token.
    pub async fn refresh(
        &self,
        resolved: &Resolved,
        assertion: Option<String>,
        refresh_token: SecretString,
    ) -> Result<ProviderTokens, Error> {
        let client = token_client(resolved, assertion);
        self.http
            .exchange_refresh_token(&client, refresh_token)
            .await
    }

    /// Revokes a token at the provider, when it has a revocation endpoint. Returns whether
    /// the provider supports revocation.
    pub async fn revoke(
        &self,
        resolved: &Resolved,
        token: SecretString,
        hint: &'static str,
    ) -> Result<bool, Error> {
        let Some(url) = &resolved.revocation_url else {
            return Ok(false);
        };
        self.http
            .revoke_token(
                url,
                &self.config.client_id,
                self.secret.as_ref(),
                &token,
                hint,
            )
            .await?;
        Ok(true)
    }

    /// The client-secret JWT for the token endpoint when the provider wants one: `cached`
    /// while more than half its life is left, else a new one (which replaces it).
    pub fn assertion(&self, cached: &mut Option<(String, i64)>) -> Result<Option<String>, Error> {
        let (Some(jwt), Some(key)) = (&self.configured.client_secret_jwt, &self.assertion_key)
        else {
            return Ok(None);
        };
        let now = now();
        let lifetime = jwt.lifetime_secs.clamp(60, 180 * 86_400) as i64;
        if let Some((token, expires)) = cached.as_ref() {
            if expires - now > lifetime / 2 {
                return Ok(Some(token.clone()));
            }
        }
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(jwt.key_id.clone());
        let claims = serde_json::json!({
            "iss": jwt.issuer,
            "sub": self.config.client_id,
            "aud": jwt.audience,
            "iat": now,
            "exp": now + lifetime,
        });
        let token = jsonwebtoken::encode(&header, &claims, &key.0)
            .map_err(|e| Error::internal(format!("cannot sign the client secret: {e}")))?;
        *cached = Some((token.clone(), now + lifetime));
        Ok(Some(token))
    }
}

/// The OAuth2 client for the token endpoint: the resolved one, with a client-secret JWT as
/// its secret for providers that want one signed.
pub(super) fn token_client(
    resolved: &Resolved,
    assertion: Option<String>,
) -> std::borrow::Cow<'_, OAuthClient> {
    match assertion {
        None => std::borrow::Cow::Borrowed(&resolved.client),
        Some(jwt) => std::borrow::Cow::Owned(
            resolved
                .client
                .clone()
                .set_client_secret(oauth2::ClientSecret::new(jwt)),
        ),
    }
}
