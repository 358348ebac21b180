//! The error type every command returns (its code is the contract's `ErrorCode`).

// Re-exported so the daemon names a command's error and its code from one place.
pub use lanyard_proto::ErrorCode;

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
            crate::store::StoreError::Disabled => Error::new(
                ErrorCode::UserDisabled,
                "this account is disabled; ask the service's operators",
            ),
            other => {
                tracing::error!(error = %other, "store failure");
                // A JetStream write that timed out may still have been applied: do not promise
                // that it was not.
                Error::internal("the store failed; the request may not have been applied")
            }
        }
    }
}
