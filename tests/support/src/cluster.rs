//! The test's own hosts for tests/cluster.rs and benches/cluster.rs: network namespaces
//! joined by veth pairs to a bridge in a "switch" namespace, the processes that run in
//! them (`ip netns exec NS …`: docker-registry, wharfie nodes, HAProxy, curl clients), and
//! what the checks read (the upstream's access log, the nodes' /metrics, HAProxy's stats).
//!
//! Addresses are 198.18.0.0/24 (the benchmarking range) on the test's own bridge; nothing
//! is routed out of the namespaces this module makes. Names are `whc<pid>x<k>-<host>`, so
//! parallel topologies never clash; a topology of a crashed run (its pid gone) is removed
//! by prefix when the next one starts. Drop kills every process (SIGKILL, also PDEATHSIG if
//! the test dies) before it deletes the namespaces.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::common::{hex_lower, sha256};

pub const SUBNET: &str = "198.18.0";
pub const MIB: u64 = 1 << 20;
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The shipped HAProxy configuration; its example servers are node1..3 at .11-.13.
pub const HAPROXY_CFG: &str = include_str!("../../../packaging/haproxy/wharfie-cluster.cfg");

const PREFIX: &str = "whc";

pub use crate::common::require as tool;

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    run_ok(Command::new(tool("ip", "iproute2")).args(args))
}

/// Namespaces of earlier runs whose process is gone.
fn remove_stale() {
    let Ok(out) = Command::new(tool("ip", "iproute2")).args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let alive = pid.parse::<u32>().is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !pid.is_empty() && !alive {
            kill_in_netns(name);
            let _ = Command::new(tool("ip", "iproute2")).args(["netns", "del", name]).status();
        }
    }
}

/// SIGKILL whatever still runs inside a namespace (`ip netns pids`).
fn kill_in_netns(ns: &str) {
    let Ok(out) = Command::new(tool("ip", "iproute2")).args(["netns", "pids", ns]).output() else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(p) = pid.parse::<i32>() {
            // SAFETY: kill(2) on a pid that `ip netns pids` just listed.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
    }
}

/// One host: a namespace with `eth0` on the bridge.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: String,
}

/// A process in a namespace; its stdout and stderr go to files.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub host: String,
}

impl Proc {
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub struct Topology {
    pub name: String,
    switch: String,
    pub hosts: Vec<Host>,
    procs: Vec<Option<Proc>>,
    pub tmp: tempfile::TempDir,
}

pub type ProcId = usize;

impl Topology {
    /// A switch and one host per `(name, last address octet)`.
    pub fn new(hosts: &[(&str, u8)]) -> Topology {
        static K: AtomicUsize = AtomicUsize::new(0);
        remove_stale();
        let name = format!("{PREFIX}{}x{}", std::process::id(), K.fetch_add(1, Ordering::Relaxed));
        let switch = format!("{name}-sw");
        let tmp = tempfile::Builder::new().prefix("wharfie-cluster").tempdir().expect("tempdir");
        let mut t =
            Topology { name: name.clone(), switch: switch.clone(), hosts: vec![], procs: vec![], tmp };
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        ip(&["-n", &switch, "link", "set", "lo", "up"]);
        for (i, (h, octet)) in hosts.iter().enumerate() {
            let ns = format!("{name}-{h}");
            ip(&["netns", "add", &ns]);
            t.hosts.push(Host { name: (*h).to_owned(), ns: ns.clone(), ip: format!("{SUBNET}.{octet}") });
            let port = format!("p{i}");
            ip(&[
                "link", "add", "name", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
                &switch,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{SUBNET}.{octet}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        t
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no host {name}"))
    }

    pub fn ip(&self, name: &str) -> String {
        self.host(name).ip.clone()
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn cmd(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(tool("ip", "iproute2"));
        c.args(["netns", "exec", &self.host(host).ns]).arg(program).stdin(Stdio::null());
        c
    }

    /// curl in `host`, quiet, no proxy, bounded.
    pub fn curl(&self, host: &str, max_secs: u32) -> Command {
        let mut c = self.cmd(host, tool("curl", "curl"));
        c.args(["-sS", "--noproxy", "*", "--max-time", &max_secs.to_string()]);
        c
    }

    /// Spawn a long-running process (killed on drop, or when the test dies).
    pub fn spawn(&mut self, host: &str, mut cmd: Command, label: &str) -> ProcId {
        let log = self.tmp.path().join(format!("{label}.log"));
        let f = File::create(&log).expect("log file");
        cmd.stdout(f.try_clone().expect("dup")).stderr(f);
        // `ip netns exec` execs the program, which keeps the death signal.
        crate::bench::die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        self.procs.push(Some(Proc { child, log, host: host.to_owned() }));
        self.procs.len() - 1
    }

    pub fn proc(&self, id: ProcId) -> &Proc {
        self.procs[id].as_ref().expect("process still known")
    }

    /// SIGKILL one process and reap it.
    pub fn kill(&mut self, id: ProcId) {
        if let Some(mut p) = self.procs[id].take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Cap `host`'s outgoing bandwidth (tc tbf on its eth0), e.g. "400mbit".
    pub fn limit(&self, host: &str, rate: &str) {
        ip(&[
            "netns",
            "exec",
            &self.host(host).ns,
            "tc",
            "qdisc",
            "replace",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "512k",
            "latency",
            "100ms",
        ]);
    }

    /// Cut `host`'s link (its eth0 goes down).
    pub fn cut(&self, host: &str) {
        ip(&["-n", &self.host(host).ns, "link", "set", "eth0", "down"]);
    }

    /// GET `url` from `host` until it answers 200 (bounded).
    pub fn wait_200(&self, host: &str, url: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let out = self.curl(host, 2).args(["-o", "/dev/null", "-w", "%{http_code}", url]).output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == "200") {
                return;
            }
            assert!(Instant::now() < deadline, "{url} did not answer 200 from {host} within {secs} s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A small GET from `host`: (status, body).
    pub fn get(&self, host: &str, url: &str, extra: &[&str]) -> (u16, String) {
        let out = self.curl(host, 60).args(extra).args(["-w", "\n%{http_code}", url]).output().expect("curl");
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = s.rsplit_once('\n').unwrap_or(("", &s));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    // -----------------------------------------------------------------------------------
    // The servers
    // -----------------------------------------------------------------------------------

    /// docker-registry on `host`:5000, access log on (stdout), filesystem storage.
    pub fn registry(&mut self, host: &str) -> ProcId {
        let dir = self.tmp.path().join(format!("{host}-registry"));
        fs::create_dir_all(dir.join("storage")).expect("mkdir");
        let cfg = dir.join("config.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 0.0.0.0:5000\n  secret: wharfie-cluster-test\n",
                dir.join("storage").display()
            ),
        )
        .expect("registry config");
        let mut c = self.cmd(host, tool("docker-registry", "docker-registry"));
        c.arg("serve").arg(&cfg);
        let id = self.spawn(host, c, &format!("{host}-registry"));
        self.wait_200(host, "http://127.0.0.1:5000/v2/", 60);
        id
    }

    /// A wharfie node on `host`:5000; `extra` is appended to its configuration.
    pub fn wharfie(&mut self, host: &str, extra: &str) -> ProcId {
        let dir = self.data_dir(host);
        fs::create_dir_all(&dir).expect("mkdir");
        let cfg = self.tmp.path().join(format!("{host}-wharfie.toml"));
        fs::write(
            &cfg,
            format!(
                "listen = \"0.0.0.0:5000\"\ndata_dir = \"{}\"\n[gc]\ninterval = \"0s\"\n{extra}",
                dir.display()
            ),
        )
        .expect("wharfie config");
        let mut c = self.cmd(host, wharfie_bin());
        c.arg("serve").arg("--config").arg(&cfg).env("RUST_LOG", "warn");
        let id = self.spawn(host, c, &format!("{host}-wharfie"));
        self.wait_200(host, "http://127.0.0.1:5000/readyz", 60);
        id
    }

    pub fn data_dir(&self, host: &str) -> PathBuf {
        self.tmp.path().join(format!("{host}-data"))
    }

    /// Whether `host`'s wharfie stores a blob file for `digest`.
    pub fn stores(&self, host: &str, digest: &str) -> bool {
        let hex = digest.trim_start_matches("sha256:");
        self.data_dir(host).join("blobs/sha256").join(&hex[..2]).join(hex).exists()
    }

    /// HAProxy on `host` with `cfg` (`-db`: foreground), once every server is UP.
    pub fn haproxy(&mut self, host: &str, cfg: &str, servers: usize) -> ProcId {
        let path = self.tmp.path().join("haproxy.cfg");
        fs::write(&path, cfg).expect("haproxy config");
        let mut c = self.cmd(host, tool("haproxy", "haproxy"));
        c.arg("-db").arg("-f").arg(&path);
        let id = self.spawn(host, c, "haproxy");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up =
                self.haproxy_stats(host).iter().filter(|r| r.server != "BACKEND" && r.status == "UP").count();
            if up >= servers {
                return id;
            }
            if let Some(p) = self.procs[id].as_mut() {
                if let Ok(Some(st)) = p.child.try_wait() {
                    panic!("HAProxy exited ({st}):\n{}", p.log_text());
                }
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy did not see {servers} servers UP within 30 s:\n{}",
                self.proc(id).log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// HAProxy's per-server rows (from the stats page on its loopback).
    pub fn haproxy_stats(&self, host: &str) -> Vec<StatRow> {
        let (code, body) = self.get(host, "http://127.0.0.1:8404/stats;csv", &[]);
        if code != 200 {
            return vec![];
        }
        let mut rows = vec![];
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() > 17 {
                rows.push(StatRow {
                    backend: f[0].to_owned(),
                    server: f[1].to_owned(),
                    bytes_out: f[9].parse().unwrap_or(0),
                    status: f[17].to_owned(),
                });
            }
        }
        rows
    }

    /// Whether HAProxy sees `server` as `status` (UP, DOWN, …) in every backend.
    pub fn server_is(&self, lb: &str, server: &str, status: &str) -> bool {
        let rows: Vec<StatRow> = self.haproxy_stats(lb).into_iter().filter(|r| r.server == server).collect();
        !rows.is_empty() && rows.iter().all(|r| r.status.starts_with(status))
    }

    /// The sum of a counter on `host`'s wharfie /metrics, over the lines that contain every `needle`.
    pub fn metric(&self, from: &str, host: &str, name: &str, needles: &[&str]) -> u64 {
        let (_, body) = self.get(from, &format!("http://{}:5000/metrics", self.ip(host)), &[]);
        let mut sum = 0.0;
        for l in body.lines().filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n))) {
            sum += l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        }
        sum as u64
    }

    /// Response bytes a node has sent so far (all routes).
    pub fn bytes_served(&self, from: &str, host: &str) -> u64 {
        self.metric(from, host, "wharfie_http_response_bytes_total", &[])
    }

    // -----------------------------------------------------------------------------------
    // Seeding the upstream (curl inside its own namespace, against its loopback)
    // -----------------------------------------------------------------------------------

    /// Upload `file` as a blob of `repo` to the registry on `host`; its digest.
    pub fn seed_blob(&self, host: &str, repo: &str, file: &Path, digest: &str) {
        let base = "http://127.0.0.1:5000";
        let out = self
            .curl(host, 300)
            .args(["-o", "/dev/null", "-D", "-", "-X", "POST", &format!("{base}/v2/{repo}/blobs/uploads/")])
            .output()
            .expect("curl");
        let head = String::from_utf8_lossy(&out.stdout).to_string();
        let loc = crate::bench::location(&head, base).unwrap_or_else(|| panic!("no Location in {head}"));
        let sep = if loc.contains('?') { '&' } else { '?' };
        let code = self.put(
            host,
            300,
            "application/octet-stream",
            ["-T", &file.display().to_string()],
            &format!("{loc}{sep}digest={digest}"),
        );
        assert_eq!(code, "201", "seeding {repo} {digest}");
    }

    /// PUT a manifest (bytes in a file) under `reference`, from `host` to `base`.
    pub fn put_manifest(&self, host: &str, base: &str, repo: &str, reference: &str, file: &Path) -> String {
        let body = format!("@{}", file.display());
        self.put(
            host,
            60,
            OCI_MANIFEST,
            ["--data-binary", &body],
            &format!("{base}/v2/{repo}/manifests/{reference}"),
        )
    }

    /// `curl -X PUT` from `host` (`secs` at most) of the body `body` (curl's option and
    /// its value) as `content_type` to `url`; the status code.
    fn put(&self, host: &str, secs: u32, content_type: &str, body: [&str; 2], url: &str) -> String {
        let out = self
            .curl(host, secs)
            .args(["-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H"])
            .arg(format!("Content-Type: {content_type}"))
            .args(body)
            .arg(url)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Upstream requests in `host`'s docker-registry access log: (GETs, HEADs) whose
    /// request line contains `needle`. Settles first: the log line is written when the
    /// response ends.
    pub fn upstream_count(&self, reg: ProcId, needle: &str) -> (usize, usize) {
        let count = || crate::bench::access_log_count(&self.proc(reg).log_text(), needle);
        let mut last = count();
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(300));
            let now = count();
            if now == last {
                break;
            }
            last = now;
        }
        last
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            if let Some(mut p) = p.take() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        let all: Vec<String> =
            self.hosts.iter().map(|h| h.ns.clone()).chain(std::iter::once(self.switch.clone())).collect();
        for ns in &all {
            kill_in_netns(ns);
            let _ = Command::new(tool("ip", "iproute2")).args(["netns", "del", ns]).status();
        }
    }
}

#[derive(Debug, Clone)]
pub struct StatRow {
    pub backend: String,
    pub server: String,
    pub bytes_out: u64,
    pub status: String,
}

pub use crate::bench::wharfie_bin;

// ---------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------

/// `len` pseudo-random bytes (xorshift, seeded) written to `path`; returns the digest.
pub fn make_blob(path: &Path, len: u64, seed: u64) -> String {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(path).expect("blob file"));
    let mut h = Sha256::new();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for c in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).expect("write blob");
        left -= n as u64;
    }
    f.flush().expect("flush");
    format!("sha256:{}", hex_lower(&h.finalize()))
}

/// An image in the upstream: its layers' digests and sizes, its config, its manifest.
pub struct Image {
    pub repo: String,
    pub tag: String,
    pub layers: Vec<(String, u64)>,
    pub config: String,
    pub manifest: String,
}

/// Seed `repo:tag` with `n` layers of `size` bytes each (plus a config and a manifest)
/// into the registry on `host`.
pub fn seed_image(t: &Topology, host: &str, repo: &str, tag: &str, n: usize, size: u64, seed: u64) -> Image {
    let dir = t.tmp.path().join(format!("img-{}", repo.replace('/', "_")));
    fs::create_dir_all(&dir).expect("mkdir");
    let mut layers = vec![];
    for i in 0..n {
        let p = dir.join(format!("layer{i}"));
        let d = make_blob(&p, size, seed * 1000 + i as u64);
        t.seed_blob(host, repo, &p, &d);
        layers.push((d, size));
    }
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        layers.iter().map(|(d, _)| format!("\"{d}\"")).collect::<Vec<_>>().join(",")
    );
    let cp = dir.join("config");
    fs::write(&cp, &config).expect("config");
    let config_digest = sha256(config.as_bytes());
    t.seed_blob(host, repo, &cp, &config_digest);
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"config\":{{\"mediaType\":\"{OCI_CONFIG}\",\"digest\":\"{config_digest}\",\"size\":{}}},\"layers\":[{}]}}",
        config.len(),
        layers
            .iter()
            .map(|(d, s)| format!("{{\"mediaType\":\"{OCI_LAYER}\",\"digest\":\"{d}\",\"size\":{s}}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mp = dir.join("manifest");
    fs::write(&mp, &manifest).expect("manifest");
    let code = t.put_manifest(host, "http://127.0.0.1:5000", repo, tag, &mp);
    assert_eq!(code, "201", "seeding the manifest of {repo}:{tag}");
    Image {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        layers,
        config: config_digest,
        manifest: sha256(manifest.as_bytes()),
    }
}

/// One curl process's result per URL: (status, bytes, served-by node).
#[derive(Debug, Clone)]
pub struct Fetch {
    pub code: u16,
    pub size: u64,
    pub node: String,
}

/// `n` curl processes in `host`, started together, each GETting `urls` in order;
/// returns each process's per-URL results and the wall time.
pub fn parallel_pulls(
    t: &Topology,
    host: &str,
    urls: &[String],
    n: usize,
    max_secs: u32,
) -> (Vec<Vec<Fetch>>, f64) {
    let start = Instant::now();
    let mut kids = vec![];
    for _ in 0..n {
        let mut c = t.curl(host, max_secs);
        for u in urls {
            c.args(["-o", "/dev/null", "-w", "%{http_code} %{size_download} %header{x-wharfie-node}\\n", u]);
        }
        kids.push(c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn curl"));
    }
    let mut all = vec![];
    for k in kids {
        let out = k.wait_with_output().expect("curl");
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        all.push(
            s.lines()
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    Fetch {
                        code: f.first().and_then(|c| c.parse().ok()).unwrap_or(0),
                        size: f.get(1).and_then(|c| c.parse().ok()).unwrap_or(0),
                        node: f.get(2).map(|s| s.to_string()).unwrap_or_default(),
                    }
                })
                .collect(),
        );
    }
    (all, start.elapsed().as_secs_f64())
}
