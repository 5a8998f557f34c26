//! `blob/`: content-addressed blob files and the staging areas that become them.
//!
//! May import: memmap2, sha2, blake3, digest, libc (`O_DIRECT`), tokio (its blocking
//! pool, for the async calls that service/ uses so that no filesystem call runs on an
//! async worker). Only this module knows blob paths or maps files.
//!
//! Invariants:
//! - A file under `blobs/` is complete, verified, fsynced, and never modified or
//!   truncated afterwards (GC may only unlink it). That is what makes mmap safe.
//! - Bytes reach `blobs/` only through [`BlobStore::commit`]: verify → fsync → rename →
//!   fsync the directory (Distribution's validate → move; the link is meta's commit).

mod fs;
mod growing;
mod layout;
mod writer;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::digest::Digest;
pub use fs::{FaultHook, FsOp, NoFaults, SyncTarget};
pub use growing::GrowingReader;
use layout::Layout;
use writer::DirectIo;
pub use writer::Staging;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("content digest {actual} does not match {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob storage I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Staged content whose digest matched and whose file is durable: ready to move into
/// place (see [`BlobStore::validate`]).
#[derive(Debug)]
pub struct Verified {
    id: String,
    path: PathBuf,
    digest: Digest,
    committed: Committed,
}

/// What a successful commit recorded about the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub size: u64,
    pub blake3: String,
}

/// Blobs up to this size are read into memory rather than mapped: for small files
/// open+read beats mmap+munmap (and its TLB shootdowns) several times over.
const SMALL_BLOB: u64 = 64 * 1024;

/// Budget of the open-blob cache: small blobs count their bytes, a mapping counts
/// `MAPPED_WEIGHT` (its pages belong to the page cache, not to us).
const CACHE_WEIGHT: u64 = 64 * 1024 * 1024;
const MAPPED_WEIGHT: u64 = 16 * 1024;

#[derive(Clone)]
struct BlobWeight;

impl quick_cache::Weighter<Digest, Bytes> for BlobWeight {
    fn weight(&self, _key: &Digest, val: &Bytes) -> u64 {
        let len = val.len() as u64;
        if len <= SMALL_BLOB {
            len.max(64)
        } else {
            MAPPED_WEIGHT
        }
    }
}

type OpenCache = quick_cache::sync::Cache<Digest, Bytes, BlobWeight>;

/// The blob store rooted at the data directory.
#[derive(Clone)]
pub struct BlobStore {
    layout: Arc<Layout>,
    hook: Arc<dyn FaultHook>,
    /// Recently served blobs, already read or mapped. Sound because blob files are
    /// immutable; whoever unlinks a blob file must `forget` it here.
    open: Arc<OpenCache>,
    /// Whether pushes' stagings may be written with `O_DIRECT` (until the file system
    /// refuses it once).
    direct: DirectIo,
}

impl BlobStore {
    /// Create the directory skeleton under `root`.
    pub fn open(root: PathBuf) -> io::Result<Self> {
        Self::with_hook(root, Arc::new(NoFaults))
    }

    /// Like `open`, with a fault-injection hook consulted before each write, fsync and
    /// rename.
    pub fn with_hook(root: PathBuf, hook: Arc<dyn FaultHook>) -> io::Result<Self> {
        let layout = Layout::new(root);
        // The skeleton's directory entries must be durable before the first commit
        // counts on them: a commit fsyncs only the shard and `blobs/sha256`.
        create_dir_durable(&layout.blobs_root(), hook.as_ref())?;
        create_dir_durable(&layout.uploads_root(), hook.as_ref())?;
        create_shards(&layout.blobs_root(), hook.as_ref())?;
        let open = OpenCache::with_weighter(4096, CACHE_WEIGHT, BlobWeight);
        Ok(BlobStore { layout: Arc::new(layout), hook, open: Arc::new(open), direct: DirectIo::default() })
    }

    /// Start a push's new, empty staging area `id` (written with `O_DIRECT` where the
    /// filesystem allows: nothing reads it before its commit).
    pub fn create_staging(&self, id: &str) -> io::Result<Staging> {
        Staging::create(&self.layout, id, self.hook.clone(), Some(&self.direct))
    }

    /// Reopen staging area `id` (after a restart or between `PATCH` requests), re-hashing what
    /// is already there. `None` when it does not exist.
    pub fn open_staging(&self, id: &str) -> io::Result<Option<Staging>> {
        Staging::reopen(&self.layout, id, self.hook.clone(), &self.direct)
    }

    /// A read handle on staging area `id`'s data file (followers of a fill read it as
    /// it grows; the handle stays valid across the rename at commit).
    pub fn open_staging_reader(&self, id: &str) -> io::Result<GrowingReader> {
        File::open(self.layout.staging_file(id)).map(GrowingReader::new)
    }

    /// Start a fill's staging area `id` and open its reader, on the blocking pool.
    pub async fn create_fill(&self, id: String) -> io::Result<(Staging, GrowingReader)> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            // Buffered: followers read the file as it grows.
            let staging = Staging::create(&me.layout, &id, me.hook.clone(), None)?;
            match me.open_staging_reader(&id) {
                Ok(r) => Ok((staging, r)),
                Err(e) => {
                    me.remove_staging(&id);
                    Err(e)
                }
            }
        })
        .await
        .map_err(io::Error::other)?
    }

    /// A guard that removes staging area `id` when dropped (on the blocking pool when a
    /// runtime is there): a fill task that panics leaves no staging behind. Harmless
    /// after a commit, which removes the staging itself.
    pub fn staging_cleanup(&self, id: &str) -> StagingCleanup {
        StagingCleanup { blobs: self.clone(), id: id.to_owned() }
    }

    /// `create_staging` on the blocking pool.
    pub async fn create_staging_blocking(&self, id: String) -> io::Result<Staging> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.create_staging(&id)).await.map_err(io::Error::other)?
    }

    /// `truncate_staging` (truncate + fsync) on the blocking pool.
    pub async fn truncate_staging_blocking(&self, id: String, len: u64) -> io::Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.truncate_staging(&id, len)).await.map_err(io::Error::other)?
    }

    /// `remove_staging` on the blocking pool.
    pub async fn remove_staging_blocking(&self, id: String) {
        let me = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || me.remove_staging(&id)).await {
            tracing::warn!(error = %e, "staging removal task failed");
        }
    }

    /// Cut staging area `id`'s data back to `len` bytes (undoing a rejected chunk).
    pub fn truncate_staging(&self, id: &str, len: u64) -> io::Result<()> {
        let path = self.layout.staging_file(id);
        let f = std::fs::OpenOptions::new().write(true).open(&path)?;
        f.set_len(len)?;
        self.hook.before_sync(SyncTarget::File(&path));
        f.sync_all()
    }

    /// Remove staging area `id`, if present.
    pub fn remove_staging(&self, id: &str) {
        let dir = self.layout.staging_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), error = %e, "cannot remove staging");
            }
        }
    }

    /// Whether staging area `id` has its data file.
    pub fn has_staging(&self, id: &str) -> bool {
        self.layout.staging_file(id).is_file()
    }

    /// Seconds since staging area `id` last changed (its data file's mtime).
    pub fn staging_idle_secs(&self, id: &str) -> Option<u64> {
        let meta = std::fs::metadata(self.layout.staging_file(id)).ok()?;
        meta.modified().ok()?.elapsed().ok().map(|d| d.as_secs())
    }

    /// Remove every staging area whose id `keep` rejects; returns how many went.
    pub fn clean_staging(&self, keep: impl Fn(&str) -> bool) -> io::Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(self.layout.uploads_root())? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !keep(&name) {
                let p = entry.path();
                let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                if let Err(e) = r {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove staging");
                } else {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Unlink every blob file whose digest `keep` rejects (files a crash or a failed
    /// commit left between the rename and the meta commit: complete, but rowless).
    /// Only safe when no commit is in flight, i.e. at startup. Returns how many went.
    pub fn clean_orphans(&self, keep: impl Fn(&Digest) -> bool) -> io::Result<usize> {
        let mut n = 0;
        let root = self.layout.blobs_root();
        for shard in std::fs::read_dir(&root)? {
            let shard = shard?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&shard)? {
                let p = entry?.path();
                let name = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                    continue; // not ours: leave it
                };
                if p.is_file() && d.hex() == name && !keep(&d) {
                    match std::fs::remove_file(&p) {
                        Ok(()) => n += 1,
                        Err(e) => {
                            tracing::warn!(path = %p.display(), error = %e, "cannot remove orphan blob");
                        }
                    }
                }
            }
        }
        Ok(n)
    }

    /// The commit protocol's file half: [`BlobStore::validate`] then
    /// [`BlobStore::move_into_place`]. The staging area is removed either way.
    pub fn commit(&self, staging: Staging, expected: &Digest) -> Result<Committed, BlobError> {
        let id = staging.id().to_owned();
        let r = self.validate(staging, expected).and_then(|v| self.move_into_place(v));
        self.remove_staging(&id);
        r
    }

    /// Commit step 1: close the staging, compare its digest with `expected`, fsync it.
    /// The staging area stays (the caller's cleanup removes it on failure).
    pub fn validate(&self, staging: Staging, expected: &Digest) -> Result<Verified, BlobError> {
        let id = staging.id().to_owned();
        let (file, path, actual, committed) = staging.finish()?;
        if &actual != expected {
            return Err(BlobError::DigestMismatch { expected: expected.clone(), actual });
        }
        self.hook.check(FsOp::Fsync)?;
        self.hook.before_sync(SyncTarget::File(&path));
        file.sync_all()?;
        Ok(Verified { id, path, digest: expected.clone(), committed })
    }

    /// Commit step 2: rename verified content into `blobs/` (an existing file is the
    /// same content and is kept) and fsync the directory; the staging area goes.
    pub fn move_into_place(&self, v: Verified) -> Result<Committed, BlobError> {
        let r = self.move_inner(&v);
        self.remove_staging(&v.id);
        r.map(|()| v.committed)
    }

    fn move_inner(&self, v: &Verified) -> Result<(), BlobError> {
        let dest = self.layout.blob_path(&v.digest);
        let dir = self.layout.blob_dir(&v.digest);
        if dest.exists() {
            // Same content, committed by another upload or fill that may not have
            // synced the shard yet: sync it before our row says the file is there, or a
            // power cut in between would leave that row without its file.
            self.hook.check(FsOp::Fsync)?;
            self.hook.before_sync(SyncTarget::Dir(&dir));
            fsync_dir(&dir)?;
            return Ok(());
        }
        let created_dir = !dir.exists();
        if created_dir {
            std::fs::create_dir_all(&dir)?;
        }
        self.hook.check(FsOp::Rename)?;
        std::fs::rename(&v.path, &dest)?;
        self.hook.check(FsOp::Fsync)?;
        self.hook.before_sync(SyncTarget::Dir(&dir));
        fsync_dir(&dir)?;
        if created_dir {
            if let Some(parent) = dir.parent() {
                self.hook.before_sync(SyncTarget::Dir(parent));
                fsync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// `validate` on the blocking pool.
    pub async fn validate_blocking(&self, staging: Staging, expected: Digest) -> Result<Verified, BlobError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.validate(staging, &expected))
            .await
            .map_err(|e| BlobError::Io(io::Error::other(e)))?
    }

    /// `move_into_place` on the blocking pool.
    pub async fn move_into_place_blocking(&self, v: Verified) -> Result<Committed, BlobError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.move_into_place(v))
            .await
            .map_err(|e| BlobError::Io(io::Error::other(e)))?
    }

    /// `exists` on the blocking pool (a `stat`).
    pub async fn exists_blocking(&self, digest: &Digest) -> bool {
        let (me, d) = (self.clone(), digest.clone());
        tokio::task::spawn_blocking(move || me.exists(&d)).await.unwrap_or(false)
    }

    /// `open_staging` on the blocking pool (it rehashes the file).
    pub async fn open_staging_blocking(&self, id: String) -> io::Result<Option<Staging>> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.open_staging(&id)).await.map_err(io::Error::other)?
    }

    /// `staging_idle_secs` on the blocking pool.
    pub async fn staging_idle_secs_blocking(&self, id: String) -> Option<u64> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.staging_idle_secs(&id)).await.ok().flatten()
    }

    /// Whether the blob file exists.
    pub fn exists(&self, digest: &Digest) -> bool {
        self.layout.blob_path(digest).exists()
    }

    /// The whole blob: read into memory when small, else mapped. Zero-length files
    /// yield empty bytes. Served from the open-blob cache when possible.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Bytes> {
        if let Some(b) = self.open.get(digest) {
            return Ok(b);
        }
        let mut file = File::open(self.layout.blob_path(digest))?;
        let len = file.metadata()?.len();
        let bytes = if len <= SMALL_BLOB {
            let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            io::Read::read_to_end(&mut file, &mut buf)?;
            Bytes::from(buf)
        } else {
            // SAFETY: files under blobs/ are immutable after commit (module invariant).
            unsafe { map_immutable(&file)? }
        };
        self.open.insert(digest.clone(), bytes.clone());
        Ok(bytes)
    }

    /// Unlink a blob's file (GC and eviction; the meta row is marked `deleting` first).
    /// Never truncates: readers holding a map keep valid bytes.
    pub fn remove_blob(&self, digest: &Digest) -> io::Result<()> {
        self.forget(digest);
        match std::fs::remove_file(self.layout.blob_path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Move a corrupt blob file aside into `quarantine/` (verify).
    pub fn quarantine(&self, digest: &Digest) -> io::Result<PathBuf> {
        self.forget(digest);
        let dir = self.layout.quarantine_dir();
        std::fs::create_dir_all(&dir)?;
        let dest = dir.join(digest.hex());
        std::fs::rename(self.layout.blob_path(digest), &dest)?;
        Ok(dest)
    }

    /// Hash a blob file: blake3 (fast) or sha256 (`full`), as lowercase hex.
    pub fn hash_file(&self, digest: &Digest, full: bool) -> io::Result<(u64, String)> {
        let mut f = File::open(self.layout.blob_path(digest))?;
        if full {
            use sha2::Digest as _;
            let mut h = sha2::Sha256::new();
            let len = read_all(&mut f, |b| h.update(b))?;
            Ok((len, hex::encode(h.finalize())))
        } else {
            let mut h = blake3::Hasher::new();
            let len = read_all(&mut f, |b| {
                h.update(b);
            })?;
            Ok((len, h.finalize().to_hex().to_string()))
        }
    }

    /// Drop a blob from the open-blob cache (before its file is unlinked).
    pub fn forget(&self, digest: &Digest) {
        self.open.remove(digest);
    }
}

/// See [`BlobStore::staging_cleanup`].
#[must_use = "the staging is removed when the guard drops"]
pub struct StagingCleanup {
    blobs: BlobStore,
    id: String,
}

impl Drop for StagingCleanup {
    fn drop(&mut self) {
        let (blobs, id) = (self.blobs.clone(), std::mem::take(&mut self.id));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || blobs.remove_staging(&id));
            }
            Err(_) => blobs.remove_staging(&id),
        }
    }
}

/// Map `file` read-only and hand the map to `Bytes`, which keeps it alive for as long as
/// any slice of it is referenced.
///
/// # Safety
/// The file must never be written or truncated while mapped: a truncation would turn
/// reads of the map into SIGBUS. Blob files satisfy this: they are renamed into place
/// complete and are only ever unlinked, which leaves existing maps valid.
pub(super) unsafe fn map_immutable(file: &File) -> io::Result<Bytes> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    let map = memmap2::Mmap::map(file)?;
    Ok(Bytes::from_owner(map))
}

/// Read `f` to its end in 1 MiB pieces, handing each to `feed` (hashers' `update`);
/// returns how many bytes there were.
fn read_all(f: &mut File, mut feed: impl FnMut(&[u8])) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = io::Read::read(f, &mut buf)?;
        if n == 0 {
            return Ok(len);
        }
        feed(&buf[..n]);
        len += n as u64;
    }
}

fn fsync_dir(dir: &std::path::Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `create_dir_all`, then fsync the parent of every directory it created, so that the
/// new entries survive a power cut (a created directory is not durable until its
/// parent is synced).
/// Every shard directory (`00` … `ff`) exists, durably, before the first commit: a
/// commit then never creates one, so no commit can count on a shard whose entry a
/// concurrent commit has created but not yet synced. (A shard removed by hand is still
/// created, and synced, by the commit that needs it.)
fn create_shards(root: &std::path::Path, hook: &dyn FaultHook) -> io::Result<()> {
    let mut created = false;
    for i in 0..=255u8 {
        let shard = root.join(format!("{i:02x}"));
        if !shard.exists() {
            std::fs::create_dir(&shard)?;
            created = true;
        }
    }
    if created {
        hook.before_sync(SyncTarget::Dir(root));
        fsync_dir(root)?;
    }
    Ok(())
}

fn create_dir_durable(dir: &std::path::Path, hook: &dyn FaultHook) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = dir;
    while !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    // Deepest first: each parent then lists a child that is already durable inside.
    for created in &missing {
        if let Some(parent) = created.parent() {
            hook.before_sync(SyncTarget::Dir(parent));
            fsync_dir(parent)?;
        }
    }
    Ok(())
}
