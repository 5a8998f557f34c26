//! Referrers through the mirror (issue 13 item 2), against a real upstream: Debian's
//! `docker-registry` (Distribution 2.8, no referrers API). The test pushes, by HTTP, an
//! image, an artifact whose `subject` is that image, the referrers tag-schema index
//! (`sha256-<hex>`) that a client pushing to Distribution 2.8 writes, and a
//! cosign-style `sha256-<hex>.sig` tag; then pulls all of it through wharfie, and
//! serves the cached answer once the upstream is gone (stale-if-error).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use wharfie_testkit::clients::ReferenceRegistry;
use wharfie_testkit::common::{bytes_of, Wharfie};
use wharfie_testkit::oci::{Api, Http, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST};
use wharfie_testkit::ops::{metric_sum, parse_metrics};

const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const SBOM: &str = "application/vnd.example.sbom.v1";
const SIG_LAYER: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

fn metrics(api: &Api) -> BTreeMap<String, f64> {
    let r = api.get("/metrics");
    assert_eq!(r.status, 200, "GET /metrics");
    parse_metrics(&r.text())
}

/// Upstream requests of `kind` (with `status` when given) wharfie sent so far.
fn upstream(m: &BTreeMap<String, f64>, kind: &str, status: Option<&str>) -> u64 {
    let k = format!("kind=\"{kind}\"");
    let s = status.map(|s| format!("status=\"{s}\""));
    let mut labels = vec!["upstream=\"docker.io\"", k.as_str()];
    if let Some(s) = &s {
        labels.push(s);
    }
    metric_sum(m, "wharfie_upstream_requests_total", &labels) as u64
}

/// The digests listed by a referrers answer.
fn listed(r: &wharfie_testkit::oci::Resp) -> Vec<String> {
    let v = r.json();
    assert_eq!(v["mediaType"], OCI_INDEX, "referrers answer: {}", r.text());
    v["manifests"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d["digest"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

#[test]
fn referrers_and_sig_tags_come_through_the_mirror_cached_like_a_tag() {
    let reg = ReferenceRegistry::start();
    let up = Http::new(&format!("http://{}", reg.addr), Duration::from_secs(30));
    let repo = "library/app";

    // The subject image.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = bytes_of(5000, 7);
    let img = up.push_manifest_of(repo, Some("v1"), (OCI_CONFIG, config), &[(OCI_LAYER, &layer)], json!({}));
    let hex = img.digest.trim_start_matches("sha256:").to_owned();

    // An artifact with a subject (an SBOM), and the tag-schema index naming it.
    let sbom = bytes_of(3000, 8);
    let art = up.push_manifest_of(
        repo,
        None,
        (EMPTY, b"{}"),
        &[("application/spdx+json", &sbom)],
        json!({ "artifactType": SBOM, "subject": img.desc().json() }),
    );
    let art_desc = json!({
        "mediaType": OCI_MANIFEST, "digest": art.digest, "size": art.manifest.len(),
        "artifactType": SBOM, "annotations": { "org.example.kind": "sbom" },
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [art_desc],
    }))
    .expect("json");
    up.push_manifest(repo, &format!("sha256-{hex}"), OCI_INDEX, &index);

    // A cosign-style signature: a manifest under the `sha256-<hex>.sig` tag.
    let payload = format!(r#"{{"critical":{{"image":{{"docker-manifest-digest":"{}"}}}}}}"#, img.digest);
    let sig = up.push_manifest_of(
        repo,
        Some(&format!("sha256-{hex}.sig")),
        (OCI_CONFIG, br#"{"architecture":"","os":""}"#),
        &[(SIG_LAYER, payload.as_bytes())],
        json!({ "layers": [{
            "mediaType": SIG_LAYER, "digest": wharfie_testkit::common::sha256(payload.as_bytes()),
            "size": payload.len(), "annotations": { "dev.cosignproject.cosign/signature": "MEUCIQ" },
        }]}),
    );

    let w = Wharfie::start_with_config(&format!(
        "[[upstreams]]\nname = \"docker.io\"\nurl = \"http://{}\"\ntag_ttl = \"1s\"\ntimeout = \"10s\"\n\
         stale_if_error = true\n",
        reg.addr
    ));
    let api = Api::new(&w);
    let base = format!("/v2/docker.io/{repo}");

    // Cold: the referrers API (404 from Distribution 2.8), then the tag schema.
    let r = api.get(&format!("{base}/referrers/{}", img.digest));
    assert_eq!(r.status, 200, "referrers through the mirror: {}", r.describe());
    assert_eq!(listed(&r), vec![art.digest.clone()], "the artifact is listed");
    let v = r.json();
    assert_eq!(v["manifests"][0]["artifactType"], SBOM, "its artifactType: {}", r.text());
    assert_eq!(v["manifests"][0]["annotations"]["org.example.kind"], "sbom", "its annotations");
    let m0 = metrics(&api);
    assert_eq!(upstream(&m0, "referrers", Some("404")), 1, "one referrers API request: {m0:?}");
    assert_eq!(upstream(&m0, "manifest", Some("200")), 1, "one tag-schema GET: {m0:?}");

    // The artifactType filter works on the cached answer, and within the TTL nothing
    // goes upstream.
    let r = api.get(&format!("{base}/referrers/{}?artifactType={SBOM}", img.digest));
    assert_eq!(r.status, 200, "filtered: {}", r.describe());
    assert_eq!(r.h("OCI-Filters-Applied"), Some("artifactType"), "filter header");
    assert_eq!(listed(&r), vec![art.digest.clone()], "the filter keeps the SBOM");
    let r = api.get(&format!("{base}/referrers/{}?artifactType=application/vnd.other", img.digest));
    assert_eq!(listed(&r), Vec::<String>::new(), "another artifactType: none");
    let m1 = metrics(&api);
    assert_eq!(
        (
            upstream(&m1, "referrers", None),
            upstream(&m1, "manifest", None),
            upstream(&m1, "manifest_head", None)
        ),
        (1, 1, 0),
        "answers within tag_ttl went upstream: {m1:?}"
    );

    // The referrer and its blobs fill on demand through the mirrored name.
    let r = api.get(&format!("{base}/manifests/{}", art.digest));
    assert_eq!(r.status, 200, "the artifact manifest: {}", r.describe());
    assert!(r.body == art.manifest, "the artifact's bytes");
    let r = api.get(&format!("{base}/blobs/{}", art.layers[0].digest));
    assert_eq!(r.status, 200, "the artifact's blob: {}", r.describe());
    assert!(r.body == sbom, "the SBOM's bytes");

    // The cosign tag is a tag like any other.
    let r = api.get(&format!("{base}/manifests/sha256-{hex}.sig"));
    assert_eq!(r.status, 200, "the .sig tag: {}", r.describe());
    assert!(r.body == sig.manifest, "the signature manifest's bytes");
    let r = api.get(&format!("{base}/blobs/{}", sig.layers[0].digest));
    assert_eq!(r.status, 200, "the signature payload: {}", r.describe());
    assert!(r.body == payload.as_bytes(), "the payload's bytes");

    // Entitlement: the referrer is not readable through a repository whose upstream
    // does not have it, though it is stored here.
    let r = api.get(&format!("/v2/docker.io/library/other/manifests/{}", art.digest));
    r.expect_err(404, "MANIFEST_UNKNOWN");
    let r = api.get(&format!("/v2/docker.io/library/other/referrers/{}", img.digest));
    assert_eq!(r.status, 200, "referrers of another repository: {}", r.describe());
    assert_eq!(listed(&r), Vec::<String>::new(), "another repository lists none of app's referrers");

    // After the TTL, unchanged: the referrers API 404 again and one HEAD of the tag.
    std::thread::sleep(Duration::from_millis(1500));
    let before = metrics(&api);
    let r = api.get(&format!("{base}/referrers/{}", img.digest));
    assert_eq!(listed(&r), vec![art.digest.clone()], "revalidated");
    let after = metrics(&api);
    let delta = |k: &str| upstream(&after, k, None) - upstream(&before, k, None);
    assert_eq!(
        (delta("referrers"), delta("manifest_head"), delta("manifest")),
        (1, 1, 0),
        "revalidation of an unchanged referrers answer: {after:?}"
    );

    // The upstream goes away: the cached answer is served (stale-if-error).
    drop(reg);
    std::thread::sleep(Duration::from_millis(1500));
    let stale = metric_sum(&metrics(&api), "wharfie_stale_served_total", &[]);
    let r = api.get(&format!("{base}/referrers/{}?artifactType={SBOM}", img.digest));
    assert_eq!(r.status, 200, "upstream down: {}", r.describe());
    assert_eq!(listed(&r), vec![art.digest.clone()], "the stale answer, filtered");
    assert!(metric_sum(&metrics(&api), "wharfie_stale_served_total", &[]) > stale, "counted as stale");
    // A subject never asked about has nothing cached: a clear 503-class failure.
    let other = format!("sha256:{}", "0".repeat(64));
    let r = api.get(&format!("{base}/referrers/{other}"));
    assert!(r.status >= 500, "no cached answer with the upstream down: {}", r.describe());
}
