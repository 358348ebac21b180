//! Device-flow logins (RFC 8628): `device.start` asks the provider for a device code and
//! stores the login (waited.rs); a poller polls the provider (inside its actor, bounded in
//! number and by the code's expiry) and ends the login exactly as a callback would (ID
//! token, linking rules, session, events); `device.wait` follows the stored login until it
//! ends.
//!
//! One poller runs per login, on the daemon holding the store's lease on it. A wait on any
//! daemon takes the polling over when nobody holds the lease (the daemon that polled
//! stopped), so a login survives the daemon that started it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanyard_proto::{
    CallbackReply, DeviceStartReply, DeviceStartRequest, Event, WaitReply, WaitRequest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::input::check_client_label;
use super::waited::{random_handle, secrets_slot, waited_key};
use crate::error::{Error, ErrorCode};
use crate::locks::lock;
use crate::login_state::fingerprint;
use crate::providers::{DevicePoll, Ticket};
use crate::service::{check_len, identity_view, user_view, Lanyard};
use crate::sessions::{now, rfc3339};
use crate::store::{Lease, WaitedKind, WaitedLogin, WAITED_LOGIN_MAX_SECS};

/// How long a device login's poller holds its lease without renewing it; it renews every
/// third of that. A daemon that stops polling hands over within this.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// How long a poller waits before asking its provider's actor again after it could not
/// poll (a restart, the provider out of reach).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What only a poller reads, sealed in the record.
#[derive(Serialize, Deserialize)]
struct DeviceSecrets {
    /// The provider's device authorization response.
    grant: crate::providers::http::DeviceGrant,
    link_user: Option<String>,
    client: Option<String>,
}

/// The device logins this daemon polls for, and the signal that stops them.
#[derive(Debug)]
pub(crate) struct DevicePollers {
    polling: Mutex<Polling>,
    stop: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct Polling {
    keys: HashSet<String>,
    tasks: JoinSet<()>,
    stopped: bool,
}

impl Default for DevicePollers {
    fn default() -> Self {
        Self {
            polling: Mutex::default(),
            stop: watch::channel(false).0,
        }
    }
}

impl DevicePollers {
    /// Claims `key` for a poller on this daemon: false when one runs here already, or the
    /// daemon is stopping.
    fn claim(&self, key: &str) -> bool {
        let mut polling = lock(&self.polling);
        while polling.tasks.try_join_next().is_some() {}
        !polling.stopped && polling.keys.insert(key.to_owned())
    }

    fn release(&self, key: &str) {
        lock(&self.polling).keys.remove(key);
    }

    /// Turns true when the daemon starts stopping.
    pub(super) fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops every poller (each gives its lease up, so another daemon's wait takes the login
    /// over at once), waiting for them at most `bound`.
    pub(crate) async fn stop(&self, bound: Duration) {
        let mut tasks = {
            let mut polling = lock(&self.polling);
            polling.stopped = true;
            std::mem::take(&mut polling.tasks)
        };
        let _ = self.stop.send(true);
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(bound, all).await.is_err() {
            tracing::warn!("device-login pollers did not stop in time");
        }
    }
}

impl Lanyard {
    /// `device.start`: a device code from the provider, stored with the login, and a poller.
    pub async fn device_start(
        self: &Arc<Self>,
        request: DeviceStartRequest,
    ) -> Result<DeviceStartReply, Error> {
        check_len("provider", Some(&request.provider))?;
        if let Some(scopes) = &request.scopes {
            super::check_scopes(scopes)?;
        }
        check_client_label(request.client.as_deref())?;
        let link_user = match &request.link_session {
            Some(token) => Some(self.sessions.verify(token, self.store.as_ref()).await?.sub),
            None => None,
        };
        let started = self
            .providers
            .device_start(&request.provider, request.scopes, request.fetch_groups)
            .await?;
        let grant = started.grant;
        let lifetime = grant
            .expires_in()
            .as_secs()
            .min(WAITED_LOGIN_MAX_SECS as u64);
        let expires_at = now() + lifetime as i64;
        let handle = random_handle()?;
        let key = waited_key(&handle);
        let reply = DeviceStartReply {
            handle,
            user_code: grant.user_code().secret().clone(),
            verification_uri: grant.verification_uri().to_string(),
            verification_uri_complete: grant
                .verification_uri_complete()
                .map(|uri| uri.secret().clone()),
            interval: grant.interval().as_secs(),
            expires_at: rfc3339(expires_at),
        };
        let secrets = DeviceSecrets {
            grant,
            link_user,
            client: request.client.filter(|c| !c.is_empty()),
        };
        let record = WaitedLogin {
            kind: WaitedKind::Device,
            provider: request.provider,
            generation: started.generation,
            sealed: self.seal_json(&secrets, &secrets_slot(&key))?,
            expires_at,
            fetch_groups: request.fetch_groups,
            outcome: None,
        };
        self.store.put_waited_login(&key, &record).await?;
        self.events.metrics().login_started(&record.provider);
        self.poll_device(key).await;
        Ok(reply)
    }

    /// `device.wait`: the login's outcome once it has one, or `pending` when
    /// `timeout_secs` passed first.
    pub async fn device_wait(self: &Arc<Self>, request: WaitRequest) -> Result<WaitReply, Error> {
        self.wait_for(WaitedKind::Device, request).await
    }

    /// Starts polling for the login under `key` on this daemon, unless a poller runs here
    /// already or another daemon holds the login's lease.
    pub(super) async fn poll_device(self: &Arc<Self>, key: String) {
        if !self.devices.claim(&key) {
            return;
        }
        let claim = Claim {
            lanyard: self.clone(),
            key,
        };
        let lease = match self
            .store
            .try_lease(&lease_name(&claim.key), LEASE_TTL)
            .await
        {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot take a device login's lease");
                return;
            }
        };
        // Another poller may have ended it between the caller's read and the lease.
        let record = match self.store.waited_login(&claim.key).await {
            Ok(Some(now)) if now.outcome.is_none() => now,
            _ => {
                let _ = self.store.release_lease(lease).await;
                return;
            }
        };
        let mut stop = self.devices.stopping();
        let mut polling = lock(&self.devices.polling);
        polling.tasks.spawn(async move {
            let lanyard = claim.lanyard.clone();
            let (abandon, abandoned) = watch::channel(false);
            let mut lease = lease;
            let run = lanyard.run_device_login(&claim.key, record, abandoned);
            tokio::pin!(run);
            // Stopping, or losing the lease, stops the polling only: a login whose tokens
            // arrived is still committed and recorded (the provider spent its code).
            let mut watching = true;
            loop {
                tokio::select! {
                    () = &mut run => break,
                    () = keep_lease(lanyard.store.as_ref(), &mut lease), if watching => {
                        tracing::warn!("lost a device login's lease; another daemon polls for it");
                        watching = false;
                        let _ = abandon.send(true);
                    }
                    _ = stop.wait_for(|stopped| *stopped), if watching => {
                        watching = false;
                        let _ = abandon.send(true);
                    }
                }
            }
            let _ = lanyard.store.release_lease(lease).await;
        });
    }

    /// Polls for one device login until it ends, and records how; returns early, recording
    /// nothing, once `abandoned` (the daemon stopping, the lease lost) while it polls.
    async fn run_device_login(
        &self,
        key: &str,
        record: WaitedLogin,
        mut abandoned: watch::Receiver<bool>,
    ) {
        let provider = record.provider.clone();
        let (result, commit) = loop {
            match self
                .finish_device_login(key, &record, abandoned.clone())
                .await
            {
                Ok((reply, commit, family_id)) => break (Ok(reply), Some((commit, family_id))),
                Err(_) if *abandoned.borrow() => return,
                // The provider's actor restarting, the provider out of reach for now, or
                // this daemon polling for as many logins as it may: nothing ends, the code
                // is still good until it expires.
                Err(error)
                    if matches!(
                        error.code,
                        ErrorCode::ProviderUnavailable | ErrorCode::RateLimited
                    ) && now() < record.expires_at =>
                {
                    tracing::warn!(%error, "polling for a device login again shortly");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                        _ = abandoned.wait_for(|a| *a) => return,
                    }
                }
                Err(error) => break (Err(error), None),
            }
        };
        let mut recorded = self.end_waited(key, &result).await;
        for attempt in 0..4u32 {
            // The store failing after a commit: the app must still hear of its session.
            let Err(error) = &recorded else { break };
            tracing::warn!(%error, attempt, "cannot record how a device login ended");
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            recorded = self.end_waited(key, &result).await;
        }
        match recorded {
            Ok(true) => match (commit, result) {
                (Some((commit, family_id)), _) => {
                    self.emit_login_events(&provider, &commit, family_id)
                }
                (None, Err(error)) => self.events.emit(Event::LoginFailed {
                    code: error.code,
                    provider: Some(provider),
                }),
                (None, Ok(_)) => {}
            },
            Ok(false) => tracing::warn!("a device login had ended already"),
            Err(error) => tracing::error!(%error, "cannot record how a device login ended"),
        }
    }

    /// The provider's answer, then the same commit as a callback's.
    async fn finish_device_login(
        &self,
        key: &str,
        record: &WaitedLogin,
        abandoned: watch::Receiver<bool>,
    ) -> Result<(CallbackReply, crate::store::LoginCommit, String), Error> {
        let secrets: DeviceSecrets = self.open_json(&record.sealed, &secrets_slot(key))?;
        let generation = fingerprint(&record.generation);
        let completed = self
            .providers
            .device_poll(
                &record.provider,
                DevicePoll {
                    grant: secrets.grant,
                    expires_at: record.expires_at,
                    fetch_groups: record.fetch_groups,
                    generation,
                    abandoned,
                },
            )
            .await?;
        // As for a callback: the instance that started it must still be the one there is.
        self.instance_now(&record.provider, generation).await?;
        let ticket = Ticket {
            provider: record.provider.clone(),
            generation,
            redirect_uri: String::new(),
            pkce_verifier: None,
            nonce: None,
            fetch_groups: record.fetch_groups,
            return_to: None,
            link_user: secrets.link_user,
        };
        let (commit, session, family_id) = self.commit(&ticket, completed, secrets.client).await?;
        let reply = CallbackReply {
            user: user_view(&commit.user),
            identity: identity_view(&commit.identity),
            new_user: commit.new_user,
            session,
            return_to: None,
        };
        Ok((reply, commit, family_id))
    }
}

/// Renews `lease` until it is lost, which is when this returns: another daemon took it, or
/// no renewal went through for two thirds of its time (it may lapse before the next, and
/// another daemon take it: two pollers must never run at once).
async fn keep_lease(store: &dyn crate::store::Store, lease: &mut Lease) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(LEASE_TTL / 3).await;
        match store.renew_lease(lease, LEASE_TTL).await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot renew a device login's lease");
                if renewed.elapsed() >= LEASE_TTL * 2 / 3 {
                    return;
                }
            }
        }
    }
}

/// This daemon's claim on polling for a login, given back when dropped (also when its task
/// panicked or was aborted).
struct Claim {
    lanyard: Arc<Lanyard>,
    key: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.lanyard.devices.release(&self.key);
    }
}

fn lease_name(key: &str) -> String {
    format!("device.{key}")
}
