//! Lanyard as the NATS auth callout (ADR-26): the server sends an authorization request, a
//! JWT it signed with its own nkey, for each connecting client; Lanyard answers with an
//! authorization response JWT signed by the issuer account key, carrying either a user JWT
//! (whose permissions come from `[nats_auth]`'s templates) or an error.

mod jwt;
mod keys;
mod kick;

use lanyard_proto::{Claims, Event};

pub(crate) use jwt::{permissions, read_request, AuthRequest, Permissions, Signer};
pub(crate) use kick::Kicker;

use crate::config::NatsPermissionTemplates;
use crate::error::{Error, ErrorCode};
use crate::service::Lanyard;
use crate::sessions::now;
use crate::store::{NatsConnection, UserRecord, NATS_CONNECTION_MAX_SECS};

/// The callout as configured: who signs, what a session's connection may do, and the
/// callers that may connect with their tokens.
#[derive(Debug)]
pub(crate) struct NatsCallout {
    signer: Signer,
    templates: NatsPermissionTemplates,
    /// More permissions for sessions whose access token carries the role.
    roles: std::collections::BTreeMap<String, NatsPermissionTemplates>,
    callers: Vec<NatsCaller>,
    /// The servers' keys, and the callout's curve key when requests come encrypted.
    keys: keys::ServerKeys,
    /// `max_connects_per_sec`.
    limiter: Option<governor::DefaultDirectRateLimiter>,
}

/// A caller that may connect: its name, its token's SHA-256, its permissions.
struct NatsCaller {
    name: String,
    hash: [u8; 32],
    permissions: Permissions,
}

impl std::fmt::Debug for NatsCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCaller")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NatsCallout {
    /// The callout `[nats_auth]` describes, when enabled, with the callers that list
    /// `nats_permissions`.
    pub(crate) fn from_config(
        config: &crate::config::Config,
    ) -> Result<Option<Self>, crate::config::ConfigError> {
        if !config.nats_auth.enabled {
            return Ok(None);
        }
        let mut callers = Vec::new();
        for (i, caller) in config.callers.iter().enumerate() {
            let Some(templates) = &caller.nats_permissions else {
                continue;
            };
            let token = caller.resolve_token(&format!("callers[{i}]"))?;
            callers.push(NatsCaller {
                name: caller.name.clone(),
                hash: crate::crypto::token_hash(secrecy::ExposeSecret::expose_secret(&token)),
                permissions: permissions(templates, &[]),
            });
        }
        let xkey_seed = config.nats_auth.resolve_xkey()?;
        let xkey_seed = xkey_seed.as_ref().map(secrecy::ExposeSecret::expose_secret);
        let keys = keys::ServerKeys::new(xkey_seed).ok_or_else(|| {
            crate::config::ConfigError::at(
                "nats_auth.xkey_seed",
                "must be a curve (xkey) seed (SX…)",
            )
        })?;
        Ok(Some(Self {
            signer: Signer::new(&config.nats_auth)?,
            templates: config.nats_auth.permissions.clone(),
            roles: config.nats_auth.roles.clone(),
            callers,
            keys,
            limiter: config
                .nats_auth
                .max_connects_per_sec
                .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r))),
        }))
    }

    /// The request's JWT, opened when requests come encrypted ([`keys::ServerKeys::open`]).
    pub(crate) fn open(&self, payload: &[u8], server_xkey: Option<&str>) -> Option<Vec<u8>> {
        self.keys.open(payload, server_xkey)
    }

    /// The response as the server reads it ([`keys::ServerKeys::seal`]).
    pub(crate) fn seal(&self, response: String, server_xkey: Option<&str>) -> Option<Vec<u8>> {
        self.keys.seal(response, server_xkey)
    }

    /// What a session's connection may do: the templates, and those of each role its
    /// access token carries, filled in. A username that is not one subject token (a `.` in
    /// it) cannot fill `{username}`: the connection is refused rather than given a
    /// permission that reaches another user's subjects.
    fn session_permissions(
        &self,
        claims: &Claims,
        user: &UserRecord,
    ) -> Result<Permissions, Error> {
        let roles = claims.user.roles.as_deref().unwrap_or_default();
        let granted = || roles.iter().filter_map(|role| self.roles.get(role));
        let uses_username = std::iter::once(&self.templates)
            .chain(granted())
            .any(|t| t.uses("{username}"));
        if uses_username && !subject_token(&user.username) {
            return Err(Error::new(
                ErrorCode::Forbidden,
                "the username cannot stand in a subject ({username} in [nats_auth])",
            ));
        }
        let fill = [
            ("{user_id}", claims.sub.as_str()),
            ("{session_id}", claims.sid.as_str()),
            ("{username}", user.username.as_str()),
        ];
        let mut all = permissions(&self.templates, &fill);
        for templates in granted() {
            all.extend(permissions(templates, &fill));
        }
        Ok(all)
    }

    /// The caller whose token this is: compared as SHA-256 hashes, in constant time,
    /// against every caller.
    fn caller(&self, token: &str) -> Option<&NatsCaller> {
        crate::crypto::find_by_token(&self.callers, |c| &c.hash, token)
    }
}

/// Whether `value` can stand as one token of a subject: letters, digits, `_` and `-` only.
fn subject_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Lanyard {
    /// Decides one authorization request: the response JWT to send back, or `None` for a
    /// request that is not a server's (nothing to answer; the server times out and refuses).
    /// A client is admitted with a valid, unrevoked session access token of an enabled user
    /// (what `session.verify` checks), until that token expires; or with a caller's token.
    pub(crate) async fn nats_authorize(
        &self,
        callout: &NatsCallout,
        payload: &[u8],
    ) -> Option<String> {
        let now = now();
        let request = match read_request(payload, now, |id| callout.keys.verifier(id)) {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(%error, "an auth callout request that is not a server's; ignored");
                self.events.emit(Event::NatsRefused {
                    code: ErrorCode::BadRequest,
                });
                return None;
            }
        };
        if callout.limiter.as_ref().is_some_and(|l| l.check().is_err()) {
            self.events.emit(Event::NatsRefused {
                code: ErrorCode::RateLimited,
            });
            let why = "too many connections at once; retry shortly";
            return Some(callout.signer.refuse(&request, why, now));
        }
        let Some(token) = request.token.clone() else {
            self.events.emit(Event::NatsRefused {
                code: ErrorCode::Unauthorized,
            });
            return Some(callout.signer.refuse(&request, "no session token", now));
        };
        if let Some(caller) = callout.caller(&token) {
            self.events.emit(Event::NatsAuthorized {
                user_id: None,
                session_id: None,
                caller: Some(caller.name.clone()),
            });
            // Not forever: a user JWT is a credential of its own in operator mode.
            let until = Some(now + NATS_CONNECTION_MAX_SECS);
            let name = &caller.name;
            return Some(
                callout
                    .signer
                    .admit(&request, name, &caller.permissions, until, now),
            );
        }
        match self.admit_session(callout, &request, &token, now).await {
            Ok((claims, permissions, until)) => {
                self.events.emit(Event::NatsAuthorized {
                    user_id: Some(claims.sub.clone()),
                    session_id: Some(claims.sid),
                    caller: None,
                });
                let name = &claims.sub;
                Some(
                    callout
                        .signer
                        .admit(&request, name, &permissions, Some(until), now),
                )
            }
            Err(error) => {
                tracing::info!(code = %error.code, reason = %error.message,
                    "the auth callout refused a connection");
                self.events.emit(Event::NatsRefused { code: error.code });
                let why = match error.code {
                    ErrorCode::Unauthorized => "the session token is not valid",
                    _ => "the session cannot be used",
                };
                Some(callout.signer.refuse(&request, why, now))
            }
        }
    }

    /// Checks a session's access token for a connection, and notes the connection in the
    /// store before it checks the session is live: a revocation either comes before that
    /// check (and refuses the connection) or finds the note (and ends it). Returns the
    /// claims, the connection's permissions and when it ends.
    async fn admit_session(
        &self,
        callout: &NatsCallout,
        request: &AuthRequest,
        token: &str,
        now: i64,
    ) -> Result<(Claims, Permissions, i64), Error> {
        let claims = self.sessions.verify(token, self.store.as_ref()).await?;
        // Ids become subject tokens: one that could widen a permission (a `.`, `*`, `>`)
        // is refused, whatever store it came from.
        if !subject_token(&claims.sub) || !subject_token(&claims.sid) {
            return Err(Error::new(
                ErrorCode::Internal,
                "a session whose ids are not subject tokens",
            ));
        }
        let note = NatsConnection {
            server_id: request.server_id.clone(),
            cid: request.cid,
            expires_at: claims.exp.min(now + NATS_CONNECTION_MAX_SECS),
        };
        self.store.put_nats_connection(&claims.sid, &note).await?;
        let decided = match self.check_live(&claims).await {
            Ok(user) => callout.session_permissions(&claims, &user),
            Err(error) => Err(error),
        };
        match decided {
            Ok(permissions) => Ok((claims, permissions, note.expires_at)),
            Err(error) => {
                if let Err(e) = self.store.delete_nats_connection(&claims.sid, &note).await {
                    tracing::warn!(error = %e, "a refused connection's note stays until it expires");
                }
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_become_subject_tokens() {
        assert!(subject_token("usr_01M8B9AV71FNNNHC85CZMSBEDJ"));
        assert!(subject_token("ses_01M8-x"));
        for bad in ["", "a.b", "*", ">", "a b", "usr_1.>"] {
            assert!(!subject_token(bad), "{bad:?}");
        }
    }

    fn callout(config: &str) -> NatsCallout {
        let seed = nkeys::KeyPair::new_account().seed().unwrap();
        let toml = format!(
            "[vault]\nmaster_key = \"{key}\"\n[nats_auth]\nenabled = true\n\
             issuer_seed = \"{seed}\"\naccount = \"APP\"\n{config}",
            key = "a".repeat(43) + "=",
        );
        let config = crate::config::Config::from_toml(&toml).unwrap();
        NatsCallout::from_config(&config).unwrap().unwrap()
    }

    fn session(username: &str, roles: Option<Vec<&str>>) -> (Claims, UserRecord) {
        let claims: Claims = serde_json::from_value(serde_json::json!({
            "iss": "lanyard", "aud": "lanyard", "sub": "usr_1", "exp": 100, "iat": 1,
            "jti": "j", "sid": "ses_1", "roles": roles,
        }))
        .unwrap();
        let user = UserRecord {
            id: "usr_1".into(),
            username: username.into(),
            email: None,
            email_verified: false,
            name: None,
            picture: None,
            created_at: 1,
            disabled_at: None,
        };
        (claims, user)
    }

    #[test]
    fn a_sessions_roles_add_their_permissions_and_a_dotted_username_is_refused() {
        let callout = callout(
            "[nats_auth.permissions]\npublish = [\"chat.{username}.>\"]\n\
             subscribe = [\"app.{user_id}.{session_id}\"]\n\
             [nats_auth.roles.admin]\nsubscribe = [\"audit.>\"]\ndeny_publish = [\"audit.>\"]\n\
             [nats_auth.roles.unused]\npublish = [\"never\"]\n",
        );
        let (claims, user) = session("jane", Some(vec!["admin"]));
        let p = callout.session_permissions(&claims, &user).unwrap();
        assert_eq!(p.publish, ["chat.jane.>"]);
        assert_eq!(p.subscribe, ["app.usr_1.ses_1", "audit.>"]);
        assert_eq!(p.deny_publish, ["audit.>"]);

        let (claims, user) = session("jane", None);
        let p = callout.session_permissions(&claims, &user).unwrap();
        assert_eq!(p.subscribe, ["app.usr_1.ses_1"], "no role, no more");

        // "jane.doe" would put another user's subjects ("chat.jane.>") in reach.
        let (claims, user) = session("jane.doe", None);
        let refused = callout.session_permissions(&claims, &user).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
    }
}
