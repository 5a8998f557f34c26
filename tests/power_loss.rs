//! Power loss (issue 10, item 10). kill -9 cannot see a missing fsync: the page cache
//! survives it. Here the blob store's `FaultHook` records, at each fsync, what the
//! fsync makes durable (a file's data by inode, a directory's entries), and redb runs
//! on `VolatileBackend`, whose image becomes durable only at `sync_data`. Each cut runs
//! concurrent pushes (monolithic and chunked), manifest deletes and a fast GC against
//! the in-process server, "cuts the power" at a random sync point (everything later is
//! not recorded), rebuilds a fresh data directory from the durable image alone, opens
//! it with the normal `app::run` (recovery runs) and checks over HTTP: every write
//! acknowledged (201/202 received) before the cut is whole, nothing partial is visible,
//! finished upload sessions are gone, and every blob file is its digest's content.
//!
//! Model limits: a directory listing is read at the start of its fsync, so a rename
//! racing that fsync counts as durable (slightly kinder than a real disk); data that
//! was never fsynced is dropped whole (a real disk may keep any prefix of it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::{bytes_of, http_client, sha256, InProc};
use wharfie::blob::{FaultHook, FsOp, SyncTarget};
use wharfie::meta::{Meta, VolatileBackend};

const CUTS: u64 = 200;
const DEADLINE: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------------------------
// The durable image and the cut.

enum Entry {
    Dir,
    File { ino: u64, data: Option<Arc<Vec<u8>>> },
}

#[derive(Default)]
struct Image {
    syncs: u64,
    cut_at: u64,
    cut: bool,
    files: HashMap<u64, Arc<Vec<u8>>>,
    dirs: HashMap<PathBuf, BTreeMap<OsString, Entry>>,
    acks: Vec<Ack>,
}

impl Image {
    /// One sync point: `true` when it still counts (the power is on).
    fn tick(&mut self) -> bool {
        if self.cut {
            return false;
        }
        self.syncs += 1;
        if self.syncs >= self.cut_at {
            self.cut = true;
        }
        true
    }
}

struct Power {
    root: PathBuf,
    img: Mutex<Image>,
}

impl Power {
    fn lock(&self) -> MutexGuard<'_, Image> {
        self.img.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_cut(&self) -> bool {
        self.lock().cut
    }

    /// Record an acknowledgement if it came before the cut.
    fn ack(&self, a: Ack) {
        let mut i = self.lock();
        if !i.cut {
            i.acks.push(a);
        }
    }
}

impl FaultHook for Power {
    fn check(&self, _op: FsOp) -> std::io::Result<()> {
        Ok(())
    }

    fn before_sync(&self, target: SyncTarget<'_>) {
        let mut i = self.lock();
        if !i.tick() {
            return;
        }
        match target {
            SyncTarget::File(p) => {
                let (Ok(m), Ok(data)) = (std::fs::metadata(p), std::fs::read(p)) else {
                    return;
                };
                i.files.insert(m.ino(), Arc::new(data));
            }
            SyncTarget::Dir(p) => {
                let Ok(rel) = p.strip_prefix(&self.root) else {
                    return;
                };
                let mut entries = BTreeMap::new();
                for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                    let Ok(m) = e.metadata() else { continue };
                    let entry = if m.is_dir() {
                        Entry::Dir
                    } else {
                        Entry::File { ino: m.ino(), data: i.files.get(&m.ino()).cloned() }
                    };
                    entries.insert(e.file_name(), entry);
                }
                i.dirs.insert(rel.to_path_buf(), entries);
            }
        }
    }
}

/// Write the durable tree under `rel` into `out` (entries never synced vanish, files
/// never synced come back empty).
fn rebuild(img: &Image, rel: &Path, out: &Path) {
    let Some(entries) = img.dirs.get(rel) else { return };
    for (name, e) in entries {
        let dest = out.join(rel).join(name);
        match e {
            Entry::Dir => {
                std::fs::create_dir_all(&dest).expect("rebuild dir");
                rebuild(img, &rel.join(name), out);
            }
            Entry::File { ino, data } => {
                let data = data.clone().or_else(|| img.files.get(ino).cloned()).unwrap_or_default();
                std::fs::write(&dest, &*data).expect("rebuild file");
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The server, in-process (`common::InProc`).

/// Write `config` beside `dir` and start the server on `dir`, with the power model's
/// seams (its fsync hook and the volatile redb) or, for the check after a cut, none.
fn start(dir: &Path, config: &str, seams: Option<(Arc<Power>, Meta)>) -> InProc {
    let cfg = dir.with_extension("toml");
    std::fs::write(&cfg, config).expect("config");
    match seams {
        Some((power, meta)) => {
            let hook: Arc<dyn FaultHook> = power;
            InProc::start(dir, Some(&cfg), Some(hook), Some(meta))
        }
        None => InProc::start(dir, Some(&cfg), None, None),
    }
}

fn client() -> reqwest::blocking::Client {
    http_client(Duration::from_secs(30))
}

// ---------------------------------------------------------------------------------
// The workload.

#[derive(Clone, Debug)]
enum Ack {
    Blob {
        repo: String,
        digest: String,
        bytes: Arc<Vec<u8>>,
    },
    Manifest {
        repo: String,
        tag: String,
        digest: String,
        body: Arc<Vec<u8>>,
        blobs: Vec<(String, Arc<Vec<u8>>)>,
    },
    Deleted {
        repo: String,
        digest: String,
    },
    /// A delete was sent (whether or not its 202 came before the cut): the manifest may
    /// be gone, or whole.
    DeleteSent {
        digest: String,
    },
    SessionDone {
        location: String,
    },
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn manifest(config: &(String, Arc<Vec<u8>>), layer: &(String, Arc<Vec<u8>>)) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        config.0,
        config.1.len(),
        layer.0,
        layer.1.len()
    )
    .into_bytes()
}

struct Worker {
    base: String,
    power: Arc<Power>,
    http: reqwest::blocking::Client,
}

impl Worker {
    fn url(&self, p: &str) -> String {
        if p.starts_with("http") {
            p.to_owned()
        } else {
            format!("{}{p}", self.base)
        }
    }

    fn blob(seed: u64, len: usize) -> (String, Arc<Vec<u8>>) {
        let b = bytes_of(len, seed);
        (sha256(&b), Arc::new(b))
    }

    /// Monolithic push; `true` on 201.
    fn push_mono(&self, repo: &str, b: &(String, Arc<Vec<u8>>)) -> bool {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/?digest={}", b.0));
        let r =
            self.http.post(url).header("content-type", "application/octet-stream").body(b.1.to_vec()).send();
        let ok = matches!(r, Ok(r) if r.status().as_u16() == 201);
        if ok {
            self.power.ack(Ack::Blob { repo: repo.into(), digest: b.0.clone(), bytes: b.1.clone() });
        }
        ok
    }

    /// Chunked push (POST, two PATCHes, PUT); `true` on 201.
    fn push_chunked(&self, repo: &str, b: &(String, Arc<Vec<u8>>)) -> bool {
        let Ok(r) = self.http.post(self.url(&format!("/v2/{repo}/blobs/uploads/"))).send() else {
            return false;
        };
        if r.status().as_u16() != 202 {
            return false;
        }
        let mut loc = r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let half = b.1.len() / 2;
        for (start, chunk) in [(0, &b.1[..half]), (half, &b.1[half..])] {
            if self.power.is_cut() {
                return false;
            }
            let end = start + chunk.len() - 1;
            let Ok(r) = self
                .http
                .patch(self.url(&loc))
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{start}-{end}"))
                .body(chunk.to_vec())
                .send()
            else {
                return false;
            };
            if r.status().as_u16() != 202 {
                return false;
            }
            loc = r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or(&loc).to_owned();
        }
        let sep = if loc.contains('?') { '&' } else { '?' };
        let ok = self
            .http
            .put(self.url(&format!("{loc}{sep}digest={}", b.0)))
            .send()
            .is_ok_and(|r| r.status().as_u16() == 201);
        if ok {
            self.power.ack(Ack::Blob { repo: repo.into(), digest: b.0.clone(), bytes: b.1.clone() });
            self.power.ack(Ack::SessionDone { location: loc });
        }
        ok
    }

    fn push_manifest(
        &self,
        repo: &str,
        tag: &str,
        config: &(String, Arc<Vec<u8>>),
        layer: &(String, Arc<Vec<u8>>),
    ) -> Option<String> {
        let body = manifest(config, layer);
        let digest = sha256(&body);
        let ok = self
            .http
            .put(self.url(&format!("/v2/{repo}/manifests/{tag}")))
            .header("content-type", OCI_MANIFEST)
            .body(body.clone())
            .send()
            .is_ok_and(|r| r.status().as_u16() == 201);
        if !ok {
            return None;
        }
        self.power.ack(Ack::Manifest {
            repo: repo.into(),
            tag: tag.into(),
            digest: digest.clone(),
            body: Arc::new(body),
            blobs: vec![config.clone(), layer.clone()],
        });
        Some(digest)
    }

    /// `kind`: 0 monolithic, 1 chunked, 2 push then delete (GC fodder).
    fn run(&self, kind: u64, seed: u64, rounds: u64) {
        let repo = format!("power/w{kind}");
        for i in 0..rounds {
            if self.power.is_cut() {
                return;
            }
            let s = seed * 1000 + i * 10;
            let config = Self::blob(s + 1, 64 + (s % 97) as usize);
            let layer = Self::blob(s + 2, 1024 + ((s * 7919) % 150_000) as usize);
            let pushed = match kind {
                1 => self.push_mono(&repo, &config) && self.push_chunked(&repo, &layer),
                _ => self.push_mono(&repo, &config) && self.push_mono(&repo, &layer),
            };
            if !pushed || self.power.is_cut() {
                continue;
            }
            let tag = format!("t{i}");
            let Some(digest) = self.push_manifest(&repo, &tag, &config, &layer) else { continue };
            if kind == 2 && !self.power.is_cut() {
                self.power.lock().acks.push(Ack::DeleteSent { digest: digest.clone() });
                let ok = self
                    .http
                    .delete(self.url(&format!("/v2/{repo}/manifests/{digest}")))
                    .send()
                    .is_ok_and(|r| r.status().as_u16() == 202);
                if ok {
                    self.power.ack(Ack::Deleted { repo: repo.clone(), digest });
                }
            }
        }
    }
}

const CONFIG: &str = "[gc]\ninterval = \"50ms\"\ngrace = \"0s\"\n";

/// One run: workload until the cut (or the end), then the durable image.
fn run_once(tmp: &Path, cut_at: u64, seed: u64) -> (Arc<Power>, Vec<u8>) {
    let dir = tmp.join("live");
    std::fs::create_dir_all(&dir).expect("live dir");
    let power = Arc::new(Power { root: dir.clone(), img: Mutex::new(Image { cut_at, ..Image::default() }) });
    let gate = {
        let p = power.clone();
        Arc::new(move || p.lock().tick()) as wharfie::meta::SyncGate
    };
    let backend = VolatileBackend::new(Vec::new(), gate);
    let meta = Meta::open_with_backend(backend.clone()).expect("meta on the volatile backend");
    let mut server = start(&dir, CONFIG, Some((power.clone(), meta)));
    let threads: Vec<_> = (0..3u64)
        .map(|kind| {
            let w = Worker { base: server.base.clone(), power: power.clone(), http: client() };
            std::thread::spawn(move || w.run(kind, seed * 10 + kind, 2))
        })
        .collect();
    for t in threads {
        t.join().expect("worker");
    }
    // The power goes out now if it has not yet: nothing later is durable.
    power.lock().cut = true;
    server.shutdown();
    (power, backend.durable_image())
}

#[derive(Default)]
struct Tally {
    checked: u64,
    lost: Vec<String>,
}

fn check(server: &InProc, acks: &[Ack], data: &Path, t: &mut Tally) {
    let http = client();
    let get = |p: &str| {
        let r = http.get(server.url(p)).header("accept", OCI_MANIFEST).send().expect("GET");
        (r.status().as_u16(), r.bytes().expect("body").to_vec())
    };
    let deleted: Vec<&String> = acks
        .iter()
        .filter_map(|a| if let Ack::Deleted { digest, .. } = a { Some(digest) } else { None })
        .collect();
    let delete_sent: Vec<&String> = acks
        .iter()
        .filter_map(|a| if let Ack::DeleteSent { digest } = a { Some(digest) } else { None })
        .collect();
    for a in acks {
        match a {
            Ack::Manifest { repo, tag, digest, body, blobs } if !deleted.contains(&digest) => {
                t.checked += 1;
                if delete_sent.contains(&digest) {
                    // Whole, or gone with its delete.
                    let (s, b) = get(&format!("/v2/{repo}/manifests/{digest}"));
                    if !(s == 200 && b == **body || s == 404) {
                        t.lost.push(format!("manifest {digest} being deleted: {s}"));
                    }
                    continue;
                }
                for path in [format!("/v2/{repo}/manifests/{tag}"), format!("/v2/{repo}/manifests/{digest}")]
                {
                    let (s, b) = get(&path);
                    if s != 200 || b != **body {
                        t.lost.push(format!("manifest {path}: {s}"));
                    }
                }
                for (d, bytes) in blobs {
                    let (s, b) = get(&format!("/v2/{repo}/blobs/{d}"));
                    if s != 200 || b != **bytes {
                        t.lost.push(format!("blob {d} of {repo}:{tag}: {s} ({} bytes)", b.len()));
                    }
                }
            }
            Ack::Blob { repo, digest, bytes } => {
                // GC (grace 0) may take a blob no manifest holds; it must never be partial.
                t.checked += 1;
                let (s, b) = get(&format!("/v2/{repo}/blobs/{digest}"));
                if !(s == 200 && b == **bytes || s == 404) {
                    t.lost.push(format!("blob {digest}: {s} ({} bytes)", b.len()));
                }
            }
            Ack::Deleted { repo, digest } => {
                t.checked += 1;
                let (s, _) = get(&format!("/v2/{repo}/manifests/{digest}"));
                if s != 404 {
                    t.lost.push(format!("deleted manifest {digest} came back: {s}"));
                }
            }
            Ack::SessionDone { location } => {
                t.checked += 1;
                let (s, _) = get(location);
                if s != 404 {
                    t.lost.push(format!("finished upload session {location} still visible: {s}"));
                }
            }
            Ack::Manifest { .. } | Ack::DeleteSent { .. } => {}
        }
    }
    // Nothing partial: every blob file is its digest's content.
    for shard in std::fs::read_dir(data.join("blobs/sha256")).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            let bytes = std::fs::read(f.path()).expect("read blob file");
            let name = f.file_name().to_string_lossy().into_owned();
            if sha256(&bytes) != format!("sha256:{name}") {
                t.lost.push(format!("blob file {name} holds other bytes ({} bytes)", bytes.len()));
            }
        }
    }
}

#[test]
fn acknowledged_writes_survive_a_power_cut_at_any_sync_point() {
    let started = Instant::now();
    // Calibrate: how many sync points a whole run has.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (p, _) = run_once(tmp.path(), u64::MAX, 1);
    let total = p.lock().syncs;
    drop(tmp);
    assert!(total > 20, "a run has only {total} sync points");
    let mut t = Tally::default();
    let mut cuts = 0u64;
    let mut creation_cuts = 0u64;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    while cuts < CUTS && started.elapsed() < DEADLINE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cut_at = 1 + x % total;
        let tmp = tempfile::tempdir().expect("tempdir");
        let (power, meta_image) = run_once(tmp.path(), cut_at, cuts + 2);
        let after = tmp.path().join("after");
        std::fs::create_dir_all(&after).expect("after dir");
        let img = power.lock();
        rebuild(&img, Path::new(""), &after);
        // redb makes a new file valid (its magic number) only at its second sync: a cut
        // at the first leaves a file redb refuses to open. Known, reported: a power cut
        // during the very first start needs meta.redb removed by hand. Counted apart.
        if !meta_image.starts_with(b"redb") {
            creation_cuts += 1;
        } else {
            std::fs::write(after.join("meta.redb"), &meta_image).expect("meta image");
        }
        let acks = img.acks.clone();
        drop(img);
        let mut server = start(&after, "", None);
        let before = t.lost.len();
        check(&server, &acks, &after, &mut t);
        server.shutdown();
        if t.lost.len() > before {
            eprintln!("cut {cuts} at sync {cut_at}/{total}: {:?}", &t.lost[before..]);
        }
        cuts += 1;
    }
    eprintln!(
        "power_loss: {cuts} cuts ({creation_cuts} before meta.redb was created) over {total} sync points, \
         {} acknowledged writes checked, {} lost, {:.1} s",
        t.checked,
        t.lost.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(cuts >= 20, "only {cuts} cuts before the deadline");
    assert!(
        t.lost.is_empty(),
        "{} acknowledged writes lost or partial: {:?}",
        t.lost.len(),
        &t.lost[..t.lost.len().min(10)]
    );
}
