//! In-process singleflight: concurrent callers asking for one key share one execution.
//! The leader's work runs in a detached task, so it completes even when the caller
//! that started it hangs up; every caller (the first included) awaits its result.
//!
//! May import: tokio.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// A map from key to the flight in progress for it.
pub struct Flights<K, V> {
    map: Mutex<HashMap<K, watch::Receiver<Option<V>>>>,
}

/// The leader task ended without a value (it panicked or was cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost;

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights { map: Mutex::new(HashMap::new()) }
    }
}

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Run `work` for `key` unless a flight for it is already in progress, and return
    /// its value. The flag is true for the caller that started the flight.
    pub async fn run<F, Fut>(self: &Arc<Self>, key: K, work: F) -> (Result<V, Lost>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (mut rx, leader) = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get(&key) {
                Some(rx) => (rx.clone(), false),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let fut = work();
                    let me = self.clone();
                    tokio::spawn(async move {
                        let v = fut.await;
                        let _ = tx.send(Some(v));
                        me.map.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                    });
                    (rx, true)
                }
            }
        };
        let r = rx.wait_for(Option::is_some).await;
        let v = match r {
            Ok(v) => v.clone().ok_or(Lost),
            Err(_) => Err(Lost),
        };
        (v, leader)
    }

    /// Flights in progress.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_execution() {
        let flights: Arc<Flights<&'static str, u32>> = Arc::new(Flights::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut handles = Vec::new();
        for _ in 0..20 {
            let f = flights.clone();
            let runs = runs.clone();
            let gate = gate.clone();
            handles.push(tokio::spawn(async move {
                f.run("k", move || async move {
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
}
