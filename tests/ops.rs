//! Operations end to end (issue 4, items 3, 4 and 7): `wharfie verify` on a real data
//! directory with corrupted files, `/metrics` `/healthz` `/readyz` and JSON logs of
//! the real server, and TLS (HTTP/1.1 and HTTP/2 over ALPN) with reqwest and skopeo.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;
use wharfie_testkit::oci;
use wharfie_testkit::ops;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bytes_of, sha256, Wharfie};
use mirror::real;
use mirror::upstream::{FakeUpstream, Kind};
use oci::*;
use ops::*;

fn mirror_config(dir: &Path, upstream: &FakeUpstream, extra: &str) -> std::path::PathBuf {
    let p = dir.join("mirror.toml");
    std::fs::write(&p, format!("[[upstreams]]\nname = \"up\"\nurl = \"{}\"\n{extra}", upstream.url()))
        .unwrap();
    p
}

// ---------------------------------------------------------------------------
// verify

#[test]
fn verify_detects_quarantines_and_reports_corrupt_blobs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let up = FakeUpstream::start();
    let mirrored = bytes_of(200_000, 90);
    let md = up.add_blob(mirrored.clone());
    let cfg = mirror_config(tmp.path(), &up, "");
    let cfg_s = path_str(&cfg);
    let dir_s = path_str(&dir);
    let mut w = Wharfie::start_in(&dir, &["--config", &cfg_s]);
    let api = Api::new(&w);
    let img = api.push_image("v/app", Some("v1"), 3, 3);
    let r = api.get(&format!("/v2/up/lib/m/blobs/{md}"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, mirrored);
    w.stop();
    let total = blob_files(&dir).len();

    // A clean store verifies, fast and full, with exit 0.
    for mode in [&[][..], &["--full"][..]] {
        let out = cli(&[&["verify", "--config", &cfg_s, "--data-dir", &dir_s][..], mode].concat());
        out.ok();
        assert!(out.stdout.starts_with(&format!("checked {total} blobs (")), "{}", out.describe());
        assert!(out.stdout.contains("): 0 corrupt"), "{}", out.describe());
    }

    // Flip a byte in a pushed layer and in the mirrored blob: the fast (blake3) pass finds both.
    let (p0, p1) = (img.layers[0].digest.clone(), img.layers[1].digest.clone());
    flip_byte(&blob_path(&dir, &p0), 10);
    flip_byte(&blob_path(&dir, &md), 100_000);
    let corrupt_p0 = std::fs::read(blob_path(&dir, &p0)).unwrap();
    let out = cli(&["verify", "--config", &cfg_s, "--data-dir", &dir_s]);
    assert_eq!(out.code, Some(1), "corruption must fail verify:\n{}", out.describe());
    assert!(out.stdout.contains(&format!("checked {total} blobs")), "{}", out.describe());
    assert!(out.stdout.contains("): 2 corrupt"), "{}", out.describe());
    for d in [&p0, &md] {
        assert!(out.stdout.contains(&format!("corrupt blob {d} (")), "{d} not reported:\n{}", out.describe());
        let q = dir.join("quarantine").join(d.trim_start_matches("sha256:"));
        assert!(q.is_file(), "{d} not in quarantine/");
        assert!(!blob_path(&dir, d).exists(), "{d} still under blobs/");
        assert!(!blob_rows(&dir).contains_key(d.as_str()), "{d} still has a row");
    }
    assert_eq!(
        std::fs::read(dir.join("quarantine").join(p0.trim_start_matches("sha256:"))).unwrap(),
        corrupt_p0
    );

    // --full (sha256) finds a corruption too.
    flip_byte(&blob_path(&dir, &p1), 0);
    let out = cli(&["verify", "--full", "--config", &cfg_s, "--data-dir", &dir_s]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stdout.contains(&format!("corrupt blob {p1} (pushed")), "{}", out.describe());
    assert!(out.stdout.contains("): 1 corrupt"), "{}", out.describe());

    // The server no longer serves the bad bytes: pushed content is unknown, mirrored
    // content is fetched again from the upstream.
    let mut w = Wharfie::start_in(&dir, &["--config", &cfg_s]);
    let api = Api::new(&w);
    for d in [&p0, &p1] {
        api.get(&format!("/v2/v/app/blobs/{d}")).expect_err(404, "BLOB_UNKNOWN");
        api.head(&format!("/v2/v/app/blobs/{d}")).expect_head_err(404);
    }
    let before = up.count("GET", Kind::Blob);
    let r = api.get(&format!("/v2/up/lib/m/blobs/{md}"));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(sha256(&r.body), md, "the refetched blob is the right one");
    assert_eq!(up.count("GET", Kind::Blob), before + 1, "refetched once: {}", up.summary());
    // Re-pushing the layers makes the image whole again.
    api.push_blob("v/app", &bytes_of(1000, 3 * 100 + 1));
    api.push_blob("v/app", &bytes_of(1017, 3 * 100 + 2));
    for d in &img.layers {
        let r = api.get(&format!("/v2/v/app/blobs/{}", d.digest));
        assert_eq!(sha256(&r.body), d.digest);
    }
    w.stop();
    let out = cli(&["verify", "--full", "--config", &cfg_s, "--data-dir", &dir_s]);
    out.ok();
    assert!(out.stdout.contains("): 0 corrupt"), "{}", out.describe());
}

#[test]
fn verify_refuses_while_the_server_runs() {
    let w = Wharfie::start();
    let out = cli(&["verify", "--data-dir", &path_str(&w.dir)]);
    assert_ne!(out.code, Some(0), "{}", out.describe());
    assert!(out.stderr.contains("stop it first"), "{}", out.describe());
}

/// The data directory is held by a running server (the typed `MetaError::Locked`):
/// `inventory`, like `import` and `export`, talks to that server over HTTP instead of
/// failing or starting a second one. The server's own request counter proves it.
#[test]
fn cli_talks_to_the_running_server_that_holds_the_data_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let cfg = write_config(tmp.path(), free_port(), &dir, "");
    let srv = serve_config(&cfg, &dir);
    let out = cli(&["inventory", "--config", &path_str(&cfg), "-o", "-"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let inv: serde_json::Value = serde_json::from_str(&out.stdout).expect("inventory JSON on stdout");
    assert!(inv.is_object(), "{inv}");
    let metrics =
        reqwest::blocking::get(format!("{}/metrics", srv.base)).expect("metrics").text().expect("text");
    let m = parse_metrics(&metrics);
    let served: f64 =
        m.iter().filter(|(k, _)| k.starts_with("wharfie_http_requests_total")).map(|(_, v)| v).sum();
    assert!(served >= 2.0, "the running server saw no ping and inventory request:\n{metrics}");
}

// ---------------------------------------------------------------------------
// metrics, health, logs

#[test]
fn metrics_health_and_readiness() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let up = FakeUpstream::start();
    let mirrored = bytes_of(50_000, 91);
    let md = up.add_blob(mirrored.clone());
    let cfg = mirror_config(tmp.path(), &up, "");
    let w = Wharfie::start_in(&tmp.path().join("data"), &["--config", &path_str(&cfg)]);
    let api = Api::new(&w);
    api.get("/healthz").expect_status(200);
    api.get("/readyz").expect_status(200);
    let img = api.push_image("m/app", Some("v1"), 5, 2);
    let r = api.get(&format!("/v2/m/app/blobs/{}", img.layers[0].digest));
    assert_eq!(r.status, 200);
    api.get("/v2/m/app/manifests/nope").expect_err(404, "MANIFEST_UNKNOWN");
    for _ in 0..2 {
        let r = api.get(&format!("/v2/up/lib/m/blobs/{md}"));
        assert_eq!(r.body, mirrored);
    }
    let r = api.get("/metrics");
    r.expect_status(200);
    assert!(r.hdr("content-type").starts_with("text/plain"), "{}", r.describe());
    let text = r.text();
    for family in [
        "wharfie_http_requests_total counter",
        "wharfie_http_response_bytes_total counter",
        "wharfie_http_request_duration_seconds histogram",
        "wharfie_cache_hits_total counter",
        "wharfie_cache_misses_total counter",
        "wharfie_upstream_requests_total counter",
        "wharfie_coalesced_followers_total counter",
        "wharfie_gc_runs_total counter",
        "wharfie_gc_blobs_removed_total counter",
        "wharfie_gc_manifests_removed_total counter",
        "wharfie_evicted_blobs_total counter",
        "wharfie_evicted_bytes_total counter",
        "wharfie_store_blobs gauge",
        "wharfie_store_bytes gauge",
    ] {
        assert!(text.contains(&format!("# TYPE {family}")), "no `# TYPE {family}` in /metrics:\n{text}");
    }
    let m = parse_metrics(&text);
    let req = |labels: &[&str]| metric_sum(&m, "wharfie_http_requests_total", labels);
    assert!(req(&["route=\"blob\"", "method=\"GET\"", "status=\"200\""]) >= 3.0, "{text}");
    assert_eq!(req(&["route=\"manifest\"", "method=\"PUT\"", "status=\"201\""]), 1.0, "{text}");
    assert_eq!(req(&["route=\"manifest\"", "method=\"GET\"", "status=\"404\""]), 1.0, "{text}");
    assert_eq!(req(&["route=\"healthz\""]), 1.0, "{text}");
    assert!(
        metric_sum(&m, "wharfie_http_response_bytes_total", &["route=\"blob\""])
            >= (2 * mirrored.len()) as f64,
        "{text}"
    );
    assert!(metric_sum(&m, "wharfie_http_request_duration_seconds_count", &[]) >= 8.0, "{text}");
    assert_eq!(metric_sum(&m, "wharfie_cache_misses_total", &[]), 1.0, "{text}");
    assert_eq!(metric_sum(&m, "wharfie_cache_hits_total", &[]), 1.0, "{text}");
    assert_eq!(
        metric_sum(&m, "wharfie_upstream_requests_total", &["upstream=\"up\"", "kind=\"blob\""]),
        1.0,
        "{text}"
    );
    let pushed_bytes: usize = img.config.size + img.layers.iter().map(|l| l.size).sum::<usize>();
    assert_eq!(metric_sum(&m, "wharfie_store_blobs", &["origin=\"pushed\""]), 3.0, "{text}");
    assert_eq!(metric_sum(&m, "wharfie_store_bytes", &["origin=\"pushed\""]), pushed_bytes as f64, "{text}");
    assert_eq!(metric_sum(&m, "wharfie_store_blobs", &["origin=\"mirrored\""]), 1.0, "{text}");
    assert_eq!(
        metric_sum(&m, "wharfie_store_bytes", &["origin=\"mirrored\""]),
        mirrored.len() as f64,
        "{text}"
    );
}

#[test]
fn json_log_format_emits_one_json_object_per_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharfie"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("WHARFIE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn wharfie");
    let stdout = child.stdout.take().unwrap();
    let mut guard = real::ChildGuard(Some(child));
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("listening line");
    let base = line.trim().strip_prefix("listening on ").expect("listening line").to_owned();
    let c = reqwest::blocking::Client::new();
    assert_eq!(c.get(format!("{base}/v2/")).send().expect("GET /v2/").status(), 200);
    let child = guard.0.as_mut().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let st = wait_for("wharfie to stop", Duration::from_secs(30), || child.try_wait().ok().flatten());
    assert_eq!(st.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "too few log lines:\n{text}");
    let mut saw_request = false;
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        if v["target"] == "wharfie::request" {
            saw_request = true;
            assert_eq!(v["fields"]["path"], "/v2/", "{l}");
            assert_eq!(v["fields"]["status"], 200, "{l}");
        }
    }
    assert!(saw_request, "no request line in:\n{text}");
}

// ---------------------------------------------------------------------------
// TLS

fn tls_server(tls: &Tls, dir: &Path) -> Wharfie {
    let (c, k) = (path_str(&tls.cert), path_str(&tls.key));
    let w = Wharfie::start_with_env(dir, &[], &[("WHARFIE_TLS__CERT", &c), ("WHARFIE_TLS__KEY", &k)]);
    assert!(w.base.starts_with("https://127.0.0.1:"), "{}", w.base);
    w
}

#[test]
fn tls_serves_http1_and_http2_by_alpn_and_refuses_plain_http() {
    let tls = test_ca_and_cert();
    let tmp = tempfile::tempdir().expect("tempdir");
    let w = tls_server(&tls, &tmp.path().join("data"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&tls.ca).unwrap()).unwrap();
    let h2 = reqwest::blocking::Client::builder()
        .add_root_certificate(ca.clone())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let h1 = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for (seed, client, version) in [(1, &h2, reqwest::Version::HTTP_2), (2, &h1, reqwest::Version::HTTP_11)] {
        let r = client.get(format!("{}/v2/", w.base)).send().expect("GET /v2/ over TLS");
        assert_eq!(r.version(), version);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
        // A blob push and pull over each version.
        let data = bytes_of(300_000, seed);
        let d = sha256(&data);
        let r = client
            .post(format!("{}/v2/tls/blob/blobs/uploads/?digest={d}", w.base))
            .header("Content-Type", "application/octet-stream")
            .body(data.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text());
        let r = client.get(format!("{}/v2/tls/blob/blobs/{d}", w.base)).send().unwrap();
        assert_eq!(r.version(), version);
        assert_eq!(r.bytes().unwrap().as_ref(), &data[..]);
    }
    // Without the CA the certificate is refused.
    let strict = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    assert!(strict.get(format!("{}/v2/", w.base)).send().is_err(), "an unknown CA was accepted");
    // Plain HTTP to the TLS port fails at once (no hang), and the server keeps serving.
    let plain_url = w.base.replacen("https://", "http://", 1);
    let plain = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let e = plain.get(format!("{plain_url}/v2/")).send().expect_err("plain HTTP on the TLS port answered");
    assert!(!e.is_timeout(), "plain HTTP hung until the timeout: {e}");
    assert_eq!(h2.get(format!("{}/v2/", w.base)).send().unwrap().status(), 200);
}

/// An upstream's `ca_file` is read at configuration load and its certificates trusted
/// by the mirror's client: a blob pulls through a TLS upstream signed by the test CA,
/// and the same upstream without the CA is refused (the mirror answers, stores nothing).
#[test]
fn a_tls_upstream_is_trusted_through_its_ca_file() {
    let tls = test_ca_and_cert();
    let tmp = tempfile::tempdir().expect("tempdir");
    let up = tls_server(&tls, &tmp.path().join("up"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&tls.ca).unwrap()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let data = bytes_of(200_000, 7);
    let d = sha256(&data);
    let r = client
        .post(format!("{}/v2/tls/app/blobs/uploads/?digest={d}", up.base))
        .header("Content-Type", "application/octet-stream")
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text());
    let table = |ca: &str| format!(r#"[{{name = "tier", url = "{}", timeout = "5s"{ca}}}]"#, up.base);
    let with_ca = table(&format!(r#", ca_file = "{}""#, path_str(&tls.ca)));
    let m = Wharfie::start_with_env(&tmp.path().join("m"), &[], &[("WHARFIE_UPSTREAMS", &with_ca)]);
    let http = common::http_client(Duration::from_secs(30));
    let r = http.get(format!("{}/v2/tier/tls/app/blobs/{d}", m.base)).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..], "the blob through the TLS upstream");
    drop(m);
    let without = table("");
    let m = Wharfie::start_with_env(&tmp.path().join("m2"), &[], &[("WHARFIE_UPSTREAMS", &without)]);
    let r = http.get(format!("{}/v2/tier/tls/app/blobs/{d}", m.base)).send().unwrap();
    assert_eq!(r.status(), 503, "an upstream signed by an unknown CA is unreachable");
    assert_eq!(blob_files(&tmp.path().join("m2")).len(), 0, "nothing stored from it");
}

#[test]
fn skopeo_pushes_and_pulls_over_tls_with_verification() {
    let tls = test_ca_and_cert();
    let tmp = tempfile::tempdir().expect("tempdir");
    let w = tls_server(&tls, &tmp.path().join("data"));
    let host = w.base.trim_start_matches("https://").to_owned();
    let sk = real::Skopeo::new();
    let src = real::Layout::create(&sk.dir("src"));
    let img = real::write_image(&src, "amd64", &[vec![("hello.txt", b"over tls\n")]], "tls");
    src.set_refs(&[("v1", &img.manifest)]);
    let cert_dir = path_str(&tls.cert_dir);
    sk.run(
        "copy",
        &[
            "--dest-tls-verify=true",
            "--dest-cert-dir",
            &cert_dir,
            &src.oci("v1"),
            &format!("docker://{host}/tls/app:v1"),
        ],
    );
    let out = real::Layout::create(&sk.dir("out"));
    sk.run(
        "copy",
        &[
            "--src-tls-verify=true",
            "--src-cert-dir",
            &cert_dir,
            &format!("docker://{host}/tls/app:v1"),
            &out.oci("v1"),
        ],
    );
    for d in img.digests() {
        assert_eq!(out.blob(&d), src.blob(&d), "{d} differs after the TLS round trip");
    }
}
