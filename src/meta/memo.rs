//! A memo of served manifests (`Meta::serve_manifest`), exactly as fresh as redb.
//!
//! A manifest GET by tag costs four table opens, three B-tree lookups and a JSON
//! decode in redb (~26k instructions of ~76k per request, callgrind); a registry under
//! pull load answers the same few (repository, reference) pairs over and over. The
//! memo keeps their answers in memory, each stamped with the commit generation it was
//! read at, and serves one only while that generation is still current.
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
//! Bounded: at most `MAX_ENTRIES` entries and `MAX_BYTES` of bodies; bodies over
//! `MAX_BODY` are never memoised. Misses (404) are not memoised.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use super::{ManifestKey, ServedManifest};

const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: usize = 32 << 20;
/// Larger bodies (big indexes) are read from redb each time.
pub(super) const MAX_BODY: u64 = 1 << 20;

#[derive(Default)]
pub(super) struct Memo {
    generation: AtomicU64,
    inner: RwLock<Inner>,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Default)]
struct Inner {
    /// Keyed by the hash of (repository, reference); the entry holds both to rule out
    /// a collision.
    map: HashMap<u64, Entry>,
    bytes: usize,
}

struct Entry {
    generation: u64,
    repo: Box<str>,
    /// `t` + tag or `d` + digest.
    key: Box<str>,
    served: ServedManifest,
}

fn key_parts<'a>(key: &ManifestKey<'a>) -> (char, &'a str) {
    match key {
        ManifestKey::Tag(t) => ('t', t),
        ManifestKey::Digest(d) => ('d', d.as_str()),
    }
}

impl Entry {
    fn is(&self, repo: &str, kind: char, name: &str) -> bool {
        self.repo.as_ref() == repo && self.key.starts_with(kind) && &self.key[1..] == name
    }
}

impl Memo {
    /// The current commit generation: load it before beginning the read whose answer
    /// is to be memoised.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Called by the writer thread after each commit, before its callers are answered.
    pub(super) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn hash(&self, repo: &str, kind: char, name: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        repo.hash(&mut h);
        kind.hash(&mut h);
        name.hash(&mut h);
        h.finish()
    }

    /// The memoised answer for (`repo`, `key`) if it was read at generation `now`.
    pub(super) fn get(&self, now: u64, repo: &str, key: &ManifestKey<'_>) -> Option<ServedManifest> {
        let (kind, name) = key_parts(key);
        let h = self.hash(repo, kind, name);
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let e = inner.map.get(&h)?;
        (e.generation == now && e.is(repo, kind, name)).then(|| e.served.clone())
    }

    /// Remember `served` (with its body) for (`repo`, `key`), read at generation `read_at`.
    pub(super) fn put(&self, read_at: u64, repo: &str, key: &ManifestKey<'_>, served: &ServedManifest) {
        let size = served.body.as_ref().map_or(0, bytes::Bytes::len);
        if served.body.is_none() || size as u64 > MAX_BODY || read_at != self.generation() {
            return;
        }
        let (kind, name) = key_parts(key);
        let h = self.hash(repo, kind, name);
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if inner.map.len() >= MAX_ENTRIES || inner.bytes + size > MAX_BYTES {
            // Stale entries first; if the current ones alone fill it, start over.
            let now = self.generation();
            inner.map.retain(|_, e| e.generation == now);
            inner.bytes =
                inner.map.values().map(|e| e.served.body.as_ref().map_or(0, bytes::Bytes::len)).sum();
            if inner.map.len() >= MAX_ENTRIES || inner.bytes + size > MAX_BYTES {
                inner.map.clear();
                inner.bytes = 0;
            }
        }
        let entry = Entry {
            generation: read_at,
            repo: repo.into(),
            key: format!("{kind}{name}").into_boxed_str(),
            served: served.clone(),
        };
        if let Some(old) = inner.map.insert(h, entry) {
            inner.bytes -= old.served.body.as_ref().map_or(0, bytes::Bytes::len);
        }
        inner.bytes += size;
    }
}
