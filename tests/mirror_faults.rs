//! Upstream faults the mirror suite (tests/mirror.rs) does not cover (issue 5, item 3):
//! connection resets, a slow-loris body, a wrong `Content-Length` either way, a storm
//! of 429s, and an upstream that answers HTML (a captive portal or a misrouted proxy).
//! Each case asserts the client's outcome and that the cache is not poisoned: with the
//! upstream then failing every request, a GET serves either the exact bytes (a good
//! fill was cached) or an error, never other bytes; once the upstream is healthy the
//! pull succeeds with the right bytes (after the short window for which the failing
//! upstream was marked down).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;

use std::time::{Duration, Instant};

use common::{bytes_of, oci_code, sha256, Wharfie};
use mirror::upstream::{FakeUpstream, Kind};
use mirror::{get, Got};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const NAME: &str = "up.test";

fn start(up: &FakeUpstream, timeout: &str) -> (Wharfie, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("wharfie.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[upstreams]]\nname = \"{NAME}\"\nurl = \"{}\"\ntimeout = \"{timeout}\"\ndown_min = \"1s\"\n",
            up.url()
        ),
    )
    .expect("config");
    let cfg = cfg.display().to_string();
    let w = Wharfie::start_in(&tmp.path().join("data"), &["--config", &cfg]);
    (w, tmp)
}

fn wait_staging_empty(w: &Wharfie, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.staging_entries() != 0 {
        assert!(Instant::now() < deadline, "{what}: the failed fill's staging stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The cache holds `data` under `path`, or nothing: never other bytes. Then, with the
/// upstream healthy, the pull succeeds.
fn assert_unpoisoned(w: &Wharfie, up: &FakeUpstream, path: &str, data: &[u8], what: &str) {
    up.faults(|f| {
        *f = mirror::upstream::Faults { fail_500: usize::MAX, retry_after: 1, ..Default::default() }
    });
    let g = get(w, path);
    if g.status == 200 && !g.cut {
        assert!(g.body == data, "{what}: the cache serves {} bytes that are not the blob", g.body.len());
    }
    up.faults(|f| *f = mirror::upstream::Faults { retry_after: 1, ..Default::default() });
    let g = get_after_window(w, path);
    assert!(g.complete(data.len()), "{what}: the pull after the upstream healed: {} {}", g.status, g.text());
    assert!(g.body == data, "{what}: bytes after the upstream healed");
}

/// GET, and while the upstream is marked down (503 with `Retry-After`), wait out the
/// window and GET again (three times at most).
fn get_after_window(w: &Wharfie, path: &str) -> Got {
    let mut g = get(w, path);
    for _ in 0..3 {
        match g.retry_after {
            Some(secs) if g.status == 503 && secs <= 10 => {
                std::thread::sleep(Duration::from_secs(secs) + Duration::from_millis(100));
                g = get(w, path);
            }
            _ => break,
        }
    }
    g
}

#[test]
fn connection_resets_are_retried_and_a_reset_storm_fails_cleanly() {
    let up = FakeUpstream::start();
    let (w, _tmp) = start(&up, "5s");
    let data = bytes_of(300_000, 1);
    let d = up.add_blob(data.clone());
    let path = format!("/v2/{NAME}/library/app/blobs/{d}");
    // Two resets, then a good answer: retried, served whole.
    up.faults(|f| f.reset = 2);
    let g = get(&w, &path);
    assert!(g.complete(data.len()) && g.body == data, "after 2 resets: {} {}", g.status, g.text());
    assert!(up.count("GET", Kind::Blob) >= 3, "the resets were retried: {}", up.summary());

    // Every connection reset: a clean error within the upstream timeout's bound.
    let data2 = bytes_of(200_000, 2);
    let d2 = up.add_blob(data2.clone());
    let path2 = format!("/v2/{NAME}/library/app/blobs/{d2}");
    up.faults(|f| f.reset = usize::MAX);
    let g = get(&w, &path2);
    eprintln!("reset storm: {} after {:?}", g.status, g.took);
    assert!(!g.complete(data2.len()), "a reset storm produced a whole body");
    assert_eq!((g.status, oci_code(&g.text())), (503, "UNAVAILABLE".into()), "reset storm: {}", g.text());
    wait_staging_empty(&w, "reset storm");
    // A manifest by tag under a reset storm: the same.
    let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    up.add_manifest("library/app", Some("v1"), OCI_MANIFEST, m);
    let g = get(&w, &format!("/v2/{NAME}/library/app/manifests/v1"));
    assert_eq!(
        (g.status, oci_code(&g.text())),
        (503, "UNAVAILABLE".into()),
        "manifest under a reset storm: {}",
        g.text()
    );
    assert_unpoisoned(&w, &up, &path2, &data2, "reset storm");
    let g = get_after_window(&w, &format!("/v2/{NAME}/library/app/manifests/v1"));
    assert_eq!((g.status, g.body.as_slice()), (200, &m[..]), "manifest after the storm");
}

#[test]
fn a_slow_loris_upstream_body_is_bounded_and_not_cached() {
    let up = FakeUpstream::start();
    let (w, _tmp) = start(&up, "2s");
    let data = bytes_of(1 << 20, 3);
    let d = up.add_blob(data.clone());
    let path = format!("/v2/{NAME}/library/app/blobs/{d}");
    // 64 bytes every 50 ms: 1 MiB would take 14 minutes.
    up.faults(|f| f.throttle = Some((64, Duration::from_millis(50))));
    let g = get(&w, &path);
    eprintln!(
        "slow-loris body: status {} after {:?}, {} bytes, cut {}",
        g.status,
        g.took,
        g.body.len(),
        g.cut
    );
    assert!(!g.complete(data.len()), "a whole body from a slow-loris upstream within the test");
    assert!(g.took < Duration::from_secs(80), "the slow fill was not bounded: {:?}", g.took);
    wait_staging_empty(&w, "slow loris");
    assert_unpoisoned(&w, &up, &path, &data, "slow loris");
}

#[test]
fn a_wrong_content_length_never_yields_wrong_bytes() {
    let up = FakeUpstream::start();
    let (w, _tmp) = start(&up, "3s");
    for (i, delta) in [-1000i64, 1000, -1].into_iter().enumerate() {
        let what = format!("Content-Length off by {delta}");
        let data = bytes_of(500_000 + i, 10 + i as u64);
        let d = up.add_blob(data.clone());
        let path = format!("/v2/{NAME}/library/app/blobs/{d}");
        up.faults(|f| f.length_delta = delta);
        let g = get(&w, &path);
        eprintln!("{what}: status {}, {} bytes, cut {}", g.status, g.body.len(), g.cut);
        if g.complete(data.len()) {
            assert!(g.body == data, "{what}: a whole 200 body of wrong bytes");
        } else if !g.cut && g.status != 200 {
            assert!(g.status >= 500, "{what}: {} {}", g.status, g.text());
            assert!(!oci_code(&g.text()).is_empty());
        }
        assert!(
            !(g.status == 200 && !g.cut && g.body.len() != data.len()),
            "{what}: a 200 of the wrong length"
        );
        wait_staging_empty(&w, &what);
        assert_unpoisoned(&w, &up, &path, &data, &what);
    }
}

#[test]
fn a_429_storm_ends_in_a_clean_error_within_the_deadline() {
    let up = FakeUpstream::start();
    let (w, _tmp) = start(&up, "3s");
    let data = bytes_of(100_000, 20);
    let d = up.add_blob(data.clone());
    let path = format!("/v2/{NAME}/library/app/blobs/{d}");
    up.faults(|f| {
        f.fail_429 = usize::MAX;
        f.retry_after = 1;
    });
    let g = get(&w, &path);
    let asked = up.count("GET", Kind::Blob);
    eprintln!("429 storm: {} after {:?}, {asked} upstream GETs", g.status, g.took);
    assert_eq!((g.status, oci_code(&g.text())), (503, "UNAVAILABLE".into()), "429 storm: {}", g.text());
    assert!(asked <= 10, "Retry-After: 1 within a 3 s deadline allows a few tries, not {asked}");
    assert!(g.took < Duration::from_secs(30), "the storm was not bounded by the deadline: {:?}", g.took);
    wait_staging_empty(&w, "429 storm");
    assert_unpoisoned(&w, &up, &path, &data, "429 storm");
}

#[test]
fn an_upstream_answering_html_is_refused_and_not_cached() {
    let up = FakeUpstream::start();
    let (w, _tmp) = start(&up, "3s");
    let data = bytes_of(50_000, 30);
    let d = up.add_blob(data.clone());
    let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let md = up.add_manifest("library/app", Some("v1"), OCI_MANIFEST, m);
    up.faults(|f| f.html = true);
    // A manifest by tag and by digest: refused, with an OCI error.
    for r in ["v1", md.as_str()] {
        let g = get(&w, &format!("/v2/{NAME}/library/app/manifests/{r}"));
        eprintln!("HTML for manifest {r}: {} {}", g.status, g.text());
        assert!(g.status >= 500 || g.status == 404, "HTML manifest {r}: {} {}", g.status, g.text());
        assert!(!g.text().contains("<html"), "the HTML page was passed on as a manifest");
        assert!(!oci_code(&g.text()).is_empty());
    }
    // A blob: the HTML does not hash to the digest.
    let path = format!("/v2/{NAME}/library/app/blobs/{d}");
    let g = get(&w, &path);
    eprintln!("HTML for a blob: status {}, {} bytes, cut {}", g.status, g.body.len(), g.cut);
    assert!(!g.complete(data.len()), "a whole body from an HTML upstream");
    assert!(g.status != 200 || g.cut, "a clean 200 carrying the HTML page: {}", g.text());
    wait_staging_empty(&w, "HTML blob");
    assert_eq!(w.blob_files(), 0, "the HTML page was stored as a blob");
    assert_unpoisoned(&w, &up, &path, &data, "HTML blob");
    let g = get_after_window(&w, &format!("/v2/{NAME}/library/app/manifests/v1"));
    assert_eq!((g.status, g.body.as_slice()), (200, &m[..]), "the manifest once the upstream healed");
    assert_eq!(sha256(&g.body), md);
}
