//! Crash safety: SIGKILL the server while several clients push (monolithic and chunked
//! blobs of 0 B–8 MiB, manifests over them), restart it on the same data directory, and
//! check the commit protocol's promises:
//!
//! - every acknowledged (201) blob HEADs with its size and GETs bytes hashing to its digest;
//! - every acknowledged manifest GETs by tag and by digest with the exact pushed bytes;
//! - nothing partial is visible: a blob that was in flight is either absent or complete,
//!   every file under `blobs/` hashes to its own name, and no tagged manifest references
//!   a blob that is missing from its repository;
//! - staging left under `uploads/` belongs only to sessions that still exist (a crashed
//!   monolithic upload leaves none), and an interrupted chunked session resumes from the
//!   offset the server reports and commits.
//!
//! - mirror fills (a fake upstream, `tests/support/src/mirror/upstream.rs`) run beside the
//!   pushes: every fill a client received whole is served from the cache after the
//!   restart with the upstream failing every request (so it was durable, not refetched);
//! - no lease and no upload row survives: after the last graceful stop the metadata
//!   holds neither (a lease of a killed run never released by its owner would show).
//!
//! The kill moment is chosen by count (after K acknowledgements, K varying per cycle,
//! and once two uploads are provably half-sent), never by sleeping. Fifty kill/restart
//! cycles run, bounded by a deadline; between cycles the new content is verified (new
//! blob files hashed, new blobs fetched, every tag's graph walked), and every tenth
//! restart and the last verify everything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;
use wharfie_testkit::oci;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{bytes_of, sha256, Wharfie};
use mirror::upstream::FakeUpstream;
use oci::{with_query, Http, Resp};
use serde_json::Value;

/// The mirrored upstream's name (its path prefix).
const MIRROR_NAME: &str = "mirror.test";
/// Blobs new to the upstream each cycle, for the mirror clients to fill.
const FILLS_PER_CYCLE: usize = 12;

/// Kill/restart cycles (the test fails if the deadline cuts them short).
const CYCLES: usize = 50;
/// Concurrent pushing clients per cycle.
const WORKERS: usize = 6;
/// Clients pulling through the mirror per cycle.
const MIRROR_WORKERS: usize = 2;
/// Every this many restarts, verify everything rather than what is new.
const FULL_EVERY: usize = 10;
/// The kill/restart cycles (the final verification comes after).
const DEADLINE: Duration = Duration::from_secs(240);

/// Acknowledgements to wait for before cycle `cycle`'s kill: 8–40, varied so the kill
/// lands in different phases of the workload.
fn kill_after(cycle: usize) -> usize {
    8 + (mix(cycle as u64, 0x6B11, 3) % 33) as usize
}
/// How long one cycle may take to reach its kill condition.
const CYCLE_DEADLINE: Duration = Duration::from_secs(180);
/// A safety cap on one worker's jobs per cycle.
const MAX_JOBS_PER_WORKER: usize = 2_000;
/// Per-request limit of the suite's HTTP client.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const REPOS: &[&str] = &["crash/alpha", "crash/beta", "crash/deep/gamma/x"];
const MIB: usize = 1 << 20;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

// ---------------------------------------------------------------------------------
// The client is `oci::Http`: its transport errors are values (the server dies mid-request).

/// The session id: the last path segment of an upload `Location`.
fn session_id(loc: &str) -> String {
    let p = loc.split('?').next().unwrap_or(loc);
    p.rsplit('/').next().unwrap_or(p).to_owned()
}

// ---------------------------------------------------------------------------------
// Deterministic randomness.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut r = Rng(a.wrapping_mul(1_000_003) ^ b.wrapping_mul(7_919) ^ c.rotate_left(32));
    r.next()
}

/// Blob sizes from 0 B to 8 MiB, mostly small.
fn pick_size(r: &mut Rng) -> usize {
    match r.below(100) {
        0..=4 => 0,
        5..=39 => 1 + r.below(4096) as usize,
        40..=74 => 4096 + r.below((256 * 1024 - 4096) as u64) as usize,
        75..=91 => 256 * 1024 + r.below((768 * 1024) as u64) as usize,
        _ => MIB + r.below((7 * MIB + 1) as u64) as usize,
    }
}

/// Content that several clients push at once (the same blob concurrently, across repos).
const POOL_SIZES: [usize; 6] = [0, 1, 5_000, 300_000, 2 * MIB + 3, 8 * MIB];

/// A blob's content: regenerated from `(seed, len)` whenever needed, or literal bytes
/// (image configs).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Content {
    Seeded { seed: u64, len: usize },
    Literal(Arc<Vec<u8>>),
}

impl Content {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Content::Seeded { seed, len } => bytes_of(*len, *seed),
            Content::Literal(b) => b.to_vec(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Content::Seeded { len, .. } => *len,
            Content::Literal(b) => b.len(),
        }
    }
}

fn pick_content(r: &mut Rng, unique_seed: u64) -> Content {
    if r.below(100) < 12 {
        let k = r.below(POOL_SIZES.len() as u64) as usize;
        Content::Seeded { seed: 0xC0FF_EE00 + k as u64, len: POOL_SIZES[k] }
    } else {
        Content::Seeded { seed: unique_seed, len: pick_size(r) }
    }
}

// ---------------------------------------------------------------------------------
// What the clients did, across all cycles.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Interrupted while opening or PATCHing: the session must survive the crash.
    Patch,
    /// Interrupted during the final PUT: committed, resumable, or gone (never acked).
    Put,
}

#[derive(Clone, Debug)]
struct OpenSession {
    repo: String,
    loc: String,
    id: String,
    content: Content,
    digest: String,
    phase: Phase,
}

#[derive(Clone, Debug)]
struct ManifestPush {
    repo: String,
    tag: String,
    digest: String,
    bytes: Vec<u8>,
    acked: bool,
}

#[derive(Default)]
struct Ledger {
    /// Every blob a client tried to push: (repo, digest) → (content, acked).
    blobs: BTreeMap<(String, String), (Content, bool)>,
    manifests: Vec<ManifestPush>,
    /// Every session id the client learnt (id → repo).
    sessions: BTreeMap<String, String>,
    /// Chunked uploads cut by a kill, to resume after the restart.
    interrupted: Vec<OpenSession>,
    /// Failures seen while the server was up (each: what, expected, got).
    errors: Vec<String>,
    /// Blobs attempted since the last verification.
    touched: BTreeSet<(String, String)>,
    /// Manifests before this index were verified already.
    manifests_verified: usize,
    /// Blob files already hashed (immutable once committed).
    hashed: BTreeSet<PathBuf>,
    /// Mirror fills a client received whole: (digest, length).
    fills: BTreeMap<String, usize>,
    /// Mirror fills tried (whole or not).
    fill_attempts: usize,
}

impl Ledger {
    fn attempt_blob(&mut self, repo: &str, digest: &str, content: &Content) {
        self.touched.insert((repo.to_owned(), digest.to_owned()));
        self.blobs.entry((repo.to_owned(), digest.to_owned())).or_insert((content.clone(), false));
    }

    fn ack_blob(&mut self, repo: &str, digest: &str, content: &Content) {
        self.touched.insert((repo.to_owned(), digest.to_owned()));
        self.blobs.insert((repo.to_owned(), digest.to_owned()), (content.clone(), true));
    }

    fn acked_in(&self, repo: &str) -> Vec<(String, Content)> {
        self.blobs
            .iter()
            .filter(|((r, _), (_, acked))| r == repo && *acked)
            .map(|((_, d), (c, _))| (d.clone(), c.clone()))
            .collect()
    }

    fn acked_blobs(&self) -> usize {
        self.blobs.values().filter(|(_, a)| *a).count()
    }

    fn acked_manifests(&self) -> usize {
        self.manifests.iter().filter(|m| m.acked).count()
    }
}

/// Counts acknowledgements in the current cycle; the main thread waits on it.
#[derive(Default)]
struct AckCounter {
    n: Mutex<usize>,
    cv: Condvar,
}

impl AckCounter {
    fn bump(&self) {
        *self.n.lock().unwrap() += 1;
        self.cv.notify_all();
    }

    fn get(&self) -> usize {
        *self.n.lock().unwrap()
    }

    /// Wait until at least `k` acks or `until`; returns the count.
    fn wait_for(&self, k: usize, until: Instant) -> usize {
        let mut g = self.n.lock().unwrap();
        while *g < k {
            let now = Instant::now();
            if now >= until {
                break;
            }
            g = self.cv.wait_timeout(g, until - now).unwrap().0;
        }
        *g
    }
}

// ---------------------------------------------------------------------------------
// The pushing clients.

/// How one step ended.
enum Step<T> {
    Ok(T),
    /// The server answered something unexpected (recorded); go on with the next job.
    Failed,
    /// The transport broke: after the kill this is the end of this worker.
    Dead,
}

struct Worker {
    http: Http,
    ledger: Arc<Mutex<Ledger>>,
    acks: Arc<AckCounter>,
    killed: Arc<AtomicBool>,
    cycle: usize,
    id: usize,
}

impl Worker {
    fn send(&self, rb: reqwest::blocking::RequestBuilder, what: &str) -> Step<Resp> {
        match self.http.send(rb) {
            Ok(r) => Step::Ok(r),
            Err(e) => {
                if !self.killed.load(Ordering::SeqCst) {
                    self.fail(format!("{what}: transport error while the server was up: {e}"));
                }
                Step::Dead
            }
        }
    }

    fn fail(&self, msg: String) {
        self.ledger.lock().unwrap().errors.push(format!("[cycle {} worker {}] {msg}", self.cycle, self.id));
    }

    fn expect(&self, r: &Resp, status: u16, what: &str) -> bool {
        if r.status == status {
            true
        } else {
            self.fail(format!("{what}: expected {status}, got {}", r.describe()));
            false
        }
    }

    fn run(&self) {
        let mut rng = Rng(mix(self.cycle as u64, self.id as u64, 0xA11CE));
        for n in 0..MAX_JOBS_PER_WORKER {
            if self.killed.load(Ordering::SeqCst) {
                return;
            }
            let repo = *rng.pick(REPOS);
            let unique = mix(self.cycle as u64 + 1, self.id as u64 + 1, n as u64 + 1);
            let step = match rng.below(100) {
                0..=34 => {
                    let c = pick_content(&mut rng, unique);
                    self.push_monolithic(repo, &c).map(|_| ())
                }
                35..=69 => {
                    let c = pick_content(&mut rng, unique);
                    self.push_chunked(repo, &c, &mut rng).map(|_| ())
                }
                _ => self.push_image(repo, &format!("c{}-w{}-{n}", self.cycle, self.id), &mut rng, unique),
            };
            if let Step::Dead = step {
                return;
            }
        }
    }

    fn push_monolithic(&self, repo: &str, c: &Content) -> Step<String> {
        let data = c.bytes();
        let d = sha256(&data);
        self.ledger.lock().unwrap().attempt_blob(repo, &d, c);
        let rb = self
            .http
            .req("POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"))
            .header("Content-Type", "application/octet-stream")
            .body(data);
        let what = format!("monolithic POST {repo} {d} ({} B)", c.len());
        let Step::Ok(r) = self.send(rb, &what) else { return Step::Dead };
        if !self.expect(&r, 201, &what) {
            return Step::Failed;
        }
        self.ledger.lock().unwrap().ack_blob(repo, &d, c);
        self.acks.bump();
        Step::Ok(d)
    }

    fn push_chunked(&self, repo: &str, c: &Content, rng: &mut Rng) -> Step<String> {
        let data = c.bytes();
        let d = sha256(&data);
        self.ledger.lock().unwrap().attempt_blob(repo, &d, c);
        let what = format!("chunked upload {repo} {d} ({} B)", c.len());
        let Step::Ok(r) = self.send(self.http.req("POST", &format!("/v2/{repo}/blobs/uploads/")), &what)
        else {
            return Step::Dead;
        };
        if !self.expect(&r, 202, &format!("{what}: POST")) {
            return Step::Failed;
        }
        let Some(loc) = r.h("Location").map(|l| self.http.path_of(l)) else {
            self.fail(format!("{what}: 202 without Location: {}", r.describe()));
            return Step::Failed;
        };
        let mut open = OpenSession {
            repo: repo.to_owned(),
            loc: loc.clone(),
            id: session_id(&loc),
            content: c.clone(),
            digest: d.clone(),
            phase: Phase::Patch,
        };
        self.ledger.lock().unwrap().sessions.insert(open.id.clone(), repo.to_owned());
        let dead = |open: &OpenSession| {
            self.ledger.lock().unwrap().interrupted.push(open.clone());
            Step::Dead
        };

        let chunk = *rng.pick(&[64 * 1024, 256 * 1024, MIB, 3 * MIB]);
        let with_range = rng.below(4) != 0;
        // Keep the last piece for the PUT half of the time.
        let last_in_put = rng.below(2) == 0 && !data.is_empty();
        let patch_end = if last_in_put { data.len() - (data.len() - 1) % chunk - 1 } else { data.len() };
        let mut off = 0;
        while off < patch_end {
            let end = (off + chunk).min(patch_end);
            let mut rb = self
                .http
                .req("PATCH", &loc)
                .header("Content-Type", "application/octet-stream")
                .body(data[off..end].to_vec());
            if with_range {
                rb = rb.header("Content-Range", format!("{off}-{}", end - 1));
            }
            let Step::Ok(r) = self.send(rb, &what) else { return dead(&open) };
            if !self.expect(&r, 202, &format!("{what}: PATCH {off}-{}", end - 1)) {
                return Step::Failed;
            }
            off = end;
        }
        open.phase = Phase::Put;
        let mut rb = self.http.req("PUT", &with_query(&loc, &format!("digest={d}")));
        if off < data.len() {
            rb = rb
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{off}-{}", data.len() - 1))
                .body(data[off..].to_vec());
        }
        let Step::Ok(r) = self.send(rb, &what) else { return dead(&open) };
        if !self.expect(&r, 201, &format!("{what}: PUT")) {
            return Step::Failed;
        }
        self.ledger.lock().unwrap().ack_blob(repo, &d, c);
        self.acks.bump();
        Step::Ok(d)
    }

    /// A config and 1–3 layers (new, or already acknowledged in this repo), then a
    /// manifest under a tag no one else uses.
    fn push_image(&self, repo: &str, tag: &str, rng: &mut Rng, unique: u64) -> Step<()> {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"tag":"{tag}"}}"#
        )
        .into_bytes();
        let cd = match self.push_monolithic(repo, &Content::Literal(Arc::new(config.clone()))) {
            Step::Ok(d) => d,
            Step::Failed => return Step::Failed,
            Step::Dead => return Step::Dead,
        };
        let mut layers = Vec::new();
        for i in 0..(1 + rng.below(3)) {
            let reuse = if rng.below(100) < 30 {
                let have = self.ledger.lock().unwrap().acked_in(repo);
                (!have.is_empty()).then(|| have[rng.below(have.len() as u64) as usize].clone())
            } else {
                None
            };
            let (d, c) = match reuse {
                Some(x) => x,
                None => {
                    let c = pick_content(rng, unique ^ (0x1000 + i));
                    let step = if rng.below(2) == 0 {
                        self.push_monolithic(repo, &c)
                    } else {
                        self.push_chunked(repo, &c, rng)
                    };
                    match step {
                        Step::Ok(d) => (d, c),
                        Step::Failed => return Step::Failed,
                        Step::Dead => return Step::Dead,
                    }
                }
            };
            layers.push(serde_json::json!({"mediaType": OCI_LAYER, "digest": d, "size": c.len()}));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": config.len()},
            "layers": layers,
        }))
        .expect("json");
        let md = sha256(&manifest);
        let idx = {
            let mut l = self.ledger.lock().unwrap();
            l.manifests.push(ManifestPush {
                repo: repo.to_owned(),
                tag: tag.to_owned(),
                digest: md.clone(),
                bytes: manifest.clone(),
                acked: false,
            });
            l.manifests.len() - 1
        };
        let rb = self
            .http
            .req("PUT", &format!("/v2/{repo}/manifests/{tag}"))
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest);
        let what = format!("manifest PUT {repo}:{tag} {md}");
        let Step::Ok(r) = self.send(rb, &what) else { return Step::Dead };
        if !self.expect(&r, 201, &what) {
            return Step::Failed;
        }
        if r.h("Docker-Content-Digest") != Some(md.as_str()) {
            self.fail(format!("{what}: Docker-Content-Digest: expected {md}, got {}", r.describe()));
        }
        self.ledger.lock().unwrap().manifests[idx].acked = true;
        self.acks.bump();
        Step::Ok(())
    }
}

/// A client pulling blobs through the mirror; a pull received whole is recorded.
struct MirrorWorker {
    http: Http,
    ledger: Arc<Mutex<Ledger>>,
    killed: Arc<AtomicBool>,
    pool: Arc<Vec<(String, usize)>>,
    cycle: usize,
    id: usize,
}

impl MirrorWorker {
    fn run(&self) {
        let mut rng = Rng(mix(self.cycle as u64, self.id as u64, 0xF111));
        for _ in 0..MAX_JOBS_PER_WORKER {
            if self.killed.load(Ordering::SeqCst) {
                return;
            }
            let (d, len) = self.pool[rng.below(self.pool.len() as u64) as usize].clone();
            self.ledger.lock().unwrap().fill_attempts += 1;
            let path = format!("/v2/{MIRROR_NAME}/library/cache/blobs/{d}");
            match self.http.send(self.http.req("GET", &path)) {
                Ok(r) if r.status == 200 && r.body.len() == len && sha256(&r.body) == d => {
                    self.ledger.lock().unwrap().fills.insert(d, len);
                }
                Ok(r) => {
                    if !self.killed.load(Ordering::SeqCst) {
                        self.ledger.lock().unwrap().errors.push(format!(
                            "[cycle {} mirror {}] GET {path}: expected 200 with {len} B, got {}",
                            self.cycle,
                            self.id,
                            r.describe()
                        ));
                    }
                }
                Err(e) => {
                    if !self.killed.load(Ordering::SeqCst) {
                        self.ledger.lock().unwrap().errors.push(format!(
                            "[cycle {} mirror {}] GET {path}: transport error while the server was up: {e}",
                            self.cycle, self.id
                        ));
                    }
                    return;
                }
            }
        }
    }
}

/// Cycle `cycle`'s new upstream blobs, 1 B – 4 MiB.
fn fill_pool(up: &FakeUpstream, cycle: usize) -> Vec<(String, usize)> {
    let mut r = Rng(mix(cycle as u64, 0xF00D, 7));
    (0..FILLS_PER_CYCLE)
        .map(|i| {
            let len = match r.below(10) {
                0..=4 => 1 + r.below(64 * 1024) as usize,
                5..=7 => 64 * 1024 + r.below(MIB as u64) as usize,
                _ => MIB + r.below(3 * MIB as u64) as usize,
            };
            let data = bytes_of(len, mix(cycle as u64, i as u64, 0xF11));
            (up.add_blob(data), len)
        })
        .collect()
}

impl<T> Step<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Step<U> {
        match self {
            Step::Ok(t) => Step::Ok(f(t)),
            Step::Failed => Step::Failed,
            Step::Dead => Step::Dead,
        }
    }
}

// ---------------------------------------------------------------------------------
// Uploads held half-sent over raw sockets at the kill moment.

/// Write a request head and the first `sent` bytes of `body` (announced in full by
/// `Content-Length`), and keep the socket open.
fn half_request(
    w: &Wharfie,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    sent: usize,
) -> TcpStream {
    let mut s = TcpStream::connect(&w.addr).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n", w.addr, body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(&body[..sent]).expect("write half a body");
    s.flush().expect("flush");
    s
}

fn staging_ids(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("uploads"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Length and first bytes of a staging area's data file, if any.
fn staging_peek(dir: &Path, id: &str, n: usize) -> Option<(u64, Vec<u8>)> {
    let p = dir.join("uploads").join(id).join("data");
    let len = std::fs::metadata(&p).ok()?.len();
    let mut f = std::fs::File::open(&p).ok()?;
    let mut buf = vec![0u8; n.min(len as usize)];
    f.read_exact(&mut buf).ok()?;
    Some((len, buf))
}

/// Poll a condition on the data directory (what the server wrote, which no response
/// tells us) until it holds or `limit` passes.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Stragglers {
    _sockets: Vec<TcpStream>,
    /// The crashed monolithic upload's staging id, when it was seen on disk.
    mono_staging: Option<String>,
}

/// A chunked session with one acknowledged chunk and a second chunk half-sent, and a
/// monolithic upload half-sent; returns once the server has streamed part of each body
/// into staging (or a bounded wait ran out, which is recorded as a failure).
fn start_stragglers(w: &Wharfie, http: &Http, ledger: &Mutex<Ledger>, cycle: usize) -> Stragglers {
    let repo = REPOS[cycle % REPOS.len()];
    let mut sockets = Vec::new();

    // 1. Session: POST, PATCH 1 MiB (acked), then 1 MiB of a 2 MiB PATCH.
    let c = Content::Seeded { seed: mix(cycle as u64, 991, 1), len: 3 * MIB };
    let data = c.bytes();
    let d = sha256(&data);
    let r = http.must(http.req("POST", &format!("/v2/{repo}/blobs/uploads/")), "straggler POST");
    assert_eq!(r.status, 202, "straggler session POST: {}", r.describe());
    let loc = http.path_of(r.h("Location").expect("Location"));
    let id = session_id(&loc);
    let r = http.must(
        http.req("PATCH", &loc).header("Content-Range", format!("0-{}", MIB - 1)).body(data[..MIB].to_vec()),
        "straggler PATCH",
    );
    assert_eq!(r.status, 202, "straggler first PATCH: {}", r.describe());
    sockets.push(half_request(
        w,
        "PATCH",
        &loc,
        &[
            ("Content-Type", "application/octet-stream".into()),
            ("Content-Range", format!("{MIB}-{}", 3 * MIB - 1)),
        ],
        &data[MIB..],
        MIB,
    ));
    {
        let mut l = ledger.lock().unwrap();
        l.attempt_blob(repo, &d, &c);
        l.sessions.insert(id.clone(), repo.to_owned());
        l.interrupted.push(OpenSession {
            repo: repo.to_owned(),
            loc: loc.clone(),
            id: id.clone(),
            content: c,
            digest: d,
            phase: Phase::Patch,
        });
    }

    // 2. Monolithic: 1.5 MiB of a 4 MiB POST ?digest=.
    let mc = Content::Seeded { seed: mix(cycle as u64, 992, 2), len: 4 * MIB };
    let mdata = mc.bytes();
    let md = sha256(&mdata);
    let before: BTreeSet<String> = staging_ids(&w.dir);
    sockets.push(half_request(
        w,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={md}"),
        &[("Content-Type", "application/octet-stream".into())],
        &mdata,
        3 * MIB / 2,
    ));
    ledger.lock().unwrap().attempt_blob(repo, &md, &mc);

    // The server streams bodies to staging: wait for part of each to land there.
    let session_grew = wait_until(Duration::from_secs(20), || {
        staging_peek(&w.dir, &id, 0).is_some_and(|(n, _)| n > MIB as u64)
    });
    if !session_grew {
        ledger.lock().unwrap().errors.push(format!(
            "[cycle {cycle}] a half-sent PATCH of session {id} did not reach its staging file within 20 s \
             (expected uploads/{id}/data > {MIB} B, got {:?})",
            staging_peek(&w.dir, &id, 0).map(|x| x.0)
        ));
    }
    let mut mono_staging = None;
    let found = wait_until(Duration::from_secs(20), || {
        let known = ledger.lock().unwrap().sessions.clone();
        for s in staging_ids(&w.dir) {
            if before.contains(&s) || known.contains_key(&s) {
                continue;
            }
            if staging_peek(&w.dir, &s, 64).is_some_and(|(n, head)| n >= 64 && head == mdata[..64]) {
                mono_staging = Some(s);
                return true;
            }
        }
        false
    });
    if !found {
        ledger.lock().unwrap().errors.push(format!(
            "[cycle {cycle}] a half-sent monolithic POST {md} did not appear in uploads/ within 20 s \
             (expected a staging data file starting with its bytes)"
        ));
    }
    Stragglers { _sockets: sockets, mono_staging }
}

// ---------------------------------------------------------------------------------
// Verification after a restart.

#[derive(Default, Debug)]
struct Counts {
    acked_blobs: usize,
    verified_blobs: usize,
    unacked_present: usize,
    unacked_absent: usize,
    acked_manifests: usize,
    verified_manifests: usize,
    blob_files: usize,
    tags_walked: usize,
    staging_at_restart: usize,
    live_unknown_sessions: usize,
    resumed: usize,
    acked_fills: usize,
    verified_fills: usize,
    committed_in_flight: usize,
    lost_in_put: usize,
    lost: usize,
}

fn hex_of_file(p: &Path) -> std::io::Result<String> {
    let data = std::fs::read(p)?;
    Ok(sha256(&data))
}

/// Every regular file under `blobs/`: its path, relative to the data dir.
fn blob_paths(dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let q = e.path();
            if q.is_dir() {
                walk(&q, out);
            } else {
                out.push(q);
            }
        }
    }
    let mut v = Vec::new();
    walk(&dir.join("blobs"), &mut v);
    v.sort();
    v
}

/// Check a blob in `repo` is either absent (404) or complete; `Ok(true)` when present.
fn check_blob(http: &Http, repo: &str, d: &str, len: usize, errors: &mut Vec<String>) -> bool {
    let path = format!("/v2/{repo}/blobs/{d}");
    let h = http.must(http.req("HEAD", &path), "HEAD blob");
    match h.status {
        404 => return false,
        200 => {}
        _ => {
            errors.push(format!("HEAD {path}: expected 200 or 404, got {}", h.describe()));
            return false;
        }
    }
    let cl = h.h("Content-Length").and_then(|v| v.parse::<usize>().ok());
    if cl != Some(len) {
        errors.push(format!("HEAD {path}: expected Content-Length {len}, got {}", h.describe()));
    }
    let g = http.must(http.req("GET", &path), "GET blob");
    if g.status != 200 {
        errors.push(format!("GET {path} after HEAD 200: expected 200, got {}", g.describe()));
    } else if g.body.len() != len || sha256(&g.body) != d {
        errors.push(format!(
            "GET {path}: expected {len} B hashing to {d}, got {} B hashing to {}",
            g.body.len(),
            sha256(&g.body)
        ));
    }
    true
}

/// Parse the status `Range: 0-<end>` of a session: the offsets it may denote (`0-0`
/// is ambiguous between 0 and 1 bytes).
fn range_end(r: &Resp) -> Option<u64> {
    let v = r.h("Range")?;
    let v = v.trim().strip_prefix("bytes=").unwrap_or(v.trim());
    let (a, b) = v.split_once('-')?;
    (a.trim() == "0").then_some(())?;
    b.trim().parse().ok()
}

enum Resumed {
    Committed,
    /// 404 for the session and for the blob: only legitimate for a PUT cut mid-commit.
    Gone,
    /// 404 for the session, the blob is there: the PUT committed before the kill.
    AlreadyCommitted,
}

/// Continue an interrupted chunked upload from the offset the server reports.
fn resume(http: &Http, s: &OpenSession, errors: &mut Vec<String>) -> Resumed {
    let what = format!(
        "resume session {} ({} {}, {} B, cut in {:?})",
        s.id,
        s.repo,
        s.digest,
        s.content.len(),
        s.phase
    );
    let st = http.must(http.req("GET", &s.loc), &what);
    if st.status == 404 {
        let h = http.must(http.req("HEAD", &format!("/v2/{}/blobs/{}", s.repo, s.digest)), &what);
        return if h.status == 200 { Resumed::AlreadyCommitted } else { Resumed::Gone };
    }
    if st.status != 204 {
        errors.push(format!("{what}: GET status: expected 204 or 404, got {}", st.describe()));
        return Resumed::Gone;
    }
    let Some(end) = range_end(&st) else {
        errors.push(format!("{what}: GET status: expected Range 0-<n>, got {}", st.describe()));
        return Resumed::Gone;
    };
    let data = s.content.bytes();
    let mut off = end as usize + 1;
    if end == 0 && !data.is_empty() {
        // 0 or 1 byte: probe with the first byte (a wrong offset is a side-effect-free 416).
        let r = http
            .must(http.req("PATCH", &s.loc).header("Content-Range", "0-0").body(data[..1].to_vec()), &what);
        match r.status {
            202 | 416 => off = 1,
            _ => {
                errors.push(format!("{what}: probe PATCH 0-0: expected 202 or 416, got {}", r.describe()));
                return Resumed::Gone;
            }
        }
    } else if end == 0 {
        off = 0;
    }
    if off > data.len() {
        errors.push(format!(
            "{what}: the session reports {off} B but the client only ever sent {} B: {}",
            data.len(),
            st.describe()
        ));
        return Resumed::Gone;
    }
    if off < data.len() {
        let r = http.must(
            http.req("PATCH", &s.loc)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{off}-{}", data.len() - 1))
                .body(data[off..].to_vec()),
            &what,
        );
        if r.status != 202 {
            errors.push(format!(
                "{what}: PATCH {off}-{}: expected 202, got {}",
                data.len() - 1,
                r.describe()
            ));
            return Resumed::Gone;
        }
    }
    let r = http.must(http.req("PUT", &with_query(&s.loc, &format!("digest={}", s.digest))), &what);
    if r.status != 201 {
        errors.push(format!(
            "{what}: PUT after resuming at {off}: expected 201 (the staging must hold a prefix of the \
             client's bytes), got {}",
            r.describe()
        ));
        return Resumed::Gone;
    }
    Resumed::Committed
}

/// Everything the restarted server must show; returns the counts and the failures.
/// With `full`, everything; otherwise what changed since the last verification (new
/// blob files, blobs attempted since, new manifests) plus the whole tag graph.
fn verify(
    w: &Wharfie,
    ledger: &mut Ledger,
    crashed_mono: &[String],
    full: bool,
    up: &FakeUpstream,
) -> (Counts, Vec<String>) {
    let http = Http::new(&w.base, CLIENT_TIMEOUT);
    let mut errors = Vec::new();
    let mut c = Counts::default();

    // 1. Staging: only live sessions may keep a staging area.
    let staging = staging_ids(&w.dir);
    c.staging_at_restart = staging.len();
    let mut unknown_live = Vec::new();
    for id in &staging {
        let known_repo = ledger.sessions.get(id).cloned();
        let repos: Vec<String> = match &known_repo {
            Some(r) => vec![r.clone()],
            None => REPOS.iter().map(|r| r.to_string()).collect(),
        };
        let peek = staging_peek(&w.dir, id, 0);
        let mut live = false;
        for repo in &repos {
            let r = http.must(http.req("GET", &format!("/v2/{repo}/blobs/uploads/{id}")), "upload status");
            if r.status == 204 {
                live = true;
                if known_repo.is_none() {
                    unknown_live.push((repo.clone(), id.clone()));
                }
                break;
            }
        }
        if !live {
            errors.push(format!(
                "uploads/{id} survived the restart without a session (GET status in {repos:?}: expected 204 \
                 for one, got 404 for all){}",
                if crashed_mono.contains(id) {
                    " — it is the staging of a monolithic POST cut by the kill".to_owned()
                } else {
                    format!(
                        "; on disk at restart: {}; the client {}",
                        match &peek {
                            Some((n, _)) => format!("data file of {n} B"),
                            None => "no data file".to_owned(),
                        },
                        match ledger.interrupted.iter().find(|s| &s.id == id) {
                            Some(s) if s.phase == Phase::Put =>
                                "was cut during the final PUT ?digest= (the session was being committed)",
                            Some(_) => "was cut while opening or PATCHing the session",
                            None if known_repo.is_some() => "finished or abandoned this session",
                            None => "never learnt this id",
                        }
                    )
                }
            ));
        }
    }
    for id in crashed_mono {
        if staging.contains(id) && !errors.iter().any(|e| e.contains(id.as_str())) {
            errors.push(format!("uploads/{id} (a monolithic POST cut by the kill) survived the restart"));
        }
    }
    c.live_unknown_sessions = unknown_live.len();

    // 2. Blob files: each named by the sha256 of its bytes, in its two-hex directory.
    for p in blob_paths(&w.dir) {
        c.blob_files += 1;
        if !full && ledger.hashed.contains(&p) {
            continue;
        }
        ledger.hashed.insert(p.clone());
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let parent = p.parent().and_then(|q| q.file_name()).map(|s| s.to_string_lossy().into_owned());
        let algo = p
            .parent()
            .and_then(Path::parent)
            .and_then(|q| q.file_name())
            .map(|s| s.to_string_lossy().into_owned());
        if algo.as_deref() != Some("sha256") || parent.as_deref() != name.get(..2) {
            errors.push(format!("blob file at an unexpected path: {}", p.display()));
        }
        match hex_of_file(&p) {
            Ok(h) if h == format!("sha256:{name}") => {}
            Ok(h) => errors.push(format!(
                "blob file {} is short or corrupt: expected its sha256 to be {name}, got {h} ({} B)",
                p.display(),
                std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
            )),
            Err(e) => errors.push(format!("cannot read blob file {}: {e}", p.display())),
        }
    }

    // 3. Blobs: acked ones complete; in-flight ones absent or complete.
    for ((repo, d), (content, acked)) in &ledger.blobs {
        if !full && !ledger.touched.contains(&(repo.clone(), d.clone())) {
            if *acked {
                c.acked_blobs += 1;
                c.verified_blobs += 1; // verified by an earlier restart; immutable since
            }
            continue;
        }
        let present = check_blob(&http, repo, d, content.len(), &mut errors);
        match (acked, present) {
            (true, true) => {
                c.acked_blobs += 1;
                c.verified_blobs += 1;
            }
            (true, false) => {
                c.acked_blobs += 1;
                c.lost += 1;
                errors.push(format!(
                    "acked blob lost: HEAD /v2/{repo}/blobs/{d} ({} B): expected 200, got 404",
                    content.len()
                ));
            }
            (false, true) => c.unacked_present += 1,
            (false, false) => c.unacked_absent += 1,
        }
    }

    // 4. Manifests: acked ones by tag and digest, byte-identical; in-flight ones absent or whole.
    let skip = if full { 0 } else { ledger.manifests_verified };
    for (i, m) in ledger.manifests.iter().enumerate() {
        if i < skip {
            if m.acked {
                c.acked_manifests += 1;
                c.verified_manifests += 1; // verified by an earlier restart
            }
            continue;
        }
        let by_tag = http.must(
            http.req("GET", &format!("/v2/{}/manifests/{}", m.repo, m.tag)).header("Accept", OCI_MANIFEST),
            "GET manifest",
        );
        let by_digest = http.must(
            http.req("GET", &format!("/v2/{}/manifests/{}", m.repo, m.digest)).header("Accept", OCI_MANIFEST),
            "GET manifest",
        );
        if m.acked {
            c.acked_manifests += 1;
        }
        let mut ok = true;
        for (r, how) in [(&by_tag, &m.tag), (&by_digest, &m.digest)] {
            match r.status {
                200 => {
                    if r.body != m.bytes {
                        ok = false;
                        errors.push(format!(
                            "GET /v2/{}/manifests/{how}: expected the {} pushed bytes of {}, got {} B: {}",
                            m.repo,
                            m.bytes.len(),
                            m.digest,
                            r.body.len(),
                            r.describe()
                        ));
                    }
                    if r.h("Docker-Content-Digest") != Some(m.digest.as_str()) {
                        ok = false;
                        errors.push(format!(
                            "GET /v2/{}/manifests/{how}: expected Docker-Content-Digest {}, got {}",
                            m.repo,
                            m.digest,
                            r.describe()
                        ));
                    }
                }
                404 if !m.acked => ok = false,
                _ => {
                    ok = false;
                    if m.acked {
                        c.lost += 1;
                    }
                    errors.push(format!(
                        "{} manifest GET /v2/{}/manifests/{how}: expected 200{}, got {}",
                        if m.acked { "acked" } else { "in-flight" },
                        m.repo,
                        if m.acked { "" } else { " or 404" },
                        r.describe()
                    ));
                }
            }
        }
        if !m.acked && (by_tag.status == 200) != (by_digest.status == 200) {
            errors.push(format!(
                "in-flight manifest {}:{} ({}) is half there: GET by tag {}, by digest {}",
                m.repo, m.tag, m.digest, by_tag.status, by_digest.status
            ));
        }
        if m.acked && ok {
            c.verified_manifests += 1;
        }
    }

    ledger.manifests_verified = ledger.manifests.len();
    ledger.touched.clear();

    // 4b. Mirror fills received whole are in the cache: served with the upstream
    //     failing every request, and without asking it.
    up.faults(|f| f.fail_500 = usize::MAX);
    let before = up.total();
    for (d, len) in &ledger.fills {
        c.acked_fills += 1;
        let path = format!("/v2/{MIRROR_NAME}/library/cache/blobs/{d}");
        let g = http.must(http.req("GET", &path), "GET mirrored blob");
        if g.status == 200 && g.body.len() == *len && &sha256(&g.body) == d {
            c.verified_fills += 1;
        } else {
            c.lost += 1;
            errors.push(format!(
                "mirror fill {d} ({len} B) was received whole before a kill but is not served from the                  cache after the restart: {}",
                g.describe()
            ));
        }
    }
    if up.total() != before {
        errors.push(format!("cached fills went upstream after the restart: {}", up.summary()));
    }
    up.faults(|f| f.fail_500 = 0);

    // 5. The graph: every tag of every repository resolves to a manifest whose blobs exist.
    let cat = http.must(http.req("GET", "/v2/_catalog?n=10000"), "catalog");
    let repos: Vec<String> = if cat.status == 200 {
        let v: Value = serde_json::from_slice(&cat.body).unwrap_or(Value::Null);
        v["repositories"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    } else {
        errors.push(format!("GET /v2/_catalog: expected 200, got {}", cat.describe()));
        vec![]
    };
    let tagged: BTreeSet<&str> =
        ledger.manifests.iter().filter(|m| m.acked).map(|m| m.repo.as_str()).collect();
    for r in tagged {
        if !repos.iter().any(|x| x == r) {
            errors.push(format!(
                "GET /v2/_catalog: expected it to list {r}, which has acked manifests; got {repos:?}"
            ));
        }
    }
    for repo in &repos {
        let t = http.must(http.req("GET", &format!("/v2/{repo}/tags/list?n=10000")), "tags list");
        if t.status != 200 {
            // A repository with blobs but no tags may answer 404 NAME_UNKNOWN or an empty list.
            if t.status != 404 {
                errors.push(format!("GET /v2/{repo}/tags/list: expected 200, got {}", t.describe()));
            }
            continue;
        }
        let v: Value = serde_json::from_slice(&t.body).unwrap_or(Value::Null);
        let tags: Vec<String> = v["tags"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        for tag in tags {
            c.tags_walked += 1;
            let g = http.must(
                http.req("GET", &format!("/v2/{repo}/manifests/{tag}")).header("Accept", OCI_MANIFEST),
                "GET manifest",
            );
            if g.status != 200 {
                errors.push(format!("tag {repo}:{tag} is listed but GET → {}", g.describe()));
                continue;
            }
            if g.h("Docker-Content-Digest") != Some(sha256(&g.body).as_str()) {
                errors.push(format!(
                    "tag {repo}:{tag}: Docker-Content-Digest does not match the body: {}",
                    g.describe()
                ));
            }
            let m: Value = match serde_json::from_slice(&g.body) {
                Ok(m) => m,
                Err(e) => {
                    errors.push(format!("tag {repo}:{tag}: manifest is not JSON ({e}): {}", g.describe()));
                    continue;
                }
            };
            let mut descs = vec![m["config"].clone()];
            descs.extend(m["layers"].as_array().cloned().unwrap_or_default());
            for dsc in descs {
                let (Some(d), Some(size)) = (dsc["digest"].as_str(), dsc["size"].as_u64()) else {
                    errors.push(format!("tag {repo}:{tag}: descriptor without digest/size: {dsc}"));
                    continue;
                };
                let h = http.must(http.req("HEAD", &format!("/v2/{repo}/blobs/{d}")), "HEAD blob");
                let cl = h.h("Content-Length").and_then(|v| v.parse::<u64>().ok());
                if h.status != 200 || cl != Some(size) {
                    errors.push(format!(
                        "manifest {repo}:{tag} references {d} ({size} B): expected HEAD 200 with that size, got {}",
                        h.describe()
                    ));
                }
            }
        }
    }

    // 6. Resume the chunked uploads the kill cut, from the offset the server reports.
    for s in std::mem::take(&mut ledger.interrupted) {
        match resume(&http, &s, &mut errors) {
            Resumed::Committed => {
                c.resumed += 1;
                if check_blob(&http, &s.repo, &s.digest, s.content.len(), &mut errors) {
                    ledger.ack_blob(&s.repo, &s.digest, &s.content);
                } else {
                    errors.push(format!(
                        "resumed upload {} → 201 but HEAD /v2/{}/blobs/{} → 404",
                        s.id, s.repo, s.digest
                    ));
                }
            }
            Resumed::AlreadyCommitted => c.committed_in_flight += 1,
            Resumed::Gone if s.phase == Phase::Put => c.lost_in_put += 1,
            Resumed::Gone => errors.push(format!(
                "session {} ({} {}, cut mid-PATCH, its POST answered 202) did not survive the restart: \
                 expected GET status 204, got 404 (and the blob is not there)",
                s.id, s.repo, s.digest
            )),
        }
    }

    // 7. Cancel the sessions the client never heard of (their POST was cut); then no
    //    staging may remain.
    for (repo, id) in unknown_live {
        let r = http.must(http.req("DELETE", &format!("/v2/{repo}/blobs/uploads/{id}")), "cancel upload");
        if r.status != 204 {
            errors.push(format!("DELETE upload {id} in {repo}: expected 204, got {}", r.describe()));
        }
    }
    let left = staging_ids(&w.dir);
    if !left.is_empty() {
        errors.push(format!("staging left after every session was finished or cancelled: {left:?}"));
    }
    (c, errors)
}

// ---------------------------------------------------------------------------------

#[test]
fn sigkill_during_concurrent_pushes_loses_nothing_acknowledged() {
    let started = Instant::now();
    let deadline = started + DEADLINE;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let up = FakeUpstream::start();
    let cfg = tmp.path().join("wharfie.toml");
    std::fs::write(
        &cfg,
        format!("[[upstreams]]\nname = \"{MIRROR_NAME}\"\nurl = \"{}\"\ntimeout = \"10s\"\n", up.url()),
    )
    .expect("config");
    let cfg = cfg.display().to_string();
    let args = ["--config", cfg.as_str()];
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut failures: Vec<String> = Vec::new();
    let mut cycles_done = 0;
    let mut crashed_mono: Vec<String> = Vec::new();
    let mut staging_at_kills = 0;

    for cycle in 0..CYCLES {
        let k = kill_after(cycle);
        if Instant::now() > deadline {
            println!("deadline reached before cycle {cycle}; stopping after {cycles_done} cycles");
            break;
        }
        let mut w = Wharfie::start_in(&dir, &args);
        if cycle > 0 {
            let full = cycle % FULL_EVERY == 0;
            let (c, errs) = verify(&w, &mut ledger.lock().unwrap(), &crashed_mono, full, &up);
            println!("cycle {cycle}: after restart ({}): {c:?}", if full { "full" } else { "new content" });
            failures.extend(errs.into_iter().map(|e| format!("[after kill {cycle}] {e}")));
        }
        crashed_mono.clear();

        let http = Http::new(&w.base, CLIENT_TIMEOUT);
        let acks = Arc::new(AckCounter::default());
        let killed = Arc::new(AtomicBool::new(false));
        let mut workers: Vec<_> = (0..WORKERS)
            .map(|id| {
                let wk = Worker {
                    http: http.clone(),
                    ledger: ledger.clone(),
                    acks: acks.clone(),
                    killed: killed.clone(),
                    cycle,
                    id,
                };
                std::thread::spawn(move || wk.run())
            })
            .collect();
        let pool = Arc::new(fill_pool(&up, cycle));
        workers.extend((0..MIRROR_WORKERS).map(|id| {
            let mw = MirrorWorker {
                http: http.clone(),
                ledger: ledger.clone(),
                killed: killed.clone(),
                pool: pool.clone(),
                cycle,
                id,
            };
            std::thread::spawn(move || mw.run())
        }));
        let stragglers = start_stragglers(&w, &http, &ledger, cycle);
        let until = (Instant::now() + CYCLE_DEADLINE).min(deadline);
        let got = acks.wait_for(k, until);
        killed.store(true, Ordering::SeqCst);
        w.kill();
        drop(stragglers._sockets);
        for h in workers {
            h.join().expect("worker panicked");
        }
        if got < k {
            failures.push(format!(
                "[cycle {cycle}] the server acknowledged only {got} of {k} pushes before the deadline"
            ));
        }
        crashed_mono.extend(stragglers.mono_staging);
        let on_disk = staging_ids(&dir);
        staging_at_kills += on_disk.len();
        let l = ledger.lock().unwrap();
        println!(
            "cycle {cycle}: killed after {} acks (K={k}); totals so far: {} blobs acked, {} manifests acked, \
             {} fills whole, {} uploads cut; {} staging areas on disk at the kill",
            acks.get(),
            l.acked_blobs(),
            l.acked_manifests(),
            l.fills.len(),
            l.interrupted.len(),
            on_disk.len()
        );
        cycles_done += 1;
    }

    // Final restart: verify everything, then a graceful stop.
    let mut w = Wharfie::start_in(&dir, &args);
    let (c, errs) = verify(&w, &mut ledger.lock().unwrap(), &crashed_mono, true, &up);
    failures.extend(errs.into_iter().map(|e| format!("[final] {e}")));
    failures.extend(ledger.lock().unwrap().errors.iter().cloned());
    let code = w.stop();
    if code != Some(0) {
        failures.push(format!("SIGTERM: expected a graceful exit with status 0, got {code:?}"));
    }
    // Nothing of the killed runs survives in the metadata: no lease, no upload row
    // (every session was finished or cancelled by the final verification).
    {
        let meta = wharfie::meta::Meta::open(&dir.join("meta.redb")).expect("open meta after the stop");
        let leases = meta.leases().expect("leases");
        let uploads = meta.uploads().expect("uploads");
        if !leases.is_empty() {
            failures.push(format!("{} lease(s) survived the restarts: {:?}", leases.len(), leases));
        }
        if !uploads.is_empty() {
            failures.push(format!("{} upload row(s) survived: {:?}", uploads.len(), uploads));
        }
    }
    let l = ledger.lock().unwrap();
    println!("final: {c:?}");
    println!(
        "crash test: {cycles_done} kill/restart cycles in {:.1?}; acked blobs {} (verified {}), acked manifests {} \
         (verified {}), mirror pulls {} tried, distinct blobs received whole {} (verified from the cache with the upstream failing: {}), resumed sessions {}, \
         staging areas found at kills {staging_at_kills}, lost {}",
        started.elapsed(),
        c.acked_blobs,
        c.verified_blobs,
        c.acked_manifests,
        c.verified_manifests,
        l.fill_attempts,
        c.acked_fills,
        c.verified_fills,
        c.resumed,
        c.lost
    );
    assert_eq!(cycles_done, CYCLES, "the deadline ({DEADLINE:?}) cut the kill/restart cycles short");
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
    assert_eq!(c.lost, 0);
    assert_eq!(c.acked_blobs, c.verified_blobs);
    assert_eq!(c.acked_manifests, c.verified_manifests);
    assert_eq!(c.acked_fills, c.verified_fills);
}
