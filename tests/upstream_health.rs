//! Upstream health (issue 9, item 3): an upstream that refuses connections or hangs
//! costs one request at most `timeout`, then it is marked down for a window: cached
//! tags are served without asking it, misses fail at once with 503 UNAVAILABLE,
//! `Retry-After` and the upstream's configured name (never its URL); one request probes
//! it when the window ends; `wharfie_upstream_up` follows. The misbehaving upstreams are
//! the real fake of tests/support/src/mirror (refuse: its listener closed; hang: it reads
//! the request and never answers). Windows are short (`down_min`) so the tests stay fast.
//!
//! `measure_outage_latencies` (ignored) prints the figures of the issue with the default
//! config; `HEALTH_TEST_BIN=path` runs it against another build (the code before the change).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{oci_code, Wharfie};
use mirror::upstream::{FakeUpstream, Kind};
use mirror::{get, Got};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const NAME: &str = "up.test";
const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
const TAG: &str = "/v2/up.test/library/app/manifests/v1";
/// Generous bound for the "< 50 ms" targets (the report gives the measured figures).
const FAST: Duration = Duration::from_millis(500);

/// The assertion these tests make of a request while the upstream is down.
trait Down {
    fn assert_down(&self, what: &str, cause: &str) -> u64;
}

impl Down for Got {
    /// A 503 UNAVAILABLE naming the upstream, with its cause and a Retry-After, and no
    /// trace of the upstream's address.
    fn assert_down(&self, what: &str, cause: &str) -> u64 {
        let t = self.text();
        assert_eq!((self.status, oci_code(&t).as_str()), (503, "UNAVAILABLE"), "{what}: {t}");
        assert!(t.contains(&format!("upstream {NAME} {cause}")), "{what}: the message names the cause: {t}");
        assert!(!t.contains("127.0.0.1") && !t.contains("http://"), "{what}: the upstream's URL leaked: {t}");
        assert!(!t.contains("storage"), "{what}: the cause is not storage: {t}");
        let ra = self.retry_after.unwrap_or_else(|| panic!("{what}: no Retry-After: {t}"));
        assert!(ra >= 1, "{what}: Retry-After {ra}");
        ra
    }
}

/// `wharfie_upstream_up{upstream="up.test"}`, and a counter, from GET /metrics.
fn metric(w: &Wharfie, line_start: &str) -> Option<u64> {
    let g = get(w, "/metrics");
    assert_eq!(g.status, 200, "/metrics");
    g.text()
        .lines()
        .find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse::<f64>().ok()))
        .map(|v| v as u64)
}

fn up_gauge(w: &Wharfie) -> Option<u64> {
    metric(w, &format!("wharfie_upstream_up{{upstream=\"{NAME}\"}} "))
}

fn stale_served(w: &Wharfie) -> u64 {
    metric(w, "wharfie_stale_served_total ").unwrap_or(0)
}

fn wharfie_cmd() -> Command {
    let bin = std::env::var("HEALTH_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wharfie").to_owned());
    Command::new(bin)
}

/// A wharfie mirroring `up` as `up.test` with `tag_ttl = "1s"` and `extra` keys.
fn start(up: &FakeUpstream, extra: &str) -> (Wharfie, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("wharfie.toml");
    std::fs::write(
        &cfg,
        format!("[[upstreams]]\nname = \"{NAME}\"\nurl = \"{}\"\ntag_ttl = \"1s\"\n{extra}", up.url()),
    )
    .expect("config");
    let dir = tmp.path().join("data");
    let mut cmd = wharfie_cmd();
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&dir)
        .env("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stderr(Stdio::inherit());
    (Wharfie::from_command(cmd, &dir), tmp)
}

/// Cache `v1`, then let its TTL run out.
fn cache_tag_and_expire(w: &Wharfie, up: &FakeUpstream) {
    up.add_manifest("library/app", Some("v1"), OCI_MANIFEST, MANIFEST);
    let g = get(w, TAG);
    assert_eq!(
        (g.status, g.body.as_slice()),
        (200, MANIFEST),
        "the pull while the upstream is up: {}",
        g.text()
    );
    // tag_ttl is 1 s, compared in whole seconds.
    std::thread::sleep(Duration::from_millis(1100));
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn refused_upstream_serves_stale_at_once_fails_misses_at_once_then_probes_and_recovers() {
    let mut up = FakeUpstream::start();
    let (w, _tmp) = start(&up, "timeout = \"5s\"\ndown_min = \"2s\"\ndown_max = \"8s\"\n");
    cache_tag_and_expire(&w, &up);
    assert_eq!(up_gauge(&w), Some(1), "the gauge while the upstream is up");
    let (blobs, heads, stale) = (w.blob_files(), up.count("HEAD", Kind::Manifest), stale_served(&w));
    up.stop(); // connections refused from now on

    // The cached tag: one refused connection, no retry loop.
    let g = get(&w, TAG);
    eprintln!("refused: stale tag served in {:?}", g.took);
    assert_eq!((g.status, g.body.as_slice()), (200, MANIFEST), "stale tag, refused: {}", g.text());
    assert!(g.took < Duration::from_secs(1), "the stale tag took {:?} (target < 1 s)", g.took);
    assert_eq!(up_gauge(&w), Some(0), "the gauge once the upstream is marked down");

    // Misses during the window: 503 at once, naming the upstream and the cause.
    let g = get(&w, "/v2/up.test/library/app/manifests/never");
    eprintln!("refused: miss during the window -> 503 in {:?}: {}", g.took, g.text());
    let ra = g.assert_down("manifest miss, down", "is unreachable (connection refused)");
    assert!(ra <= 3, "Retry-After {ra} for a 2 s window");
    assert!(g.took < FAST, "a miss while down took {:?} (target < 50 ms)", g.took);
    let blob = format!("/v2/up.test/library/app/blobs/sha256:{}", "ab".repeat(32));
    let g = get(&w, &blob);
    eprintln!("refused: blob miss during the window -> 503 in {:?}", g.took);
    g.assert_down("blob miss, down", "is unreachable (connection refused)");
    assert!(g.took < FAST, "a blob miss while down took {:?}", g.took);
    assert_eq!((w.blob_files(), w.staging_entries()), (blobs, 0), "a miss while down stored something");
    // The cached tag again: not even tried.
    let g = get(&w, TAG);
    eprintln!("refused: stale tag during the window in {:?}", g.took);
    assert_eq!((g.status, g.body.as_slice()), (200, MANIFEST), "stale tag, down: {}", g.text());
    assert!(g.took < FAST, "the stale tag while down took {:?}", g.took);
    assert_eq!(stale_served(&w) - stale, 2, "wharfie_stale_served_total");

    // The window ends, the upstream still refuses: the probe fails, the window doubles.
    std::thread::sleep(Duration::from_secs(ra) + Duration::from_millis(100));
    let g = get(&w, "/v2/up.test/library/app/manifests/never");
    eprintln!("refused: failed probe -> 503 in {:?}: {}", g.took, g.text());
    let ra = g.assert_down("failed probe", "is unreachable (connection refused)");
    assert!((3..=5).contains(&ra), "Retry-After {ra} after a failed probe (4 s ± 10 %)");
    assert_eq!(up_gauge(&w), Some(0));

    // The upstream is back; after the window the first request revalidates with a HEAD.
    up.resume();
    let g = get(&w, TAG);
    assert_eq!(g.status, 200, "stale tag while still marked down");
    assert_eq!(up.count("HEAD", Kind::Manifest), heads, "the upstream was asked while marked down");
    std::thread::sleep(Duration::from_secs(ra) + Duration::from_millis(100));
    let g = get(&w, TAG);
    assert_eq!((g.status, g.body.as_slice()), (200, MANIFEST), "after recovery: {}", g.text());
    assert_eq!(up.count("HEAD", Kind::Manifest), heads + 1, "one revalidating HEAD: {}", up.summary());
    assert_eq!(up_gauge(&w), Some(1), "the gauge after recovery");
    let g = get(&w, "/v2/up.test/library/app/manifests/never");
    assert_eq!((g.status, oci_code(&g.text()).as_str()), (404, "MANIFEST_UNKNOWN"), "a miss after recovery");
    assert_eq!(get(&w, "/readyz").status, 200, "/readyz");
}

#[test]
fn hung_upstream_costs_one_timeout_then_nothing_while_down_and_probes_one_at_a_time() {
    let up = FakeUpstream::start();
    let (w, _tmp) = start(&up, "timeout = \"1s\"\ndown_min = \"2s\"\ndown_max = \"8s\"\n");
    cache_tag_and_expire(&w, &up);
    up.faults(|f| f.stall = true);
    let n0 = up.total();

    // The first request waits out `timeout` once, then serves the cached tag.
    let g = get(&w, TAG);
    eprintln!("hung: 1st stale tag served in {:?}", g.took);
    assert_eq!((g.status, g.body.as_slice()), (200, MANIFEST), "stale tag, hung: {}", g.text());
    assert!(g.took < Duration::from_secs(3), "the 1st stale tag took {:?} (timeout = 1 s)", g.took);
    assert_eq!(up.total(), n0 + 1, "one HEAD: {}", up.summary());
    assert_eq!(up_gauge(&w), Some(0));
    // The next ones: nothing sent, no wait.
    let g = get(&w, TAG);
    eprintln!("hung: 2nd stale tag served in {:?}", g.took);
    assert_eq!(g.status, 200, "2nd stale tag, hung");
    assert!(g.took < FAST, "the 2nd stale tag took {:?} (target < 50 ms)", g.took);
    let g = get(&w, "/v2/up.test/library/app/manifests/other");
    eprintln!("hung: miss during the window -> 503 in {:?}: {}", g.took, g.text());
    let ra = g.assert_down("miss, hung", "is not answering (no response within 1s)");
    assert!(g.took < FAST, "a miss while down took {:?} (target < 50 ms)", g.took);
    assert_eq!(up.total(), n0 + 1, "the upstream was asked while marked down: {}", up.summary());

    // Half-open: one probe goes through; meanwhile the others still see "down".
    std::thread::sleep(Duration::from_secs(ra) + Duration::from_millis(100));
    let url = w.url("/v2/up.test/library/app/manifests/probe");
    let probe = std::thread::spawn(move || {
        let t = Instant::now();
        let r = reqwest::blocking::Client::new().get(url).send().expect("probe answered");
        let ra: Option<u64> =
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        (r.status().as_u16(), ra, t.elapsed())
    });
    wait_for("the probe reaches the upstream", Duration::from_secs(5), || up.total() == n0 + 2);
    let g = get(&w, TAG);
    assert_eq!(g.status, 200, "stale tag during the probe");
    assert!(g.took < FAST, "the stale tag during the probe took {:?}", g.took);
    let g = get(&w, "/v2/up.test/library/app/manifests/other");
    g.assert_down("miss during the probe", "is not answering");
    assert!(g.took < FAST, "a miss during the probe took {:?}", g.took);
    let (status, ra, took) = probe.join().expect("probe thread");
    eprintln!("hung: probe -> {status} after {took:?}, Retry-After {ra:?}");
    assert_eq!(status, 503, "the probe of a hung upstream");
    let ra = ra.expect("Retry-After on the failed probe");
    assert!((3..=5).contains(&ra), "Retry-After {ra} after a failed probe (4 s ± 10 %)");
    assert_eq!(up.total(), n0 + 2, "only the probe went upstream: {}", up.summary());

    // Healed: the first request after the window revalidates normally.
    up.faults(|f| f.stall = false);
    let heads = up.count("HEAD", Kind::Manifest);
    std::thread::sleep(Duration::from_secs(ra) + Duration::from_millis(100));
    let g = get(&w, TAG);
    assert_eq!((g.status, g.body.as_slice()), (200, MANIFEST), "after recovery: {}", g.text());
    assert_eq!(up.count("HEAD", Kind::Manifest), heads + 1, "one revalidating HEAD: {}", up.summary());
    assert_eq!(up_gauge(&w), Some(1));
}

#[test]
fn a_404_or_a_401_leaves_it_up_and_5xx_past_the_retries_marks_it_down() {
    let up = FakeUpstream::start();
    let (w, _tmp) = start(&up, "timeout = \"1s\"\ndown_min = \"30s\"\n");
    let g = get(&w, "/v2/up.test/library/none/manifests/v1");
    assert_eq!((g.status, oci_code(&g.text()).as_str()), (404, "MANIFEST_UNKNOWN"), "404 upstream");
    assert_eq!(up_gauge(&w), Some(1), "after a 404");
    up.faults(|f| {
        f.bearer = Some("tok".into());
        f.token_auth = Some("Basic nobody".into());
    });
    let g = get(&w, "/v2/up.test/library/app/manifests/v1");
    eprintln!("401 upstream: {} {}", g.status, g.text());
    assert_eq!(oci_code(&g.text()), "UNAVAILABLE", "credentials refused upstream: {}", g.text());
    assert!(g.retry_after.is_none(), "Retry-After for refused credentials");
    assert!(!g.text().contains("127.0.0.1"), "the upstream's URL leaked: {}", g.text());
    assert_eq!(up_gauge(&w), Some(1), "after a 401");

    up.faults(|f| {
        f.bearer = None;
        f.fail_500 = usize::MAX;
    });
    let n = up.total();
    let g = get(&w, "/v2/up.test/library/app/manifests/v1");
    eprintln!("500s: {} after {:?}: {}", g.status, g.took, g.text());
    let ra = g.assert_down("500s past the retries", "is failing (answered 500 Internal Server Error)");
    assert!(ra >= 20, "Retry-After {ra} for a 30 s window");
    assert!(up.total() - n >= 2, "the 500s were retried: {}", up.summary());
    assert_eq!(up_gauge(&w), Some(0), "after 500s past the retries");
    let n = up.total();
    let g = get(&w, "/v2/up.test/library/app/manifests/v2");
    g.assert_down("a miss while down", "is failing");
    assert_eq!(up.total(), n, "asked while down");
}

/// The figures of the issue, with the default config: refused (stale tag, miss, miss
/// again), hung (stale tag twice, then a miss), and a miss as the first request to meet
/// a refusing upstream. Prints them; asserts only status codes.
#[test]
#[ignore = "a measurement: cargo test --release --test upstream_health -- --ignored --nocapture"]
fn measure_outage_latencies() {
    let mut up = FakeUpstream::start();
    let (w, _tmp) = start(&up, "");
    cache_tag_and_expire(&w, &up);
    up.stop();
    let a = get(&w, TAG);
    let b = get(&w, "/v2/up.test/library/app/manifests/never");
    let c = get(&w, "/v2/up.test/library/app/manifests/never2");
    eprintln!("MEASURE refused: stale tag {} in {:?}", a.status, a.took);
    eprintln!("MEASURE refused: miss {} in {:?}: {}", b.status, b.took, b.text());
    eprintln!("MEASURE refused: 2nd miss {} in {:?}", c.status, c.took);
    assert_eq!((a.status, b.status, c.status), (200, 503, 503));

    let up = FakeUpstream::start();
    let (w, _tmp) = start(&up, "");
    cache_tag_and_expire(&w, &up);
    up.faults(|f| f.stall = true);
    let a = get(&w, TAG);
    let b = get(&w, TAG);
    let c = get(&w, "/v2/up.test/library/app/manifests/never");
    eprintln!("MEASURE hung: 1st stale tag {} in {:?}", a.status, a.took);
    eprintln!("MEASURE hung: 2nd stale tag {} in {:?}", b.status, b.took);
    eprintln!("MEASURE hung: miss {} in {:?}: {}", c.status, c.took, c.text());
    assert_eq!((a.status, b.status, c.status), (200, 200, 503));

    // A miss is the first request to find the upstream refusing (nothing cached).
    let mut up = FakeUpstream::start();
    let (w, _tmp) = start(&up, "");
    up.stop();
    let a = get(&w, "/v2/up.test/library/app/manifests/never");
    eprintln!("MEASURE refused: first miss (no window yet) {} in {:?}", a.status, a.took);
    assert_eq!(a.status, 503);
}
