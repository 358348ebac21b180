//! Finishing a callback: the provider's answer, the actor's completion, the commit of user,
//! identity and session in one durable change, and the events.

use lanyard_proto::{CallbackReply, Event, Session};

use crate::config::ProviderConfig;
use crate::error::{Error, ErrorCode};
use crate::login_state::{fingerprint, is_legacy, Fingerprint};
use crate::providers::{CompleteArgs, Completed, Ticket};
use crate::service::{identity_view, user_view, Lanyard, CONFIG_GENERATION};
use crate::sessions::claims::user_claims;
use crate::sessions::now;
use crate::store::{hex_sha256, LoginCommit, LoginWrite};

use super::input::{CallbackInput, Seen};

impl Lanyard {
    /// Finishes a callback, noting in `seen` what a failure report needs.
    pub(super) async fn finish_callback(
        &self,
        input: &CallbackInput,
        seen: &mut Seen,
    ) -> Result<CallbackReply, Error> {
        let ticket = if is_legacy(&input.state) {
            self.redeem_pending(input, seen).await?
        } else {
            self.redeem(input, seen).await?
        };
        let code = provider_answer(input)?;
        let provider = ticket.provider.clone();
        let completed = self
            .providers
            .complete(
                &provider,
                CompleteArgs {
                    ticket: ticket.clone(),
                    code,
                    iss: input.iss.clone(),
                    params: input.params.clone(),
                },
            )
            .await?;

        let (commit, session, family_id) = self
            .commit(&ticket, completed, input.client.clone())
            .await?;
        self.emit_login_events(&provider, &commit, family_id);
        Ok(CallbackReply {
            user: user_view(&commit.user),
            identity: identity_view(&commit.identity),
            new_user: commit.new_user,
            session,
            return_to: ticket.return_to,
        })
    }

    /// The login a callback's state stands for, spent (no other callback gets it, on any
    /// daemon), and only if the callback came from the browser that started it: unexpired,
    /// at the provider and redirect URI the callback names, for the instance (generation)
    /// that started it.
    async fn redeem(&self, input: &CallbackInput, seen: &mut Seen) -> Result<Ticket, Error> {
        let (state, secrets) = self
            .logins
            .states
            .open(&input.state)
            .ok_or_else(Error::invalid_state)?;
        seen.provider.get_or_insert_with(|| state.provider.clone());
        if state.expires_at < now() {
            return Err(Error::invalid_state());
        }
        // Before anything else is checked: a callback refused for any reason spends it.
        if !self.store.spend_login(&state.id, state.expires_at).await? {
            return Err(Error::invalid_state());
        }
        seen.spent = true;
        // The instance as it is now, and still the generation that started the login: for a
        // stored one, the store's record, not this daemon's copy, which may lag an update.
        let config = self.instance_now(&state.provider, state.generation).await?;
        check_binding(&state.provider, input, &config, |b| secrets.binds(b))?;
        if input
            .expected_provider
            .as_ref()
            .is_some_and(|expected| *expected != state.provider)
        {
            return Err(Error::invalid_state());
        }
        // The URI the login began with: the callback's own (a loopback one may have any
        // port, so only the service knows it), or the configured one the state names.
        let redirect_uri = match &input.expected_redirect_uri {
            Some(given)
                if fingerprint(given) == state.redirect_uri && config.allows_redirect(given) =>
            {
                given.clone()
            }
            Some(_) => return Err(Error::invalid_state()),
            None => config
                .redirect_uris
                .iter()
                .find(|uri| fingerprint(uri) == state.redirect_uri)
                .cloned()
                .ok_or_else(Error::invalid_state)?,
        };
        Ok(Ticket {
            provider: state.provider,
            generation: state.generation,
            redirect_uri,
            pkce_verifier: Some(secrets.pkce_verifier),
            nonce: Some(secrets.nonce),
            fetch_groups: state.fetch_groups,
            return_to: state.return_to,
            link_user: state.link_user,
        })
    }

    /// A login stored in the store (exactly one taker): one the previous version started,
    /// with the same checks but the binding, which those never had; or one this version
    /// started with `stored_login_states`, binding included.
    async fn redeem_pending(
        &self,
        input: &CallbackInput,
        seen: &mut Seen,
    ) -> Result<Ticket, Error> {
        let pending = self
            .store
            .take_pending(&input.state)
            .await?
            .ok_or_else(Error::invalid_state)?;
        seen.taken = true;
        seen.provider
            .get_or_insert_with(|| pending.provider.clone());
        let unexpected = |expected: &Option<String>, actual: &String| {
            expected.as_ref().is_some_and(|e| e != actual)
        };
        if pending.expires_at < now()
            || unexpected(&input.expected_provider, &pending.provider)
            || unexpected(&input.expected_redirect_uri, &pending.redirect_uri)
        {
            return Err(Error::invalid_state());
        }
        let generation = fingerprint(&pending.generation);
        let config = self.instance_now(&pending.provider, generation).await?;
        // One this version stored (`stored_login_states`) has a binding to check.
        if let Some(hash) = &pending.binding_hash {
            check_binding(&pending.provider, input, &config, |binding| {
                use subtle::ConstantTimeEq;
                hex_sha256(binding.as_bytes())
                    .as_bytes()
                    .ct_eq(hash.as_bytes())
                    .into()
            })?;
        }
        Ok(Ticket {
            provider: pending.provider,
            generation,
            redirect_uri: pending.redirect_uri,
            pkce_verifier: pending.pkce_verifier,
            nonce: pending.nonce,
            fetch_groups: pending.fetch_groups,
            return_to: pending.return_to,
            link_user: pending.link_user,
        })
    }

    /// The configuration of the instance that started a login, as it is now; `invalid_state`
    /// when it was deleted since (even if created again: another generation). A stored
    /// instance is read from the store itself, not this daemon's copy: once any daemon
    /// answered a delete or an update, every daemon finishes logins by it, however far its
    /// change feed lags. Its actor checks the generation again when it takes the code.
    pub(super) async fn instance_now(
        &self,
        provider: &str,
        generation: Fingerprint,
    ) -> Result<std::sync::Arc<ProviderConfig>, Error> {
        let current = if generation == fingerprint(CONFIG_GENERATION) {
            self.providers
                .describe(provider)
                .ok()
                .map(|d| (d.generation, d.config))
        } else {
            self.store
                .get_provider(provider)
                .await?
                .map(|record| (record.generation, std::sync::Arc::new(record.config)))
        };
        match current {
            Some((now, config)) if fingerprint(&now) == generation => Ok(config),
            _ => Err(Error::invalid_state()),
        }
    }

    /// The user, identity and session the login yields, committed in one durable change,
    /// and the session's tokens and family id.
    pub(super) async fn commit(
        &self,
        ticket: &Ticket,
        completed: Completed,
        client: Option<String>,
    ) -> Result<(LoginCommit, Session, String), Error> {
        let provider = &ticket.provider;
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
            link_user: ticket.link_user.clone(),
            client,
            session_key: prepared.session_key.clone(),
            session: self.sessions.record(&prepared, now),
            now,
        };
        let commit = self.store.commit_login(&write).await?;
        let config = self.claims_config(Some(provider));
        let claims = user_claims(&config, &commit.user, Some(&commit.identity));
        let session = self
            .sessions
            .finish(prepared, &commit.user.id, &family_id, now, claims)?;
        Ok((commit, session, family_id))
    }

    /// `user.created` and `identity.linked` when the login made them, then
    /// `user.logged_in`; `user.updated` first when a returning login changed the profile.
    pub(super) fn emit_login_events(
        &self,
        provider: &str,
        commit: &LoginCommit,
        family_id: String,
    ) {
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
        if !commit.changed.is_empty() {
            self.events.emit(Event::UserUpdated {
                user_id: user_id.clone(),
                provider: provider.to_owned(),
                subject: subject.clone(),
                changed: commit.changed.clone(),
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

/// Whether the callback came from the browser that started the login: its `binding` is the
/// login's (`binds`, which compares in constant time), or it sent none and the instance does
/// not require one (`require_binding = false`).
fn check_binding(
    provider: &str,
    input: &CallbackInput,
    config: &ProviderConfig,
    binds: impl FnOnce(&str) -> bool,
) -> Result<(), Error> {
    let bound = match &input.binding {
        Some(binding) => binds(binding),
        None => !config.require_binding,
    };
    if !bound {
        tracing::warn!(%provider, "a callback came without its login's browser binding; refused");
        return Err(Error::invalid_state());
    }
    Ok(())
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
