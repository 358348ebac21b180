//! The error codes of the v1 contract, as replies and the `Nats-Service-Error` header carry
//! them.

use std::fmt;

use serde::Serialize;

/// A documented error code. The edge puts it in the reply body and in the
/// `Nats-Service-Error` header; callers match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
    Internal,
}

impl ErrorCode {
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
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP-like status put in `Nats-Service-Error-Code`, as NATS micro tools expect.
    pub const fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidState | ErrorCode::InvalidIdToken => 400,
            ErrorCode::Unauthorized | ErrorCode::ReauthRequired => 401,
            ErrorCode::AccessDenied | ErrorCode::Forbidden => 403,
            ErrorCode::UnknownProvider | ErrorCode::NotFound => 404,
            ErrorCode::AccountExists | ErrorCode::Conflict => 409,
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
