//! A bounded load and soak run against one wharfie: several hundred connections mixing
//! pulls, pushes and cold mirror pulls for a few minutes, then a report of errors, p50 and
//! p99 latency per kind of request, and the server's RSS and open file descriptors at the
//! start and at the end (growth would be a leak).
//!
//! ```sh
//! cargo bench --bench soak                        # 300 connections, 180 s
//! SOAK_CONNS=500 SOAK_SECS=60 cargo bench --bench soak
//! BENCH_QUICK=1 cargo bench --bench soak          # 100 connections, 20 s
//! ```
//!
//! The servers: the wharfie under test, and a second wharfie (hosted mode) seeded with
//! distinct blobs as its upstream `up`, so every `cold` request is a first fetch through
//! the mirror until the seeded blobs run out (then they are warm). Every loop is bounded by
//! the deadline; the run stops by itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use bench::{fail, start_wharfie, Res};
use wharfie_testkit::bench;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
/// Distinct blobs in the upstream for cold mirror pulls, and their size.
const COLD_BLOBS: usize = 3000;
const COLD_SIZE: usize = 64 * 1024;
/// The hosted image pulled warm: one layer of this size.
const WARM_SIZE: usize = 256 * 1024;

fn digest(b: &[u8]) -> String {
    Sha256::digest(b).iter().fold("sha256:".to_owned(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn blob_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn push_blob(c: &reqwest::Client, base: &str, repo: &str, data: Vec<u8>) -> Res<String> {
    let d = digest(&data);
    let r = c.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}")).body(data).send().await?;
    if r.status().as_u16() != 201 {
        return fail(format!("push blob to {repo}: {}", r.status()));
    }
    Ok(d)
}

async fn push_manifest(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    layer: &str,
    size: usize,
) -> Res<()> {
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{size}}}]}}"#,
        digest(CONFIG),
        CONFIG.len()
    );
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", OCI_MANIFEST)
        .body(m)
        .send()
        .await?;
    if r.status().as_u16() != 201 {
        return fail(format!("push manifest {repo}:{tag}: {}", r.status()));
    }
    Ok(())
}

/// (VmRSS bytes, open fds) of `pid`.
fn rss_fds(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .unwrap_or(0)
        * 1024;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (rss, fds)
}

#[derive(Default)]
struct Stats {
    lat: BTreeMap<&'static str, Vec<f64>>,
    errors: BTreeMap<&'static str, u64>,
    first_errors: Vec<String>,
}

impl Stats {
    fn ok(&mut self, kind: &'static str, secs: f64) {
        self.lat.entry(kind).or_default().push(secs);
    }
    fn err(&mut self, kind: &'static str, e: String) {
        *self.errors.entry(kind).or_default() += 1;
        if self.first_errors.len() < 5 {
            self.first_errors.push(format!("{kind}: {e}"));
        }
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn one(
    kind: &'static str,
    c: &reqwest::Client,
    base: &str,
    i: u64,
    cold: &[String],
    next_cold: &AtomicUsize,
    warm_layer: &str,
) -> Result<(), String> {
    let get = |url: String| async move {
        let r = c.get(&url).header("Accept", OCI_MANIFEST).send().await.map_err(|e| e.to_string())?;
        let st = r.status().as_u16();
        let body = r.bytes().await.map_err(|e| e.to_string())?;
        if st != 200 {
            return Err(format!("GET {url}: {st}"));
        }
        Ok(body.len())
    };
    match kind {
        "pull" => {
            get(format!("{base}/v2/soak/app/manifests/v1")).await?;
            let n = get(format!("{base}/v2/soak/app/blobs/{warm_layer}")).await?;
            if n != WARM_SIZE {
                return Err(format!("warm layer: {n} bytes"));
            }
        }
        "push" => {
            let data = blob_bytes(1_000_000 + i, 4096);
            let d = push_blob(c, base, "soak/push", data).await.map_err(|e| e.to_string())?;
            push_manifest(c, base, "soak/push", &format!("t{i}"), &d, 4096)
                .await
                .map_err(|e| e.to_string())?;
        }
        _ => {
            let k = next_cold.fetch_add(1, Ordering::Relaxed) % cold.len();
            let n = get(format!("{base}/v2/up/soak/cold/blobs/{}", cold[k])).await?;
            if n != COLD_SIZE {
                return Err(format!("cold blob: {n} bytes"));
            }
        }
    }
    Ok(())
}

async fn real_main() -> Res<()> {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let env_n = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let conns = env_n("SOAK_CONNS", if quick { 100 } else { 300 }) as usize;
    let secs = env_n("SOAK_SECS", if quick { 20 } else { 180 });
    if !(1..=2000).contains(&conns) || !(1..=1800).contains(&secs) {
        return fail("SOAK_CONNS must be 1..=2000 and SOAK_SECS 1..=1800");
    }
    let base_tmp =
        option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    std::fs::create_dir_all(&base_tmp)?;
    let tmp = tempfile::Builder::new().prefix("soak-").tempdir_in(&base_tmp)?;
    let (up_dir, dir) = (tmp.path().join("upstream"), tmp.path().join("wharfie"));
    std::fs::create_dir_all(&up_dir)?;
    std::fs::create_dir_all(&dir)?;
    let (_up, up_base) = start_wharfie(&up_dir, "")?;
    let (w, base) = start_wharfie(
        &dir,
        &format!("\n[[upstreams]]\nname = \"up\"\nurl = \"{up_base}\"\ntag_ttl = \"5m\"\n"),
    )?;
    let pid = w.child.id();
    let seed_client = reqwest::Client::new();

    eprintln!("soak: seeding {COLD_BLOBS} upstream blobs and the hosted image");
    let mut cold = Vec::with_capacity(COLD_BLOBS);
    for i in 0..COLD_BLOBS {
        cold.push(push_blob(&seed_client, &up_base, "soak/cold", blob_bytes(i as u64, COLD_SIZE)).await?);
    }
    push_blob(&seed_client, &base, "soak/app", CONFIG.to_vec()).await?;
    let warm_layer = push_blob(&seed_client, &base, "soak/app", blob_bytes(7, WARM_SIZE)).await?;
    push_manifest(&seed_client, &base, "soak/app", "v1", &warm_layer, WARM_SIZE).await?;
    push_blob(&seed_client, &base, "soak/push", CONFIG.to_vec()).await?;

    let (rss0, fds0) = rss_fds(pid);
    eprintln!("soak: {conns} connections for {secs} s");
    let stats = Arc::new(Mutex::new(Stats::default()));
    let cold = Arc::new(cold);
    let next_cold = Arc::new(AtomicUsize::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for t in 0..conns {
        let (stats, cold, next_cold, seq, base, warm_layer) =
            (stats.clone(), cold.clone(), next_cold.clone(), seq.clone(), base.clone(), warm_layer.clone());
        tasks.push(tokio::spawn(async move {
            // One client (one keep-alive connection) per task.
            let c = match reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(60))
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    stats
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .err("client", e.to_string());
                    return;
                }
            };
            let mut n = 0u64;
            while Instant::now() < deadline && n < 10_000_000 {
                n += 1;
                let i = seq.fetch_add(1, Ordering::Relaxed);
                // 6 pulls : 2 pushes : 2 cold mirror pulls.
                let kind = match (i + t as u64) % 10 {
                    0..=5 => "pull",
                    6 | 7 => "push",
                    _ => "cold",
                };
                let t0 = Instant::now();
                let r = one(kind, &c, &base, i, &cold, &next_cold, &warm_layer).await;
                let mut s = stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match r {
                    Ok(()) => s.ok(kind, t0.elapsed().as_secs_f64()),
                    Err(e) => s.err(kind, e),
                }
            }
        }));
    }
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(5).min(deadline.saturating_duration_since(Instant::now())))
            .await;
        samples.push(rss_fds(pid));
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(90), t).await;
    }
    let wall = started.elapsed().as_secs_f64();
    // Let keep-alive connections close before the last reading of fds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, fds1) = rss_fds(pid);

    let anon = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let mut s = stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = String::new();
    let _ =
        writeln!(out, "\n## Soak: {conns} connections, {secs} s, pulls 6 : pushes 2 : cold mirror pulls 2\n");
    out.push_str("| kind | requests | errors | req/s | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let kinds: Vec<&'static str> = s.lat.keys().chain(s.errors.keys()).copied().collect();
    let mut kinds = kinds;
    kinds.sort_unstable();
    kinds.dedup();
    let mut total_err = 0;
    for k in kinds {
        let errs = s.errors.get(k).copied().unwrap_or(0);
        total_err += errs;
        let v = s.lat.entry(k).or_default();
        let n = v.len();
        let (p50, p99, mx) = (pct(v, 0.5), pct(v, 0.99), pct(v, 1.0));
        let _ = writeln!(
            out,
            "| {k} | {n} | {errs} | {:.0} | {:.2} | {:.2} | {:.1} |",
            n as f64 / wall,
            p50 * 1e3,
            p99 * 1e3,
            mx * 1e3
        );
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let peak_rss = samples.iter().map(|x| x.0).max().unwrap_or(rss1);
    let peak_fds = samples.iter().map(|x| x.1).max().unwrap_or(fds1);
    let _ = writeln!(
        out,
        "\nserver RSS: {:.1} MiB before the load, {:.1} MiB 5 s in, {:.1} MiB at the last sample under load, {:.1} MiB peak, {:.1} MiB at end; open fds: {fds0} before, {} 5 s in, {} at the last sample, {peak_fds} peak, {fds1} at end (after clients closed)",
        mib(rss0),
        mib(samples.first().map_or(0, |x| x.0)),
        mib(samples.last().map_or(0, |x| x.0)),
        mib(peak_rss),
        mib(rss1),
        samples.first().map_or(0, |x| x.1),
        samples.last().map_or(0, |x| x.1),
    );
    let _ = writeln!(
        out,
        "of which anonymous (heap) at end: {anon} kB; the rest is file-backed (redb, mapped blobs)"
    );
    let _ = writeln!(
        out,
        "cold blobs fetched through the mirror: {} of {COLD_BLOBS} seeded",
        next_cold.load(Ordering::Relaxed).min(COLD_BLOBS)
    );
    for e in &s.first_errors {
        let _ = writeln!(out, "- error: {e}");
    }
    println!("{out}");
    if total_err > 0 {
        return fail(format!("{total_err} requests failed"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    bench::exit("soak", rt.block_on(real_main()))
}
