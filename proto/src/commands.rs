//! The commands: their subjects, the headers requests and replies carry, and the body of
//! commands that take no arguments.

use serde::{Deserialize, Serialize};

/// The service name `nats micro ls` shows (`$SRV.PING.lanyard` answers).
pub const SERVICE_NAME: &str = "lanyard";

/// The header a caller identifies itself with.
pub const CALLER_TOKEN_HEADER: &str = "Lanyard-Caller-Token";

/// The header an admin request carries its token in.
pub const ADMIN_TOKEN_HEADER: &str = "Lanyard-Admin-Token";

/// The header of an error reply that holds its code (`invalid_state`), as NATS micro
/// tools read it.
pub const ERROR_CODE_HEADER: &str = "Nats-Service-Error";

/// The header of an error reply that holds its HTTP-like status (`400`).
pub const ERROR_STATUS_HEADER: &str = "Nats-Service-Error-Code";

/// The commands of the v1 contract served so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Login,
    Callback,
    Jwks,
    SessionVerify,
    SessionRefresh,
    SessionRevoke,
    SessionList,
    SessionRevokeAll,
    UserGet,
    TokenGet,
    IdentityUnlink,
    DeviceStart,
    DeviceWait,
    LoginWait,
    AdminKeysRotate,
    ProviderCreate,
    ProviderUpdate,
    ProviderPatch,
    ProviderDelete,
    ProviderGet,
    ProviderList,
    AdminStatus,
    UserList,
    AdminUserGet,
    UserDisable,
    UserEnable,
    UserDelete,
}

impl Command {
    /// The commands services call.
    pub const SERVICE: [Command; 14] = [
        Command::Login,
        Command::Callback,
        Command::Jwks,
        Command::SessionVerify,
        Command::SessionRefresh,
        Command::SessionRevoke,
        Command::SessionList,
        Command::SessionRevokeAll,
        Command::UserGet,
        Command::TokenGet,
        Command::IdentityUnlink,
        Command::DeviceStart,
        Command::DeviceWait,
        Command::LoginWait,
    ];

    /// The commands operators call, under `{prefix}.v1.admin.` so NATS permissions can
    /// fence them off from services.
    pub const ADMIN: [Command; 13] = [
        Command::AdminKeysRotate,
        Command::ProviderCreate,
        Command::ProviderUpdate,
        Command::ProviderPatch,
        Command::ProviderDelete,
        Command::ProviderGet,
        Command::ProviderList,
        Command::AdminStatus,
        Command::UserList,
        Command::AdminUserGet,
        Command::UserDisable,
        Command::UserEnable,
        Command::UserDelete,
    ];

    /// Whether this is an admin command (which needs the admin token, when one is set).
    pub fn is_admin(self) -> bool {
        Self::ADMIN.contains(&self)
    }

    /// The subject suffix after the command's [group](Self::group): `login`,
    /// `provider.create`.
    pub const fn name(self) -> &'static str {
        match self {
            Command::Login => "login",
            Command::Callback => "callback",
            Command::Jwks => "jwks",
            Command::SessionVerify => "session.verify",
            Command::SessionRefresh => "session.refresh",
            Command::SessionRevoke => "session.revoke",
            Command::SessionList => "session.list",
            Command::SessionRevokeAll => "session.revoke_all",
            Command::UserGet => "user.get",
            Command::TokenGet => "token.get",
            Command::IdentityUnlink => "identity.unlink",
            Command::DeviceStart => "device.start",
            Command::DeviceWait => "device.wait",
            Command::LoginWait => "login.wait",
            Command::AdminKeysRotate => "keys.rotate",
            Command::ProviderCreate => "provider.create",
            Command::ProviderUpdate => "provider.update",
            Command::ProviderPatch => "provider.patch",
            Command::ProviderDelete => "provider.delete",
            Command::ProviderGet => "provider.get",
            Command::ProviderList => "provider.list",
            Command::AdminStatus => "status",
            Command::UserList => "user.list",
            Command::AdminUserGet => "user.get",
            Command::UserDisable => "user.disable",
            Command::UserEnable => "user.enable",
            Command::UserDelete => "user.delete",
        }
    }

    /// The subject's first part under the configured prefix (`nats.subject_prefix`):
    /// `{prefix}.v1` for services' commands, `{prefix}.v1.admin` for operators'.
    pub fn group(self, prefix: &str) -> String {
        if self.is_admin() {
            format!("{prefix}.v1.admin")
        } else {
            format!("{prefix}.v1")
        }
    }

    /// The whole subject: `{prefix}.v1.login`, `{prefix}.v1.admin.provider.create`.
    pub fn subject(self, prefix: &str) -> String {
        format!("{}.{}", self.group(prefix), self.name())
    }
}

/// The body of commands without arguments (`jwks`, `admin.provider.list`,
/// `admin.keys.rotate`, `admin.status`: `{}`, or an empty body), and the reply of those
/// that report nothing (`session.revoke`, `admin.provider.delete`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_put_admin_commands_under_admin() {
        assert_eq!(Command::Login.subject("lanyard"), "lanyard.v1.login");
        assert_eq!(
            Command::SessionRefresh.subject("acme"),
            "acme.v1.session.refresh"
        );
        assert_eq!(
            Command::ProviderCreate.subject("lanyard"),
            "lanyard.v1.admin.provider.create"
        );
        assert_eq!(
            Command::AdminStatus.subject("lanyard"),
            "lanyard.v1.admin.status"
        );
        assert_eq!(
            Command::AdminKeysRotate.subject("lanyard"),
            "lanyard.v1.admin.keys.rotate"
        );
        assert!(Command::SERVICE.iter().all(|c| !c.is_admin()));
        assert!(Command::ADMIN.iter().all(|c| c.is_admin()));
    }

    #[test]
    fn empty_is_an_empty_object_and_refuses_fields() {
        assert_eq!(serde_json::to_string(&Empty {}).unwrap(), "{}");
        assert!(serde_json::from_str::<Empty>("{}").is_ok());
        assert!(serde_json::from_str::<Empty>(r#"{"x":1}"#).is_err());
    }
}
