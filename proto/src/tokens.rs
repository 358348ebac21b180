//! `token.get`: a user's access token at a provider.

use serde::{Deserialize, Serialize};

/// `{prefix}.v1.token.get`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenGetRequest {
    pub user_id: String,
    pub provider: String,
}

/// A working provider access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenReply {
    pub access_token: String,
    pub expires_at: Option<String>,
    pub scopes: Vec<String>,
}
