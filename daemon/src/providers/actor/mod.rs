//! A provider actor: one per provider instance. It owns what changes while its instance
//! serves (the resolved endpoints, the issuer's key set, the circuit breaker, the login rate
//! limiter and the client-secret JWT it signs) and changes it only in its handlers; the
//! [`Instance`] it serves is fixed for its life (a configuration change starts a new actor).
//!
//! The mailbox never waits on the network: a request is checked against that state in the
//! handler, then runs in a task that answers through its reply port and reports back to the
//! actor (its outcome, for the breaker; a fetched key set). Discovery and JWKS fetches run
//! once however many requests need them: the others wait in the actor's state. A task that
//! sees a panic (ours or the plugin's) or a plugin call overrun asks the supervisor to replace
//! the actor *before* it answers, so the caller's next request reaches a fresh actor.
//!
//! An actor that is replaced (its instance changed, was deleted, or it is restarted) is told
//! to retire: new requests already go to its successor, and it stops once the work it
//! started is done, so a callback in flight keeps the keys and endpoints it needs.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use jsonwebtoken::jwk::JwkSet;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use secrecy::SecretString;
use tracing::Instrument;

mod work;

use super::breaker::Breaker;
use super::http::ProviderTokens;
use super::instance::{
    watching_plugin_faults, CompleteArgs, Completed, DevicePoll, DeviceStarted, Health, Instance,
    LoginArgs, LoginStart, Resolved,
};
use super::oidc::{JwksState, KeySource};
use super::supervisor::SupervisorMsg;
use crate::error::{Error, ErrorCode};
use crate::login_state::fingerprint;
use work::{Counted, DeviceSlot, Running, Work};

/// Where a request's answer goes.
pub type Reply<T> = RpcReplyPort<Result<T, Error>>;

/// Messages to a provider actor.
#[derive(Debug)]
pub enum ProviderMsg {
    Login(Box<LoginArgs>, Reply<LoginStart>),
    Complete(Box<CompleteArgs>, Reply<Completed>),
    Refresh(SecretString, Reply<ProviderTokens>),
    Revoke(SecretString, &'static str, Reply<bool>),
    /// A device login's start: its scopes and whether it fetches groups.
    DeviceStart(Option<Vec<String>>, bool, Reply<DeviceStarted>),
    DevicePoll(Box<DevicePoll>, Reply<Completed>),
    Health(RpcReplyPort<Health>),
    /// From the actor's own tasks: discovery finished.
    Resolved(Result<Arc<Resolved>, Error>),
    /// From the actor's own tasks: the issuer's keys (`true`: a fresh set, the token names a
    /// key the cached one lacks).
    Keys(bool, Reply<Arc<JwkSet>>),
    /// From the actor's own tasks: a JWKS fetch finished.
    KeysFetched(Result<Arc<JwkSet>, Error>),
    /// From the actor's own tasks: how a request that reached for the provider fared.
    /// `admitted`: it went through the breaker (it may have been the probe).
    Outcome {
        admitted: bool,
        reached: bool,
    },
    /// From the supervisor: a successor serves the instance now; stop once the work in
    /// progress is done.
    Retire,
    /// From the actor's own tasks: the last work in progress ended while retiring.
    Drained,
}

/// Discovery, as the actor knows it.
#[derive(Debug)]
enum Discovery {
    /// Not yet (or the last attempt failed): the next request starts it.
    Unknown,
    /// In progress, with the requests waiting for it.
    Running(Vec<Work>),
    Ready(Arc<Resolved>),
}

pub(super) struct ProviderActor;

pub(super) struct ProviderState {
    instance: Arc<Instance>,
    /// The tasks it started that have not ended, and whether it is retiring.
    running: Arc<Running>,
    supervisor: ActorRef<SupervisorMsg>,
    discovery: Discovery,
    jwks: JwksState<Reply<Arc<JwkSet>>>,
    breaker: Breaker,
    /// Logins this instance may start per second.
    limiter: Option<governor::DefaultDirectRateLimiter>,
    /// The last client-secret JWT and when it expires.
    assertion: Option<(String, i64)>,
    /// Device logins being polled for ([`DeviceSlot`]).
    polling: Arc<AtomicUsize>,
    /// Turns true when the actor retires: its device polls stop (they may last many
    /// minutes, with the old configuration), and their callers ask its successor.
    retired: tokio::sync::watch::Sender<bool>,
    /// Where its calls to the provider are counted.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Actor for ProviderActor {
    type Msg = ProviderMsg;
    type State = ProviderState;
    type Arguments = (
        Arc<Instance>,
        ActorRef<SupervisorMsg>,
        Arc<crate::metrics::Metrics>,
    );

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (instance, supervisor, metrics): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let config = &instance.config;
        Ok(ProviderState {
            breaker: Breaker::new(
                config.circuit_failures,
                std::time::Duration::from_secs(config.circuit_open_secs),
            ),
            limiter: config
                .rate_limit_per_sec
                .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r))),
            instance,
            running: Arc::new(Running::default()),
            supervisor,
            discovery: Discovery::Unknown,
            jwks: JwksState::default(),
            assertion: None,
            polling: Arc::default(),
            retired: tokio::sync::watch::channel(false).0,
            metrics,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match message {
            ProviderMsg::Login(args, reply) => match state.admit_login(&args, now) {
                Ok(()) => state.dispatch(&myself, Work::Login(args, reply)),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            ProviderMsg::Complete(args, reply) => {
                // A login started by an instance deleted since (even if created again)
                // never finishes.
                if args.ticket.generation != fingerprint(&state.instance.generation) {
                    let _ = reply.send(Err(Error::invalid_state()));
                } else if state.breaker.admit(now).is_err() {
                    let _ = reply.send(Err(state.instance.circuit_open()));
                } else {
                    state.dispatch(&myself, Work::Complete(args, reply));
                }
            }
            ProviderMsg::Refresh(token, reply) => {
                if state.breaker.admit(now).is_err() {
                    let _ = reply.send(Err(state.instance.circuit_open()));
                } else {
                    state.dispatch(&myself, Work::Refresh(token, reply));
                }
            }
            ProviderMsg::Revoke(token, hint, reply) => {
                if state.breaker.admit(now).is_err() {
                    let _ = reply.send(Err(state.instance.circuit_open()));
                } else {
                    state.dispatch(&myself, Work::Revoke(token, hint, reply));
                }
            }
            ProviderMsg::DeviceStart(scopes, groups, reply) => {
                match state.admit_device(now).and_then(|()| state.device_slot()) {
                    Ok(_) => state.dispatch(&myself, Work::DeviceStart(scopes, groups, reply)),
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            ProviderMsg::DevicePoll(poll, reply) => {
                if poll.generation != fingerprint(&state.instance.generation) {
                    let _ = reply.send(Err(Error::invalid_state()));
                } else {
                    match state.device_slot() {
                        Ok(slot) => state.dispatch(&myself, Work::DevicePoll(poll, slot, reply)),
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
            }
            ProviderMsg::Health(reply) => {
                let (circuit, failures) = state.breaker.view(now);
                let _ = reply.send(state.instance.health(circuit, failures));
            }
            ProviderMsg::Resolved(result) => state.resolved(&myself, result, now),
            ProviderMsg::Keys(force, reply) => state.keys(&myself, force, reply, now),
            ProviderMsg::KeysFetched(result) => {
                for waiter in state.jwks.fetched(&result, now) {
                    let _ = waiter.send(result.clone());
                }
            }
            ProviderMsg::Outcome { admitted, reached } => {
                if admitted || !reached {
                    state.breaker.record(reached, now);
                }
            }
            ProviderMsg::Retire => {
                state.running.retiring.store(true, Ordering::Release);
                let _ = state.retired.send(true);
                if state.running.count.load(Ordering::Acquire) == 0 {
                    myself.stop(Some("replaced".into()));
                }
            }
            ProviderMsg::Drained => {
                if state.running.count.load(Ordering::Acquire) == 0 {
                    myself.stop(Some("replaced".into()));
                }
            }
        }
        Ok(())
    }
}

/// Runs a fetch whose result waiters depend on, turning a panic into an error so they always
/// hear back.
async fn unpanicked<T>(
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(Error::internal("the provider failed")))
}

/// [`unpanicked`], with its time and outcome counted as operation `operation` of the
/// instance `provider`.
async fn measured<T>(
    metrics: &crate::metrics::Metrics,
    provider: &str,
    operation: &str,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let began = Instant::now();
    let result = unpanicked(work).await;
    let code = result.as_ref().err().map(|e| e.code);
    metrics.provider_operation(provider, operation, code, began.elapsed().as_secs_f64());
    result
}

impl ProviderState {
    /// What a login must pass before anything reaches the provider: its own checks, the
    /// instance's rate limit, and a circuit that is not open (there is no point sending a
    /// user to a provider that fails).
    fn admit_login(&self, args: &LoginArgs, now: Instant) -> Result<(), Error> {
        self.instance.check_login(args)?;
        self.check_rate()?;
        self.breaker
            .check(now)
            .map_err(|_| self.instance.circuit_open())
    }

    /// The instance's login rate limit (logins and device starts share it).
    fn check_rate(&self) -> Result<(), Error> {
        match &self.limiter {
            Some(limiter) if limiter.check().is_err() => Err(Error::new(
                ErrorCode::RateLimited,
                format!(
                    "provider `{}` is over its login rate limit; retry shortly",
                    self.instance.id
                ),
            )),
            _ => Ok(()),
        }
    }

    /// What a device login's start must pass: the instance allows them, its login rate
    /// limit, and the breaker's admission (the start itself reaches the provider).
    fn admit_device(&mut self, now: Instant) -> Result<(), Error> {
        if !self.instance.config.device_flow {
            return Err(Error::bad_request(format!(
                "provider `{}` does not allow device logins (set `device_flow = true` on it)",
                self.instance.id
            )));
        }
        self.check_rate()?;
        self.breaker
            .admit(now)
            .map_err(|_| self.instance.circuit_open())
    }

    /// A place among the device logins polled for at once, or `rate_limited`.
    fn device_slot(&self) -> Result<DeviceSlot, Error> {
        let max = self.instance.config.max_device_logins;
        DeviceSlot::take(&self.polling, max).ok_or_else(|| {
            Error::new(
                ErrorCode::RateLimited,
                format!(
                    "provider `{}` is polling for {max} device logins already; retry later",
                    self.instance.id
                ),
            )
        })
    }

    /// Runs `work` once the endpoints are resolved, starting discovery if nobody has.
    fn dispatch(&mut self, myself: &ActorRef<ProviderMsg>, work: Work) {
        match &mut self.discovery {
            Discovery::Ready(resolved) => {
                let resolved = resolved.clone();
                self.run(myself, work, resolved);
            }
            Discovery::Running(waiting) => waiting.push(work),
            Discovery::Unknown => {
                self.discovery = Discovery::Running(vec![work]);
                let instance = self.instance.clone();
                let myself = myself.clone();
                let counted = Counted::new(&self.running, &myself);
                let metrics = self.metrics.clone();
                tokio::spawn(
                    async move {
                        let work = instance.resolve();
                        let result = measured(&metrics, &instance.id, "discovery", work)
                            .await
                            .map(Arc::new);
                        let _ = myself.cast(ProviderMsg::Resolved(result));
                        drop(counted);
                    }
                    .instrument(span(&self.instance)),
                );
            }
        }
    }

    fn resolved(
        &mut self,
        myself: &ActorRef<ProviderMsg>,
        result: Result<Arc<Resolved>, Error>,
        now: Instant,
    ) {
        let waiting = match std::mem::replace(&mut self.discovery, Discovery::Unknown) {
            Discovery::Running(waiting) => waiting,
            other => {
                self.discovery = other;
                Vec::new()
            }
        };
        match result {
            Ok(resolved) => {
                self.discovery = Discovery::Ready(resolved.clone());
                for work in waiting {
                    self.run(myself, work, resolved.clone());
                }
            }
            Err(error) => {
                // One attempt, one outcome for the breaker: a provider that cannot be
                // reached counts against it; one that answered badly closes a probe.
                let reached = error.code != ErrorCode::ProviderUnavailable;
                if !reached || waiting.iter().any(Work::admitted) {
                    self.breaker.record(reached, now);
                }
                for work in waiting {
                    work.fail(error.clone());
                }
            }
        }
    }

    fn keys(
        &mut self,
        myself: &ActorRef<ProviderMsg>,
        force: bool,
        reply: Reply<Arc<JwkSet>>,
        now: Instant,
    ) {
        if let Some(keys) = self.jwks.cached(force, now) {
            let _ = reply.send(Ok(keys));
            return;
        }
        let uri = match &self.discovery {
            Discovery::Ready(resolved) => resolved.jwks_uri.clone(),
            _ => None,
        };
        let Some(uri) = uri else {
            let _ = reply.send(Err(Error::internal("the provider has no JWKS")));
            return;
        };
        if self.jwks.wait(force, reply) {
            let instance = self.instance.clone();
            let myself = myself.clone();
            let counted = Counted::new(&self.running, &myself);
            let metrics = self.metrics.clone();
            tokio::spawn(
                async move {
                    let work = instance.fetch_jwks(&uri);
                    let result = measured(&metrics, &instance.id, "jwks", work).await;
                    let _ = myself.cast(ProviderMsg::KeysFetched(result));
                    drop(counted);
                }
                .instrument(span(&self.instance)),
            );
        }
    }

    /// Runs one request in a task of its own; a login the plugin already gave parameters
    /// for is only computation, answered here.
    fn run(&mut self, myself: &ActorRef<ProviderMsg>, work: Work, resolved: Arc<Resolved>) {
        let work = match work {
            Work::Login(args, reply) => match self.instance.remembered_params(&args) {
                Some(params) => {
                    // Computation only; a panic in it is answered, not the actor's end.
                    let instance = &self.instance;
                    let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        instance.authorize(&resolved, *args, &params)
                    }))
                    .unwrap_or_else(|_| {
                        tracing::error!(provider = %instance.id, "starting a login panicked");
                        Err(Error::internal("the login could not be started"))
                    });
                    let _ = reply.send(started);
                    return;
                }
                None => Work::Login(args, reply),
            },
            other => other,
        };
        let task = Task {
            instance: self.instance.clone(),
            myself: myself.clone(),
            supervisor: self.supervisor.clone(),
            counted: Counted::new(&self.running, myself),
            metrics: self.metrics.clone(),
            operation: work.operation(),
        };
        match work {
            Work::Login(args, reply) => task.spawn(false, reply, move |instance| async move {
                instance.start_login(&resolved, *args).await
            }),
            Work::Complete(args, reply) => {
                let assertion = match self.instance.assertion(&mut self.assertion) {
                    Ok(assertion) => assertion,
                    Err(error) => return fail_admitted(myself, reply, error),
                };
                let keys = ActorKeys(myself.clone());
                task.spawn(true, reply, move |instance| async move {
                    instance.complete(&resolved, &keys, assertion, *args).await
                });
            }
            Work::Refresh(token, reply) => {
                let assertion = match self.instance.assertion(&mut self.assertion) {
                    Ok(assertion) => assertion,
                    Err(error) => return fail_admitted(myself, reply, error),
                };
                task.spawn(true, reply, move |instance| async move {
                    instance.refresh(&resolved, assertion, token).await
                });
            }
            Work::Revoke(token, hint, reply) => {
                task.spawn(true, reply, move |instance| async move {
                    instance.revoke(&resolved, token, hint).await
                });
            }
            Work::DeviceStart(scopes, groups, reply) => {
                task.spawn(true, reply, move |instance| async move {
                    instance.device_authorize(&resolved, scopes, groups).await
                });
            }
            Work::DevicePoll(poll, slot, reply) => {
                let assertion = match self.instance.assertion(&mut self.assertion) {
                    Ok(assertion) => assertion,
                    Err(error) => return fail_admitted(myself, reply, error),
                };
                let keys = ActorKeys(myself.clone());
                let mut retired = self.retired.subscribe();
                task.spawn(false, reply, move |instance| async move {
                    let _slot = slot;
                    tokio::select! {
                        done = instance.device_complete(&resolved, &keys, assertion, *poll) => done,
                        _ = retired.wait_for(|r| *r) => Err(Error::unavailable(
                            "the provider instance was replaced; polling again",
                        )),
                    }
                });
            }
        }
    }
}

/// Answers an admitted request that failed before reaching the provider; the breaker hears
/// that the provider was not the problem.
fn fail_admitted<T>(myself: &ActorRef<ProviderMsg>, reply: Reply<T>, error: Error) {
    let _ = myself.cast(ProviderMsg::Outcome {
        admitted: true,
        reached: true,
    });
    let _ = reply.send(Err(error));
}

/// The provider's span: every log line of its work carries its id and kind.
fn span(instance: &Instance) -> tracing::Span {
    tracing::info_span!("provider", provider.id = %instance.id, provider.kind = %instance.kind())
}

/// The issuer's keys, from the actor that holds them.
struct ActorKeys(ActorRef<ProviderMsg>);

impl KeySource for ActorKeys {
    async fn keys(&self, force: bool) -> Result<Arc<JwkSet>, Error> {
        ractor::call!(self.0, ProviderMsg::Keys, force).unwrap_or_else(|_| {
            Err(Error::unavailable(
                "the provider was restarted meanwhile; try again",
            ))
        })
    }
}

/// One request's work, run off the actor's mailbox.
struct Task {
    instance: Arc<Instance>,
    myself: ActorRef<ProviderMsg>,
    supervisor: ActorRef<SupervisorMsg>,
    counted: Counted,
    metrics: Arc<crate::metrics::Metrics>,
    /// Its name in metrics.
    operation: &'static str,
}

impl Task {
    /// Spawns `work` inside the provider's span. Its result (or `internal` for a panic)
    /// goes to `reply`, after its outcome went to the actor and, when a plugin call
    /// misbehaved, after the actor was replaced.
    fn spawn<T, F, Fut>(self, admitted: bool, reply: Reply<T>, work: F)
    where
        T: Send + 'static,
        F: FnOnce(Arc<Instance>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    {
        let span = span(&self.instance);
        tokio::spawn(
            async move {
                let began = Instant::now();
                let work = AssertUnwindSafe(work(self.instance.clone())).catch_unwind();
                let (result, plugin_fault) = watching_plugin_faults(work).await;
                let (result, panicked) = match result {
                    Ok(result) => (result, false),
                    Err(_) => (
                        Err(Error::internal("the provider failed; it was restarted")),
                        true,
                    ),
                };
                self.metrics.provider_operation(
                    &self.instance.id,
                    self.operation,
                    result.as_ref().err().map(|e| e.code),
                    began.elapsed().as_secs_f64(),
                );
                let reached =
                    !matches!(&result, Err(e) if e.code == ErrorCode::ProviderUnavailable);
                // Only what the breaker counts: a login that reached the provider tells it
                // nothing.
                if admitted || !reached {
                    let _ = self.myself.cast(ProviderMsg::Outcome { admitted, reached });
                }
                if panicked || plugin_fault {
                    tracing::error!(
                        provider = self.instance.id.as_str(),
                        "panic or stuck plugin call while serving; restarting"
                    );
                    let id = self.instance.id.clone();
                    let actor = self.myself.get_id();
                    let restart = self
                        .supervisor
                        .call(|port| SupervisorMsg::Restart(id, actor, port), None)
                        .await;
                    if restart.is_err() {
                        tracing::error!("could not ask the supervisor for a restart");
                    }
                }
                let _ = reply.send(result);
                drop(self.counted);
            }
            .instrument(span),
        );
    }
}
