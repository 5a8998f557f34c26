//! The operator's web page (`/`, `/ui/…`) against the real server: DOM checks in real
//! headless Chromium (a pushed image, a mirrored one from a real docker-registry
//! upstream, that upstream marked down once it is stopped) with a screenshot, and
//! HTTP-level checks of escaping, auth filtering, status codes and content type.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::clients;
use wharfie_testkit::common;
use wharfie_testkit::oci;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use clients::{require, ReferenceRegistry};
use common::{bytes_of, sha256, Wharfie};
use oci::{image_manifest, Api, Desc, Resp, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST};

// ---------------------------------------------------------------------------------
// Harness

/// A wharfie started with `config` as its TOML file, config and data in one temp dir.
fn start(config: &str) -> (Wharfie, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("wharfie.toml");
    let text = config.replace("@DIR@", &dir.path().display().to_string());
    std::fs::write(&cfg, text).expect("config");
    let w = Wharfie::start_in(&dir.path().join("data"), &["--config", &cfg.display().to_string()]);
    (w, dir)
}

fn get(api: &Api, path: &str, auth: Option<(&str, &str)>) -> Resp {
    let mut rb = api.req("GET", path);
    if let Some((u, p)) = auth {
        rb = rb.basic_auth(u, Some(p));
    }
    api.send(rb)
}

/// The page at `path` as 200 HTML (asserted), and its text.
fn page(api: &Api, path: &str, auth: Option<(&str, &str)>) -> String {
    let r = get(api, path, auth);
    assert_eq!(r.status, 200, "GET {path}: {}", r.describe());
    assert_eq!(r.hdr("content-type"), "text/html; charset=utf-8", "GET {path}");
    r.text()
}

/// The text of the element that opens with `open` (up to its `close` tag), or "".
fn section<'a>(html: &'a str, open: &str, close: &str) -> &'a str {
    let Some(i) = html.find(open) else { return "" };
    let rest = &html[i..];
    &rest[..rest.find(close).map_or(rest.len(), |j| j + close.len())]
}

/// Push a one-layer image to a docker-registry as `repo:tag` over its HTTP API.
fn push_upstream(addr: &str, repo: &str, tag: &str, seed: u64) -> String {
    let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer = bytes_of(5000, seed);
    for blob in [&config, &layer] {
        let r = c.post(format!("http://{addr}/v2/{repo}/blobs/uploads/")).send().expect("POST upload");
        assert_eq!(r.status().as_u16(), 202, "start upload at the upstream");
        let loc = r.headers()["location"].to_str().expect("location").to_owned();
        let loc = if loc.starts_with('/') { format!("http://{addr}{loc}") } else { loc };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = c
            .put(format!("{loc}{sep}digest={}", sha256(blob)))
            .header("Content-Type", "application/octet-stream")
            .body(blob.clone())
            .send()
            .expect("PUT upload");
        assert_eq!(r.status().as_u16(), 201, "finish upload at the upstream");
    }
    let manifest = image_manifest(
        OCI_MANIFEST,
        &Desc::new(OCI_CONFIG, &config),
        &[Desc::new(OCI_LAYER, &layer)],
        json!({}),
    );
    let r = c
        .put(format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .expect("PUT manifest");
    assert_eq!(r.status().as_u16(), 201, "manifest at the upstream");
    sha256(&manifest)
}

/// Chromium, or `None` (the browser test then skips, saying so).
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|name| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
    })
}

/// Run headless Chromium with `args` (a fresh profile in `profile`), bounded by a
/// deadline; its stdout.
fn browse(bin: &Path, profile: &Path, args: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = tempfile::NamedTempFile::new().expect("stdout file");
    let mut child = Command::new(bin)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.reopen().expect("reopen"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromium");
    for _ in 0..1200 {
        if child.try_wait().expect("wait chromium").is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if child.try_wait().expect("wait chromium").is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("chromium {args:?} did not finish in time");
    }
    std::fs::read_to_string(out.path()).expect("read chromium's stdout")
}

/// GET hub/library/hello:v1 and its blobs through the mirror (asserting 200s).
fn pull_hello(api: &Api, digest: &str) {
    let r = api.send(api.req("GET", "/v2/hub/library/hello/manifests/v1").header("Accept", OCI_MANIFEST));
    assert_eq!(r.status, 200, "pull through: {}", r.describe());
    assert_eq!(sha256(&r.body), digest);
    let m = r.json();
    for d in [&m["config"]["digest"], &m["layers"][0]["digest"]] {
        let d = d.as_str().expect("digest");
        let r = api.get(&format!("/v2/hub/library/hello/blobs/{d}"));
        assert_eq!(r.status, 200, "blob {d} through the mirror: {}", r.describe());
    }
}

/// The config's and the layer's sizes together, as the manifest gives them.
fn hello_blob_bytes(m: &serde_json::Value) -> u64 {
    m["config"]["size"].as_u64().expect("config size") + m["layers"][0]["size"].as_u64().expect("layer size")
}

fn hello_manifest_len(api: &Api) -> u64 {
    let r = api.send(api.req("HEAD", "/v2/hub/library/hello/manifests/v1").header("Accept", OCI_MANIFEST));
    r.hdr("content-length").parse().expect("content-length")
}

// ---------------------------------------------------------------------------------
// In a real browser

#[test]
fn browser_shows_a_pushed_image_a_mirrored_one_and_an_upstream_marked_down() {
    let Some(bin) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed (apt-get install -y chromium); the web page was not checked in a browser");
        return;
    };
    let upstream = ReferenceRegistry::start();
    let up_digest = push_upstream(&upstream.addr, "library/hello", "v1", 7);
    let (w, _dir) = start(&format!(
        "[cache]\nmax_bytes = \"1MiB\"\n\n[[upstreams]]\nname = \"hub\"\nurl = \"http://{}\"\ntag_ttl = \"5m\"\n\
         timeout = \"3s\"\noffline = false\nstale_if_error = true\ndefault = false\n\
         down_min = \"120s\"\ndown_max = \"240s\"\n",
        upstream.addr
    ));
    let api = Api::new(&w);
    let pushed = api.push_image("team/app", Some("1.0"), 3, 2);

    // Pull the mirrored image through wharfie: manifest, config and layer.
    let r = api.send(api.req("GET", "/v2/hub/library/hello/manifests/v1").header("Accept", OCI_MANIFEST));
    assert_eq!(r.status, 200, "pull through: {}", r.describe());
    assert_eq!(sha256(&r.body), up_digest);
    let m = r.json();
    for d in [&m["config"]["digest"], &m["layers"][0]["digest"]] {
        let d = d.as_str().expect("digest");
        let r = api.get(&format!("/v2/hub/library/hello/blobs/{d}"));
        assert_eq!(r.status, 200, "blob {d} through the mirror: {}", r.describe());
    }
    // The same pull again: three hits (the first was three misses).
    pull_hello(&api, &up_digest);

    let up_addr = upstream.addr.clone();
    // Stop the upstream; a miss finds it unreachable and marks it down.
    drop(upstream);
    let r = api.send(api.req("GET", "/v2/hub/library/hello/manifests/v2").header("Accept", OCI_MANIFEST));
    assert!(r.status >= 500, "a miss with the upstream stopped: {}", r.describe());

    let profile = tempfile::tempdir().expect("profile");
    let dom = browse(&bin, profile.path(), &["--dump-dom".into(), w.url("/")]);
    let hosted = section(&dom, "<table id=\"hosted\"", "</table>");
    let mirrored = section(&dom, "<table id=\"mirrored\"", "</table>");
    assert!(hosted.contains("data-repo=\"team/app\""), "the pushed repository in the hosted table:\n{dom}");
    assert!(!hosted.contains("hub/library/hello"), "the mirrored repository is not listed as hosted");
    assert!(mirrored.contains("data-repo=\"hub/library/hello\""), "the mirrored repository:\n{dom}");
    let ups = section(&dom, "<table id=\"upstreams\"", "</table>");
    let row = section(ups, "<tr data-upstream=\"hub\"", "</tr>");
    assert!(row.contains("data-state=\"down\""), "the stopped upstream is down: {row}");
    assert!(row.contains("unreachable") || row.contains("refused"), "its last error: {row}");
    // Its own figures: 3 hits; 4 misses (the first pull's 3, and v2 with it stopped).
    assert!(row.contains("data-hits=\"3\"") && row.contains("data-misses=\"4\""), "hits and misses: {row}");
    assert!(row.contains("42.9 %"), "its hit ratio: {row}");
    let blob_bytes = hello_blob_bytes(&m);
    assert!(
        row.contains(&format!("class=\"n fetched\" data-bytes=\"{blob_bytes}\"")),
        "bytes fetched: {row}"
    );
    let served = 2 * (blob_bytes + hello_manifest_len(&api));
    assert!(row.contains(&format!("class=\"n served\" data-bytes=\"{served}\"")), "bytes served: {row}");
    // The all-upstreams line sums the upstreams' figures (hosted bytes are not theirs).
    assert!(dom.contains(&format!("id=\"served\" data-bytes=\"{served}\"")), "mirrors' bytes served in all");
    eprintln!("web page, upstream hub: 3 hits, 4 misses (42.9 %), {blob_bytes} bytes fetched, {served} bytes served");
    assert!(!dom.contains(&up_addr), "the upstream's address is never shown:\n{dom}");
    assert!(dom.contains("id=\"cache-used\""), "the cache bar");
    assert!(dom.contains("<svg") && dom.contains("id=\"chart\""), "the chart");

    let tags = browse(&bin, profile.path(), &["--dump-dom".into(), w.url("/ui/repo/hub/library/hello")]);
    let v1 = section(&tags, "<tr data-tag=\"v1\"", "</tr>");
    assert!(v1.contains(&up_digest[..19]), "the tag's digest: {v1}");
    assert!(v1.contains("data-kind=\"image\""), "an image: {v1}");
    assert!(v1.contains("fetched "), "fetched, not pushed: {v1}");
    assert!(v1.contains("class=\"checked\"") && !v1.contains(">never<"), "checked upstream: {v1}");
    let hosted_tags = browse(&bin, profile.path(), &["--dump-dom".into(), w.url("/ui/repo/team/app")]);
    let t = section(&hosted_tags, "<tr data-tag=\"1.0\"", "</tr>");
    assert!(t.contains(&pushed.digest[..19]) && t.contains("pushed "), "the pushed tag: {t}");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-home.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &bin,
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,1000".into(),
            "--hide-scrollbars".into(),
            w.url("/"),
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("screenshot {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "a PNG");
    println!("web page screenshot: {}", shot.display());
    eprintln!("web page screenshot: {}", shot.display());
}

// ---------------------------------------------------------------------------------
// Over HTTP

#[test]
fn each_upstream_has_its_own_figures_on_the_page_and_in_metrics() {
    let upstream = ReferenceRegistry::start();
    let up_digest = push_upstream(&upstream.addr, "library/hello", "v1", 8);
    let (w, _dir) = start(&format!(
        "[[upstreams]]\nname = \"hub\"\nurl = \"http://{0}\"\ntag_ttl = \"5m\"\n\n\
         [[upstreams]]\nname = \"other\"\nurl = \"http://{0}\"\ntag_ttl = \"5m\"\n",
        upstream.addr
    ));
    let api = Api::new(&w);
    // Through hub: a cold pull (3 misses), a warm one (3 hits), and one unknown tag
    // (a miss). Through other: nothing.
    pull_hello(&api, &up_digest);
    pull_hello(&api, &up_digest);
    let r = api.send(api.req("GET", "/v2/hub/library/hello/manifests/nope").header("Accept", OCI_MANIFEST));
    assert_eq!((r.status, r.code().as_str()), (404, "MANIFEST_UNKNOWN"), "{}", r.describe());
    assert_eq!(r.hdr("wharfie-cache"), "miss", "the unknown tag was asked upstream");
    let m = api.send(api.req("GET", "/v2/hub/library/hello/manifests/v1").header("Accept", OCI_MANIFEST));
    assert_eq!(m.hdr("wharfie-cache"), "hit");
    let manifest = m.json();
    let blob_bytes = hello_blob_bytes(&manifest);
    let manifest_len = m.body.len() as u64;

    let text = get(&api, "/metrics", None).text();
    let series = |name: &str, up: &str| -> u64 {
        let start = format!("{name}{{upstream=\"{up}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&start))
            .unwrap_or_else(|| panic!("no {start} in /metrics:\n{text}"))
            .parse()
            .expect("a number")
    };
    let hub = [
        series("wharfie_upstream_cache_hits_total", "hub"),
        series("wharfie_upstream_cache_misses_total", "hub"),
        series("wharfie_upstream_coalesced_followers_total", "hub"),
        series("wharfie_upstream_fetched_bytes_total", "hub"),
        series("wharfie_upstream_served_bytes_total", "hub"),
    ];
    // 4 hits: the warm pull's 3 and the manifest GET above; served: three manifest
    // GETs and two of each blob.
    assert_eq!(hub, [4, 4, 0, blob_bytes, 3 * manifest_len + 2 * blob_bytes], "hub's series:\n{text}");
    for name in [
        "wharfie_upstream_cache_hits_total",
        "wharfie_upstream_cache_misses_total",
        "wharfie_upstream_fetched_bytes_total",
        "wharfie_upstream_served_bytes_total",
    ] {
        assert_eq!(series(name, "other"), 0, "{name}{{upstream=\"other\"}}");
    }
    assert!(text.contains("\nwharfie_cache_hits_total 4\n"), "the unlabelled total stays:\n{text}");
    eprintln!(
        "/metrics, upstream hub: hits {}, misses {}, coalesced {}, fetched {} bytes, served {} bytes",
        hub[0], hub[1], hub[2], hub[3], hub[4]
    );

    let html = page(&api, "/ui/upstreams", None);
    let ups = section(&html, "<table id=\"upstreams\"", "</table>");
    let row = section(ups, "<tr data-upstream=\"hub\"", "</tr>");
    assert!(row.contains("data-state=\"up\""), "{row}");
    assert!(row.contains("data-hits=\"4\" data-misses=\"4\""), "hub's hits and misses: {row}");
    assert!(row.contains("50.0 %"), "hub's hit ratio: {row}");
    assert!(row.contains(&format!("data-bytes=\"{blob_bytes}\"")), "hub's bytes fetched: {row}");
    let other = section(ups, "<tr data-upstream=\"other\"", "</tr>");
    assert!(other.contains("data-hits=\"0\" data-misses=\"0\"") && other.contains("—"), "other's: {other}");
    let home = page(&api, "/", None);
    assert!(
        section(&home, "<tr data-upstream=\"hub\"", "</tr>").contains("data-hits=\"4\""),
        "the home page's upstreams"
    );
}

#[test]
fn text_from_the_network_is_escaped() {
    let (w, _dir) = start("");
    let api = Api::new(&w);
    let img = api.push_image("esc/app", None, 11, 1);
    let evil = "<script>alert(\"x\")</script>&<b>";
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": img.digest, "size": img.manifest.len(),
            "platform": {"architecture": "amd64", "os": evil},
        }],
    }))
    .expect("json");
    api.push_manifest("esc/app", "multi", OCI_INDEX, &index);
    let html = page(&api, "/ui/repo/esc/app", None);
    assert!(!html.contains("<script") && !html.contains("<b>"), "unescaped network text:\n{html}");
    let row = section(&html, "<tr data-tag=\"multi\"", "</tr>");
    assert!(row.contains("data-kind=\"index\""), "an index: {row}");
    assert!(
        row.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&lt;b&gt;/amd64"),
        "the platform, escaped: {row}"
    );
    let r = get(&api, "/ui/repo/esc/app", None);
    assert_eq!(r.hdr("cache-control"), "no-store");
    assert!(r.hdr("content-security-policy").starts_with("default-src 'none'"), "no script may run");
}

#[test]
fn status_codes_and_content_types() {
    let (w, _dir) = start("");
    let api = Api::new(&w);
    api.push_image("a/b", Some("t"), 5, 1);
    let home = page(&api, "/", None);
    assert!(home.starts_with("<!DOCTYPE html>"), "{home}");
    assert!(section(&home, "<table id=\"hosted\"", "</table>").contains("data-repo=\"a/b\""));
    assert!(home.contains("id=\"upstreams-none\""), "no upstream configured");
    page(&api, "/ui/upstreams", None);
    page(&api, "/ui/repos?last=a", None);
    for (path, status) in
        [("/ui/repo/nope", 404), ("/ui/repo/UPPER", 404), ("/ui/nothing", 404), ("/ui/repo/", 404)]
    {
        let r = get(&api, path, None);
        assert_eq!(r.status, status, "GET {path}: {}", r.describe());
        assert_eq!(r.hdr("content-type"), "text/html; charset=utf-8", "GET {path}");
        assert!(r.text().contains("id=\"not-found\""), "GET {path}: {}", r.text());
    }
    let r = api.send(api.req("POST", "/"));
    assert_eq!((r.status, r.code().as_str()), (405, "UNSUPPORTED"), "POST /: {}", r.describe());
    let r = api.head("/");
    assert_eq!(r.status, 200, "HEAD /");
    // Auth off: no login link, and /ui/login sends the viewer home.
    assert!(!home.contains("id=\"login\""));
    let r = get(&api, "/ui/login", None);
    assert_eq!((r.status, r.hdr("location")), (303, "/"), "{}", r.describe());
}

/// Write `users` into `path` with Apache's own `htpasswd -B`.
fn htpasswd(path: &Path, users: &[(&str, &str)]) {
    let tool = require("htpasswd", "apache2-utils");
    for (i, (u, p)) in users.iter().enumerate() {
        let flags = if i == 0 { "-Bbc" } else { "-Bb" };
        let out = Command::new(&tool).arg(flags).arg(path).args([u, p]).output().expect("run htpasswd");
        assert!(out.status.success(), "htpasswd {flags} {u}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

const ADMIN: (&str, &str) = ("admin", "admin-pw");
const ALICE: (&str, &str) = ("alice", "alice-pw");

#[test]
fn with_auth_a_viewer_sees_only_what_they_may_pull() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("htpasswd");
    htpasswd(&pw, &[ADMIN, ALICE]);
    let (w, _d) = start(&format!(
        "[auth]\nhtpasswd = \"{}\"\nanonymous = \"none\"\n\n\
         [[auth.rules]]\nrepos = \"team/**\"\nusers = [\"alice\"]\naccess = [\"pull\"]\n\n\
         [[auth.rules]]\nrepos = \"**\"\nusers = [\"admin\"]\naccess = [\"push\", \"delete\"]\n",
        pw.display()
    ));
    let api = Api::new(&w);
    // Push as admin (the helpers send no credentials: push with a client that does).
    let admin = Api {
        w: &w,
        c: reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .default_headers({
                use base64::Engine;
                let v = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", ADMIN.0, ADMIN.1));
                let mut h = reqwest::header::HeaderMap::new();
                h.insert("authorization", format!("Basic {v}").parse().expect("header"));
                h
            })
            .build()
            .expect("client"),
    };
    admin.push_image("team/app", Some("1"), 1, 1);
    let secret = admin.push_image("secret/hidden-thing", Some("classified"), 2, 1);

    // Anonymous may pull nothing: 401 with a Basic challenge, nothing named.
    let r = get(&api, "/", None);
    assert_eq!(r.status, 401, "{}", r.describe());
    assert_eq!(r.hdr("www-authenticate"), "Basic realm=\"wharfie\"");
    assert!(!r.text().contains("team/app") && !r.text().contains("hidden-thing"), "{}", r.text());
    let r = get(&api, "/ui/repo/secret/hidden-thing", None);
    assert_eq!(r.status, 401, "{}", r.describe());
    // A wrong password is refused like on the API.
    assert_eq!(get(&api, "/", Some((ALICE.0, "wrong"))).status, 401);

    // alice sees team/app and nothing of secret/…, anywhere on any page.
    for path in ["/", "/ui/repos?last=", "/ui/upstreams", "/ui/repo/team/app"] {
        let html = page(&api, path, Some(ALICE));
        for word in ["hidden-thing", "secret/", "classified", &secret.digest[7..19]] {
            assert!(!html.contains(word), "{path} as alice names {word}:\n{html}");
        }
        assert!(html.contains("signed in as alice"), "{path}");
    }
    let home = page(&api, "/", Some(ALICE));
    assert!(section(&home, "<table id=\"hosted\"", "</table>").contains("data-repo=\"team/app\""), "{home}");
    // The repository she may not pull looks like one that does not exist.
    let hidden = get(&api, "/ui/repo/secret/hidden-thing", Some(ALICE));
    let missing = get(&api, "/ui/repo/secret/no-such-thing", Some(ALICE));
    assert_eq!((hidden.status, missing.status), (404, 404));
    assert_eq!(hidden.text(), missing.text(), "a forbidden repository's page equals a missing one's");
    assert!(!hidden.text().contains("classified") && !hidden.text().contains(&secret.digest));
    let r = get(&api, "/ui/login", Some(ALICE));
    assert_eq!((r.status, r.hdr("location")), (303, "/"));

    // admin sees both.
    let home = page(&api, "/", Some(ADMIN));
    let hosted = section(&home, "<table id=\"hosted\"", "</table>");
    assert!(
        hosted.contains("data-repo=\"team/app\"") && hosted.contains("data-repo=\"secret/hidden-thing\"")
    );
}
