//! Finishing a callback: the provider's answer, the actor's completion, the commit of user,
//! identity and session in one durable change, and the events.

use lanyard_proto::{CallbackReply, Event, Session};

use crate::error::{Error, ErrorCode};
use crate::providers::{CompleteArgs, Completed};
use crate::service::{identity_view, user_view, Lanyard, CONFIG_GENERATION};
use crate::sessions::now;
use crate::store::{LoginCommit, LoginWrite, PendingLogin};

use super::input::{CallbackInput, Seen};

impl Lanyard {
    /// Finishes a callback, noting in `seen` what a failure report needs.
    pub(super) async fn finish_callback(
        &self,
        input: &CallbackInput,
        seen: &mut Seen,
    ) -> Result<CallbackReply, Error> {
        let pending = self
            .store
            .take_pending(&input.state)
            .await?
            .ok_or_else(Error::invalid_state)?;
        seen.taken = true;
        if seen.provider.is_none() {
            seen.provider = Some(pending.provider.clone());
        }
        self.check_pending(&pending, input).await?;
        let code = provider_answer(input)?;
        let provider = pending.provider.clone();
        let completed = self
            .providers
            .complete(
                &provider,
                CompleteArgs {
                    pending: pending.clone(),
                    code,
                    iss: input.iss.clone(),
                    params: input.params.clone(),
                },
            )
            .await?;

        let (commit, session, family_id) = self.commit(&pending, completed).await?;
        self.emit_login_events(&provider, &commit, family_id);
        Ok(CallbackReply {
            user: user_view(&commit.user),
            identity: identity_view(&commit.identity),
            new_user: commit.new_user,
            session,
            return_to: pending.return_to,
        })
    }

    /// A taken pending login may finish only here: unexpired, at the provider and redirect
    /// URI the callback names, and for the instance (generation) that started it.
    async fn check_pending(
        &self,
        pending: &PendingLogin,
        input: &CallbackInput,
    ) -> Result<(), Error> {
        if pending.expires_at < now() {
            return Err(Error::invalid_state());
        }
        if let Some(expected) = &input.expected_provider {
            if *expected != pending.provider {
                return Err(Error::invalid_state());
            }
        }
        if let Some(expected) = &input.expected_redirect_uri {
            if *expected != pending.redirect_uri {
                return Err(Error::invalid_state());
            }
        }
        // A provider deleted since (even if created again) cannot finish its old logins.
        // A stored instance is checked against the store itself, not this daemon's copy:
        // once any daemon answered the delete, no daemon completes them, however far its
        // change feed lags. Its actor checks the generation again when it takes the code.
        let generation = if pending.generation == CONFIG_GENERATION {
            self.providers
                .describe(&pending.provider)
                .ok()
                .map(|d| d.generation)
        } else {
            self.store
                .get_provider(&pending.provider)
                .await?
                .map(|record| record.generation)
        };
        if generation.as_ref() != Some(&pending.generation) {
            return Err(Error::invalid_state());
        }
        Ok(())
    }

    /// The user, identity and session the login yields, committed in one durable change,
    /// and the session's tokens and family id.
    async fn commit(
        &self,
        pending: &PendingLogin,
        completed: Completed,
    ) -> Result<(LoginCommit, Session, String), Error> {
        let provider = &pending.provider;
        let now = now();
        let prepared = self.sessions.prepare(now)?;
        let family_id = prepared.family_id.clone();
        let tokens = if completed.store_tokens {
            Some(self.tokens.seal_login(
                provider,
                &completed.profile.subject,
                &completed.tokens,
                now,
            )?)
        } else {
            None
        };
        let write = LoginWrite {
            provider: provider.clone(),
            tokens,
            profile: completed.profile,
            // The instance's policy when the login finished, so admin changes apply to the
            // next login.
            trust_email_verified: completed.trust_email_verified,
            link_user: pending.link_user.clone(),
            session_key: prepared.session_key.clone(),
            session: self.sessions.record(&prepared, now),
            now,
        };
        let commit = self.store.commit_login(&write).await?;
        let session = self
            .sessions
            .finish(prepared, &commit.user.id, &family_id, now)?;
        Ok((commit, session, family_id))
    }

    /// `user.created` and `identity.linked` when the login made them, then
    /// `user.logged_in`.
    fn emit_login_events(&self, provider: &str, commit: &LoginCommit, family_id: String) {
        let user_id = &commit.user.id;
        let subject = &commit.identity.subject;
        if commit.new_user {
            self.events.emit(Event::UserCreated {
                user_id: user_id.clone(),
                provider: provider.to_owned(),
                subject: subject.clone(),
            });
        }
        if commit.new_identity {
            self.events.emit(Event::IdentityLinked {
                user_id: user_id.clone(),
                provider: provider.to_owned(),
                subject: subject.clone(),
            });
        }
        self.events.emit(Event::UserLoggedIn {
            user_id: user_id.clone(),
            provider: provider.to_owned(),
            subject: subject.clone(),
            new_user: commit.new_user,
            session_id: family_id,
        });
    }
}

/// The code the provider sent, or its refusal as the error the caller gets
/// (`access_denied`, or `provider_error` with the provider's words, cut short).
fn provider_answer(input: &CallbackInput) -> Result<String, Error> {
    match (&input.code, &input.error) {
        (_, Some(error)) => {
            let described = input
                .error_description
                .as_deref()
                .map(|d| format!(": {}", truncate(d, 200)))
                .unwrap_or_default();
            let code = if error == "access_denied" {
                ErrorCode::AccessDenied
            } else {
                ErrorCode::ProviderError
            };
            Err(Error::new(
                code,
                format!("the provider answered {}{described}", truncate(error, 64)),
            ))
        }
        (Some(code), None) => Ok(code.clone()),
        (None, None) => Err(Error::bad_request("`code` or `error` is required")),
    }
}

/// At most `max` characters of `s`.
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
