//! Garbage collection end to end (issue 4, item 5): the real server, the real
//! `wharfie gc` command on the stopped server's data directory, the scheduled GC inside
//! a running server, and GC racing several clients that push and delete concurrently.
//!
//! Grace periods are tested without sleeping through them: with the server stopped,
//! the test ages the blob rows in the real redb file (`ops::age_blob_rows`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::oci;
use wharfie_testkit::ops;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use common::{bytes_of, sha256, Wharfie};
use oci::*;
use ops::*;

const DAY: u64 = 24 * 3600;

/// The counters and indexes meta keeps in its write transactions (blob counts and bytes,
/// the eviction order, blob → manifests, manifest → repositories, digest → tags) equal
/// a scan of the rows, read by opening the stopped server's `meta.redb` again.
fn assert_indexes_exact(dir: &Path) {
    let meta = wharfie::meta::Meta::open(&dir.join("meta.redb")).expect("open meta.redb");
    let drift = meta.index_drift().expect("index_drift");
    assert!(drift.is_empty(), "counters or indexes differ from a scan of the rows: {drift:?}");
}

/// Push `config` and `layers` into `repo`, then an OCI manifest (tagged, or by digest).
fn push_with(
    api: &Api,
    repo: &str,
    tag: Option<&str>,
    config: &[u8],
    layers: &[Vec<u8>],
    extra: serde_json::Value,
) -> Image {
    let cfg = Desc::new(OCI_CONFIG, config);
    api.push_blob(repo, config);
    let mut ls = Vec::new();
    for l in layers {
        api.push_blob(repo, l);
        ls.push(Desc::new(OCI_LAYER, l));
    }
    let manifest = image_manifest(OCI_MANIFEST, &cfg, &ls, extra);
    let digest = sha256(&manifest);
    api.push_manifest(repo, tag.unwrap_or(&digest), OCI_MANIFEST, &manifest);
    Image { config: cfg, layers: ls, manifest, digest }
}

/// Pull `img` from `repo` by digest: the manifest and every blob, byte-checked.
fn assert_pullable(api: &Api, repo: &str, img: &Image) {
    let r = api
        .send(api.req("GET", &format!("/v2/{repo}/manifests/{}", img.digest)).header("Accept", OCI_MANIFEST));
    assert_eq!(r.status, 200, "manifest {repo}@{}: {}", img.digest, r.describe());
    assert_eq!(r.body, img.manifest, "manifest bytes of {repo}@{}", img.digest);
    for d in std::iter::once(&img.config).chain(img.layers.iter()) {
        let r = api.get(&format!("/v2/{repo}/blobs/{}", d.digest));
        assert_eq!(r.status, 200, "blob {repo}@{}: {}", d.digest, r.describe());
        assert_eq!(sha256(&r.body), d.digest, "blob bytes of {repo}@{}", d.digest);
    }
}

fn assert_blob_gone(api: &Api, repo: &str, digest: &str) {
    api.get(&format!("/v2/{repo}/blobs/{digest}")).expect_err(404, "BLOB_UNKNOWN");
}

/// The content every GC test starts from.
struct Fixture {
    a: Image,
    b: Image,
    /// A signature-like artifact referring to `a`, pushed by digest (untagged).
    sig: Image,
    /// Tagged, then only its tag deleted: still linked, so kept.
    d: Image,
    /// Deleted by digest: garbage, with its config and layers.
    c: Image,
    /// A blob no manifest references.
    orphan: String,
    /// What GC should remove: blob digest → size.
    garbage: BTreeMap<String, u64>,
}

fn populate(api: &Api) -> Fixture {
    let base = bytes_of(3000, 1);
    let a = push_with(
        api,
        "gc/app",
        Some("a"),
        br#"{"os":"linux","n":"a"}"#,
        &[base.clone(), bytes_of(2000, 2)],
        json!({}),
    );
    let b = push_with(
        api,
        "gc/app",
        Some("b"),
        br#"{"os":"linux","n":"b"}"#,
        &[base, bytes_of(2100, 3)],
        json!({}),
    );
    let sig = push_with(
        api,
        "gc/app",
        None,
        br#"{"sig":"config"}"#,
        &[bytes_of(300, 4)],
        json!({"artifactType": "application/vnd.example.signature", "subject": a.desc().json()}),
    );
    let d =
        push_with(api, "gc/app", Some("d"), br#"{"os":"linux","n":"d"}"#, &[bytes_of(1500, 5)], json!({}));
    api.delete("/v2/gc/app/manifests/d").expect_status(202);
    let c = push_with(
        api,
        "gc/other",
        Some("c"),
        br#"{"os":"linux","n":"c"}"#,
        &[bytes_of(1700, 6), bytes_of(1800, 7)],
        json!({}),
    );
    api.delete(&format!("/v2/gc/other/manifests/{}", c.digest)).expect_status(202);
    let orphan_bytes = bytes_of(500, 8);
    let orphan = api.push_blob("gc/app", &orphan_bytes);
    let mut garbage: BTreeMap<String, u64> = std::iter::once(&c.config)
        .chain(c.layers.iter())
        .map(|d| (d.digest.clone(), d.size as u64))
        .collect();
    garbage.insert(orphan.clone(), orphan_bytes.len() as u64);
    // The referrers API lists the signature.
    let r = api.get(&format!("/v2/gc/app/referrers/{}", a.digest));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["manifests"][0]["digest"], json!(sig.digest), "{}", r.describe());
    Fixture { a, b, sig, d, c, orphan, garbage }
}

/// Everything referenced is intact after a GC; everything in `garbage` is gone.
fn assert_after_gc(api: &Api, f: &Fixture) {
    for img in [&f.a, &f.b, &f.sig, &f.d] {
        assert_pullable(api, "gc/app", img);
    }
    let r = api.get(&format!("/v2/gc/app/referrers/{}", f.a.digest));
    assert_eq!(r.json()["manifests"][0]["digest"], json!(f.sig.digest), "referrer kept: {}", r.describe());
    api.get(&format!("/v2/gc/other/manifests/{}", f.c.digest)).expect_err(404, "MANIFEST_UNKNOWN");
    for d in std::iter::once(&f.c.config).chain(f.c.layers.iter()) {
        assert_blob_gone(api, "gc/other", &d.digest);
    }
    assert_blob_gone(api, "gc/app", &f.orphan);
    assert_eq!(api.tags("gc/app"), vec!["a", "b"]);
}

fn gc_line(out: &CliOut) -> String {
    out.stdout.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn offline_gc_dry_run_reports_then_gc_removes_only_unreferenced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut w = Wharfie::start_in(&dir, &[]);
    let api = Api::new(&w);
    let f = populate(&api);

    // While the server holds the data directory, `wharfie gc` refuses, clearly.
    let busy = cli(&["gc", "--data-dir", &path_str(&dir)]);
    assert_ne!(busy.code, Some(0), "gc ran beside a live server:\n{}", busy.describe());
    assert!(busy.stderr.contains("stop it first"), "unclear refusal:\n{}", busy.describe());
    w.stop();

    let rows_before = blob_rows(&dir);
    let files_before = blob_files(&dir);
    let manifests_before = manifest_rows(&dir);
    assert_eq!(rows_before.len(), files_before.len());
    for g in f.garbage.keys() {
        assert!(rows_before.contains_key(g) && files_before.contains_key(g), "{g} was stored");
    }

    // Within the grace period (24 h by default) no blob goes; the deleted manifest does.
    let out = cli(&["gc", "--data-dir", &path_str(&dir), "--dry-run"]);
    out.ok();
    assert_eq!(gc_line(&out), "would remove 1 manifests, 0 blobs, 0 bytes", "{}", out.describe());

    age_blob_rows(&dir, 2 * DAY);
    let bytes: u64 = f.garbage.values().sum();
    let expected = format!("1 manifests, {} blobs, {bytes} bytes", f.garbage.len());
    let out = cli(&["gc", "--data-dir", &path_str(&dir), "--dry-run"]);
    out.ok();
    assert_eq!(gc_line(&out), format!("would remove {expected}"), "{}", out.describe());
    // A dry run changes nothing: the same files and rows.
    assert_eq!(blob_files(&dir), files_before, "dry run removed files");
    assert_eq!(blob_rows(&dir).keys().collect::<Vec<_>>(), rows_before.keys().collect::<Vec<_>>());
    assert_eq!(manifest_rows(&dir), manifests_before, "dry run removed manifest rows");

    let out = cli(&["gc", "--data-dir", &path_str(&dir)]);
    out.ok();
    assert_eq!(gc_line(&out), format!("removed {expected}"), "{}", out.describe());
    let rows = blob_rows(&dir);
    let files = blob_files(&dir);
    for g in f.garbage.keys() {
        assert!(!rows.contains_key(g), "row of {g} survived GC");
        assert!(!files.contains_key(g), "file of {g} survived GC");
    }
    assert_eq!(rows.len(), rows_before.len() - f.garbage.len());
    assert_eq!(rows.keys().collect::<Vec<_>>(), files.keys().collect::<Vec<_>>(), "rows and files agree");
    let manifests = manifest_rows(&dir);
    assert!(!manifests.contains(&f.c.digest), "manifest row of the deleted image survived");
    assert_eq!(manifests.len(), manifests_before.len() - 1);
    assert!(repo_blob_links(&dir).iter().all(|(_, d)| !f.garbage.contains_key(d)), "links of removed blobs");

    // A second run finds nothing.
    let again = cli(&["gc", "--data-dir", &path_str(&dir), "--grace", "0s"]);
    again.ok();
    assert_eq!(gc_line(&again), "removed 0 manifests, 0 blobs, 0 bytes", "{}", again.describe());

    let w = Wharfie::start_in(&dir, &[]);
    let api = Api::new(&w);
    assert_after_gc(&api, &f);
}

#[test]
fn scheduled_gc_in_the_server_collects_with_zero_grace() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut w = Wharfie::start_in(&dir, &[]);
    let f = populate(&Api::new(&w));
    w.stop();
    // Rows pushed within this second are not older than a grace of 0 s yet.
    age_blob_rows(&dir, 2);
    let env = [("WHARFIE_GC__INTERVAL", "200ms"), ("WHARFIE_GC__GRACE", "0s")];
    let w = Wharfie::start_with_env(&dir, &[], &env);
    let api = Api::new(&w);
    wait_for("the scheduled GC to remove the garbage files", Duration::from_secs(30), || {
        let files = blob_files(&dir);
        f.garbage.keys().all(|g| !files.contains_key(g)).then_some(())
    });
    assert_after_gc(&api, &f);
    let m = parse_metrics(&api.get("/metrics").text());
    assert!(metric_sum(&m, "wharfie_gc_runs_total", &[]) >= 1.0, "gc runs counted: {m:?}");
    assert_eq!(metric_sum(&m, "wharfie_gc_blobs_removed_total", &[]), f.garbage.len() as f64, "{m:?}");
    assert_eq!(metric_sum(&m, "wharfie_gc_manifests_removed_total", &[]), 1.0, "{m:?}");
}

/// A blob pushed again (or mounted) after it became unreferenced and old must get a
/// fresh grace period: the client's manifest is about to follow.
#[test]
fn repushed_or_mounted_old_blob_is_protected_by_the_grace_period() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut w = Wharfie::start_in(&dir, &[]);
    let api = Api::new(&w);
    let (x, y) = (bytes_of(1234, 40), bytes_of(2345, 41));
    let e = push_with(&api, "gc/re", Some("e"), br#"{"n":"e"}"#, &[x.clone(), y.clone()], json!({}));
    api.delete(&format!("/v2/gc/re/manifests/{}", e.digest)).expect_status(202);
    w.stop();
    age_blob_rows(&dir, 2 * DAY);

    let mut w = Wharfie::start_in(&dir, &[]);
    let api = Api::new(&w);
    api.push_blob("gc/re", &x);
    let r = api.send(api.req("POST", &format!("/v2/gc/re2/blobs/uploads/?mount={}&from=gc/re", sha256(&y))));
    assert_eq!(r.status, 201, "mount: {}", r.describe());
    w.stop();

    let out = cli(&["gc", "--data-dir", &path_str(&dir)]);
    out.ok();
    let cfg_size = e.config.size;
    assert_eq!(
        gc_line(&out),
        format!("removed 1 manifests, 1 blobs, {cfg_size} bytes"),
        "{}",
        out.describe()
    );

    let w = Wharfie::start_in(&dir, &[]);
    let api = Api::new(&w);
    let c1 = br#"{"n":"x"}"#;
    push_with(&api, "gc/re", Some("x"), c1, &[x], json!({}));
    let cfg = Desc::new(OCI_CONFIG, br#"{"n":"y"}"#);
    api.push_blob("gc/re2", br#"{"n":"y"}"#);
    let m = image_manifest(OCI_MANIFEST, &cfg, &[Desc::new(OCI_LAYER, &y)], json!({}));
    api.push_manifest("gc/re2", "y", OCI_MANIFEST, &m);
}

/// GC every 20 ms with no grace while four clients push images (sharing a base layer,
/// re-pushing layers of images deleted earlier) and delete older ones. Whatever was
/// acknowledged and not deleted is fully pullable afterwards, every blob file hashes to
/// its name, rows and files agree, and the deleted images' garbage is collected.
#[test]
fn gc_under_concurrent_pushes_loses_nothing_referenced() {
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 25;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let env = [("WHARFIE_GC__INTERVAL", "20ms"), ("WHARFIE_GC__GRACE", "0s")];
    let mut w = Wharfie::start_with_env(&dir, &[], &env);
    let base = Arc::new(bytes_of(4096, 7777));
    let kept: Arc<Mutex<Vec<(String, Image)>>> = Arc::default();
    let deleted: Arc<Mutex<Vec<(String, Image)>>> = Arc::default();
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(240);
    std::thread::scope(|s| {
        for t in 0..CLIENTS {
            let (w, base, kept, deleted, refused, stop) = (&w, &base, &kept, &deleted, &refused, &stop);
            s.spawn(move || {
                let api = Api::new(w);
                let repo = format!("load/c{t}");
                let mut mine: Vec<(Image, Vec<u8>, bool)> = Vec::new();
                for i in 0..ROUNDS {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let seed = (t * 1000 + i) as u64;
                    let unique = bytes_of(1000 + i * 13, seed);
                    let mut layers = vec![base.to_vec(), unique.clone()];
                    // A layer of an image deleted earlier: GC may be collecting it now.
                    if i >= 3 {
                        layers.push(mine[i - 3].1.clone());
                    }
                    let config = format!(r#"{{"client":{t},"round":{i}}}"#).into_bytes();
                    let cfg = Desc::new(OCI_CONFIG, &config);
                    api.push_blob(&repo, &config);
                    for l in &layers {
                        api.push_blob(&repo, l);
                    }
                    let descs: Vec<Desc> = layers.iter().map(|l| Desc::new(OCI_LAYER, l)).collect();
                    let manifest = image_manifest(OCI_MANIFEST, &cfg, &descs, json!({}));
                    let digest = sha256(&manifest);
                    let img = Image { config: cfg, layers: descs, manifest: manifest.clone(), digest };
                    let r = api.put_manifest(&repo, &format!("r{i}"), OCI_MANIFEST, &manifest);
                    let acked = match r.status {
                        201 => true,
                        // Only a blob collected between its push and the manifest (grace 0 s)
                        // may refuse a push — and then nothing was acknowledged.
                        400 => {
                            assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN", "{}", r.describe());
                            refused.lock().unwrap().push(format!("{repo}:r{i}"));
                            false
                        }
                        _ => panic!("manifest push {repo}:r{i}: {}", r.describe()),
                    };
                    mine.push((img, unique, acked));
                    if i >= 2 && mine[i - 2].2 {
                        let old = mine[i - 2].0.clone();
                        let r = api.delete(&format!("/v2/{repo}/manifests/{}", old.digest));
                        assert_eq!(r.status, 202, "delete {repo}@{}: {}", old.digest, r.describe());
                        mine[i - 2].2 = false;
                        deleted.lock().unwrap().push((repo.clone(), old));
                    }
                }
                let mut k = kept.lock().unwrap();
                for (img, _, alive) in mine {
                    if alive {
                        k.push((repo.clone(), img));
                    }
                }
            });
        }
    });
    stop.store(true, Ordering::Relaxed);
    let api = Api::new(&w);
    let refused = refused.lock().unwrap().clone();
    let mut kept_ok = 0;
    for (repo, img) in kept.lock().unwrap().iter() {
        assert_pullable(&api, repo, img);
        kept_ok += 1;
    }
    let deleted = deleted.lock().unwrap().clone();
    eprintln!(
        "gc under load: {kept_ok} kept images pullable, {} deleted, {} pushes refused (MANIFEST_BLOB_UNKNOWN)",
        deleted.len(),
        refused.len()
    );
    assert!(kept_ok > 0, "no push was acknowledged at all");
    // Garbage of deleted images (unique layers and configs not used by a kept image).
    let live: BTreeSet<String> = kept
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, i)| {
            std::iter::once(i.config.digest.clone()).chain(i.layers.iter().map(|l| l.digest.clone()))
        })
        .collect();
    let garbage: BTreeSet<String> = deleted
        .iter()
        .flat_map(|(_, i)| {
            std::iter::once(i.config.digest.clone()).chain(i.layers.iter().map(|l| l.digest.clone()))
        })
        .filter(|d| !live.contains(d))
        .collect();
    wait_for("GC to collect the deleted images' blobs", Duration::from_secs(60), || {
        let files = blob_files(&dir);
        garbage.iter().all(|g| !files.contains_key(g)).then_some(())
    });
    w.stop();
    let n = assert_blob_files_hash_to_names(&dir);
    let rows = blob_rows(&dir);
    assert_eq!(
        rows.keys().cloned().collect::<BTreeSet<_>>(),
        blob_files(&dir).keys().cloned().collect::<BTreeSet<_>>(),
        "every row has its file and every file its row"
    );
    assert!(rows.values().all(|r| r.get("deleting").is_none()), "rows left marked deleting");
    assert_indexes_exact(&dir);
    eprintln!("gc under load: {n} blob files on disk, all hash to their names");
}

/// GC rate: 10 000 small unreferenced blobs, collected by `wharfie gc` on the stopped
/// server's data directory. Prints blobs/s (no timed assertion).
#[test]
fn gc_rate_on_10k_unreferenced_blobs() {
    const N: usize = 10_000;
    const THREADS: usize = 4;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut w = Wharfie::start_in(&dir, &[]);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let w = &w;
            s.spawn(move || {
                let api = Api::new(w);
                for i in (t..N).step_by(THREADS) {
                    api.push_blob("rate/blobs", &bytes_of(100, i as u64 + 1));
                }
            });
        }
    });
    w.stop();
    assert_eq!(blob_files(&dir).len(), N);
    age_blob_rows(&dir, 2 * DAY);
    let out = cli(&["gc", "--data-dir", &path_str(&dir)]);
    out.ok();
    assert_eq!(
        gc_line(&out),
        format!("removed 0 manifests, {N} blobs, {} bytes", N * 100),
        "{}",
        out.describe()
    );
    assert_eq!(blob_files(&dir).len(), 0, "files left");
    assert_eq!(blob_rows(&dir).len(), 0, "rows left");
    let secs = out.elapsed.as_secs_f64();
    eprintln!(
        "GC RATE: {N} blobs in {secs:.2} s (whole `wharfie gc` process) = {:.0} blobs/s",
        N as f64 / secs
    );
}
