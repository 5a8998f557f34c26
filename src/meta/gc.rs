//! The metadata half of garbage collection and eviction. Candidates are found in read
//! snapshots; every deletion re-checks its candidate inside the write transaction that
//! performs it, so a concurrent push or fill can never lose content:
//!
//! - a manifest row goes only when no repository links it and no manifest references
//!   it (`MANIFEST_LINKS`, `REFS` — both maintained by the transactions that change
//!   them);
//! - a blob is first marked `deleting` and unlinked everywhere, only when nothing
//!   references it, no unexpired lease (upload or fill) is held on it, and it is older than the grace
//!   period; the caller then unlinks the file and removes the row. An upload that
//!   finds the mark waits (`lease_blob` answers false) until the row is gone.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::lease::leased;
use super::model::{self, decode};
#[allow(clippy::wildcard_imports)] // the schema module is the list of tables
use super::schema::*;
use super::{add, lru_time, put_blob_row, BlobRecord, ManifestRecord, Meta, MetaError, Origin, RepoFilter};
use crate::digest::Digest;

/// Which blobs `gc_mark_blobs` may mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkMode {
    /// Unreferenced, unleased, created before `cutoff`.
    Garbage { cutoff: u64 },
    /// Mirrored and unleased, referenced or not (a later pull fetches it again).
    Evict,
    /// Whatever its state: `verify` found the file corrupt.
    Corrupt,
}

/// A blob GC or eviction may remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobCandidate {
    pub digest: Digest,
    pub size: u64,
    pub origin: Origin,
    pub created: u64,
}

fn count(t: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, MetaError> {
    Ok(t.get(key)?.map_or(0, |v| v.value()))
}

impl Meta {
    /// Manifest rows that no repository links and no manifest references, in digest
    /// order after `after` (a pass's cursor, so a pass reads each row once).
    pub fn gc_manifest_candidates(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<Digest>, MetaError> {
        let rtx = self.db.begin_read()?;
        let (links, refs) = (rtx.open_table(MANIFEST_LINKS)?, rtx.open_table(REFS)?);
        let mut out = Vec::new();
        let start = after.map_or("", Digest::as_str);
        for item in rtx.open_table(MANIFESTS)?.range(start..)? {
            let (k, _) = item?;
            let d = k.value();
            if d == start {
                continue;
            }
            if count(&links, d)? == 0 && count(&refs, d)? == 0 {
                if let Ok(dg) = d.parse() {
                    out.push(dg);
                }
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Delete those manifest rows that are still unlinked and unreferenced; their
    /// references are released. Returns the ones deleted.
    pub async fn gc_delete_manifests(&self, digests: Vec<Digest>) -> Result<Vec<Digest>, MetaError> {
        self.write(move |txn| {
            let mut done = Vec::new();
            for d in digests {
                if delete_manifest_row(txn, &d)? {
                    done.push(d);
                }
            }
            Ok(done)
        })
        .await
    }

    /// Every blob row (not being deleted), with what GC and eviction weigh.
    pub fn blob_rows(&self) -> Result<Vec<BlobCandidate>, MetaError> {
        let t = self.read(BLOBS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let rec: BlobRecord = decode(v.value())?;
            if rec.deleting {
                continue;
            }
            if let Ok(digest) = k.value().parse() {
                out.push(BlobCandidate { digest, size: rec.size, origin: rec.origin, created: rec.created });
            }
        }
        Ok(out)
    }

    /// What a GC run would remove, simulated on one snapshot (the cascade included:
    /// removing a manifest releases what it references). For `gc --dry-run`.
    pub fn gc_plan(&self, cutoff: u64) -> Result<(Vec<Digest>, Vec<BlobCandidate>), MetaError> {
        use std::collections::HashMap;
        let rtx = self.db.begin_read()?;
        let mut refs: HashMap<String, u64> = HashMap::new();
        for item in rtx.open_table(REFS)?.iter()? {
            let (k, v) = item?;
            refs.insert(k.value().to_owned(), v.value());
        }
        let links = rtx.open_table(MANIFEST_LINKS)?;
        let mut records: HashMap<String, ManifestRecord> = HashMap::new();
        for item in rtx.open_table(MANIFESTS)?.iter()? {
            let (k, v) = item?;
            records.insert(k.value().to_owned(), decode(v.value())?);
        }
        let mut gone = Vec::new();
        loop {
            let next: Vec<String> = records
                .keys()
                .filter(|d| refs.get(*d).copied().unwrap_or(0) == 0)
                .filter(|d| links.get(d.as_str()).ok().flatten().is_none())
                .cloned()
                .collect();
            if next.is_empty() {
                break;
            }
            for d in next {
                if let Some(rec) = records.remove(&d) {
                    for r in &rec.refs {
                        if let Some(n) = refs.get_mut(r.as_str()) {
                            *n = n.saturating_sub(1);
                        }
                    }
                }
                if let Ok(dg) = d.parse() {
                    gone.push(dg);
                }
            }
        }
        let leases = rtx.open_table(LEASES)?;
        let now = model::now();
        let mut blobs = Vec::new();
        for item in rtx.open_table(BLOBS)?.iter()? {
            let (k, v) = item?;
            let rec: BlobRecord = decode(v.value())?;
            let d = k.value();
            if rec.deleting
                || rec.created >= cutoff
                || refs.get(d).copied().unwrap_or(0) > 0
                || leased(&leases, d, now)?
            {
                continue;
            }
            if let Ok(digest) = d.parse() {
                blobs.push(BlobCandidate {
                    digest,
                    size: rec.size,
                    origin: rec.origin,
                    created: rec.created,
                });
            }
        }
        Ok((gone, blobs))
    }

    /// Blobs nothing references, created before `cutoff`, not leased, in digest order
    /// after `after` (a pass's cursor, so a pass reads each row once).
    pub fn gc_blob_candidates(
        &self,
        cutoff: u64,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<BlobCandidate>, MetaError> {
        let rtx = self.db.begin_read()?;
        let (refs, leases) = (rtx.open_table(REFS)?, rtx.open_table(LEASES)?);
        let now = model::now();
        let mut out = Vec::new();
        let start = after.map_or("", Digest::as_str);
        for item in rtx.open_table(BLOBS)?.range(start..)? {
            let (k, v) = item?;
            let d = k.value();
            if d == start {
                continue;
            }
            let rec: BlobRecord = decode(v.value())?;
            if rec.deleting || rec.created >= cutoff || count(&refs, d)? > 0 || leased(&leases, d, now)? {
                continue;
            }
            if let Ok(digest) = d.parse() {
                out.push(BlobCandidate { digest, size: rec.size, origin: rec.origin, created: rec.created });
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Mark blobs `deleting` and unlink them from every repository — each only if it
    /// still qualifies under `mode`. Returns the ones marked; the caller unlinks their
    /// files, then calls `gc_remove_blob_rows`.
    pub async fn gc_mark_blobs(
        &self,
        digests: Vec<Digest>,
        mode: MarkMode,
    ) -> Result<Vec<Digest>, MetaError> {
        self.write(move |txn| {
            let mut marked = Vec::new();
            for d in digests {
                if mark_blob(txn, &d, mode)? {
                    marked.push(d);
                }
            }
            Ok(marked)
        })
        .await
    }

    /// Eviction's transaction: mark mirrored blobs as `gc_mark_blobs` does in
    /// `MarkMode::Evict`, and in the same transaction evict the manifests that would be
    /// left broken (`evict_broken_manifests`). Returns the blobs marked and how many
    /// (repository, manifest) links went.
    pub async fn evict_blobs(
        &self,
        digests: Vec<Digest>,
        mirrored: RepoFilter,
    ) -> Result<(Vec<Digest>, usize), MetaError> {
        self.write(move |txn| {
            let mut marked = Vec::new();
            for d in digests {
                if mark_blob(txn, &d, MarkMode::Evict)? {
                    marked.push(d);
                }
            }
            let manifests = evict_broken_manifests(txn, &marked, &*mirrored)?;
            Ok((marked, manifests))
        })
        .await
    }

    /// Remove rows of blobs marked `deleting` whose files are gone.
    pub async fn gc_remove_blob_rows(&self, digests: Vec<Digest>) -> Result<(), MetaError> {
        self.write(move |txn| {
            let mut t = txn.open_table(BLOBS)?;
            let mut access = txn.open_table(ACCESS)?;
            for d in digests {
                let deleting = t
                    .get(d.as_str())?
                    .map(|v| decode::<BlobRecord>(v.value()))
                    .transpose()?
                    .is_some_and(|r| r.deleting);
                if deleting {
                    t.remove(d.as_str())?;
                    access.remove(d.as_str())?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Blobs left marked `deleting` by a run that stopped midway.
    pub fn blobs_marked_deleting(&self) -> Result<Vec<Digest>, MetaError> {
        let t = self.read(BLOBS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            if decode::<BlobRecord>(v.value())?.deleting {
                if let Ok(d) = k.value().parse() {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}

/// Mark one blob `deleting` and unlink it from every repository, if it still qualifies
/// under `mode`. Returns whether it did.
fn mark_blob(txn: &WriteTransaction, d: &Digest, mode: MarkMode) -> Result<bool, MetaError> {
    let key = d.as_str();
    let rec: Option<BlobRecord> = txn.open_table(BLOBS)?.get(key)?.map(|v| decode(v.value())).transpose()?;
    let Some(old) = rec else { return Ok(false) };
    let mut rec = old.clone();
    if rec.deleting {
        return Ok(false);
    }
    let qualifies = match mode {
        MarkMode::Corrupt => true,
        MarkMode::Evict => {
            rec.origin == Origin::Mirrored && !leased(&txn.open_table(LEASES)?, key, model::now())?
        }
        MarkMode::Garbage { cutoff } => {
            rec.created < cutoff
                && count(&txn.open_table(REFS)?, key)? == 0
                && !leased(&txn.open_table(LEASES)?, key, model::now())?
        }
    };
    if !qualifies {
        return Ok(false);
    }
    rec.deleting = true;
    put_blob_row(txn, key, Some(&old), &rec)?;
    let repos: Vec<String> = {
        let links = txn.open_table(BLOB_LINKS)?;
        let mut v = Vec::new();
        for item in links.range((key, "")..)? {
            let (k, _) = item?;
            let (kd, repo) = k.value();
            if kd != key {
                break;
            }
            v.push(repo.to_owned());
        }
        v
    };
    let (mut fwd, mut back) = (txn.open_table(REPO_BLOBS)?, txn.open_table(BLOB_LINKS)?);
    for r in &repos {
        fwd.remove((r.as_str(), key))?;
        back.remove((key, r.as_str()))?;
    }
    Ok(true)
}

/// Delete a manifest row (and its bytes) if it is still unlinked and unreferenced,
/// releasing what it references in `REFS`. Returns whether it did.
fn delete_manifest_row(txn: &WriteTransaction, d: &Digest) -> Result<bool, MetaError> {
    if !manifest_collectable(txn, d.as_str())? {
        return Ok(false);
    }
    let rec = txn.open_table(MANIFESTS)?.remove(d.as_str())?.map(|v| v.value().to_vec());
    txn.open_table(MANIFEST_BODIES)?.remove(d.as_str())?;
    if let Some(rec) = rec {
        let rec: ManifestRecord = decode(&rec)?;
        let mut refs = txn.open_table(REFS)?;
        let mut by = txn.open_table(REFERENCED_BY)?;
        for r in &rec.refs {
            add(&mut refs, r.as_str(), -1)?;
            by.remove((r.as_str(), d.as_str()))?;
        }
    }
    Ok(true)
}

/// After `gone` (blobs just marked for eviction), unlink from every mirrored repository
/// each manifest that references one of them as config or layer, or references (as an
/// index) a manifest so unlinked — with its tags there and its referrer row
/// (`unlink_manifest`) — then delete the rows nothing links or references any more
/// (`delete_manifest_row`), so every counter stays exact. Hosted repositories are never
/// touched: what `mirrored` rejects keeps its links even to the same digest, and a
/// manifest no mirrored repository links neither breaks nor breaks its parents.
///
/// Walks `REFERENCED_BY` up from the evicted blobs and `MANIFEST_REPOS` for each manifest
/// reached: the cost is that of the manifests that break, whatever the store holds.
/// Returns how many (repository, manifest) links went.
fn evict_broken_manifests(
    txn: &WriteTransaction,
    gone: &[Digest],
    mirrored: &(dyn Fn(&str) -> bool + Send + Sync),
) -> Result<usize, MetaError> {
    use std::collections::HashSet;
    if gone.is_empty() {
        return Ok(0);
    }
    // (manifest, the mirrored repositories linking it) for each manifest that breaks.
    let mut doomed: Vec<(Digest, Vec<String>)> = Vec::new();
    {
        let (by, repos) = (txn.open_table(REFERENCED_BY)?, txn.open_table(MANIFEST_REPOS)?);
        let mut seen: HashSet<String> = gone.iter().map(|d| d.as_str().to_owned()).collect();
        let mut todo: Vec<String> = seen.iter().cloned().collect();
        // Each manifest enters `todo` at most once (`seen`), so this ends.
        while let Some(x) = todo.pop() {
            let mut parents = Vec::new();
            for item in by.range((x.as_str(), "")..)? {
                let (k, _) = item?;
                let (r, m) = k.value();
                if r != x {
                    break;
                }
                parents.push(m.to_owned());
            }
            for m in parents {
                if seen.contains(&m) {
                    continue;
                }
                let mut linked = Vec::new();
                for item in repos.range((m.as_str(), "")..)? {
                    let (k, _) = item?;
                    let (d, r) = k.value();
                    if d != m {
                        break;
                    }
                    if mirrored(r) {
                        linked.push(r.to_owned());
                    }
                }
                if linked.is_empty() {
                    continue;
                }
                seen.insert(m.clone());
                if let Ok(dg) = m.parse::<Digest>() {
                    doomed.push((dg, linked));
                }
                todo.push(m);
            }
        }
    }
    let mut n = 0;
    for (d, linked) in &doomed {
        for r in linked {
            if super::unlink_manifest(txn, r, d)? {
                n += 1;
            }
        }
    }
    // Delete the rows now free, parents (indexes) releasing children: at most
    // |doomed| passes, each deleting at least one row or ending.
    let mut left: Vec<Digest> = doomed.into_iter().map(|(d, _)| d).collect();
    for _ in 0..=left.len() {
        let before = left.len();
        let mut keep = Vec::new();
        for d in left {
            if !delete_manifest_row(txn, &d)? {
                keep.push(d);
            }
        }
        left = keep;
        if left.len() == before {
            break;
        }
    }
    Ok(n)
}

fn manifest_collectable(txn: &WriteTransaction, d: &str) -> Result<bool, MetaError> {
    Ok(count(&txn.open_table(MANIFEST_LINKS)?, d)? == 0 && count(&txn.open_table(REFS)?, d)? == 0)
}

impl Meta {
    /// Persist last-access times (unix milliseconds) of mirrored blobs, in one transaction.
    pub async fn record_access(&self, times: Vec<(Digest, u64)>) -> Result<(), MetaError> {
        self.write(move |txn| {
            let mut t = txn.open_table(ACCESS)?;
            let (blobs, mut lru) = (txn.open_table(BLOBS)?, txn.open_table(LRU)?);
            for (d, at) in times {
                let key = d.as_str();
                let before = t.insert(key, at)?.map(|v| v.value());
                // A live mirrored blob moves in the eviction order, in this transaction.
                let rec: Option<BlobRecord> = blobs.get(key)?.map(|v| decode(v.value())).transpose()?;
                if let Some(rec) = rec.filter(|r| !r.deleting && r.origin == Origin::Mirrored) {
                    lru.remove((lru_time(before, &rec), key))?;
                    lru.insert((at, key), ())?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Up to `limit` live mirrored blobs, least recently used first, after `after` (the
    /// `(time, digest)` of the last one a previous call returned): eviction's order, read
    /// from `LRU` and the rows it names — the cost of the blobs returned, not of the store.
    pub fn lru_oldest(
        &self,
        after: Option<&(u64, Digest)>,
        limit: usize,
    ) -> Result<Vec<(u64, BlobCandidate)>, MetaError> {
        let rtx = self.db.begin_read()?;
        let (lru, blobs) = (rtx.open_table(LRU)?, rtx.open_table(BLOBS)?);
        let range = match after {
            Some((at, d)) => lru.range((*at, d.as_str())..)?,
            None => lru.range((0u64, "")..)?,
        };
        let mut out = Vec::new();
        for item in range {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item?;
            let (at, d) = k.value();
            if after.is_some_and(|(a, ad)| *a == at && ad.as_str() == d) {
                continue;
            }
            let Some(v) = blobs.get(d)? else { continue };
            let rec: BlobRecord = decode(v.value())?;
            if let Ok(digest) = d.parse() {
                out.push((
                    at,
                    BlobCandidate { digest, size: rec.size, origin: rec.origin, created: rec.created },
                ));
            }
        }
        Ok(out)
    }

    /// Persisted last-access times.
    pub fn access_times(&self) -> Result<Vec<(Digest, u64)>, MetaError> {
        let t = self.read(ACCESS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            if let Ok(d) = k.value().parse() {
                out.push((d, v.value()));
            }
        }
        Ok(out)
    }
}
