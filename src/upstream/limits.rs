//! Limits on what the mirror asks of one upstream (`max_concurrent_fetches`,
//! `max_bytes_per_sec`): at most N fetches at once, the rest waiting in FIFO order
//! (tokio's semaphore is fair), and a token bucket that every blob body from the
//! upstream draws from. A wait here happens before a request is sent: it never counts
//! against the upstream's deadline or its health.
//!
//! A slot is one logical fetch, taken by the flight that does it (`service`): a blob
//! fill, a manifest fetch or tag revalidation, a referrers refresh, a warm-list
//! revalidation. Each flight takes one slot, first, and no request inside it takes
//! another, so a fetch never waits for a slot while holding one (no deadlock at any
//! `max_concurrent_fetches`, 1 included). Not in the client's send path, because:
//! - a blob's slot must last for its body, which streams long after `send` returns;
//! - a fill that resumes (a second GET with `Range`) or a revalidation that follows
//!   its HEAD with a GET would queue behind newer fetches between its own requests;
//! - leaving the queue when every client of the fetch went away needs the flight.
//!
//! Token requests (`auth.rs`) go to the token realm, not the registry, and take none.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The upstream's fetch slots, its byte budget, and what waiting for them cost.
pub struct Limits {
    slots: Option<Arc<Semaphore>>,
    max_slots: Option<usize>,
    bucket: Option<Arc<Bucket>>,
    /// Fetches waiting for a slot now.
    waiting: AtomicU64,
    /// Fetches that waited (or passed at once) for a slot, and their total wait.
    waits: AtomicU64,
    wait_micros: AtomicU64,
    /// Queued fetches whose every client went away before a slot came free.
    abandoned: AtomicU64,
}

/// A fetch slot, held for the whole fetch (a blob's body included); dropping it lets
/// the next queued fetch go.
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
}

/// Every client of a queued fetch went away: it left the queue without a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

/// What `/metrics` shows for one upstream's queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub depth: u64,
    pub waits: u64,
    pub wait_seconds: f64,
    pub abandoned: u64,
}

impl Limits {
    /// `max_concurrent` fetches at once (`None`: no limit); `bytes_per_sec` for blob
    /// bodies, shared by every fetch of this upstream (`None`: no limit).
    pub fn new(max_concurrent: Option<usize>, bytes_per_sec: Option<u64>) -> Self {
        Limits {
            slots: max_concurrent.map(|n| Arc::new(Semaphore::new(n.max(1)))),
            max_slots: max_concurrent,
            bucket: bytes_per_sec.filter(|r| *r > 0).map(|r| Arc::new(Bucket::new(r))),
            waiting: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            wait_micros: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
        }
    }

    /// Wait for a fetch slot, in arrival order, unless `gone` resolves first (every
    /// client of the fetch went away): then the fetch leaves the queue.
    pub async fn slot(&self, gone: impl Future<Output = ()>) -> Result<Slot, Abandoned> {
        let Some(sem) = &self.slots else { return Ok(Slot { _permit: None }) };
        // At once when a slot is free (not counted as queued).
        if let Ok(p) = sem.clone().try_acquire_owned() {
            self.waits.fetch_add(1, Relaxed);
            return Ok(Slot { _permit: Some(p) });
        }
        let t = Instant::now();
        self.waiting.fetch_add(1, Relaxed);
        let _queued = Queued(&self.waiting);
        let got = tokio::select! {
            p = sem.clone().acquire_owned() => p.ok(),
            () = gone => None,
        };
        let micros = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.waits.fetch_add(1, Relaxed);
        self.wait_micros.fetch_add(micros, Relaxed);
        match got {
            Some(p) => Ok(Slot { _permit: Some(p) }),
            None => {
                self.abandoned.fetch_add(1, Relaxed);
                Err(Abandoned)
            }
        }
    }

    pub fn stats(&self) -> QueueStats {
        #[allow(clippy::cast_precision_loss)] // microseconds fit an f64 exactly in practice
        let wait_seconds = self.wait_micros.load(Relaxed) as f64 / 1e6;
        QueueStats {
            depth: self.waiting.load(Relaxed),
            waits: self.waits.load(Relaxed),
            wait_seconds,
            abandoned: self.abandoned.load(Relaxed),
        }
    }

    /// The lowest rate a throttled body can be expected to keep up (`floor` without a
    /// byte limit): the mirror's slow-upstream guard must not break off a body that
    /// our own budget slows, shared by every fetch that may run at once.
    pub fn min_rate(&self, floor: u64) -> u64 {
        match &self.bucket {
            None => floor,
            Some(b) => {
                let share = b.rate / (2 * self.max_slots.unwrap_or(64).max(1) as u64);
                floor.min(share.max(1))
            }
        }
    }

    /// `body`, slowed to the byte budget.
    pub(super) fn throttle<S, E>(
        &self,
        body: S,
    ) -> std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, E>> + Send>>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Send + 'static,
    {
        let Some(bucket) = self.bucket.clone() else { return Box::pin(body) };
        Box::pin(body.then(move |r| {
            let wait = match &r {
                Ok(b) => bucket.take(b.len() as u64),
                Err(_) => Duration::ZERO,
            };
            async move {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                r
            }
        }))
    }
}

/// Leaves the queue count however the wait ends (a slot, the clients gone, cancelled).
struct Queued<'a>(&'a AtomicU64);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A token bucket in bytes that may go into debt: a chunk bigger than what is left is
/// let through after the wait that pays for it, so chunks of any size pass and the
/// long-run rate is `rate`. It holds at most `burst` (1/16 s of bytes, ≥ 16 KiB).
struct Bucket {
    rate: u64,
    burst: f64,
    /// (tokens, when counted).
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        #[allow(clippy::cast_precision_loss)] // a byte rate fits an f64 closely enough
        let burst = (rate as f64 / 16.0).max(16.0 * 1024.0);
        Bucket { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Take `n` bytes; how long to wait before sending them.
    #[allow(clippy::cast_precision_loss)] // byte counts fit an f64 closely enough
    fn take(&self, n: u64) -> Duration {
        let rate = self.rate as f64;
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let tokens = (s.0 + now.duration_since(s.1).as_secs_f64() * rate).min(self.burst) - n as f64;
        *s = (tokens, now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_pays_for_big_chunks_with_a_wait() {
        let b = Bucket::new(1024 * 1024);
        // The burst (64 KiB) passes at once; the next MiB costs about a second.
        assert_eq!(b.take(64 * 1024), Duration::ZERO);
        let w = b.take(1024 * 1024);
        assert!(w > Duration::from_millis(900) && w < Duration::from_millis(1100), "{w:?}");
    }

    #[tokio::test]
    async fn slots_queue_in_order_and_leave_when_the_client_goes() {
        let l = Arc::new(Limits::new(Some(1), None));
        let first = l.slot(std::future::pending()).await.expect("a free slot");
        // A waiter whose client goes away leaves the queue.
        let r = l.slot(tokio::time::sleep(Duration::from_millis(20))).await;
        assert!(r.is_err());
        assert_eq!(l.stats().depth, 0);
        assert_eq!(l.stats().abandoned, 1);
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.slot(std::future::pending()).await.is_ok() });
        for _ in 0..100 {
            if l.stats().depth == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(l.stats().depth, 1);
        drop(first);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("in time").expect("task"));
        assert_eq!(l.stats().depth, 0);
    }
}
