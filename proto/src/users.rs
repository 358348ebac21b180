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
    /// When an admin disabled the user (`admin.user.disable`); absent while enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<String>,
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

/// `{prefix}.v1.admin.user.list`: a page of users in id order, optionally filtered (every
/// filter given must match).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserListRequest {
    /// The previous page's `next_cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// At most this many users (1 to 500; 50 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The user with this email (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Users with an identity at this provider instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// `admin.user.list`'s reply. A page may hold fewer than `limit` users (a filter matched few
/// of those it examined) and still have a next page: the list ends when `next_cursor` is
/// `null`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserListReply {
    pub users: Vec<UserView>,
    pub next_cursor: Option<String>,
}

/// `admin.user.get`'s reply: the user, its identities and its live sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminUserReply {
    pub user: UserWithIdentities,
    pub sessions: Vec<crate::SessionView>,
}

/// `admin.user.disable` and `admin.user.enable`'s reply: the user as it is now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserReply {
    pub user: UserView,
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
