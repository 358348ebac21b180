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

    /// What the command does, in one line (`nats micro info` shows it).
    pub const fn description(self) -> &'static str {
        match self {
            Command::Login => "Start a login: the provider's authorization URL and the state",
            Command::Callback => "Finish a login with the provider's redirect: user and session",
            Command::Jwks => "The public keys that verify session access tokens",
            Command::SessionVerify => "Check a session access token: its claims",
            Command::SessionRefresh => "Exchange a refresh token for a new session",
            Command::SessionRevoke => "End a session (logout), by token or by id",
            Command::SessionList => "A user's sessions, one per device",
            Command::SessionRevokeAll => "End every session of a user (logout everywhere)",
            Command::UserGet => "A user with their linked identities",
            Command::TokenGet => "A working provider access token for a user (named callers)",
            Command::IdentityUnlink => "Unlink one of a user's identities",
            Command::DeviceStart => "Start a device login (RFC 8628): a code to show the user",
            Command::DeviceWait => "Wait for a device login's outcome",
            Command::LoginWait => "Wait for a hosted login's outcome",
            Command::AdminKeysRotate => "Rotate the session signing key",
            Command::ProviderCreate => "Create a provider instance at runtime",
            Command::ProviderUpdate => "Replace a runtime provider instance",
            Command::ProviderPatch => "Change some keys of a runtime provider instance",
            Command::ProviderDelete => "Delete a runtime provider instance",
            Command::ProviderGet => "One provider instance, secrets masked",
            Command::ProviderList => "Every provider instance, secrets masked",
            Command::AdminStatus => "The daemon's health: providers, events, limits",
            Command::UserList => "A page of users, filtered",
            Command::AdminUserGet => "A user with identities and admin fields",
            Command::UserDisable => "Disable a user: no logins, sessions refused",
            Command::UserEnable => "Enable a disabled user",
            Command::UserDelete => "Erase a user and everything of theirs",
        }
    }

    /// The names of the request and reply types in this crate (the schemas of the body a
    /// command takes and answers); `Empty` for none.
    pub const fn schemas(self) -> (&'static str, &'static str) {
        match self {
            Command::Login => ("LoginRequest", "LoginReply"),
            Command::Callback => ("CallbackRequest", "CallbackReply"),
            Command::Jwks => ("Empty", "Jwks"),
            Command::SessionVerify => ("VerifyRequest", "Claims"),
            Command::SessionRefresh => ("RefreshTokenRequest", "RefreshReply"),
            Command::SessionRevoke => ("RevokeRequest", "Empty"),
            Command::SessionList => ("UserSessionsRequest", "SessionListReply"),
            Command::SessionRevokeAll => ("UserSessionsRequest", "RevokeAllReply"),
            Command::UserGet => ("UserGetRequest", "UserGetReply"),
            Command::TokenGet => ("TokenGetRequest", "TokenReply"),
            Command::IdentityUnlink => ("UnlinkRequest", "UnlinkReply"),
            Command::DeviceStart => ("DeviceStartRequest", "DeviceStartReply"),
            Command::DeviceWait | Command::LoginWait => ("WaitRequest", "WaitReply"),
            Command::AdminKeysRotate => ("Empty", "RotateKeysReply"),
            Command::ProviderCreate | Command::ProviderUpdate => {
                ("ProviderInstance", "ProviderReply")
            }
            Command::ProviderPatch => ("ProviderPatch", "ProviderReply"),
            Command::ProviderDelete => ("ProviderIdRequest", "Empty"),
            Command::ProviderGet => ("ProviderIdRequest", "ProviderReply"),
            Command::ProviderList => ("Empty", "ProviderListReply"),
            Command::AdminStatus => ("Empty", "StatusReply"),
            Command::UserList => ("UserListRequest", "UserListReply"),
            Command::AdminUserGet => ("UserGetRequest", "AdminUserReply"),
            Command::UserDisable | Command::UserEnable => ("UserGetRequest", "UserReply"),
            Command::UserDelete => ("UserGetRequest", "UserDeleteReply"),
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
    fn every_command_names_schemas_this_crate_exports() {
        let exported = include_str!("lib.rs");
        // A whole word in the crate root's `pub use` lines.
        let is_exported = |name: &str| {
            exported
                .lines()
                .filter(|l| l.contains("pub use") || l.starts_with("    "))
                .any(|line| {
                    line.split(|c: char| !c.is_alphanumeric() && c != '_')
                        .any(|word| word == name)
                })
        };
        for command in Command::SERVICE.into_iter().chain(Command::ADMIN) {
            assert!(!command.description().is_empty());
            let (request, reply) = command.schemas();
            for name in [request, reply] {
                assert!(is_exported(name), "{name} of {command:?} is not exported");
            }
        }
    }

    #[test]
    fn empty_is_an_empty_object_and_refuses_fields() {
        assert_eq!(serde_json::to_string(&Empty {}).unwrap(), "{}");
        assert!(serde_json::from_str::<Empty>("{}").is_ok());
        assert!(serde_json::from_str::<Empty>(r#"{"x":1}"#).is_err());
    }
}
