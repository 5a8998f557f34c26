//! `service/`: registry semantics — uploads, manifests, tags, catalog, referrers, the
//! mirror and the cache — over the metadata store and the blob store. Knows nothing of
//! HTTP.
//!
//! May import: meta, blob, upstream, flight, manifest, events (building event records),
//! digest, names.
//!
//! `Registry` is a thin facade over parts with one job each, every one in its own
//! module with its own state:
//!
//! | part | module | owns |
//! | --- | --- | --- |
//! | [`uploads::Uploads`] | `uploads.rs` | upload sessions, staging, the commit (validate → move → link) |
//! | [`manifests::Manifests`] | `manifests.rs`, `tags.rs` | manifests by tag or digest, tags, catalog, referrers |
//! | [`blobs::Blobs`] | `blobs.rs` | blob reads and unlinks, what is stored |
//! | [`mirror::MirrorSet`] | `mirror.rs` | routing names to upstreams, the manifest and fill flights |
//! | [`cache::Cache`] | `cache.rs` | access times of mirrored blobs, the one-eviction-at-a-time lock |
//!
//! What spans parts stays on `Registry`: the entitlement rule (`entitlement.rs`), the
//! mirror's read paths and fills (`mirror.rs`), GC, eviction and verify (`gc.rs`), and
//! the hosted-first fallbacks for manifests, blobs, tags and referrers.
//!
//! Invariants: a blob or manifest is acknowledged only after its meta transaction has
//! committed; a manifest is accepted only when every reference is linked in its
//! repository, checked in the transaction that stores it.

mod blobs;
mod cache;
mod entitlement;
mod error;
pub(crate) mod gc;
mod inventory;
mod manifests;
pub(crate) mod metrics;
mod mirror;
mod overview;
mod referrers;
mod tags;
mod uploads;
mod warm;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::blob::BlobStore;
use crate::digest::Digest;
pub use crate::meta::RepoFilter;
use crate::meta::{Descriptor, Meta};
use crate::names::{Reference, RepoName};
pub use error::Error;
/// The manifest parser, public for the property tests and fuzz targets.
pub use manifests::{parse as parse_manifest, Parsed};
pub use manifests::{ManifestOut, PutManifestOut};
pub use metrics::Metrics;
pub use mirror::{BlobRead, Located, Mirror};
pub use tags::DEFAULT_PAGE;
pub use warm::WarmOutcome;

/// A request body, as the HTTP layer hands it over.
pub type Body = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Limits and policy the service needs from the settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_manifest_bytes: u64,
    pub upload_ttl: Duration,
    /// The cap on mirrored blob bytes (0 = none), and the level eviction frees down to.
    pub cache_max_bytes: u64,
    pub cache_low_bytes: u64,
}

/// The registry: every operation the HTTP layer can ask for, each handed to the part
/// that owns it.
pub struct Registry {
    meta: Meta,
    blobs: BlobStore,
    opts: Options,
    uploads: uploads::Uploads,
    manifests: manifests::Manifests,
    stored: blobs::Blobs,
    mirrors: mirror::MirrorSet,
    cache: cache::Cache,
    pub metrics: Arc<Metrics>,
    /// Set once when the server stops: GC and eviction end after the batch they are in
    /// (a batch — mark, unlink, drop rows — is never cut in the middle by a clean stop).
    stop: tokio::sync::watch::Sender<bool>,
}

impl Registry {
    pub fn new(
        meta: Meta,
        blobs: BlobStore,
        opts: Options,
        mirrors: Vec<Arc<Mirror>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Registry {
            uploads: uploads::Uploads::new(meta.clone(), blobs.clone(), opts.upload_ttl),
            manifests: manifests::Manifests::new(meta.clone(), opts.max_manifest_bytes),
            stored: blobs::Blobs::new(meta.clone(), blobs.clone()),
            mirrors: mirror::MirrorSet::new(mirrors),
            cache: cache::Cache::new(meta.clone()),
            meta,
            blobs,
            opts,
            metrics,
            stop: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The server is stopping: background passes end after their current batch.
    pub fn begin_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether [`Registry::begin_stop`] was called.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once [`Registry::begin_stop`] has been called.
    pub async fn until_stop(&self) {
        let mut rx = self.stop.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The metadata store (the notification tasks read their queue from it).
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Ready to serve: the metadata store answers reads.
    pub fn ready(&self) -> Result<(), Error> {
        self.meta.uploads().map(|_| ()).map_err(Error::from)
    }

    /// Startup recovery: remove staging areas that belong to no upload session (a
    /// crashed monolithic upload or fill) and leases of the previous process.
    pub async fn recover(&self) -> Result<(), Error> {
        let mut open = std::collections::HashSet::new();
        let mut dead = 0;
        let (blobs, ids) = (self.blobs.clone(), self.meta.uploads()?);
        let staged = tokio::task::spawn_blocking(move || {
            ids.into_iter().map(|(id, _)| (blobs.has_staging(&id), id)).collect::<Vec<_>>()
        })
        .await?;
        for (has_staging, id) in staged {
            if has_staging {
                open.insert(id);
            } else {
                // No data file: the process died in the session's commit, after the
                // rename and before the transaction that ends the session (or the file
                // was removed by hand). The session cannot go on: end it.
                self.meta.delete_upload(id).await?;
                dead += 1;
            }
        }
        let blobs = self.blobs.clone();
        let removed =
            tokio::task::spawn_blocking(move || blobs.clean_staging(|id| open.contains(id))).await??;
        let leases = self.meta.clear_leases().await?;
        let finished = self.finish_deletions().await?;
        if finished > 0 {
            tracing::info!(blobs = finished, "finished deletions an earlier run left half done");
        }
        // Blob files without a row (renamed into place, then the process died or the
        // commit failed before the meta transaction): garbage by the commit protocol.
        let (blobs, meta) = (self.blobs.clone(), self.meta.clone());
        let orphans =
            tokio::task::spawn_blocking(move || blobs.clean_orphans(|d| !matches!(meta.blob(d), Ok(None))))
                .await??;
        if removed > 0 || leases > 0 || orphans > 0 || dead > 0 {
            tracing::info!(
                staging = removed,
                leases,
                orphans,
                dead_sessions = dead,
                "removed what a previous run left behind"
            );
        }
        Ok(())
    }
}

/// The facade: each call goes to the part that owns it.
impl Registry {
    // Routing (`MirrorSet`).

    /// Route a name: by `ns` (containerd), by an upstream-name prefix, or to the default
    /// upstream for bare names (hosted first); otherwise a hosted repository.
    pub fn locate(&self, name: &RepoName, ns: Option<&str>) -> Result<Located, Error> {
        self.mirrors.locate(name, ns)
    }

    /// The hosted repository a write goes to; mirrored namespaces are read-only.
    pub fn hosted(&self, name: &RepoName, ns: Option<&str>) -> Result<RepoName, Error> {
        self.mirrors.hosted(name, ns)
    }

    // Uploads.

    /// POST: open a session. Returns its id.
    pub async fn start_upload(&self, repo: &RepoName) -> Result<String, Error> {
        self.uploads.start_upload(repo).await
    }

    /// POST `?digest=` with the whole blob as the body.
    pub async fn upload_monolithic(&self, repo: &RepoName, digest: &Digest, body: Body) -> Result<(), Error> {
        self.uploads.upload_monolithic(repo, digest, body).await
    }

    /// POST `?mount=&from=`: link an existing blob. `Ok(false)` means the caller should
    /// open a session instead.
    pub async fn mount(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        readable: Option<RepoFilter>,
    ) -> Result<bool, Error> {
        self.uploads.mount(repo, digest, from, readable).await
    }

    /// PATCH: append `body` to a session. Returns the new length.
    pub async fn patch_upload(
        &self,
        repo: &RepoName,
        id: &str,
        range: Option<(u64, u64)>,
        body: Body,
    ) -> Result<u64, Error> {
        self.uploads.patch_upload(repo, id, range, body).await
    }

    /// PUT `?digest=`: append the optional last chunk, verify and commit.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        range: Option<(u64, u64)>,
        body: Body,
    ) -> Result<(), Error> {
        self.uploads.finish_upload(repo, id, digest, range, body).await
    }

    /// GET on a session: the bytes received so far.
    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<u64, Error> {
        self.uploads.upload_status(repo, id).await
    }

    /// DELETE on a session: cancel it.
    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<(), Error> {
        self.uploads.cancel_upload(repo, id).await
    }

    /// Remove sessions idle for longer than the upload TTL, with their staging.
    pub async fn expire_uploads(&self) -> Result<usize, Error> {
        self.uploads.expire_uploads().await
    }

    // Manifests, tags, catalog, referrers.

    /// GET/HEAD a manifest of `repo` by tag or digest (hosted content; see
    /// [`Registry::read_manifest`] for any name).
    pub fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        with_body: bool,
    ) -> Result<ManifestOut, Error> {
        self.manifests.get(repo, reference, with_body)
    }

    /// The declared maximum manifest size.
    pub fn max_manifest_bytes(&self) -> u64 {
        self.manifests.max_bytes()
    }

    /// PUT a manifest by tag or digest.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Body,
    ) -> Result<PutManifestOut, Error> {
        self.manifests.put(repo, reference, content_type, body).await
    }

    /// DELETE by digest unlinks the manifest (and its tags); by tag removes the tag.
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<(), Error> {
        self.manifests.delete(repo, reference).await
    }

    /// Sorted tags of `repo` after `last`, at most `n`; the flag says whether more remain.
    pub fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<(Vec<String>, bool), Error> {
        self.manifests.tags(repo, last, n)
    }

    /// Tags wherever the name leads (hosted first for a bare name under a default
    /// upstream); returns the repository listed with the page.
    pub fn tags_at(
        &self,
        loc: &Located,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<(RepoName, Vec<String>, bool), Error> {
        self.manifests.tags_at(loc, last, n)
    }

    /// A page of repository names, only those `keep` accepts when given.
    pub fn catalog(
        &self,
        last: Option<&str>,
        n: Option<usize>,
        keep: Option<&RepoFilter>,
    ) -> Result<(Vec<String>, bool), Error> {
        self.manifests.catalog(last, n, keep)
    }

    /// Manifests in `repo` whose subject is `subject`, optionally only those of
    /// `artifact_type`.
    pub fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, Error> {
        self.manifests.referrers(repo, subject, artifact_type)
    }

    /// Referrers wherever the name leads (the hosted repository's too for a bare name
    /// under a default upstream).
    pub fn referrers_at(
        &self,
        loc: &Located,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, Error> {
        self.manifests.referrers_at(loc, subject, artifact_type)
    }

    // Blobs.

    /// The size of a blob linked in `repo`.
    pub fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, Error> {
        self.stored.size(repo, digest)
    }

    /// The whole blob linked in `repo`, memory-mapped (slices of it are free).
    pub fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<Bytes, Error> {
        self.stored.bytes(repo, digest)
    }

    /// Unlink a blob from `repo`.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<(), Error> {
        self.stored.delete(repo, digest).await
    }

    // Cache.

    /// Note a read of a mirrored blob (in memory; `flush_access` persists).
    pub fn touch(&self, digest: &Digest) {
        self.cache.touch(digest);
    }

    /// Persist access times changed since the last flush, in one transaction.
    pub async fn flush_access(&self) -> Result<usize, Error> {
        self.cache.flush().await
    }
}
