//! The token vault: a user's tokens at a provider, kept sealed per identity, handed to the
//! callers a provider allows, refreshed before they expire, once at a time per
//! (user, provider) however many requests arrive together: an in-process lock first, then a
//! lease in the store, which daemons sharing a JetStream store contend for.

use crate::locks::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret, SecretString};

use lanyard_proto::{Event, TokenGetRequest, TokenReply};

use crate::crypto::Vault;
use crate::error::{Error, ErrorCode};
use crate::events::EventSink;
use crate::providers::http::ProviderTokens;
use crate::providers::Providers;
use crate::sessions::{now, rfc3339};
use crate::store::{IdentityRecord, Store, TokenRecord};

/// How long a refresh lease lasts without renewal; its holder renews it every third of this.
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a `token.get` waits for another daemon's refresh before giving up.
const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The `token_readers` entry that admits any caller.
pub const ANY_CALLER: &str = "*";

/// The vault.
#[derive(Debug)]
pub struct TokenVault {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    providers: Providers,
    events: EventSink,
    margin_secs: i64,
    /// One lock per (user, provider) with a refresh in flight or waiting.
    refreshing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl TokenVault {
    pub fn new(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        providers: Providers,
        events: EventSink,
        margin_secs: u64,
    ) -> Self {
        Self {
            store,
            vault,
            providers,
            events,
            margin_secs: margin_secs as i64,
            refreshing: Mutex::new(HashMap::new()),
        }
    }

    /// The sealed record a callback stores for an instance that keeps tokens.
    pub fn seal_login(
        &self,
        provider: &str,
        subject: &str,
        tokens: &ProviderTokens,
        now: i64,
    ) -> Result<TokenRecord, Error> {
        self.seal(provider, subject, tokens, None, &[], now)
    }

    fn seal(
        &self,
        provider: &str,
        subject: &str,
        tokens: &ProviderTokens,
        previous_refresh: Option<&crate::crypto::Sealed>,
        previous_scopes: &[String],
        now: i64,
    ) -> Result<TokenRecord, Error> {
        let seal = |secret: &SecretString, kind: &str| {
            self.vault
                .seal_str(secret, &slot(provider, subject, kind))
                .map_err(|e| Error::internal(format!("cannot seal a provider token: {e}")))
        };
        Ok(TokenRecord {
            access_token: seal(&tokens.access_token, "access")?,
            // A refresh answer without a new refresh token keeps the old one.
            refresh_token: match &tokens.refresh_token {
                Some(token) => Some(seal(token, "refresh")?),
                None => previous_refresh.cloned(),
            },
            expires_at: tokens.expires_in.map(|d| now + d.as_secs() as i64),
            scopes: tokens
                .scopes
                .clone()
                .unwrap_or_else(|| previous_scopes.to_vec()),
            updated_at: now,
            reauth_required: false,
        })
    }

    /// `token.get`: the user's access token at `provider`, refreshed first when it expires
    /// within the margin. `caller` is the name the caller authenticated as, if any.
    pub async fn get(
        &self,
        request: TokenGetRequest,
        caller: Option<&str>,
    ) -> Result<TokenReply, Error> {
        let config = self.providers.describe(&request.provider)?.config;
        let allowed = config
            .token_readers
            .iter()
            .any(|reader| reader == ANY_CALLER || Some(reader.as_str()) == caller);
        if !allowed {
            return Err(Error::new(
                ErrorCode::Forbidden,
                format!(
                    "caller `{}` may not read tokens of provider `{}`",
                    caller.unwrap_or("(anonymous)"),
                    request.provider
                ),
            ));
        }
        if !config.store_tokens {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("provider `{}` does not store tokens", request.provider),
            ));
        }
        let (identity, record) = self.load(&request).await?;
        if let Some(reply) = self.if_fresh(&identity, &record)? {
            return Ok(reply);
        }

        // Near expiry: one refresh per (user, provider). Whoever waits re-reads after the
        // winner, finds the fresh token, and never calls the provider itself.
        let key = format!("{}\0{}", request.user_id, request.provider);
        let turn = {
            let mut refreshing = lock(&self.refreshing);
            refreshing.entry(key.clone()).or_default().clone()
        };
        let result = {
            let _turn = turn.lock().await;
            self.refresh_under_lease(&request, &key).await
        };
        drop(turn);
        let mut refreshing = lock(&self.refreshing);
        if refreshing
            .get(&key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            refreshing.remove(&key);
        }
        result
    }

    /// Refreshes holding the store's lease on (user, provider), renewed while the provider
    /// answers; while another daemon holds it, waits for that daemon's result instead.
    async fn refresh_under_lease(
        &self,
        request: &TokenGetRequest,
        key: &str,
    ) -> Result<TokenReply, Error> {
        let name = format!("refresh/{key}");
        let deadline = std::time::Instant::now() + LEASE_WAIT;
        loop {
            if let Some(lease) = self.store.try_lease(&name, LEASE_TTL).await? {
                let lease = Arc::new(tokio::sync::Mutex::new(lease));
                let renewer = {
                    let (store, lease) = (self.store.clone(), lease.clone());
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(LEASE_TTL / 3).await;
                            let mut lease = lease.lock().await;
                            if !matches!(store.renew_lease(&mut lease, LEASE_TTL).await, Ok(true)) {
                                tracing::warn!(lease = %lease.name, "lost a refresh lease");
                                break;
                            }
                        }
                    })
                };
                let result = self.refresh_if_needed(request).await;
                renewer.abort();
                let lease = lease.lock().await.clone();
                if let Err(error) = self.store.release_lease(lease).await {
                    tracing::warn!(%error, "cannot release a refresh lease (it lapses on its own)");
                }
                return result;
            }
            // Another daemon is refreshing: its result lands in the store.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let (identity, record) = self.load(request).await?;
            if let Some(reply) = self.if_fresh(&identity, &record)? {
                return Ok(reply);
            }
            if record.reauth_required {
                return Err(reauth(&request.provider));
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::unavailable(
                    "another daemon's refresh of this token did not finish; retry",
                ));
            }
        }
    }

    async fn refresh_if_needed(&self, request: &TokenGetRequest) -> Result<TokenReply, Error> {
        let (identity, record) = self.load(request).await?;
        if let Some(reply) = self.if_fresh(&identity, &record)? {
            return Ok(reply);
        }
        let provider = &request.provider;
        let subject = &identity.subject;
        if record.reauth_required {
            return Err(reauth(provider));
        }
        let Some(sealed) = &record.refresh_token else {
            return Err(reauth(provider));
        };
        let refresh_token = self
            .vault
            .open_str(sealed, &slot(provider, subject, "refresh"))
            .map_err(|e| Error::internal(format!("cannot open the stored token: {e}")))?;
        match self.providers.refresh(provider, refresh_token).await {
            Ok(tokens) => {
                let now = now();
                let fresh = self.seal(
                    provider,
                    subject,
                    &tokens,
                    record.refresh_token.as_ref(),
                    &record.scopes,
                    now,
                )?;
                // Durable before anyone hears of the new tokens.
                self.store.put_tokens(provider, subject, &fresh).await?;
                self.events.emit(Event::TokenRefreshed {
                    user_id: request.user_id.clone(),
                    provider: provider.clone(),
                });
                Ok(TokenReply {
                    access_token: tokens.access_token.expose_secret().to_owned(),
                    expires_at: fresh.expires_at.map(rfc3339),
                    scopes: fresh.scopes,
                })
            }
            Err(error) => {
                if error.code == ErrorCode::ReauthRequired {
                    let mut refused = record.clone();
                    refused.reauth_required = true;
                    self.store.put_tokens(provider, subject, &refused).await?;
                }
                self.events.emit(Event::TokenRefreshFailed {
                    user_id: request.user_id.clone(),
                    provider: provider.clone(),
                    code: error.code,
                });
                Err(error)
            }
        }
    }

    async fn load(
        &self,
        request: &TokenGetRequest,
    ) -> Result<(IdentityRecord, TokenRecord), Error> {
        let not_found = || {
            Error::new(
                ErrorCode::NotFound,
                format!(
                    "no stored tokens for this user at provider `{}`",
                    request.provider
                ),
            )
        };
        // The user, read with the tokens: a disabled user's tokens are not handed out.
        let (tokens, user) = tokio::try_join!(
            self.store.get_tokens(&request.user_id, &request.provider),
            self.store.get_user(&request.user_id)
        )?;
        if user.as_ref().is_some_and(|u| u.disabled_at.is_some()) {
            return Err(crate::store::StoreError::Disabled.into());
        }
        match (tokens, user) {
            (Some((identity, Some(record))), Some(_)) => Ok((identity, record)),
            _ => Err(not_found()),
        }
    }

    /// The reply, when the stored access token is good for longer than the margin.
    fn if_fresh(
        &self,
        identity: &IdentityRecord,
        record: &TokenRecord,
    ) -> Result<Option<TokenReply>, Error> {
        let fresh = record
            .expires_at
            .is_none_or(|at| at > now() + self.margin_secs);
        if !fresh || record.reauth_required {
            return Ok(None);
        }
        let access = self
            .vault
            .open_str(
                &record.access_token,
                &slot(&identity.provider, &identity.subject, "access"),
            )
            .map_err(|e| Error::internal(format!("cannot open the stored token: {e}")))?;
        Ok(Some(TokenReply {
            access_token: access.expose_secret().to_owned(),
            expires_at: record.expires_at.map(rfc3339),
            scopes: record.scopes.clone(),
        }))
    }

    /// Revokes an unlinked identity's tokens at the provider where it supports revocation.
    /// Returns whether anything was revoked there.
    pub async fn revoke_at_provider(
        &self,
        identity: &IdentityRecord,
        record: &TokenRecord,
    ) -> bool {
        let (provider, subject) = (&identity.provider, &identity.subject);
        let mut revoked = false;
        let tokens = [
            (Some(&record.access_token), "access", "access_token"),
            (record.refresh_token.as_ref(), "refresh", "refresh_token"),
        ];
        for (sealed, kind, hint) in tokens {
            let Some(sealed) = sealed else { continue };
            let Ok(token) = self.vault.open_str(sealed, &slot(provider, subject, kind)) else {
                continue;
            };
            match self.providers.revoke(provider, token, hint).await {
                Ok(done) => revoked |= done,
                Err(error) => tracing::warn!(%provider, %error, "revoking a token failed"),
            }
        }
        revoked
    }
}

fn reauth(provider: &str) -> Error {
    Error::new(
        ErrorCode::ReauthRequired,
        format!("the stored tokens for provider `{provider}` no longer work; the user must log in again"),
    )
}

/// The vault slot of an identity's token.
fn slot(provider: &str, subject: &str, kind: &str) -> String {
    format!("token/{provider}/{subject}/{kind}")
}
