//! The JSON bodies of the v1 commands live in `lanyard-proto`; this module re-exports them
//! and turns store records into the views replies show.

pub use lanyard_proto::{
    CallbackReply, CallbackRequest, EmptyRequest, IdentityView, LoginReply, LoginRequest,
    RefreshTokenRequest, RotateKeysReply, UnlinkReply, UnlinkRequest, UserGetReply, UserGetRequest,
    UserView, UserWithIdentities, VerifyRequest,
};

use crate::session::rfc3339;
use crate::store::{IdentityRecord, UserRecord};

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
