//! Upstream limits (issue 13, item 4): `max_concurrent_fetches` queues fills and
//! manifest fetches beyond it in arrival order while coalescing still holds (N clients
//! of one digest are one queued fetch), a queued fetch whose clients went away leaves
//! the queue, a queue wait is no upstream failure, `max_bytes_per_sec` bounds the rate
//! of blob bodies, and `/metrics` shows the queue. Against the fault server, which
//! counts the GETs in progress at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;

use std::time::{Duration, Instant};

use common::{bytes_of, sha256, Wharfie};
use mirror::upstream::{FakeUpstream, Faults, Kind};
use mirror::{get, metric, Got};

const NAME: &str = "up.test";

fn start(up: &FakeUpstream, extra: &str) -> (Wharfie, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("wharfie.toml");
    std::fs::write(
        &cfg,
        format!("[[upstreams]]\nname = \"{NAME}\"\nurl = \"{}\"\ndown_min = \"1s\"\n{extra}\n", up.url()),
    )
    .expect("config");
    let cfg = cfg.display().to_string();
    let w = Wharfie::start_in(&tmp.path().join("data"), &["--config", &cfg]);
    (w, tmp)
}

fn blob_path(d: &str) -> String {
    format!("/v2/{NAME}/library/app/blobs/{d}")
}

fn queue_depth(w: &Wharfie) -> f64 {
    metric(w, &format!("wharfie_upstream_queue_depth{{upstream=\"{NAME}\"}}")).expect("the queue depth gauge")
}

/// Wait (bounded) until `cond` holds; panic with `what` otherwise.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET every path at once, each from its own thread.
fn get_all(w: &Wharfie, paths: &[String]) -> Vec<std::thread::JoinHandle<Got>> {
    paths
        .iter()
        .map(|p| {
            let (url_w, p) = (w.url(""), p.clone());
            std::thread::spawn(move || {
                let c = common::http_client(Duration::from_secs(90));
                let t = Instant::now();
                let r = c.get(format!("{}{}", url_w.trim_end_matches('/'), p)).send().expect("an answer");
                let status = r.status().as_u16();
                let mut r = r;
                let mut body = Vec::new();
                let cut = std::io::Read::read_to_end(&mut r, &mut body).is_err();
                Got { status, body, cut, took: t.elapsed(), retry_after: None }
            })
        })
        .collect()
}

#[test]
fn six_cold_blobs_under_a_limit_of_two_fetch_two_at_a_time() {
    let up = FakeUpstream::start();
    let blobs: Vec<Vec<u8>> = (0..6).map(|i| bytes_of(512 * 1024 + i * 1000, 40 + i as u64)).collect();
    let digests: Vec<String> = blobs.iter().map(|b| up.add_blob(b.clone())).collect();
    // Each body takes a while (8 chunks, 50 ms apart): the fetches overlap.
    up.faults(|f| {
        *f = Faults {
            retry_after: 1,
            throttle: Some((64 * 1024, Duration::from_millis(50))),
            ..Default::default()
        }
    });
    let (w, _tmp) = start(&up, "max_concurrent_fetches = 2");
    assert_eq!(queue_depth(&w), 0.0, "nothing queued before any fetch");
    up.hold();
    let t = Instant::now();
    let paths: Vec<String> = digests.iter().map(|d| blob_path(d)).collect();
    let clients = get_all(&w, &paths);
    // Two GETs reach the upstream (held there); four fills wait in the queue.
    wait_until("two GETs are upstream and four fetches are queued", || {
        up.gets_now() == 2 && queue_depth(&w) == 4.0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(up.gets_now(), 2, "no third GET while two are in progress");
    assert_eq!(queue_depth(&w), 4.0, "the queue holds the other four");
    up.release();
    for (i, c) in clients.into_iter().enumerate() {
        let g = c.join().expect("client thread");
        assert!(g.complete(blobs[i].len()), "blob {i}: {} cut={} {}", g.status, g.cut, g.text());
        assert_eq!(sha256(&g.body), digests[i], "blob {i}: the bytes");
    }
    let took = t.elapsed();
    assert_eq!(up.max_concurrent_gets(), 2, "the upstream saw at most 2 GETs at once: {}", up.summary());
    assert_eq!(up.count("GET", Kind::Blob), 6, "one GET per blob: {}", up.summary());
    assert_eq!(queue_depth(&w), 0.0, "the queue is empty again");
    let sum =
        metric(&w, &format!("wharfie_upstream_queue_wait_seconds_sum{{upstream=\"{NAME}\"}}")).expect("sum");
    let count = metric(&w, &format!("wharfie_upstream_queue_wait_seconds_count{{upstream=\"{NAME}\"}}"))
        .expect("count");
    assert_eq!(count, 6.0, "six fetches took a slot");
    assert!(sum > 0.0, "the queued fetches waited");
    eprintln!(
        "figure: 6 cold blobs (~0.5 MiB, ~0.4 s each upstream) under max_concurrent_fetches = 2: all whole in {:.2} s (after the hold), max 2 upstream GETs at once, queue wait sum {sum:.2} s over {count} fetches",
        took.as_secs_f64()
    );
}

#[test]
fn ten_clients_of_one_blob_are_one_queued_fetch() {
    let up = FakeUpstream::start();
    let first = bytes_of(100_000, 1);
    let shared = bytes_of(300_000, 2);
    let (d1, d2) = (up.add_blob(first.clone()), up.add_blob(shared.clone()));
    let (w, _tmp) = start(&up, "max_concurrent_fetches = 1");
    up.hold();
    // The one slot is taken by the first blob, held upstream.
    let a = get_all(&w, &[blob_path(&d1)]);
    wait_until("the first blob's GET is upstream", || up.gets_now() == 1);
    let many = get_all(&w, &vec![blob_path(&d2); 10]);
    let followers = || metric(&w, "wharfie_coalesced_followers_total").unwrap_or(0.0);
    wait_until("ten clients joined one queued fetch", || followers() == 9.0);
    assert_eq!(queue_depth(&w), 1.0, "ten clients of one blob are one queued fetch, not ten");
    assert_eq!(up.gets_now(), 1, "nothing else went upstream");
    up.release();
    for c in a {
        assert!(c.join().expect("client").complete(first.len()), "the first blob");
    }
    for c in many {
        let g = c.join().expect("client");
        assert!(g.complete(shared.len()), "shared blob: {} {}", g.status, g.text());
        assert!(g.body == shared, "shared blob: the bytes");
    }
    assert_eq!(up.count("GET", Kind::Blob), 2, "one GET per blob: {}", up.summary());
    assert_eq!(up.max_concurrent_gets(), 1, "one GET at a time: {}", up.summary());
}

#[test]
fn a_queued_fetch_whose_client_went_away_leaves_the_queue() {
    let up = FakeUpstream::start();
    let first = bytes_of(100_000, 3);
    let other = bytes_of(100_000, 4);
    let (d1, d2) = (up.add_blob(first.clone()), up.add_blob(other.clone()));
    let (w, _tmp) = start(&up, "max_concurrent_fetches = 1");
    up.hold();
    let a = get_all(&w, &[blob_path(&d1)]);
    wait_until("the first blob's GET is upstream", || up.gets_now() == 1);
    // This client gives up after a second, while its fetch is queued.
    let c = common::http_client(Duration::from_secs(1));
    let r = c.get(w.url(&blob_path(&d2))).send();
    assert!(r.is_err(), "the queued request answered while the slot was taken: {:?}", r.map(|r| r.status()));
    wait_until("the abandoned fetch left the queue", || queue_depth(&w) == 0.0);
    let abandoned = metric(&w, &format!("wharfie_upstream_queue_abandoned_total{{upstream=\"{NAME}\"}}"));
    assert_eq!(abandoned, Some(1.0), "counted as abandoned");
    up.release();
    for c in a {
        assert!(c.join().expect("client").complete(first.len()), "the first blob");
    }
    // The abandoned fetch never went upstream and left nothing behind.
    assert_eq!(up.count("GET", Kind::Blob), 1, "only the first blob was fetched: {}", up.summary());
    wait_until("no staging is left", || w.staging_entries() == 0);
    // Asked again, it is fetched (the key is free, nothing is cached wrong).
    let g = get(&w, &blob_path(&d2));
    assert!(g.complete(other.len()) && g.body == other, "the blob asked again: {} {}", g.status, g.text());
}

/// A fetch waits in the queue longer than the upstream's `timeout`: it neither times out
/// nor marks the upstream down.
#[test]
fn a_queue_wait_is_no_upstream_failure() {
    let up = FakeUpstream::start();
    let slow = bytes_of(256 * 1024, 5);
    let next = bytes_of(50_000, 6);
    let (d1, d2) = (up.add_blob(slow.clone()), up.add_blob(next.clone()));
    // The first body takes ~2.5 s (over `timeout` = 1s, and fast enough for the
    // slow-upstream guard); the second waits for its slot all that while.
    up.faults(|f| {
        *f = Faults {
            retry_after: 1,
            throttle: Some((32 * 1024, Duration::from_millis(350))),
            ..Default::default()
        }
    });
    let (w, _tmp) = start(&up, "max_concurrent_fetches = 1\ntimeout = \"1s\"");
    let a = get_all(&w, &[blob_path(&d1)]);
    wait_until("the slow blob's GET is upstream", || up.gets_now() == 1);
    let b = get_all(&w, &[blob_path(&d2)]);
    wait_until("the second fetch is queued", || queue_depth(&w) == 1.0);
    for c in a {
        let g = c.join().expect("client");
        assert!(g.complete(slow.len()) && g.body == slow, "the slow blob: {} {}", g.status, g.text());
    }
    for c in b {
        let g = c.join().expect("client");
        assert!(g.complete(next.len()) && g.body == next, "the queued blob: {} {}", g.status, g.text());
        assert!(g.took >= Duration::from_secs(1), "it did wait for the slot: {:?}", g.took);
    }
    let upg = metric(&w, &format!("wharfie_upstream_up{{upstream=\"{NAME}\"}}"));
    assert_eq!(upg, Some(1.0), "the upstream is still up after the queue wait");
}

#[test]
fn max_bytes_per_sec_bounds_the_rate_and_clients_get_whole_bytes() {
    let up = FakeUpstream::start();
    let data = bytes_of(4 * 1024 * 1024, 7);
    let d = up.add_blob(data.clone());
    let (w, _tmp) = start(&up, "max_bytes_per_sec = \"2MiB\"");
    let t = Instant::now();
    // A leader and two followers: the followers stream what arrived.
    let clients = get_all(&w, &vec![blob_path(&d); 3]);
    for c in clients {
        let g = c.join().expect("client");
        assert!(g.complete(data.len()), "{} cut={} {}", g.status, g.cut, g.text());
        assert!(g.body == data, "the bytes");
    }
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1500), "4 MiB at 2 MiB/s came in {took:?}");
    assert!(took < Duration::from_secs(30), "4 MiB at 2 MiB/s took {took:?}");
    assert_eq!(up.count("GET", Kind::Blob), 1, "one GET: {}", up.summary());
    eprintln!(
        "figure: 4 MiB blob under max_bytes_per_sec = 2MiB: 3 clients whole in {:.2} s",
        took.as_secs_f64()
    );
}

/// Manifest fetches take slots too: with the one slot held by a blob fill, a tag's
/// fetch waits (queued), then completes.
#[test]
fn manifest_fetches_queue_under_the_limit() {
    let up = FakeUpstream::start();
    let blob = bytes_of(100_000, 8);
    let d = up.add_blob(blob.clone());
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{m}\",\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{d}\",\"size\":{n}}},\"layers\":[]}}",
        m = wharfie_testkit::oci::OCI_MANIFEST,
        n = blob.len()
    );
    let md =
        up.add_manifest("library/app", Some("v1"), wharfie_testkit::oci::OCI_MANIFEST, manifest.as_bytes());
    let (w, _tmp) = start(&up, "max_concurrent_fetches = 1");
    up.hold();
    let a = get_all(&w, &[blob_path(&d)]);
    wait_until("the blob's GET is upstream", || up.gets_now() == 1);
    let path = format!("/v2/{NAME}/library/app/manifests/v1");
    let (ww, p) = (w.url(&path), path.clone());
    let m = std::thread::spawn(move || {
        let c = common::http_client(Duration::from_secs(60));
        let r = c.get(ww).header("Accept", wharfie_testkit::oci::OCI_MANIFEST).send().expect("answer");
        (r.status().as_u16(), r.bytes().expect("body").to_vec(), p)
    });
    wait_until("the manifest fetch is queued", || queue_depth(&w) == 1.0);
    assert_eq!(
        up.count("GET", Kind::Manifest) + up.count("HEAD", Kind::Manifest),
        0,
        "nothing sent while queued"
    );
    up.release();
    for c in a {
        assert!(c.join().expect("client").complete(blob.len()), "the blob");
    }
    let (status, body, _) = m.join().expect("manifest client");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(sha256(&body), md, "the manifest's bytes");
}
