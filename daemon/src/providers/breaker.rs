//! A circuit breaker per provider instance: after `threshold` consecutive failures to reach
//! the provider, requests are refused at once for `open_for`; then one request probes, and
//! its outcome closes the circuit or opens it again.
//!
//! It is part of its provider actor's state and changes only in the actor's handlers, so it
//! needs no lock.

use lanyard_proto::CircuitState;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else waits for its outcome.
    HalfOpen,
}

/// The circuit is open: the request was not attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open;

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            state: State::Closed { failures: 0 },
        }
    }

    /// May a request go to the provider now?
    pub fn admit(&mut self, now: Instant) -> Result<(), Open> {
        match self.state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Ok(())
            }
            State::Open { .. } | State::HalfOpen => Err(Open),
        }
    }

    /// Records an admitted request's outcome: `reached` is false when the provider could not
    /// be reached or failed (timeouts, 5xx, refused connections).
    pub fn record(&mut self, reached: bool, now: Instant) {
        self.state = match (self.state, reached) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            // The threshold reached, or the probe failed: open (again).
            (State::Closed { .. } | State::HalfOpen, false) => State::Open {
                until: now + self.open_for,
            },
            // Already open (a request admitted before it opened): keep the deadline.
            (open @ State::Open { .. }, false) => open,
        };
    }

    /// Refuses only while the circuit is open and cooling down, without taking the probe:
    /// for work that does not reach the provider itself (starting a login).
    pub fn check(&self, now: Instant) -> Result<(), Open> {
        match self.state {
            State::Open { until } if now < until => Err(Open),
            _ => Ok(()),
        }
    }

    /// The circuit for health reports: `closed`, `open` or `half_open` (a probe is out, or
    /// the next request will be one), and the failures counted towards opening it.
    pub fn view(&self, now: Instant) -> (CircuitState, u32) {
        match self.state {
            State::Closed { failures } => (CircuitState::Closed, failures),
            State::Open { until } if now < until => (CircuitState::Open, self.threshold),
            State::Open { .. } | State::HalfOpen => (CircuitState::HalfOpen, self.threshold),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_then_probes_once() {
        let mut breaker = Breaker::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..2 {
            breaker.admit(t0).unwrap();
            breaker.record(false, t0);
        }
        breaker.admit(t0).unwrap();
        breaker.record(true, t0);
        // A success resets the count.
        for _ in 0..3 {
            breaker.admit(t0).unwrap();
            breaker.record(false, t0);
        }
        assert_eq!(breaker.admit(t0), Err(Open));
        assert_eq!(breaker.admit(t0 + Duration::from_secs(9)), Err(Open));
        let later = t0 + Duration::from_secs(10);
        breaker.admit(later).unwrap();
        assert_eq!(breaker.admit(later), Err(Open), "one probe at a time");
        breaker.record(false, later);
        assert_eq!(
            breaker.admit(later + Duration::from_secs(5)),
            Err(Open),
            "re-opened"
        );
        assert_eq!(
            breaker.view(later + Duration::from_secs(5)),
            (CircuitState::Open, 3)
        );
        let again = later + Duration::from_secs(10);
        assert_eq!(
            breaker.view(again),
            (CircuitState::HalfOpen, 3),
            "a probe is due"
        );
        breaker.admit(again).unwrap();
        assert_eq!(breaker.view(again), (CircuitState::HalfOpen, 3));
        breaker.record(true, again);
        breaker.admit(again).unwrap();
        assert_eq!(breaker.view(again), (CircuitState::Closed, 0));
    }
}
