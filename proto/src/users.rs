//! Users and identities as callers see them: `user.get` and `identity.unlink`.

use serde::{Deserialize, Serialize};

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

/// An identity as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    pub provider: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub groups: Vec<String>,
}

/// `{prefix}.v1.user.get`
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// `{prefix}.v1.identity.unlink`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlinkRequest {
    pub user_id: String,
    pub provider: String,
}

/// `admin.user.delete`'s reply: the user is erased (the request is a [`UserGetRequest`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDeleteReply {
    pub user_id: String,
    /// How many identities went with it.
    pub identities: u64,
    /// How many of their provider tokens were revoked at the provider.
    pub provider_tokens_revoked: u64,
    /// How many live sessions ended.
    pub sessions_revoked: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnlinkReply {
    pub identity: IdentityView,
    /// Whether the provider's tokens were revoked at the provider.
    pub tokens_revoked: bool,
}
