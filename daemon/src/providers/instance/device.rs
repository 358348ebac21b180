//! The device authorization grant (RFC 8628): a device code from the provider, then polling
//! its token endpoint until the user answers, and the same ID-token and profile checks as a
//! callback (without a nonce: the flow has none).

use std::time::Duration;

use super::{Completed, DevicePoll, DeviceStarted, Instance, Resolved};
use crate::error::Error;
use crate::providers::oidc::KeySource;

impl Instance {
    /// Whether this instance lets device logins start: configured so (`device_flow`), and the
    /// provider names a device authorization endpoint (the plugin, or discovery).
    pub fn check_device(&self, resolved: &Resolved) -> Result<String, Error> {
        if !self.config.device_flow {
            return Err(Error::bad_request(format!(
                "provider `{}` does not allow device logins (set `device_flow = true` on it)",
                self.id
            )));
        }
        resolved
            .endpoints
            .device_authorization_url
            .clone()
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "provider `{}` offers no device authorization endpoint",
                    self.id
                ))
            })
    }

    /// Asks the provider for a device code and the user code to show.
    pub async fn device_authorize(
        &self,
        resolved: &Resolved,
        scopes: Option<Vec<String>>,
        fetch_groups: bool,
    ) -> Result<DeviceStarted, Error> {
        let url = self.check_device(resolved)?;
        let scopes = self.scopes(scopes, fetch_groups);
        let grant = self
            .http
            .device_authorization(&resolved.client, &url, &scopes)
            .await?;
        Ok(DeviceStarted {
            grant,
            generation: self.generation.clone(),
        })
    }

    /// Polls until the user approves or refuses at the provider, or the code expires (at
    /// `poll.expires_at`), then validates and maps what the provider answered.
    pub async fn device_complete(
        &self,
        resolved: &Resolved,
        keys: &impl KeySource,
        assertion: Option<String>,
        poll: DevicePoll,
    ) -> Result<Completed, Error> {
        let left = poll.expires_at - crate::sessions::now();
        let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
        // The client waits the interval before its first poll too: the user has only just
        // been shown the code, and another daemon taking over may have just polled.
        let client = super::tokens::token_client(resolved, assertion);
        let polled = async {
            tokio::time::sleep(poll.grant.interval().min(left)).await;
            self.http.device_token(&client, &poll.grant, left).await
        };
        let mut abandoned = poll.abandoned;
        let tokens = tokio::select! {
            tokens = polled => tokens?,
            _ = abandoned.wait_for(|a| *a) => {
                return Err(Error::unavailable("nobody waits for this device login here any more"))
            }
        };
        let claims = self.id_token_claims(resolved, keys, &tokens, None).await?;
        self.completed(
            resolved,
            tokens,
            claims,
            poll.fetch_groups,
            Default::default(),
        )
        .await
    }
}
