//! A redb `StorageBackend` that keeps what it was given in memory and makes it
//! "durable" only at `sync_data`: the power-loss tests read the durable image back as
//! the `meta.redb` a power cut would have left (unsynced writes dropped).

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

/// Asked at each `sync_data`: `true` while the power is on (the sync makes the current
/// image durable), `false` once it was cut (the sync changes nothing durable).
pub type SyncGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// The in-memory backend with a volatile and a durable image. Cheap to clone: clones
/// share the images, so a test keeps one to read the durable image after the cut.
#[derive(Clone)]
pub struct VolatileBackend {
    inner: Arc<Inner>,
}

struct Inner {
    volatile: Mutex<Vec<u8>>,
    durable: Mutex<Vec<u8>>,
    gate: SyncGate,
}

impl std::fmt::Debug for VolatileBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolatileBackend").finish_non_exhaustive()
    }
}

impl VolatileBackend {
    /// Start from `image` (durable and volatile alike), consulting `gate` at each sync.
    pub fn new(image: Vec<u8>, gate: SyncGate) -> Self {
        let inner = Inner { volatile: Mutex::new(image.clone()), durable: Mutex::new(image), gate };
        VolatileBackend { inner: Arc::new(inner) }
    }

    /// The bytes as of the last sync the gate let through.
    pub fn durable_image(&self) -> Vec<u8> {
        self.inner.durable.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn volatile(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.inner.volatile.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the storage")
}

impl redb::StorageBackend for VolatileBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.volatile().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let v = self.volatile();
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(out.len()).ok_or_else(out_of_range)?;
        let src = v.get(start..end).ok_or_else(out_of_range)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        self.volatile().resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let v = self.volatile();
        if (self.inner.gate)() {
            let mut d = self.inner.durable.lock().unwrap_or_else(PoisonError::into_inner);
            d.clear();
            d.extend_from_slice(&v);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut v = self.volatile();
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
        let end = start.checked_add(data.len()).ok_or_else(|| io::Error::other("offset too large"))?;
        if v.len() < end {
            v.resize(end, 0);
        }
        v[start..end].copy_from_slice(data);
        Ok(())
    }
}
