//! Logins an app waits for by a handle, rather than receiving the browser itself: device
//! logins (`device.rs`) and logins through Lanyard's hosted pages (`hosted.rs`). Both are
//! stored under the SHA-256 of their handle ([`WaitedLogin`]) with what only the daemon may
//! read sealed, and end with an outcome written once; `device.wait` and `login.wait` follow
//! the stored login (the store's watch, and a read every few seconds) until it has one, on
//! any daemon.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lanyard_proto::{CallbackReply, WaitReply, WaitRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crypto::Sealed;
use crate::error::{Error, ErrorCode};
use crate::service::{check_len, Lanyard};
use crate::sessions::now;
use crate::store::{hex_sha256, LoginOutcome, WaitedKind};

/// A wait reads the login again this often, besides when the store says it changed.
const RECHECK: Duration = Duration::from_secs(2);

/// The default and longest waits.
const DEFAULT_WAIT_SECS: u64 = 25;
const MAX_WAIT_SECS: u64 = 60;

/// How long after its expiry a device login nobody ended is answered `login_expired` (its
/// poller ends it itself, at expiry, unless no daemon polls for it).
const EXPIRY_GRACE_SECS: i64 = 30;

/// The store key of the login with `handle`.
pub(super) fn waited_key(handle: &str) -> String {
    hex_sha256(handle.as_bytes())
}

/// The slot a login's secrets are sealed for.
pub(super) fn secrets_slot(key: &str) -> String {
    format!("waited/{key}")
}

/// The slot a login's reply is sealed for.
fn reply_slot(key: &str) -> String {
    format!("waited/{key}/reply")
}

pub(super) fn expired() -> Error {
    Error::new(
        ErrorCode::LoginExpired,
        "the login ran out of time before the user finished it",
    )
}

impl Lanyard {
    /// `device.wait` and `login.wait`: the outcome of the `kind` login with the request's
    /// handle once it has one, or `pending` when `timeout_secs` passed first.
    pub(super) async fn wait_for(
        self: &Arc<Self>,
        kind: WaitedKind,
        request: WaitRequest,
    ) -> Result<WaitReply, Error> {
        check_len("handle", Some(&request.handle))?;
        let wait = request
            .timeout_secs
            .unwrap_or(DEFAULT_WAIT_SECS)
            .min(MAX_WAIT_SECS);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let key = waited_key(&request.handle);
        let read = || async {
            self.store
                .waited_login(&key)
                .await?
                .filter(|record| record.kind == kind && record.forget_after() >= now())
                .ok_or_else(|| Error::new(ErrorCode::NotFound, "no login has this handle"))
        };
        // A handle nobody holds costs one read, no watch.
        read().await?;
        // Before the next read, so no change falls between the two.
        let mut changes = self.store.watch_waited_login(&key).await?;
        let mut stopping = self.devices.stopping();
        loop {
            let record = read().await?;
            let grace = match kind {
                WaitedKind::Device => EXPIRY_GRACE_SECS,
                WaitedKind::Hosted => 0,
            };
            match record.outcome {
                Some(LoginOutcome::Done { reply, .. }) => {
                    let reply: CallbackReply = self.open_json(&reply, &reply_slot(&key))?;
                    return Ok(WaitReply::Done(reply));
                }
                Some(LoginOutcome::Failed { code, message, .. }) => {
                    return Err(Error::new(code, message))
                }
                None if record.expires_at + grace < now() => return Err(expired()),
                None if kind == WaitedKind::Device => self.poll_device(key.clone()).await,
                None => {}
            }
            tokio::select! {
                change = changes.next() => {
                    if change.is_none() {
                        // The watch ended (the store's connection went): reads alone now.
                        changes = futures::stream::pending().boxed();
                    }
                }
                () = tokio::time::sleep(RECHECK) => {}
                () = tokio::time::sleep_until(deadline) => return Ok(WaitReply::Pending),
                // The daemon is stopping: the app asks again, of another daemon.
                _ = stopping.wait_for(|stopped| *stopped) => return Ok(WaitReply::Pending),
            }
        }
    }

    /// Records how the login under `key` ended (`result`: the reply, or the error), once;
    /// false when it had ended already.
    pub(super) async fn end_waited(
        &self,
        key: &str,
        result: &Result<CallbackReply, Error>,
    ) -> Result<bool, Error> {
        let outcome = match result {
            Ok(reply) => LoginOutcome::Done {
                reply: self.seal_json(reply, &reply_slot(key))?,
                at: now(),
            },
            Err(error) => LoginOutcome::Failed {
                code: error.code,
                message: error.message.clone(),
                at: now(),
            },
        };
        Ok(self.store.end_waited_login(key, &outcome).await?)
    }

    pub(super) fn seal_json<T: Serialize>(&self, value: &T, slot: &str) -> Result<Sealed, Error> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::internal(format!("cannot encode a login: {e}")))?;
        self.logins
            .vault
            .seal(&bytes, slot)
            .map_err(|e| Error::internal(format!("cannot seal a login: {e}")))
    }

    pub(super) fn open_json<T: DeserializeOwned>(
        &self,
        sealed: &Sealed,
        slot: &str,
    ) -> Result<T, Error> {
        let bytes = self
            .logins
            .vault
            .open(sealed, slot)
            .map_err(|e| Error::internal(format!("cannot open a login: {e}")))?;
        serde_json::from_slice(secrecy::ExposeSecret::expose_secret(&bytes))
            .map_err(|e| Error::internal(format!("cannot read a login: {e}")))
    }
}

/// A waited-for login's handle: 32 random bytes, base64url.
pub(super) fn random_handle() -> Result<String, Error> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Error::internal("the system random source failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}
