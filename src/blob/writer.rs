//! A staging area being written: the file, and the sha256 and blake3 states of every
//! byte in it, updated as the bytes arrive (never a second pass at commit).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::fs::{FaultHook, FsOp};
use super::layout::Layout;
use super::Committed;
use crate::digest::Digest;

pub struct Staging {
    id: String,
    path: PathBuf,
    file: File,
    sha256: Sha256,
    blake3: blake3::Hasher,
    len: u64,
    hook: Arc<dyn FaultHook>,
}

impl Staging {
    pub(super) fn create(layout: &Layout, id: &str, hook: Arc<dyn FaultHook>) -> io::Result<Self> {
        std::fs::create_dir_all(layout.staging_dir(id))?;
        let path = layout.staging_file(id);
        let file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
        Ok(Staging {
            id: id.to_owned(),
            path,
            file,
            sha256: Sha256::new(),
            blake3: blake3::Hasher::new(),
            len: 0,
            hook,
        })
    }

    pub(super) fn reopen(layout: &Layout, id: &str, hook: Arc<dyn FaultHook>) -> io::Result<Option<Self>> {
        let path = layout.staging_file(id);
        let mut file = match OpenOptions::new().read(true).append(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut sha256 = Sha256::new();
        let mut blake3 = blake3::Hasher::new();
        let len = super::read_all(&mut file, |b| {
            sha256.update(b);
            blake3.update(b);
        })?;
        Ok(Some(Staging { id: id.to_owned(), path, file, sha256, blake3, len, hook }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append and hash. On error the file may hold a prefix of `buf`; the length and
    /// hashes then no longer describe it, so the caller must discard this staging.
    pub fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.hook.check(FsOp::Write)?;
        self.file.write_all(buf)?;
        self.sha256.update(buf);
        self.blake3.update(buf);
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Close for writing: the file, its path, its sha256 digest, and what a commit
    /// records.
    pub(super) fn finish(self) -> (File, PathBuf, Digest, Committed) {
        let digest = Digest::from_sha256(self.sha256.finalize().into());
        let committed = Committed { size: self.len, blake3: self.blake3.finalize().to_hex().to_string() };
        (self.file, self.path, digest, committed)
    }
}
