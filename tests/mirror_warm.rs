//! Warm lists (issue 13 item 3): an upstream's `warm` images are kept fresh in the
//! background every `tag_ttl`, against a real upstream (Debian's `docker-registry`),
//! counting what wharfie asks of it (`wharfie_upstream_requests_total`): the first
//! round fills the configured platform of an index and its layers; each later round
//! of an unchanged tag costs exactly one HEAD; a moved tag costs a GET and fills.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use std::collections::BTreeMap;
use std::time::Duration;

use wharfie_testkit::clients::ReferenceRegistry;
use wharfie_testkit::common::Wharfie;
use wharfie_testkit::oci::{Api, Http};
use wharfie_testkit::ops::{metric_sum, parse_metrics, wait_for};

const DEADLINE: Duration = Duration::from_secs(60);

fn metrics(api: &Api) -> BTreeMap<String, f64> {
    let r = api.get("/metrics");
    assert_eq!(r.status, 200, "GET /metrics");
    parse_metrics(&r.text())
}

/// Upstream requests of `kind` wharfie sent so far (any status).
fn upstream(m: &BTreeMap<String, f64>, kind: &str) -> u64 {
    let k = format!("kind=\"{kind}\"");
    metric_sum(m, "wharfie_upstream_requests_total", &["upstream=\"docker.io\"", &k]) as u64
}

/// (manifest GETs, manifest HEADs, blob GETs, everything) sent upstream so far.
fn counts(api: &Api) -> (u64, u64, u64, u64) {
    let m = metrics(api);
    let all = metric_sum(&m, "wharfie_upstream_requests_total", &["upstream=\"docker.io\""]) as u64;
    (upstream(&m, "manifest"), upstream(&m, "manifest_head"), upstream(&m, "blob"), all)
}

#[test]
fn warm_list_fills_the_configured_platform_and_an_unchanged_refresh_costs_one_head() {
    let reg = ReferenceRegistry::start();
    let up = Http::new(&format!("http://{}", reg.addr), Duration::from_secs(30));
    let (amd, arm, index) = up.push_two_arch_index("library/multi", "v1", 1, [20_000, 20_100]);

    let w = Wharfie::start_with_config(&format!(
        "[[upstreams]]\nname = \"docker.io\"\nurl = \"http://{}\"\ntag_ttl = \"2s\"\ntimeout = \"10s\"\n\
         warm = [\"multi:v1\"]\nwarm_platforms = [\"linux/amd64\"]\n",
        reg.addr
    ));
    let api = Api::new(&w);

    // The first round: the index and the amd64 image, its config and layer; not arm64.
    let first = wait_for("the first warm round to fill the amd64 image", DEADLINE, || {
        let c = counts(&api);
        (c.0 >= 2 && c.2 >= 2).then_some(c)
    });
    assert_eq!((first.0, first.1, first.2), (2, 0, 2), "first round: 2 manifest GETs, 2 blob GETs");
    eprintln!("warm first round: {} upstream requests in all", first.3);

    // Everything it filled is served without asking the upstream.
    let base = "/v2/docker.io/library/multi";
    let r = api.get(&format!("{base}/manifests/v1"));
    assert_eq!(r.status, 200, "the warm tag: {}", r.describe());
    assert!(r.body == index, "the index's bytes");
    for d in [&amd.digest, &amd.config.digest, &amd.layers[0].digest] {
        let kind = if *d == amd.digest { "manifests" } else { "blobs" };
        let r = api.get(&format!("{base}/{kind}/{d}"));
        assert_eq!(r.status, 200, "warm {kind} {d}: {}", r.describe());
    }
    let after_reads = counts(&api);
    assert_eq!(
        after_reads.3 - first.3,
        after_reads.1 - first.1,
        "reads of warm content asked the upstream for more than HEADs"
    );
    assert_eq!((after_reads.0, after_reads.2), (2, 2), "reads of warm content: no upstream GET");

    // Rounds of an unchanged tag: each exactly one HEAD, nothing else.
    let start = counts(&api);
    let later = wait_for("three more warm rounds", DEADLINE, || {
        let c = counts(&api);
        (c.1 >= start.1 + 3).then_some(c)
    });
    let heads = later.1 - start.1;
    assert_eq!(later.3 - start.3, heads, "unchanged refreshes sent more than HEADs: {start:?} → {later:?}");
    assert_eq!((later.0, later.2), (start.0, start.2), "unchanged refreshes sent GETs");
    eprintln!(
        "warm refresh of an unchanged tag: {heads} rounds, {} upstream requests (HEAD only)",
        later.3 - start.3
    );

    // The arm64 image was never filled: not on the list of platforms.
    assert!(arm.layers[0].digest != amd.layers[0].digest);
    let blobs_before = counts(&api).2;
    let r = api.get(&format!("{base}/blobs/{}", arm.layers[0].digest));
    assert_eq!(r.status, 200, "arm64 layer on demand: {}", r.describe());
    assert_eq!(counts(&api).2, blobs_before + 1, "the arm64 layer was not warm: one GET on demand");

    // The tag moves upstream: the next round GETs the new index and fills the new image.
    let (amd2, _, index2) = up.push_two_arch_index("library/multi", "v1", 2, [20_000, 20_100]);
    let moved = counts(&api);
    wait_for("a warm round to follow the moved tag", DEADLINE, || {
        let c = counts(&api);
        (c.0 >= moved.0 + 2 && c.2 >= moved.2 + 2).then_some(c)
    });
    let r = api.get(&format!("{base}/manifests/v1"));
    assert!(r.body == index2, "the moved tag's index");
    let before = counts(&api);
    let r = api.get(&format!("{base}/blobs/{}", amd2.layers[0].digest));
    assert_eq!(r.status, 200, "the new amd64 layer");
    assert_eq!(counts(&api).2, before.2, "the new amd64 layer was filled by the warm round");
}

#[test]
fn warm_entries_are_checked_at_startup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("wharfie.toml");
    std::fs::write(
        &cfg,
        "[[upstreams]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\nwarm = [\"library/nginx\"]\n",
    )
    .expect("write config");
    let out = std::process::Command::new(wharfie_testkit::common::built_wharfie())
        .args(["config", "check", "--config"])
        .arg(&cfg)
        .output()
        .expect("run wharfie config check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a warm entry without a tag was accepted");
    assert!(
        err.contains("warm") && err.contains("must be repository:tag"),
        "the error names the key and the rule: {err}"
    );
}
