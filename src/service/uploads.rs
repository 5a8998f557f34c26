//! `Uploads`: the state machine behind POST/PATCH/PUT/GET/DELETE on
//! `/v2/<name>/blobs/uploads/`, and the write-through commit every blob goes through
//! (pushes and mirror fills alike): **validate → move → link**, as distribution names
//! them, under one cleanup guard.
//!
//! Owns: the open sessions' in-memory state. Every staging filesystem call runs on the
//! blocking pool (through the blob layer's `*_blocking` calls or `pump`'s writer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use super::{Body, Error};
use crate::blob::{BlobStore, Committed, Staging, Verified};
use crate::digest::Digest;
use crate::meta::{model::now, BlobRecord, LeaseKey, Meta, Origin, RepoFilter, UploadRecord};
use crate::names::RepoName;

/// One session's in-memory state, behind a per-session async lock so that two requests
/// on one session run one after the other.
#[derive(Default)]
pub(super) struct Slot {
    staging: Option<Staging>,
    /// Set when the session finished or was cancelled: later holders must not use it.
    closed: bool,
}

/// Stream `body` into `staging` on a blocking thread (disk writes and hashing stay off
/// the async workers). Returns the staging back, with the body's outcome. What is left
/// of a refused body is drained by the HTTP layer, which owns the connection.
async fn pump(staging: Staging, body: Body) -> Result<(Staging, Result<(), Error>), Error> {
    pump_inner(staging, body, None, true).await
}

/// Told, after each batch of writes, the staging length and the chunks the batch wrote
/// (a fill publishes both to its readers).
pub(super) type Progress = Box<dyn Fn(u64, &[bytes::Bytes]) + Send>;

/// The writer takes whatever chunks have queued up, up to this many bytes, before it
/// reports progress: under a fast body one wake-up of the readers per batch instead of
/// one per network read; under a slow one, every chunk at once.
const BATCH_BYTES: usize = 1 << 20;

/// `pump`, reporting progress.
pub(super) async fn pump_with(
    staging: Staging,
    body: Body,
    progress: Option<Progress>,
) -> Result<(Staging, Result<(), Error>), Error> {
    pump_inner(staging, body, progress, false).await
}

async fn pump_inner(
    mut staging: Staging,
    mut body: Body,
    progress: Option<Progress>,
    push: bool,
) -> Result<(Staging, Result<(), Error>), Error> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let writer = tokio::task::spawn_blocking(move || {
        let mut res = Ok(());
        let mut batch = Vec::new();
        'recv: while let Some(first) = rx.blocking_recv() {
            let mut queued = first.len();
            batch.push(first);
            while queued < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(c) => {
                        queued += c.len();
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            for chunk in &batch {
                if let Err(e) = staging.write(chunk) {
                    res = Err(e);
                    break 'recv;
                }
            }
            if let Some(p) = &progress {
                p(staging.len(), &batch);
            }
            batch.clear();
        }
        // The body is over (or broke off): whatever waits in the staging's buffer goes
        // on the file, which then holds `len` bytes, as the session's offset says.
        if res.is_ok() {
            res = staging.flush();
        }
        (staging, res)
    });
    let mut body_err = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(b) if b.is_empty() => {}
            Ok(b) => {
                if tx.send(b).await.is_err() {
                    // The writer failed; its error is reported below.
                    break;
                }
            }
            Err(e) => {
                body_err = Some(Error::BodyRead(e.to_string()));
                break;
            }
        }
    }
    drop(tx);
    let (staging, write_res) = match writer.await {
        Ok(v) => v,
        // A fill runs under a flight guard: a panic in its writer panics the fill, and
        // the guard turns it into an error for every reader and frees the digest. A
        // push's writer panic stays an error of the request (500).
        Err(e) if e.is_panic() && !push => std::panic::resume_unwind(e.into_panic()),
        Err(e) => return Err(e.into()),
    };
    let outcome = match (write_res, body_err) {
        (Err(e), _) => Err(e.into()),
        (Ok(()), Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
    };
    Ok((staging, outcome))
}

/// The open sessions: id → the session's lock. A `std::sync::Mutex` because it is
/// held only to look up or insert, never across an await.
type Sessions = Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>;

/// Upload sessions and the blob commit.
pub(super) struct Uploads {
    meta: Meta,
    blobs: BlobStore,
    ttl: Duration,
    /// Open sessions' in-memory state (file handle and hash states). The row in meta
    /// is the truth; a missing entry is rebuilt from the staging file.
    sessions: Sessions,
}

/// What a failed (or cancelled) commit leaves to undo, undone in one place: the
/// staging area, the digest's lease, and the session row (a failed commit ends the
/// session: the client starts over). `finish` undoes it in order; if the commit's
/// future is dropped half way, `Drop` does the same on the blocking pool and the
/// metadata writer.
struct CommitCleanup {
    meta: Meta,
    blobs: BlobStore,
    staging: Option<String>,
    lease: Option<LeaseKey>,
    upload: Option<String>,
}

impl CommitCleanup {
    /// The commit succeeded: its transaction released the lease and ended the session,
    /// and the move removed the staging area. Nothing to undo.
    fn disarm(mut self) {
        self.staging = None;
        self.lease = None;
        self.upload = None;
    }

    async fn run(mut self) {
        if let Some(id) = self.staging.take() {
            self.blobs.remove_staging_blocking(id).await;
        }
        if let Some(l) = self.lease.take() {
            let _ = self.meta.release_lease(l).await;
        }
        if let Some(id) = self.upload.take() {
            let _ = self.meta.delete_upload(id).await;
        }
    }
}

impl Drop for CommitCleanup {
    fn drop(&mut self) {
        if let Some(id) = self.staging.take() {
            drop(self.blobs.staging_cleanup(&id));
        }
        if let Some(l) = self.lease.take() {
            self.meta.release_lease_detached(l);
        }
        if let Some(id) = self.upload.take() {
            let meta = self.meta.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = meta.delete_upload(id).await;
                });
            }
        }
    }
}

impl Uploads {
    pub(super) fn new(meta: Meta, blobs: BlobStore, ttl: Duration) -> Self {
        Uploads { meta, blobs, ttl, sessions: Mutex::new(HashMap::new()) }
    }

    fn new_upload_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// POST: open a session. Returns its id.
    pub(super) async fn start_upload(&self, repo: &RepoName) -> Result<String, Error> {
        let id = Self::new_upload_id();
        let staging = self.blobs.create_staging_blocking(id.clone()).await?;
        let rec = UploadRecord { repo: repo.as_str().to_owned(), started: now() };
        if let Err(e) = self.meta.create_upload(id.clone(), rec).await {
            self.blobs.remove_staging_blocking(id.clone()).await;
            return Err(e.into());
        }
        let slot = Slot { staging: Some(staging), closed: false };
        self.lock_sessions().insert(id.clone(), Arc::new(tokio::sync::Mutex::new(slot)));
        Ok(id)
    }

    /// POST `?digest=` with the whole blob as the body (no session row: a crash leaves
    /// only staging, which startup removes).
    pub(super) async fn upload_monolithic(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: Body,
    ) -> Result<(), Error> {
        let id = Self::new_upload_id();
        let staging = self.blobs.create_staging_blocking(id.clone()).await?;
        let outcome = pump(staging, body).await;
        match outcome {
            Ok((staging, Ok(()))) => self.commit(repo, digest, staging, None, Origin::Pushed).await,
            Ok((_, Err(e))) | Err(e) => {
                self.blobs.remove_staging_blocking(id).await;
                Err(e)
            }
        }
    }

    /// The commit protocol (DESIGN.md): validate → move → link. Only when this returns
    /// Ok may the caller answer 201 (or a fill report done). On any failure the one
    /// cleanup guard removes the staging, releases the lease and ends the session.
    pub(super) async fn commit(
        &self,
        repo: &RepoName,
        digest: &Digest,
        staging: Staging,
        upload: Option<String>,
        origin: Origin,
    ) -> Result<(), Error> {
        let lease = LeaseKey::Upload { digest: digest.clone(), id: staging.id().to_owned() };
        let mut cleanup = CommitCleanup {
            meta: self.meta.clone(),
            blobs: self.blobs.clone(),
            staging: Some(staging.id().to_owned()),
            lease: None,
            upload,
        };
        match self.commit_steps(repo, digest, staging, lease, origin, &mut cleanup).await {
            Ok(()) => {
                cleanup.disarm();
                Ok(())
            }
            Err(e) => {
                cleanup.run().await;
                Err(e)
            }
        }
    }

    async fn commit_steps(
        &self,
        repo: &RepoName,
        digest: &Digest,
        staging: Staging,
        lease: LeaseKey,
        origin: Origin,
        cleanup: &mut CommitCleanup,
    ) -> Result<(), Error> {
        let verified = self.validate(staging, digest).await?;
        // Lease the digest before the move, so GC cannot unlink the file between the
        // rename and the transaction that makes it referenced.
        self.lease_blob(&lease).await?;
        cleanup.lease = Some(lease.clone());
        let committed = self.move_blob(verified).await?;
        cleanup.staging = None;
        self.link(repo, digest, committed, cleanup.upload.clone(), origin, lease).await?;
        Ok(())
    }

    /// Step 1: the staged bytes hash to `digest`, and are durable.
    async fn validate(&self, staging: Staging, digest: &Digest) -> Result<Verified, Error> {
        Ok(self.blobs.validate_blocking(staging, digest.clone()).await?)
    }

    /// Step 2: rename into `blobs/` (idempotent for the same content), fsync the directory.
    async fn move_blob(&self, verified: Verified) -> Result<Committed, Error> {
        Ok(self.blobs.move_into_place_blocking(verified).await?)
    }

    /// Step 3: one meta transaction records the blob row and the repository link, ends
    /// the session and releases the lease.
    async fn link(
        &self,
        repo: &RepoName,
        digest: &Digest,
        committed: Committed,
        upload: Option<String>,
        origin: Origin,
        lease: LeaseKey,
    ) -> Result<(), Error> {
        let rec = BlobRecord {
            size: committed.size,
            blake3: committed.blake3,
            created: now(),
            origin,
            deleting: false,
        };
        self.meta.commit_blob(repo.as_str().to_owned(), digest.clone(), rec, upload, Some(lease)).await?;
        Ok(())
    }

    /// Take the per-upload lease on `digest`, waiting while GC finishes deleting it.
    async fn lease_blob(&self, key: &LeaseKey) -> Result<(), Error> {
        let digest = key.digest();
        for _ in 0..600 {
            if self.meta.lease_blob(key.clone()).await? {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(Error::Unavailable(format!("{digest} stayed marked for deletion for 30 s")))
    }

    /// POST `?mount=&from=`: link an existing blob. `Ok(false)` means the caller should
    /// open a session instead.
    pub(super) async fn mount(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        readable: Option<RepoFilter>,
    ) -> Result<bool, Error> {
        // A row must also have its file (GC may be between unlink and row removal).
        if self.meta.blob(digest)?.is_none() || !self.blobs.exists_blocking(digest).await {
            return Ok(false);
        }
        Ok(self
            .meta
            .mount_blob(
                repo.as_str().to_owned(),
                digest.clone(),
                from.map(|f| f.as_str().to_owned()),
                readable,
                Origin::Pushed,
            )
            .await?)
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<Slot>>>> {
        // A poisoned map only means a panic elsewhere mid-insert; the map itself is fine.
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Find session `id` of `repo` and lock it, loading its state from the staging file
    /// if this process has not seen it yet (e.g. after a restart).
    async fn session(&self, repo: &RepoName, id: &str) -> Result<tokio::sync::OwnedMutexGuard<Slot>, Error> {
        match self.meta.upload(id)? {
            Some(rec) if rec.repo == repo.as_str() => {}
            _ => return Err(Error::BlobUploadUnknown),
        }
        let slot = self.lock_sessions().entry(id.to_owned()).or_default().clone();
        let mut guard = slot.lock_owned().await;
        if guard.closed {
            return Err(Error::BlobUploadUnknown);
        }
        if guard.staging.is_none() {
            match self.blobs.open_staging_blocking(id.to_owned()).await? {
                Some(s) => guard.staging = Some(s),
                None => {
                    // The row outlived its staging (removed by hand?): the session is gone.
                    guard.closed = true;
                    self.forget(id).await;
                    return Err(Error::BlobUploadUnknown);
                }
            }
        }
        Ok(guard)
    }

    /// Drop a session everywhere: memory, row, staging.
    async fn forget(&self, id: &str) {
        self.lock_sessions().remove(id);
        let _ = self.meta.delete_upload(id.to_owned()).await;
        self.blobs.remove_staging_blocking(id.to_owned()).await;
    }

    /// PATCH: append `body`; with `Content-Range` its start must equal the current
    /// offset. Returns the new length.
    pub(super) async fn patch_upload(
        &self,
        repo: &RepoName,
        id: &str,
        range: Option<(u64, u64)>,
        body: Body,
    ) -> Result<u64, Error> {
        let mut guard = self.session(repo, id).await?;
        let (staging, before) = self.append(&mut guard, id, range, body).await?;
        let len = staging.len();
        if let Some((start, end)) = range {
            if len - before != end - start + 1 {
                // A chunked body that disagrees with its Content-Range: undo the append
                // (the hashes cannot be rewound, so the next request rehashes the file).
                drop(staging);
                self.blobs.truncate_staging_blocking(id.to_owned(), before).await?;
                return Err(Error::BlobUploadInvalid(format!(
                    "Content-Range {start}-{end} announced {} bytes but the body had {}",
                    end - start + 1,
                    len - before
                )));
            }
        }
        guard.staging = Some(staging);
        Ok(len)
    }

    /// PUT `?digest=`: append the optional last chunk, verify and commit.
    pub(super) async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        range: Option<(u64, u64)>,
        body: Body,
    ) -> Result<(), Error> {
        let mut guard = self.session(repo, id).await?;
        let (staging, _) = self.append(&mut guard, id, range, body).await?;
        guard.closed = true;
        let r = self.commit(repo, digest, staging, Some(id.to_owned()), Origin::Pushed).await;
        // Either way the session is over: the commit's transaction or its cleanup
        // ended the row and removed the staging.
        self.lock_sessions().remove(id);
        r
    }

    /// PATCH's and PUT's common step: take the staging out of the session and append
    /// `body` to it, after checking that a `Content-Range` starts at the current offset.
    /// A body that broke off keeps what arrived (the client asks for the offset); any
    /// other failure cuts the append off. Returns the staging, for the caller to put back
    /// or commit, and its length before the append.
    async fn append(
        &self,
        guard: &mut Slot,
        id: &str,
        range: Option<(u64, u64)>,
        body: Body,
    ) -> Result<(Staging, u64), Error> {
        let Some(staging) = guard.staging.take() else {
            return Err(Error::BlobUploadUnknown);
        };
        if let Some((start, _)) = range {
            if start != staging.len() {
                let offset = staging.len();
                guard.staging = Some(staging);
                return Err(Error::UploadOutOfOrder { start, offset });
            }
        }
        let before = staging.len();
        let (staging, outcome) = pump(staging, body).await?;
        if let Err(e) = outcome {
            if matches!(e, Error::BodyRead(_)) {
                guard.staging = Some(staging);
            } else {
                self.undo_failed_write(guard, id, staging, before).await;
            }
            return Err(e);
        }
        Ok((staging, before))
    }

    /// A chunk's write failed (I/O error, full disk): cut the staging back to the
    /// acknowledged `before` bytes, so the session's offset is what the client was told.
    /// The in-memory hashes no longer describe the file: the next request rehashes it.
    /// If even the cut fails the session cannot be trusted and ends.
    async fn undo_failed_write(&self, guard: &mut Slot, id: &str, staging: Staging, before: u64) {
        drop(staging);
        let cut = self.blobs.truncate_staging_blocking(id.to_owned(), before).await;
        if cut.is_err() {
            tracing::warn!(upload = id, "cannot cut a failed chunk off its upload; ending the session");
            guard.closed = true;
            self.forget(id).await;
        }
    }

    /// GET on a session: the bytes received so far.
    pub(super) async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<u64, Error> {
        let guard = self.session(repo, id).await?;
        guard.staging.as_ref().map(Staging::len).ok_or(Error::BlobUploadUnknown)
    }

    /// DELETE on a session: cancel it.
    pub(super) async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<(), Error> {
        let mut guard = self.session(repo, id).await?;
        guard.closed = true;
        guard.staging = None;
        self.forget(id).await;
        Ok(())
    }

    /// Remove sessions idle for longer than the upload TTL, with their staging.
    pub(super) async fn expire_uploads(&self) -> Result<usize, Error> {
        let ttl = self.ttl.as_secs();
        let mut n = 0;
        for (id, rec) in self.meta.uploads()? {
            let idle = self
                .blobs
                .staging_idle_secs_blocking(id.clone())
                .await
                .unwrap_or_else(|| now().saturating_sub(rec.started));
            if idle <= ttl {
                continue;
            }
            let slot = self.lock_sessions().get(&id).cloned();
            match slot {
                Some(slot) => {
                    // Busy sessions are not idle; skip rather than wait.
                    let Ok(mut guard) = slot.try_lock_owned() else {
                        continue;
                    };
                    guard.closed = true;
                    guard.staging = None;
                    self.forget(&id).await;
                }
                None => self.forget(&id).await,
            }
            n += 1;
        }
        Ok(n)
    }
}
