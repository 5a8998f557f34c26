//! `service/`: registry semantics — uploads, manifests, tags, catalog, referrers —
//! over the metadata store and the blob store. Knows nothing of HTTP.
//!
//! May import: meta, blob, digest, names (and later upstream, flight).
//!
//! Invariants: a blob or manifest is acknowledged only after its meta transaction has
//! committed; a manifest is accepted only when every reference is linked in its
//! repository, checked in the transaction that stores it.

mod blobs;
mod entitlement;
mod error;
pub mod gc;
mod inventory;
mod manifests;
pub mod metrics;
mod mirror;
mod overview;
mod tags;
mod uploads;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::blob::BlobStore;
use crate::meta::Meta;
pub use crate::meta::RepoFilter;
pub use error::Error;
/// The manifest parser, public for the property tests and fuzz targets.
pub use manifests::{parse as parse_manifest, Parsed};
pub use manifests::{ManifestOut, PutManifestOut};
pub use metrics::Metrics;
pub use mirror::{BlobRead, Located, Mirror};
pub use tags::DEFAULT_PAGE;
use uploads::Slot;

/// A request body, as the HTTP layer hands it over.
pub type Body = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// How long a refused body is still read and discarded.
const DRAIN_FOR: Duration = Duration::from_secs(30);

/// Read and discard the rest of a body we refuse part-way (a write failed, a manifest is
/// too large), for at most `DRAIN_FOR`: a client still sending reads the error response
/// instead of a connection reset (hyper closes a connection whose body is left unread).
pub(crate) async fn drain(body: &mut Body) {
    use futures_util::StreamExt;
    let _ = tokio::time::timeout(DRAIN_FOR, async { while let Some(Ok(_)) = body.next().await {} }).await;
}

/// Limits and policy the service needs from the settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_manifest_bytes: u64,
    pub upload_ttl: Duration,
    /// The cap on mirrored blob bytes (0 = none), and the level eviction frees down to.
    pub cache_max_bytes: u64,
    pub cache_low_bytes: u64,
}

/// The registry: every operation the HTTP layer can ask for.
pub struct Registry {
    meta: Meta,
    blobs: BlobStore,
    opts: Options,
    /// Open upload sessions' in-memory state (file handle and hash states). The row in
    /// meta is the truth; a missing entry is rebuilt from the staging file. A
    /// `std::sync::Mutex` because it is held only to look up or insert, never across an
    /// await.
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    mirrors: Vec<Arc<Mirror>>,
    /// Blob fills in flight, by digest.
    fills: Arc<mirror::Fills>,
    /// Manifest fetches in flight, by upstream/repository/reference.
    manifest_flights: Arc<ManifestFlights>,
    pub metrics: Arc<Metrics>,
    /// One eviction at a time (each fill commit enforces the cap before it completes).
    evicting: tokio::sync::Mutex<()>,
    /// Last access (unix milliseconds, dirty flag) of mirrored blobs, for eviction.
    access: Mutex<HashMap<crate::digest::Digest, (u64, bool)>>,
}

type ManifestFlights = crate::flight::Flights<String, (), Result<crate::digest::Digest, mirror::FlightError>>;

impl Registry {
    pub fn new(
        meta: Meta,
        blobs: BlobStore,
        opts: Options,
        mirrors: Vec<Arc<Mirror>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Registry {
            meta,
            blobs,
            opts,
            sessions: Mutex::new(HashMap::new()),
            mirrors,
            fills: Arc::new(crate::flight::Flights::default()),
            manifest_flights: Arc::new(crate::flight::Flights::default()),
            metrics,
            access: Mutex::new(HashMap::new()),
            evicting: tokio::sync::Mutex::new(()),
        }
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
        for (id, _) in self.meta.uploads()? {
            if self.blobs.has_staging(&id) {
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
