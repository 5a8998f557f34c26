//! The pull-through mirror (issue 3, DESIGN.md "Mirror"), tested against the real
//! `wharfie` binary in front of a small, real HTTP upstream written for these tests
//! (tests/support/src/mirror/upstream.rs): it counts every request by method and kind,
//! and misbehaves on demand — 500s, 429 with `Retry-After`, a connection cut
//! mid-body, wrong bytes for a digest, a throttled body, a stall.
//!
//! Concurrency is lined up, never slept into place: the upstream holds its answers
//! (a gate) until wharfie's `/metrics` shows that every client has joined the one
//! flight, then lets them go. The only sleeps that matter are tag-TTL expiries
//! (`tag_ttl = "1s"`, then 1.5 s), which are the behaviour under test, not races.
//!
//! At the end of the file: real upstream and real clients — Debian's
//! `docker-registry` as the upstream, skopeo (by path prefix) and containerd's `ctr`
//! (by `?ns=docker.io`, through a hosts.toml mirror) pulling through wharfie.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use common::{bytes_of, hex_lower, oci_code, sha256, Wharfie};
use mirror::real;
use mirror::upstream::{FakeUpstream, Kind};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// The blob size of the coalescing tests.
const BLOB: usize = 4 << 20;
/// The throttled upstream: 64 KiB every 20 ms (4 MiB in about 1.3 s).
const THROTTLE: (usize, Duration) = (64 * 1024, Duration::from_millis(20));

// ---------------------------------------------------------------------------
// wharfie as a mirror
// ---------------------------------------------------------------------------

/// One `[[upstreams]]` table.
#[derive(Clone)]
struct Up {
    name: &'static str,
    url: String,
    tag_ttl: &'static str,
    timeout: &'static str,
    offline: bool,
    default: bool,
    credentials: Option<(&'static str, &'static str)>,
}

impl Up {
    fn new(name: &'static str, url: String) -> Up {
        Up { name, url, tag_ttl: "5m", timeout: "20s", offline: false, default: false, credentials: None }
    }

    fn ttl(mut self, t: &'static str) -> Up {
        self.tag_ttl = t;
        self
    }

    fn timeout(mut self, t: &'static str) -> Up {
        self.timeout = t;
        self
    }

    fn offline(mut self) -> Up {
        self.offline = true;
        self
    }

    fn default_upstream(mut self) -> Up {
        self.default = true;
        self
    }

    fn credentials(mut self, user: &'static str, password: &'static str) -> Up {
        self.credentials = Some((user, password));
        self
    }
}

fn config_toml(ups: &[Up]) -> String {
    let mut s = String::new();
    for u in ups {
        s.push_str(&format!(
            "[[upstreams]]\nname = \"{}\"\nurl = \"{}\"\ntag_ttl = \"{}\"\ntimeout = \"{}\"\n\
             offline = {}\nstale_if_error = true\ndefault = {}\n\n",
            u.name, u.url, u.tag_ttl, u.timeout, u.offline, u.default
        ));
        if let Some((user, pw)) = u.credentials {
            s.push_str(&format!("username = \"{user}\"\npassword = \"{pw}\"\n\n"));
        }
    }
    s
}

/// A wharfie serving as a mirror, with its config and data in one temp dir.
struct Mirror {
    w: Wharfie,
    tmp: tempfile::TempDir,
}

impl Mirror {
    fn start(ups: &[Up]) -> Mirror {
        let tmp = tempfile::tempdir().expect("tempdir");
        let w = Self::spawn(&tmp, ups);
        Mirror { w, tmp }
    }

    fn spawn(tmp: &tempfile::TempDir, ups: &[Up]) -> Wharfie {
        let cfg = tmp.path().join("wharfie.toml");
        std::fs::write(&cfg, config_toml(ups)).expect("write config");
        let cfg = cfg.display().to_string();
        Wharfie::start_with_env(&tmp.path().join("data"), &["--config", &cfg], &[])
    }

    /// Stop, and start again on the same data directory with another configuration.
    fn restart(&mut self, ups: &[Up]) {
        self.w.stop();
        self.w = Self::spawn(&self.tmp, ups);
    }

    /// SIGKILL, and start again on the same data directory.
    fn crash_restart(&mut self, ups: &[Up]) {
        self.w.kill();
        self.w = Self::spawn(&self.tmp, ups);
    }

    fn url(&self, path: &str) -> String {
        self.w.url(path)
    }

    fn get(&self, path: &str) -> Resp {
        request(&self.url(path), "GET")
    }

    fn head(&self, path: &str) -> Resp {
        request(&self.url(path), "HEAD")
    }

    fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics");
        Metrics::parse(&String::from_utf8_lossy(&r.body))
    }

    fn blob_files(&self) -> usize {
        self.w.blob_files()
    }

    fn staging_entries(&self) -> usize {
        self.w.staging_entries()
    }
}

/// A response read whole (or as far as the connection went).
struct Resp {
    status: u16,
    content_type: String,
    digest: String,
    content_length: Option<u64>,
    body: Vec<u8>,
    /// Set when reading the body failed (connection aborted, truncated body).
    body_error: Option<String>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(90))
        .no_proxy()
        .build()
        .expect("http client")
}

fn request(url: &str, method: &str) -> Resp {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let resp = http()
        .request(m, url)
        .header("Accept", ACCEPT_ALL)
        .send()
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let h = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let (content_type, digest) = (h("content-type"), h("docker-content-digest"));
    // Not `resp.content_length()`: reqwest reports a HEAD response's (empty) body size there.
    let content_length = h("content-length").parse::<u64>().ok();
    let mut body = Vec::new();
    let mut resp = resp;
    let body_error = std::io::Read::read_to_end(&mut resp, &mut body).err().map(|e| e.to_string());
    Resp { status, content_type, digest, content_length, body, body_error }
}

/// Counters from `/metrics`.
struct Metrics(HashMap<String, u64>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut m = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            if let Some((k, v)) = line.rsplit_once(' ') {
                if let Ok(v) = v.trim().parse::<f64>() {
                    m.insert(k.trim().to_string(), v as u64);
                }
            }
        }
        Metrics(m)
    }

    fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    fn hits(&self) -> u64 {
        self.get("wharfie_cache_hits_total")
    }

    fn misses(&self) -> u64 {
        self.get("wharfie_cache_misses_total")
    }

    fn followers(&self) -> u64 {
        self.get("wharfie_coalesced_followers_total")
    }

    fn stale(&self) -> u64 {
        self.get("wharfie_stale_served_total")
    }

    /// `wharfie_upstream_requests_total` for (upstream, kind), summed over statuses
    /// (or of one status).
    fn upstream(&self, upstream: &str, kind: &str, status: Option<u16>) -> u64 {
        let prefix = format!("wharfie_upstream_requests_total{{upstream=\"{upstream}\",kind=\"{kind}\",");
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| status.is_none_or(|s| k.ends_with(&format!("status=\"{s}\"}}"))))
            .map(|(_, v)| *v)
            .sum()
    }
}

/// Poll `cond` (a few ms apart) until it holds; fail after `limit`.
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An OCI image manifest naming `config` and `layers` (digest, size); `note` makes it unique.
fn image_manifest(config: (&str, usize), layers: &[(&str, usize)], note: &str) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, s)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}))
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers,
        "annotations": {"org.example.note": note},
    }))
    .unwrap()
}

/// A small image in the upstream under `repo:tag`: (manifest digest, manifest bytes, layer digest, layer bytes).
fn small_image(up: &FakeUpstream, repo: &str, tag: &str, seed: u64) -> (String, Vec<u8>, String, Vec<u8>) {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}").into_bytes();
    let layer = bytes_of(100_000 + seed as usize, seed);
    let cd = up.add_blob(config.clone());
    let ld = up.add_blob(layer.clone());
    let mb = image_manifest((&cd, config.len()), &[(&ld, layer.len())], &format!("{repo}:{tag}:{seed}"));
    let md = up.add_manifest(repo, Some(tag), OCI_MANIFEST, &mb);
    (md, mb, ld, layer)
}

// ---------------------------------------------------------------------------
// Many concurrent clients (async, on their own runtime)
// ---------------------------------------------------------------------------

/// What one concurrent client saw.
#[derive(Debug)]
struct Got {
    status: u16,
    len: usize,
    sha: String,
    digest_header: String,
    first_byte: Option<Instant>,
    error: Option<String>,
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime")
}

fn async_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(120)).build().expect("async client")
}

async fn fetch(client: reqwest::Client, url: String) -> Got {
    let resp = match client.get(&url).header("Accept", ACCEPT_ALL).send().await {
        Ok(r) => r,
        Err(e) => {
            return Got {
                status: 0,
                len: 0,
                sha: String::new(),
                digest_header: String::new(),
                first_byte: None,
                error: Some(e.to_string()),
            }
        }
    };
    let status = resp.status().as_u16();
    let digest_header =
        resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut resp = resp;
    let (mut h, mut len, mut first_byte, mut error) = (Sha256::new(), 0, None, None);
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if first_byte.is_none() && !c.is_empty() {
                    first_byte = Some(Instant::now());
                }
                len += c.len();
                h.update(&c);
            }
            Ok(None) => break,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Got { status, len, sha: format!("sha256:{}", hex_lower(&h.finalize())), digest_header, first_byte, error }
}

/// Start `n` concurrent GETs of `url`.
fn spawn_gets(rt: &tokio::runtime::Runtime, url: &str, n: usize) -> Vec<tokio::task::JoinHandle<Got>> {
    let client = async_client();
    (0..n).map(|_| rt.spawn(fetch(client.clone(), url.to_string()))).collect()
}

fn join_all(rt: &tokio::runtime::Runtime, handles: Vec<tokio::task::JoinHandle<Got>>) -> Vec<Got> {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.expect("client task"));
            }
            out
        })
        .await
        .expect("concurrent clients did not finish within 120 s")
    })
}

/// N concurrent cold GETs of one 4 MiB blob, lined up on the upstream's gate.
/// Returns (first-byte offsets after release, upstream completion after release).
fn cold_blob_round(
    m: &Mirror,
    up: &FakeUpstream,
    rt: &tokio::runtime::Runtime,
    n: usize,
    seed: u64,
    throttle: bool,
) -> (Vec<Duration>, Option<Duration>) {
    let data = bytes_of(BLOB, seed);
    let digest = up.add_blob(data.clone());
    up.faults(|f| f.throttle = throttle.then_some(THROTTLE));
    let before = m.metrics();
    let gets = up.count("GET", Kind::Blob);
    let url = m.url(&format!("/v2/docker.io/library/app/blobs/{digest}"));

    up.hold();
    let handles = spawn_gets(rt, &url, n);
    wait_until(&format!("{n} clients to join one fill"), Duration::from_secs(60), || {
        let now = m.metrics();
        now.misses() - before.misses() >= n as u64 && now.followers() - before.followers() >= n as u64 - 1
    });
    let released = Instant::now();
    up.release();
    let got = join_all(rt, handles);

    let label = format!("N={n} throttled={throttle}");
    assert_eq!(
        up.count("GET", Kind::Blob) - gets,
        1,
        "{label}: upstream blob GETs for {n} concurrent cold clients; upstream log: {}",
        up.summary()
    );
    let last = up.requests().into_iter().rev().find(|l| l.kind == Kind::Blob).expect("a blob request");
    assert_eq!(last.path, format!("/v2/library/app/blobs/{digest}"), "{label}: the upstream path");
    assert_eq!(m.metrics().followers() - before.followers(), n as u64 - 1, "{label}: coalesced followers");
    for (i, g) in got.iter().enumerate() {
        assert!(g.error.is_none(), "{label}: client {i}: {:?}", g.error);
        assert_eq!(g.status, 200, "{label}: client {i} status");
        assert_eq!(g.len, BLOB, "{label}: client {i} body length");
        assert_eq!(g.sha, digest, "{label}: client {i} body sha256");
    }
    let firsts: Vec<Duration> =
        got.iter().map(|g| g.first_byte.expect("a first byte").duration_since(released)).collect();
    let done = up.blob_done(&digest).map(|t| t.duration_since(released));
    if throttle {
        let done_at = up.blob_done(&digest).expect("the upstream finished sending the blob");
        for (i, g) in got.iter().enumerate() {
            let fb = g.first_byte.expect("first byte");
            assert!(
                fb < done_at,
                "{label}: client {i}'s first byte came {:?} after release, not before the upstream \
                 finished sending ({:?} after release)",
                fb.duration_since(released),
                done_at.duration_since(released)
            );
        }
    }
    let mut sorted = firsts.clone();
    sorted.sort();
    eprintln!(
        "{label}: 1 upstream GET; first byte after release: median {:?}, max {:?}; upstream send complete {:?}",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        done
    );
    (firsts, done)
}

fn cold_blob_test(n: usize) {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    let rt = client_runtime();
    cold_blob_round(&m, &up, &rt, n, 1000 + n as u64, false);
    cold_blob_round(&m, &up, &rt, n, 2000 + n as u64, true);
    // Both blobs are cached now: another GET costs no upstream request.
    let before = up.total();
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{}", sha256(&bytes_of(BLOB, 1000 + n as u64))));
    assert_eq!((r.status, r.body.len()), (200, BLOB), "warm GET");
    assert_eq!(up.total(), before, "a warm GET went upstream: {}", up.summary());
    assert_eq!(m.staging_entries(), 0, "staging left behind after the fills committed");
}

// ---------------------------------------------------------------------------
// 1. Cold blobs: one upstream GET, every client streaming
// ---------------------------------------------------------------------------

#[test]
fn cold_blob_one_client_one_upstream_get() {
    cold_blob_test(1);
}

#[test]
fn cold_blob_10_clients_one_upstream_get() {
    cold_blob_test(10);
}

#[test]
fn cold_blob_100_clients_one_upstream_get() {
    cold_blob_test(100);
}

/// A follower that joins a fill after it has passed the fill's memory window (8 MiB of
/// recent chunks that readers keeping up take without reading the file) reads the staging
/// file up to the window, then memory: every byte arrives, in order, verified.
#[test]
fn a_follower_far_behind_the_fill_reads_the_file_then_catches_up() {
    const SIZE: usize = 24 << 20;
    const PAUSE_AT: usize = 16 << 20;
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    let rt = client_runtime();
    let data = bytes_of(SIZE, 4242);
    let digest = up.add_blob(data);
    up.faults(|f| f.pause_blob_after = Some(PAUSE_AT));
    let url = m.url(&format!("/v2/docker.io/library/app/blobs/{digest}"));
    let first = spawn_gets(&rt, &url, 1);
    // The upstream stops at 16 MiB; wait until the fill has written all of it to staging.
    let staged = || -> u64 {
        let Ok(dirs) = std::fs::read_dir(m.tmp.path().join("data").join("uploads")) else { return 0 };
        dirs.flatten()
            .filter_map(|d| std::fs::metadata(d.path().join("data")).ok())
            .map(|md| md.len())
            .max()
            .unwrap_or(0)
    };
    wait_until("the upstream to pause and the fill to stage 16 MiB", Duration::from_secs(60), || {
        up.paused() && staged() >= PAUSE_AT as u64
    });
    let before = m.metrics();
    let late = spawn_gets(&rt, &url, 1);
    wait_until("the late client to join the fill", Duration::from_secs(30), || {
        m.metrics().followers() - before.followers() >= 1
    });
    up.release();
    let got = join_all(&rt, first.into_iter().chain(late).collect());
    for (i, g) in got.iter().enumerate() {
        assert!(g.error.is_none(), "client {i}: {:?}", g.error);
        assert_eq!((g.status, g.len), (200, SIZE), "client {i}: status and length");
        assert_eq!(g.sha, digest, "client {i}: body sha256");
    }
    assert_eq!(up.count("GET", Kind::Blob), 1, "one upstream GET: {}", up.summary());
}

/// HEAD of a cold blob answers with its size and joins (or starts) the fill; the GETs
/// that follow make no second upstream GET.
#[test]
fn cold_blob_head_then_get_one_upstream_get() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    let data = bytes_of(300_000, 77);
    let d = up.add_blob(data.clone());
    let h = m.head(&format!("/v2/docker.io/library/app/blobs/{d}"));
    assert_eq!(h.status, 200, "HEAD of a cold blob");
    assert_eq!(h.content_length, Some(data.len() as u64), "Content-Length of HEAD of a cold blob");
    let g = m.get(&format!("/v2/docker.io/library/app/blobs/{d}"));
    assert_eq!(g.status, 200);
    assert!(g.body == data, "GET after HEAD: wrong bytes");
    assert_eq!(up.count("GET", Kind::Blob), 1, "upstream blob GETs: {}", up.summary());
    assert_eq!(up.count("HEAD", Kind::Blob), 0, "upstream blob HEADs: {}", up.summary());
}

// ---------------------------------------------------------------------------
// 2. Manifests by tag and by digest; crosslink
// ---------------------------------------------------------------------------

#[test]
fn cold_manifests_by_tag_and_digest_one_upstream_get_then_crosslinked() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    let rt = client_runtime();
    let cfg = bytes_of(500, 1);
    let cd = up.add_blob(cfg.clone());
    for n in [1usize, 10, 100] {
        // By tag.
        let tag = format!("t{n}");
        let mb = image_manifest((&cd, cfg.len()), &[], &format!("tag {n}"));
        let md = up.add_manifest("library/app", Some(&tag), OCI_MANIFEST, &mb);
        let (gets, heads, before) =
            (up.count("GET", Kind::Manifest), up.count("HEAD", Kind::Manifest), m.metrics());
        up.hold();
        let handles = spawn_gets(&rt, &m.url(&format!("/v2/docker.io/library/app/manifests/{tag}")), n);
        wait_until(&format!("{n} tag clients to miss the cache"), Duration::from_secs(60), || {
            m.metrics().misses() - before.misses() >= n as u64
        });
        up.release();
        let got = join_all(&rt, handles);
        assert_eq!(
            up.count("GET", Kind::Manifest) - gets,
            1,
            "N={n}: upstream manifest GETs for a cold tag: {}",
            up.summary()
        );
        assert_eq!(up.count("HEAD", Kind::Manifest) - heads, 0, "N={n}: upstream manifest HEADs");
        for (i, g) in got.iter().enumerate() {
            assert_eq!((g.status, g.error.as_deref()), (200, None), "N={n}: tag client {i}");
            assert_eq!(g.sha, md, "N={n}: tag client {i}'s manifest bytes");
            assert_eq!(g.digest_header, md, "N={n}: tag client {i}'s Docker-Content-Digest");
        }
        assert_eq!(m.metrics().followers() - before.followers(), n as u64 - 1, "N={n}: coalesced followers");

        // Crosslink: by digest after the tag pull, no upstream request.
        let total = up.total();
        let r = m.get(&format!("/v2/docker.io/library/app/manifests/{md}"));
        assert_eq!(r.status, 200, "GET by digest after a tag pull");
        assert!(r.body == mb, "GET by digest after a tag pull: wrong bytes");
        assert_eq!(r.content_type, OCI_MANIFEST, "Content-Type by digest");
        assert_eq!(up.total(), total, "GET by digest after a tag pull went upstream: {}", up.summary());

        // By digest, cold.
        let mb2 = image_manifest((&cd, cfg.len()), &[], &format!("digest {n}"));
        let md2 = up.add_manifest("library/app", None, OCI_MANIFEST, &mb2);
        let (gets, before) = (up.count("GET", Kind::Manifest), m.metrics());
        up.hold();
        let handles = spawn_gets(&rt, &m.url(&format!("/v2/docker.io/library/app/manifests/{md2}")), n);
        wait_until(&format!("{n} digest clients to miss the cache"), Duration::from_secs(60), || {
            m.metrics().misses() - before.misses() >= n as u64
        });
        up.release();
        let got = join_all(&rt, handles);
        assert_eq!(
            up.count("GET", Kind::Manifest) - gets,
            1,
            "N={n}: upstream manifest GETs for a cold digest: {}",
            up.summary()
        );
        for (i, g) in got.iter().enumerate() {
            assert_eq!((g.status, g.error.as_deref()), (200, None), "N={n}: digest client {i}");
            assert_eq!(g.sha, md2, "N={n}: digest client {i}'s manifest bytes");
        }
        eprintln!("manifests N={n}: 1 upstream GET by tag, 1 by digest, 0 for the crosslinked digest");
    }
    assert_eq!(up.count("HEAD", Kind::Manifest), 0, "no HEADs within tag_ttl: {}", up.summary());
}

// ---------------------------------------------------------------------------
// 3. Tag freshness
// ---------------------------------------------------------------------------

/// Within `tag_ttl` a tag costs nothing upstream (and the last check survives a restart).
#[test]
fn tag_within_ttl_is_served_without_upstream_requests() {
    let up = FakeUpstream::start();
    let ups = [Up::new("docker.io", up.url()).ttl("5m")];
    let mut m = Mirror::start(&ups);
    let (md, mb, _, _) = small_image(&up, "library/app", "v1", 1);
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "first pull");
    assert_eq!(up.total(), 1, "the first pull: {}", up.summary());
    let hits = m.metrics().hits();
    for i in 0..5 {
        let r = m.get("/v2/docker.io/library/app/manifests/v1");
        assert_eq!(r.status, 200, "warm GET {i}");
        assert!(r.body == mb, "warm GET {i}: bytes");
        let h = m.head("/v2/docker.io/library/app/manifests/v1");
        assert_eq!((h.status, h.digest.as_str()), (200, md.as_str()), "warm HEAD {i}");
    }
    assert_eq!(up.total(), 1, "warm tag requests within tag_ttl went upstream: {}", up.summary());
    assert_eq!(m.metrics().hits() - hits, 10, "cache hits for 5 GETs + 5 HEADs");

    m.restart(&ups);
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "after a restart");
    assert_eq!(up.total(), 1, "a fresh tag went upstream after a restart: {}", up.summary());
}

/// After `tag_ttl`: one HEAD; an unchanged digest costs no GET, a changed one a GET.
#[test]
fn tag_after_ttl_is_revalidated_with_one_head() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url()).ttl("1s")]);
    let (md, mb, _, _) = small_image(&up, "library/app", "v1", 2);
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "first pull");
    assert_eq!((up.count("GET", Kind::Manifest), up.count("HEAD", Kind::Manifest)), (1, 0));

    // The TTL (1 s, whole seconds) runs out.
    std::thread::sleep(Duration::from_millis(1500));
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    assert_eq!(r.status, 200, "after tag_ttl, unchanged");
    assert!(r.body == mb, "after tag_ttl, unchanged: bytes");
    assert_eq!(
        (up.count("GET", Kind::Manifest), up.count("HEAD", Kind::Manifest)),
        (1, 1),
        "after tag_ttl with the digest unchanged: expected exactly 1 HEAD and no new GET: {}",
        up.summary()
    );
    let head = up.requests().into_iter().find(|l| l.method == "HEAD").expect("the HEAD");
    assert_eq!(head.path, "/v2/library/app/manifests/v1", "the revalidation HEAD's path");

    // The tag moves upstream.
    let (md2, mb2, _, _) = small_image(&up, "library/app", "v1", 3);
    assert_ne!(md, md2);
    std::thread::sleep(Duration::from_millis(1500));
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    assert_eq!((r.status, r.digest.as_str()), (200, md2.as_str()), "after tag_ttl, changed upstream");
    assert!(r.body == mb2, "after tag_ttl, changed: the new manifest's bytes");
    assert_eq!(
        (up.count("GET", Kind::Manifest), up.count("HEAD", Kind::Manifest)),
        (2, 2),
        "a changed digest: expected 1 more HEAD and 1 more GET: {}",
        up.summary()
    );
    // The old manifest stays reachable by digest, from the cache.
    let total = up.total();
    let r = m.get(&format!("/v2/docker.io/library/app/manifests/{md}"));
    assert_eq!(r.status, 200, "the old digest");
    assert_eq!(up.total(), total, "the old digest went upstream: {}", up.summary());
}

// ---------------------------------------------------------------------------
// 4. The first client hangs up mid-fill
// ---------------------------------------------------------------------------

#[test]
fn fill_completes_after_the_first_client_hangs_up() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    up.faults(|f| f.throttle = Some(THROTTLE));
    let data = bytes_of(BLOB, 4);
    let d = up.add_blob(data.clone());
    let files = m.blob_files();
    {
        let mut resp = http()
            .get(m.url(&format!("/v2/docker.io/library/app/blobs/{d}")))
            .send()
            .expect("GET the cold blob");
        assert_eq!(resp.status().as_u16(), 200);
        let mut buf = [0u8; 1024];
        let n = std::io::Read::read(&mut resp, &mut buf).expect("the first chunk");
        assert!(n > 0 && buf[..n] == data[..n], "the first chunk");
        // Dropped here: the client hangs up with most of the blob still to come.
    }
    assert!(up.blob_done(&d).is_none(), "the upstream finished before the client hung up: throttle too fast");
    wait_until("the upstream to send the whole blob", Duration::from_secs(60), || up.blob_done(&d).is_some());
    wait_until("the fill to commit the blob file", Duration::from_secs(30), || m.blob_files() == files + 1);
    // The file is renamed into place just before the metadata commit; until that
    // commit a request still joins the fill. Once a HEAD counts as a cache hit the
    // blob is committed.
    let total = up.total();
    wait_until("a HEAD of the blob to be a cache hit", Duration::from_secs(30), || {
        let hits = m.metrics().hits();
        let h = m.head(&format!("/v2/docker.io/library/app/blobs/{d}"));
        assert_eq!(h.status, 200, "HEAD after the fill");
        m.metrics().hits() > hits
    });
    let hits = m.metrics().hits();
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{d}"));
    assert_eq!(r.status, 200, "GET after the fill");
    assert!(r.body == data, "GET after the fill: bytes");
    assert_eq!(up.total(), total, "GET after the fill went upstream: {}", up.summary());
    assert_eq!(up.count("GET", Kind::Blob), 1, "upstream blob GETs: {}", up.summary());
    assert_eq!(m.metrics().hits() - hits, 1, "the later GET is a cache hit");
}

// ---------------------------------------------------------------------------
// 5. Upstream down; offline
// ---------------------------------------------------------------------------

#[test]
fn upstream_down_serves_cached_and_fails_clearly_for_the_rest_then_offline() {
    let mut up = FakeUpstream::start();
    let mut m = Mirror::start(&[Up::new("docker.io", up.url()).ttl("1s").timeout("2s")]);
    let (md, mb, ld, layer) = small_image(&up, "library/app", "v1", 5);
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "pull while up");
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{ld}"));
    assert!(r.status == 200 && r.body == layer, "layer while up");
    let (_, _, uncached_layer, _) = small_image(&up, "library/app", "never", 6);

    // A failing upstream (500s until the 2 s timeout): the cached tag is served.
    up.faults(|f| f.fail_500 = 1_000);
    std::thread::sleep(Duration::from_millis(1500)); // tag_ttl runs out
    let stale = m.metrics().stale();
    let t = Instant::now();
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    let took = t.elapsed();
    assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "cached tag, upstream answering 500");
    assert!(took < Duration::from_secs(10), "serving a stale tag took {took:?} (upstream timeout 2 s)");
    assert_eq!(m.metrics().stale() - stale, 1, "wharfie_stale_served_total after 500s");
    assert!(up.count("HEAD", Kind::Manifest) >= 2, "the HEAD was retried: {}", up.summary());

    // The upstream goes away (connections refused); the tag is still expired.
    up.stop();
    let stale = m.metrics().stale();
    let t = Instant::now();
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    let took = t.elapsed();
    assert_eq!(r.status, 200, "cached tag with the upstream down: {}", r.text());
    assert!(r.body == mb, "cached tag with the upstream down: bytes");
    assert_eq!(r.digest, md);
    assert!(took < Duration::from_secs(10), "serving a stale tag took {took:?} (upstream timeout 2 s)");
    assert_eq!(m.metrics().stale() - stale, 1, "wharfie_stale_served_total");
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{ld}"));
    assert!(r.status == 200 && r.body == layer, "cached blob with the upstream down");

    for path in [
        "/v2/docker.io/library/app/manifests/never".to_string(),
        format!("/v2/docker.io/library/app/blobs/{uncached_layer}"),
    ] {
        let t = Instant::now();
        let r = m.get(&path);
        let took = t.elapsed();
        assert_eq!(r.status, 503, "GET {path} never cached, upstream down: {}", r.text());
        assert_eq!(oci_code(&r.text()), "UNAVAILABLE", "GET {path}");
        assert!(took < Duration::from_secs(10), "GET {path} took {took:?} to fail (upstream timeout 2 s)");
        eprintln!("upstream down: GET {path} -> 503 in {took:?}: {}", r.text());
    }

    // offline = true: a running (counting) upstream is never contacted.
    let up2 = FakeUpstream::start();
    let (_, _, other_layer, _) = small_image(&up2, "library/app", "never", 6);
    let _ = small_image(&up2, "library/app", "v1", 5);
    m.restart(&[Up::new("docker.io", up2.url()).ttl("1s").offline()]);
    std::thread::sleep(Duration::from_millis(1100)); // any TTL is irrelevant offline
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "offline: cached tag");
    let r = m.get(&format!("/v2/docker.io/library/app/manifests/{md}"));
    assert_eq!(r.status, 200, "offline: cached digest");
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{ld}"));
    assert!(r.status == 200 && r.body == layer, "offline: cached blob");
    let r = m.get("/v2/docker.io/library/app/manifests/never");
    assert_eq!((r.status, oci_code(&r.text()).as_str()), (404, "MANIFEST_UNKNOWN"), "offline: uncached tag");
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{other_layer}"));
    assert_eq!((r.status, oci_code(&r.text()).as_str()), (404, "BLOB_UNKNOWN"), "offline: uncached blob");
    let r = m.get(&format!("/v2/docker.io/library/app/manifests/{}", sha256(b"nope")));
    assert_eq!(
        (r.status, oci_code(&r.text()).as_str()),
        (404, "MANIFEST_UNKNOWN"),
        "offline: uncached digest"
    );
    assert!(up2.requests().is_empty(), "offline upstream was contacted: {}", up2.summary());
}

/// An upstream that accepts connections and never answers: a cached tag is still
/// served, an uncached one fails, both within the upstream's `timeout` (plus slack),
/// not after the HTTP client's own read timeout.
#[test]
fn stalled_upstream_is_bounded_by_the_upstream_timeout() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url()).ttl("1s").timeout("2s")]);
    let (md, _, _, _) = small_image(&up, "library/app", "v1", 8);
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    assert_eq!(r.status, 200);
    up.faults(|f| f.stall = true);
    std::thread::sleep(Duration::from_millis(1500)); // tag_ttl runs out
                                                     // Both at once, so a server that waits out its HTTP client's read timeout costs that once.
    let timed = |path: &'static str| {
        let url = m.url(path);
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = request(&url, "GET");
            (r, t.elapsed())
        })
    };
    let (a, b) =
        (timed("/v2/docker.io/library/app/manifests/v1"), timed("/v2/docker.io/library/app/manifests/other"));
    let (r, stale_took) = a.join().expect("client thread");
    let (r2, fail_took) = b.join().expect("client thread");
    eprintln!("stalled upstream: stale tag served in {stale_took:?}, uncached tag failed in {fail_took:?}");
    assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "cached tag, stalled upstream");
    assert!(
        stale_took < Duration::from_secs(8),
        "a cached tag took {stale_took:?} with a stalled upstream (timeout = 2s)"
    );
    assert_eq!(r2.status, 503, "uncached tag, stalled upstream: {}", r2.text());
    assert!(
        fail_took < Duration::from_secs(8),
        "an uncached tag took {fail_took:?} to fail with a stalled upstream (timeout = 2s)"
    );
}

// ---------------------------------------------------------------------------
// 6. Faults
// ---------------------------------------------------------------------------

#[test]
fn upstream_500s_are_retried() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    let (md, mb, ld, layer) = small_image(&up, "library/app", "v1", 9);
    up.faults(|f| f.fail_500 = 2);
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "manifest after 2 × 500: {}", r.text());
    assert!(r.body == mb);
    assert_eq!(up.count("GET", Kind::Manifest), 3, "upstream manifest GETs: {}", up.summary());
    let mt = m.metrics();
    assert_eq!(mt.upstream("docker.io", "manifest", Some(500)), 2, "metrics: manifest 500s");
    assert_eq!(mt.upstream("docker.io", "manifest", Some(200)), 1, "metrics: manifest 200s");
    // Same for a blob fill.
    up.faults(|f| f.fail_500 = 2);
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{ld}"));
    assert!(r.status == 200 && r.body == layer, "blob after 2 × 500: {} {:?}", r.status, r.body_error);
    assert_eq!(up.count("GET", Kind::Blob), 3, "upstream blob GETs: {}", up.summary());
    assert_eq!(m.metrics().upstream("docker.io", "blob", Some(500)), 2, "metrics: blob 500s");
}

#[test]
fn upstream_429_retry_after_is_honoured() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    let (md, _, ld, layer) = small_image(&up, "library/app", "v1", 10);
    up.faults(|f| {
        f.fail_429 = 1;
        f.retry_after = 1;
    });
    let t = Instant::now();
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    let took = t.elapsed();
    assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "manifest after a 429: {}", r.text());
    assert_eq!(up.count("GET", Kind::Manifest), 2, "upstream manifest GETs: {}", up.summary());
    let log = up.requests();
    let gap = log[1].at.duration_since(log[0].at);
    assert!(gap >= Duration::from_millis(950), "retry {gap:?} after a 429 with Retry-After: 1");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(m.metrics().upstream("docker.io", "manifest", Some(429)), 1, "metrics: 429s");

    up.faults(|f| f.fail_429 = 1);
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{ld}"));
    assert!(r.status == 200 && r.body == layer, "blob after a 429");
    assert_eq!(up.count("GET", Kind::Blob), 2, "upstream blob GETs: {}", up.summary());
}

#[test]
fn blob_fill_cut_mid_body_resumes_with_range() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    let data = bytes_of(1 << 20, 11);
    let d = up.add_blob(data.clone());
    const CUT: usize = 300_000;
    up.faults(|f| f.cut_blob_after = Some(CUT));
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{d}"));
    assert_eq!(r.status, 200, "GET with a cut upstream");
    assert!(r.body_error.is_none(), "the client's body failed: {:?}", r.body_error);
    assert_eq!(r.body.len(), data.len(), "body length");
    assert!(r.body == data, "bytes after a resumed fill");
    let blob_reqs: Vec<_> = up.requests().into_iter().filter(|l| l.kind == Kind::Blob).collect();
    assert_eq!(blob_reqs.len(), 2, "upstream blob requests: {}", up.summary());
    assert_eq!(blob_reqs[0].range, None, "the first blob GET");
    assert_eq!(
        blob_reqs[1].range.as_deref(),
        Some(format!("bytes={CUT}-").as_str()),
        "the resume asks for the rest: {}",
        up.summary()
    );
    assert_eq!(blob_reqs[1].status, 206);
    // Committed: a later GET is a cache hit.
    let total = up.total();
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{d}"));
    assert!(r.status == 200 && r.body == data);
    assert_eq!(up.total(), total, "GET after the resumed fill went upstream");
}

#[test]
fn wrong_bytes_are_never_served_whole_nor_cached() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    let data = bytes_of(1 << 20, 12);
    let d = up.add_blob(data.clone());
    let (files, staging) = (m.blob_files(), m.staging_entries());
    up.faults(|f| f.corrupt_blobs = true);
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{d}"));
    let complete = r.status == 200 && r.body_error.is_none() && r.body.len() == data.len();
    assert!(
        !complete,
        "a complete 200 body for a blob whose upstream bytes do not match its digest \
         ({} bytes, equal to the blob: {})",
        r.body.len(),
        r.body == data
    );
    eprintln!(
        "wrong bytes: client got status {}, {} of {} bytes, error {:?}",
        r.status,
        r.body.len(),
        data.len(),
        r.body_error
    );
    assert_eq!(up.count("GET", Kind::Blob), 1, "{}", up.summary());
    wait_until("the failed fill's staging to go", Duration::from_secs(10), || m.staging_entries() == staging);
    assert_eq!(m.blob_files(), files, "a blob file was committed for wrong bytes");
    // The same request again (still wrong upstream): fails again, fetched again.
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{d}"));
    assert!(!(r.status == 200 && r.body_error.is_none() && r.body.len() == data.len()), "second try");
    assert_eq!(up.count("GET", Kind::Blob), 2, "a failed fill is not cached: {}", up.summary());

    // Ten clients lined up on one throttled fill of wrong bytes: every transfer fails.
    up.faults(|f| f.throttle = Some(THROTTLE));
    let rt = client_runtime();
    let before = m.metrics();
    up.hold();
    let handles = spawn_gets(&rt, &m.url(&format!("/v2/docker.io/library/app/blobs/{d}")), 10);
    wait_until("10 clients to join one fill", Duration::from_secs(60), || {
        m.metrics().followers() - before.followers() >= 9
    });
    up.release();
    for (i, g) in join_all(&rt, handles).iter().enumerate() {
        let complete = g.status == 200 && g.error.is_none() && g.len == data.len();
        assert!(!complete, "client {i} of 10 got a complete 200 body of wrong bytes");
        assert!(g.len < data.len(), "client {i} got {} bytes of {}", g.len, data.len());
    }
    assert_eq!(up.count("GET", Kind::Blob), 3, "one upstream GET for the 10: {}", up.summary());
    wait_until("the failed fill's staging to go", Duration::from_secs(10), || m.staging_entries() == staging);
    assert_eq!(m.blob_files(), files, "a blob file was committed for wrong bytes");

    up.faults(|f| {
        f.corrupt_blobs = false;
        f.throttle = None;
    });
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{d}"));
    assert_eq!(r.status, 200, "GET with the upstream fixed");
    assert!(r.body == data, "GET with the upstream fixed: bytes");
    assert_eq!(up.count("GET", Kind::Blob), 4, "fetched again once the upstream is fixed: {}", up.summary());
    assert_eq!(m.blob_files(), files + 1, "blob files after the good fill");
}

/// A manifest whose bytes do not hash to the digest asked for (or to the upstream's
/// own `Docker-Content-Digest`) is refused, and not cached.
#[test]
fn wrong_manifest_bytes_are_refused_and_not_cached() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    let cd = up.add_blob(b"{}".to_vec());
    let real = image_manifest((&cd, 2), &[], "real");
    let fake = image_manifest((&cd, 2), &[], "impostor");
    let real_digest = sha256(&real);
    up.add_manifest_as("library/app", Some("bad"), &real_digest, OCI_MANIFEST, &fake);
    for (what, path) in [
        ("by digest", format!("/v2/docker.io/library/app/manifests/{real_digest}")),
        ("by tag, Docker-Content-Digest disagrees", "/v2/docker.io/library/app/manifests/bad".to_string()),
    ] {
        for attempt in 1..=2 {
            let gets = up.count("GET", Kind::Manifest);
            let r = m.get(&path);
            assert_ne!(r.status, 200, "{what} (attempt {attempt}): wrong bytes served");
            assert!(r.body != fake, "{what}: the impostor's bytes were served");
            assert_eq!(r.status, 503, "{what}: {}", r.text());
            assert_eq!(oci_code(&r.text()), "UNAVAILABLE", "{what}");
            assert_eq!(
                up.count("GET", Kind::Manifest) - gets,
                1,
                "{what} (attempt {attempt}): {}",
                up.summary()
            );
        }
    }
    // The upstream is fixed: the right bytes, by digest and by tag.
    up.add_manifest("library/app", Some("bad"), OCI_MANIFEST, &real);
    let r = m.get(&format!("/v2/docker.io/library/app/manifests/{real_digest}"));
    assert!(r.status == 200 && r.body == real, "by digest, upstream fixed");
    let r = m.get("/v2/docker.io/library/app/manifests/bad");
    assert!(r.status == 200 && r.body == real, "by tag, upstream fixed");
}

/// A process killed mid-fill leaves a staging area and a lease; the next start cleans
/// them, and the blob is fetched again, whole.
#[test]
fn crash_mid_fill_cleans_staging_and_refetches() {
    let up = FakeUpstream::start();
    let ups = [Up::new("docker.io", up.url())];
    let mut m = Mirror::start(&ups);
    up.faults(|f| f.throttle = Some(THROTTLE));
    let data = bytes_of(BLOB, 14);
    let d = up.add_blob(data.clone());
    let files = m.blob_files();
    let mut resp =
        http().get(m.url(&format!("/v2/docker.io/library/app/blobs/{d}"))).send().expect("GET the cold blob");
    let mut buf = [0u8; 1024];
    let n = std::io::Read::read(&mut resp, &mut buf).expect("the first chunk");
    assert!(n > 0 && buf[..n] == data[..n], "the first chunk");
    assert!(m.staging_entries() >= 1, "no staging area while a fill is in progress");
    m.crash_restart(&ups);
    drop(resp);
    wait_until("startup to clean the crashed fill's staging", Duration::from_secs(10), || {
        m.staging_entries() == 0
    });
    assert_eq!(m.blob_files(), files, "a blob file after a crash mid-fill");
    up.faults(|f| f.throttle = None);
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{d}"));
    assert_eq!(r.status, 200, "GET after the restart");
    assert!(r.body == data, "GET after the restart: bytes");
    assert_eq!(up.count("GET", Kind::Blob), 2, "{}", up.summary());
    assert_eq!(m.blob_files(), files + 1);
}

/// A Bearer challenge is answered at the token endpoint (anonymously, or with the
/// configured credentials as Basic auth) and the token is reused.
#[test]
fn bearer_token_challenge_is_answered_and_cached() {
    let anon = FakeUpstream::start();
    let creds = FakeUpstream::start();
    anon.faults(|f| f.bearer = Some("anon-token".into()));
    let basic = format!("Basic {}", base64_std(b"alice:s3cret"));
    creds.faults(|f| {
        f.bearer = Some("alice-token".into());
        f.token_auth = Some(basic.clone());
    });
    let m = Mirror::start(&[
        Up::new("anon.example", anon.url()),
        Up::new("creds.example", creds.url()).credentials("alice", "s3cret"),
    ]);
    for (name, up, token, seed) in
        [("anon.example", &anon, "anon-token", 40), ("creds.example", &creds, "alice-token", 41)]
    {
        // Distinct content per upstream: a blob cached for one is linked, not fetched, for the other.
        let (md, _, ld, layer) = small_image(up, "team/app", "v1", seed);
        let r = m.get(&format!("/v2/{name}/team/app/manifests/v1"));
        assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "{name}: manifest: {}", r.text());
        let r = m.get(&format!("/v2/{name}/team/app/blobs/{ld}"));
        assert!(r.status == 200 && r.body == layer, "{name}: blob ({})", r.status);
        let log = up.requests();
        let tokens: Vec<_> = log.iter().filter(|l| l.kind == Kind::Token).collect();
        assert_eq!(tokens.len(), 1, "{name}: token requests (one, then reused): {}", up.summary());
        assert_eq!(tokens[0].status, 200, "{name}: the token request: {}", up.summary());
        let ok: Vec<_> = log.iter().filter(|l| l.kind != Kind::Token && l.status == 200).collect();
        assert_eq!(ok.len(), 2, "{name}: {}", up.summary());
        for l in ok {
            assert_eq!(
                l.auth.as_deref(),
                Some(format!("Bearer {token}").as_str()),
                "{name}: {} {}",
                l.method,
                l.path
            );
        }
    }
}

fn base64_std(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn upstream_404_is_manifest_or_blob_unknown() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    let r = m.get("/v2/docker.io/library/app/manifests/missing");
    assert_eq!((r.status, oci_code(&r.text()).as_str()), (404, "MANIFEST_UNKNOWN"));
    let r = m.get(&format!("/v2/docker.io/library/app/manifests/{}", sha256(b"x")));
    assert_eq!((r.status, oci_code(&r.text()).as_str()), (404, "MANIFEST_UNKNOWN"));
    let r = m.get(&format!("/v2/docker.io/library/app/blobs/{}", sha256(b"y")));
    assert_eq!((r.status, oci_code(&r.text()).as_str()), (404, "BLOB_UNKNOWN"));
    assert_eq!(up.total(), 3, "one upstream request each, no retries of a 404: {}", up.summary());
}

// ---------------------------------------------------------------------------
// 7. Push into a mirrored namespace; hosted beside mirrored; routing
// ---------------------------------------------------------------------------

#[test]
fn push_into_mirror_namespace_is_denied_and_hosted_repos_still_work() {
    let up = FakeUpstream::start();
    let m = Mirror::start(&[Up::new("docker.io", up.url())]);
    let c = http();
    let blob = b"pushed bytes".to_vec();
    let bd = sha256(&blob);
    let files = m.blob_files();
    let mb = image_manifest((&bd, blob.len()), &[], "hosted");
    for (what, base) in [
        ("prefix", "/v2/docker.io/library/app".to_string()),
        ("prefix, two segments", "/v2/docker.io/someone/app".to_string()),
    ] {
        for (method, path, body) in [
            ("POST", format!("{base}/blobs/uploads/"), vec![]),
            ("POST", format!("{base}/blobs/uploads/?digest={bd}"), blob.clone()),
            ("PUT", format!("{base}/manifests/v1"), mb.clone()),
        ] {
            let r = c
                .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), m.url(&path))
                .header(
                    "Content-Type",
                    if method == "PUT" { OCI_MANIFEST } else { "application/octet-stream" },
                )
                .body(body)
                .send()
                .expect("push request");
            let status = r.status().as_u16();
            let text = r.text().unwrap_or_default();
            assert_eq!(status, 403, "{method} {path} ({what}): {text}");
            assert_eq!(oci_code(&text), "DENIED", "{method} {path}");
            assert!(text.contains("mirror"), "the DENIED message says why: {text}");
        }
    }
    // By containerd's ns too.
    let r = c
        .post(m.url(&format!("/v2/library/app/blobs/uploads/?ns=docker.io&digest={bd}")))
        .body(blob.clone())
        .send()
        .expect("POST");
    assert_eq!(r.status().as_u16(), 403, "push with ?ns=docker.io");
    let r = c
        .delete(m.url(&format!("/v2/docker.io/library/app/manifests/{}", sha256(&mb))))
        .send()
        .expect("DELETE");
    assert!(
        r.status().as_u16() == 403 || r.status().as_u16() == 405,
        "DELETE in a mirrored namespace: {}",
        r.status()
    );
    assert_eq!(m.blob_files(), files, "a refused push stored a blob");
    assert_eq!(up.total(), 0, "a refused push went upstream: {}", up.summary());

    // Hosted repositories beside the mirror.
    let r =
        c.post(m.url(&format!("/v2/team/app/blobs/uploads/?digest={bd}"))).body(blob.clone()).send().unwrap();
    assert_eq!(r.status().as_u16(), 201, "hosted blob push");
    let r = c
        .put(m.url("/v2/team/app/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .body(mb.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "hosted manifest push: {}", r.text().unwrap_or_default());
    let r = m.get("/v2/team/app/manifests/v1");
    assert!(r.status == 200 && r.body == mb, "hosted manifest pull");
    let r = m.get(&format!("/v2/team/app/blobs/{bd}"));
    assert!(r.status == 200 && r.body == blob, "hosted blob pull");
    // And a mirrored pull in the same server.
    let (md, _, _, _) = small_image(&up, "library/app", "v1", 13);
    let r = m.get("/v2/docker.io/library/app/manifests/v1");
    assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "mirrored pull beside hosted");
    let r = m.get("/v2/team/app/manifests/v1");
    assert!(r.status == 200 && r.body == mb, "hosted manifest still served");
    assert_eq!(up.total(), 1, "only the mirrored pull went upstream: {}", up.summary());
}

/// Prefix, containerd's `?ns=`, and bare names through a default upstream (hosted
/// repositories first); Docker Hub's single-segment names gain `library/`; two
/// upstreams side by side.
#[test]
fn routing_by_prefix_ns_and_default_upstream() {
    let hub = FakeUpstream::start();
    let quay = FakeUpstream::start();
    let m =
        Mirror::start(&[Up::new("docker.io", hub.url()).default_upstream(), Up::new("quay.io", quay.url())]);
    let (hub_md, _, _, _) = small_image(&hub, "library/nginx", "v1", 20);
    let (quay_md, _, _, _) = small_image(&quay, "org/tool", "v1", 21);
    let (deep_md, _, _, _) = small_image(&hub, "someone/app", "v1", 22);

    let cases = [
        ("/v2/docker.io/nginx/manifests/v1", &hub_md, "/v2/library/nginx/manifests/v1"),
        ("/v2/docker.io/someone/app/manifests/v1", &deep_md, "/v2/someone/app/manifests/v1"),
        ("/v2/quay.io/org/tool/manifests/v1", &quay_md, "/v2/org/tool/manifests/v1"),
    ];
    for (path, md, upstream_path) in cases {
        let r = m.get(path);
        assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "GET {path}: {}", r.text());
        let all = format!("{} | {}", hub.summary(), quay.summary());
        assert!(
            all.contains(&format!("GET {upstream_path} ")),
            "GET {path} should fetch {upstream_path}: {all}"
        );
    }
    // The same content by ns and by bare name (default upstream): cached, no upstream request.
    let before = (hub.total(), quay.total());
    for (path, md) in [
        ("/v2/library/nginx/manifests/v1?ns=docker.io", &hub_md),
        ("/v2/nginx/manifests/v1?ns=docker.io", &hub_md),
        ("/v2/nginx/manifests/v1", &hub_md),
        ("/v2/library/nginx/manifests/v1", &hub_md),
        ("/v2/org/tool/manifests/v1?ns=quay.io", &quay_md),
    ] {
        let r = m.get(path);
        assert_eq!((r.status, r.digest.as_str()), (200, md.as_str()), "GET {path}: {}", r.text());
    }
    assert_eq!((hub.total(), quay.total()), before, "routes to cached content went upstream");
    // quay.io is not Docker Hub: no library/ prefix.
    let (q2, _, _, _) = small_image(&quay, "single", "v1", 23);
    let r = m.get("/v2/quay.io/single/manifests/v1");
    assert_eq!((r.status, r.digest.as_str()), (200, q2.as_str()), "single-segment name on quay.io");
    assert!(quay.summary().contains("GET /v2/single/manifests/v1 "), "{}", quay.summary());

    // A hosted repository under a bare name wins over the default upstream, and pushes
    // to bare names go to hosted repositories.
    let blob = b"hosted config".to_vec();
    let bd = sha256(&blob);
    let c = http();
    let r =
        c.post(m.url(&format!("/v2/myapp/blobs/uploads/?digest={bd}"))).body(blob.clone()).send().unwrap();
    assert_eq!(r.status().as_u16(), 201, "push to a bare name with a default upstream");
    let mb = image_manifest((&bd, blob.len()), &[], "myapp");
    let r = c
        .put(m.url("/v2/myapp/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .body(mb.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "manifest push to a bare name");
    let before = hub.total();
    let r = m.get("/v2/myapp/manifests/v1");
    assert!(r.status == 200 && r.body == mb, "hosted bare name served first");
    let r = m.get(&format!("/v2/myapp/blobs/{bd}"));
    assert!(r.status == 200 && r.body == blob, "hosted bare-name blob");
    assert_eq!(hub.total(), before, "a hosted bare name went upstream: {}", hub.summary());
}

// ---------------------------------------------------------------------------
// 8. Real upstream (docker-registry) and real clients (skopeo, containerd)
// ---------------------------------------------------------------------------

/// Push a small image into a fresh docker-registry as `library/hello:v1` with skopeo.
fn registry_with_image(
    sk: &real::Skopeo,
    arch: &str,
) -> (real::ReferenceRegistry, real::Layout, real::Image) {
    let reg = real::ReferenceRegistry::start();
    let src = real::Layout::create(&sk.dir("src"));
    let big = bytes_of(200_000, 31);
    let img = real::write_image(
        &src,
        arch,
        &[
            vec![("hello.txt", b"hello through the mirror\n".as_slice()), ("big.bin", big.as_slice())],
            vec![("etc/motd", b"second layer\n".as_slice())],
        ],
        "mirror",
    );
    src.set_refs(&[("v1", &img.manifest)]);
    sk.push(&src, "v1", &reg.addr, "library/hello:v1");
    (reg, src, img)
}

#[test]
fn real_docker_registry_upstream_skopeo_pulls_through_prefix() {
    let sk = real::Skopeo::new();
    let (reg, src, img) = registry_with_image(&sk, "amd64");
    let m = Mirror::start(&[Up::new("docker.io", format!("http://{}", reg.addr))]);

    let dst = sk.dir("dst");
    sk.run(
        "copy",
        &[
            "--preserve-digests",
            "--src-tls-verify=false",
            &format!("docker://{}/docker.io/library/hello:v1", m.w.addr),
            &format!("oci:{}:v1", dst.display()),
        ],
    );
    let dst = real::Layout::open(&dst);
    let want = img.digests();
    assert_eq!(dst.blob_set(), want, "blobs pulled through the mirror");
    for d in &want {
        assert!(dst.blob(d) == src.blob(d), "blob {d} pulled through the mirror differs from the one pushed");
    }
    let mt = m.metrics();
    let (mans, blobs) = (mt.upstream("docker.io", "manifest", None), mt.upstream("docker.io", "blob", None));
    eprintln!("skopeo via prefix: upstream manifest requests {mans}, blob requests {blobs}");
    assert!(mans >= 1, "no upstream manifest request in the metrics");
    assert_eq!(
        mt.upstream("docker.io", "blob", Some(200)),
        1 + img.layers.len() as u64,
        "blob GETs upstream"
    );

    // A second pull is served from the cache.
    let dst2 = sk.dir("dst2");
    sk.run(
        "copy",
        &[
            "--src-tls-verify=false",
            &format!("docker://{}/docker.io/library/hello:v1", m.w.addr),
            &format!("oci:{}:v1", dst2.display()),
        ],
    );
    let mt2 = m.metrics();
    assert_eq!(
        (mt2.upstream("docker.io", "manifest", None), mt2.upstream("docker.io", "blob", None)),
        (mans, blobs),
        "a warm pull went upstream"
    );
    assert_eq!(real::Layout::open(&dst2).blob_set(), want, "blobs of the warm pull");
}

#[test]
fn real_docker_registry_upstream_containerd_pulls_through_ns() {
    real::require("containerd", "containerd");
    real::require("ctr", "containerd");
    let sk = real::Skopeo::new();
    let (reg, _src, img) = registry_with_image(&sk, real::go_arch());
    let m = Mirror::start(&[Up::new("docker.io", format!("http://{}", reg.addr))]);
    let ctd = real::Containerd::start();

    let hosts = ctd.tmp.path().join("hosts");
    std::fs::create_dir_all(hosts.join("docker.io")).unwrap();
    let w = format!("http://{}", m.w.addr);
    std::fs::write(
        hosts.join("docker.io/hosts.toml"),
        format!("server = \"{w}\"\n\n[host.\"{w}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
    let hosts_s = hosts.display().to_string();
    let (ok, out) = ctd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--hosts-dir",
        &hosts_s,
        "--snapshotter",
        "native",
        "docker.io/library/hello:v1",
    ]);
    assert!(ok, "ctr images pull through wharfie failed:\n{out}\n--- containerd log\n{}", ctd.log_text());
    let (ok, list) = ctd.ctr(&["images", "ls"]);
    assert!(ok, "ctr images ls: {list}");
    let line = list
        .lines()
        .find(|l| l.starts_with("docker.io/library/hello:v1"))
        .unwrap_or_else(|| panic!("image missing from ctr images ls:\n{list}"));
    assert!(line.contains(&img.manifest.digest), "ctr images ls shows another digest: {line}");
    let (ok, content) = ctd.ctr(&["content", "ls", "-q"]);
    assert!(ok, "ctr content ls: {content}");
    for d in img.digests() {
        assert!(content.contains(&d), "containerd lacks {d} after the pull:\n{content}");
    }

    let mt = m.metrics();
    let (mans, blobs) = (mt.upstream("docker.io", "manifest", None), mt.upstream("docker.io", "blob", None));
    eprintln!("containerd via ns: upstream manifest requests {mans}, blob requests {blobs}");
    assert!(mans >= 1, "no upstream manifest request in wharfie's metrics");
    assert_eq!(
        mt.upstream("docker.io", "blob", Some(200)),
        1 + img.layers.len() as u64,
        "blob GETs upstream"
    );
    // hosts.toml names wharfie's root (no path prefix) and no upstream is the default:
    // the pull could only reach the upstream by containerd's `?ns=docker.io`, and the
    // content is cached under docker.io/library/hello.
    let cat = m.get("/v2/_catalog");
    assert!(cat.text().contains("docker.io/library/hello"), "catalog: {}", cat.text());
    let r = m.get("/v2/library/hello/manifests/v1?ns=docker.io");
    assert_eq!((r.status, r.digest.as_str()), (200, img.manifest.digest.as_str()));
}
