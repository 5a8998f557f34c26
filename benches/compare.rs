//! Side-by-side benchmark: wharfie vs CNCF Distribution (`/usr/bin/docker-registry`, the
//! reference registry) vs nginx serving the same bytes as static files, on this machine, in
//! one run. It prints one markdown table with absolute numbers and the ratios
//! wharfie/nginx and wharfie/distribution.
//!
//! ```sh
//! cargo bench --bench compare                         # full run, about 25 minutes
//! BENCH_QUICK=1 cargo bench --bench compare           # smoke run, under a minute
//! BENCH_SCENARIOS=a,b cargo bench --bench compare     # only some scenarios
//! ```
//!
//! Needs `docker-registry`, `nginx`, `wrk`, `skopeo` and `curl` on PATH (Debian packages of
//! the same names; `.ci/run` installs them). Cargo builds `target/release/wharfie` before it
//! runs the bench; `WHARFIE_BIN=/path` uses another binary.
//!
//! The servers, all on 127.0.0.1 with fresh data in a temp dir under `target/tmp/`:
//! - wharfie: `wharfie serve --listen 127.0.0.1:0 --data-dir DIR`, default settings; its default
//!   log level (info) logs every request to stderr (a file here). `RUST_LOG=warn cargo bench …`
//!   passes through and turns that off, like the other two servers' access logs.
//! - Distribution 2.8: filesystem storage, log level error, access log off.
//! - nginx: `sendfile on`, `worker_processes auto`, `access_log off`, keep-alive requests
//!   unlimited in practice (its default of 1000 per connection would make wrk reconnect, which
//!   the registries never ask for). It serves files laid out like registry URLs
//!   (`v2/bench/blobs/sha256:<hex>`, `v2/bench/manifests/latest`), so it is the ceiling for
//!   serving these bytes over HTTP/1.1 here, not a registry.
//!
//! The same blobs and manifests are seeded into wharfie and Distribution through the registry
//! API (POST, PATCH, PUT ?digest=; then PUT of an OCI manifest), and copied into nginx's root.
//! Every URL is checked byte for byte on every server before it is measured.
//!
//! Scenarios:
//! - a: manifest GET by tag, manifest GET by digest, 4 KiB blob GET, each with
//!   `wrk -t2 -c8` and `-c64` for 10 s, 3 rounds with the servers interleaved, the median
//!   round shown: requests/s, and server CPU time (utime+stime from
//!   `/proc/PID/stat`, nginx's master and workers summed) per request. Then the same three
//!   URLs by HEAD, which wrk cannot send (its parser waits for the body a HEAD response
//!   announces): the bench's own client in wrk's shape (two threads, each an event loop over
//!   its share of the keep-alive connections, HEADs back to back on each), 8 and 64
//!   connections, the same rounds and figures.
//! - b: one 256 MiB blob: single-stream `curl -o /dev/null` 3 times (best, median), 8 concurrent
//!   streams (aggregate, best of 2 rounds), and server CPU seconds per GiB sent.
//! - c: `skopeo copy --preserve-digests` of a 3-layer OCI layout (1 + 64 + 256 MiB of gzip-
//!   compressed random data, new each push) to wharfie and Distribution: compressed bytes / wall
//!   time (best of 2 pushes, each of a new image), and server CPU seconds per GiB received.
//! - d: peak RSS (VmHWM from `/proc/PID/status`, nginx's processes summed) after seeding and
//!   after each scenario.
//!
//! wrk runs on the same 2 cores as the server, so requests/s is client+server throughput on
//! this machine; CPU per request is the server's share alone.
//!
//! Knobs (environment): `BENCH_QUICK=1` (3 s wrk runs, 32 MiB big blob, 1+8+32 MiB push,
//! single rounds), `BENCH_SCENARIOS=a,b,c` (d always rides along), `BENCH_SERVERS=wharfie,
//! distribution,nginx`, `BENCH_WRK_SECS=N`, `BENCH_A_ROUNDS=N` (scenario a's rounds, default 3), `BENCH_KEEP=1` (keep the temp dir and the servers'
//! logs), `WHARFIE_BIN=PATH`, `RUST_LOG` (wharfie's log filter). Run it on an otherwise idle
//! machine: anything else on the 2 cores shows up in every number.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use std::error::Error;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

type Res<T> = Result<T, Box<dyn Error>>;

macro_rules! bail {
    ($($t:tt)*) => { return Err(format!($($t)*).into()) };
}

const REPO: &str = "bench";
const PUSH_REPO: &str = "bench/push";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
/// Upper bound for any one curl transfer.
const CURL_MAX_SECS: &str = "300";

// ---------------------------------------------------------------------------------------------
// Configuration

struct Cfg {
    quick: bool,
    scenarios: Vec<char>,
    servers: Vec<Kind>,
    wrk_secs: u64,
    /// Scenario a: runs per row and server; the row shows the median.
    a_rounds: usize,
    warmup_secs: u64,
    big_size: u64,
    single_reps: usize,
    concurrent_rounds: usize,
    streams: usize,
    push_layers_mib: Vec<u64>,
    push_reps: usize,
    keep: bool,
}

impl Cfg {
    fn from_env() -> Res<Cfg> {
        let quick = env_flag("BENCH_QUICK");
        let scenarios: Vec<char> = match std::env::var("BENCH_SCENARIOS") {
            Ok(s) if !s.trim().is_empty() => {
                let mut v = Vec::new();
                for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match part {
                        "a" | "b" | "c" => v.push(part.chars().next().unwrap_or('a')),
                        "d" => {} // always measured
                        other => bail!("BENCH_SCENARIOS: unknown scenario {other:?} (use a,b,c)"),
                    }
                }
                v
            }
            _ => vec!['a', 'b', 'c'],
        };
        let servers = match std::env::var("BENCH_SERVERS") {
            Ok(s) if !s.trim().is_empty() => {
                let mut v = Vec::new();
                for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match Kind::ALL.iter().find(|k| k.name() == part) {
                        Some(k) => v.push(*k),
                        None => bail!("BENCH_SERVERS: unknown server {part:?} (wharfie,distribution,nginx)"),
                    }
                }
                v.sort();
                v.dedup();
                v
            }
            _ => Kind::ALL.to_vec(),
        };
        let wrk_secs = env_num("BENCH_WRK_SECS", if quick { 3 } else { 10 }, 120)?;
        let a_rounds = env_num("BENCH_A_ROUNDS", if quick { 1 } else { 3 }, 9)? as usize;
        Ok(Cfg {
            quick,
            scenarios,
            servers,
            wrk_secs,
            a_rounds,
            warmup_secs: if quick { 1 } else { 2 },
            big_size: if quick { 32 * MIB } else { 256 * MIB },
            single_reps: 3,
            concurrent_rounds: if quick { 1 } else { 2 },
            streams: 8,
            push_layers_mib: if quick { vec![1, 8, 32] } else { vec![1, 64, 256] },
            push_reps: if quick { 1 } else { 2 },
            keep: env_flag("BENCH_KEEP"),
        })
    }

    fn has(&self, s: char) -> bool {
        self.scenarios.contains(&s)
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

// ---------------------------------------------------------------------------------------------
// Servers

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Wharfie,
    Distribution,
    Nginx,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Wharfie, Kind::Distribution, Kind::Nginx];

    fn name(self) -> &'static str {
        match self {
            Kind::Wharfie => "wharfie",
            Kind::Distribution => "distribution",
            Kind::Nginx => "nginx",
        }
    }

    fn idx(self) -> usize {
        self as usize
    }

    fn is_registry(self) -> bool {
        self != Kind::Nginx
    }
}

/// A running server; dropping it stops it (SIGTERM, then SIGKILL after 5 s).
struct Server {
    kind: Kind,
    child: Option<Child>,
    base: String,
    dir: PathBuf,
    /// nginx's document root.
    root: PathBuf,
}

impl Server {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's process and all its descendants (nginx's workers).
    fn pids(&self) -> Vec<u32> {
        self.pid().map(descendants_of).unwrap_or_default()
    }

    /// utime+stime of the server's processes, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        self.pids()
            .iter()
            .filter_map(|&p| {
                let f = stat_fields(p)?;
                // Fields after "(comm)": [0]=state [1]=ppid ... [11]=utime [12]=stime.
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .sum()
    }

    /// Peak resident set (VmHWM) of the server's processes, summed, in bytes.
    fn peak_rss(&self) -> u64 {
        self.pids()
            .iter()
            .filter_map(|&p| {
                let s = fs::read_to_string(format!("/proc/{p}/status")).ok()?;
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
                let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            })
            .sum()
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => None,
            Some(Ok(Some(st))) => Some(format!("exited: {st}")),
            Some(Err(e)) => Some(format!("wait failed: {e}")),
            None => Some("not running".into()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log_tail(&self) -> String {
        let mut s = String::new();
        for name in ["stdout.log", "stderr.log", "error.log"] {
            if let Ok(t) = fs::read_to_string(self.dir.join(name)) {
                let lines: Vec<&str> = t.lines().collect();
                let from = lines.len().saturating_sub(15);
                if from < lines.len() {
                    let _ = writeln!(s, "--- {} {name} (last lines):", self.kind.name());
                    for l in &lines[from..] {
                        let _ = writeln!(s, "{l}");
                    }
                }
            }
        }
        s
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let descendants: Vec<u32> = descendants_of(child.id()).into_iter().skip(1).collect();
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        // nginx's master stops its workers; make sure none outlives it.
        for p in descendants {
            let comm = fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            if comm.trim() == "nginx" {
                // SAFETY: kill(2) on a process that was our server's descendant, checked by name.
                unsafe {
                    libc::kill(p as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// `pid` first, then all its descendants (bounded).
fn descendants_of(pid: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1).and_then(|s| s.parse::<u32>().ok())) {
                all.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < 4096 {
        let parent = out[i];
        for &(p, pp) in &all {
            if pp == parent && !out.contains(&p) {
                out.push(p);
            }
        }
        i += 1;
    }
    out
}

/// Spawn a long-running server with its output in files; it gets `deathsig` if we die first.
fn spawn_server(mut cmd: Command, dir: &Path, deathsig: libc::c_int) -> Res<Child> {
    cmd.stdin(Stdio::null())
        .stdout(File::create(dir.join("stdout.log"))?)
        .stderr(File::create(dir.join("stderr.log"))?);
    // SAFETY: only prctl(2), which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, deathsig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()).into())
}

fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Poll until `url` answers with an HTTP status (any) or the server dies; 30 s at most.
fn wait_http(s: &mut Server, path: &str, want: Option<u16>) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(why) = s.exited() {
            bail!("{} {why} before it served\n{}", s.kind.name(), s.log_tail());
        }
        if let Ok(r) = http(&["--max-time", "2"], &s.url(path)) {
            if want.is_none_or(|w| w == r.code) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not answer {path} within 30 s\n{}", s.kind.name(), s.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wharfie_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WHARFIE_BIN") {
        return p.into();
    }
    match option_env!("CARGO_BIN_EXE_wharfie") {
        Some(p) => p.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/wharfie"),
    }
}

fn start_wharfie(dir: &Path) -> Res<Server> {
    let bin = wharfie_bin();
    if !bin.is_file() {
        bail!(
            "wharfie binary not found at {}: build it with `cargo build --release` \
             (or set WHARFIE_BIN, or leave it out with BENCH_SERVERS=distribution,nginx)",
            bin.display()
        );
    }
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir.join("data"));
    let child = spawn_server(cmd, dir, libc::SIGKILL)?;
    let mut s = Server {
        kind: Kind::Wharfie,
        child: Some(child),
        base: String::new(),
        dir: dir.into(),
        root: dir.into(),
    };
    // Its first stdout line is `listening on http://127.0.0.1:PORT`.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
        if let Some(line) = out.lines().next().filter(|_| out.contains('\n')) {
            match line.strip_prefix("listening on ") {
                Some(u) if u.starts_with("http://") => {
                    s.base = u.trim().to_owned();
                    break;
                }
                _ => bail!("wharfie's first stdout line is {line:?}, not `listening on http://…`"),
            }
        }
        if let Some(why) = s.exited() {
            bail!("wharfie {why} before it listened\n{}", s.log_tail());
        }
        if Instant::now() > deadline {
            bail!("wharfie printed no `listening on` line within 30 s\n{}", s.log_tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_http(&mut s, "/v2/", Some(200))?;
    Ok(s)
}

fn start_distribution(dir: &Path) -> Res<Server> {
    let port = free_port()?;
    let storage = dir.join("storage");
    fs::create_dir_all(&storage)?;
    let config = format!(
        "version: 0.1\n\
         log:\n  level: error\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
         cache:\n    blobdescriptor: inmemory\n\
         http:\n  addr: 127.0.0.1:{port}\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
        storage.display()
    );
    let cfg_path = dir.join("config.yml");
    fs::write(&cfg_path, config)?;
    let mut cmd = Command::new("/usr/bin/docker-registry");
    cmd.arg("serve").arg(&cfg_path);
    let child = spawn_server(cmd, dir, libc::SIGKILL)?;
    let mut s = Server {
        kind: Kind::Distribution,
        child: Some(child),
        base: format!("http://127.0.0.1:{port}"),
        dir: dir.into(),
        root: storage,
    };
    wait_http(&mut s, "/v2/", Some(200))?;
    Ok(s)
}

fn start_nginx(dir: &Path) -> Res<Server> {
    let port = free_port()?;
    let root = dir.join("root");
    fs::create_dir_all(root.join("v2").join(REPO).join("blobs"))?;
    fs::create_dir_all(root.join("v2").join(REPO).join("manifests"))?;
    fs::create_dir_all(dir.join("tmp"))?;
    // As root, nginx's workers would run as `nobody` and could not read a 0700 temp dir.
    // SAFETY: geteuid(2) cannot fail.
    let user = if unsafe { libc::geteuid() } == 0 { "user root;\n" } else { "" };
    let t = dir.join("tmp").display().to_string();
    let config = format!(
        "{user}worker_processes auto;\n\
         pid nginx.pid;\n\
         error_log error.log error;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
           access_log off;\n\
           sendfile on;\n\
           tcp_nopush on;\n\
           keepalive_requests 100000000;\n\
           client_body_temp_path {t}/body;\n\
           proxy_temp_path {t}/proxy;\n\
           fastcgi_temp_path {t}/fastcgi;\n\
           uwsgi_temp_path {t}/uwsgi;\n\
           scgi_temp_path {t}/scgi;\n\
           types {{ }}\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             root {root};\n\
             location /v2/ {{ default_type application/octet-stream; }}\n\
             location /v2/{REPO}/manifests/ {{ default_type {OCI_MANIFEST}; }}\n\
           }}\n\
         }}\n",
        root = root.display(),
    );
    fs::write(dir.join("nginx.conf"), config)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p").arg(dir).args(["-c", "nginx.conf", "-e", "error.log", "-g", "daemon off;"]);
    // SIGTERM is nginx's fast shutdown: the master takes its workers down with it.
    let child = spawn_server(cmd, dir, libc::SIGTERM)?;
    let mut s = Server {
        kind: Kind::Nginx,
        child: Some(child),
        base: format!("http://127.0.0.1:{port}"),
        dir: dir.into(),
        root,
    };
    wait_http(&mut s, "/", None)?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// HTTP through curl

struct Resp {
    code: u16,
    headers: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn curl_cmd() -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--noproxy", "*", "--max-time", CURL_MAX_SECS]);
    c.stdin(Stdio::null());
    c
}

/// One request; `args` go before the URL. Only for small bodies.
fn http(args: &[&str], url: &str) -> Res<Resp> {
    let hdr = std::env::temp_dir().join(format!(
        "compare-bench-{}-{}.hdr",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let out = curl_cmd().arg("-D").arg(&hdr).args(args).arg(url).output()?;
    let raw = fs::read_to_string(&hdr).unwrap_or_default();
    let _ = fs::remove_file(&hdr);
    if !out.status.success() {
        bail!("curl {args:?} {url}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    // The last header block (after any `100 Continue`).
    let block = raw.trim_end().rsplit("\r\n\r\n").next().unwrap_or_default().to_owned();
    let code = block
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("curl {url}: no status line in {raw:?}"))?;
    Ok(Resp { code, headers: block, body: out.stdout })
}

fn expect(r: &Resp, want: u16, what: &str) -> Res<()> {
    if r.code != want {
        bail!("{what}: HTTP {} (wanted {want}): {}", r.code, String::from_utf8_lossy(&r.body).trim());
    }
    Ok(())
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

/// POST, PATCH (the whole blob), PUT ?digest= — as docker and skopeo push.
fn push_blob(base: &str, repo: &str, blob: &Blob) -> Res<()> {
    let what = format!("push {} to {base}", blob.digest);
    let r = http(&["-X", "POST"], &format!("{base}/v2/{repo}/blobs/uploads/"))?;
    expect(&r, 202, &what)?;
    let loc = absolute(base, r.header("location").ok_or("POST: no Location")?);
    let path = blob.path.to_str().ok_or("non-UTF-8 path")?;
    let r = http(
        &["-X", "PATCH", "-H", "Content-Type: application/octet-stream", "-H", "Expect:", "-T", path],
        &loc,
    )?;
    expect(&r, 202, &what)?;
    let loc = absolute(base, r.header("location").ok_or("PATCH: no Location")?);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let url = format!("{loc}{sep}digest={}", blob.digest.replace(':', "%3A"));
    let r = http(&["-X", "PUT", "-H", "Content-Type: application/octet-stream", "--data-binary", ""], &url)?;
    expect(&r, 201, &what)
}

fn push_manifest(base: &str, repo: &str, reference: &str, m: &Blob) -> Res<()> {
    let path = format!("@{}", m.path.display());
    let ct = format!("Content-Type: {OCI_MANIFEST}");
    let r = http(
        &["-X", "PUT", "-H", &ct, "--data-binary", &path],
        &format!("{base}/v2/{repo}/manifests/{reference}"),
    )?;
    expect(&r, 201, &format!("PUT manifest {reference} to {base}"))?;
    if let Some(d) = r.header("docker-content-digest") {
        if d != m.digest {
            bail!("PUT manifest {reference} to {base}: Docker-Content-Digest {d}, wanted {}", m.digest);
        }
    }
    Ok(())
}

/// GET `path` and check the bytes (and Content-Type, if given).
fn verify_get(s: &Server, path: &str, want: &Blob, content_type: Option<&str>) -> Res<()> {
    let accept = format!("Accept: {OCI_MANIFEST}");
    let r = http(&["-H", &accept], &s.url(path))?;
    let what = format!("{} GET {path}", s.kind.name());
    expect(&r, 200, &what)?;
    let got = sha256_hex(&r.body);
    if format!("sha256:{got}") != want.digest {
        bail!("{what}: {} bytes with sha256:{got}, wanted {} bytes {}", r.body.len(), want.size, want.digest);
    }
    if let Some(ct) = content_type {
        let got = r.header("content-type").unwrap_or("");
        if got != ct {
            bail!("{what}: Content-Type {got:?}, wanted {ct:?}");
        }
    }
    Ok(())
}

/// Stream a big blob through sha256 (warms the page cache, checks the bytes).
fn verify_big(s: &Server, path: &str, want: &Blob) -> Res<()> {
    let mut child =
        curl_cmd().arg("-f").arg(s.url(path)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    if let Some(mut out) = child.stdout.take() {
        loop {
            let k = out.read(&mut buf)?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} GET {path}: curl {}: {}",
            s.kind.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let got = format!("sha256:{}", hex(&h.finalize()));
    if got != want.digest || n != want.size {
        bail!("{} GET {path}: {n} bytes {got}, wanted {} bytes {}", s.kind.name(), want.size, want.digest);
    }
    Ok(())
}

/// One download to /dev/null: (bytes, seconds, status).
fn download(url: &str) -> Res<(u64, f64, u16)> {
    let out = curl_cmd()
        .args(["-o", "/dev/null", "-w", "%{size_download} %{time_total} %{http_code}", url])
        .output()?;
    parse_download(&out)
}

fn parse_download(out: &std::process::Output) -> Res<(u64, f64, u16)> {
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace();
    let (Some(n), Some(t), Some(c)) = (it.next(), it.next(), it.next()) else {
        bail!("curl: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    };
    if !out.status.success() {
        bail!("curl: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((n.parse::<f64>()? as u64, t.parse()?, c.parse()?))
}

// ---------------------------------------------------------------------------------------------
// Processes with a deadline

struct Ran {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
    secs: f64,
}

fn run_bounded(cmd: &mut Command, limit: Duration) -> Res<Ran> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
    let mut so = child.stdout.take().ok_or("no stdout")?;
    let mut se = child.stderr.take().ok_or("no stderr")?;
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > limit {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&t1.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t2.join().unwrap_or_default()).into_owned();
    let status = if timed_out { format!("killed after {limit:?}") } else { status.to_string() };
    Ok(Ran { ok: !timed_out && status == "exit status: 0", status, stdout, stderr, secs })
}

// ---------------------------------------------------------------------------------------------
// Content

#[derive(Clone)]
struct Blob {
    digest: String,
    size: u64,
    path: PathBuf,
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// xorshift64*: fast, seedable, incompressible enough for gzip.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Read for Rng {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
        Ok(buf.len())
    }
}

fn run_seed() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

/// Write `len` bytes from `src` to `dir/<hex>` and return the blob.
fn write_blob(dir: &Path, src: &mut dyn Read, len: u64) -> Res<Blob> {
    let tmp = dir.join(format!("tmp-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
    let mut w = HashWriter::new(File::create(&tmp)?);
    io::copy(&mut src.take(len), &mut w)?;
    let (f, digest, size) = w.finish();
    f.sync_all()?;
    let path = dir.join(&digest);
    fs::rename(&tmp, &path)?;
    Ok(Blob { digest: format!("sha256:{digest}"), size, path })
}

fn write_bytes(dir: &Path, bytes: &[u8]) -> Res<Blob> {
    write_blob(dir, &mut &bytes[..], bytes.len() as u64)
}

struct HashWriter<W> {
    inner: W,
    h: Sha256,
    n: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        HashWriter { inner, h: Sha256::new(), n: 0 }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.h.finalize()), self.n)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.h.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn descriptor(media_type: &str, b: &Blob) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{}","size":{}}}"#, b.digest, b.size)
}

fn manifest_json(config: &Blob, layers: &[Blob]) -> String {
    let layers: Vec<String> = layers.iter().map(|l| descriptor(OCI_LAYER_GZ, l)).collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        descriptor(OCI_CONFIG, config),
        layers.join(",")
    )
}

fn config_json(diff_ids: &[String], seed: u64) -> String {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"bench.seed":"{seed}"}}}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        ids.join(",")
    )
}

/// What scenarios a and b fetch, the same bytes on every server.
struct Seeded {
    small: Blob,
    manifest: Blob,
    big: Option<Blob>,
    /// (reference, manifest)
    manifests: Vec<(String, Blob)>,
    blobs: Vec<Blob>,
}

fn make_content(dir: &Path, big_size: Option<u64>) -> Res<Seeded> {
    fs::create_dir_all(dir)?;
    let seed = run_seed();
    let small = write_blob(dir, &mut Rng::new(seed), 4096)?;
    let config = write_bytes(dir, config_json(std::slice::from_ref(&small.digest), seed).as_bytes())?;
    let manifest = write_bytes(dir, manifest_json(&config, std::slice::from_ref(&small)).as_bytes())?;
    let mut blobs = vec![config.clone(), small.clone()];
    let mut manifests =
        vec![("latest".to_owned(), manifest.clone()), (manifest.digest.clone(), manifest.clone())];
    let big = match big_size {
        Some(n) => {
            let big = write_blob(dir, &mut Rng::new(seed.wrapping_add(1)), n)?;
            let cfg = write_bytes(dir, config_json(std::slice::from_ref(&big.digest), seed).as_bytes())?;
            let m = write_bytes(dir, manifest_json(&cfg, std::slice::from_ref(&big)).as_bytes())?;
            blobs.push(cfg);
            blobs.push(big.clone());
            manifests.push(("big".to_owned(), m));
            Some(big)
        }
        None => None,
    };
    Ok(Seeded { small, manifest, big, manifests, blobs })
}

fn seed_server(s: &Server, c: &Seeded) -> Res<()> {
    if s.kind.is_registry() {
        for b in &c.blobs {
            push_blob(&s.base, REPO, b)?;
        }
        for (r, m) in &c.manifests {
            if !r.starts_with("sha256:") {
                push_manifest(&s.base, REPO, r, m)?;
            }
        }
    } else {
        let v2 = s.root.join("v2").join(REPO);
        for b in &c.blobs {
            fs::copy(&b.path, v2.join("blobs").join(&b.digest))?;
        }
        for (r, m) in &c.manifests {
            fs::copy(&m.path, v2.join("manifests").join(r))?;
        }
    }
    for b in &c.blobs {
        if b.size <= 16 * MIB {
            verify_get(s, &format!("/v2/{REPO}/blobs/{}", b.digest), b, None)?;
        } else {
            verify_big(s, &format!("/v2/{REPO}/blobs/{}", b.digest), b)?;
        }
    }
    for (r, m) in &c.manifests {
        verify_get(s, &format!("/v2/{REPO}/manifests/{r}"), m, Some(OCI_MANIFEST))?;
    }
    Ok(())
}

/// An OCI image layout with one image of gzip-compressed random tar layers.
struct Layout {
    dir: PathBuf,
    tag: String,
    manifest: Blob,
    layers: Vec<Blob>,
    total: u64,
}

fn make_layer(blobs: &Path, seed: u64, size: u64) -> Res<(Blob, String)> {
    let tmp = blobs.join(format!("tmp-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
    let gz = GzEncoder::new(HashWriter::new(File::create(&tmp)?), Compression::fast());
    let mut tar = tar::Builder::new(HashWriter::new(gz));
    let mut h = tar::Header::new_ustar();
    h.set_path("bench/data.bin")?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    tar.append(&h, Rng::new(seed).take(size))?;
    let (gz, diff_id, _) = tar.into_inner()?.finish();
    let (f, digest, n) = gz.finish()?.finish();
    f.sync_all()?;
    let path = blobs.join(&digest);
    fs::rename(&tmp, &path)?;
    Ok((Blob { digest: format!("sha256:{digest}"), size: n, path }, format!("sha256:{diff_id}")))
}

fn make_layout(dir: &Path, layers_mib: &[u64], seed: u64) -> Res<Layout> {
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs)?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    // Two cores: compress the layers in parallel.
    let results: Vec<Res<(Blob, String)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = layers_mib
            .iter()
            .enumerate()
            .map(|(i, &mib)| {
                let blobs = &blobs;
                sc.spawn(move || {
                    make_layer(blobs, seed.wrapping_add(i as u64 + 1), mib * MIB).map_err(|e| e.to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err("layer thread panicked".into()),
            })
            .collect()
    });
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for r in results {
        let (b, d) = r?;
        layers.push(b);
        diff_ids.push(d);
    }
    let config = write_bytes(&blobs, config_json(&diff_ids, seed).as_bytes())?;
    let manifest = write_bytes(&blobs, manifest_json(&config, &layers).as_bytes())?;
    let tag = format!("t{:x}", seed & 0xffff_ffff);
    fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
            manifest.digest, manifest.size
        ),
    )?;
    let total = layers.iter().map(|b| b.size).sum::<u64>() + config.size + manifest.size;
    Ok(Layout { dir: dir.into(), tag, manifest, layers, total })
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Clone, Copy)]
enum Cell {
    Val(f64),
    /// Not measured (server not selected, or not applicable).
    NA,
    Err,
}

struct Row {
    scenario: String,
    metric: &'static str,
    prec: usize,
    cells: [Cell; 3],
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn row(&mut self, scenario: impl Into<String>, metric: &'static str, prec: usize, cells: [Cell; 3]) {
        self.rows.push(Row { scenario: scenario.into(), metric, prec, cells });
    }

    fn note(&mut self, n: impl Into<String>) {
        let n = n.into();
        eprintln!("  note: {n}");
        self.notes.push(n);
    }

    fn markdown(&self) -> String {
        let fmt = |c: Cell, prec: usize| match c {
            Cell::Val(v) => format!("{v:.prec$}"),
            Cell::NA => "—".into(),
            Cell::Err => "error".into(),
        };
        let ratio = |a: Cell, b: Cell| match (a, b) {
            (Cell::Val(a), Cell::Val(b)) if b != 0.0 => format!("{:.2}×", a / b),
            _ => "—".into(),
        };
        let mut s = String::new();
        s.push_str(
            "| scenario | metric | wharfie | distribution | nginx | wharfie/nginx | wharfie/distribution |\n",
        );
        s.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n");
        for r in &self.rows {
            let [w, d, n] = r.cells;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.metric,
                fmt(w, r.prec),
                fmt(d, r.prec),
                fmt(n, r.prec),
                ratio(w, n),
                ratio(w, d)
            );
        }
        s
    }
}

/// A whole-number knob from the environment: `default` when unset, else 1..=`max`.
fn env_num(name: &str, default: u64, max: u64) -> Res<u64> {
    let n = match std::env::var(name) {
        Ok(s) => s.parse().map_err(|_| format!("{name}: not a number: {s:?}"))?,
        Err(_) => default,
    };
    if !(1..=max).contains(&n) {
        bail!("{name} must be 1..={max}");
    }
    Ok(n)
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 })
}

fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().max_by(f64::total_cmp)
}

fn min(v: &[f64]) -> Option<f64> {
    v.iter().copied().min_by(f64::total_cmp)
}

fn cell(v: Option<f64>, failed: bool) -> Cell {
    match (v, failed) {
        (Some(v), false) => Cell::Val(v),
        _ => Cell::Err,
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

struct Bench {
    cfg: Cfg,
    servers: Vec<Server>,
    clk_tck: f64,
    report: Report,
}

struct WrkOut {
    rps: f64,
    requests: u64,
    bad: String,
}

fn wrk(url: &str, conns: u32, secs: u64, accept_manifest: bool) -> Res<WrkOut> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{conns}"), &format!("-d{secs}s"), "--timeout", "5s"]);
    if accept_manifest {
        cmd.args(["-H", &format!("Accept: {OCI_MANIFEST}")]);
    }
    cmd.arg(url);
    let r = run_bounded(&mut cmd, Duration::from_secs(secs + 30))?;
    if !r.ok {
        bail!("wrk {url}: {}: {}", r.status, r.stderr.trim());
    }
    let mut rps = None;
    let mut requests = None;
    let mut bad = Vec::new();
    for l in r.stdout.lines().map(str::trim) {
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if l.contains(" requests in ") {
            requests = l.split_whitespace().next().and_then(|n| n.parse::<u64>().ok());
        } else if l.starts_with("Non-2xx") || l.starts_with("Socket errors") {
            bad.push(l.to_owned());
        }
    }
    match (rps, requests) {
        (Some(rps), Some(requests)) if requests > 0 => Ok(WrkOut { rps, requests, bad: bad.join("; ") }),
        _ => bail!("wrk {url}: no results in output:\n{}", r.stdout),
    }
}

/// `conns` keep-alive connections, one thread each, sending HEAD requests back to back for
/// `secs` (wrk cannot send HEAD: its parser waits for the body a HEAD response announces).
/// Every response must be a 200 with headers only; anything else is counted as bad.
fn head_load(url: &str, conns: u32, secs: u64, accept: Option<&str>) -> Res<WrkOut> {
    let (host, path) = wharfie_testkit::bench::host_and_path(url)?;
    let mut req = format!("HEAD {path} HTTP/1.1\r\nHost: {host}\r\n");
    if let Some(a) = accept {
        let _ = write!(req, "Accept: {a}\r\n");
    }
    req.push_str("\r\n");
    let req = std::sync::Arc::new(req.into_bytes());
    // wrk's shape: two client threads, each an event loop over its share of the
    // connections (a thread per connection costs both sides a wakeup per request).
    const THREADS: u32 = 2;
    let start = std::sync::Arc::new(std::sync::Barrier::new(THREADS as usize + 1));
    let mut threads = Vec::new();
    for t in 0..THREADS {
        let share = conns / THREADS + u32::from(t < conns % THREADS);
        let (req, start, host) = (req.clone(), start.clone(), host.to_owned());
        threads.push(std::thread::spawn(move || {
            head_thread(&host, &req, share, &start, secs).map_err(|e| e.to_string())
        }));
    }
    start.wait();
    let t0 = Instant::now();
    let (mut ok, mut bad, mut errors) = (0u64, 0u64, Vec::new());
    for t in threads {
        match t.join() {
            Ok(Ok((o, b))) => {
                ok += o;
                bad += b;
            }
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a client thread panicked".into()),
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    if !errors.is_empty() {
        bail!("HEAD {url}: {} of {THREADS} client threads failed: {}", errors.len(), errors[0]);
    }
    let mut notes = String::new();
    if bad > 0 {
        notes = format!("Non-2xx responses: {bad}");
    }
    match ok + bad {
        0 => bail!("HEAD {url}: no responses"),
        requests => Ok(WrkOut { rps: requests as f64 / wall, requests, bad: notes }),
    }
}

/// One client thread of [`head_load`]: a single-threaded event loop driving `conns`
/// keep-alive connections; (200 responses, other responses) summed over them.
fn head_thread(host: &str, req: &[u8], conns: u32, start: &std::sync::Barrier, secs: u64) -> Res<(u64, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
    // Every thread reaches the barrier, whatever failed, so a failure cannot hang it.
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            start.wait();
            return Err(e.into());
        }
    };
    rt.block_on(async {
        let mut socks = Vec::new();
        let mut failed = None;
        for _ in 0..conns {
            match tokio::net::TcpStream::connect(host).await.and_then(|s| s.set_nodelay(true).map(|()| s)) {
                Ok(s) => socks.push(s),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        start.wait();
        if let Some(e) = failed {
            return Err(e.into());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut set = tokio::task::JoinSet::new();
        for s in socks {
            let req = req.to_vec();
            set.spawn(async move { head_conn(s, &req, deadline).await.map_err(|e| e.to_string()) });
        }
        let (mut ok, mut bad) = (0u64, 0u64);
        while let Some(r) = set.join_next().await {
            let (o, b) = r.map_err(|e| e.to_string())??;
            ok += o;
            bad += b;
        }
        Ok((ok, bad))
    })
}

/// One connection of [`head_load`]: HEADs back to back until `deadline`; (200
/// responses, other responses). A response that does not come within 5 s fails it.
async fn head_conn(
    mut s: tokio::net::TcpStream,
    req: &[u8],
    deadline: tokio::time::Instant,
) -> Res<(u64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 4096];
    let (mut ok, mut bad) = (0u64, 0u64);
    while tokio::time::Instant::now() < deadline {
        s.write_all(req).await?;
        let mut n = 0;
        loop {
            let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf[n..])).await??;
            if got == 0 {
                bail!("connection closed after {ok} responses");
            }
            n += got;
            if buf[..n].ends_with(b"\r\n\r\n") {
                break;
            }
            if n == buf.len() {
                bail!("a HEAD response over {n} bytes");
            }
        }
        if buf.starts_with(b"HTTP/1.1 200 ") {
            ok += 1;
        } else {
            bad += 1;
        }
    }
    Ok((ok, bad))
}

impl Bench {
    fn check_alive(&mut self) {
        let mut dead = Vec::new();
        for s in &mut self.servers {
            if let Some(why) = s.exited() {
                dead.push(format!("{} {why}\n{}", s.kind.name(), s.log_tail()));
            }
        }
        for d in dead {
            self.report.note(d);
        }
    }

    fn rss(&mut self, after: &str) {
        let mut cells = [Cell::NA; 3];
        for s in &self.servers {
            let v = s.peak_rss();
            cells[s.kind.idx()] = if v == 0 { Cell::Err } else { Cell::Val(v as f64 / MIB as f64) };
        }
        self.report.row(format!("d. peak RSS after {after}"), "MiB ↓", 1, cells);
    }

    fn scenario_a(&mut self, content: &Seeded) {
        // (object, how it is named, path, manifest Accept): each by GET, then by HEAD.
        let urls = [
            ("manifest", " by tag", format!("/v2/{REPO}/manifests/latest"), true),
            ("manifest", " by digest", format!("/v2/{REPO}/manifests/{}", content.manifest.digest), true),
            ("4 KiB blob", "", format!("/v2/{REPO}/blobs/{}", content.small.digest), false),
        ];
        let tests: Vec<(String, String, bool, bool)> = [false, true]
            .into_iter()
            .flat_map(|head| {
                let method = if head { "HEAD" } else { "GET" };
                urls.iter().map(move |(what, by, path, accept)| {
                    (format!("{what} {method}{by}"), path.clone(), *accept, head)
                })
            })
            .collect();
        let secs = self.cfg.wrk_secs;
        eprintln!("[a] warm-up: {} s per URL and server", self.cfg.warmup_secs);
        for (name, path, accept, _) in tests.iter().filter(|t| !t.3) {
            for i in 0..self.servers.len() {
                let url = self.servers[i].url(path);
                if let Err(e) = wrk(&url, 8, self.cfg.warmup_secs, *accept) {
                    let k = self.servers[i].kind.name();
                    self.report.note(format!("a. warm-up {name} on {k}: {e}"));
                }
            }
        }
        let rounds = self.cfg.a_rounds;
        for (name, path, accept, head) in &tests {
            for conns in [8u32, 64] {
                // Each round runs every server once, so drift in the machine (this is a
                // 2-core VM whose throughput moves by tens of percent between runs) lands
                // on all of them alike; the row is each server's median round.
                let mut runs: [Vec<(f64, f64)>; 3] = Default::default();
                let mut failed = [false; 3];
                for round in 1..=rounds {
                    for i in 0..self.servers.len() {
                        let (kind, url) = (self.servers[i].kind, self.servers[i].url(path));
                        if failed[kind.idx()] {
                            continue;
                        }
                        eprintln!(
                            "[a] {name}, c={conns}, {} for {secs} s, round {round}/{rounds}",
                            kind.name()
                        );
                        let t0 = self.servers[i].cpu_ticks();
                        let r = if *head {
                            head_load(&url, conns, secs, accept.then_some(OCI_MANIFEST))
                        } else {
                            wrk(&url, conns, secs, *accept)
                        };
                        let t1 = self.servers[i].cpu_ticks();
                        match r {
                            Ok(w) => {
                                let cpu_us = (t1.saturating_sub(t0)) as f64 / self.clk_tck * 1e6;
                                runs[kind.idx()].push((w.rps, cpu_us / w.requests as f64));
                                if !w.bad.is_empty() {
                                    self.report.note(format!(
                                        "a. {name}, c={conns}, {}: {} (of {} requests)",
                                        kind.name(),
                                        w.bad,
                                        w.requests
                                    ));
                                }
                            }
                            Err(e) => {
                                failed[kind.idx()] = true;
                                self.report.note(format!("a. {name}, c={conns}, {}: {e}", kind.name()));
                            }
                        }
                    }
                }
                let mut rps = [Cell::NA; 3];
                let mut us = [Cell::NA; 3];
                for k in 0..3 {
                    if failed[k] {
                        rps[k] = Cell::Err;
                        us[k] = Cell::Err;
                    } else {
                        let mut r: Vec<f64> = runs[k].iter().map(|r| r.0).collect();
                        let mut c: Vec<f64> = runs[k].iter().map(|r| r.1).collect();
                        if let (Some(r), Some(c)) = (median(&mut r), median(&mut c)) {
                            rps[k] = Cell::Val(r);
                            us[k] = Cell::Val(c);
                        }
                    }
                }
                let client = if *head { "HEAD client" } else { "wrk -t2" };
                let of = if rounds > 1 { format!(", median of {rounds}") } else { String::new() };
                let sc = format!("a. {name}, {client} -c{conns} -d{secs}s{of}");
                self.report.row(sc.clone(), "req/s ↑", 0, rps);
                self.report.row(sc, "server CPU µs/req ↓", 1, us);
            }
        }
        self.check_alive();
        self.rss("a");
    }

    fn scenario_b(&mut self, big: &Blob) {
        let path = format!("/v2/{REPO}/blobs/{}", big.digest);
        let size_mib = big.size as f64 / MIB as f64;
        let (reps, rounds, streams) = (self.cfg.single_reps, self.cfg.concurrent_rounds, self.cfg.streams);
        let mut best = [Cell::NA; 3];
        let mut med = [Cell::NA; 3];
        let mut conc = [Cell::NA; 3];
        let mut cpu = [Cell::NA; 3];
        for i in 0..self.servers.len() {
            let (kind, url) = (self.servers[i].kind, self.servers[i].url(&path));
            eprintln!(
                "[b] {} MiB blob from {}: {reps} single, {rounds}×{streams} concurrent",
                size_mib,
                kind.name()
            );
            let t0 = self.servers[i].cpu_ticks();
            let mut sent = 0u64;
            let mut singles = Vec::new();
            let mut failed = false;
            for _ in 0..reps {
                match download(&url) {
                    Ok((n, t, 200)) if n == big.size && t > 0.0 => {
                        singles.push(n as f64 / MIB as f64 / t);
                        sent += n;
                    }
                    Ok((n, _, code)) => {
                        failed = true;
                        self.report
                            .note(format!("b. {}: single stream got HTTP {code}, {n} bytes", kind.name()));
                    }
                    Err(e) => {
                        failed = true;
                        self.report.note(format!("b. {}: single stream: {e}", kind.name()));
                    }
                }
            }
            let mut aggs = Vec::new();
            let mut cfailed = false;
            for _ in 0..rounds {
                let start = Instant::now();
                let children: Vec<_> = (0..streams)
                    .map(|_| {
                        curl_cmd()
                            .args([
                                "-o",
                                "/dev/null",
                                "-w",
                                "%{size_download} %{time_total} %{http_code}",
                                &url,
                            ])
                            .stdout(Stdio::piped())
                            .stderr(Stdio::piped())
                            .spawn()
                    })
                    .collect();
                let mut ok_bytes = 0u64;
                let mut round_ok = true;
                for c in children {
                    let r = c.map_err(Box::<dyn Error>::from).and_then(|c| Ok(c.wait_with_output()?));
                    match r.and_then(|o| parse_download(&o)) {
                        Ok((n, _, 200)) if n == big.size => ok_bytes += n,
                        Ok((n, _, code)) => {
                            round_ok = false;
                            self.report
                                .note(format!("b. {}: a stream got HTTP {code}, {n} bytes", kind.name()));
                        }
                        Err(e) => {
                            round_ok = false;
                            self.report.note(format!("b. {}: a stream: {e}", kind.name()));
                        }
                    }
                }
                let wall = start.elapsed().as_secs_f64();
                sent += ok_bytes;
                if round_ok {
                    aggs.push(ok_bytes as f64 / MIB as f64 / wall);
                } else {
                    cfailed = true;
                }
            }
            let t1 = self.servers[i].cpu_ticks();
            let k = kind.idx();
            best[k] = cell(max(&singles), failed);
            med[k] = cell(median(&mut singles), failed);
            conc[k] = cell(max(&aggs), cfailed);
            cpu[k] = if sent > 0 {
                Cell::Val(t1.saturating_sub(t0) as f64 / self.clk_tck / (sent as f64 / GIB))
            } else {
                Cell::Err
            };
        }
        let sc = format!("b. {size_mib:.0} MiB blob GET");
        self.report.row(format!("{sc}, 1 stream, best of {reps}"), "MiB/s ↑", 0, best);
        self.report.row(format!("{sc}, 1 stream, median of {reps}"), "MiB/s ↑", 0, med);
        self.report.row(format!("{sc}, {streams} streams, best of {rounds}"), "MiB/s aggregate ↑", 0, conc);
        self.report.row(format!("{sc}, all of the above"), "server CPU s/GiB ↓", 3, cpu);
        self.check_alive();
        self.rss("b");
    }

    fn scenario_c(&mut self, work: &Path) {
        let layers = self.cfg.push_layers_mib.clone();
        let reps = self.cfg.push_reps;
        let mut rates: [Vec<f64>; 3] = Default::default();
        let mut cpus: [Vec<f64>; 3] = Default::default();
        let mut failed = [false; 3];
        let mut total_mib = 0.0;
        for rep in 0..reps {
            let dir = work.join(format!("layout-{rep}"));
            let seed = run_seed().wrapping_add(rep as u64 * 1000);
            eprintln!("[c] building OCI layout {rep}: {layers:?} MiB layers, gzip");
            let t = Instant::now();
            let layout = match make_layout(&dir, &layers, seed) {
                Ok(l) => l,
                Err(e) => {
                    self.report.note(format!("c. building the OCI layout: {e}"));
                    failed = [true; 3];
                    break;
                }
            };
            total_mib = layout.total as f64 / MIB as f64;
            eprintln!("[c] built {total_mib:.1} MiB in {:.1} s", t.elapsed().as_secs_f64());
            let mut order: Vec<usize> =
                (0..self.servers.len()).filter(|&i| self.servers[i].kind.is_registry()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let kind = self.servers[i].kind;
                let k = kind.idx();
                let dest = format!(
                    "docker://{}/{PUSH_REPO}:{}",
                    self.servers[i].base.trim_start_matches("http://"),
                    layout.tag
                );
                let src = format!("oci:{}:{}", layout.dir.display(), layout.tag);
                eprintln!("[c] skopeo copy → {} ({total_mib:.1} MiB)", kind.name());
                let mut cmd = Command::new("skopeo");
                cmd.args([
                    "--insecure-policy",
                    "copy",
                    "--preserve-digests",
                    "--dest-tls-verify=false",
                    &src,
                    &dest,
                ]);
                let t0 = self.servers[i].cpu_ticks();
                let r = run_bounded(&mut cmd, Duration::from_secs(300));
                let t1 = self.servers[i].cpu_ticks();
                let r = match r {
                    Ok(r) if r.ok => r,
                    Ok(r) => {
                        failed[k] = true;
                        self.report.note(format!(
                            "c. push to {}: skopeo {}: {}",
                            kind.name(),
                            r.status,
                            r.stderr.trim()
                        ));
                        continue;
                    }
                    Err(e) => {
                        failed[k] = true;
                        self.report.note(format!("c. push to {}: {e}", kind.name()));
                        continue;
                    }
                };
                if let Err(e) = verify_push(&self.servers[i], &layout) {
                    failed[k] = true;
                    self.report.note(format!("c. push to {}: {e}", kind.name()));
                    continue;
                }
                rates[k].push(total_mib / r.secs);
                cpus[k].push(t1.saturating_sub(t0) as f64 / self.clk_tck / (layout.total as f64 / GIB));
            }
            if let Err(e) = fs::remove_dir_all(&dir) {
                self.report.note(format!("c. removing {}: {e}", dir.display()));
            }
        }
        let mut rate = [Cell::NA; 3];
        let mut cpu = [Cell::NA; 3];
        for s in &self.servers {
            let k = s.kind.idx();
            if s.kind.is_registry() {
                rate[k] = cell(max(&rates[k]), failed[k]);
                cpu[k] = cell(min(&cpus[k]), failed[k]);
            }
        }
        let l: Vec<String> = layers.iter().map(u64::to_string).collect();
        let sc =
            format!("c. skopeo push, {} MiB layers ({total_mib:.0} MiB gzip), best of {reps}", l.join("+"));
        self.report.row(sc.clone(), "MiB/s ↑", 0, rate);
        self.report.row(sc, "server CPU s/GiB ↓", 3, cpu);
        self.check_alive();
        self.rss("c");
    }
}

fn verify_push(s: &Server, layout: &Layout) -> Res<()> {
    verify_get(s, &format!("/v2/{PUSH_REPO}/manifests/{}", layout.tag), &layout.manifest, None)?;
    for b in &layout.layers {
        let r = http(&["-I"], &s.url(&format!("/v2/{PUSH_REPO}/blobs/{}", b.digest)))?;
        expect(&r, 200, &format!("HEAD {}", b.digest))?;
        let len = r.header("content-length").and_then(|v| v.parse::<u64>().ok());
        if len != Some(b.size) {
            bail!("HEAD {}: Content-Length {len:?}, wanted {}", b.digest, b.size);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Main

fn on_path(tool: &str) -> bool {
    if tool.starts_with('/') {
        return Path::new(tool).is_file();
    }
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).stdin(Stdio::null()).output() {
        Ok(o) => {
            let s = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&s).lines().next().unwrap_or("").trim().to_owned()
        }
        Err(e) => format!("({cmd}: {e})"),
    }
}

fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_owned();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("?".into(), |kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("nproc {}, CPU: {model}, RAM {mem}, Linux {}", first_line("nproc", &[]), kernel.trim())
}

/// The 1-minute load average.
fn loadavg() -> String {
    let s = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().next().unwrap_or("?").to_owned()
}

fn command_line() -> String {
    let mut vars: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("BENCH_") || k == "WHARFIE_BIN" || k == "RUST_LOG")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.sort();
    vars.push("cargo bench --bench compare".into());
    vars.join(" ")
}

fn real_main() -> Res<()> {
    let started = Instant::now();
    let load_before = loadavg();
    let cfg = Cfg::from_env()?;
    let mut tools: Vec<(&str, &str)> = vec![("curl", "curl")];
    if cfg.servers.contains(&Kind::Distribution) {
        tools.push(("/usr/bin/docker-registry", "docker-registry"));
    }
    if cfg.servers.contains(&Kind::Nginx) {
        tools.push(("nginx", "nginx"));
    }
    if cfg.has('a') {
        tools.push(("wrk", "wrk"));
    }
    if cfg.has('c') {
        tools.push(("skopeo", "skopeo"));
    }
    for (tool, pkg) in tools {
        if !on_path(tool) {
            bail!("{tool} not found: apt-get install -y {pkg}");
        }
    }
    let clk_tck: f64 =
        first_line("getconf", &["CLK_TCK"]).parse().map_err(|_| "getconf CLK_TCK did not print a number")?;

    let base = option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new().prefix("compare-").tempdir_in(&base)?;
    let work = tmp.path().to_path_buf();
    eprintln!("compare: working in {}", work.display());

    let mut servers = Vec::new();
    for &k in &cfg.servers {
        let dir = work.join(k.name());
        fs::create_dir_all(&dir)?;
        let s = match k {
            Kind::Wharfie => start_wharfie(&dir),
            Kind::Distribution => start_distribution(&dir),
            Kind::Nginx => start_nginx(&dir),
        }
        .map_err(|e| format!("starting {}: {e}", k.name()))?;
        eprintln!("compare: {} at {} (pid {})", k.name(), s.base, s.pid().unwrap_or(0));
        servers.push(s);
    }

    let big_size = cfg.has('b').then_some(cfg.big_size);
    eprintln!("compare: making content");
    let content = make_content(&work.join("content"), big_size)?;
    for s in &servers {
        eprintln!("compare: seeding {}", s.kind.name());
        seed_server(s, &content).map_err(|e| format!("seeding {}: {e}\n{}", s.kind.name(), s.log_tail()))?;
    }

    let mut bench = Bench { cfg, servers, clk_tck, report: Report::default() };
    bench.rss("seeding");
    if bench.cfg.has('a') {
        bench.scenario_a(&content);
    }
    if let Some(big) = &content.big {
        bench.scenario_b(big);
    }
    if bench.cfg.has('c') {
        bench.scenario_c(&work);
    }

    // Log volume hints at per-request logging.
    for s in &bench.servers {
        let n: u64 = ["stdout.log", "stderr.log", "error.log"]
            .iter()
            .filter_map(|f| fs::metadata(s.dir.join(f)).ok())
            .map(|m| m.len())
            .sum();
        if n > 64 * 1024 {
            bench.report.note(format!(
                "{} wrote {:.1} MiB of logs during the run",
                s.kind.name(),
                n as f64 / MIB as f64
            ));
        }
    }
    for s in &mut bench.servers {
        s.stop();
    }

    let mut out = String::new();
    let _ = writeln!(out, "\n## wharfie vs Distribution vs nginx\n");
    let _ = writeln!(out, "command: `{}`  ", command_line());
    let _ = writeln!(out, "machine: {}  ", machine());
    let _ = writeln!(
        out,
        "servers: wharfie {} ({}); {}; {}  ",
        first_line("git", &["-C", env!("CARGO_MANIFEST_DIR"), "describe", "--always", "--dirty"]),
        wharfie_bin().display(),
        first_line("/usr/bin/docker-registry", &["--version"]),
        first_line("nginx", &["-v"]),
    );
    let _ = writeln!(
        out,
        "clients: {}; {}; {}  ",
        first_line("wrk", &["--version"]),
        first_line("curl", &["--version"]),
        first_line("skopeo", &["--version"]),
    );
    let _ = writeln!(
        out,
        "mode: {}; CLK_TCK {clk_tck}; wall time {:.0} s; load average before {load_before}, after {}\n",
        if bench.cfg.quick { "BENCH_QUICK (smoke run, not for comparison)" } else { "full" },
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    out.push_str(&bench.report.markdown());
    if !bench.report.notes.is_empty() {
        out.push_str("\nnotes:\n");
        for n in &bench.report.notes {
            let _ = writeln!(out, "- {}", n.trim_end().replace('\n', "\n  "));
        }
    }
    println!("{out}");
    if bench.cfg.keep {
        drop(bench);
        let kept = tmp.keep();
        eprintln!("compare: kept {}", kept.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: error: {e}");
            ExitCode::FAILURE
        }
    }
}
