//! `Cache`: what eviction of mirrored content needs to remember — the last access of
//! each mirrored blob (in memory, persisted by `flush`) — and the lock that keeps one
//! eviction at a time. The eviction itself (`Registry::evict`, `gc.rs`) reads it.
//!
//! Owns: the access map. A `std::sync::Mutex` because it is held only to read or
//! update the map, never across an await.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::Error;
use crate::digest::Digest;
use crate::meta::Meta;

/// Milliseconds since the Unix epoch: access times need better than one-second
/// resolution, or every blob pulled within the same second ties in the LRU order.
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) struct Cache {
    meta: Meta,
    /// Last access (unix milliseconds, dirty flag) of mirrored blobs.
    access: Mutex<HashMap<Digest, (u64, bool)>>,
    /// One eviction at a time (each fill commit enforces the cap before it completes).
    pub(super) evicting: tokio::sync::Mutex<()>,
}

impl Cache {
    pub(super) fn new(meta: Meta) -> Self {
        Cache { meta, access: Mutex::new(HashMap::new()), evicting: tokio::sync::Mutex::new(()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, (u64, bool)>> {
        // A poisoned map only means a panic elsewhere mid-update; the map itself is fine.
        self.access.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Note a read of a mirrored blob (in memory; `flush` persists).
    pub(super) fn touch(&self, digest: &Digest) {
        self.lock().insert(digest.clone(), (now_millis(), true));
    }

    pub(super) fn last_access(&self, digest: &Digest) -> Option<u64> {
        self.lock().get(digest).map(|(t, _)| *t)
    }

    /// Forget evicted blobs.
    pub(super) fn forget(&self, gone: &[Digest]) {
        let mut a = self.lock();
        for d in gone {
            a.remove(d);
        }
    }

    /// Load persisted access times (unix milliseconds; startup).
    pub(super) fn load(&self) -> Result<(), Error> {
        let times = self.meta.access_times()?;
        let mut a = self.lock();
        for (d, t) in times {
            a.entry(d).or_insert((t, false));
        }
        Ok(())
    }

    /// Persist access times changed since the last flush, in one transaction.
    pub(super) async fn flush(&self) -> Result<usize, Error> {
        let dirty: Vec<(Digest, u64)> = self
            .lock()
            .iter_mut()
            .filter(|(_, (_, dirty))| *dirty)
            .map(|(d, (t, dirty))| {
                *dirty = false;
                (d.clone(), *t)
            })
            .collect();
        let n = dirty.len();
        if n > 0 {
            self.meta.record_access(dirty).await?;
        }
        Ok(n)
    }
}
