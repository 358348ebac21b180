//! Lanyard's sessions on the wire: the session a login or a refresh hands out, an access
//! token's claims (`session.verify`), `session.refresh` / `session.revoke`, and the JWKS
//! that verifies access tokens (`jwks`).

use serde::{Deserialize, Serialize};

/// The session a login hands out: the callback's `session`, and `session.refresh`'s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub refresh_token: String,
}

/// `{prefix}.v1.session.refresh`'s reply: the new session under `session`, as the callback
/// nests it. The same fields also come at the top level, as they did before `session` was
/// added; they are deprecated and go in the next release that changes the contract's version
/// (docs/protocol.md, "Changes").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshReply {
    pub session: Session,
    /// The deprecated top-level copy.
    #[serde(flatten)]
    pub top_level: Session,
}

impl RefreshReply {
    /// The reply for a refreshed `session`.
    pub fn new(session: Session) -> Self {
        Self {
            top_level: session.clone(),
            session,
        }
    }
}

/// The claims of an access token (an EdDSA JWT), as `session.verify` returns them.
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
    /// What the deployment chose to carry about the user (`[sessions.claims]` or the login's
    /// instance's `claims`); each absent unless configured. As of the token's issue: a
    /// login, or the last refresh, which reads them from the store again.
    #[serde(flatten)]
    pub user: UserClaims,
}

/// The facts about the user an access token may carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The login identity's groups, filtered and capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Present (`true`) when groups were left out for the cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_truncated: Option<bool>,
    /// Roles granted by the identity's groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

/// `{prefix}.v1.session.verify`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub token: String,
}

/// `{prefix}.v1.session.refresh`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshTokenRequest {
    pub refresh_token: String,
}

/// `{prefix}.v1.session.revoke`: the session of `refresh_token` (a logout), or session
/// `session_id` of user `user_id` (another device's logout); exactly one of the two forms.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// `{prefix}.v1.session.list` and `{prefix}.v1.session.revoke_all`: a user's sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSessionsRequest {
    pub user_id: String,
}

/// One session (a family: the login and every refresh rotated from it), as
/// `session.list` shows it. Times are RFC 3339; what a session made before `session.list`
/// existed does not know is `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// The access tokens' `sid`.
    pub session_id: String,
    pub created_at: String,
    /// The last refresh, `null` before the first.
    pub refreshed_at: Option<String>,
    /// When the newest refresh token expires.
    pub expires_at: Option<String>,
    /// The provider instance the login went through.
    pub provider: Option<String>,
    /// The callback's `client` label.
    pub client: Option<String>,
}

/// `session.list`'s reply: the user's live sessions, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionListReply {
    pub sessions: Vec<SessionView>,
}

/// `session.revoke_all`'s reply: the sessions it revoked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeAllReply {
    pub revoked: Vec<String>,
}

/// `{prefix}.v1.jwks`: the keys that verify session access tokens, the current signing key
/// first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One Ed25519 public key (RFC 8037). The fields are in the order the reply has always
/// listed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EdDSA`
    pub alg: String,
    /// `Ed25519`
    pub crv: String,
    pub kid: String,
    /// `OKP`
    pub kty: String,
    /// `sig`
    #[serde(rename = "use")]
    pub use_: String,
    /// The public key, base64url.
    pub x: String,
}

impl Jwk {
    /// A session signing key's public half, as the JWKS lists it.
    pub fn ed25519(kid: impl Into<String>, public_key: impl Into<String>) -> Self {
        Self {
            alg: "EdDSA".into(),
            crv: "Ed25519".into(),
            kid: kid.into(),
            kty: "OKP".into(),
            use_: "sig".into(),
            x: public_key.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_jwks_is_pinned() {
        let jwks = Jwks {
            keys: vec![Jwk::ed25519("k1", "AAAA")],
        };
        let expected = json!({ "keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "k1", "x": "AAAA",
        }] });
        assert_eq!(serde_json::to_string(&jwks).unwrap(), expected.to_string());
    }
}
