//! The admin commands on users: `admin.user.delete` (erasure).

use lanyard_proto::{Event, RevokeReason, UserDeleteReply, UserGetRequest};

use crate::error::{Error, ErrorCode};
use crate::service::{check_id, Lanyard};
use crate::sessions::now;

impl Lanyard {
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
            self.emit_revoked(
                user_id.clone(),
                family_id.clone(),
                RevokeReason::UserDeleted,
            );
        }
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
