//! `Cache`: what eviction of mirrored content needs to remember — the reads of
//! mirrored blobs since the last `flush` (in memory; `flush` moves them in meta's
//! eviction order) — and the lock that keeps one
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

    /// Forget evicted blobs.
    pub(super) fn forget(&self, gone: &[Digest]) {
        let mut a = self.lock();
        for d in gone {
            a.remove(d);
        }
    }

    /// Persist access times noted since the last flush, in one transaction, which also
    /// moves those blobs in meta's eviction order. The map holds only what was read
    /// since the last flush (it is drained), not every blob.
    pub(super) async fn flush(&self) -> Result<usize, Error> {
        let dirty: Vec<(Digest, u64)> =
            self.lock().drain().filter(|(_, (_, dirty))| *dirty).map(|(d, (t, _))| (d, t)).collect();
        let n = dirty.len();
        if n > 0 {
            self.meta.record_access(dirty).await?;
        }
        Ok(n)
    }
}
