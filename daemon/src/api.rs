//! The JSON bodies of the v1 commands. Requests reject unknown fields so typos surface as
//! `bad_request`; replies are what callers read.

use serde::{Deserialize, Serialize};

use crate::session::{rfc3339, Session};
use crate::store::{IdentityRecord, UserRecord};

/// `{prefix}.v1.login`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub provider: String,
    #[serde(default)]
    pub redirect_uri: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub fetch_groups: bool,
    #[serde(default)]
    pub return_to: Option<String>,
    #[serde(default)]
    pub login_hint: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    /// A session token: link the identity this login yields to that session's user.
    #[serde(default)]
    pub link_session: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginReply {
    pub authorization_url: String,
    pub state: String,
    pub expires_at: String,
}

/// `{prefix}.v1.callback`: `state` with `code` or `error`, or the raw `query`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackRequest {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_description: Option<String>,
    /// RFC 9207 issuer identification, when the caller passes it separately.
    #[serde(default)]
    pub iss: Option<String>,
    /// The callback URL's query string exactly as the browser brought it back.
    #[serde(default)]
    pub query: Option<String>,
    /// The provider the caller expects (e.g. from its callback path); a state issued for
    /// another provider is then `invalid_state`.
    #[serde(default)]
    pub provider: Option<String>,
    /// The redirect URI the callback arrived at; a state issued for another one (another
    /// service's login) is then `invalid_state`.
    #[serde(default)]
    pub redirect_uri: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallbackReply {
    pub user: UserView,
    pub identity: IdentityView,
    pub new_user: bool,
    pub session: Session,
    pub return_to: Option<String>,
}

/// `{prefix}.v1.jwks` takes an empty object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

/// A user as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub picture: Option<String>,
    pub created_at: String,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        Self {
            id: u.id.clone(),
            username: u.username.clone(),
            email: u.email.clone(),
            email_verified: u.email_verified,
            name: u.name.clone(),
            picture: u.picture.clone(),
            created_at: rfc3339(u.created_at),
        }
    }
}

/// An identity as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    pub provider: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub groups: Vec<String>,
}

impl From<&IdentityRecord> for IdentityView {
    fn from(i: &IdentityRecord) -> Self {
        Self {
            provider: i.provider.clone(),
            subject: i.subject.clone(),
            email: i.email.clone(),
            email_verified: i.email_verified,
            groups: i.groups.clone(),
        }
    }
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

/// `{prefix}.v1.user.get`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserGetRequest {
    pub user_id: String,
}

/// A user with its identities, as `user.get` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserWithIdentities {
    #[serde(flatten)]
    pub user: UserView,
    pub identities: Vec<IdentityView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserGetReply {
    pub user: UserWithIdentities,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateKeysReply {
    pub kid: String,
}

/// `{prefix}.v1.identity.unlink`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlinkRequest {
    pub user_id: String,
    pub provider: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnlinkReply {
    pub identity: IdentityView,
    /// Whether the provider's tokens were revoked at the provider.
    pub tokens_revoked: bool,
}
