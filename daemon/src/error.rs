//! The wire error codes of the v1 contract and the error type every command returns.

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

/// A command's failure: a code for machines and a message for people. The message must help
/// the caller and must never carry a secret or say which ID-token check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn invalid_state() -> Self {
        Self::new(
            ErrorCode::InvalidState,
            "the login state is unknown, expired or already used; start the login again",
        )
    }

    pub fn invalid_id_token() -> Self {
        Self::new(
            ErrorCode::InvalidIdToken,
            "the identity provider's ID token did not pass validation",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ProviderUnavailable, message)
    }

    pub fn provider(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ProviderError, message)
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(error: crate::store::StoreError) -> Self {
        match error {
            crate::store::StoreError::AccountExists => Error::new(
                ErrorCode::AccountExists,
                "an account with this email already exists; sign in with the provider linked \
                 to it, then link this one",
            ),
            crate::store::StoreError::Conflict(message) => Error::new(ErrorCode::Conflict, message),
            crate::store::StoreError::NotFound(message) => Error::new(ErrorCode::NotFound, message),
            other => {
                tracing::error!(error = %other, "store failure");
                // A JetStream write that timed out may still have been applied: do not promise
                // that it was not.
                Error::internal("the store failed; the request may not have been applied")
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
