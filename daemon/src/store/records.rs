//! The store's records: what each kind of key holds, and the values its methods take and
//! give. Every backend stores them as JSON (`policy::encode`); fields added since the first
//! release default when absent, so records an older version wrote still read.

use lanyard_provider_sdk::Profile;
use serde::{Deserialize, Serialize};

/// A login the previous version started, kept in the store until its callback or its expiry
/// (this version's logins carry their state in `state` itself: `login_state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    pub provider: String,
    /// The provider instance's generation when the login started.
    #[serde(default)]
    pub generation: String,
    pub redirect_uri: String,
    pub pkce_verifier: Option<String>,
    pub nonce: Option<String>,
    pub scopes: Vec<String>,
    pub fetch_groups: bool,
    pub return_to: Option<String>,
    /// Link the new identity to this user (a `link_session` login).
    pub link_user: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    /// The hex SHA-256 of the login's browser binding, for one this version started with
    /// `stored_login_states` (the previous version ignores the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_hash: Option<String>,
}

/// A Lanyard user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub picture: Option<String>,
    pub created_at: i64,
    /// Set by `admin.user.disable` (and first thing by an erasure): the user's logins are
    /// refused and its sessions neither verify nor refresh until `admin.user.enable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<i64>,
}

/// An identity at one provider instance, linked to one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub provider: String,
    pub subject: String,
    pub user_id: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub groups: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One refresh token of a session, stored under the token's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub user_id: String,
    /// All refresh tokens rotated from one login share a family.
    pub family_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// Set when the token was exchanged for a new one; a second use is a replay (or, within
    /// `refresh_reuse_grace_secs`, the same exchange again).
    #[serde(default)]
    pub used_at: Option<i64>,
    /// The hash of the token it was exchanged for: what a use within the grace answers
    /// again, and the next link of the family's chain (an erasure walks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
}

/// A session family: the login and every refresh token rotated from it. The fields after
/// `revoked_at` came with `session.list`; a family the previous version made lacks them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyRecord {
    pub user_id: String,
    pub created_at: i64,
    /// Set by logout, or when a used refresh token comes back (a stolen token).
    pub revoked_at: Option<i64>,
    /// The provider instance the login went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The identity's subject there: whose groups the session's tokens carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The label the service gave the login's client (`callback`'s `client`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// When its newest refresh token was issued by a refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed_at: Option<i64>,
    /// When its newest refresh token expires: the family is over then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The hash of the login's refresh token: where the chain of `successor`s starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
}

/// What [`Store::rotate_session`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The old token is now used; the new one is stored.
    Rotated { user_id: String, family_id: String },
    /// The old token was exchanged within the grace for the successor that
    /// `candidates[index]` names: the same exchange again, nothing written.
    Repeated {
        user_id: String,
        family_id: String,
        index: usize,
    },
    /// The old token had been used before: the whole family is now revoked.
    Reused { user_id: String, family_id: String },
    /// The token is unknown, expired, or its family was revoked.
    Refused,
}

/// How a refresh token is exchanged ([`Store::rotate_session`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTerms {
    /// The hashes of the successors the presented token may have, derived from it: the
    /// first (under the current master key) is the one a rotation stores; a use within the
    /// grace matches any of them (a previous master key's too).
    pub candidates: Vec<String>,
    pub now: i64,
    /// When the successor expires.
    pub expires_at: i64,
    /// `refresh_reuse_grace_secs`: how long a used token still answers its successor (0:
    /// never, a reuse always revokes the family).
    pub grace_secs: i64,
}

/// Which users [`Store::list_users`] returns: those after `after` (a user id, the previous
/// page's cursor) in id order, matching every filter given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserQuery {
    pub after: Option<String>,
    /// At most this many users.
    pub limit: usize,
    /// The user holding this email (any case).
    pub email: Option<String>,
    pub username: Option<String>,
    /// Users with an identity at this provider instance.
    pub provider: Option<String>,
}

/// A page of [`Store::list_users`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPage {
    pub users: Vec<UserRecord>,
    /// Where the next page starts; `None` when there is no more. A page may hold fewer
    /// than `limit` users and still have a next one (a filter that matched few of the
    /// users a page may examine).
    pub next: Option<String>,
}

/// What [`Store::erase_user`] removed: the user, and each identity with the provider tokens
/// it held (for revocation at the provider), and the families that were live.
#[derive(Debug, Clone)]
pub struct Erased {
    pub user: UserRecord,
    pub identities: Vec<(IdentityRecord, Option<TokenRecord>)>,
    /// The ids of the session families that were live when they went.
    pub live_families: Vec<String>,
    /// The unexpired NATS connections the auth callout admitted with the user's sessions
    /// (for the caller to end: their notes went with the sessions).
    pub nats_connections: Vec<NatsConnection>,
}

/// The longest a NATS connection is admitted for (its user JWT's `exp` is at most this far
/// off): how long a store keeps the note of one.
pub const NATS_CONNECTION_MAX_SECS: i64 = 24 * 3600;

/// A NATS connection the auth callout admitted with a session: where to find it to end it
/// (`$SYS.REQ.SERVER.{server_id}.KICK` with its `cid`) when the session ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsConnection {
    /// The id (public nkey) of the server the client connected to.
    pub server_id: String,
    /// The client's connection id on that server.
    pub cid: u64,
    /// When the connection's user JWT expires: the server closes it then, and the record
    /// is of no use after.
    pub expires_at: i64,
}

/// A session-token signing key. The private key is sealed by the vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// PKCS#8 DER of the Ed25519 key pair, sealed for the slot `signing-key/{kid}`.
    pub private: crate::crypto::Sealed,
    /// The raw public key, base64url.
    pub public_key: String,
    pub created_at: i64,
    /// When a newer key took over signing; the key still verifies for a while.
    pub retired_at: Option<i64>,
}

/// A provider instance an operator created at runtime.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderRecord {
    /// The instance, as an operator wrote it, without its client secret.
    pub config: crate::config::ProviderConfig,
    /// The client secret, sealed for the slot `provider-secret/{id}/{generation}`.
    pub secret: Option<crate::crypto::Sealed>,
    /// New on every create, so a deleted and re-created instance is a different one.
    pub generation: String,
    /// Counts changes; writes name the version they replace.
    pub version: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A user's tokens at a provider, stored under the identity. Both tokens are sealed for
/// slots bound to the identity (`token/{provider}/{subject}/access|refresh`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub access_token: crate::crypto::Sealed,
    pub refresh_token: Option<crate::crypto::Sealed>,
    pub expires_at: Option<i64>,
    pub scopes: Vec<String>,
    pub updated_at: i64,
    /// The provider refused the refresh token: the user must log in again.
    #[serde(default)]
    pub reauth_required: bool,
}

/// Everything a successful callback writes, in one atomic, durable change.
#[derive(Debug, Clone)]
pub struct LoginWrite {
    pub provider: String,
    pub profile: Profile,
    /// Link to an existing user with the same email when the provider says it is verified.
    pub trust_email_verified: bool,
    /// Link to this user on purpose (a `link_session` login).
    pub link_user: Option<String>,
    /// The label the service gave the client (`callback`'s `client`), kept on the family.
    pub client: Option<String>,
    /// The provider's tokens, when the instance stores them.
    pub tokens: Option<TokenRecord>,
    /// The hash of the new session's refresh token, and the session (its `user_id` is set
    /// to the user the login resolves to).
    pub session_key: String,
    pub session: SessionRecord,
    pub now: i64,
}

/// The key of identity (`provider`, `subject`) in both stores.
pub(crate) fn identity_key(provider: &str, subject: &str) -> String {
    format!("{provider}\0{subject}")
}

/// What [`Store::commit_login`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginCommit {
    pub user: UserRecord,
    pub identity: IdentityRecord,
    pub new_user: bool,
    pub new_identity: bool,
    /// What a returning login changed, by field: the user's (`name`, `picture`, `email`,
    /// `email_verified`) and the identity's (`identity.email`, `identity.email_verified`,
    /// `identity.groups`).
    pub changed: Vec<String>,
}

/// Everything a store holds but its pending logins (which live minutes): what `lanyard store
/// copy` moves from one store to another. Sealed values stay sealed; the master key does not
/// change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub users: Vec<(UserRecord, Vec<IdentityRecord>)>,
    /// Provider tokens by identity: (provider, subject, tokens).
    pub tokens: Vec<(String, String, TokenRecord)>,
    /// Refresh-token records by their hash.
    pub sessions: Vec<(String, SessionRecord)>,
    pub families: Vec<(String, FamilyRecord)>,
    pub providers: Vec<ProviderRecord>,
    pub signing_keys: Vec<SigningKeyRecord>,
}

impl Snapshot {
    /// How many records of each kind, for the command's report.
    pub fn counts(&self) -> String {
        format!(
            "{} users, {} identities, {} provider tokens, {} sessions, {} session families, \
             {} providers, {} signing keys",
            self.users.len(),
            self.users.iter().map(|(_, i)| i.len()).sum::<usize>(),
            self.tokens.len(),
            self.sessions.len(),
            self.families.len(),
            self.providers.len(),
            self.signing_keys.len()
        )
    }
}

/// The longest a waited-for login may run (a provider's device code expiry, or a hosted
/// login's state lifetime, is capped at this): a store may forget one
/// [`LOGIN_KEPT_SECS`] after that.
pub const WAITED_LOGIN_MAX_SECS: i64 = 30 * 60;

/// How long an ended waited-for login stays readable, so an app whose wait was cut off can
/// still ask for its outcome.
pub const LOGIN_KEPT_SECS: i64 = 10 * 60;

/// A login an app waits for by its handle (`device.wait`, `login.wait`), while it runs and
/// for a while after it ended, stored under the hex SHA-256 of its handle (the handle
/// itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitedLogin {
    pub kind: WaitedKind,
    pub provider: String,
    /// The provider instance's generation when the login started.
    pub generation: String,
    /// What only the daemon may read, sealed for the slot `waited/{key}`: for a device
    /// login, the provider's device authorization response (the device code is a secret),
    /// the user a `link_session` login links to and the client label; for a hosted one, the
    /// authorization URL and the browser binding its start page sets.
    pub sealed: crate::crypto::Sealed,
    pub expires_at: i64,
    pub fetch_groups: bool,
    /// Set once, when the login ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<LoginOutcome>,
}

/// Which way the app waits: a device login (Lanyard polls the provider) or a login through
/// Lanyard's hosted pages (the browser comes back to Lanyard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitedKind {
    Device,
    Hosted,
}

/// How a waited-for login ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LoginOutcome {
    /// The callback-shaped reply (with the session's tokens), sealed for
    /// `waited/{key}/reply`.
    Done {
        reply: crate::crypto::Sealed,
        at: i64,
    },
    Failed {
        code: lanyard_proto::ErrorCode,
        message: String,
        at: i64,
    },
}

impl WaitedLogin {
    /// When a store may forget it: a while after it ended, or after it expired.
    pub fn forget_after(&self) -> i64 {
        let ended = match &self.outcome {
            Some(LoginOutcome::Done { at, .. } | LoginOutcome::Failed { at, .. }) => *at,
            None => self.expires_at,
        };
        ended.max(self.expires_at) + LOGIN_KEPT_SECS
    }
}
