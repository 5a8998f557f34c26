//! `meta/`: all metadata in one redb file — blob rows, repository links, manifests,
//! tags, referrers, upload sessions, leases. Its write transaction is the single commit
//! point of the registry: nothing is visible or acknowledged before it commits.
//!
//! May import: redb, crossbeam, digest, names. Only this module names redb.
//!
//! Reads are short MVCC snapshots taken on the caller's thread; writes are closures run
//! by the one writer thread (`writer.rs`) with group commit.

mod backend;
mod events;
mod gc;
mod inventory;
mod lease;
mod memo;
pub(crate) mod model;
mod overview;
mod schema;
mod writer;

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle,
    WriteTransaction,
};

use crate::digest::Digest;
pub use backend::{SyncGate, VolatileBackend};
pub use events::EventStats;
pub use gc::{BlobCandidate, MarkMode};
pub use inventory::{Held, Inventory};
pub use lease::{LeaseGuard, LeaseKey};
pub use overview::{RepoSummary, TagRow, SUMMARY_CAP};

/// A predicate on repository names (which repositories a caller may read), for the
/// catalog and automatic mounts. It runs inside transactions: keep it cheap.
pub type RepoFilter = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;
use model::{decode, encode};
pub use model::{
    BlobRecord, Descriptor, LeaseRecord, ManifestRecord, Origin, StoreStats, TagRecord, UploadRecord,
};
pub use model::{EventRecord, EventRequest};
#[allow(clippy::wildcard_imports)] // the schema module is the list of tables
use schema::*;

/// Errors of the metadata layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MetaError {
    #[error("metadata storage error: {0}")]
    Storage(Arc<str>),
    #[error("metadata record is corrupt: {0}")]
    Corrupt(Arc<str>),
    #[error("not found")]
    NotFound,
    /// A manifest references a blob or manifest that is not linked in its repository.
    #[error("referenced content {0} is not in the repository")]
    MissingReference(Digest),
    #[error("the metadata writer has stopped")]
    Closed,
    /// Another process (a running server) holds the database open: redb's
    /// `DatabaseAlreadyOpen`. Callers that can talk to that server instead do so.
    #[error("the metadata database is held by another process (a running server?)")]
    Locked,
}

impl MetaError {
    fn storage(e: impl std::fmt::Display) -> Self {
        MetaError::Storage(e.to_string().into())
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for MetaError {
            fn from(e: $t) -> Self { MetaError::storage(e) }
        }
    )*};
}
storage_from!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);

/// Everything a manifest PUT records, applied in one transaction.
#[derive(Debug, Clone)]
pub struct PutManifest {
    pub repo: String,
    pub digest: Digest,
    pub record: ManifestRecord,
    pub body: Vec<u8>,
    /// Blobs (config, layers) that must be linked in `repo`.
    pub blobs: Vec<Digest>,
    /// Child manifests (an index's entries) that must be linked in `repo`.
    pub manifests: Vec<Digest>,
    pub tag: Option<String>,
    /// When the mirror confirmed `tag` upstream (unix seconds); `None` for pushes.
    pub tag_checked: Option<u64>,
    /// Written under (repo, subject) when the manifest has a subject.
    pub referrer: Option<Descriptor>,
    /// Require every reference to be linked (pushes). A mirror fill stores a manifest
    /// before its blobs, which are fetched on demand.
    pub check_refs: bool,
    /// The notification recorded with the push (when the queue is on).
    pub event: Option<EventRecord>,
}

impl PutManifest {
    /// An OCI image manifest stored as is: `body` in `repo`, its blobs `refs`, no
    /// subject or artifact type, tagged `tag` when given, its references unchecked, no
    /// event. How tests and benches seed a store directly, without a parser.
    pub fn image(repo: &str, body: &[u8], refs: Vec<Digest>, origin: Origin, tag: Option<&str>) -> Self {
        PutManifest {
            repo: repo.to_owned(),
            digest: Digest::of(body),
            record: ManifestRecord {
                media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
                size: body.len() as u64,
                subject: None,
                artifact_type: None,
                annotations: None,
                created: model::now(),
                origin,
                refs: refs.clone(),
            },
            body: body.to_vec(),
            blobs: refs,
            manifests: Vec::new(),
            tag: tag.map(str::to_owned),
            tag_checked: None,
            referrer: None,
            check_refs: false,
            event: None,
        }
    }
}

/// A manifest row and, when asked for, its exact bytes.
pub type StoredManifest = (ManifestRecord, Option<Vec<u8>>);

/// How a manifest GET/HEAD names what it wants.
#[derive(Debug, Clone, Copy)]
pub enum ManifestKey<'a> {
    Tag(&'a str),
    Digest(&'a Digest),
}

/// What a manifest GET/HEAD serves: the digest (resolved when asked by tag), the media
/// type, the size and, when asked for, the exact bytes.
#[derive(Debug, Clone)]
pub struct ServedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub body: Option<bytes::Bytes>,
}

/// The metadata store.
#[derive(Clone)]
pub struct Meta {
    db: Arc<Database>,
    writer: Arc<writer::Handle>,
    events: Arc<events::Queue>,
    /// The commit generation, and the pull-path reads memoised until the next commit
    /// (`memo.rs`).
    generation: Arc<memo::Generation>,
    served: Arc<memo::Memo<ServedManifest>>,
    blobs: Arc<memo::Memo<u64>>,
}

/// At most this many manifest rows are read by one [`Meta::references`] walk.
const MAX_REFERENCE_WALK: usize = 4096;

/// redb's page cache for `meta.redb`.
const META_CACHE_BYTES: usize = 64 << 20;

/// Create a new, empty `meta.redb` so that it appears whole or not at all. redb syncs a
/// new file more than once while it initialises it, and a power cut between those syncs
/// leaves a file it refuses to open ("magic number mismatch"), which would stop every
/// later start. So the file is built under a temporary name, synced, renamed into place,
/// and the directory synced (redb syncs the file's data, never its directory entry). A
/// temporary file left by a cut before the rename held nothing yet and is replaced.
fn create_whole(path: &Path) -> Result<(), MetaError> {
    let tmp = path.with_extension("redb.creating");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(MetaError::storage(e)),
    }
    {
        let db = Database::builder().create(&tmp)?;
        db.begin_write()?.commit()?;
    }
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(MetaError::storage)?;
    std::fs::rename(&tmp, path).map_err(MetaError::storage)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(MetaError::storage)?;
    }
    Ok(())
}

impl Meta {
    /// Open or create `path`, create every table, and start the writer thread.
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        if !path.exists() {
            create_whole(path)?;
        }
        // redb caches up to 1 GiB by default, which a soak run showed growing with the
        // metadata until RSS passed 400 MiB; an appliance's metadata working set is far
        // smaller, and the OS page cache still holds the rest of the file.
        let db = match Database::builder().set_cache_size(META_CACHE_BYTES).create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(MetaError::Locked),
            Err(e) => return Err(e.into()),
        };
        Self::from_db(db)
    }

    /// Like `open`, on a caller's redb storage backend instead of a file (the
    /// power-loss tests' [`VolatileBackend`]).
    pub fn open_with_backend(backend: VolatileBackend) -> Result<Self, MetaError> {
        let db = Database::builder().set_cache_size(META_CACHE_BYTES).create_with_backend(backend)?;
        Self::from_db(db)
    }

    fn from_db(db: Database) -> Result<Self, MetaError> {
        let db = Arc::new(db);
        let txn = db.begin_write()?;
        // A `meta.redb` written before the counters existed: compute them once.
        let absent =
            |name: &str| -> Result<bool, MetaError> { Ok(!txn.list_tables()?.any(|t| t.name() == name)) };
        let migrate = absent(STATS.name())?;
        // And before the eviction indexes existed: build each once.
        let (no_lru, no_refby, no_mrepos) =
            (absent(LRU.name())?, absent(REFERENCED_BY.name())?, absent(MANIFEST_REPOS.name())?);
        // And before the tag → digest reverse existed.
        let no_tag_digests = absent(TAG_DIGESTS.name())?;
        {
            txn.open_table(STATS)?;
            txn.open_table(LRU)?;
            txn.open_table(REFERENCED_BY)?;
            txn.open_table(MANIFEST_REPOS)?;
            txn.open_table(TAG_DIGESTS)?;
            txn.open_table(BLOBS)?;
            txn.open_table(REPO_BLOBS)?;
            txn.open_table(MANIFESTS)?;
            txn.open_table(MANIFEST_BODIES)?;
            txn.open_table(REPO_MANIFESTS)?;
            txn.open_table(REPOS)?;
            txn.open_table(TAGS)?;
            txn.open_table(REFERRERS)?;
            txn.open_table(UPLOADS)?;
            txn.open_table(LEASES)?;
            txn.open_table(REFS)?;
            txn.open_table(MANIFEST_LINKS)?;
            txn.open_table(BLOB_LINKS)?;
            txn.open_table(ACCESS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(EVENT_STATE)?;
        }
        if migrate {
            let st = scan_stats(&txn.open_table(BLOBS)?)?;
            write_stats(&mut txn.open_table(STATS)?, &st)?;
            tracing::info!(blobs = st.pushed_blobs + st.mirrored_blobs, "meta: computed the blob counters");
        }
        if no_lru {
            let want = scan_lru(&txn.open_table(BLOBS)?, &txn.open_table(ACCESS)?)?;
            let mut t = txn.open_table(LRU)?;
            for (at, d) in &want {
                t.insert((*at, d.as_str()), ())?;
            }
            tracing::info!(blobs = want.len(), "meta: built the eviction order index");
        }
        if no_refby {
            let want = scan_referenced_by(&txn.open_table(MANIFESTS)?)?;
            let mut t = txn.open_table(REFERENCED_BY)?;
            for (r, m) in &want {
                t.insert((r.as_str(), m.as_str()), ())?;
            }
        }
        if no_mrepos {
            let want = scan_manifest_repos(&txn.open_table(REPO_MANIFESTS)?)?;
            let mut t = txn.open_table(MANIFEST_REPOS)?;
            for (m, r) in &want {
                t.insert((m.as_str(), r.as_str()), ())?;
            }
        }
        if no_tag_digests {
            let want = scan_tag_digests(&txn.open_table(TAGS)?)?;
            let mut t = txn.open_table(TAG_DIGESTS)?;
            for (r, d, tag) in &want {
                t.insert((r.as_str(), d.as_str(), tag.as_str()), ())?;
            }
            tracing::info!(tags = want.len(), "meta: built the tag index");
        }
        txn.commit()?;
        let generation = Arc::new(memo::Generation::default());
        let writer = Arc::new(writer::spawn(db.clone(), generation.clone()).map_err(MetaError::storage)?);
        Ok(Meta {
            db,
            writer,
            events: Arc::default(),
            generation,
            served: Arc::default(),
            blobs: Arc::default(),
        })
    }

    async fn write<T, F>(&self, f: F) -> Result<T, MetaError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, MetaError> + Send + 'static,
    {
        let (job, rx) = writer::job(f);
        self.writer.sender().ok_or(MetaError::Closed)?.send(job).map_err(|_| MetaError::Closed)?;
        rx.await.map_err(|_| MetaError::Closed)?
    }

    fn read<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: redb::TableDefinition<K, V>,
    ) -> Result<ReadOnlyTable<K, V>, MetaError> {
        Ok(self.db.begin_read()?.open_table(def)?)
    }

    // ---- reads -------------------------------------------------------------------

    /// Live blobs and bytes per origin, from the counters (four point reads, whatever
    /// the number of blobs).
    pub fn store_stats(&self) -> Result<StoreStats, MetaError> {
        read_stats(&self.read(STATS)?)
    }

    /// The same figures from a scan of every blob row: what the counters must equal
    /// (tests, and the migration of an older `meta.redb`).
    pub fn store_stats_by_scan(&self) -> Result<StoreStats, MetaError> {
        scan_stats(&self.read(BLOBS)?)
    }

    /// Where the counters and indexes kept in the write transactions (`STATS`, `LRU`,
    /// `REFERENCED_BY`, `MANIFEST_REPOS`, `TAG_DIGESTS`) differ from what a scan of the
    /// rows they summarise gives, in words; empty when they are exact. One snapshot,
    /// every row read: for tests and an operator's check, never a request path.
    pub fn index_drift(&self) -> Result<Vec<String>, MetaError> {
        let rtx = self.db.begin_read()?;
        let mut out = Vec::new();
        let blobs = rtx.open_table(BLOBS)?;
        let (kept, scanned) = (read_stats(&rtx.open_table(STATS)?)?, scan_stats(&blobs)?);
        if kept != scanned {
            out.push(format!("stats: kept {kept:?}, scan {scanned:?}"));
        }
        let mut lru = std::collections::BTreeSet::new();
        for item in rtx.open_table(LRU)?.iter()? {
            let (k, _) = item?;
            let (at, d) = k.value();
            lru.insert((at, d.to_owned()));
        }
        let want = scan_lru(&blobs, &rtx.open_table(ACCESS)?)?;
        if lru != want {
            let extra: Vec<_> = lru.difference(&want).take(5).collect();
            let missing: Vec<_> = want.difference(&lru).take(5).collect();
            out.push(format!("lru: extra {extra:?}, missing {missing:?}"));
        }
        let (by, want) =
            (pairs(&rtx.open_table(REFERENCED_BY)?)?, scan_referenced_by(&rtx.open_table(MANIFESTS)?)?);
        if by != want {
            let extra: Vec<_> = by.difference(&want).take(5).collect();
            let missing: Vec<_> = want.difference(&by).take(5).collect();
            out.push(format!("referenced_by: extra {extra:?}, missing {missing:?}"));
        }
        let (mr, want) = (
            pairs(&rtx.open_table(MANIFEST_REPOS)?)?,
            scan_manifest_repos(&rtx.open_table(REPO_MANIFESTS)?)?,
        );
        if mr != want {
            let extra: Vec<_> = mr.difference(&want).take(5).collect();
            let missing: Vec<_> = want.difference(&mr).take(5).collect();
            out.push(format!("manifest_repos: extra {extra:?}, missing {missing:?}"));
        }
        let mut td = std::collections::BTreeSet::new();
        for item in rtx.open_table(TAG_DIGESTS)?.iter()? {
            let (k, _) = item?;
            let (r, d, t) = k.value();
            td.insert((r.to_owned(), d.to_owned(), t.to_owned()));
        }
        let want = scan_tag_digests(&rtx.open_table(TAGS)?)?;
        if td != want {
            let extra: Vec<_> = td.difference(&want).take(5).collect();
            let missing: Vec<_> = want.difference(&td).take(5).collect();
            out.push(format!("tag_digests: extra {extra:?}, missing {missing:?}"));
        }
        Ok(out)
    }

    /// The blob row, whatever repositories link it.
    pub fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetaError> {
        let t = self.read(BLOBS)?;
        let rec: Option<BlobRecord> = t.get(digest.as_str())?.map(|v| decode(v.value())).transpose()?;
        Ok(rec.filter(|r| !r.deleting))
    }

    /// The blob's size if `repo` links the blob (all the pull path needs of its row).
    pub fn repo_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, MetaError> {
        // Loaded before the read begins: see `memo.rs` for why that makes a hit exact.
        let generation = self.generation.now();
        let key = memo::Key::blob(repo, digest);
        if let Some(hit) = self.blobs.get(generation, key) {
            return Ok(Some(hit));
        }
        let rtx = self.db.begin_read()?;
        if rtx.open_table(REPO_BLOBS)?.get((repo, digest.as_str()))?.is_none() {
            return Ok(None);
        }
        let t = rtx.open_table(BLOBS)?;
        let rec: Option<BlobRecord> = t.get(digest.as_str())?.map(|v| decode(v.value())).transpose()?;
        let size = rec.filter(|r| !r.deleting).map(|r| r.size);
        if let Some(size) = &size {
            self.blobs.put(&self.generation, generation, key, size);
        }
        Ok(size)
    }

    /// Resolve a tag to a digest.
    pub fn tag(&self, repo: &str, tag: &str) -> Result<Option<TagRecord>, MetaError> {
        let t = self.read(TAGS)?;
        t.get((repo, tag))?.map(|v| decode(v.value())).transpose()
    }

    /// A manifest as served, by tag or digest, if `repo` links it: tag → link → row →
    /// body in one read transaction (one snapshot, so a tag moved concurrently is seen
    /// wholly before or wholly after), decoding only the fields served.
    pub fn serve_manifest(
        &self,
        repo: &str,
        key: ManifestKey<'_>,
        with_body: bool,
    ) -> Result<Option<ServedManifest>, MetaError> {
        // Loaded before the read begins: see `memo.rs` for why that makes a hit exact.
        let generation = self.generation.now();
        let memo_key = memo::Key::manifest(repo, &key);
        if let Some(mut hit) = self.served.get(generation, memo_key) {
            if !with_body {
                hit.body = None;
            }
            return Ok(Some(hit));
        }
        let rtx = self.db.begin_read()?;
        let digest = match key {
            ManifestKey::Digest(d) => d.clone(),
            ManifestKey::Tag(t) => match rtx.open_table(TAGS)?.get((repo, t))? {
                Some(v) => decode::<model::TagHead>(v.value())?.digest,
                None => return Ok(None),
            },
        };
        if rtx.open_table(REPO_MANIFESTS)?.get((repo, digest.as_str()))?.is_none() {
            return Ok(None);
        }
        let Some(rec) = rtx.open_table(MANIFESTS)?.get(digest.as_str())? else {
            return Ok(None);
        };
        let head: model::ManifestHead = decode(rec.value())?;
        // A HEAD reads the body too when the memo can keep it: the GET that follows is a hit.
        let memoise = head.size <= memo::MAX_BODY;
        let body = if with_body || memoise {
            rtx.open_table(MANIFEST_BODIES)?
                .get(digest.as_str())?
                .map(|b| bytes::Bytes::copy_from_slice(b.value()))
        } else {
            None
        };
        let mut served = ServedManifest { digest, media_type: head.media_type, size: head.size, body };
        if memoise && served.body.is_some() {
            self.served.put(&self.generation, generation, memo_key, &served);
        }
        if !with_body {
            served.body = None;
        }
        Ok(Some(served))
    }

    /// The manifest record (and, when `with_body`, its bytes) if `repo` links it.
    pub fn repo_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        with_body: bool,
    ) -> Result<Option<StoredManifest>, MetaError> {
        let rtx = self.db.begin_read()?;
        if rtx.open_table(REPO_MANIFESTS)?.get((repo, digest.as_str()))?.is_none() {
            return Ok(None);
        }
        let Some(rec) = rtx.open_table(MANIFESTS)?.get(digest.as_str())? else {
            return Ok(None);
        };
        let rec: ManifestRecord = decode(rec.value())?;
        let body = if with_body {
            rtx.open_table(MANIFEST_BODIES)?.get(digest.as_str())?.map(|b| b.value().to_vec())
        } else {
            None
        };
        Ok(Some((rec, body)))
    }

    /// Does a manifest linked in `repo` reference `digest` (as its config, a layer or a
    /// child manifest), directly or through the children of an index linked there?
    /// Children are read from the manifest rows whether or not `repo` links them: a
    /// digest names the same bytes wherever they were stored. Reads only `repo`'s links
    /// (a repository's manifests are few) and the rows they lead to, at most
    /// `MAX_REFERENCE_WALK` of them.
    pub fn references(&self, repo: &str, digest: &Digest) -> Result<bool, MetaError> {
        let rtx = self.db.begin_read()?;
        let links = rtx.open_table(REPO_MANIFESTS)?;
        let rows = rtx.open_table(MANIFESTS)?;
        let mut todo: Vec<String> = Vec::new();
        for item in links.range((repo, "")..)? {
            let (k, _) = item?;
            let (r, d) = k.value();
            if r != repo {
                break;
            }
            todo.push(d.to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        while let Some(d) = todo.pop() {
            if seen.len() >= MAX_REFERENCE_WALK {
                break;
            }
            if !seen.insert(d.clone()) {
                continue;
            }
            let Some(v) = rows.get(d.as_str())? else { continue };
            let rec: ManifestRecord = decode(v.value())?;
            if rec.refs.contains(digest) {
                return Ok(true);
            }
            // An index's children are manifests: walk into those stored here.
            for r in &rec.refs {
                if !seen.contains(r.as_str()) && rows.get(r.as_str())?.is_some() {
                    todo.push(r.as_str().to_owned());
                }
            }
        }
        Ok(false)
    }

    /// Tags of `repo`, sorted, after `last`, at most `n`; `None` when the repository
    /// has neither tags nor manifests. The flag says whether more remain.
    pub fn tags(
        &self,
        repo: &str,
        last: Option<&str>,
        n: usize,
    ) -> Result<Option<(Vec<String>, bool)>, MetaError> {
        let rtx = self.db.begin_read()?;
        let t = rtx.open_table(TAGS)?;
        let (out, more) = tag_page(&t, repo, last, n, |tag, _| Ok(tag.to_owned()))?;
        if out.is_empty() && last.is_none() {
            let known = rtx.open_table(REPOS)?.get(repo)?.is_some()
                || t.range((repo, "")..)?.next().transpose()?.is_some_and(|(k, _)| k.value().0 == repo);
            if !known {
                return Ok(None);
            }
        }
        Ok(Some((out, more)))
    }

    /// Repositories with at least one manifest, sorted, after `last`, at most `n`.
    pub fn catalog(
        &self,
        last: Option<&str>,
        n: usize,
        keep: Option<&RepoFilter>,
    ) -> Result<(Vec<String>, bool), MetaError> {
        let t = self.read(REPOS)?;
        let mut out = Vec::new();
        let mut more = false;
        for item in t.range(last.unwrap_or("")..)? {
            let (k, _) = item?;
            let name = k.value();
            if Some(name) == last || keep.is_some_and(|keep| !keep(name)) {
                continue;
            }
            if out.len() == n {
                more = true;
                break;
            }
            out.push(name.to_owned());
        }
        Ok((out, more))
    }

    /// Referrers of `subject` in `repo`.
    pub fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>, MetaError> {
        let t = self.read(REFERRERS)?;
        let mut out = Vec::new();
        for item in t.range((repo, subject.as_str(), "")..)? {
            let (k, v) = item?;
            let (r, s, _) = k.value();
            if r != repo || s != subject.as_str() {
                break;
            }
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    pub fn upload(&self, id: &str) -> Result<Option<UploadRecord>, MetaError> {
        let t = self.read(UPLOADS)?;
        t.get(id)?.map(|v| decode(v.value())).transpose()
    }

    /// Every open upload session.
    pub fn uploads(&self) -> Result<Vec<(String, UploadRecord)>, MetaError> {
        let t = self.read(UPLOADS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), decode(v.value())?));
        }
        Ok(out)
    }

    /// Every lease row.
    pub fn leases(&self) -> Result<Vec<(LeaseKey, LeaseRecord)>, MetaError> {
        let t = self.read(LEASES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            match LeaseKey::decode(k.value()) {
                Some(key) => out.push((key, decode(v.value())?)),
                None => tracing::warn!(key = k.value(), "ignoring a lease row of unknown form"),
            }
        }
        Ok(out)
    }

    // ---- writes ------------------------------------------------------------------

    /// Record a committed blob file and link it into `repo`; closes `upload` if given.
    /// An existing row is kept (same content), upgraded to `Pushed` if this is a push.
    /// `lease` (from `lease_blob`) is released in the same transaction.
    pub async fn commit_blob(
        &self,
        repo: String,
        digest: Digest,
        record: BlobRecord,
        upload: Option<String>,
        lease: Option<LeaseKey>,
    ) -> Result<(), MetaError> {
        self.write(move |txn| {
            let existing: Option<BlobRecord> =
                txn.open_table(BLOBS)?.get(digest.as_str())?.map(|v| decode(v.value())).transpose()?;
            let rec = match existing.clone() {
                // Same content: keep the row (upgraded to pushed by a push), but restart
                // its grace period — a manifest referencing it is about to follow, and
                // GC must not take an old unreferenced blob from under that push.
                Some(mut old) if !old.deleting => {
                    if record.origin == Origin::Pushed {
                        old.origin = Origin::Pushed;
                    }
                    old.created = old.created.max(record.created);
                    old
                }
                _ => record,
            };
            put_blob_row(txn, digest.as_str(), existing.as_ref(), &rec)?;
            link_blob(txn, &repo, &digest)?;
            if let Some(id) = upload {
                txn.open_table(UPLOADS)?.remove(id.as_str())?;
            }
            if let Some(l) = lease {
                txn.open_table(LEASES)?.remove(l.encode().as_str())?;
            }
            Ok(())
        })
        .await
    }

    /// Lease `digest` for an upload about to rename its file into place, so GC cannot
    /// unlink that file between the rename and the commit. `Ok(false)` while GC is
    /// deleting the digest (retry shortly). The key is unique per upload.
    pub async fn lease_blob(&self, key: LeaseKey) -> Result<bool, MetaError> {
        self.write(move |txn| {
            let digest = key.digest();
            let deleting = txn
                .open_table(BLOBS)?
                .get(digest.as_str())?
                .map(|v| decode::<BlobRecord>(v.value()))
                .transpose()?
                .is_some_and(|r| r.deleting);
            if deleting {
                return Ok(false);
            }
            let rec = LeaseRecord { owner: digest.to_string(), expires: model::now() + 3600 };
            txn.open_table(LEASES)?.insert(key.encode().as_str(), encode(&rec).as_slice())?;
            Ok(true)
        })
        .await
    }

    /// Link an existing blob into `repo`: from `from` when given (it must link the
    /// blob there), else from anywhere the blob exists. Returns whether it linked.
    /// A mount into a hosted repository (`origin` pushed) makes the blob pushed content
    /// (never evicted), and every mount restarts the blob's grace period, as a push does.
    pub async fn mount_blob(
        &self,
        repo: String,
        digest: Digest,
        from: Option<String>,
        readable: Option<RepoFilter>,
        origin: Origin,
    ) -> Result<bool, MetaError> {
        self.write(move |txn| {
            let rec: Option<BlobRecord> =
                txn.open_table(BLOBS)?.get(digest.as_str())?.map(|v| decode(v.value())).transpose()?;
            let live = rec.as_ref().is_some_and(|r| !r.deleting);
            let present = live
                && match &from {
                    Some(f) => txn.open_table(REPO_BLOBS)?.get((f.as_str(), digest.as_str()))?.is_some(),
                    // Automatic mount: some repository (one the caller may read, when
                    // `readable` says which) must still link it.
                    None => {
                        let links = txn.open_table(BLOB_LINKS)?;
                        let mut found = false;
                        for item in links.range((digest.as_str(), "")..)? {
                            let (k, _) = item?;
                            let (d, r) = k.value();
                            if d != digest.as_str() {
                                break;
                            }
                            if readable.as_ref().is_none_or(|ok| ok(r)) {
                                found = true;
                                break;
                            }
                        }
                        found
                    }
                };
            if let (true, Some(old)) = (present, rec) {
                let mut rec = old.clone();
                if origin == Origin::Pushed {
                    rec.origin = Origin::Pushed;
                }
                rec.created = rec.created.max(model::now());
                put_blob_row(txn, digest.as_str(), Some(&old), &rec)?;
                link_blob(txn, &repo, &digest)?;
            }
            Ok(present)
        })
        .await
    }

    /// Link a stored blob into `repo` (the entitlement rule decided `repo` may have
    /// it). Returns false, changing nothing, when no live row exists (never stored, or
    /// GC is deleting it). Like a mount, it restarts the blob's grace period.
    pub async fn link_stored_blob(&self, repo: String, digest: Digest) -> Result<bool, MetaError> {
        self.write(move |txn| {
            let rec: Option<BlobRecord> =
                txn.open_table(BLOBS)?.get(digest.as_str())?.map(|v| decode(v.value())).transpose()?;
            let Some(old) = rec.filter(|r| !r.deleting) else {
                return Ok(false);
            };
            let mut rec = old.clone();
            rec.created = rec.created.max(model::now());
            put_blob_row(txn, digest.as_str(), Some(&old), &rec)?;
            link_blob(txn, &repo, &digest)?;
            Ok(true)
        })
        .await
    }

    /// Link a stored manifest into `repo` (the entitlement rule decided `repo` may have
    /// it), with its referrer row when it has a subject. Returns false when no manifest
    /// row exists.
    pub async fn link_manifest(&self, repo: String, digest: Digest) -> Result<bool, MetaError> {
        self.write(move |txn| {
            let d = digest.as_str();
            let rec: Option<ManifestRecord> =
                txn.open_table(MANIFESTS)?.get(d)?.map(|v| decode(v.value())).transpose()?;
            let Some(rec) = rec else {
                return Ok(false);
            };
            let r = repo.as_str();
            if txn.open_table(REPO_MANIFESTS)?.insert((r, d), ())?.is_none() {
                add(&mut txn.open_table(REPOS)?, r, 1)?;
                add(&mut txn.open_table(MANIFEST_LINKS)?, d, 1)?;
                txn.open_table(MANIFEST_REPOS)?.insert((d, r), ())?;
            }
            if let Some(subject) = &rec.subject {
                let desc = Descriptor {
                    media_type: rec.media_type.clone(),
                    digest: digest.clone(),
                    size: rec.size,
                    artifact_type: rec.artifact_type.clone(),
                    annotations: rec.annotations.clone(),
                };
                txn.open_table(REFERRERS)?.insert((r, subject.as_str(), d), encode(&desc).as_slice())?;
            }
            Ok(true)
        })
        .await
    }

    /// Store a manifest, link it, move the tag and record the referrer — all or
    /// nothing, after checking every reference is linked in the repository.
    pub async fn put_manifest(&self, m: PutManifest) -> Result<(), MetaError> {
        let queue = self.events.clone();
        self.write(move |txn| {
            let repo = m.repo.as_str();
            if m.check_refs {
                let links = txn.open_table(REPO_BLOBS)?;
                for b in &m.blobs {
                    if links.get((repo, b.as_str()))?.is_none() {
                        return Err(MetaError::MissingReference(b.clone()));
                    }
                }
                let mlinks = txn.open_table(REPO_MANIFESTS)?;
                for c in &m.manifests {
                    if mlinks.get((repo, c.as_str()))?.is_none() {
                        return Err(MetaError::MissingReference(c.clone()));
                    }
                }
            }
            let d = m.digest.as_str();
            let mut manifests = txn.open_table(MANIFESTS)?;
            if manifests.get(d)?.is_none() {
                manifests.insert(d, encode(&m.record).as_slice())?;
                txn.open_table(MANIFEST_BODIES)?.insert(d, m.body.as_slice())?;
                let mut refs = txn.open_table(REFS)?;
                let mut by = txn.open_table(REFERENCED_BY)?;
                for r in &m.record.refs {
                    add(&mut refs, r.as_str(), 1)?;
                    by.insert((r.as_str(), d), ())?;
                }
            }
            let newly_linked = txn.open_table(REPO_MANIFESTS)?.insert((repo, d), ())?.is_none();
            if newly_linked {
                add(&mut txn.open_table(REPOS)?, repo, 1)?;
                add(&mut txn.open_table(MANIFEST_LINKS)?, d, 1)?;
                txn.open_table(MANIFEST_REPOS)?.insert((d, repo), ())?;
            }
            if let Some(tag) = &m.tag {
                let rec =
                    TagRecord { digest: m.digest.clone(), updated: model::now(), checked: m.tag_checked };
                put_tag(txn, repo, tag, &rec)?;
            }
            if let (Some(desc), Some(subject)) = (&m.referrer, &m.record.subject) {
                txn.open_table(REFERRERS)?.insert((repo, subject.as_str(), d), encode(desc).as_slice())?;
            }
            events::enqueue(txn, &queue, m.event)
        })
        .await
        .map(|seq| self.events_published(seq))
    }

    /// Unlink a manifest from `repo`, with every tag that points at it and its
    /// referrer row. The manifest row itself stays for GC.
    /// `event` (its target completed from the manifest row) is recorded with it.
    pub async fn delete_manifest(
        &self,
        repo: String,
        digest: Digest,
        event: Option<EventRecord>,
    ) -> Result<(), MetaError> {
        let queue = self.events.clone();
        self.write(move |txn| {
            if !unlink_manifest(txn, &repo, &digest)? {
                return Err(MetaError::NotFound);
            }
            let event = events::complete_delete(txn, event, &digest)?;
            events::enqueue(txn, &queue, event)
        })
        .await
        .map(|seq| self.events_published(seq))
    }

    /// Record that the mirror confirmed `tag` upstream at `checked`.
    pub async fn touch_tag(&self, repo: String, tag: String, checked: u64) -> Result<(), MetaError> {
        self.write(move |txn| {
            let rec: Option<TagRecord> = txn
                .open_table(TAGS)?
                .get((repo.as_str(), tag.as_str()))?
                .map(|v| decode(v.value()))
                .transpose()?;
            if let Some(mut rec) = rec {
                rec.checked = Some(checked);
                put_tag(txn, &repo, &tag, &rec)?;
            }
            Ok(())
        })
        .await
    }

    /// Hold a lease on `key` (an in-flight fill) until `release_lease` or restart.
    pub async fn take_lease(&self, key: LeaseKey, rec: LeaseRecord) -> Result<(), MetaError> {
        self.write(move |txn| {
            txn.open_table(LEASES)?.insert(key.encode().as_str(), encode(&rec).as_slice())?;
            Ok(())
        })
        .await
    }

    /// `take_lease`, returning a guard that releases the lease when dropped, however
    /// its holder ends (a panicking fill task included).
    pub async fn hold_lease(&self, key: LeaseKey, rec: LeaseRecord) -> Result<LeaseGuard, MetaError> {
        self.take_lease(key.clone(), rec).await?;
        Ok(LeaseGuard::new(self.clone(), key))
    }

    pub async fn release_lease(&self, key: LeaseKey) -> Result<(), MetaError> {
        self.write(move |txn| {
            txn.open_table(LEASES)?.remove(key.encode().as_str())?;
            Ok(())
        })
        .await
    }

    /// Release `key` without waiting for the commit: for `Drop` (a guard dropped by a
    /// panicking task cannot await). Failures are logged; startup clears leases anyway.
    pub fn release_lease_detached(&self, key: LeaseKey) {
        let (job, _done) = writer::job(move |txn| {
            txn.open_table(LEASES)?.remove(key.encode().as_str())?;
            Ok(())
        });
        let sent = self.writer.sender().is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            tracing::warn!("cannot release a lease: the metadata writer is closed");
        }
    }

    /// Remove one tag; the manifest stays.
    /// `event` (its target completed from the tag row) is recorded with it.
    pub async fn delete_tag(
        &self,
        repo: String,
        tag: String,
        event: Option<EventRecord>,
    ) -> Result<(), MetaError> {
        let queue = self.events.clone();
        self.write(move |txn| {
            let Some(rec) = remove_tag(txn, &repo, &tag)? else {
                return Err(MetaError::NotFound);
            };
            let event = event.map(|e| EventRecord { tag: Some(tag.clone()), digest: Some(rec.digest), ..e });
            events::enqueue(txn, &queue, event)
        })
        .await
        .map(|seq| self.events_published(seq))
    }

    /// Unlink a blob from `repo`; the file and row stay for GC.
    pub async fn delete_blob(&self, repo: String, digest: Digest) -> Result<(), MetaError> {
        self.write(move |txn| {
            let removed = txn.open_table(REPO_BLOBS)?.remove((repo.as_str(), digest.as_str()))?.is_some();
            if removed {
                txn.open_table(BLOB_LINKS)?.remove((digest.as_str(), repo.as_str()))?;
                Ok(())
            } else {
                Err(MetaError::NotFound)
            }
        })
        .await
    }

    pub async fn create_upload(&self, id: String, rec: UploadRecord) -> Result<(), MetaError> {
        self.write(move |txn| {
            txn.open_table(UPLOADS)?.insert(id.as_str(), encode(&rec).as_slice())?;
            Ok(())
        })
        .await
    }

    /// Remove an upload session row; returns whether it existed.
    pub async fn delete_upload(&self, id: String) -> Result<bool, MetaError> {
        self.write(move |txn| Ok(txn.open_table(UPLOADS)?.remove(id.as_str())?.is_some())).await
    }

    /// Remove every lease row (startup: the process that held them is gone).
    pub async fn clear_leases(&self) -> Result<usize, MetaError> {
        self.write(move |txn| {
            let mut t = txn.open_table(LEASES)?;
            let n = usize::try_from(t.len()?).unwrap_or(usize::MAX);
            t.retain(|_, _| false)?;
            Ok(n)
        })
        .await
    }
}

/// Unlink a manifest from `repo` (keeping `REPOS` and `MANIFEST_LINKS` exact), with
/// every tag in `repo` that points at it and its referrer row. The manifest row stays.
/// Returns false, changing nothing, when `repo` does not link it.
pub(crate) fn unlink_manifest(
    txn: &WriteTransaction,
    repo: &str,
    digest: &Digest,
) -> Result<bool, MetaError> {
    let (r, d) = (repo, digest.as_str());
    let mut links = txn.open_table(REPO_MANIFESTS)?;
    if links.remove((r, d))?.is_none() {
        return Ok(false);
    }
    add(&mut txn.open_table(REPOS)?, r, -1)?;
    add(&mut txn.open_table(MANIFEST_LINKS)?, d, -1)?;
    txn.open_table(MANIFEST_REPOS)?.remove((d, r))?;
    let mut doomed = Vec::new();
    for item in txn.open_table(TAG_DIGESTS)?.range((r, d, "")..)? {
        let (k, _) = item?;
        let (kr, kd, kt) = k.value();
        if (kr, kd) != (r, d) {
            break;
        }
        doomed.push(kt.to_owned());
    }
    for t in doomed {
        remove_tag(txn, r, &t)?;
    }
    let subject = txn
        .open_table(MANIFESTS)?
        .get(d)?
        .map(|v| decode::<ManifestRecord>(v.value()))
        .transpose()?
        .and_then(|m| m.subject);
    if let Some(s) = subject {
        txn.open_table(REFERRERS)?.remove((r, s.as_str(), d))?;
    }
    Ok(true)
}

/// Point `tag` in `repo` at `rec.digest`, keeping `TAG_DIGESTS` the exact reverse of
/// `TAGS`: a tag that pointed elsewhere loses that entry. Every write of a tag row goes
/// through here (and every removal through `remove_tag`), so the two cannot drift.
fn put_tag(txn: &WriteTransaction, repo: &str, tag: &str, rec: &TagRecord) -> Result<(), MetaError> {
    let old: Option<model::TagHead> = txn
        .open_table(TAGS)?
        .insert((repo, tag), encode(rec).as_slice())?
        .map(|v| decode(v.value()))
        .transpose()?;
    let mut rev = txn.open_table(TAG_DIGESTS)?;
    if let Some(old) = old.filter(|o| o.digest != rec.digest) {
        rev.remove((repo, old.digest.as_str(), tag))?;
    }
    rev.insert((repo, rec.digest.as_str(), tag), ())?;
    Ok(())
}

/// Remove `tag` from `repo` and its `TAG_DIGESTS` entry; the row it held, if any.
fn remove_tag(txn: &WriteTransaction, repo: &str, tag: &str) -> Result<Option<TagRecord>, MetaError> {
    let old: Option<TagRecord> =
        txn.open_table(TAGS)?.remove((repo, tag))?.map(|v| decode(v.value())).transpose()?;
    if let Some(old) = &old {
        txn.open_table(TAG_DIGESTS)?.remove((repo, old.digest.as_str(), tag))?;
    }
    Ok(old)
}

/// Write a blob row, replacing `old` (what the row held, if any), and keep `STATS`
/// exact: `old` is uncounted and `new` counted, each only when live (not `deleting`);
/// and `LRU`: `old`'s entry goes and `new`'s comes, each only when live and mirrored.
/// Every write of a blob row goes through here.
pub(crate) fn put_blob_row(
    txn: &WriteTransaction,
    key: &str,
    old: Option<&BlobRecord>,
    new: &BlobRecord,
) -> Result<(), MetaError> {
    txn.open_table(BLOBS)?.insert(key, encode(new).as_slice())?;
    let live = |r: &&BlobRecord| !r.deleting;
    let (was, is) = (old.filter(live), Some(new).filter(live));
    let mirrored = |r: &&BlobRecord| r.origin == Origin::Mirrored;
    let (lru_was, lru_is) = (was.filter(mirrored), is.filter(mirrored));
    if lru_was.is_some() || lru_is.is_some() {
        let accessed = txn.open_table(ACCESS)?.get(key)?.map(|v| v.value());
        let mut lru = txn.open_table(LRU)?;
        if let Some(r) = lru_was {
            lru.remove((lru_time(accessed, r), key))?;
        }
        if let Some(r) = lru_is {
            lru.insert((lru_time(accessed, r), key), ())?;
        }
    }
    if was.map(|r| (r.origin, r.size)) == is.map(|r| (r.origin, r.size)) {
        return Ok(());
    }
    let mut t = txn.open_table(STATS)?;
    let mut st = read_stats(&t)?;
    if let Some(r) = was {
        st.count(r, true);
    }
    if let Some(r) = is {
        st.count(r, false);
    }
    write_stats(&mut t, &st)
}

const STAT_KEYS: [&str; 4] = ["pushed_blobs", "pushed_bytes", "mirrored_blobs", "mirrored_bytes"];

fn read_stats(t: &impl ReadableTable<&'static str, u64>) -> Result<StoreStats, MetaError> {
    let mut v = [0u64; 4];
    for (k, slot) in STAT_KEYS.iter().zip(v.iter_mut()) {
        *slot = t.get(*k)?.map_or(0, |x| x.value());
    }
    Ok(StoreStats { pushed_blobs: v[0], pushed_bytes: v[1], mirrored_blobs: v[2], mirrored_bytes: v[3] })
}

fn write_stats(t: &mut redb::Table<&str, u64>, st: &StoreStats) -> Result<(), MetaError> {
    let v = [st.pushed_blobs, st.pushed_bytes, st.mirrored_blobs, st.mirrored_bytes];
    for (k, n) in STAT_KEYS.iter().zip(v) {
        t.insert(*k, n)?;
    }
    Ok(())
}

/// A mirrored blob's place in `LRU`: its recorded access, else its creation.
pub(crate) fn lru_time(accessed: Option<u64>, rec: &BlobRecord) -> u64 {
    accessed.unwrap_or_else(|| rec.created.saturating_mul(1000))
}

/// What `LRU` must hold, from a scan of `BLOBS` and `ACCESS`.
fn scan_lru(
    blobs: &impl ReadableTable<&'static str, &'static [u8]>,
    access: &impl ReadableTable<&'static str, u64>,
) -> Result<std::collections::BTreeSet<(u64, String)>, MetaError> {
    let mut out = std::collections::BTreeSet::new();
    for item in blobs.iter()? {
        let (k, v) = item?;
        let rec: BlobRecord = decode(v.value())?;
        if !rec.deleting && rec.origin == Origin::Mirrored {
            let at = access.get(k.value())?.map(|v| v.value());
            out.insert((lru_time(at, &rec), k.value().to_owned()));
        }
    }
    Ok(out)
}

/// What `REFERENCED_BY` must hold, from a scan of `MANIFESTS`.
fn scan_referenced_by(
    rows: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<std::collections::BTreeSet<(String, String)>, MetaError> {
    let mut out = std::collections::BTreeSet::new();
    for item in rows.iter()? {
        let (k, v) = item?;
        let rec: ManifestRecord = decode(v.value())?;
        for r in rec.refs {
            out.insert((r.as_str().to_owned(), k.value().to_owned()));
        }
    }
    Ok(out)
}

/// What `MANIFEST_REPOS` must hold, from a scan of `REPO_MANIFESTS`.
fn scan_manifest_repos(
    links: &impl ReadableTable<(&'static str, &'static str), ()>,
) -> Result<std::collections::BTreeSet<(String, String)>, MetaError> {
    let mut out = std::collections::BTreeSet::new();
    for item in links.iter()? {
        let (k, _) = item?;
        let (r, d) = k.value();
        out.insert((d.to_owned(), r.to_owned()));
    }
    Ok(out)
}

/// What `TAG_DIGESTS` must hold, from a scan of `TAGS`.
fn scan_tag_digests(
    tags: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
) -> Result<std::collections::BTreeSet<(String, String, String)>, MetaError> {
    let mut out = std::collections::BTreeSet::new();
    for item in tags.iter()? {
        let (k, v) = item?;
        let (r, t) = k.value();
        let head: model::TagHead = decode(v.value())?;
        out.insert((r.to_owned(), head.digest.as_str().to_owned(), t.to_owned()));
    }
    Ok(out)
}

/// Every entry of a two-string-key table, as owned pairs.
fn pairs(
    t: &impl ReadableTable<(&'static str, &'static str), ()>,
) -> Result<std::collections::BTreeSet<(String, String)>, MetaError> {
    let mut out = std::collections::BTreeSet::new();
    for item in t.iter()? {
        let (k, _) = item?;
        let (a, b) = k.value();
        out.insert((a.to_owned(), b.to_owned()));
    }
    Ok(out)
}

/// Count every live blob row (one pass over `BLOBS`).
fn scan_stats(t: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<StoreStats, MetaError> {
    let mut st = StoreStats::default();
    for item in t.iter()? {
        let (_, v) = item?;
        let rec: BlobRecord = decode(v.value())?;
        if !rec.deleting {
            st.count(&rec, false);
        }
    }
    Ok(st)
}

/// Link a blob into a repository, both directions.
fn link_blob(txn: &WriteTransaction, repo: &str, digest: &Digest) -> Result<(), MetaError> {
    txn.open_table(REPO_BLOBS)?.insert((repo, digest.as_str()), ())?;
    txn.open_table(BLOB_LINKS)?.insert((digest.as_str(), repo), ())?;
    Ok(())
}

/// Add `delta` to a counter row; a count that reaches zero is removed.
fn add(t: &mut redb::Table<&str, u64>, key: &str, delta: i64) -> Result<(), MetaError> {
    let n = t.get(key)?.map_or(0, |v| v.value());
    let n = n.saturating_add_signed(delta);
    if n == 0 {
        t.remove(key)?;
    } else {
        t.insert(key, n)?;
    }
    Ok(())
}

/// One page of `repo`'s tags in `TAGS`, in order: those after `last`, at most `n`, each
/// made a row by `row` (tag, encoded record). The flag says whether more remain. The one
/// walk behind the tags list and the web page's tag table.
pub(super) fn tag_page<T>(
    tags: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    repo: &str,
    last: Option<&str>,
    n: usize,
    mut row: impl FnMut(&str, &[u8]) -> Result<T, MetaError>,
) -> Result<(Vec<T>, bool), MetaError> {
    let mut out = Vec::new();
    for item in tags.range((repo, last.unwrap_or(""))..)? {
        let (k, v) = item?;
        let (r, tag) = k.value();
        if r != repo {
            break;
        }
        if Some(tag) == last {
            continue;
        }
        if out.len() == n {
            return Ok((out, true));
        }
        out.push(row(tag, v.value())?);
    }
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second open of a database someone holds is the typed `Locked`, which the CLI
    /// uses to talk to the running server instead of failing.
    /// A cut while `meta.redb` was first being built leaves only the temporary file,
    /// never a half-initialised `meta.redb`: the next start builds it afresh.
    #[test]
    fn a_half_built_new_database_is_replaced_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        std::fs::write(dir.path().join("meta.redb.creating"), b"not a redb file").unwrap();
        let meta = Meta::open(&path).unwrap();
        assert!(meta.tag("a", "t").unwrap().is_none());
        drop(meta);
        assert!(path.exists());
        assert!(!dir.path().join("meta.redb.creating").exists());
        // And an existing database is opened, not rebuilt.
        let meta = Meta::open(&path).unwrap();
        assert!(meta.tag("a", "t").unwrap().is_none());
    }

    #[test]
    fn a_held_database_is_locked_not_a_storage_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.redb");
        let held = Meta::open(&path).expect("first open");
        assert!(matches!(Meta::open(&path), Err(MetaError::Locked)), "second open must say Locked");
        drop(held);
    }

    fn rec(size: u64, origin: Origin, created: u64) -> BlobRecord {
        BlobRecord { size, blake3: String::new(), created, origin, deleting: false }
    }

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    /// A GET by tag and by digest read the same row in one snapshot; an unlinked
    /// repository, an unknown tag or digest is `None`; the light records decode from the
    /// full ones they stand for.
    #[tokio::test]
    async fn serve_manifest_by_tag_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.redb")).unwrap();
        let body = br#"{"schemaVersion":2}"#.to_vec();
        let digest = Digest::of(&body);
        let record = ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: body.len() as u64,
            subject: None,
            artifact_type: Some("a/b".into()),
            annotations: None,
            created: 1,
            origin: Origin::Pushed,
            refs: vec![d("c"), d("l")],
        };
        let head: model::ManifestHead = decode(&encode(&record)).unwrap();
        assert_eq!((head.media_type.as_str(), head.size), (record.media_type.as_str(), record.size));
        let tag = TagRecord { digest: digest.clone(), updated: 3, checked: Some(4) };
        assert_eq!(decode::<model::TagHead>(&encode(&tag)).unwrap().digest, digest);
        meta.put_manifest(PutManifest {
            repo: "app".into(),
            digest: digest.clone(),
            record: record.clone(),
            body: body.clone(),
            blobs: Vec::new(),
            manifests: Vec::new(),
            tag: Some("v1".into()),
            tag_checked: None,
            referrer: None,
            check_refs: false,
            event: None,
        })
        .await
        .unwrap();
        for key in [ManifestKey::Tag("v1"), ManifestKey::Digest(&digest)] {
            let m = meta.serve_manifest("app", key, true).unwrap().expect("served");
            assert_eq!(m.digest, digest);
            assert_eq!((m.media_type.as_str(), m.size), (record.media_type.as_str(), record.size));
            assert_eq!(m.body.as_deref(), Some(&body[..]));
            let h = meta.serve_manifest("app", key, false).unwrap().expect("served");
            assert!(h.body.is_none());
            assert!(meta.serve_manifest("other", key, true).unwrap().is_none());
        }
        assert!(meta.serve_manifest("app", ManifestKey::Tag("v2"), true).unwrap().is_none());
        assert!(meta.serve_manifest("app", ManifestKey::Digest(&d("x")), true).unwrap().is_none());
    }

    /// The memo (`memo.rs`) never answers from before an acknowledged commit: a tag
    /// moved, a manifest unlinked or a tag deleted is seen by the very next read, in
    /// the same task, with no wait.
    #[tokio::test]
    async fn memoised_answers_are_exactly_as_fresh_as_redb() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.redb")).unwrap();
        let put = |n: u8, tag: &str| tagged("app", &format!(r#"{{"schemaVersion":2,"n":{n}}}"#), tag);
        let served = |key: ManifestKey<'_>| meta.serve_manifest("app", key, true).unwrap().map(|m| m.digest);
        let (a, b) = (put(1, "v1"), put(2, "v1"));
        let (da, db) = (a.digest.clone(), b.digest.clone());
        meta.put_manifest(a).await.unwrap();
        // Twice: the second is a memo hit, and a HEAD takes the memoised answer too.
        assert_eq!(served(ManifestKey::Tag("v1")), Some(da.clone()));
        assert_eq!(served(ManifestKey::Tag("v1")), Some(da.clone()));
        let head = meta.serve_manifest("app", ManifestKey::Tag("v1"), false).unwrap().unwrap();
        assert!(head.body.is_none());
        // The tag moves: the next read sees b.
        meta.put_manifest(b).await.unwrap();
        assert_eq!(served(ManifestKey::Tag("v1")), Some(db.clone()));
        assert_eq!(served(ManifestKey::Digest(&da)), Some(da.clone()), "a is still linked by digest");
        assert_eq!(served(ManifestKey::Digest(&da)), Some(da.clone()));
        // a is unlinked: gone at once, though it was just memoised.
        meta.delete_manifest("app".into(), da.clone(), None).await.unwrap();
        assert_eq!(served(ManifestKey::Digest(&da)), None);
        assert_eq!(served(ManifestKey::Tag("v1")), Some(db.clone()));
        // The tag is deleted: gone at once.
        meta.delete_tag("app".into(), "v1".into(), None).await.unwrap();
        assert_eq!(served(ManifestKey::Tag("v1")), None);
        assert_eq!(served(ManifestKey::Digest(&db)), Some(db));

        // Blob rows: memoised on read, gone at once when unlinked.
        let blob = d("layer");
        meta.commit_blob("app".into(), blob.clone(), rec(7, Origin::Pushed, 1), None, None).await.unwrap();
        for _ in 0..2 {
            assert_eq!(meta.repo_blob_size("app", &blob).unwrap(), Some(7));
        }
        assert!(
            meta.repo_blob_size("other", &blob).unwrap().is_none(),
            "a memo hit never crosses repositories"
        );
        meta.delete_blob("app".into(), blob.clone()).await.unwrap();
        assert!(meta.repo_blob_size("app", &blob).unwrap().is_none());
    }

    /// Make the closed `meta.redb` at `path` look like a file from an older version:
    /// `change` drops the tables that version did not have.
    fn as_older_file(path: &Path, change: impl FnOnce(&WriteTransaction)) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        change(&txn);
        txn.commit().unwrap();
    }

    /// `index_drift` is empty: every kept index equals a scan of its rows.
    fn assert_exact(meta: &Meta) {
        let drift = meta.index_drift().unwrap();
        assert!(drift.is_empty(), "indexes differ from a scan: {drift:?}");
    }

    /// A pushed image manifest `body` (no references) in `repo`, tagged `tag`.
    fn tagged(repo: &str, body: &str, tag: &str) -> PutManifest {
        PutManifest::image(repo, body.as_bytes(), Vec::new(), Origin::Pushed, Some(tag))
    }

    /// Put every manifest at once (one group commit, not one fsync each).
    async fn put_all(meta: &Meta, puts: Vec<PutManifest>) {
        for r in futures_util::future::join_all(puts.into_iter().map(|p| meta.put_manifest(p))).await {
            r.unwrap();
        }
    }

    /// Deleting a manifest takes exactly the tags that point at it (found through
    /// `TAG_DIGESTS`): not the many tags of other manifests in its repository, sorted
    /// before and after its own, not a tag moved from it to another manifest, not its
    /// tag in another repository. The index stays the exact reverse of `TAGS` through
    /// each kind of tag write: new, moved, touched, deleted, deleted with its manifest.
    #[tokio::test]
    async fn deleting_a_manifest_takes_exactly_its_tags() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.redb")).unwrap();
        let mut puts: Vec<PutManifest> =
            ["a", "b", "c", "moved"].iter().map(|t| tagged("app", "doomed", t)).collect();
        puts.push(tagged("other", "doomed", "a"));
        put_all(&meta, puts).await;
        let keep = |k: usize| format!("keep {k}");
        let puts = (0..300)
            .flat_map(|k| [format!("0{k:03}"), format!("z{k:03}")].map(|t| tagged("app", &keep(k), &t)));
        put_all(&meta, puts.collect()).await;
        assert_exact(&meta);
        // "moved" goes to another manifest; touching a tag keeps it where it is.
        meta.put_manifest(tagged("app", &keep(0), "moved")).await.unwrap();
        meta.touch_tag("app".into(), "a".into(), 7).await.unwrap();
        assert_eq!(meta.tag("app", "a").unwrap().unwrap().checked, Some(7));
        assert_exact(&meta);

        meta.delete_manifest("app".into(), d("doomed"), None).await.unwrap();
        for t in ["a", "b", "c"] {
            assert!(meta.tag("app", t).unwrap().is_none(), "tag {t} of the deleted manifest stays");
        }
        assert_eq!(meta.tag("app", "moved").unwrap().unwrap().digest, d(&keep(0)));
        assert_eq!(meta.tag("other", "a").unwrap().unwrap().digest, d("doomed"));
        let (tags, more) = meta.tags("app", None, 1000).unwrap().unwrap();
        assert_eq!((tags.len(), more), (601, false));
        assert_exact(&meta);
        assert!(matches!(
            meta.delete_manifest("app".into(), d("doomed"), None).await,
            Err(MetaError::NotFound)
        ));

        // A deleted tag leaves the index; so do the tags of the next manifest deleted.
        meta.delete_tag("app".into(), "moved".into(), None).await.unwrap();
        assert_exact(&meta);
        meta.delete_manifest("app".into(), d(&keep(0)), None).await.unwrap();
        let (tags, _) = meta.tags("app", None, 1000).unwrap().unwrap();
        assert_eq!(tags.len(), 598);
        assert!(!tags.iter().any(|t| t == "0000" || t == "z000"));
        assert_exact(&meta);
    }

    /// A `meta.redb` from before `TAG_DIGESTS` gets it built from `TAGS` once, at open:
    /// exact, and a manifest delete then finds its tags through it.
    #[tokio::test]
    async fn an_older_database_gets_the_tag_index_built() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let meta = Meta::open(&path).unwrap();
        let mut puts: Vec<PutManifest> =
            (0..50).map(|k| tagged("app", &format!("m{}", k % 5), &format!("t{k:02}"))).collect();
        puts.push(tagged("other", "m0", "t00"));
        put_all(&meta, puts).await;
        drop(meta);
        as_older_file(&path, |txn| assert!(txn.delete_table(TAG_DIGESTS).unwrap()));
        let meta = Meta::open(&path).unwrap();
        assert_exact(&meta);
        meta.delete_manifest("app".into(), d("m0"), None).await.unwrap();
        let (tags, _) = meta.tags("app", None, 100).unwrap().unwrap();
        assert_eq!(tags.len(), 40, "the ten tags of m0 go: {tags:?}");
        assert!(tags.iter().all(|t| meta.tag("app", t).unwrap().unwrap().digest != d("m0")));
        assert_eq!(meta.tag("other", "t00").unwrap().unwrap().digest, d("m0"));
        assert_exact(&meta);
        // Reopened as is: not rebuilt, still exact.
        drop(meta);
        assert_exact(&Meta::open(&path).unwrap());
    }

    /// The counters equal a scan of the rows after each kind of change: push, fill, a
    /// push of a mirrored blob (origin upgrade), a mount into a hosted repository, GC's
    /// mark and row removal, eviction — and the migration of a file without them.
    #[tokio::test]
    async fn counters_match_a_scan_across_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let meta = Meta::open(&path).unwrap();
        let check = |meta: &Meta, want: StoreStats| {
            let (c, s) = (meta.store_stats().unwrap(), meta.store_stats_by_scan().unwrap());
            assert_eq!(c, s, "counters and scan differ");
            assert_eq!(c, want);
            let drift = meta.index_drift().unwrap();
            assert!(drift.is_empty(), "indexes differ from a scan: {drift:?}");
        };
        check(&meta, StoreStats::default());
        let st = |pb, pn, mb, mn| StoreStats {
            pushed_blobs: pb,
            pushed_bytes: pn,
            mirrored_blobs: mb,
            mirrored_bytes: mn,
        };
        // Push two blobs, one of them twice (same content: counted once).
        meta.commit_blob("app".into(), d("p1"), rec(10, Origin::Pushed, 1), None, None).await.unwrap();
        meta.commit_blob("app".into(), d("p2"), rec(20, Origin::Pushed, 1), None, None).await.unwrap();
        meta.commit_blob("other".into(), d("p2"), rec(20, Origin::Pushed, 1), None, None).await.unwrap();
        check(&meta, st(2, 30, 0, 0));
        // Fill three mirrored blobs.
        for (k, n) in [("m1", 100), ("m2", 200), ("m3", 300)] {
            meta.commit_blob("hub/lib/x".into(), d(k), rec(n, Origin::Mirrored, 1), None, None)
                .await
                .unwrap();
        }
        check(&meta, st(2, 30, 3, 600));
        // A push of mirrored content makes it pushed.
        meta.commit_blob("app".into(), d("m1"), rec(100, Origin::Pushed, 1), None, None).await.unwrap();
        check(&meta, st(3, 130, 2, 500));
        // A mount into a hosted repository, too; a mirrored mount changes nothing.
        let linked = meta
            .mount_blob("app".into(), d("m2"), Some("hub/lib/x".into()), None, Origin::Pushed)
            .await
            .unwrap();
        assert!(linked);
        let linked =
            meta.mount_blob("hub/lib/y".into(), d("m3"), None, None, Origin::Mirrored).await.unwrap();
        assert!(linked);
        check(&meta, st(4, 330, 1, 300));
        // Reads move a mirrored blob in the eviction order; a pushed one has no place.
        meta.record_access(vec![(d("m3"), 9_000), (d("p2"), 9_000)]).await.unwrap();
        check(&meta, st(4, 330, 1, 300));
        let order = meta.lru_oldest(None, 10).unwrap();
        assert_eq!(
            order.iter().map(|(at, b)| (*at, b.digest.clone())).collect::<Vec<_>>(),
            vec![(9_000, d("m3"))]
        );
        // Manifests: a mirrored image on m3 under an index, both in hub/lib/y, and the
        // index also linked in a hosted repository; a pushed image on p2.
        let man = |repo: &str, body: &str, refs: Vec<Digest>, origin: Origin| {
            PutManifest::image(repo, body.as_bytes(), refs, origin, Some("t"))
        };
        meta.put_manifest(man("hub/lib/y", "img", vec![d("m3")], Origin::Mirrored)).await.unwrap();
        meta.put_manifest(man("hub/lib/y", "idx", vec![d("img")], Origin::Mirrored)).await.unwrap();
        assert!(meta.link_manifest("app".into(), d("idx")).await.unwrap());
        meta.put_manifest(man("app", "pimg", vec![d("p2")], Origin::Pushed)).await.unwrap();
        check(&meta, st(4, 330, 1, 300));
        // GC: marking takes the row out of the counters, removing it changes nothing more.
        let marked = meta.gc_mark_blobs(vec![d("p1")], MarkMode::Garbage { cutoff: 2 }).await.unwrap();
        assert_eq!(marked, vec![d("p1")]);
        check(&meta, st(3, 320, 1, 300));
        meta.gc_remove_blob_rows(marked).await.unwrap();
        check(&meta, st(3, 320, 1, 300));
        // Eviction takes mirrored blobs only.
        let all: RepoFilter = Arc::new(|r: &str| r.starts_with("hub/"));
        let (marked, links) = meta.evict_blobs(vec![d("m3"), d("p2")], all).await.unwrap();
        assert_eq!(marked, vec![d("m3")]);
        // The image and the index went from hub/lib/y; the hosted link of the index and
        // the pushed image stay.
        assert_eq!(links, 2);
        assert!(meta.repo_manifest("hub/lib/y", &d("img"), false).unwrap().is_none());
        assert!(meta.repo_manifest("hub/lib/y", &d("idx"), false).unwrap().is_none());
        assert!(meta.repo_manifest("app", &d("idx"), false).unwrap().is_some());
        assert!(meta.repo_manifest("app", &d("pimg"), false).unwrap().is_some());
        check(&meta, st(3, 320, 0, 0));
        // GC of the manifests once the hosted link goes: the index releases the image.
        meta.delete_manifest("app".into(), d("idx"), None).await.unwrap();
        let gone = meta.gc_delete_manifests(vec![d("idx"), d("img")]).await.unwrap();
        assert_eq!(gone, vec![d("idx"), d("img")]);
        check(&meta, st(3, 320, 0, 0));
        // A fill of a blob GC is still deleting replaces the row: counted again.
        meta.commit_blob("hub/lib/x".into(), d("m3"), rec(300, Origin::Mirrored, 5), None, None)
            .await
            .unwrap();
        check(&meta, st(3, 320, 1, 300));
        drop(meta);

        // An older file without the table: the counters are computed once at open.
        as_older_file(&path, |txn| assert!(txn.delete_table(STATS).unwrap()));
        let meta = Meta::open(&path).unwrap();
        check(&meta, st(3, 320, 1, 300));
        // Reopened as is: still exact. Then the same for a file without the indexes.
        drop(meta);
        let meta = Meta::open(&path).unwrap();
        check(&meta, st(3, 320, 1, 300));
        drop(meta);
        as_older_file(&path, |txn| {
            assert!(txn.delete_table(LRU).unwrap());
            assert!(txn.delete_table(REFERENCED_BY).unwrap());
            assert!(txn.delete_table(MANIFEST_REPOS).unwrap());
        });
        let meta = Meta::open(&path).unwrap();
        check(&meta, st(3, 320, 1, 300));
        assert_eq!(meta.lru_oldest(None, 10).unwrap().len(), 1);
    }
}
