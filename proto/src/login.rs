//! `login` and `callback`: starting a login and finishing it.

use serde::{Deserialize, Serialize};

use crate::sessions::Session;
use crate::users::{IdentityView, UserView};

/// `{prefix}.v1.login`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub fetch_groups: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A session token: link the identity this login yields to that session's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_session: Option<String>,
    /// Through Lanyard's hosted pages: `authorization_url` is then Lanyard's start page,
    /// the browser comes back to Lanyard, and the app learns the outcome with `login.wait`
    /// on the reply's `handle`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hosted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginReply {
    pub authorization_url: String,
    pub state: String,
    /// A secret the service keeps in the browser that started the login (an HttpOnly,
    /// Secure, SameSite=Lax cookie) and hands back with the callback.
    pub binding: String,
    pub expires_at: String,
    /// A hosted login's handle for `login.wait` (a secret: whoever holds it gets the
    /// session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
}

/// `{prefix}.v1.callback`: `state` with `code` or `error`, or the raw `query`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    /// RFC 9207 issuer identification, when the caller passes it separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The callback URL's query string exactly as the browser brought it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The provider the caller expects (e.g. from its callback path); a state issued for
    /// another provider is then `invalid_state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The redirect URI the callback arrived at; a state issued for another one (another
    /// service's login) is then `invalid_state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    /// The login's `binding`, from the browser the callback came from (its cookie). Missing or
    /// different: `invalid_state`, unless the instance sets `require_binding = false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
    /// A label for the client the user logs in with (`Firefox on Linux`, `iOS app`), at
    /// most 64 characters; `session.list` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallbackReply {
    pub user: UserView,
    pub identity: IdentityView,
    pub new_user: bool,
    pub session: Session,
    pub return_to: Option<String>,
}
