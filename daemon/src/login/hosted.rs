//! Logins through Lanyard's hosted pages, for apps that can open a browser but cannot receive
//! its redirect. `login` with `hosted = true` starts the login as usual, with Lanyard's own
//! `/callback` as the redirect URI, and stores it for the app to wait on (waited.rs) with
//! what the start page needs, sealed. The start page (`/login/{key}`, opened once) sets the
//! browser binding in a cookie and sends the browser to the provider; the provider sends it
//! back to `/callback`, which finishes the login as `callback` does, with the cookie's
//! binding, and records the outcome the app's `login.wait` gets. The HTTP side is `web/`.

use std::sync::Arc;

use lanyard_proto::{CallbackReply, CallbackRequest, WaitReply, WaitRequest};
use serde::{Deserialize, Serialize};

use super::waited::{expired, secrets_slot, waited_key};
use crate::config::HostedConfig;
use crate::error::Error;
use crate::service::Lanyard;
use crate::sessions::now;
use crate::store::{WaitedKind, WaitedLogin, WAITED_LOGIN_MAX_SECS};

/// What the start page needs, sealed in the record.
#[derive(Serialize, Deserialize)]
struct HostedSecrets {
    authorization_url: String,
    binding: String,
}

/// Where the start page sends the browser, with the binding cookie to set.
#[derive(Debug)]
pub struct HostedStart {
    pub authorization_url: String,
    pub cookie: BindingCookie,
}

/// The cookie that carries a hosted login's browser binding from the start page to the
/// callback: one per login (so two logins in one browser do not clash), only sent to
/// `/callback`, HttpOnly, `SameSite=Lax` (the provider's redirect back is a top-level GET),
/// `Secure` on https.
#[derive(Debug)]
pub struct BindingCookie {
    pub name: String,
    pub value: String,
    pub max_age: i64,
    pub secure: bool,
}

impl BindingCookie {
    /// The cookie's name for the login stored under `key`.
    pub fn name(key: &str, secure: bool) -> String {
        let prefix = if secure {
            "__Secure-lanyard_"
        } else {
            "lanyard_"
        };
        format!("{prefix}{}", &key[..16.min(key.len())])
    }

    /// The `Set-Cookie` header's value.
    pub fn header(&self) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}={}; Max-Age={}; Path=/callback; HttpOnly; SameSite=Lax{secure}",
            self.name, self.value, self.max_age
        )
    }
}

impl Lanyard {
    /// The hosted pages' configuration, or `bad_request` when they are off.
    pub(super) fn hosted_config(&self) -> Result<&HostedConfig, Error> {
        self.logins.hosted.as_ref().ok_or_else(|| {
            Error::bad_request("`hosted` logins need the hosted pages ([hosted] in the config)")
        })
    }

    /// Stores a hosted login for its start page and the app's wait; returns the start
    /// page's URL and the handle.
    pub(super) async fn store_hosted(
        &self,
        provider: &str,
        generation: String,
        authorization_url: String,
        secrets: &crate::login_state::Secrets,
        expires_at: i64,
        fetch_groups: bool,
    ) -> Result<(String, String), Error> {
        let hosted = self.hosted_config()?;
        let key = waited_key(&secrets.handle);
        let sealed = HostedSecrets {
            authorization_url,
            binding: secrets.binding.clone(),
        };
        let record = WaitedLogin {
            kind: WaitedKind::Hosted,
            provider: provider.to_owned(),
            generation,
            sealed: self.seal_json(&sealed, &secrets_slot(&key))?,
            expires_at: expires_at.min(now() + WAITED_LOGIN_MAX_SECS),
            fetch_groups,
            outcome: None,
        };
        self.store.put_waited_login(&key, &record).await?;
        Ok((
            hosted.page_url(&format!("login/{key}")),
            secrets.handle.clone(),
        ))
    }

    /// `login.wait`: a hosted login's outcome once it has one, or `pending`.
    pub async fn login_wait(self: &Arc<Self>, request: WaitRequest) -> Result<WaitReply, Error> {
        self.wait_for(WaitedKind::Hosted, request).await
    }

    /// The start page: the login under `key`, opened for the first and only time (a second
    /// opening, in this browser or another, is `invalid_state`), unexpired and not ended.
    pub async fn hosted_start(&self, key: &str) -> Result<HostedStart, Error> {
        let hosted = self.hosted_config()?;
        let record = self
            .store
            .waited_login(key)
            .await?
            .filter(|r| r.kind == WaitedKind::Hosted)
            .ok_or_else(|| Error::new(crate::error::ErrorCode::NotFound, "no such sign-in"))?;
        if record.outcome.is_some() {
            return Err(Error::invalid_state());
        }
        if record.expires_at < now() {
            return Err(expired());
        }
        if !self
            .store
            .spend_login(&start_id(key), record.expires_at)
            .await?
        {
            tracing::warn!("a hosted login's start page was opened again; refused");
            return Err(Error::invalid_state());
        }
        let secrets: HostedSecrets = self.open_json(&record.sealed, &secrets_slot(key))?;
        let secure = hosted.public_url.starts_with("https:");
        Ok(HostedStart {
            authorization_url: secrets.authorization_url,
            cookie: BindingCookie {
                name: BindingCookie::name(key, secure),
                value: secrets.binding,
                max_age: record.expires_at - now(),
                secure,
            },
        })
    }

    /// The hosted callback: the provider's redirect back with `query`; `cookie` finds a
    /// cookie of the browser by name. Only a hosted login's state is finished here (any
    /// other is `invalid_state`, untouched); then exactly as `callback`, and the outcome is
    /// recorded for the app's wait.
    pub async fn hosted_callback(
        &self,
        query: &str,
        cookie: impl Fn(&str) -> Option<String>,
    ) -> Result<CallbackReply, Error> {
        let hosted = self.hosted_config()?;
        let state = url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "state")
            .map(|(_, value)| value.into_owned())
            .ok_or_else(Error::invalid_state)?;
        let (_, secrets) = self
            .logins
            .states
            .open(&state)
            .ok_or_else(Error::invalid_state)?;
        let key = waited_key(&secrets.handle);
        let waited = self.store.waited_login(&key).await?;
        if !waited.is_some_and(|w| w.kind == WaitedKind::Hosted && w.outcome.is_none()) {
            return Err(Error::invalid_state());
        }
        let secure = hosted.public_url.starts_with("https:");
        let result = self
            .callback(CallbackRequest {
                query: Some(query.to_owned()),
                binding: cookie(&BindingCookie::name(&key, secure)),
                redirect_uri: Some(hosted.callback_url()),
                ..CallbackRequest::default()
            })
            .await;
        if let Err(error) = self.end_waited(&key, &result).await {
            tracing::error!(%error, "cannot record how a hosted login ended");
        }
        result
    }
}

/// The id a start page's single opening is spent under (as a callback spends its state).
fn start_id(key: &str) -> [u8; 16] {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("start/{key}").as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_ref()[..16]);
    id
}
