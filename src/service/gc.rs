//! Online garbage collection, eviction of mirrored content to a byte cap, and verify.
//!
//! GC roots are every manifest linked in some repository (tags point only at linked
//! manifests; untagged manifests stay until deleted by digest). A manifest row goes
//! when nothing links or references it; a blob goes when no manifest references it,
//! no upload leases it, and it is older than the grace period (so layers pushed ahead
//! of their manifest are safe). All checks are re-made inside the deleting
//! transaction (see `meta/gc.rs`), which is what makes GC safe under concurrent pushes
//! and fills.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::{Error, Registry};
use crate::digest::Digest;
use crate::meta::{model::now, MarkMode, Origin};

/// How many candidates one transaction handles. Each batch costs two durable commits
/// (mark, then drop the rows once the files are gone), so GC's rate is bound by
/// fsyncs: 1024 keeps one batch's write transaction to a few milliseconds of the
/// writer thread while needing a quarter of the commits 256 did.
const BATCH: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub manifests: usize,
    pub blobs: usize,
    pub bytes: u64,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub checked: usize,
    pub bytes: u64,
    /// Missing, short, or hashing to something else; quarantined and unlinked.
    pub corrupt: Vec<CorruptBlob>,
}

/// One blob `verify` found corrupt, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CorruptBlob {
    pub digest: Digest,
    /// Its size as recorded.
    pub size: u64,
    /// Pushed content is gone until pushed again; mirrored content is fetched again.
    pub origin: Origin,
    /// What is wrong with the file, in words.
    pub problem: String,
    /// Where the bad file was moved (`None`: there was no file to move, or the move
    /// failed; see `problem`).
    pub quarantined: Option<std::path::PathBuf>,
}

/// An origin as an operator reads it.
pub(crate) fn origin_word(o: Origin) -> &'static str {
    match o {
        Origin::Pushed => "pushed",
        Origin::Mirrored => "mirrored",
    }
}

/// What is wrong with a blob file, from what hashing it gave; `None` when it is sound.
fn blob_problem(
    got: &std::io::Result<(u64, String)>,
    size: u64,
    expected: Option<&str>,
    full: bool,
) -> Option<String> {
    let algo = if full { "sha256" } else { "blake3" };
    match (got, expected) {
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => Some("its file is missing".into()),
        (Err(e), _) => Some(format!("its file cannot be read: {e}")),
        (Ok((len, _)), _) if *len != size => {
            Some(format!("its file holds {len} bytes, not the {size} recorded"))
        }
        (Ok(_), None) => Some(format!("it has no recorded {algo} to check against")),
        (Ok((_, h)), Some(e)) if h != e => {
            Some(format!("its content hashes to {algo} {h}, not the {e} recorded"))
        }
        (Ok(_), Some(_)) => None,
    }
}

impl Registry {
    /// Collect garbage. With `dry_run`, report what would go and change nothing. A
    /// server that is stopping ends the pass after the batch in hand: every batch
    /// finishes whole (rows marked, files unlinked, rows dropped).
    pub async fn gc(&self, grace: Duration, dry_run: bool) -> Result<GcReport, Error> {
        let cutoff = now().saturating_sub(grace.as_secs());
        let mut report = GcReport { dry_run, ..GcReport::default() };
        if !dry_run {
            self.metrics.gc_runs.fetch_add(1, Relaxed);
        }
        if dry_run {
            let (m, blobs) = self.meta.gc_plan(cutoff)?;
            report.manifests = m.len();
            for b in blobs {
                report.blobs += 1;
                report.bytes += b.size;
            }
            return Ok(report);
        }
        // Manifests first: deleting one can release its children and blobs. A pass
        // walks the rows once in digest order (a cursor, not a restart per batch); a
        // child released behind the cursor waits for the next pass, and passes repeat
        // while one deletes something (each deletes at least one row or is the last).
        loop {
            let mut deleted = 0;
            let mut after: Option<Digest> = None;
            while !self.stopping() {
                let cands = self.meta.gc_manifest_candidates(after.as_ref(), BATCH)?;
                let Some(last) = cands.last().cloned() else { break };
                after = Some(last);
                let done = self.meta.gc_delete_manifests(cands).await?;
                deleted += done.len();
                report.manifests += done.len();
                self.metrics.gc_manifests.fetch_add(done.len() as u64, Relaxed);
            }
            if deleted == 0 || self.stopping() {
                break;
            }
        }
        // Blobs: one pass in digest order, each row read once.
        let mut after: Option<Digest> = None;
        while !self.stopping() {
            let cands = self.meta.gc_blob_candidates(cutoff, after.as_ref(), BATCH)?;
            let Some(last) = cands.last() else { break };
            after = Some(last.digest.clone());
            let sizes: std::collections::HashMap<Digest, u64> =
                cands.iter().map(|c| (c.digest.clone(), c.size)).collect();
            let marked = self
                .meta
                .gc_mark_blobs(cands.into_iter().map(|c| c.digest).collect(), MarkMode::Garbage { cutoff })
                .await?;
            if marked.is_empty() {
                continue;
            }
            let bytes = marked.iter().filter_map(|d| sizes.get(d)).sum::<u64>();
            report.bytes += bytes;
            report.blobs += marked.len();
            self.metrics.gc_blobs.fetch_add(marked.len() as u64, Relaxed);
            self.metrics.gc_bytes.fetch_add(bytes, Relaxed);
            self.unlink_marked(marked).await?;
        }
        if report.manifests + report.blobs > 0 {
            tracing::info!(
                manifests = report.manifests,
                blobs = report.blobs,
                bytes = report.bytes,
                "gc done"
            );
        }
        Ok(report)
    }

    /// Unlink files of blobs marked `deleting`, then drop their rows.
    async fn unlink_marked(&self, marked: Vec<Digest>) -> Result<(), Error> {
        let blobs = self.blobs.clone();
        let list = marked.clone();
        tokio::task::spawn_blocking(move || {
            for d in &list {
                if let Err(e) = blobs.remove_blob(d) {
                    tracing::warn!(digest = %d, error = %e, "cannot unlink blob file");
                }
            }
        })
        .await?;
        self.meta.gc_remove_blob_rows(marked).await?;
        Ok(())
    }

    /// Finish deletions a previous run left half done (startup).
    pub async fn finish_deletions(&self) -> Result<usize, Error> {
        let marked = self.meta.blobs_marked_deleting()?;
        let n = marked.len();
        if n > 0 {
            self.unlink_marked(marked).await?;
        }
        Ok(n)
    }

    /// Blobs and bytes stored, per origin: the counters meta keeps in the transactions
    /// that add and remove blob rows (no scan, whatever the number of blobs).
    pub fn store_stats(&self) -> Result<super::metrics::StoreStats, Error> {
        Ok(self.meta.store_stats()?)
    }

    /// The same figures counted from every blob row (what the counters must equal).
    pub fn store_stats_by_scan(&self) -> Result<super::metrics::StoreStats, Error> {
        Ok(self.meta.store_stats_by_scan()?)
    }

    /// Bytes of mirrored blobs stored (from the counters).
    pub fn mirrored_bytes(&self) -> Result<u64, Error> {
        Ok(self.meta.store_stats()?.mirrored_bytes)
    }

    /// Apply the configured cache cap (no-op without one). One eviction runs at a time.
    pub async fn enforce_cap(&self) -> Result<(usize, u64), Error> {
        if self.opts.cache_max_bytes == 0 {
            return Ok((0, 0));
        }
        let _one = self.cache.evicting.lock().await;
        self.evict(self.opts.cache_max_bytes, self.opts.cache_low_bytes).await
    }

    /// Evict least-recently-used mirrored blobs until they fit in `low_water` bytes,
    /// and with them the mirrored manifests that reference them (which would otherwise
    /// be served, by an offline mirror, with layers gone); they are fetched again on
    /// demand. Pushed content is never evicted. Returns (blobs, bytes) evicted.
    ///
    /// Under the cap (every fill commit but the one that crosses it) this is four point
    /// reads of the counters. Over it, the order comes from meta's `LRU` index a page at
    /// a time and the broken manifests from its blob → manifests index: the cost is that
    /// of what is evicted, not of the store.
    pub async fn evict(&self, high_water: u64, low_water: u64) -> Result<(usize, u64), Error> {
        if self.mirrored_bytes()? <= high_water {
            return Ok((0, 0));
        }
        // Reads noted in memory go into the order first: the index is then as fresh as
        // the reads this process has seen.
        self.cache.flush().await?;
        let (mut n, mut bytes, mut manifests) = (0usize, 0u64, 0usize);
        let mut after: Option<(u64, Digest)> = None;
        // Each pass moves the cursor a page further along the order, or stops.
        let passes = self.meta.store_stats()?.mirrored_blobs / BATCH as u64 + 2;
        for _ in 0..passes {
            let total = self.mirrored_bytes()?;
            if total <= low_water || self.stopping() {
                break;
            }
            let page = self.meta.lru_oldest(after.as_ref(), BATCH)?;
            let Some((at, last)) = page.last() else { break };
            after = Some((*at, last.digest.clone()));
            let mut take = Vec::new();
            let mut planned = total;
            for (_, b) in &page {
                if planned <= low_water {
                    break;
                }
                planned = planned.saturating_sub(b.size);
                take.push(b.digest.clone());
            }
            let (marked, m) = self.meta.evict_blobs(take, self.mirrors.mirrored_repos()).await?;
            manifests += m;
            for d in &marked {
                if let Some((_, b)) = page.iter().find(|(_, b)| &b.digest == d) {
                    bytes += b.size;
                }
            }
            n += marked.len();
            self.cache.forget(&marked);
            self.unlink_marked(marked).await?;
        }
        self.metrics.evicted_blobs.fetch_add(n as u64, Relaxed);
        self.metrics.evicted_bytes.fetch_add(bytes, Relaxed);
        self.metrics.evicted_manifests.fetch_add(manifests as u64, Relaxed);
        if n > 0 {
            tracing::info!(blobs = n, bytes, manifests, "evicted mirrored content over the cache cap");
        }
        Ok((n, bytes))
    }

    /// Re-hash every blob (blake3 from the row; sha256 with `full`); quarantine and
    /// unlink corrupt ones so they are re-pushed or re-fetched. `progress` is told
    /// (done, total) bytes.
    pub async fn verify(
        &self,
        full: bool,
        progress: impl Fn(u64, u64) + Send + 'static,
    ) -> Result<VerifyReport, Error> {
        let rows = self.meta.blob_rows()?;
        let total: u64 = rows.iter().map(|b| b.size).sum();
        let mut report = VerifyReport::default();
        let mut corrupt = Vec::new();
        for b in rows {
            let expected = if full {
                Some(b.digest.hex().to_owned())
            } else {
                self.meta.blob(&b.digest)?.map(|r| r.blake3)
            };
            let blobs = self.blobs.clone();
            let d = b.digest.clone();
            let got = tokio::task::spawn_blocking(move || blobs.hash_file(&d, full)).await?;
            report.checked += 1;
            report.bytes += b.size;
            progress(report.bytes, total);
            if let Some(problem) = blob_problem(&got, b.size, expected.as_deref(), full) {
                let quarantined = match self.blobs.quarantine(&b.digest) {
                    Ok(p) => Some(p),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => {
                        tracing::error!(digest = %b.digest, error = %e, "cannot move the corrupt blob's file into quarantine/");
                        None
                    }
                };
                let moved_to =
                    quarantined.as_ref().map_or_else(|| "none".into(), |p| p.display().to_string());
                tracing::error!(
                    digest = %b.digest,
                    origin = %origin_word(b.origin),
                    quarantined = %moved_to,
                    "corrupt blob: {problem}"
                );
                report.corrupt.push(CorruptBlob {
                    digest: b.digest.clone(),
                    size: b.size,
                    origin: b.origin,
                    problem,
                    quarantined,
                });
                corrupt.push(b.digest);
            }
        }
        if !corrupt.is_empty() {
            // Unlink everywhere and drop the rows: the content must come again.
            let marked = self.meta.gc_mark_blobs(corrupt, MarkMode::Corrupt).await?;
            self.meta.gc_remove_blob_rows(marked).await?;
        }
        Ok(report)
    }
}
