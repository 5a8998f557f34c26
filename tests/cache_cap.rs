//! The byte cap on mirrored content (issue 4, item 6), end to end: the real server as a
//! mirror of the fake upstream (tests/support/src/mirror/upstream.rs) with `[cache]
//! max_bytes` far below what a client pulls through it.
//!
//! What "the store stays under the cap" means here, precisely:
//! - after every completed pull, the committed mirrored blob files on disk (under
//!   `blobs/`, digests the upstream serves and nobody pushed) total at most `max_bytes`;
//! - at any instant, those files plus the fill staging files under `uploads/` total at
//!   most `max_bytes` + the size of the one blob the (sequential) client is pulling —
//!   the "one in-flight object".
//!
//! Only blob bytes are capped; manifests live in redb.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;
use wharfie_testkit::oci;
use wharfie_testkit::ops;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{bytes_of, sha256, Wharfie};
use mirror::real;
use mirror::upstream::{FakeUpstream, Kind};
use oci::*;
use ops::*;

const S: usize = 256 * 1024;
const N: usize = 12;
const CAP: u64 = 1024 * 1024; // four blobs
/// Eviction frees down to 75 %: three blobs.
const LOW: u8 = 75;

/// The counters and indexes meta keeps in its write transactions (blob counts and bytes,
/// the eviction order, blob → manifests, manifest → repositories) equal a scan of the
/// rows, read by opening the stopped server's `meta.redb` again.
fn assert_indexes_exact(dir: &Path) {
    let meta = wharfie::meta::Meta::open(&dir.join("meta.redb")).expect("open meta.redb");
    let drift = meta.index_drift().expect("index_drift");
    assert!(drift.is_empty(), "counters or indexes differ from a scan of the rows: {drift:?}");
}

fn config(dir: &Path, up: &FakeUpstream) -> String {
    config_with(dir, up, false)
}

/// The cap config, with the upstream `offline` (never contacted) when asked.
fn config_with(dir: &Path, up: &FakeUpstream, offline: bool) -> String {
    let p = dir.join(if offline { "cap-offline.toml" } else { "cap.toml" });
    std::fs::write(
        &p,
        format!(
            "[cache]\nmax_bytes = \"{CAP}\"\nlow_water_percent = {LOW}\ncheck_interval = \"1s\"\n\n\
             [[upstreams]]\nname = \"up\"\nurl = \"{}\"\noffline = {offline}\n",
            up.url()
        ),
    )
    .unwrap();
    path_str(&p)
}

/// Bytes of blob files named in `mirrored` under `blobs/`, and of every file under `uploads/`.
fn disk_bytes(dir: &Path, mirrored: &BTreeSet<String>) -> (u64, u64) {
    // blobs/ first, then uploads/: a file renamed from one to the other meanwhile is
    // missed rather than counted twice.
    let committed: u64 = blob_files(dir)
        .iter()
        .filter(|(d, _)| mirrored.contains(*d))
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else { return 0 };
        rd.flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk(&p)
                } else {
                    std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
                }
            })
            .sum()
    }
    (committed, walk(&dir.join("uploads")))
}

#[test]
fn eviction_keeps_mirrored_bytes_under_the_cap_in_lru_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let up = FakeUpstream::start();
    let blobs: Vec<Vec<u8>> = (0..N).map(|i| bytes_of(S, 500 + i as u64)).collect();
    let digests: Vec<String> = blobs.iter().map(|b| up.add_blob(b.clone())).collect();
    let cfg = config(tmp.path(), &up);
    let mut w = Wharfie::start_in(&dir, &["--config", &cfg]);
    let api = Api::new(&w);
    let pull = |i: usize| {
        let r = api.get(&format!("/v2/up/lib/big/blobs/{}", digests[i]));
        assert_eq!(r.status, 200, "pull b{i}: {}", r.describe());
        assert_eq!(r.body, blobs[i], "bytes of b{i}");
    };

    // Pushed content: a hosted image, and b0 mounted from the mirror into a hosted
    // repository (which makes it pushed content too). Neither is ever evicted.
    let hosted = api.push_image("hosted/app", Some("v1"), 9, 3);
    let hosted_big = bytes_of(2 * CAP as usize, 77);
    let hosted_big_d = api.push_blob("hosted/app", &hosted_big);
    pull(0);
    let r = api.send(
        api.req("POST", &format!("/v2/hosted/app/blobs/uploads/?mount={}&from=up/lib/big", digests[0])),
    );
    assert_eq!(r.status, 201, "mount from the mirror: {}", r.describe());
    let mirrored: BTreeSet<String> = digests[1..].iter().cloned().collect();

    // Sample the disk while a client pulls 11 × 256 KiB (2.75 × the cap) one blob at a
    // time, reading b1 again after every pull (it stays the most recently used).
    let stop = AtomicBool::new(false);
    let max_seen = AtomicU64::new(0);
    let samples = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let end = Instant::now() + Duration::from_secs(300);
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > end {
                    break;
                }
                let (c, u) = disk_bytes(&dir, &mirrored);
                max_seen.fetch_max(c + u, Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        for i in 1..N {
            pull(i);
            if i > 1 {
                pull(1);
            }
            let (committed, _) = disk_bytes(&dir, &mirrored);
            assert!(committed <= CAP, "after pulling b{i}: {committed} mirrored bytes on disk > cap {CAP}");
        }
        stop.store(true, Ordering::Relaxed);
    });
    let max_seen = max_seen.load(Ordering::Relaxed);
    assert!(max_seen <= CAP + S as u64, "{max_seen} bytes on disk at some instant > cap + one blob");

    // LRU: the hot blob and the most recent pulls survive; the rest went, oldest first.
    let files = blob_files(&dir);
    let present: Vec<usize> = (1..N).filter(|&i| files.contains_key(&digests[i])).collect();
    eprintln!(
        "cache cap: {} samples, max {max_seen} bytes on disk (cap {CAP}, blob {S}); kept b{present:?}",
        samples.load(Ordering::Relaxed)
    );
    assert!(present.contains(&1), "the hot blob b1 was evicted; kept {present:?}");
    assert!(
        present.contains(&(N - 1)) && present.contains(&(N - 2)),
        "recent pulls evicted; kept {present:?}"
    );
    for i in 2..N - 3 {
        assert!(!present.contains(&i), "b{i} (least recently used) survived; kept {present:?}");
    }
    let m = parse_metrics(&api.get("/metrics").text());
    let evicted = metric_sum(&m, "wharfie_evicted_blobs_total", &[]);
    let evicted_bytes = metric_sum(&m, "wharfie_evicted_bytes_total", &[]);
    eprintln!("cache cap: evicted {evicted} blobs, {evicted_bytes} bytes");
    assert_eq!(evicted as usize, N - 1 - present.len(), "{m:?}");
    assert_eq!(evicted_bytes as usize, (N - 1 - present.len()) * S);

    // Pushed content was never evicted.
    for d in std::iter::once(&hosted.config).chain(hosted.layers.iter()) {
        assert_eq!(sha256(&api.get(&format!("/v2/hosted/app/blobs/{}", d.digest)).body), d.digest);
    }
    assert_eq!(api.get(&format!("/v2/hosted/app/blobs/{hosted_big_d}")).body, hosted_big);
    let r = api.get(&format!("/v2/hosted/app/blobs/{}", digests[0]));
    assert_eq!(r.status, 200, "the mounted blob was evicted: {}", r.describe());
    assert_eq!(r.body, blobs[0]);

    // Evicted content comes back on demand, from the upstream.
    let before = up.count("GET", Kind::Blob);
    pull(2);
    assert_eq!(up.count("GET", Kind::Blob), before + 1, "b2 fetched again: {}", up.summary());
    let (committed, _) = disk_bytes(&dir, &mirrored);
    assert!(committed <= CAP, "{committed} > {CAP} after the refetch");
    drop(api);
    assert_eq!(w.stop(), Some(0), "graceful stop");
    assert_indexes_exact(&dir);
}

/// A real client (skopeo) pulls a six-layer image of 1.5 × the cap through the mirror,
/// several layers at once: the image arrives intact and the store is under the cap.
#[test]
fn skopeo_pulls_an_image_bigger_than_the_cap_through_the_mirror() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let up = FakeUpstream::start();
    let sk = real::Skopeo::new();
    let src = real::Layout::create(&sk.dir("src"));
    let files: Vec<Vec<u8>> = (0..6).map(|i| bytes_of(S, 900 + i)).collect();
    let layers: Vec<Vec<(&str, &[u8])>> = files.iter().map(|f| vec![("data.bin", f.as_slice())]).collect();
    let img = real::write_image(&src, "amd64", &layers, "big");
    for d in img.digests() {
        if d != img.manifest.digest {
            up.add_blob(src.blob(&d));
        }
    }
    up.add_manifest("lib/big", Some("v1"), real::OCI_MANIFEST, &src.blob(&img.manifest.digest));
    let cfg = config(tmp.path(), &up);
    let w = Wharfie::start_in(&dir, &["--config", &cfg]);
    let out = real::Layout::create(&sk.dir("out"));
    sk.run(
        "copy",
        &["--src-tls-verify=false", &format!("docker://{}/up/lib/big:v1", w.addr), &out.oci("v1")],
    );
    for d in img.digests() {
        assert_eq!(out.blob(&d), src.blob(&d), "{d} differs");
    }
    let mirrored: BTreeSet<String> = img.digests();
    let (committed, _) = disk_bytes(&dir, &mirrored);
    let total: u64 = img.layers.iter().map(|l| l.size as u64).sum::<u64>() + img.config.size as u64;
    eprintln!("skopeo through the cap: pulled {total} bytes, {committed} kept (cap {CAP})");
    assert!(total > CAP, "the image must be bigger than the cap");
    assert!(committed <= CAP, "{committed} mirrored bytes on disk > cap {CAP}");
}

/// Evicting an image's blobs evicts its manifest from the mirror too (and an index
/// listing it, and their tags): an offline mirror answers MANIFEST_UNKNOWN rather than a
/// manifest whose layers are gone, and an online one fetches the image again, whole.
/// A hosted manifest referencing a blob mounted from the mirror is untouched.
#[test]
fn eviction_takes_the_manifests_of_evicted_blobs_with_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut up = FakeUpstream::start();
    // Image A (tag a), an index X (tag idx) listing A, image B (tag b): small configs,
    // one S-byte layer each. Three S-byte fillers push the mirror over the cap.
    let image = |seed: u64| {
        let cfg = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
        let layer = bytes_of(S, seed);
        let (c, l) = (Desc::new(OCI_CONFIG, &cfg), Desc::new(OCI_LAYER, &layer));
        up.add_blob(cfg.clone());
        up.add_blob(layer.clone());
        let m = image_manifest(OCI_MANIFEST, &c, std::slice::from_ref(&l), serde_json::json!({}));
        (cfg, layer, m)
    };
    let (a_cfg, a_layer, a_m) = image(601);
    let (_b_cfg, b_layer, b_m) = image(602);
    let a_d = up.add_manifest("lib/app", Some("a"), OCI_MANIFEST, &a_m);
    let b_d = up.add_manifest("lib/app", Some("b"), OCI_MANIFEST, &b_m);
    let a_desc = Desc { media_type: OCI_MANIFEST.into(), digest: a_d.clone(), size: a_m.len() };
    let x_m = index_manifest(OCI_INDEX, &[a_desc], serde_json::json!({}));
    let x_d = up.add_manifest("lib/app", Some("idx"), OCI_INDEX, &x_m);
    let fillers: Vec<String> = (0..3).map(|i| up.add_blob(bytes_of(S, 700 + i))).collect();

    let cfg = config(tmp.path(), &up);
    let mut w = Wharfie::start_in(&dir, &["--config", &cfg]);
    let api = Api::new(&w);
    let get_ok = |api: &Api, path: &str| {
        let r = api.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.describe());
        r.body
    };
    // Pull A and B whole, and the index.
    for (tag, body) in [("a", &a_m), ("b", &b_m), ("idx", &x_m)] {
        assert_eq!(&get_ok(&api, &format!("/v2/up/lib/app/manifests/{tag}")), body, "manifest {tag}");
    }
    assert_eq!(get_ok(&api, &format!("/v2/up/lib/app/blobs/{}", sha256(&a_cfg))), a_cfg);
    assert_eq!(get_ok(&api, &format!("/v2/up/lib/app/blobs/{}", sha256(&a_layer))), a_layer);
    let b_cfg_d = sha256(&_b_cfg);
    get_ok(&api, &format!("/v2/up/lib/app/blobs/{b_cfg_d}"));
    let b_layer_d = sha256(&b_layer);
    get_ok(&api, &format!("/v2/up/lib/app/blobs/{b_layer_d}"));
    // A hosted image whose layer is B's, mounted from the mirror (now pushed content).
    let r = api
        .send(api.req("POST", &format!("/v2/hosted/app/blobs/uploads/?mount={b_layer_d}&from=up/lib/app")));
    assert_eq!(r.status, 201, "mount from the mirror: {}", r.describe());
    let h_cfg = br#"{"architecture":"amd64","os":"linux","hosted":true}"#.to_vec();
    api.push_blob("hosted/app", &h_cfg);
    let h_m = image_manifest(
        OCI_MANIFEST,
        &Desc::new(OCI_CONFIG, &h_cfg),
        &[Desc::new(OCI_LAYER, &b_layer)],
        serde_json::json!({}),
    );
    let h_d = api.push_manifest("hosted/app", "v1", OCI_MANIFEST, &h_m);

    // The fillers: the LRU mirrored blobs (A's config and layer, B's config) go, and
    // with them A, the index listing A, and B — in the mirror only.
    for f in &fillers {
        get_ok(&api, &format!("/v2/up/lib/big/blobs/{f}"));
    }
    let files = blob_files(&dir);
    for d in [sha256(&a_cfg), sha256(&a_layer), b_cfg_d.clone()] {
        assert!(!files.contains_key(&d), "{d} was not evicted");
    }
    let m = parse_metrics(&api.get("/metrics").text());
    assert_eq!(metric_sum(&m, "wharfie_evicted_blobs_total", &[]), 3.0, "{m:?}");
    assert_eq!(metric_sum(&m, "wharfie_evicted_manifests_total", &[]), 3.0, "{m:?}");
    let hosted_ok = |api: &Api| {
        for path in ["/v2/hosted/app/manifests/v1".to_owned(), format!("/v2/hosted/app/manifests/{h_d}")] {
            assert_eq!(get_ok(api, &path), h_m, "{path}");
        }
        assert_eq!(get_ok(api, &format!("/v2/hosted/app/blobs/{b_layer_d}")), b_layer);
        assert_eq!(get_ok(api, &format!("/v2/hosted/app/blobs/{}", sha256(&h_cfg))), h_cfg);
    };
    hosted_ok(&api);
    drop(api);
    assert_eq!(w.stop(), Some(0), "graceful stop");
    // The evicted rows are gone (nothing links or references them), the hosted one stays.
    let rows = manifest_rows(&dir);
    assert!(rows.contains(&h_d), "hosted manifest row gone: {rows:?}");
    for d in [&a_d, &b_d, &x_d] {
        assert!(!rows.contains(d), "evicted manifest row {d} stayed: {rows:?}");
    }

    // Offline: the evicted manifests are unknown, by tag and by digest.
    let off = config_with(tmp.path(), &up, true);
    let mut w = Wharfie::start_in(&dir, &["--config", &off]);
    let api = Api::new(&w);
    let before = up.total();
    for r in ["a", "b", "idx", a_d.as_str(), b_d.as_str(), x_d.as_str()] {
        api.get(&format!("/v2/up/lib/app/manifests/{r}")).expect_err(404, "MANIFEST_UNKNOWN");
        api.head(&format!("/v2/up/lib/app/manifests/{r}")).expect_head_err(404);
    }
    assert_eq!(up.total(), before, "an offline mirror contacted the upstream: {}", up.summary());
    // The repository counter went to zero with its last manifest: off the catalog.
    assert_eq!(api.catalog(), vec!["hosted/app".to_owned()]);
    hosted_ok(&api);
    drop(api);
    assert_eq!(w.stop(), Some(0), "graceful stop");
    assert_indexes_exact(&dir);

    // Online again: A comes back whole from the upstream, and is pullable.
    let w = Wharfie::start_in(&dir, &["--config", &cfg]);
    let api = Api::new(&w);
    let gets = up.count("GET", Kind::Manifest);
    assert_eq!(get_ok(&api, "/v2/up/lib/app/manifests/a"), a_m);
    assert_eq!(up.count("GET", Kind::Manifest), gets + 1, "A fetched again: {}", up.summary());
    assert_eq!(get_ok(&api, &format!("/v2/up/lib/app/manifests/{a_d}")), a_m);
    assert_eq!(get_ok(&api, &format!("/v2/up/lib/app/blobs/{}", sha256(&a_cfg))), a_cfg);
    assert_eq!(get_ok(&api, &format!("/v2/up/lib/app/blobs/{}", sha256(&a_layer))), a_layer);
    assert_eq!(get_ok(&api, "/v2/up/lib/app/manifests/idx"), x_m);
    hosted_ok(&api);

    // The upstream down: B (evicted, not fetched again) is unavailable, not served broken.
    up.stop();
    api.get("/v2/up/lib/app/manifests/b").expect_err(503, "UNAVAILABLE");
    hosted_ok(&api);
}
