//! What an actor's tasks carry: the requests that wait for discovery ([`Work`]), the count
//! of tasks in progress that a retiring actor waits for ([`Counted`]), and the places among
//! the device logins polled for at once ([`DeviceSlot`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ractor::ActorRef;
use secrecy::SecretString;

use super::{ProviderMsg, Reply};
use crate::error::Error;
use crate::providers::http::ProviderTokens;
use crate::providers::instance::{
    CompleteArgs, Completed, DevicePoll, DeviceStarted, LoginArgs, LoginStart,
};

/// A request that needs the resolved endpoints.
#[derive(Debug)]
pub(super) enum Work {
    Login(Box<LoginArgs>, Reply<LoginStart>),
    Complete(Box<CompleteArgs>, Reply<Completed>),
    Refresh(SecretString, Reply<ProviderTokens>),
    Revoke(SecretString, &'static str, Reply<bool>),
    DeviceStart(Option<Vec<String>>, bool, Reply<DeviceStarted>),
    /// Holds its place among the device logins polled for until it ends.
    DevicePoll(Box<DevicePoll>, DeviceSlot, Reply<Completed>),
}

impl Work {
    /// Its name in metrics.
    pub(super) fn operation(&self) -> &'static str {
        match self {
            Work::Login(..) => "login",
            Work::Complete(..) => "callback",
            Work::Refresh(..) => "refresh",
            Work::Revoke(..) => "revoke",
            Work::DeviceStart(..) => "device_start",
            Work::DevicePoll(..) => "device_poll",
        }
    }

    /// Whether it went through the breaker's admission (a device poll, which may last many
    /// minutes, counts only when the provider cannot be reached).
    pub(super) fn admitted(&self) -> bool {
        !matches!(self, Work::Login(..) | Work::DevicePoll(..))
    }

    pub(super) fn fail(self, error: Error) {
        match self {
            Work::Login(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Work::Complete(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Work::Refresh(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Work::Revoke(_, _, reply) => {
                let _ = reply.send(Err(error));
            }
            Work::DeviceStart(_, _, reply) => {
                let _ = reply.send(Err(error));
            }
            Work::DevicePoll(_, _, reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// A place among the device logins an actor polls for at once (`max_device_logins`), given
/// back when dropped.
#[derive(Debug)]
pub(super) struct DeviceSlot(Arc<AtomicUsize>);

impl DeviceSlot {
    /// A place, unless all `max` are taken.
    pub(super) fn take(polling: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        polling
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(polling.clone()))
    }
}

impl Drop for DeviceSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The work an actor has in progress, shared with its tasks.
#[derive(Debug, Default)]
pub(super) struct Running {
    pub(super) count: AtomicUsize,
    pub(super) retiring: AtomicBool,
}

/// Counts one task for as long as it lives; the last one to end while the actor retires
/// tells it (also when the task panicked or was aborted).
pub(super) struct Counted {
    running: Arc<Running>,
    actor: ActorRef<ProviderMsg>,
}

impl Counted {
    pub(super) fn new(running: &Arc<Running>, actor: &ActorRef<ProviderMsg>) -> Self {
        running.count.fetch_add(1, Ordering::AcqRel);
        Self {
            running: running.clone(),
            actor: actor.clone(),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let last = self.running.count.fetch_sub(1, Ordering::AcqRel) == 1;
        if last && self.running.retiring.load(Ordering::Acquire) {
            let _ = self.actor.cast(ProviderMsg::Drained);
        }
    }
}
