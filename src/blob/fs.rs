//! The fault-injection seam: the blob store asks a `FaultHook` before each write, fsync
//! and rename, so tests can fail the Nth operation or report ENOSPC without mocking the
//! filesystem, and tells it what each fsync is about to make durable, so a power-loss
//! test can keep a "durable image" beside the real files. Production uses `NoFaults`.

use std::io;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsOp {
    Write,
    Fsync,
    Rename,
}

/// What an fsync is about to make durable.
#[derive(Debug, Clone, Copy)]
pub enum SyncTarget<'a> {
    /// The data of the file at this path (as it is now).
    File(&'a Path),
    /// The entries of this directory (as they are now).
    Dir(&'a Path),
}

pub trait FaultHook: Send + Sync {
    /// Return an error to make the operation fail as if the filesystem had.
    fn check(&self, op: FsOp) -> io::Result<()>;

    /// Called right before an fsync of `target`, once no other change to it is in
    /// flight: whatever the target holds now is durable once the fsync returns.
    /// Observers only; the default does nothing.
    fn before_sync(&self, _target: SyncTarget<'_>) {}
}

pub struct NoFaults;

impl FaultHook for NoFaults {
    fn check(&self, _op: FsOp) -> io::Result<()> {
        Ok(())
    }
}
