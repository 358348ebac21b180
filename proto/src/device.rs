//! `device.start` and `device.wait`: a login through the OAuth 2.0 device authorization grant
//! (RFC 8628), for apps with no browser of their own to send back (command-line tools, TVs,
//! bots). The app shows the user a code and a URL; Lanyard polls the provider and finishes
//! the login as a callback would; the app waits for the outcome.

use serde::{Deserialize, Serialize};

use crate::login::CallbackReply;

/// `{prefix}.v1.device.start`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStartRequest {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub fetch_groups: bool,
    /// A session token: link the identity this login yields to that session's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_session: Option<String>,
    /// A label for the device (`TV in the lobby`), at most 64 characters; `session.list`
    /// shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStartReply {
    /// What the app hands to `device.wait`: a secret, since the login's session goes to
    /// whoever holds it. Never show it to the user.
    pub handle: String,
    /// The code the user types at `verification_uri`.
    pub user_code: String,
    pub verification_uri: String,
    /// The same URL with the code in it, when the provider gives one (for a QR code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
    /// Seconds between the provider polls Lanyard makes (a hint for how often to show
    /// progress; the app need not poll anything but `device.wait`).
    pub interval: u64,
    pub expires_at: String,
}

/// `{prefix}.v1.device.wait` and `{prefix}.v1.login.wait` (a hosted login's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    pub handle: String,
    /// How long to wait for the outcome before answering `pending` (default 25, at most
    /// 60); the caller's own request timeout must be longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// The answer to `device.wait` and `login.wait`: still `pending` (wait again), or `done`
/// with what a callback answers. A login that failed or expired is an error reply with its code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum WaitReply {
    Pending,
    Done(CallbackReply),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pending_wait_is_a_status_alone() {
        assert_eq!(
            serde_json::to_value(WaitReply::Pending).unwrap(),
            json!({"status": "pending"})
        );
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        assert!(
            serde_json::from_value::<WaitRequest>(json!({"handle": "h", "timeout": 5})).is_err()
        );
        let start: DeviceStartRequest =
            serde_json::from_value(json!({"provider": "github"})).unwrap();
        assert!(!start.fetch_groups && start.scopes.is_none());
    }
}
