//! In-process singleflight with progress: concurrent callers asking for one key share
//! one execution. The leader's work runs in a detached task, so it completes even when
//! the caller that started it hangs up; every caller (the first included) watches its
//! progress (a `watch` channel) and awaits its result.
//!
//! Panic-safe: the detached task owns a guard whose `Drop` removes the map entry and,
//! if the work produced no value (it panicked or was cancelled), wakes every waiter
//! with [`Lost`]. A later caller for that key then starts a new flight.
//!
//! May import: tokio.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The leader task ended without a value (it panicked or was cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lost;

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the task doing this work ended without a result (it failed unexpectedly); retry")
    }
}

/// What every caller of a flight sees: the leader's progress, then its result.
#[derive(Debug, Clone)]
pub(crate) struct State<P, V> {
    pub progress: P,
    pub done: Option<Result<V, Lost>>,
}

/// A caller's view of a flight.
pub(crate) type Watch<P, V> = watch::Receiver<State<P, V>>;

/// The leader's handle for publishing progress.
pub(crate) struct Progress<P, V> {
    tx: Arc<watch::Sender<State<P, V>>>,
}

impl<P, V> Clone for Progress<P, V> {
    fn clone(&self) -> Self {
        Progress { tx: self.tx.clone() }
    }
}

impl<P, V> Progress<P, V> {
    /// Change the progress and wake every watcher.
    pub(crate) fn update(&self, f: impl FnOnce(&mut P)) {
        self.tx.send_modify(|s| f(&mut s.progress));
    }

    /// Read the current progress.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&P) -> T) -> T {
        f(&self.tx.borrow().progress)
    }

    /// Resolves once no caller watches the flight any more (every client went away):
    /// work that has not begun yet (a queued fetch) may then give up.
    pub(crate) async fn abandoned(&self) {
        self.tx.closed().await;
    }
}

/// How a caller joined.
pub(crate) enum Joined<P, V> {
    /// It started the flight.
    Leader(Watch<P, V>),
    /// It joined a flight in progress.
    Follower(Watch<P, V>),
    /// A flight is in progress but `admit` refused to join it.
    Refused,
}

/// The map holds the sender, not a receiver: a flight no caller watches any more is
/// seen as such (`Progress::abandoned`).
struct Entry<P, V> {
    id: u64,
    tx: Arc<watch::Sender<State<P, V>>>,
}

/// A map from key to the flight in progress for it.
pub(crate) struct Flights<K, P, V> {
    map: Mutex<HashMap<K, Entry<P, V>>>,
    next_id: AtomicU64,
}

impl<K, P, V> Default for Flights<K, P, V> {
    fn default() -> Self {
        Flights { map: Mutex::new(HashMap::new()), next_id: AtomicU64::new(0) }
    }
}

/// Owned by the detached task: whatever way the task ends (value, panic, cancel), its
/// drop removes the entry and leaves a result for every waiter.
struct Guard<K: Hash + Eq, P, V> {
    flights: Arc<Flights<K, P, V>>,
    key: K,
    id: u64,
    tx: Arc<watch::Sender<State<P, V>>>,
}

impl<K: Hash + Eq, P, V> Guard<K, P, V> {
    /// Leave the map (if this flight is still the one there).
    fn leave(&self) {
        let mut map = self.flights.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&self.key).is_some_and(|e| e.id == self.id) {
            map.remove(&self.key);
        }
    }

    /// The work's result: leave the map first, then publish, so that no request that
    /// arrives after a waiter has seen the result can join this finished flight.
    fn complete(self, v: V) {
        self.leave();
        self.tx.send_modify(|s| s.done = Some(Ok(v)));
    }
}

impl<K: Hash + Eq, P, V> Drop for Guard<K, P, V> {
    fn drop(&mut self) {
        self.leave();
        self.tx.send_if_modified(|s| {
            if s.done.is_some() {
                return false;
            }
            s.done = Some(Err(Lost));
            true
        });
    }
}

impl<K, P, V> Flights<K, P, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    P: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Join the flight for `key` if `admit` accepts its progress, or start one: `init`
    /// is its first progress and `work` runs detached, publishing through `Progress`.
    pub(crate) fn join<F, Fut>(
        self: &Arc<Self>,
        key: K,
        admit: impl FnOnce(&P) -> bool,
        init: impl FnOnce() -> P,
        work: F,
    ) -> Joined<P, V>
    where
        F: FnOnce(Progress<P, V>) -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = map.get(&key) {
            let rx = e.tx.subscribe();
            let admitted = admit(&rx.borrow().progress);
            return if admitted { Joined::Follower(rx) } else { Joined::Refused };
        }
        let (tx, rx) = watch::channel(State { progress: init(), done: None });
        let tx = Arc::new(tx);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key.clone(), Entry { id, tx: tx.clone() });
        drop(map);
        // Created before the task so that even a task that never runs cleans up.
        let guard = Guard { flights: self.clone(), key, id, tx: tx.clone() };
        let fut = work(Progress { tx });
        tokio::spawn(async move {
            let guard = guard;
            let v = fut.await;
            guard.complete(v);
        });
        Joined::Leader(rx)
    }

    /// Flights in progress (the unit tests' view of the map).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K, V> Flights<K, (), V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Run `work` for `key` unless a flight for it is already in progress, and return
    /// its value. The flag is true for the caller that started the flight. `work` gets
    /// the flight's handle (to see `abandoned`: every upstream fetch queues for a slot).
    pub(crate) async fn run_with<F, Fut>(self: &Arc<Self>, key: K, work: F) -> (Result<V, Lost>, bool)
    where
        F: FnOnce(Progress<(), V>) -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        match self.join(key, |()| true, || (), work) {
            Joined::Leader(rx) => (finished(rx).await, true),
            Joined::Follower(rx) => (finished(rx).await, false),
            // `admit` above accepts every flight.
            Joined::Refused => (Err(Lost), false),
        }
    }
}

/// Wait for a flight's result.
pub(crate) async fn finished<P, V: Clone>(mut rx: Watch<P, V>) -> Result<V, Lost> {
    match rx.wait_for(|s| s.done.is_some()).await {
        Ok(s) => s.done.clone().unwrap_or(Err(Lost)),
        Err(_) => Err(Lost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn concurrent_callers_share_one_execution() {
        let flights: Arc<Flights<&'static str, (), u32>> = Arc::new(Flights::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut handles = Vec::new();
        for _ in 0..20 {
            let f = flights.clone();
            let runs = runs.clone();
            let gate = gate.clone();
            handles.push(tokio::spawn(async move {
                f.run_with("k", move |_| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    7
                })
                .await
            }));
        }
        // Every caller has joined once the one flight is registered and they all wait.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        let mut leaders = 0;
        for h in handles {
            let (v, leader) = h.await.expect("task");
            assert_eq!(v, Ok(7));
            leaders += usize::from(leader);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert!(flights.is_empty());
    }

    /// A finished flight is out of the map before anyone sees its result, so a request
    /// made after that (the same client's next one) runs the work again instead of
    /// taking the old answer. Before, the result was published first: on a multi-thread
    /// runtime the waiter could answer its client, and the client's next request join
    /// the finished entry, in the moment before it was removed (a mirror then answered
    /// a repeated manifest GET with the previous 404 without asking the upstream).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finished_flight_is_gone_before_its_result_is_seen() {
        let flights: Arc<Flights<&'static str, (), u32>> = Arc::new(Flights::default());
        for i in 0..200u32 {
            let (v, leader) = flights.run_with("k", move |_| async move { i }).await;
            assert_eq!((v, leader), (Ok(i), true), "round {i}: a new flight, its own result");
            assert!(flights.is_empty(), "round {i}: the finished flight left the map first");
        }
    }

    /// A leader that panics: every waiter gets `Lost` (none hangs), the entry is gone,
    /// and the next caller for the key starts a new flight that succeeds.
    #[tokio::test]
    async fn a_panicking_leader_wakes_waiters_and_frees_the_key() {
        let flights: Arc<Flights<&'static str, u32, u32>> = Arc::new(Flights::default());
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let Joined::Leader(leader) = flights.join(
            "k",
            |_| true,
            || 0,
            move |p: Progress<u32, u32>| async move {
                p.update(|n| *n = 1);
                g.notified().await;
                panic!("the fill broke on purpose");
            },
        ) else {
            panic!("the first caller leads");
        };
        let mut followers = Vec::new();
        for _ in 0..5 {
            match flights.join("k", |_| true, || 0, |_| async { 0 }) {
                Joined::Follower(rx) => followers.push(rx),
                _ => panic!("later callers follow"),
            }
        }
        assert_eq!(flights.len(), 1);
        gate.notify_one();
        let deadline = std::time::Duration::from_secs(10);
        assert_eq!(tokio::time::timeout(deadline, finished(leader)).await, Ok(Err(Lost)));
        for rx in followers {
            assert_eq!(tokio::time::timeout(deadline, finished(rx)).await, Ok(Err(Lost)));
        }
        assert!(flights.is_empty(), "the panicked flight's entry is gone");
        let Joined::Leader(rx) = flights.join("k", |_| true, || 0, |_| async { 9 }) else {
            panic!("the next caller starts a new flight");
        };
        assert_eq!(tokio::time::timeout(deadline, finished(rx)).await, Ok(Ok(9)));
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn admit_refuses_and_progress_is_seen() {
        let flights: Arc<Flights<u8, &'static str, ()>> = Arc::new(Flights::default());
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        let Joined::Leader(_rx) = flights.join(
            1,
            |_| true,
            || "repo-a",
            move |_| async move {
                g.notified().await;
            },
        ) else {
            panic!("leads");
        };
        assert!(matches!(flights.join(1, |r| *r == "repo-b", || "repo-b", |_| async {}), Joined::Refused));
        assert!(matches!(
            flights.join(1, |r| *r == "repo-a", || "repo-a", |_| async {}),
            Joined::Follower(_)
        ));
        gate.notify_one();
    }
}
