//! The health of one upstream: up, or down for a window after a failure. While down,
//! no request is sent; when the window ends, one request (the probe) goes through and
//! the others still see "down" until it ends: success → up, failure → down again for
//! twice the window (capped), with jitter so that many mirrors do not probe in step.
//!
//! Invariant: at most one probe is in flight; a probe that is dropped without an
//! outcome (its future cancelled) hands the slot back, so the next request probes.
//! The mutex guards a few field writes and is never held across an await.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
enum State {
    Up,
    /// No request until `until`; `window` is the base (unjittered) length of this window.
    Down {
        until: Instant,
        window: Duration,
        cause: String,
    },
    /// The window ended and one request is finding out.
    Probing {
        window: Duration,
        cause: String,
    },
}

/// Why a request was not let through: the upstream is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused {
    pub cause: String,
    /// Until the window ends (zero while a probe is in flight).
    pub retry_in: Duration,
}

/// A state change worth a log line and a gauge update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    None,
    WentDown,
    CameUp,
}

pub(super) struct Health {
    min: Duration,
    max: Duration,
    state: Mutex<State>,
}

/// Permission to send one request; `probe` when it is the one half-open request.
pub(super) struct Ticket<'a> {
    health: &'a Health,
    probe: bool,
    settled: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            // Cancelled mid-probe: let the next request probe instead.
            let mut st = self.health.lock();
            if let State::Probing { window, cause } = &*st {
                *st = State::Down { until: Instant::now(), window: *window, cause: cause.clone() };
            }
        }
    }
}

impl Health {
    /// Windows start at `min` and double up to `max` (`max` below `min` means `min`).
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Health { min, max: max.max(min), state: Mutex::new(State::Up) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// May a request be sent now? The first request after a window becomes the probe.
    pub(super) fn admit(&self, now: Instant) -> Result<Ticket<'_>, Refused> {
        let mut st = self.lock();
        let probe = match &*st {
            State::Up => false,
            State::Down { until, cause, .. } if now < *until => {
                return Err(Refused { cause: cause.clone(), retry_in: *until - now });
            }
            State::Down { window, cause, .. } => {
                *st = State::Probing { window: *window, cause: cause.clone() };
                true
            }
            State::Probing { cause, .. } => {
                return Err(Refused { cause: cause.clone(), retry_in: Duration::ZERO });
            }
        };
        Ok(Ticket { health: self, probe, settled: false })
    }

    /// Is it down right now (a request would be refused)? Takes no probe slot.
    pub(super) fn refused(&self, now: Instant) -> Option<Refused> {
        match &*self.lock() {
            State::Down { until, cause, .. } if now < *until => {
                Some(Refused { cause: cause.clone(), retry_in: *until - now })
            }
            State::Up | State::Down { .. } => None,
            State::Probing { cause, .. } => Some(Refused { cause: cause.clone(), retry_in: Duration::ZERO }),
        }
    }

    /// The upstream answered.
    pub(super) fn succeeded(&self, mut t: Ticket<'_>) -> Change {
        t.settled = true;
        let mut st = self.lock();
        if matches!(*st, State::Up) {
            return Change::None;
        }
        *st = State::Up;
        Change::CameUp
    }

    /// The upstream failed with `cause`. Returns the time left in the (new or current)
    /// window; `floor` (an upstream's `Retry-After`) lengthens a new window.
    pub(super) fn failed(
        &self,
        mut t: Ticket<'_>,
        cause: &str,
        floor: Option<Duration>,
        now: Instant,
    ) -> (Duration, Change) {
        t.settled = true;
        let mut st = self.lock();
        let window = match &*st {
            State::Up => self.min,
            State::Probing { window, .. } if t.probe => window.saturating_mul(2).min(self.max),
            // Another request already marked it down (or is probing): keep that window.
            State::Down { until, .. } => return (until.saturating_duration_since(now), Change::None),
            State::Probing { .. } => return (Duration::ZERO, Change::None),
        };
        let len = jitter(window).max(floor.unwrap_or_default());
        *st = State::Down { until: now + len, window, cause: cause.to_owned() };
        (len, Change::WentDown)
    }
}

/// `window` ± 10 %.
fn jitter(window: Duration) -> Duration {
    window.mul_f64(rand::random_range(0.9..=1.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(60);

    fn within(d: Duration, base: Duration) -> bool {
        d >= base.mul_f64(0.89) && d <= base.mul_f64(1.11)
    }

    #[test]
    fn a_failure_opens_a_window_that_doubles_on_each_failed_probe_up_to_the_cap() {
        let h = Health::new(MIN, MAX);
        let mut now = Instant::now();
        let t = h.admit(now).expect("up");
        let (left, ch) = h.failed(t, "refused", None, now);
        assert_eq!(ch, Change::WentDown);
        assert!(within(left, MIN), "{left:?}");
        let mut base = MIN;
        for _ in 0..6 {
            assert!(h.admit(now).is_err(), "inside the window");
            now += left.max(Duration::from_secs(70));
            let probe = h.admit(now).expect("the window ended: a probe");
            assert!(probe.probe);
            // Meanwhile, everyone else is refused.
            assert_eq!(h.admit(now).err().map(|r| r.retry_in), Some(Duration::ZERO));
            let (l, ch) = h.failed(probe, "refused", None, now);
            assert_eq!(ch, Change::WentDown);
            base = (base * 2).min(MAX);
            assert!(within(l, base), "{l:?} for a base of {base:?}");
        }
        assert_eq!(base, MAX);
    }

    #[test]
    fn a_successful_probe_brings_it_up_and_the_next_failure_starts_small_again() {
        let h = Health::new(MIN, MAX);
        let now = Instant::now();
        let (left, _) = h.failed(h.admit(now).expect("up"), "x", None, now);
        let later = now + left;
        let probe = h.admit(later).expect("probe");
        assert_eq!(h.succeeded(probe), Change::CameUp);
        assert!(h.refused(later).is_none());
        let t = h.admit(later).expect("up");
        assert!(!t.probe);
        let (l, _) = h.failed(t, "x", None, later);
        assert!(within(l, MIN), "{l:?}");
    }

    #[test]
    fn concurrent_failures_do_not_stretch_the_window_and_a_floor_lengthens_it() {
        let h = Health::new(MIN, MAX);
        let now = Instant::now();
        let (a, b) = (h.admit(now).expect("up"), h.admit(now).expect("up"));
        let (l1, c1) = h.failed(a, "x", Some(Duration::from_secs(30)), now);
        assert!(l1 >= Duration::from_secs(30) && c1 == Change::WentDown);
        let (l2, c2) = h.failed(b, "y", None, now);
        assert_eq!((l2, c2), (l1, Change::None));
        assert_eq!(h.refused(now).map(|r| r.cause), Some("x".to_owned()));
    }

    #[test]
    fn a_dropped_probe_hands_the_slot_to_the_next_request() {
        let h = Health::new(MIN, MAX);
        let now = Instant::now();
        let (left, _) = h.failed(h.admit(now).expect("up"), "x", None, now);
        let later = now + left;
        drop(h.admit(later).expect("probe"));
        let again = h.admit(Instant::now().max(later)).expect("a new probe");
        assert!(again.probe);
    }
}
