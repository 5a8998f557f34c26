//! Ingest benchmark: how fast the server takes blobs in, wharfie beside CNCF Distribution
//! (`/usr/bin/docker-registry`), on this machine, in one run.
//!
//! ```sh
//! cargo bench --bench ingest                  # 3 rounds per mode and server
//! BENCH_QUICK=1 cargo bench --bench ingest    # 1 round of 8 MiB blobs (smoke run)
//! ```
//!
//! The client is cheap on purpose, so the server's share shows: in-process threads writing
//! raw HTTP/1.1 on `std::net::TcpStream` from one shared buffer (no client-side copies or
//! hashing while the clock runs; every digest is computed before the round starts). Each
//! round, 8 threads push 8 distinct blobs of `BENCH_MIB` MiB (64 by default) in parallel,
//! in one of two modes:
//! - `monolithic`: `POST /blobs/uploads/`, then one `PUT <location>?digest=` with the body;
//! - `chunked`: `POST`, then `PATCH` chunks of `BENCH_CHUNK_MIB` MiB (8 by default) with
//!   `Content-Range`, then an empty `PUT ?digest=`.
//!
//! Reported per round: aggregate MiB/s (bytes pushed / wall time of the round) and the
//! server's CPU seconds per GiB received (utime+stime from `/proc/PID/stat`, before and
//! after the round). Then the median of the rounds. Each round starts with dirty pages
//! written back and the page cache dropped (as root), so every round meets the same
//! memory (see `reset_page_cache`). Beside them, the floor: what writing the blob bytes
//! to a file with fsync and one sha256 over them cost this process, with no HTTP. Both servers run with fresh data in a
//! temp dir under `target/tmp/` and fsync as they normally do (wharfie: file, then
//! directory, then the redb commit; Distribution: none). Knobs: `BENCH_ROUNDS`, `BENCH_MIB`,
//! `BENCH_CHUNK_MIB`, `BENCH_PARALLEL`, `BENCH_SERVERS=wharfie,distribution`, `BENCH_MODES=monolithic,chunked`,
//! `WHARFIE_BIN`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench fails by panicking
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use wharfie_testkit::bench::{self, fail, start_wharfie, Proc, Res};

/// Pushes per round (`BENCH_PARALLEL`, 8 by default; 1 shows a lone push's speed).
static PARALLEL: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| env_usize("BENCH_PARALLEL", 8));
const REPO: &str = "bench/ingest";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One blob: a unique 16-byte prefix followed by the shared body (minus 16 bytes).
struct Blob {
    prefix: [u8; 16],
    digest: String,
}

fn blobs(base: &[u8], tag: u64) -> Vec<Blob> {
    (0..*PARALLEL as u64)
        .map(|i| {
            let mut prefix = [0u8; 16];
            prefix[..8].copy_from_slice(&tag.to_le_bytes());
            prefix[8..].copy_from_slice(&i.to_le_bytes());
            let mut h = Sha256::new();
            h.update(prefix);
            h.update(&base[16..]);
            let digest = format!("sha256:{}", hex(&h.finalize()));
            Blob { prefix, digest }
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A response: status, `Location`, body (drained).
struct Resp {
    status: u16,
    location: Option<String>,
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    r: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    fn open(host: &str) -> Res<Conn> {
        let s = TcpStream::connect(host)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Conn { r: BufReader::new(s), host: host.to_owned() })
    }

    /// Send `method path` with the body parts (written in order, no copies) and read
    /// the answer.
    fn req(&mut self, method: &str, path: &str, extra: &str, body: &[&[u8]]) -> Res<Resp> {
        let len: usize = body.iter().map(|b| b.len()).sum();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {len}\r\n\
             Content-Type: application/octet-stream\r\n{extra}\r\n",
            self.host
        );
        let s = self.r.get_mut();
        s.write_all(head.as_bytes())?;
        for b in body {
            s.write_all(b)?;
        }
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let (mut location, mut clen) = (None, 0usize);
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                return fail("connection closed in a response head");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "location" => location = Some(v.trim().to_owned()),
                    "content-length" => clen = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut sink = vec![0u8; clen];
        self.r.read_exact(&mut sink)?;
        Ok(Resp { status, location })
    }
}

/// The path (and query) of a `Location`, absolute or not.
fn path_of(loc: &str) -> String {
    match loc.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or_else(|| "/".to_owned(), |i| rest[i..].to_owned()),
        None => loc.to_owned(),
    }
}

fn with_digest(loc: &str, digest: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}digest={digest}")
}

fn push(host: &str, base: &[u8], blob: &Blob, chunk: Option<usize>) -> Res<()> {
    let mut c = Conn::open(host)?;
    let r = c.req("POST", &format!("/v2/{REPO}/blobs/uploads/"), "", &[])?;
    let mut loc = match (r.status, r.location) {
        (202, Some(l)) => path_of(&l),
        (s, _) => return fail(format!("POST: status {s}")),
    };
    let body = &base[16..];
    match chunk {
        None => {
            let r = c.req("PUT", &with_digest(&loc, &blob.digest), "", &[&blob.prefix, body])?;
            if r.status != 201 {
                return fail(format!("PUT: status {}", r.status));
            }
        }
        Some(size) => {
            let total = base.len();
            let mut off = 0;
            while off < total {
                let end = (off + size).min(total);
                // Chunk [off, end) of prefix ++ body.
                let parts: Vec<&[u8]> = if off == 0 {
                    vec![&blob.prefix, &body[..end - 16]]
                } else {
                    vec![&body[off - 16..end - 16]]
                };
                let range = format!("Content-Range: {off}-{}\r\n", end - 1);
                let r = c.req("PATCH", &loc, &range, &parts)?;
                loc = match (r.status, r.location) {
                    (202, Some(l)) => path_of(&l),
                    (s, _) => return fail(format!("PATCH {off}: status {s}")),
                };
                off = end;
            }
            let r = c.req("PUT", &with_digest(&loc, &blob.digest), "", &[])?;
            if r.status != 201 {
                return fail(format!("PUT (close): status {}", r.status));
            }
        }
    }
    Ok(())
}

/// utime + stime of `pid` in seconds.
fn cpu_secs(pid: u32) -> Res<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`: state is field 3; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((tick(11) + tick(12)) / hz)
}

struct Round {
    mib_s: f64,
    cpu_per_gib: f64,
}

/// Start a round from the same memory state: write back dirty pages and drop the clean
/// page cache. On this project's VM, page cache that grows into guest memory never
/// touched before costs ~3× the kernel time per copied page (the host faults each page
/// in): without this, rounds after the first few GiB written measured 2-3× the CPU per
/// GiB of earlier ones, for both servers. Needs root; says so once when it cannot.
fn reset_page_cache() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    if fs::write("/proc/sys/vm/drop_caches", "1").is_err() {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("ingest: cannot drop the page cache (not root): rounds may vary"));
    }
}

/// CPU seconds this thread has used (utime + stime).
fn thread_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// What the work no registry can skip costs on this machine, per GiB, with no HTTP:
/// writing the bytes to a file on the same file system and fsyncing it, and one
/// sha256 over as many bytes (the same crate and CPU features the server uses). Best of 3.
fn floor(dir: &Path, base: &[u8]) -> Res<(f64, f64)> {
    // As many bytes as one round pushes, so the tick-grained CPU clock is precise enough.
    let gib = (*PARALLEL * base.len()) as f64 / (1u64 << 30) as f64;
    let (mut write, mut hash) = (f64::MAX, f64::MAX);
    for i in 0..3 {
        reset_page_cache();
        let path = dir.join(format!("floor-{i}"));
        let c0 = thread_cpu_secs();
        let mut f = fs::File::create(&path)?;
        for _ in 0..*PARALLEL {
            for part in base.chunks(1 << 20) {
                f.write_all(part)?;
            }
        }
        f.sync_all()?;
        drop(f);
        write = write.min((thread_cpu_secs() - c0) / gib);
        fs::remove_file(&path)?;
        let c0 = thread_cpu_secs();
        // Over a 1 MiB piece that is in cache, as the server's pieces are (just received
        // and written) when it hashes them.
        let piece = &base[..base.len().min(1 << 20)];
        let mut h = Sha256::new();
        for _ in 0..*PARALLEL * base.len() / piece.len() {
            h.update(piece);
        }
        std::hint::black_box(h.finalize());
        hash = hash.min((thread_cpu_secs() - c0) / gib);
    }
    Ok((write, hash))
}

fn round(host: &str, pid: u32, base: &Arc<Vec<u8>>, blobs: Vec<Blob>, chunk: Option<usize>) -> Res<Round> {
    reset_page_cache();
    let cpu0 = cpu_secs(pid)?;
    let t0 = Instant::now();
    let handles: Vec<_> = blobs
        .into_iter()
        .map(|b| {
            let (base, host) = (Arc::clone(base), host.to_owned());
            std::thread::spawn(move || push(&host, &base, &b, chunk).map_err(|e| e.to_string()))
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "push thread panicked")??;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid)? - cpu0;
    let mib = (*PARALLEL * base.len()) as f64 / (1 << 20) as f64;
    Ok(Round { mib_s: mib / wall, cpu_per_gib: cpu / (mib / 1024.0) })
}

fn start_distribution(dir: &Path) -> Res<(Proc, String)> {
    bench::start_distribution(dir, |port, storage| {
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  cache:\n    blobdescriptor: inmemory\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        )
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn run() -> Result<(), Box<dyn Error>> {
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let rounds = env_usize("BENCH_ROUNDS", if quick { 1 } else { 3 });
    let mib = env_usize("BENCH_MIB", if quick { 8 } else { 64 });
    let chunk = env_usize("BENCH_CHUNK_MIB", if quick { 2 } else { 8 }) << 20;
    let servers = std::env::var("BENCH_SERVERS").unwrap_or_else(|_| "wharfie,distribution".into());
    // Deterministic, incompressible-looking bytes (xorshift), made once.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let base: Vec<u8> = (0..(mib << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let base = Arc::new(base);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("tmp");
    fs::create_dir_all(&root)?;
    let tmp = tempfile::tempdir_in(&root)?;
    let (floor_write, floor_hash) = floor(tmp.path(), &base)?;
    eprintln!("floor: write + fsync {floor_write:.2} s/GiB, sha256 {floor_hash:.2} s/GiB");
    let mut out = String::new();
    let _ = writeln!(out, "| server | mode | round | MiB/s | server CPU s/GiB |");
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: |");
    let mut tag = 0u64;
    for server in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let dir = tmp.path().join(server);
        fs::create_dir_all(&dir)?;
        let (proc_, url) = match server {
            "wharfie" => start_wharfie(&dir, "")?,
            "distribution" => start_distribution(&dir)?,
            other => return fail(format!("unknown server {other}")),
        };
        let host = url.trim_start_matches("http://").to_owned();
        let pid = proc_.child.id();
        let modes = std::env::var("BENCH_MODES").unwrap_or_else(|_| "monolithic,chunked".into());
        let wanted = |m: &str| modes.split(',').any(|w| w.trim() == m);
        for (mode, c) in
            [("monolithic", None), ("chunked", Some(chunk))].into_iter().filter(|(m, _)| wanted(m))
        {
            let (mut speeds, mut cpus) = (Vec::new(), Vec::new());
            for r in 1..=rounds {
                tag += 1;
                let set = blobs(&base, tag);
                let res = round(&host, pid, &base, set, c)?;
                let _ =
                    writeln!(out, "| {server} | {mode} | {r} | {:.0} | {:.2} |", res.mib_s, res.cpu_per_gib);
                eprintln!("{server} {mode} round {r}: {:.0} MiB/s, {:.2} s/GiB", res.mib_s, res.cpu_per_gib);
                speeds.push(res.mib_s);
                cpus.push(res.cpu_per_gib);
            }
            let _ =
                writeln!(out, "| {server} | {mode} | median | {:.0} | {:.2} |", median(speeds), median(cpus));
        }
        drop(proc_);
    }
    println!(
        "{} parallel pushes of distinct {mib} MiB blobs, {rounds} round(s); chunks {} MiB\n",
        *PARALLEL,
        chunk >> 20
    );
    let _ = writeln!(
        out,
        "\nfloor (this process, no HTTP, best of 3): write + fsync {floor_write:.2} s/GiB, \
         sha256 {floor_hash:.2} s/GiB, together {:.2} s/GiB",
        floor_write + floor_hash
    );
    print!("{out}");
    Ok(())
}

fn main() -> ExitCode {
    bench::exit("ingest bench", run())
}
