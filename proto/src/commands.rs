//! The commands: their subjects, the headers requests carry, and the body of commands that
//! take no arguments.

use serde::Deserialize;

/// The service name `nats micro ls` shows.
pub const SERVICE_NAME: &str = "lanyard";

/// The header a caller identifies itself with.
pub const CALLER_TOKEN_HEADER: &str = "Lanyard-Caller-Token";

/// The header an admin request carries its token in.
pub const ADMIN_TOKEN_HEADER: &str = "Lanyard-Admin-Token";

/// The commands of the v1 contract served so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Login,
    Callback,
    Jwks,
    SessionVerify,
    SessionRefresh,
    SessionRevoke,
    UserGet,
    TokenGet,
    IdentityUnlink,
    AdminKeysRotate,
    ProviderCreate,
    ProviderUpdate,
    ProviderPatch,
    ProviderDelete,
    ProviderGet,
    ProviderList,
    AdminStatus,
}

impl Command {
    /// The commands services call.
    pub const SERVICE: [Command; 9] = [
        Command::Login,
        Command::Callback,
        Command::Jwks,
        Command::SessionVerify,
        Command::SessionRefresh,
        Command::SessionRevoke,
        Command::UserGet,
        Command::TokenGet,
        Command::IdentityUnlink,
    ];

    /// The commands operators call, under `{prefix}.v1.admin.` so NATS permissions can
    /// fence them off from services.
    pub const ADMIN: [Command; 8] = [
        Command::AdminKeysRotate,
        Command::ProviderCreate,
        Command::ProviderUpdate,
        Command::ProviderPatch,
        Command::ProviderDelete,
        Command::ProviderGet,
        Command::ProviderList,
        Command::AdminStatus,
    ];

    pub fn is_admin(self) -> bool {
        Self::ADMIN.contains(&self)
    }

    /// The subject suffix after `{prefix}.v1.` (or `{prefix}.v1.admin.`).
    pub const fn name(self) -> &'static str {
        match self {
            Command::Login => "login",
            Command::Callback => "callback",
            Command::Jwks => "jwks",
            Command::SessionVerify => "session.verify",
            Command::SessionRefresh => "session.refresh",
            Command::SessionRevoke => "session.revoke",
            Command::UserGet => "user.get",
            Command::TokenGet => "token.get",
            Command::IdentityUnlink => "identity.unlink",
            Command::AdminKeysRotate => "keys.rotate",
            Command::ProviderCreate => "provider.create",
            Command::ProviderUpdate => "provider.update",
            Command::ProviderPatch => "provider.patch",
            Command::ProviderDelete => "provider.delete",
            Command::ProviderGet => "provider.get",
            Command::ProviderList => "provider.list",
            Command::AdminStatus => "status",
        }
    }
}

/// `{prefix}.v1.jwks` takes an empty object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}
