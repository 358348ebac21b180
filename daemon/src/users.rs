//! The admin commands on users: finding them (`admin.user.list`, `admin.user.get`),
//! disabling and enabling them, and erasing them (`admin.user.delete`).

use lanyard_proto::{
    AdminUserReply, Event, RevokeReason, UserDeleteReply, UserGetRequest, UserListReply,
    UserListRequest, UserReply, UserWithIdentities,
};

use crate::error::{Error, ErrorCode};
use crate::service::{check_id, check_len, identity_view, session_view, user_view, Lanyard};
use crate::sessions::now;
use crate::store::{policy, UserQuery};

/// `admin.user.list`'s page size when the request names none, and the largest it may name.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

impl Lanyard {
    /// `admin.user.list`: a page of users in id order, filtered by email, username or
    /// provider instance.
    pub async fn list_users(&self, request: UserListRequest) -> Result<UserListReply, Error> {
        let limit = request.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::bad_request(format!(
                "`limit` must be between 1 and {MAX_PAGE}"
            )));
        }
        for (name, value) in [
            ("cursor", &request.cursor),
            ("email", &request.email),
            ("username", &request.username),
            ("provider", &request.provider),
        ] {
            check_len(name, value.as_ref())?;
        }
        let page = self
            .store
            .list_users(&UserQuery {
                after: request.cursor,
                limit: limit as usize,
                email: request.email,
                username: request.username,
                provider: request.provider,
            })
            .await?;
        Ok(UserListReply {
            users: page.users.iter().map(user_view).collect(),
            next_cursor: page.next,
        })
    }

    /// `admin.user.get`: a user with its identities and live sessions.
    pub async fn admin_user(&self, request: UserGetRequest) -> Result<AdminUserReply, Error> {
        check_id("user_id", &request.user_id)?;
        let user = self
            .store
            .get_user(&request.user_id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, "no such user"))?;
        let (identities, families) = tokio::try_join!(
            self.store.user_identities(&user.id),
            self.store.user_families(&user.id)
        )?;
        let now = now();
        Ok(AdminUserReply {
            user: UserWithIdentities {
                user: user_view(&user),
                identities: identities.iter().map(identity_view).collect(),
            },
            sessions: families
                .into_iter()
                .filter(|(_, family)| policy::is_live(family, now))
                .map(|(id, family)| session_view(id, &family))
                .collect(),
        })
    }

    /// `admin.user.disable` (`disable`) and `admin.user.enable`: at once, the user's logins
    /// end in `user_disabled` and its sessions neither verify nor refresh; enabling brings
    /// back the sessions that have not expired (`session.revoke_all` ends them for good).
    pub async fn set_disabled(
        &self,
        request: UserGetRequest,
        disable: bool,
    ) -> Result<UserReply, Error> {
        check_id("user_id", &request.user_id)?;
        let user = self
            .store
            .set_user_disabled(&request.user_id, disable.then(now))
            .await?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, "no such user"))?;
        tracing::info!(user_id = %user.id, disabled = disable, "an admin changed a user's access");
        if disable && self.nats_kicker.is_some() {
            // Its NATS connections end too (those of sessions not revoked before: theirs
            // ended then); enabling cannot bring them back (clients reconnect). The user is
            // disabled already: a failure here is logged, not answered.
            match self.store.user_families(&user.id).await {
                Ok(families) => {
                    let ids: Vec<String> = families
                        .into_iter()
                        .filter(|(_, family)| family.revoked_at.is_none())
                        .map(|(id, _)| id)
                        .collect();
                    self.end_nats_connections(&ids).await;
                }
                Err(error) => tracing::warn!(user_id = %user.id, %error,
                    "cannot list a disabled user's sessions; their NATS connections last until their tokens expire"),
            }
        }
        Ok(UserReply {
            user: user_view(&user),
        })
    }

    /// `admin.user.delete`: erases the user (a GDPR erasure). Its identities, provider
    /// tokens (revoked at the provider where it can), sessions and email and username
    /// claims go, durably, before the reply; then `session.revoked` for each session that
    /// was live, and `user.deleted`. A later login through one of its identities makes a
    /// new user. Run again after a failure part-way, it finishes the job.
    pub async fn delete_user(&self, request: UserGetRequest) -> Result<UserDeleteReply, Error> {
        check_id("user_id", &request.user_id)?;
        let erased = self
            .store
            .erase_user(&request.user_id, now())
            .await?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, "no such user"))?;
        let mut provider_tokens_revoked = 0;
        for (identity, tokens) in &erased.identities {
            if let Some(record) = tokens {
                if self.tokens.revoke_at_provider(identity, record).await {
                    provider_tokens_revoked += 1;
                }
            }
        }
        let user_id = erased.user.id;
        tracing::info!(%user_id, identities = erased.identities.len(),
            sessions = erased.live_families.len(), "erased a user");
        for family_id in &erased.live_families {
            self.events.emit(Event::SessionRevoked {
                user_id: user_id.clone(),
                session_id: family_id.clone(),
                reason: RevokeReason::UserDeleted,
            });
        }
        // The erasure took the connections' notes with the sessions, and gave them back.
        self.kick_nats(&erased.nats_connections).await;
        self.events.emit(Event::UserDeleted {
            user_id: user_id.clone(),
        });
        Ok(UserDeleteReply {
            user_id,
            identities: erased.identities.len() as u64,
            provider_tokens_revoked,
            sessions_revoked: erased.live_families.len() as u64,
        })
    }
}
