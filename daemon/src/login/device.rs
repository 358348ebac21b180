//! Device-flow logins (RFC 8628): `device.start` asks the provider for a device code and
//! stores the login; a poller polls the provider (inside its actor, bounded in number and by
//! the code's expiry) and ends the login exactly as a callback would (ID token, linking
//! rules, session, events); `device.wait` follows the stored login until it ends.
//!
//! Daemons share device logins through the store. One poller runs per login, on the daemon
//! holding the store's lease on it; a wait on any daemon follows the record (its watch, and a
//! read every few seconds), and takes the polling over when nobody holds the lease (the
//! daemon that polled stopped), so a login survives the daemon that started it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lanyard_proto::{
    CallbackReply, DeviceStartReply, DeviceStartRequest, DeviceWaitReply, DeviceWaitRequest, Event,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::input::check_client_label;
use crate::error::{Error, ErrorCode};
use crate::locks::lock;
use crate::login_state::fingerprint;
use crate::providers::{DevicePoll, Ticket};
use crate::service::{check_len, identity_view, user_view, Lanyard};
use crate::sessions::{now, rfc3339};
use crate::store::{hex_sha256, DeviceLoginRecord, DeviceOutcome, Lease, DEVICE_LOGIN_MAX_SECS};

/// How long a device login's poller holds its lease without renewing it; it renews every
/// third of that. A daemon that stops polling hands over within this.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// A wait reads the login again this often, besides when the store says it changed.
const RECHECK: Duration = Duration::from_secs(2);

/// `device.wait`'s default and longest waits.
const DEFAULT_WAIT_SECS: u64 = 25;
const MAX_WAIT_SECS: u64 = 60;

/// How long after its expiry a login nobody ended is answered `login_expired` (its poller
/// ends it itself, at expiry, unless no daemon polls for it).
const EXPIRY_GRACE_SECS: i64 = 30;

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
            .min(DEVICE_LOGIN_MAX_SECS as u64);
        let expires_at = now() + lifetime as i64;
        let handle = random_handle()?;
        let key = hex_sha256(handle.as_bytes());
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
        let record = DeviceLoginRecord {
            provider: request.provider,
            generation: started.generation,
            sealed: self.seal_json(&secrets, &format!("device/{key}"))?,
            expires_at,
            fetch_groups: request.fetch_groups,
            outcome: None,
        };
        self.store.put_device_login(&key, &record).await?;
        self.poll_device(key, record).await;
        Ok(reply)
    }

    /// `device.wait`: the login's outcome once it has one, or `pending` when `timeout_secs`
    /// passed first.
    pub async fn device_wait(
        self: &Arc<Self>,
        request: DeviceWaitRequest,
    ) -> Result<DeviceWaitReply, Error> {
        check_len("handle", Some(&request.handle))?;
        let wait = request
            .timeout_secs
            .unwrap_or(DEFAULT_WAIT_SECS)
            .min(MAX_WAIT_SECS);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let key = hex_sha256(request.handle.as_bytes());
        // Before the first read, so no change falls between the two.
        let mut changes = self.store.watch_device_login(&key).await?;
        loop {
            let record = self
                .store
                .device_login(&key)
                .await?
                .filter(|record| record.forget_after() >= now())
                .ok_or_else(|| {
                    Error::new(ErrorCode::NotFound, "no device login has this handle")
                })?;
            match record.outcome {
                Some(DeviceOutcome::Done { reply, .. }) => {
                    let reply: CallbackReply = self.open_json(&reply, &reply_slot(&key))?;
                    return Ok(DeviceWaitReply::Done(reply));
                }
                Some(DeviceOutcome::Failed { code, message, .. }) => {
                    return Err(Error::new(code, message))
                }
                None if record.expires_at + EXPIRY_GRACE_SECS < now() => {
                    return Err(expired());
                }
                None => self.poll_device(key.clone(), record).await,
            }
            tokio::select! {
                change = changes.next() => {
                    if change.is_none() {
                        // The watch ended (the store's connection went): reads alone now.
                        changes = futures::stream::pending().boxed();
                    }
                }
                () = tokio::time::sleep(RECHECK) => {}
                () = tokio::time::sleep_until(deadline) => return Ok(DeviceWaitReply::Pending),
            }
        }
    }

    /// Starts polling for the login under `key` on this daemon, unless a poller runs here
    /// already or another daemon holds the login's lease.
    async fn poll_device(self: &Arc<Self>, key: String, record: DeviceLoginRecord) {
        if !self.devices.claim(&key) {
            return;
        }
        let lease = match self.store.try_lease(&lease_name(&key), LEASE_TTL).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return self.devices.release(&key),
            Err(error) => {
                tracing::warn!(%error, "cannot take a device login's lease");
                return self.devices.release(&key);
            }
        };
        let lanyard = self.clone();
        let mut stop = self.devices.stop.subscribe();
        let mut polling = lock(&self.devices.polling);
        polling.tasks.spawn(async move {
            let mut lease = lease;
            tokio::select! {
                () = lanyard.run_device_login(&key, record) => {}
                () = keep_lease(lanyard.store.as_ref(), &mut lease) => {
                    tracing::warn!("lost a device login's lease; another daemon polls for it");
                }
                _ = stop.wait_for(|stopped| *stopped) => {}
            }
            let _ = lanyard.store.release_lease(lease).await;
            lanyard.devices.release(&key);
        });
    }

    /// Polls for one device login until it ends, and records how.
    async fn run_device_login(&self, key: &str, record: DeviceLoginRecord) {
        let provider = record.provider.clone();
        let outcome = match self.finish_device_login(key, &record).await {
            Ok((reply, commit, family_id)) => match self.seal_json(&reply, &reply_slot(key)) {
                Ok(sealed) => Ok((
                    DeviceOutcome::Done {
                        reply: sealed,
                        at: now(),
                    },
                    commit,
                    family_id,
                )),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        let (outcome, events) = match outcome {
            Ok((outcome, commit, family_id)) => (outcome, Some((commit, family_id))),
            Err(error) => (
                DeviceOutcome::Failed {
                    code: error.code,
                    message: error.message.clone(),
                    at: now(),
                },
                None,
            ),
        };
        match self.store.end_device_login(key, &outcome).await {
            Ok(true) => match (events, &outcome) {
                (Some((commit, family_id)), _) => {
                    self.emit_login_events(&provider, &commit, family_id)
                }
                (None, DeviceOutcome::Failed { code, .. }) => {
                    self.events.emit(Event::LoginFailed {
                        code: *code,
                        provider: Some(provider),
                    })
                }
                (None, DeviceOutcome::Done { .. }) => {}
            },
            Ok(false) => tracing::warn!("a device login had ended already"),
            Err(error) => tracing::error!(%error, "cannot record how a device login ended"),
        }
    }

    /// The provider's answer, then the same commit as a callback's.
    async fn finish_device_login(
        &self,
        key: &str,
        record: &DeviceLoginRecord,
    ) -> Result<(CallbackReply, crate::store::LoginCommit, String), Error> {
        let secrets: DeviceSecrets = self.open_json(&record.sealed, &format!("device/{key}"))?;
        let generation = fingerprint(&record.generation);
        // Dropped with this future (the daemon stopping, the lease lost): polling stops.
        let (_polling, abandoned) = tokio::sync::oneshot::channel();
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

    fn seal_json<T: Serialize>(
        &self,
        value: &T,
        slot: &str,
    ) -> Result<crate::crypto::Sealed, Error> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::internal(format!("cannot encode a device login: {e}")))?;
        self.logins
            .vault
            .seal(&bytes, slot)
            .map_err(|e| Error::internal(format!("cannot seal a device login: {e}")))
    }

    fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        sealed: &crate::crypto::Sealed,
        slot: &str,
    ) -> Result<T, Error> {
        let bytes = self
            .logins
            .vault
            .open(sealed, slot)
            .map_err(|e| Error::internal(format!("cannot open a device login: {e}")))?;
        serde_json::from_slice(secrecy::ExposeSecret::expose_secret(&bytes))
            .map_err(|e| Error::internal(format!("cannot read a device login: {e}")))
    }
}

/// Renews `lease` until it is lost (another daemon took it), which is when this returns.
async fn keep_lease(store: &dyn crate::store::Store, lease: &mut Lease) {
    loop {
        tokio::time::sleep(LEASE_TTL / 3).await;
        match store.renew_lease(lease, LEASE_TTL).await {
            Ok(true) => {}
            Ok(false) => return,
            // A store that cannot be reached for a while: keep polling, try again.
            Err(error) => tracing::warn!(%error, "cannot renew a device login's lease"),
        }
    }
}

fn lease_name(key: &str) -> String {
    format!("device.{key}")
}

fn reply_slot(key: &str) -> String {
    format!("device/{key}/reply")
}

fn expired() -> Error {
    Error::new(
        ErrorCode::LoginExpired,
        "the device code expired before the user finished the login",
    )
}

/// A device login's handle: 32 random bytes, base64url.
fn random_handle() -> Result<String, Error> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Error::internal("the system random source failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}
