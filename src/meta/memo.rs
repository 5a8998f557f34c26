//! Memos of pull-path reads (`Meta::serve_manifest`, `Meta::repo_blob_size`), exactly as
//! fresh as redb.
//!
//! A manifest GET by tag costs four table opens, three B-tree lookups and a JSON
//! decode in redb (~26k instructions of ~76k per request, callgrind, when the memo
//! came in), a blob GET two `repo_blob_size` reads (three then: ~39k of ~79k); a registry under pull load answers the same few
//! (repository, reference) pairs over and over. A memo keeps their answers in memory,
//! each stamped with the commit generation it was read at, and serves one only while
//! that generation is still current.
//!
//! The generation is bumped by the writer thread after every commit (or abort) and
//! before any caller of that transaction is answered (`writer::run`). A reader loads
//! the generation *before* it begins its read transaction, so an answer stamped `g`
//! was read from a snapshot at least as new as the commit that made `g`. A hit needs
//! the stamp to equal the current generation, so no commit has been acknowledged since
//! the snapshot: the answer is one a plain read transaction could have given at that
//! moment. Any commit invalidates every entry — coarse, but pulls are reads, and a
//! read-mostly registry is where the memo pays.
//!
//! Bounded: at most `MAX_ENTRIES` entries and `MAX_BYTES` (by each value's weight)
//! per memo; manifest bodies over `MAX_BODY` are never memoised. Misses (404) are not
//! memoised.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use super::{ManifestKey, ServedManifest};

const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: usize = 32 << 20;
/// Larger manifest bodies (big indexes) are read from redb each time.
pub(super) const MAX_BODY: u64 = 1 << 20;

/// The commit generation every memo's entries are stamped with.
#[derive(Default)]
pub(super) struct Generation(AtomicU64);

impl Generation {
    /// The current generation: load it before beginning the read whose answer is to be
    /// memoised.
    pub(super) fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Called by the writer thread after each commit, before its callers are answered.
    pub(super) fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a memoised value costs to keep, in bytes (roughly).
pub(super) trait Weigh: Clone {
    fn weight(&self) -> usize;
}

impl Weigh for ServedManifest {
    fn weight(&self) -> usize {
        self.body.as_ref().map_or(0, bytes::Bytes::len) + self.media_type.len() + 128
    }
}

/// A blob's size: what the pull path asks of a linked blob's row.
impl Weigh for u64 {
    fn weight(&self) -> usize {
        64
    }
}

/// A memo key: a repository and a reference within it (`t` + tag, `d` + digest).
#[derive(Clone, Copy)]
pub(super) struct Key<'a> {
    repo: &'a str,
    kind: char,
    name: &'a str,
}

impl<'a> Key<'a> {
    pub(super) fn manifest(repo: &'a str, key: &ManifestKey<'a>) -> Self {
        match key {
            ManifestKey::Tag(t) => Key { repo, kind: 't', name: t },
            ManifestKey::Digest(d) => Key { repo, kind: 'd', name: d.as_str() },
        }
    }

    pub(super) fn blob(repo: &'a str, digest: &'a crate::digest::Digest) -> Self {
        Key { repo, kind: 'd', name: digest.as_str() }
    }
}

pub(super) struct Memo<V> {
    inner: RwLock<Inner<V>>,
    hasher: Keyed,
}

/// `foldhash`, seeded per process: the memo is looked up once or twice per pull, and
/// `SipHash` over the key plus the map's second hash of that u64 were ~4 % of a blob
/// HEAD's instructions (callgrind). A crafted collision costs only a memo miss: the
/// entry holds its key, and a miss reads redb.
type Keyed = foldhash::fast::RandomState;

impl<V> Default for Memo<V> {
    fn default() -> Self {
        Memo { inner: RwLock::new(Inner { map: HashMap::default(), bytes: 0 }), hasher: Keyed::default() }
    }
}

struct Inner<V> {
    /// Keyed by the hash of the key; the entry holds the key to rule out a collision.
    map: HashMap<u64, Entry<V>, Keyed>,
    bytes: usize,
}

struct Entry<V> {
    generation: u64,
    repo: Box<str>,
    kind: char,
    name: Box<str>,
    value: V,
}

impl<V: Weigh> Memo<V> {
    fn hash(&self, k: Key<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        k.repo.hash(&mut h);
        k.kind.hash(&mut h);
        k.name.hash(&mut h);
        h.finish()
    }

    /// The memoised value for `k` if it was read at generation `now`.
    pub(super) fn get(&self, now: u64, k: Key<'_>) -> Option<V> {
        let h = self.hash(k);
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let e = inner.map.get(&h)?;
        (e.generation == now && e.kind == k.kind && *e.name == *k.name && *e.repo == *k.repo)
            .then(|| e.value.clone())
    }

    /// Remember `value` for `k`, read at generation `read_at` (dropped when a commit
    /// has happened since: it could not be served anyway).
    pub(super) fn put(&self, gen: &Generation, read_at: u64, k: Key<'_>, value: &V) {
        if read_at != gen.now() {
            return;
        }
        let size = value.weight();
        let h = self.hash(k);
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if inner.map.len() >= MAX_ENTRIES || inner.bytes + size > MAX_BYTES {
            // Stale entries first; if the current ones alone fill it, start over.
            let now = gen.now();
            inner.map.retain(|_, e| e.generation == now);
            inner.bytes = inner.map.values().map(|e| e.value.weight()).sum();
            if inner.map.len() >= MAX_ENTRIES || inner.bytes + size > MAX_BYTES {
                inner.map.clear();
                inner.bytes = 0;
            }
        }
        let entry = Entry {
            generation: read_at,
            repo: k.repo.into(),
            kind: k.kind,
            name: k.name.into(),
            value: value.clone(),
        };
        if let Some(old) = inner.map.insert(h, entry) {
            inner.bytes = inner.bytes.saturating_sub(old.value.weight());
        }
        inner.bytes += size;
    }
}
