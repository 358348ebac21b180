//! Errors on the wire: the codes of the v1 contract, their statuses, and the envelope an
//! error reply's body is.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The body of every error reply: `{"error": {"code": "...", "message": "..."}}`. The reply
/// also carries the code in [`ERROR_CODE_HEADER`](crate::ERROR_CODE_HEADER) and its status
/// in [`ERROR_STATUS_HEADER`](crate::ERROR_STATUS_HEADER).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: ErrorBody,
}

/// What failed: a code for machines and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// A documented error code. The daemon puts it in the reply body and in the
/// `Nats-Service-Error` header; callers match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    PayloadTooLarge,
    UnknownProvider,
    InvalidState,
    AccessDenied,
    ProviderError,
    ProviderUnavailable,
    InvalidIdToken,
    AccountExists,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited,
    ReauthRequired,
    /// The user is disabled (`admin.user.disable`).
    UserDisabled,
    /// The login ran out of time before the user finished it (a device code expired).
    LoginExpired,
    Internal,
}

impl ErrorCode {
    /// Every code, in the order docs/protocol.md lists them.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BadRequest,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnknownProvider,
        ErrorCode::InvalidState,
        ErrorCode::AccessDenied,
        ErrorCode::ProviderError,
        ErrorCode::ProviderUnavailable,
        ErrorCode::InvalidIdToken,
        ErrorCode::AccountExists,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::Forbidden,
        ErrorCode::ReauthRequired,
        ErrorCode::Conflict,
        ErrorCode::RateLimited,
        ErrorCode::UserDisabled,
        ErrorCode::LoginExpired,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnknownProvider => "unknown_provider",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::ProviderError => "provider_error",
            ErrorCode::ProviderUnavailable => "provider_unavailable",
            ErrorCode::InvalidIdToken => "invalid_id_token",
            ErrorCode::AccountExists => "account_exists",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ReauthRequired => "reauth_required",
            ErrorCode::UserDisabled => "user_disabled",
            ErrorCode::LoginExpired => "login_expired",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP-like status put in `Nats-Service-Error-Code`, as NATS micro tools expect.
    pub const fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidState | ErrorCode::InvalidIdToken => 400,
            ErrorCode::Unauthorized | ErrorCode::ReauthRequired => 401,
            ErrorCode::AccessDenied | ErrorCode::Forbidden | ErrorCode::UserDisabled => 403,
            ErrorCode::UnknownProvider | ErrorCode::NotFound => 404,
            ErrorCode::AccountExists | ErrorCode::Conflict => 409,
            ErrorCode::LoginExpired => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::ProviderError => 502,
            ErrorCode::ProviderUnavailable => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_error_envelope_is_pinned() {
        let reply = ErrorReply {
            error: ErrorBody {
                code: ErrorCode::InvalidState,
                message: "start the login again".into(),
            },
        };
        let expected = json!({
            "error": { "code": "invalid_state", "message": "start the login again" }
        });
        // The exact bytes: the daemon wrote this envelope as a sorted JSON map before.
        assert_eq!(serde_json::to_string(&reply).unwrap(), expected.to_string());
        assert_eq!(
            serde_json::from_value::<ErrorReply>(expected).unwrap(),
            reply
        );
    }

    #[test]
    fn serde_and_as_str_agree_on_every_code() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
            assert_eq!(
                serde_json::from_value::<ErrorCode>(json!(code.as_str())).unwrap(),
                code
            );
            assert_eq!(code.to_string(), code.as_str());
        }
        let statuses: Vec<(&str, u16)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str(), c.status()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("bad_request", 400),
                ("payload_too_large", 413),
                ("unknown_provider", 404),
                ("invalid_state", 400),
                ("access_denied", 403),
                ("provider_error", 502),
                ("provider_unavailable", 503),
                ("invalid_id_token", 400),
                ("account_exists", 409),
                ("unauthorized", 401),
                ("not_found", 404),
                ("forbidden", 403),
                ("reauth_required", 401),
                ("conflict", 409),
                ("rate_limited", 429),
                ("user_disabled", 403),
                ("login_expired", 410),
                ("internal", 500),
            ]
        );
    }
}
