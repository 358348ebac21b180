//! `login` and `callback`: starting a login and finishing it.

use serde::{Deserialize, Serialize};

use crate::sessions::Session;
use crate::users::{IdentityView, UserView};

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
