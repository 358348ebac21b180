//! Lanyard's sessions on the wire: the session a login or a refresh hands out, an access
//! token's claims (`session.verify`), and `session.refresh` / `session.revoke`.

use serde::{Deserialize, Serialize};

/// The session a login hands out, as it goes on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub refresh_token: String,
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    /// The session family this token belongs to.
    pub sid: String,
}

/// `{prefix}.v1.session.verify`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub token: String,
}

/// `{prefix}.v1.session.refresh` and `{prefix}.v1.session.revoke`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshTokenRequest {
    pub refresh_token: String,
}
