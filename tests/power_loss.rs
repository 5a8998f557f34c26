//! Power loss (issue 10, item 10). kill -9 cannot see a missing fsync: the page cache
//! survives it. Here the blob store's `FaultHook` records, at each fsync, what the
//! fsync makes durable (a file's data by inode, a directory's entries), and redb runs
//! on `VolatileBackend`, whose image becomes durable only at `sync_data`.
//!
//! Each cut runs, concurrently against the in-process server: pushes (monolithic and
//! chunked), manifest deletes, a fast GC, and mirror fills — four clients pulling two
//! images from a fake upstream (`FakeUpstream`, outside the cut: its content is not
//! part of the image) into a cold cache, two clients per image at once so that one
//! leads each fill and the other follows it, and the second image sharing the first's
//! largest layer (2 MiB, many writes) so a follower from another repository joins too.
//! It "cuts the power" at a random sync point (everything later is not recorded),
//! rebuilds a fresh data directory from the durable image alone, opens it with the
//! normal `app::run` (recovery runs) and checks:
//! - before recovery, on a copy of the redb image: every blob row names a durable file
//!   of its size (the file is fsynced and renamed before the row commits);
//! - over HTTP: every write acknowledged (201/202) before the cut is whole, nothing
//!   partial is visible, finished upload sessions are gone;
//! - the mirror, with the upstream's request log telling cache from upstream: every
//!   image pulls again whole (HEAD sizes and GET bytes exactly the upstream's; a blob
//!   whose fill was cut is fetched again, never served short); a manifest or blob
//!   served whole before the cut is served from the cache, not fetched again (the
//!   crosslink and the fill commit before the last byte goes out); a tag that resolves
//!   from the cache resolves by digest from the cache too; and a second pull asks the
//!   upstream nothing (the refills committed: no lease or staging of the cut run
//!   blocked them);
//! - on disk, once stopped: every blob file hashes to its name, every blob row
//!   (mirrored ones included) names a file of its size, and no fill staging is left.
//!
//! Model limits: a directory listing is read at the start of its fsync, so a rename
//! racing that fsync counts as durable (slightly kinder than a real disk); data that
//! was never fsynced is dropped whole (a real disk may keep any prefix of it). A fill
//! never fsyncs its staging file before the commit, so a cut fill leaves at most an
//! empty or absent staging file in the image, never a prefix; the upstream runs on and
//! keeps its content, as a real registry would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::mirror::upstream::{FakeUpstream, Kind};
use wharfie_testkit::{common, oci, ops};

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use common::{bytes_of, http_client, sha256, InProc};
use serde_json::Value;
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
    /// A mirrored manifest served whole by tag (its crosslink committed before the 200).
    Pulled {
        repo: String,
    },
    /// A mirrored blob served whole (its fill committed before the last byte went out).
    Filled {
        repo: String,
        digest: String,
    },
    /// The live server served a whole 200 with bytes other than the upstream's (cut or
    /// not, that is wrong).
    WrongBytes {
        what: String,
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

// ---------------------------------------------------------------------------------
// The upstream, outside the cut.

/// The upstream's name in `[[upstreams]]`, the first segment of a mirrored repository.
const MIRROR: &str = "up";

/// One image on the upstream, as a client pulls it through the mirror.
struct Mirrored {
    /// The repository through the mirror (`up/lib/a`).
    local: String,
    tag: &'static str,
    digest: String,
    body: Arc<Vec<u8>>,
    /// The config, then the layers: the order a client fetches them in.
    blobs: Vec<(String, Arc<Vec<u8>>)>,
}

struct Upstream {
    fake: FakeUpstream,
    images: Arc<Vec<Mirrored>>,
}

impl Upstream {
    /// Two images: `lib/a` (a config, a 2 MiB layer, a 20 KB layer) and `lib/b` (a
    /// config, `lib/a`'s 2 MiB layer, a 1 MiB layer).
    fn start() -> Upstream {
        let fake = FakeUpstream::start();
        let shared = Worker::blob(901, (2 << 20) + 123);
        let specs = [
            ("lib/a", vec![Worker::blob(900, 180), shared.clone(), Worker::blob(902, 20_000)]),
            ("lib/b", vec![Worker::blob(910, 190), shared, Worker::blob(911, (1 << 20) + 7)]),
        ];
        let images = specs
            .into_iter()
            .map(|(remote, blobs)| {
                for (_, b) in &blobs {
                    fake.add_blob(b.to_vec());
                }
                let desc = |media_type: &str, b: &(String, Arc<Vec<u8>>)| oci::Desc {
                    media_type: media_type.into(),
                    digest: b.0.clone(),
                    size: b.1.len(),
                };
                let layers: Vec<_> = blobs[1..].iter().map(|b| desc(oci::OCI_LAYER, b)).collect();
                let body = oci::image_manifest(
                    OCI_MANIFEST,
                    &desc(oci::OCI_CONFIG, &blobs[0]),
                    &layers,
                    Value::Null,
                );
                let digest = fake.add_manifest(remote, Some("v1"), OCI_MANIFEST, &body);
                Mirrored {
                    local: format!("{MIRROR}/{remote}"),
                    tag: "v1",
                    digest,
                    body: Arc::new(body),
                    blobs,
                }
            })
            .collect();
        Upstream { fake, images: Arc::new(images) }
    }

    fn toml(&self) -> String {
        format!(
            "[[upstreams]]\nname = \"{MIRROR}\"\nurl = \"{}\"\ntag_ttl = \"1h\"\ntimeout = \"10s\"\n",
            self.fake.url()
        )
    }

    /// Manifest requests (GET and HEAD) the upstream has answered so far.
    fn manifest_calls(&self) -> usize {
        self.fake.count("GET", Kind::Manifest) + self.fake.count("HEAD", Kind::Manifest)
    }

    fn blob_gets(&self) -> usize {
        self.fake.count("GET", Kind::Blob)
    }
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

    /// GET `path` through the mirror: the status and, when it came whole, the body.
    fn fetch(&self, path: &str) -> (u16, Option<Vec<u8>>) {
        match self.http.get(self.url(path)).header("accept", OCI_MANIFEST).send() {
            Ok(r) => (r.status().as_u16(), r.bytes().ok().map(|b| b.to_vec())),
            Err(_) => (0, None),
        }
    }

    /// Pull `img` through the mirror as a client does: the manifest by tag, then each
    /// blob. A whole 200 before the cut is acknowledged. Returns the blob GETs sent.
    fn pull(&self, img: &Mirrored) -> usize {
        let mut sent = 0;
        let take = |what: String, (status, body): (u16, Option<Vec<u8>>), want: &[u8]| -> bool {
            match body {
                Some(b) if status == 200 && b == want => true,
                Some(b) if status == 200 => {
                    self.power
                        .lock()
                        .acks
                        .push(Ack::WrongBytes { what: format!("{what}: {} bytes", b.len()) });
                    false
                }
                _ => false,
            }
        };
        let got = self.fetch(&format!("/v2/{}/manifests/{}", img.local, img.tag));
        if !take(format!("manifest {}:{}", img.local, img.tag), got, &img.body) {
            return sent;
        }
        self.power.ack(Ack::Pulled { repo: img.local.clone() });
        for (digest, bytes) in &img.blobs {
            if self.power.is_cut() {
                return sent;
            }
            sent += 1;
            let got = self.fetch(&format!("/v2/{}/blobs/{digest}", img.local));
            if take(format!("blob {digest} of {}", img.local), got, bytes) {
                self.power.ack(Ack::Filled { repo: img.local.clone(), digest: digest.clone() });
            }
        }
        sent
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

const GC: &str = "[gc]\ninterval = \"50ms\"\ngrace = \"0s\"\n\n";

/// Mirror clients per image, pulling at once.
const PULLERS: usize = 2;

/// One run's durable image, and what its mirror clients did.
struct Run {
    power: Arc<Power>,
    meta_image: Vec<u8>,
    /// Blob GETs the clients sent, and the upstream answered.
    blob_pulls: usize,
    upstream_blob_gets: usize,
    /// Requests that joined a flight in progress (`/metrics`; manifests and blobs).
    followers: u64,
}

/// One run: workload until the cut (or the end), then the durable image.
fn run_once(tmp: &Path, cut_at: u64, seed: u64, up: &Upstream) -> Run {
    let dir = tmp.join("live");
    std::fs::create_dir_all(&dir).expect("live dir");
    let power = Arc::new(Power { root: dir.clone(), img: Mutex::new(Image { cut_at, ..Image::default() }) });
    let gate = {
        let p = power.clone();
        Arc::new(move || p.lock().tick()) as wharfie::meta::SyncGate
    };
    let backend = VolatileBackend::new(Vec::new(), gate);
    let meta = Meta::open_with_backend(backend.clone()).expect("meta on the volatile backend");
    let mut server = start(&dir, &format!("{GC}{}", up.toml()), Some((power.clone(), meta)));
    let upstream_before = up.blob_gets();
    let threads: Vec<_> = (0..3u64)
        .map(|kind| {
            let w = Worker { base: server.base.clone(), power: power.clone(), http: client() };
            std::thread::spawn(move || w.run(kind, seed * 10 + kind, 2))
        })
        .collect();
    let together = Arc::new(Barrier::new(up.images.len() * PULLERS));
    let pullers: Vec<_> = (0..up.images.len() * PULLERS)
        .map(|i| {
            let w = Worker { base: server.base.clone(), power: power.clone(), http: client() };
            let (images, together) = (up.images.clone(), together.clone());
            std::thread::spawn(move || {
                together.wait();
                w.pull(&images[i / PULLERS])
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker");
    }
    let blob_pulls = pullers.into_iter().map(|t| t.join().expect("puller")).sum();
    // The power goes out now if it has not yet: nothing later is durable.
    power.lock().cut = true;
    let metrics = client().get(server.url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    let followers = ops::metric_sum(
        &ops::parse_metrics(&metrics),
        "wharfie_upstream_coalesced_followers_total",
        &[format!("upstream=\"{MIRROR}\"").as_str()],
    ) as u64;
    server.shutdown();
    Run {
        power,
        meta_image: backend.durable_image(),
        blob_pulls,
        upstream_blob_gets: up.blob_gets() - upstream_before,
        followers,
    }
}

#[derive(Default)]
struct Tally {
    checked: u64,
    /// Mirrored manifests and blobs served whole before a cut.
    pulled: u64,
    filled: u64,
    /// Mirrored blobs the reopened server had to fetch again (their fill was cut or had
    /// not started), and tags it resolved from its cache.
    refilled: u64,
    tags_cached: u64,
    /// Blob rows checked against their files; mirrored ones.
    rows: u64,
    mirrored_rows: u64,
    blob_pulls: usize,
    upstream_blob_gets: usize,
    followers: u64,
    lost: Vec<String>,
}

/// Before recovery, on a copy of the durable redb image (`probe`): every blob row not
/// marked deleting names a durable file of its size in `data`.
fn check_rows_before_recovery(meta_image: &[u8], probe: &Path, data: &Path, t: &mut Tally) {
    std::fs::write(probe, meta_image).expect("probe image");
    for (digest, row) in ops::blob_rows_of(probe) {
        if row["deleting"].as_bool() == Some(true) {
            continue;
        }
        let size = row["size"].as_u64().expect("size");
        match std::fs::metadata(ops::blob_path(data, &digest)) {
            Ok(m) if m.len() == size => {}
            Ok(m) => t.lost.push(format!("blob row {digest} ({size} bytes): its file holds {}", m.len())),
            Err(e) => t.lost.push(format!("blob row {digest} ({}): no durable file: {e}", row["origin"])),
        }
    }
}

/// The mirror after the cut, over HTTP; the upstream's request log tells which answers
/// came from the cache.
fn check_mirror(server: &InProc, up: &Upstream, acks: &[Ack], t: &mut Tally) {
    let http = client();
    let get = |p: &str| {
        let r = http.get(server.url(p)).header("accept", OCI_MANIFEST).send().expect("GET");
        (r.status().as_u16(), r.bytes().ok().map(|b| b.to_vec()))
    };
    let whole = |(s, b): &(u16, Option<Vec<u8>>), want: &[u8]| *s == 200 && b.as_deref() == Some(want);
    let describe = |(s, b): &(u16, Option<Vec<u8>>)| match b {
        Some(b) => format!("{s}, {} bytes", b.len()),
        None => format!("{s}, body cut"),
    };
    for a in acks {
        match a {
            Ack::Pulled { .. } => t.pulled += 1,
            Ack::Filled { .. } => t.filled += 1,
            Ack::WrongBytes { what } => {
                t.lost.push(format!("served other bytes than the upstream's: {what}"))
            }
            _ => {}
        }
    }
    for img in up.images.iter() {
        let pulled = acks.iter().any(|a| matches!(a, Ack::Pulled { repo } if *repo == img.local));
        let by_tag = format!("/v2/{}/manifests/{}", img.local, img.tag);
        let by_digest = format!("/v2/{}/manifests/{}", img.local, img.digest);
        let n = up.manifest_calls();
        let got = get(&by_tag);
        if !whole(&got, &img.body) {
            t.lost.push(format!("mirrored {by_tag} after the cut: {}", describe(&got)));
            continue;
        }
        let cached = up.manifest_calls() == n;
        if pulled && !cached {
            t.lost.push(format!("mirrored {by_tag}, served before the cut, was fetched again"));
        }
        let n = up.manifest_calls();
        let got = get(&by_digest);
        if !whole(&got, &img.body) {
            t.lost.push(format!("mirrored {by_digest} after the cut: {}", describe(&got)));
        }
        if cached {
            t.tags_cached += 1;
            if up.manifest_calls() != n {
                t.lost.push(format!("{by_tag} resolves from the cache but its digest was fetched again"));
            }
        }
        for (digest, bytes) in &img.blobs {
            let filled = acks
                .iter()
                .any(|a| matches!(a, Ack::Filled { repo, digest: d } if *repo == img.local && d == digest));
            let path = format!("/v2/{}/blobs/{digest}", img.local);
            let n = up.blob_gets();
            let r = http.head(server.url(&path)).send().expect("HEAD");
            let len = r.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            if r.status().as_u16() != 200 || len != Some(bytes.len()) {
                t.lost.push(format!(
                    "HEAD {path} after the cut: {}, length {len:?}, not {}",
                    r.status().as_u16(),
                    bytes.len()
                ));
            }
            let got = get(&path);
            if !whole(&got, bytes) {
                t.lost.push(format!(
                    "GET {path} after the cut: {}, not {} bytes",
                    describe(&got),
                    bytes.len()
                ));
            }
            if up.blob_gets() > n {
                t.refilled += 1;
                if filled {
                    t.lost.push(format!(
                        "blob {digest} of {}, filled before the cut, was fetched again",
                        img.local
                    ));
                }
            }
        }
    }
    // Everything is cached now, so a second pull asks the upstream nothing.
    let n = up.fake.total();
    for img in up.images.iter() {
        for (path, want) in [
            (format!("/v2/{}/manifests/{}", img.local, img.tag), &img.body),
            (format!("/v2/{}/manifests/{}", img.local, img.digest), &img.body),
        ]
        .into_iter()
        .chain(img.blobs.iter().map(|(d, b)| (format!("/v2/{}/blobs/{d}", img.local), b)))
        {
            let got = get(&path);
            if !whole(&got, want) {
                t.lost.push(format!("second pull of {path} after the cut: {}", describe(&got)));
            }
        }
    }
    if up.fake.total() != n {
        t.lost
            .push(format!("the second pull after the cut asked the upstream {} times", up.fake.total() - n));
    }
}

/// On disk, once the server is stopped: every blob file hashes to its name, every blob
/// row names a file of its size, and no fill staging is left.
fn check_files(data: &Path, t: &mut Tally) {
    let files = ops::blob_files(data);
    for (digest, path) in &files {
        let got = ops::sha256_file(path);
        if &got != digest {
            let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            t.lost.push(format!("blob file {digest} holds other bytes ({len} bytes)"));
        }
    }
    for (digest, row) in ops::blob_rows(data) {
        if row["deleting"].as_bool() == Some(true) {
            continue;
        }
        t.rows += 1;
        if row["origin"] == "mirrored" {
            t.mirrored_rows += 1;
        }
        let size = row["size"].as_u64().expect("size");
        match files.get(&digest).map(std::fs::metadata) {
            Some(Ok(m)) if m.len() == size => {}
            Some(Ok(m)) => {
                t.lost.push(format!("blob row {digest} ({size} bytes): its file holds {}", m.len()))
            }
            _ => t.lost.push(format!("blob row {digest} ({}): no file", row["origin"])),
        }
    }
    for e in std::fs::read_dir(data.join("uploads")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("fill-") {
            t.lost.push(format!("fill staging {name} left behind"));
        }
    }
}

fn check(server: &InProc, acks: &[Ack], t: &mut Tally) {
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
            Ack::Manifest { .. }
            | Ack::DeleteSent { .. }
            | Ack::Pulled { .. }
            | Ack::Filled { .. }
            | Ack::WrongBytes { .. } => {}
        }
    }
}

/// A run's scratch directory. The model, not the disk, decides what is durable, so a
/// real fsync only costs time (on ext4, about three quarters of a cut): the scratch
/// lives in tmpfs when there is one.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn acknowledged_writes_survive_a_power_cut_at_any_sync_point() {
    let started = Instant::now();
    let up = Upstream::start();
    // Calibrate: how many sync points a whole run has.
    let tmp = scratch();
    let total = run_once(tmp.path(), u64::MAX, 1, &up).power.lock().syncs;
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
        let tmp = scratch();
        let run = run_once(tmp.path(), cut_at, cuts + 2, &up);
        t.blob_pulls += run.blob_pulls;
        t.upstream_blob_gets += run.upstream_blob_gets;
        t.followers += run.followers;
        let (power, meta_image) = (run.power, run.meta_image);
        let after = tmp.path().join("after");
        std::fs::create_dir_all(&after).expect("after dir");
        let img = power.lock();
        rebuild(&img, Path::new(""), &after);
        let before = t.lost.len();
        // redb makes a new file valid (its magic number) only at its second sync: a cut
        // at the first leaves a file redb refuses to open. Known, reported: a power cut
        // during the very first start needs meta.redb removed by hand. Counted apart.
        if !meta_image.starts_with(b"redb") {
            creation_cuts += 1;
        } else {
            check_rows_before_recovery(&meta_image, &tmp.path().join("probe.redb"), &after, &mut t);
            std::fs::write(after.join("meta.redb"), &meta_image).expect("meta image");
        }
        let acks = img.acks.clone();
        drop(img);
        let mut server = start(&after, &up.toml(), None);
        for e in std::fs::read_dir(after.join("uploads")).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("fill-") {
                t.lost.push(format!("fill staging {name} survived recovery"));
            }
        }
        check(&server, &acks, &mut t);
        check_mirror(&server, &up, &acks, &mut t);
        server.shutdown();
        check_files(&after, &mut t);
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
    eprintln!(
        "power_loss: mirror: {} manifests and {} blobs served whole before the cuts; {} blob pulls \
         took {} upstream GETs ({} coalesced followers); after the cuts {} blobs refilled, {} tags \
         resolved from the cache, {} blob rows checked ({} mirrored)",
        t.pulled,
        t.filled,
        t.blob_pulls,
        t.upstream_blob_gets,
        t.followers,
        t.refilled,
        t.tags_cached,
        t.rows,
        t.mirrored_rows
    );
    assert!(cuts >= 20, "only {cuts} cuts before the deadline");
    assert!(t.filled > 0 && t.refilled > 0, "no fill completed before a cut, or none was cut");
    assert!(t.upstream_blob_gets < t.blob_pulls, "no blob pull was coalesced or served from the cache");
    assert!(
        t.lost.is_empty(),
        "{} acknowledged writes lost or partial: {:?}",
        t.lost.len(),
        &t.lost[..t.lost.len().min(10)]
    );
}
