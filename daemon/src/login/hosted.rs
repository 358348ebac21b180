//! Logins through Lanyard's hosted pages, for apps that can open a browser but cannot receive
//! its redirect. `login` with `hosted = true` starts the login as usual, with Lanyard's own
//! `/callback` as the redirect URI, and stores it for the app to wait on (waited.rs) with
//! what the start page needs, sealed. The start page (`/login/{key}`) says where the user
//! is going; its "Continue" (a POST, once) sets the browser binding in a cookie and sends
//! the browser to the provider; the provider sends it back to `/callback`, which finishes
//! the login as `callback` does, with the cookie's binding, and records the outcome the
//! app's `login.wait` gets. The HTTP side is `web/`.

use std::collections::HashMap;
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

/// What the start page shows before the user goes on.
#[derive(Debug)]
pub struct HostedPage {
    /// The provider instance's id.
    pub provider: String,
    /// Where "Continue" leads (the form's CSP must allow it).
    pub provider_origin: String,
}

/// Where the start page sends the browser, with the binding cookie to set.
#[derive(Debug)]
pub struct HostedStart {
    pub authorization_url: String,
    pub cookie: BindingCookie,
}

/// The cookie that carries a hosted login's browser binding from the start page to the
/// callback: one per login (so two logins in one browser do not clash), HttpOnly,
/// `SameSite=Lax` (the provider's redirect back is a top-level GET), `Secure` and
/// `__Host-` on https; cleared by the callback.
#[derive(Debug)]
pub struct BindingCookie {
    pub name: String,
    pub value: String,
    pub max_age: i64,
    pub secure: bool,
}

impl BindingCookie {
    /// The cookie's name for the login stored under `key`: on https with the `__Host-`
    /// prefix, so a sibling subdomain or a plain-http page cannot plant one (the browser
    /// then insists on `Secure`, `Path=/` and no `Domain`).
    pub fn name(key: &str, secure: bool) -> String {
        let prefix = if secure {
            "__Host-lanyard_"
        } else {
            "lanyard_"
        };
        format!("{prefix}{}", &key[..16.min(key.len())])
    }

    /// The `Set-Cookie` header's value.
    pub fn header(&self) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}={}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{secure}",
            self.name, self.value, self.max_age
        )
    }

    /// The `Set-Cookie` header's value that removes cookie `name`.
    pub fn clear(name: &str, secure: bool) -> String {
        let secure = if secure { "; Secure" } else { "" };
        format!("{name}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax{secure}")
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

    /// The start page, shown: the login under `key`, unexpired and not ended, with the
    /// provider it goes to. Showing it spends nothing (a link scanner or an unfurling chat
    /// fetches it too); the user's "Continue" opens it ([`hosted_open`](Self::hosted_open)).
    pub async fn hosted_page(&self, key: &str) -> Result<HostedPage, Error> {
        let record = self.open_hosted(key).await?;
        let secrets: HostedSecrets = self.open_json(&record.sealed, &secrets_slot(key))?;
        let origin = url::Url::parse(&secrets.authorization_url)
            .map(|url| url.origin().ascii_serialization())
            .map_err(|e| Error::internal(format!("a stored authorization URL: {e}")))?;
        Ok(HostedPage {
            provider: record.provider,
            provider_origin: origin,
        })
    }

    /// The start page, opened: for the first and only time (a second opening, in this
    /// browser or another, is `invalid_state`), unexpired and not ended. The binding
    /// cookie to set and where to send the browser.
    pub async fn hosted_open(&self, key: &str) -> Result<HostedStart, Error> {
        let hosted = self.hosted_config()?;
        let record = self.open_hosted(key).await?;
        if !self
            .store
            .spend_login(&start_id(key), record.expires_at)
            .await?
        {
            tracing::warn!("a hosted login's start page was opened again; refused");
            return Err(Error::invalid_state());
        }
        let secrets: HostedSecrets = self.open_json(&record.sealed, &secrets_slot(key))?;
        let secure = hosted.is_secure();
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

    /// The hosted login under `key`, while it may still be started.
    async fn open_hosted(&self, key: &str) -> Result<WaitedLogin, Error> {
        self.hosted_config()?;
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
        Ok(record)
    }

    /// The hosted callback: the provider's redirect back with `query`, with the browser's
    /// `cookies`. Only a hosted login's state is finished here (another login's is
    /// `invalid_state`, left unspent), and only with the start page's cookie (without it,
    /// `invalid_state`, also left unspent: the right browser may still come); then exactly
    /// as `callback`. The outcome is recorded for the app's wait by the one callback that
    /// spent the state.
    pub async fn hosted_callback(
        &self,
        query: &str,
        cookies: &HashMap<String, String>,
    ) -> HostedCallback {
        let mut cookie = None;
        let result = self.finish_hosted(query, cookies, &mut cookie).await;
        HostedCallback { result, cookie }
    }

    async fn finish_hosted(
        &self,
        query: &str,
        cookies: &HashMap<String, String>,
        cookie: &mut Option<String>,
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
        let name = BindingCookie::name(&key, hosted.is_secure());
        // Whatever the instance's `require_binding`: a hosted login's binding is Lanyard's
        // own, always set by its start page.
        let binding = cookies.get(&name).cloned().ok_or_else(|| {
            tracing::warn!("a hosted callback came without its start page's cookie; refused");
            Error::invalid_state()
        })?;
        *cookie = Some(name);
        let (result, spent) = self
            .callback_spending(CallbackRequest {
                query: Some(query.to_owned()),
                binding: Some(binding),
                redirect_uri: Some(hosted.callback_url()),
                ..CallbackRequest::default()
            })
            .await;
        if spent {
            self.record_hosted(&key, &result).await;
        }
        result
    }

    /// Records a hosted login's outcome, trying again for a while if the store fails (the
    /// session may exist already: the app must hear of it).
    async fn record_hosted(&self, key: &str, result: &Result<CallbackReply, Error>) {
        for attempt in 0..5u32 {
            match self.end_waited(key, result).await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, attempt, "cannot record how a hosted login ended");
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        tracing::error!("gave up recording how a hosted login ended; its wait will expire");
    }
}

/// What the hosted callback did: the login's outcome, and the binding cookie to clear.
#[derive(Debug)]
pub struct HostedCallback {
    pub result: Result<CallbackReply, Error>,
    /// The name of the cookie that carried the binding, once the login was found.
    pub cookie: Option<String>,
}

/// The id a start page's single opening is spent under (as a callback spends its state).
fn start_id(key: &str) -> [u8; 16] {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("start/{key}").as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_ref()[..16]);
    id
}
