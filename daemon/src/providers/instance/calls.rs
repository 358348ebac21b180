//! Plugin calls on a request's behalf: bounded, their faults noted for the actor, and the requests
//! a plugin asks for kept to the provider's own origins.

use std::cell::Cell;

use lanyard_provider_sdk::{ErrorKind, HttpRequest, Op};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::build::{check_url, plugin_limit};
use super::{Instance, Resolved};
use crate::error::Error;
use crate::providers::plugin::{BoundedError, CallError, Plugin};

tokio::task_local! {
    /// Set when a plugin call of the current request panicked or overran: the request's
    /// task then has the actor replaced before it answers.
    static PLUGIN_FAULT: Cell<bool>;
}

/// Runs a request's work, and tells whether a plugin call in it panicked or overran.
pub async fn watching_plugin_faults<T>(work: impl std::future::Future<Output = T>) -> (T, bool) {
    PLUGIN_FAULT
        .scope(Cell::new(false), async {
            let out = work.await;
            (out, PLUGIN_FAULT.with(Cell::get))
        })
        .await
}

fn note_plugin_fault() {
    let _ = PLUGIN_FAULT.try_with(|fault| fault.set(true));
}

impl Instance {
    /// The user's access token only goes to the provider's own origins (those of its
    /// endpoints and issuer), so a plugin cannot send it anywhere else.
    pub(super) fn check_request_targets(
        &self,
        requests: &[HttpRequest],
        resolved: &Resolved,
    ) -> Result<(), Error> {
        let origin = |url: &str| url::Url::parse(url).ok().map(|u| u.origin());
        let endpoints = &resolved.endpoints;
        let allowed: Vec<url::Origin> = [
            &endpoints.issuer,
            &endpoints.authorization_url,
            &endpoints.token_url,
            &endpoints.userinfo_url,
        ]
        .into_iter()
        .flatten()
        .filter_map(|u| origin(u))
        .collect();
        for request in requests {
            let target = origin(&request.url).filter(|o| allowed.contains(o));
            let secure = check_url(&request.url, self.http.config.allow_insecure_http).is_ok();
            if target.is_none() || !secure {
                tracing::error!(provider = %self.id, request = %request.name,
                    "plugin asked to send the access token outside the provider's origins");
                return Err(Error::internal(
                    "the provider plugin asked for a request outside the provider's origins",
                ));
            }
        }
        Ok(())
    }

    /// Runs one plugin operation through the bounded path ([`Plugin::call_bounded`], the
    /// instance's `plugin_timeout_ms`). A call that panics or overruns marks the request, whose
    /// task then has the actor replaced; an overrun is `provider_unavailable`.
    pub(super) async fn call<I: Serialize, O: DeserializeOwned + Send + 'static>(
        &self,
        op: Op,
        input: &I,
    ) -> Result<O, Error> {
        let result = self
            .plugin
            .call_bounded(op, input, plugin_limit(&self.config))
            .await;
        result.map_err(|error| self.plugin_error(op.name(), error))
    }

    /// Runs plugin operations (named `ops`) in one hand-off to a plugin thread, bounded as
    /// one call is (`plugin_timeout_ms`: operations are pure computation, so the bound is
    /// there for a plugin that hangs, not for their sum); failures as in
    /// [`call`](Self::call).
    pub(super) async fn call_together<O: Send + 'static>(
        &self,
        ops: &'static str,
        calls: impl FnOnce(&Plugin) -> Result<O, CallError> + Send + 'static,
    ) -> Result<O, Error> {
        let result = self
            .plugin
            .run_bounded(plugin_limit(&self.config), calls)
            .await;
        result.map_err(|error| self.plugin_error(ops, error))
    }

    /// The error a request gets for a failed plugin call, noting panics and overruns.
    fn plugin_error(&self, op: &str, error: BoundedError) -> Error {
        match error {
            BoundedError::Disabled { hung } => Error::unavailable(format!(
                "provider `{}` is unhealthy: its plugin has {hung} calls that never returned; \
                 restart the daemon",
                self.id
            )),
            BoundedError::Overran => {
                tracing::error!(provider = %self.id, op,
                    timeout_ms = self.config.plugin_timeout_ms,
                    "plugin call overran its time; restarting the provider");
                note_plugin_fault();
                Error::unavailable(format!(
                    "provider `{}`'s plugin did not answer in time",
                    self.id
                ))
            }
            BoundedError::Call(error) => {
                tracing::error!(provider = %self.id, op, %error, "plugin call failed");
                match error {
                    CallError::Panicked { .. } => {
                        note_plugin_fault();
                        Error::internal("the provider plugin failed; the provider was restarted")
                    }
                    CallError::Provider(e) => match e.kind {
                        ErrorKind::InvalidClaims => Error::invalid_id_token(),
                        ErrorKind::InvalidProfile => Error::provider(e.message),
                        ErrorKind::InvalidConfig => Error::internal(format!(
                            "provider `{}` is misconfigured: {}",
                            self.id, e.message
                        )),
                        ErrorKind::Other => Error::internal("the provider plugin failed"),
                    },
                    _ => Error::internal("the provider plugin failed"),
                }
            }
        }
    }
}
