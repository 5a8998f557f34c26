//! The fault-injection seam: the blob store asks a `FaultHook` before each write, fsync
//! and rename, so tests can fail the Nth operation or report ENOSPC without mocking the
//! filesystem. Production uses `NoFaults`.

use std::io;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsOp {
    Write,
    Fsync,
    Rename,
}

pub trait FaultHook: Send + Sync {
    /// Return an error to make the operation fail as if the filesystem had.
    fn check(&self, op: FsOp) -> io::Result<()>;
}

pub struct NoFaults;

impl FaultHook for NoFaults {
    fn check(&self, _op: FsOp) -> io::Result<()> {
        Ok(())
    }
}
