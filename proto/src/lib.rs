//! Lanyard's wire contract, v1: the body of every command's request and reply, the error
//! codes and their envelope, the subjects and headers, and the events. docs/protocol.md
//! describes the contract; this crate is its one definition in Rust, used by the daemon,
//! its tests and its benchmark, and meant for client libraries.
//!
//! It does no I/O and knows nothing of NATS clients: a subject is a string built here, a
//! body is a serde type. Requests refuse unknown fields (the daemon answers `bad_request`,
//! so a typo never passes silently); replies are what callers read.

#![forbid(unsafe_code)]

mod admin;
mod commands;
mod device;
mod error;
mod events;
mod login;
mod sessions;
mod tokens;
mod users;

pub use admin::{
    CircuitState, EventCounts, InstanceState, ProviderIdRequest, ProviderInstance,
    ProviderListReply, ProviderPatch, ProviderReply, ProviderStatus, ProviderView, RotateKeysReply,
    SharedChanges, StatusReply,
};
pub use commands::{
    Command, Empty, ADMIN_TOKEN_HEADER, CALLER_TOKEN_HEADER, ERROR_CODE_HEADER,
    ERROR_STATUS_HEADER, SERVICE_NAME,
};
pub use device::{DeviceStartReply, DeviceStartRequest, WaitReply, WaitRequest};
pub use error::{ErrorBody, ErrorCode, ErrorReply};
pub use events::{
    all_events_subject, event_name, event_subject, Event, EventEnvelope, RevokeReason,
};
pub use login::{CallbackReply, CallbackRequest, LoginReply, LoginRequest};
pub use sessions::{
    Claims, Jwk, Jwks, RefreshReply, RefreshTokenRequest, RevokeAllReply, RevokeRequest, Session,
    SessionListReply, SessionView, UserClaims, UserSessionsRequest, VerifyRequest,
};
pub use tokens::{TokenGetRequest, TokenReply};
pub use users::{
    AdminUserReply, IdentityView, UnlinkReply, UnlinkRequest, UserDeleteReply, UserGetReply,
    UserGetRequest, UserListReply, UserListRequest, UserReply, UserView, UserWithIdentities,
};
