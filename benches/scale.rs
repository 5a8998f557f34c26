//! What per-request work costs as the store grows: a store of N blob rows, N/10
//! manifests and N tags (tiny, built directly through `wharfie::meta`, no HTTP, no
//! files; half pushed, half mirrored, over 50 repositories of each kind) is opened with
//! `wharfie::app::open` and measured through the registry's own methods.
//!
//! ```sh
//! cargo bench --bench scale                      # N = 10k, 100k
//! BENCH_SCALE_NS=10000,100000,1000000 cargo bench --bench scale
//! ```
//!
//! Per N: startup (`app::open`, recovery included), one `/metrics` render (what the
//! handler calls: `store_stats` + `Metrics::render`) beside the same figures from a scan
//! of every blob row (what a scrape cost before the counters), a blob commit followed by the cache
//! cap check a fill commit makes (`enforce_cap`, cap on, store under it), manifest GET by
//! tag and by digest (p50/p99 of 2000 each), an eviction pass that frees 1 % of the
//! mirrored bytes (with the manifests it breaks), a GC pass with no grace (it collects
//! every unreferenced blob) and a second one (nothing left to collect), a manifest
//! DELETE by digest with its tags (p50/p99 of 200, each its own commit, in pushed
//! repositories of N/50 tags each), the size of `meta.redb` and the process's peak RSS
//! (VmHWM; cumulative over the Ns run before).
//! Verify is left out: these blobs have no files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use wharfie::digest::Digest;
use wharfie::meta::{BlobRecord, Meta, Origin, PutManifest};
use wharfie::names::{Reference, RepoName};

/// Repositories per kind (pushed `bench/rJ`, mirrored `hub/lib/rJ`).
const REPOS: usize = 50;
/// Tags per manifest.
const TAGS: usize = 10;
const GETS: usize = 2000;
/// Pushed manifests deleted by digest (each with its `TAGS` tags).
const DELETES: usize = 200;
const CHUNK: usize = 4096;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

async fn build(dir: &std::path::Path, n: usize) -> Res<()> {
    let meta = Meta::open(&dir.join("meta.redb"))?;
    let mut i = 0;
    while i < n {
        let end = (i + CHUNK).min(n);
        let jobs = (i..end).map(|k| {
            let meta = meta.clone();
            async move {
                let d = Digest::of(format!("blob {k}").as_bytes());
                // Half pushed, half mirrored (under the `hub` upstream's names).
                let (repo, origin) = if k % 2 == 0 {
                    ("bench/app", Origin::Pushed)
                } else {
                    ("hub/lib/app", Origin::Mirrored)
                };
                let rec = BlobRecord {
                    size: 100 + (k as u64 % 1000),
                    blake3: String::new(),
                    created: 1,
                    origin,
                    deleting: false,
                };
                meta.commit_blob(repo.into(), d, rec, None, None).await
            }
        });
        for r in join_all(jobs).await {
            r?;
        }
        i = end;
    }
    // Manifest m: even ones pushed (on pushed blob 2m), odd ones mirrored (on mirrored
    // blob 2m + 1); the first put stores it with one tag, nine more puts add nine tags.
    let manifests = (n / 10).max(1);
    let jobs: Vec<(usize, usize)> = (0..TAGS).flat_map(|j| (0..manifests).map(move |m| (m, j))).collect();
    for chunk in jobs.chunks(CHUNK) {
        let puts = chunk.iter().map(|&(m, j)| {
            let meta = meta.clone();
            async move { meta.put_manifest(manifest(m, j)).await }
        });
        for r in join_all(puts).await {
            r?;
        }
    }
    Ok(())
}

fn manifest(m: usize, tag: usize) -> PutManifest {
    let body = format!("{{\"schemaVersion\":2,\"n\":{m}}}").into_bytes();
    let (repo, origin) = if m.is_multiple_of(2) {
        (format!("bench/r{}", m % REPOS), Origin::Pushed)
    } else {
        (format!("hub/lib/r{}", m % REPOS), Origin::Mirrored)
    };
    let refs = vec![Digest::of(format!("blob {}", 2 * m + m % 2).as_bytes())];
    PutManifest::image(&repo, &body, refs, origin, Some(&format!("t{m}-{tag}")))
}

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

async fn run(n: usize) -> Res<()> {
    let tmp = tempfile::tempdir()?;
    let t = Instant::now();
    build(tmp.path(), n).await?;
    let built = t.elapsed();
    let overrides = wharfie::config::Overrides { listen: None, data_dir: Some(tmp.path().to_path_buf()) };
    let (_, mut settings) = wharfie::config::load(None, &overrides)?;
    settings.cache.max_bytes = 1 << 40;
    let t = Instant::now();
    let reg = wharfie::app::open(&settings).await?;
    let startup = t.elapsed();

    let mut render = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let st = reg.store_stats()?;
        let text = reg.metrics.render(&st);
        render.push(t.elapsed());
        std::hint::black_box(text);
    }
    // What a scrape cost before the counters: the same figures from a scan of every
    // blob row (kept in meta as the check the counters must equal).
    let mut scan = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let st = reg.meta().store_stats_by_scan()?;
        let text = reg.metrics.render(&st);
        scan.push(t.elapsed());
        std::hint::black_box(text);
    }

    let repo = RepoName::parse("bench/r0")?;
    let (mut commit, mut cap) = (Vec::new(), Vec::new());
    for k in 0..20 {
        let data = bytes::Bytes::from(format!("fresh {k}"));
        let d = Digest::of(&data);
        let body: wharfie::service::Body = Box::pin(futures_util::stream::iter([Ok(data)]));
        let t = Instant::now();
        reg.upload_monolithic(&repo, &d, body).await?;
        commit.push(t.elapsed());
        let t = Instant::now();
        reg.enforce_cap().await?;
        cap.push(t.elapsed());
    }

    let mut by_tag = Vec::new();
    let mut by_digest = Vec::new();
    for k in 0..GETS {
        // Manifests in bench/r0: m = 0, 50, 100, … (each with TAGS tags).
        let m = (k * REPOS) % (n / 10).max(1) / REPOS * REPOS;
        let r = Reference::parse(&format!("t{m}-{}", k % TAGS))?;
        let t = Instant::now();
        let m = reg.manifest(&repo, &r, true)?;
        by_tag.push(t.elapsed());
        let r = Reference::parse(m.digest.as_str())?;
        let t = Instant::now();
        std::hint::black_box(reg.manifest(&repo, &r, true)?);
        by_digest.push(t.elapsed());
    }

    // Eviction: over the cap by 1 % of the mirrored bytes.
    let mirrored = reg.store_stats()?.mirrored_bytes;
    let t = Instant::now();
    let (evicted, _) = reg.evict(mirrored - mirrored / 100, mirrored - mirrored / 100).await?;
    let evict = t.elapsed();
    let t = Instant::now();
    let gc1 = reg.gc(Duration::ZERO, false).await?;
    let gc_first = t.elapsed();
    let t = Instant::now();
    let gc2 = reg.gc(Duration::ZERO, false).await?;
    let gc_again = t.elapsed();

    // Manifest delete by digest, with its tags: pushed manifests m = 0, 2, 4, …, spread
    // over the pushed repositories (each holds N / 50 tags of other manifests).
    let mut delete = Vec::new();
    for m in (0..DELETES.min((n / 10).max(1) / 2)).map(|k| 2 * k) {
        let p = manifest(m, 0);
        let (repo, r) = (RepoName::parse(&p.repo)?, Reference::parse(p.digest.as_str())?);
        let t = Instant::now();
        reg.delete_manifest(&repo, &r).await?;
        delete.push(t.elapsed());
    }
    // Its tags went with it; those of a manifest kept in the same repository stay.
    let r0 = RepoName::parse("bench/r0")?;
    assert!(reg.manifest(&r0, &Reference::parse(&format!("t0-{}", TAGS - 1))?, false).is_err());
    if 2 * DELETES < n / 10 {
        // Manifest 2 × DELETES = 400 is pushed into bench/r0 too, and not deleted.
        assert!(reg.manifest(&r0, &Reference::parse(&format!("t{}-0", 2 * DELETES))?, false).is_ok());
    }
    drop(reg);
    let size = std::fs::metadata(tmp.path().join("meta.redb"))?.len();
    println!(
        "| {n:>8} | {:>7.1} s | {:>9.1} ms | {:>11} | {:>11} | {:>11} | {:>10} / {:>10} | {:>10} / {:>10} | {:>10} | {:>10} / {:>10} | {:>7.1} ms ({evicted}) | {:>7.1} s ({}+{}) | {:>7.1} ms ({}) | {:>7.1} MiB | {:>6.0} MiB |",
        built.as_secs_f64(),
        startup.as_secs_f64() * 1e3,
        us(pct(&mut render, 0.5)),
        us(pct(&mut scan, 0.5)),
        us(pct(&mut cap, 0.5)),
        us(pct(&mut by_tag, 0.5)),
        us(pct(&mut by_tag, 0.99)),
        us(pct(&mut by_digest, 0.5)),
        us(pct(&mut by_digest, 0.99)),
        us(pct(&mut commit, 0.5)),
        us(pct(&mut delete, 0.5)),
        us(pct(&mut delete, 0.99)),
        evict.as_secs_f64() * 1e3,
        gc_first.as_secs_f64(),
        gc1.manifests,
        gc1.blobs,
        gc_again.as_secs_f64() * 1e3,
        gc2.blobs,
        size as f64 / 1048576.0,
        vm_hwm_mib(),
    );
    Ok(())
}

fn main() -> Res<()> {
    let ns: Vec<usize> = std::env::var("BENCH_SCALE_NS")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("| N blobs | build | startup | /metrics render p50 | the same by scan p50 (before the counters) | cap check after commit p50 | manifest by tag p50 / p99 | by digest p50 / p99 | blob commit p50 | manifest delete (with its tags) p50 / p99 | evict 1 % (blobs) | GC pass (manifests+blobs) | GC again (blobs) | meta.redb | VmHWM |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for n in ns {
        rt.block_on(run(n))?;
    }
    Ok(())
}
