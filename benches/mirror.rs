//! Cold-pull coalescing, side by side: wharfie as a pull-through mirror vs CNCF
//! Distribution (`/usr/bin/docker-registry`) in proxy mode, both in front of the same
//! upstream (another `docker-registry`, access log on, so every request it answers is
//! counted), in one run on this machine.
//!
//! ```sh
//! cargo bench --bench mirror                    # 256 MiB blob, N = 1, 8, 32, 100 (a few minutes)
//! BENCH_QUICK=1 cargo bench --bench mirror      # 32 MiB blob, N = 1, 8, 32 (smoke run)
//! BENCH_MIRROR_NS=1,100 cargo bench --bench mirror
//! BENCH_MIRROR_ONLY=wharfie cargo bench --bench mirror   # skip Distribution
//! BENCH_MIRROR_CLIENT=curl cargo bench --bench mirror     # one curl process per client
//! ```
//!
//! For each N and each mirror, a fresh mirror (empty data directory, so the blob is cold)
//! gets N concurrent GETs of one blob, all started together: by default from N threads of
//! this process, each on its own connection (so that a client's TTFB is not the time 100
//! processes take to start on 2 cores), or from N `curl` processes. Measured per run:
//! upstream GETs and HEADs of that blob (from the upstream's access log), each client's
//! time to first byte and the time until the last client finished; then the same N GETs
//! again, now warm, whose wall time gives the server's aggregate warm throughput. Every
//! client must get 200 and the full size (wharfie verifies the digest before the last byte
//! leaves; a short or failed transfer is counted as an error).
//!
//! Then, per mirror: one GET of the manifest by tag (cold), and 20 more within `tag_ttl`;
//! the upstream requests those 20 caused are reported.
//!
//! The issue's targets, printed as pass/fail for wharfie: for every N, 1 upstream GET; the
//! median TTFB at most 2× that of a lone cold client; all done within 1.2× of N × size ÷
//! the warm aggregate throughput (= 1.2 × the warm run's wall time).
//!
//! Needs `docker-registry` and `curl` (Debian packages of the same names; `.ci/run` installs
//! them). `WHARFIE_BIN=/path` uses another wharfie binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use bench::{access_log_count, curl, fail, location, start_wharfie, status, wharfie_bin, Proc, Res};
use wharfie_testkit::bench;

const REPO: &str = "bench/cold";
const TAG: &str = "v1";
const MIB: u64 = 1 << 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Warm manifest-by-tag GETs whose upstream traffic is counted.
const TAG_GETS: usize = 20;

fn distribution(dir: &Path, proxy_of: Option<&str>, access_log: bool) -> Res<(Proc, String)> {
    bench::start_distribution(dir, |port, storage| {
        let mut y = String::from("version: 0.1\nlog:\n  level: error\n");
        let _ = writeln!(y, "  accesslog:\n    disabled: {}", !access_log);
        let _ = writeln!(y, "storage:\n  filesystem:\n    rootdirectory: {}", storage.display());
        let _ = writeln!(y, "http:\n  addr: 127.0.0.1:{port}");
        if let Some(up) = proxy_of {
            let _ = writeln!(y, "proxy:\n  remoteurl: {up}");
        }
        y
    })
}

/// wharfie with one upstream named `up`; repositories are reached as `up/<name>`.
fn wharfie(dir: &Path, upstream: &str) -> Res<(Proc, String)> {
    start_wharfie(dir, &format!("\n[[upstreams]]\nname = \"up\"\nurl = \"{upstream}\"\ntag_ttl = \"5m\"\n"))
}

/// Upstream requests seen so far whose request line contains `needle`: (GETs, HEADs).
fn upstream_count(up: &Proc, needle: &str) -> (usize, usize) {
    access_log_count(&(up.log("stdout.log") + &up.log("stderr.log")), needle)
}

/// Counts once the upstream's log has stopped growing for 1 s (it logs a request when
/// the response is done, and a proxy may still be fetching after its clients finish).
fn settled_count(up: &Proc, needle: &str) -> (usize, usize) {
    let mut last = upstream_count(up, needle);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(1000));
        let now = upstream_count(up, needle);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

struct Wave {
    ttfb: Vec<f64>,
    wall: f64,
    errors: Vec<String>,
}

/// N concurrent GETs of `url`, started together; each must be 200 with `size` bytes.
fn wave(url: &str, n: usize, size: u64) -> Res<Wave> {
    let start = Instant::now();
    let mut kids = Vec::with_capacity(n);
    for _ in 0..n {
        kids.push(
            curl()
                .args(["-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_starttransfer}"])
                .arg(url)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?,
        );
    }
    let mut w = Wave { ttfb: Vec::new(), wall: 0.0, errors: Vec::new() };
    for k in kids {
        let out = k.wait_with_output()?;
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let f: Vec<&str> = s.split_whitespace().collect();
        match f.as_slice() {
            [code, got, ttfb] if *code == "200" && got.parse::<f64>().ok() == Some(size as f64) => {
                w.ttfb.push(ttfb.parse()?);
            }
            _ => w.errors.push(format!("{s} {}", String::from_utf8_lossy(&out.stderr).trim())),
        }
    }
    w.wall = start.elapsed().as_secs_f64();
    Ok(w)
}

/// The same wave from in-process clients: one thread per client, all released together by
/// a barrier, each on its own connection (`Connection: close`, a `Content-Length` body read
/// to its end into a reused buffer). TTFB is from the thread's release, before its connect,
/// to the first byte of the response: what curl's `time_starttransfer` measures, without
/// 100 processes starting on 2 cores inside the measurement.
fn wave_threads(url: &str, n: usize, size: u64) -> Res<Wave> {
    let (host, path) = bench::host_and_path(url)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let go = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
    let mut kids = Vec::with_capacity(n);
    for _ in 0..n {
        let (go, host, req) = (go.clone(), host.to_owned(), req.clone());
        kids.push(std::thread::spawn(move || {
            go.wait();
            one_get(&host, &req, size).map_err(|e| e.to_string())
        }));
    }
    go.wait();
    let start = Instant::now();
    let mut w = Wave { ttfb: Vec::new(), wall: 0.0, errors: Vec::new() };
    for k in kids {
        match k.join() {
            Ok(Ok(t)) => w.ttfb.push(t),
            Ok(Err(e)) => w.errors.push(e),
            Err(_) => w.errors.push("a client thread panicked".into()),
        }
    }
    w.wall = start.elapsed().as_secs_f64();
    Ok(w)
}

/// One client of [`wave_threads`]: its TTFB in seconds once the whole body has arrived.
fn one_get(host: &str, req: &str, size: u64) -> Res<f64> {
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(req.as_bytes())?;
    let mut buf = vec![0u8; 256 << 10];
    let mut n = s.read(&mut buf)?;
    let ttfb = t0.elapsed().as_secs_f64();
    let head_end = loop {
        if let Some(i) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if n == 0 || n == buf.len() {
            return fail(format!("no response head in {n} bytes"));
        }
        let got = s.read(&mut buf[n..])?;
        if got == 0 {
            return fail(format!("closed after {n} bytes of response head"));
        }
        n += got;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200 ") {
        return fail(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or("no Content-Length")?;
    if len != size {
        return fail(format!("Content-Length {len}, want {size}"));
    }
    let mut got = (n - head_end) as u64;
    loop {
        let r = s.read(&mut buf)?;
        if r == 0 {
            break;
        }
        got += r as u64;
    }
    if got != size {
        return fail(format!("body of {got} bytes, want {size}"));
    }
    Ok(ttfb)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Write `size` pseudo-random bytes to `path`; returns the digest.
fn random_file(path: &Path, size: u64, seed: u64) -> Res<String> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut h = Sha256::new();
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        h.update(&buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(format!("sha256:{:x}", h.finalize()))
}

/// Monolithic push of the file at `path` into the upstream.
fn push_blob(base: &str, path: &Path, digest: &str) -> Res<()> {
    let (code, head) = status(&["-X", "POST"], &format!("{base}/v2/{REPO}/blobs/uploads/"))?;
    let loc = location(&head, base).ok_or(format!("POST upload: {code}, no Location"))?;
    let sep = if loc.contains('?') { '&' } else { '?' };
    let data = format!("@{}", path.display());
    let (code, _) = status(
        &["-X", "PUT", "-H", "Content-Type: application/octet-stream", "--data-binary", &data],
        &format!("{loc}{sep}digest={digest}"),
    )?;
    if code != 201 {
        return fail(format!("PUT blob {digest}: {code}"));
    }
    Ok(())
}

struct Row {
    n: usize,
    server: &'static str,
    cold_gets: usize,
    cold_heads: usize,
    median_ttfb: f64,
    max_ttfb: f64,
    warm_median_ttfb: f64,
    warm_max_ttfb: f64,
    cold_wall: f64,
    warm_wall: f64,
    errors: usize,
}

fn real_main() -> Res<()> {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let size = if quick { 32 * MIB } else { 256 * MIB };
    let ns: Vec<usize> = match std::env::var("BENCH_MIRROR_NS") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|x| x.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("BENCH_MIRROR_NS: {e}"))?,
        _ if quick => vec![1, 8, 32],
        _ => vec![1, 8, 32, 100],
    };
    // BENCH_MIRROR_ONLY=wharfie skips Distribution (for quick before/after runs of wharfie).
    let servers: Vec<&'static str> = match std::env::var("BENCH_MIRROR_ONLY").as_deref() {
        Ok("wharfie") => vec!["wharfie"],
        Ok("distribution") => vec!["distribution"],
        _ => vec!["wharfie", "distribution"],
    };
    // BENCH_MIRROR_CLIENT=curl: one curl process per client (the figures before the
    // in-process clients); the default is one thread per client in this process.
    let threads = match std::env::var("BENCH_MIRROR_CLIENT").as_deref() {
        Ok("curl") => false,
        Ok("threads") | Ok("") | Err(_) => true,
        Ok(other) => return fail(format!("BENCH_MIRROR_CLIENT: {other:?} (use threads or curl)")),
    };
    let clients = if threads { wave_threads } else { wave };
    for (tool, pkg) in [("/usr/bin/docker-registry", "docker-registry"), ("curl", "curl")] {
        if Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            return fail(format!("{tool} not found: apt-get install -y {pkg}"));
        }
    }
    if !wharfie_bin().is_file() {
        return fail(format!("{} missing: cargo build --release", wharfie_bin().display()));
    }
    let base_tmp = option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    fs::create_dir_all(&base_tmp)?;
    let tmp = tempfile::Builder::new().prefix("mirror-bench-").tempdir_in(&base_tmp)?;
    let work = tmp.path();
    let started = Instant::now();

    // The upstream, seeded with one big blob, a config and a manifest tagged v1.
    let up_dir = work.join("upstream");
    fs::create_dir_all(&up_dir)?;
    let (up, up_base) = distribution(&up_dir, None, true)?;
    eprintln!("mirror bench: upstream at {up_base}; writing a {} MiB blob", size / MIB);
    let blob_path = work.join("big.bin");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    let big = random_file(&blob_path, size, seed)?;
    push_blob(&up_base, &blob_path, &big)?;
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{big}"]}}}}"#
    );
    let cfg_path = work.join("config.json");
    fs::write(&cfg_path, &config)?;
    let cfg_digest = format!("sha256:{}", sha256_hex(config.as_bytes()));
    push_blob(&up_base, &cfg_path, &cfg_digest)?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{big}","size":{size}}}]}}"#,
        config.len()
    );
    let man_path = work.join("manifest.json");
    fs::write(&man_path, &manifest)?;
    let (code, _) = status(
        &[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {OCI_MANIFEST}"),
            "--data-binary",
            &format!("@{}", man_path.display()),
        ],
        &format!("{up_base}/v2/{REPO}/manifests/{TAG}"),
    )?;
    if code != 201 {
        return fail(format!("PUT manifest to the upstream: {code}"));
    }
    let _ = fs::remove_file(&blob_path);

    let blob_needle = format!("/v2/{REPO}/blobs/{big}");
    let tag_needle = format!("/v2/{REPO}/manifests/");
    let mut rows = Vec::new();
    let mut tag_rows: Vec<(&str, usize, usize)> = Vec::new();
    for &n in &ns {
        for server in servers.iter().copied() {
            let dir = work.join(format!("{server}-{n}"));
            fs::create_dir_all(&dir)?;
            let (mirror, base) = match server {
                "wharfie" => wharfie(&dir, &up_base)?,
                _ => distribution(&dir, Some(&up_base), false)?,
            };
            let prefix = if server == "wharfie" { "up/" } else { "" };
            let url = format!("{base}/v2/{prefix}{REPO}/blobs/{big}");
            let before = upstream_count(&up, &blob_needle);
            eprintln!("mirror bench: {server}, N = {n}: cold");
            let cold = clients(&url, n, size)?;
            let after = settled_count(&up, &blob_needle);
            eprintln!("mirror bench: {server}, N = {n}: warm");
            let warm = clients(&url, n, size)?;
            rows.push(Row {
                n,
                server,
                cold_gets: after.0 - before.0,
                cold_heads: after.1 - before.1,
                median_ttfb: median(&cold.ttfb),
                max_ttfb: cold.ttfb.iter().copied().fold(f64::NAN, f64::max),
                warm_median_ttfb: median(&warm.ttfb),
                warm_max_ttfb: warm.ttfb.iter().copied().fold(f64::NAN, f64::max),
                cold_wall: cold.wall,
                warm_wall: warm.wall,
                errors: cold.errors.len() + warm.errors.len(),
            });
            for e in cold.errors.iter().chain(&warm.errors).take(3) {
                eprintln!("  {server} N={n} error: {e}");
            }
            if n == ns[0] {
                // Manifest by tag: one cold GET, then TAG_GETS warm ones within tag_ttl.
                let murl = format!("{base}/v2/{prefix}{REPO}/manifests/{TAG}");
                let accept = format!("Accept: {OCI_MANIFEST}");
                let (c, _) = status(&["-H", &accept], &murl)?;
                if c != 200 {
                    return fail(format!("{server}: GET manifest by tag: {c}"));
                }
                let t0 = settled_count(&up, &tag_needle);
                for _ in 0..TAG_GETS {
                    let (c, _) = status(&["-H", &accept], &murl)?;
                    if c != 200 {
                        return fail(format!("{server}: warm GET manifest by tag: {c}"));
                    }
                }
                let t1 = settled_count(&up, &tag_needle);
                tag_rows.push((server, t1.0 - t0.0, t1.1 - t0.1));
            }
            drop(mirror);
        }
    }

    let mut out = String::new();
    let _ = writeln!(out, "\n## Cold pull through a mirror: wharfie vs Distribution (proxy mode)\n");
    let _ = writeln!(
        out,
        "blob {} MiB; upstream Distribution on loopback; clients: {}; {}; wall time {:.0} s\n",
        size / MIB,
        if threads { "one thread each, in the bench's process" } else { "one curl process each" },
        if quick { "BENCH_QUICK (smoke run)" } else { "full run" },
        started.elapsed().as_secs_f64()
    );
    out.push_str("| N | mirror | upstream GETs | upstream HEADs | median TTFB s | max TTFB s | warm median TTFB s | warm max TTFB s | all done s | warm all done s | cold ÷ warm | errors |\n");
    out.push_str("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} | {} |",
            r.n,
            r.server,
            r.cold_gets,
            r.cold_heads,
            r.median_ttfb,
            r.max_ttfb,
            r.warm_median_ttfb,
            r.warm_max_ttfb,
            r.cold_wall,
            r.warm_wall,
            r.cold_wall / r.warm_wall,
            r.errors
        );
    }
    out.push_str("\n| mirror | upstream GETs for 20 warm manifest-by-tag GETs | upstream HEADs |\n| --- | ---: | ---: |\n");
    for (s, g, h) in &tag_rows {
        let _ = writeln!(out, "| {s} | {g} | {h} |");
    }
    let lone = rows.iter().find(|r| r.server == "wharfie" && r.n == 1).map(|r| r.median_ttfb);
    out.push_str("\ntargets (wharfie):\n");
    for r in rows.iter().filter(|r| r.server == "wharfie") {
        let ttfb_ok = lone.is_none_or(|l| r.median_ttfb <= 2.0 * l.max(0.001));
        let _ = writeln!(
            out,
            "- N = {}: 1 upstream GET: {}; median TTFB ≤ 2× lone ({}): {}; max TTFB ≤ 100 ms: {} ({:.0} ms, warm {:.0} ms); all done ≤ 1.2× warm: {} ({:.2}×)",
            r.n,
            if r.cold_gets == 1 { "yes" } else { "NO" },
            lone.map_or("n/a".into(), |l| format!("{l:.3} s")),
            if ttfb_ok { "yes" } else { "NO" },
            if r.max_ttfb <= 0.1 { "yes" } else { "NO" },
            r.max_ttfb * 1000.0,
            r.warm_max_ttfb * 1000.0,
            if r.cold_wall <= 1.2 * r.warm_wall { "yes" } else { "NO" },
            r.cold_wall / r.warm_wall
        );
    }
    println!("{out}");
    drop(up);
    let mut sink = String::new();
    let _ = File::open("/proc/loadavg").and_then(|mut f| f.read_to_string(&mut sink));
    eprintln!("load average after: {}", sink.trim());
    Ok(())
}

fn main() -> ExitCode {
    bench::exit("mirror bench", real_main())
}
