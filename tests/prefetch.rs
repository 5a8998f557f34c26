//! `wharfie prefetch` (issue 13, item 1) against a running wharfie whose upstream is a
//! real registry (Debian's `docker-registry`): an image and a multi-platform index are
//! pulled through the mirror ahead of time, the `Wharfie-Cache` header says what was
//! held and what was fetched, a second run fetches nothing upstream, and everything
//! prefetched is served with the upstream stopped. Bad names and unknown tags fail
//! with the reason named and a non-zero exit. Against a fake upstream that holds a
//! blob's body: the header is `miss` for the client that started a fill, `coalesced`
//! for one that joined it, then `hit`. The per-upstream counters
//! (`wharfie_upstream_*{upstream}`) are checked against the known sequence of pulls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use wharfie_testkit::clients::ReferenceRegistry;
use wharfie_testkit::common::{bytes_of, sha256, Wharfie};
use wharfie_testkit::mirror::upstream::FakeUpstream;
use wharfie_testkit::oci::{Api, Http, Image, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST};
use wharfie_testkit::ops::{cli, metric_sum, parse_metrics, CliOut};

fn metrics(api: &Api) -> BTreeMap<String, f64> {
    let r = api.get("/metrics");
    assert_eq!(r.status, 200, "GET /metrics");
    parse_metrics(&r.text())
}

/// Upstream requests of `kind` wharfie sent to "up" so far (any status).
fn sent(api: &Api, kind: &str) -> u64 {
    let k = format!("kind=\"{kind}\"");
    metric_sum(&metrics(api), "wharfie_upstream_requests_total", &["upstream=\"up\"", &k]) as u64
}

/// The labelled per-upstream series `name{upstream="up"}`.
fn per_up(api: &Api, name: &str) -> u64 {
    let m = metrics(api);
    *m.get(&format!("{name}{{upstream=\"up\"}}"))
        .unwrap_or_else(|| panic!("no {name}{{upstream=\"up\"}} in /metrics")) as u64
}

fn blob_bytes(img: &Image) -> u64 {
    (img.config.size + img.layers.iter().map(|l| l.size).sum::<usize>()) as u64
}

fn prefetch(w: &Wharfie, args: &[&str]) -> CliOut {
    let mut all = vec!["prefetch", "--server", &w.base];
    all.extend_from_slice(args);
    cli(&all)
}

/// The summary line prefetch printed for `image`.
fn line<'a>(out: &'a CliOut, image: &str) -> &'a str {
    let start = format!("{image}: ");
    out.stdout
        .lines()
        .find(|l| l.starts_with(&start))
        .unwrap_or_else(|| panic!("no summary line for {image}:\n{}", out.describe()))
}

/// What a summary line says: (blobs cached, their bytes, blobs fetched now, their
/// bytes, manifests cached, manifests fetched).
fn tally(line: &str) -> [u64; 6] {
    fn fail<T>(line: &str) -> T {
        panic!("not a summary line: {line}")
    }
    let bad = || fail(line);
    let (left, right) = line.split_once(" already cached, ").unwrap_or_else(bad);
    // "N blob(s) (B bytes, …": the count and the exact bytes.
    let two = |part: &str| -> (u64, u64) {
        let t: Vec<&str> = part.split_whitespace().collect();
        let n = t.first().and_then(|v| v.parse().ok()).unwrap_or_else(|| fail(line));
        let b = t.get(2).and_then(|v| v.trim_start_matches('(').parse().ok()).unwrap_or_else(|| fail(line));
        (n, b)
    };
    let (cn, cb) = two(left.rsplit_once(": ").unwrap_or_else(bad).1);
    let (fnow, fb) = two(right);
    let m = line.rsplit_once("; manifests: ").unwrap_or_else(bad).1;
    let nums: Vec<u64> = m.split([' ', ',']).filter_map(|v| v.parse().ok()).collect();
    assert_eq!(nums.len(), 2, "manifests in {line}");
    [cn, cb, fnow, fb, nums[0], nums[1]]
}

struct Fixture {
    _reg: Option<ReferenceRegistry>,
    w: Wharfie,
    app: Image,
    amd: Image,
    arm: Image,
    index: Vec<u8>,
}

fn fixture() -> Fixture {
    let reg = ReferenceRegistry::start();
    let up = Http::new(&format!("http://{}", reg.addr), Duration::from_secs(30));
    let app = up.push_manifest_of(
        "library/app",
        Some("v1"),
        (OCI_CONFIG, br#"{"architecture":"amd64","os":"linux","app":1}"#),
        &[(OCI_LAYER, &bytes_of(300_000, 1)), (OCI_LAYER, &bytes_of(70_000, 2))],
        json!({}),
    );
    let (amd, arm, index) = up.push_two_arch_index("library/multi", "v1", 3, [40_000, 41_000]);
    let w = Wharfie::start_with_config(&format!(
        "[[upstreams]]\nname = \"up\"\nurl = \"http://{}\"\ntag_ttl = \"5m\"\ntimeout = \"10s\"\n",
        reg.addr
    ));
    Fixture { _reg: Some(reg), w, app, amd, arm, index }
}

#[test]
fn prefetch_fills_an_image_and_an_index_and_a_second_run_fetches_nothing() {
    let mut f = fixture();
    let api = Api::new(&f.w);
    let (app_b, amd_b, arm_b) = (blob_bytes(&f.app), blob_bytes(&f.amd), blob_bytes(&f.arm));

    // Run 1: the image, and only the amd64 platform of the index.
    let out = prefetch(&f.w, &["--platform", "linux/amd64", "up/library/app:v1", "up/library/multi:v1"]);
    out.ok();
    let app = line(&out, "up/library/app:v1");
    assert_eq!(tally(app), [0, 0, 3, app_b, 0, 1], "{app}");
    assert!(app.contains(": 1 manifest, 3 blobs: "), "{app}");
    let multi = line(&out, "up/library/multi:v1");
    assert_eq!(tally(multi), [0, 0, 2, amd_b, 0, 2], "{multi}");
    eprintln!("prefetch run 1:\n{}", out.stdout.trim_end());
    assert_eq!((sent(&api, "blob"), sent(&api, "manifest")), (5, 3), "run 1: one GET per blob and manifest");

    // Run 2: every platform. What run 1 fetched is cached; only arm64 is new.
    let out = prefetch(&f.w, &["up/library/app:v1", "up/library/multi:v1"]);
    out.ok();
    let app = line(&out, "up/library/app:v1");
    assert_eq!(tally(app), [3, app_b, 0, 0, 1, 0], "{app}");
    let multi = line(&out, "up/library/multi:v1");
    assert_eq!(tally(multi), [2, amd_b, 2, arm_b, 2, 1], "{multi}");
    eprintln!("prefetch run 2:\n{}", out.stdout.trim_end());
    assert_eq!((sent(&api, "blob"), sent(&api, "manifest")), (7, 4), "run 2: only the arm64 image upstream");

    // Run 3: everything is cached, and nothing is asked of the upstream.
    let before = metric_sum(&metrics(&api), "wharfie_upstream_requests_total", &["upstream=\"up\""]);
    let out = prefetch(&f.w, &["up/library/app:v1", "up/library/multi:v1"]);
    out.ok();
    assert_eq!(tally(line(&out, "up/library/app:v1")), [3, app_b, 0, 0, 1, 0]);
    let multi = line(&out, "up/library/multi:v1");
    assert_eq!(tally(multi), [4, amd_b + arm_b, 0, 0, 3, 0], "{multi}");
    eprintln!("prefetch run 3:\n{}", out.stdout.trim_end());
    let after = metric_sum(&metrics(&api), "wharfie_upstream_requests_total", &["upstream=\"up\""]);
    assert_eq!(after, before, "a prefetch of cached images sent requests upstream");

    // The per-upstream counters, by the sequence above: run 1 missed 3 manifests and
    // 5 blobs; run 2 hit 8 (2 tags, 1 child, 5 blobs) and missed 3 (arm64's manifest
    // and blobs); run 3 hit all 11.
    let (hits, misses) = (
        per_up(&api, "wharfie_upstream_cache_hits_total"),
        per_up(&api, "wharfie_upstream_cache_misses_total"),
    );
    assert_eq!((hits, misses), (19, 11), "hits and misses of upstream up");
    assert_eq!(per_up(&api, "wharfie_upstream_coalesced_followers_total"), 0);
    let fetched = per_up(&api, "wharfie_upstream_fetched_bytes_total");
    assert_eq!(fetched, app_b + amd_b + arm_b, "every blob came from the upstream once");
    let m = |img: &Image| img.manifest.len() as u64;
    let (app_m, idx) = (m(&f.app), f.index.len() as u64);
    let run1 = app_m + app_b + idx + m(&f.amd) + amd_b;
    let full = app_m + app_b + idx + m(&f.amd) + amd_b + m(&f.arm) + arm_b;
    let served = per_up(&api, "wharfie_upstream_served_bytes_total");
    assert_eq!(served, run1 + 2 * full, "bytes served from up's repositories");
    eprintln!(
        "upstream up: {hits} hits, {misses} misses, {fetched} bytes fetched, {served} bytes served, 0 coalesced"
    );
    // The totals stay as they were.
    let total = metrics(&api);
    assert_eq!(metric_sum(&total, "wharfie_cache_hits_total", &[]) as u64, hits);
    assert_eq!(metric_sum(&total, "wharfie_upstream_bytes_total", &[]) as u64, fetched);

    // The header itself, on GET and HEAD.
    let layer = &f.app.layers[0].digest;
    let r = api.get(&format!("/v2/up/library/app/blobs/{layer}"));
    assert_eq!((r.status, r.hdr("wharfie-cache")), (200, "hit"), "{}", r.describe());
    let r = api.head("/v2/up/library/app/manifests/v1");
    assert_eq!((r.status, r.hdr("wharfie-cache")), (200, "hit"), "{}", r.describe());

    // With the upstream stopped, every prefetched manifest and blob is served.
    f._reg = None;
    let base = "/v2/up/library";
    let r = api.send(api.req("GET", &format!("{base}/multi/manifests/v1")).header("Accept", OCI_INDEX));
    assert_eq!(r.status, 200, "the index with the upstream stopped: {}", r.describe());
    assert!(r.body == f.index, "the index's bytes");
    for (repo, img) in [("app", &f.app), ("multi", &f.amd), ("multi", &f.arm)] {
        let r = api.send(
            api.req("GET", &format!("{base}/{repo}/manifests/{}", img.digest)).header("Accept", OCI_MANIFEST),
        );
        assert_eq!(r.status, 200, "{repo} manifest: {}", r.describe());
        for d in std::iter::once(&img.config).chain(img.layers.iter()) {
            let r = api.get(&format!("{base}/{repo}/blobs/{}", d.digest));
            assert_eq!(r.status, 200, "{repo} blob {}: {}", d.digest, r.describe());
            assert_eq!(sha256(&r.body), d.digest, "{repo} blob bytes");
            assert_eq!(r.hdr("wharfie-cache"), "hit");
        }
    }
    let r = api.get(&format!("{base}/app/manifests/v1"));
    assert_eq!(r.status, 200, "the tag with the upstream stopped: {}", r.describe());
    // A hosted repository's answers carry no cache header.
    let pushed = api.push_image("team/app", Some("1"), 9, 1);
    let r = api.get(&format!("/v2/team/app/blobs/{}", pushed.layers[0].digest));
    assert_eq!((r.status, r.h("wharfie-cache")), (200, None), "hosted content has no Wharfie-Cache");
}

#[test]
fn bad_names_unknown_tags_and_platforms_fail_with_the_reason() {
    let f = fixture();
    let api = Api::new(&f.w);
    let files = f.w.blob_files();

    // A name no client could use: refused before anything is asked (usage error, 2).
    let out = prefetch(&f.w, &["Up/Library/App:v1"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("invalid repository name \"Up/Library/App\""), "{}", out.describe());
    let out = prefetch(&f.w, &["up/library/app@sha256:nothex"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    let out = prefetch(&f.w, &["--platform", "amd64", "up/library/multi:v1"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("--platform amd64: expected os/arch"), "{}", out.describe());
    assert_eq!(sent(&api, "manifest") + sent(&api, "blob"), 0, "nothing was asked upstream");

    // An unknown tag: the server's OCI code and status, exit 1, nothing stored.
    let out = prefetch(&f.w, &["up/library/app:nope"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("prefetch up/library/app:nope: manifest: MANIFEST_UNKNOWN (404)"),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains("1 of 1 image not prefetched"), "{}", out.describe());
    assert_eq!(f.w.blob_files(), files, "nothing was stored");

    // A platform the index does not have.
    let out = prefetch(&f.w, &["--platform", "linux/s390x", "up/library/multi:v1"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("the index has no manifest for linux/s390x (it has linux/amd64, linux/arm64)"),
        "{}",
        out.describe()
    );
    assert_eq!(sent(&api, "blob"), 0, "no blob was fetched for a platform that is not there");

    // One good image and one bad: the good one is prefetched, the exit says one failed.
    let out = prefetch(&f.w, &["up/library/app:v1", "up/library/app:gone"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let app = line(&out, "up/library/app:v1");
    assert_eq!(tally(app), [0, 0, 3, blob_bytes(&f.app), 0, 1], "{app}");
    assert!(
        out.stderr.contains("up/library/app:gone: manifest: MANIFEST_UNKNOWN (404)"),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains("1 of 2 images not prefetched"), "{}", out.describe());

    // No server there at all.
    let out = cli(&["prefetch", "--server", "http://127.0.0.1:9", "up/library/app:v1"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stderr.contains("no registry at http://127.0.0.1:9"), "{}", out.describe());
    eprintln!("prefetch errors as printed:\n{}", out.stderr.trim_end());
}

#[test]
fn the_cache_header_tells_a_fill_started_from_one_joined_and_a_hit() {
    let up = FakeUpstream::start();
    let blob = bytes_of(200_000, 7);
    let d = up.add_blob(blob.clone());
    let w = Wharfie::start_with_config(&format!("[[upstreams]]\nname = \"up\"\nurl = \"{}\"\n", up.url()));
    let path = format!("/v2/up/library/app/blobs/{d}");
    let get = |url: String| {
        std::thread::spawn(move || {
            let c = wharfie_testkit::common::http_client(Duration::from_secs(60));
            let r = c.get(url).send().expect("an answer");
            let cache = r.headers().get("wharfie-cache").map(|v| v.to_str().expect("text").to_owned());
            (r.status().as_u16(), cache, r.bytes().expect("body").to_vec())
        })
    };
    let followers = || {
        let api = Api::new(&w);
        metric_sum(&metrics(&api), "wharfie_upstream_coalesced_followers_total", &["upstream=\"up\""]) as u64
    };
    up.hold();
    let first = get(w.url(&path));
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while up.gets_now() < 1 {
        assert!(std::time::Instant::now() < end, "the fill's GET never reached the upstream");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = get(w.url(&path));
    while followers() < 1 {
        assert!(std::time::Instant::now() < end, "the second client never joined the fill");
        std::thread::sleep(Duration::from_millis(20));
    }
    up.release();
    let (a, b) = (first.join().expect("first"), second.join().expect("second"));
    assert_eq!((a.0, a.1.as_deref()), (200, Some("miss")), "the client that started the fill");
    assert_eq!((b.0, b.1.as_deref()), (200, Some("coalesced")), "the client that joined it");
    assert!(a.2 == blob && b.2 == blob, "both got the blob's bytes");
    let c = get(w.url(&path)).join().expect("third");
    assert_eq!((c.0, c.1.as_deref()), (200, Some("hit")), "served from the cache");
    eprintln!(
        "Wharfie-Cache: miss, coalesced, hit ({} upstream blob GET)",
        up.count("GET", wharfie_testkit::mirror::upstream::Kind::Blob)
    );
}
