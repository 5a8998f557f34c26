//! Bad input at the edges (issue 5, item 6), against the real binary: request headers
//! that never finish or are too large, request bodies that stall, a million tags in one
//! repository (paging stays correct; page times are printed), a 100-deep repository
//! name, a manifest that tries to reference itself, and an index of 10 000 entries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::oci;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{bytes_of, sha256, Wharfie};
use oci::*;
use serde_json::json;

/// The timeouts these tests run the server with (the defaults are 30 s and 2 min).
const SHORT: &[(&str, &str)] = &[("WHARFIE_HEADER_TIMEOUT", "1s"), ("WHARFIE_BODY_TIMEOUT", "1s")];
/// How long a test waits for the server to act on a 1 s timeout before failing.
const ACT_WITHIN: Duration = Duration::from_secs(20);

fn start_short() -> (Wharfie, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let w = Wharfie::start_with_env(&tmp.path().join("data"), &[], SHORT);
    (w, tmp)
}

fn connect(w: &Wharfie) -> TcpStream {
    let s = TcpStream::connect(&w.addr).expect("connect");
    s.set_read_timeout(Some(ACT_WITHIN)).expect("read timeout");
    s.set_write_timeout(Some(ACT_WITHIN)).expect("write timeout");
    s
}

/// Read until the server closes (or `ACT_WITHIN` passes: then panic with `what`).
fn read_to_close(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + ACT_WITHIN;
    loop {
        assert!(Instant::now() < deadline, "{what}: the server kept the connection open");
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("{what}: the server neither answered nor closed within {ACT_WITHIN:?}: {e}"),
        }
    }
}

fn status_of(bytes: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(bytes.get(..12)?).ok()?;
    s.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

// ---------------------------------------------------------------------------------
// Headers

#[test]
fn headers_that_never_finish_are_cut_off() {
    let (w, _tmp) = start_short();
    // Half a request, then silence.
    let mut s = connect(&w);
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ").expect("write");
    let t = Instant::now();
    let got = read_to_close(&mut s, "headers that never finish");
    eprintln!("silent headers: closed after {:?} (answer: {:?})", t.elapsed(), status_of(&got));
    assert!(
        matches!(status_of(&got), None | Some(408)),
        "unexpected answer {:?}",
        String::from_utf8_lossy(&got)
    );

    // Slow loris: a header byte every 100 ms keeps the connection busy, but the
    // timeout covers the whole header section, not the gap between bytes.
    let mut s = connect(&w);
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").expect("write");
    let t = Instant::now();
    let mut closed = false;
    for _ in 0..200 {
        if s.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 64];
        let r = s.read(&mut b);
        s.set_nonblocking(false).expect("blocking");
        if r.is_ok() {
            closed = true;
            break;
        }
    }
    eprintln!("slow-loris headers: cut off after {:?}", t.elapsed());
    assert!(closed, "a slow-loris client kept its connection for 20 s of dribbled headers");
    // Meanwhile and afterwards, the server serves.
    let api = Api::new(&w);
    api.get("/v2/").expect_status(200);
}

#[test]
fn oversized_headers_are_refused_and_the_server_serves_on() {
    let w = Wharfie::start();
    // One 1 MiB header value.
    let mut s = connect(&w);
    let mut req = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 1 << 20));
    req.extend_from_slice(b"\r\n\r\n");
    let _ = s.write_all(&req); // the server may close before all of it is read
    let got = read_to_close(&mut s, "a 1 MiB header");
    assert_eq!(
        status_of(&got),
        Some(431),
        "a 1 MiB header: {:?}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
    // Ten thousand small headers.
    let mut s = connect(&w);
    let mut req = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..10_000 {
        req.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let _ = s.write_all(&req);
    let got = read_to_close(&mut s, "10 000 headers");
    assert_eq!(
        status_of(&got),
        Some(431),
        "10 000 headers: {:?}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
    Api::new(&w).get("/v2/").expect_status(200);
}

// ---------------------------------------------------------------------------------
// Bodies

/// Send the head and `sent` bytes of a `len`-byte body, then stall; return the answer.
fn stalled(w: &Wharfie, method: &str, path: &str, extra: &str, len: usize, sent: &[u8]) -> Resp {
    let mut s = connect(w);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\n{extra}\r\n",
        w.addr
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(sent).expect("partial body");
    let got = read_to_close(&mut s, &format!("{method} with a stalled body"));
    parse_response(&got, false).unwrap_or_else(|| {
        panic!(
            "{method} with a stalled body: no HTTP answer before the close: {:?}",
            String::from_utf8_lossy(&got)
        )
    })
}

#[test]
fn stalled_request_bodies_time_out_and_sessions_resume() {
    let (w, _tmp) = start_short();
    let api = Api::new(&w);
    let repo = "edges/stall";
    let data = bytes_of(1 << 20, 7);
    let d = sha256(&data);

    // Monolithic: the stalled push fails cleanly and stores nothing.
    let t = Instant::now();
    let r = stalled(
        &w,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        "",
        data.len(),
        &data[..65_536],
    );
    eprintln!("stalled monolithic body: answered after {:?}", t.elapsed());
    r.expect_err(400, "BLOB_UPLOAD_INVALID");
    assert!(r.text().contains("no body bytes arrived"), "the message says why: {}", r.text());
    api.head(&format!("/v2/{repo}/blobs/{d}")).expect_head_err(404);
    assert_eq!(w.staging_entries(), 0, "staging of the stalled monolithic push");
    assert_eq!(w.blob_files(), 0, "a blob file from the stalled push");

    // Chunked: the stalled PATCH fails, the session keeps what arrived, and resumes.
    let loc = api.start_upload(repo);
    let path = path_of(&w, &loc);
    let r = stalled(&w, "PATCH", &path, "", data.len(), &data[..100_000]);
    r.expect_err(400, "BLOB_UPLOAD_INVALID");
    let st = api.get(&path);
    st.expect_status(204);
    let offset =
        st.hdr("Range").strip_prefix("0-").and_then(|e| e.parse::<usize>().ok()).map_or(0, |e| e + 1);
    assert!(offset <= 100_000, "the session holds more than was sent: {offset}");
    let r = api.patch(&path, offset as u64, &data[offset..]);
    assert_eq!(r.status, 202, "resume from {offset}: {}", r.describe());
    let r = api.finish(&path_of(&w, r.hdr("Location")), &d, None);
    assert_eq!(r.status, 201, "finish: {}", r.describe());
    let g = api.get(&format!("/v2/{repo}/blobs/{d}"));
    assert_eq!(sha256(&g.body), d, "bytes after the resumed upload");

    // A manifest body that stalls: refused, nothing stored.
    let r = stalled(&w, "PUT", &format!("/v2/{repo}/manifests/stalled"), "", 4096, b"{\"schemaVersion\":2,");
    assert!(r.status == 400, "stalled manifest body: {}", r.describe());
    api.get(&format!("/v2/{repo}/manifests/stalled")).expect_err(404, "MANIFEST_UNKNOWN");
}

#[test]
fn a_content_range_spanning_all_of_u64_is_refused() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let loc = api.start_upload("edges/range");
    let path = path_of(&w, &loc);
    let fresh = api.get(&path).h("Range").map(str::to_owned);
    // Chunked framing: no Content-Length to compare the span with.
    let r = raw(
        &w,
        &RawReq::new("PATCH", path.clone())
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", "0-18446744073709551615")
            .body(Vec::new())
            .framing(Framing::Chunked(16)),
    );
    r.expect_err(400, "BLOB_UPLOAD_INVALID");
    let st = api.get(&path);
    st.expect_status(204);
    assert_eq!(st.h("Range").map(str::to_owned), fresh, "the session is still empty: {}", st.describe());
}

// ---------------------------------------------------------------------------------
// Scale of one repository

/// How many tags the pagination test seeds. A million, through the library's own
/// `put_manifest` (HTTP would take minutes), then paged over real HTTP.
const TAGS: usize = 1_000_000;
const PAGE: usize = 10_000;

#[test]
fn a_million_tags_page_correctly_over_http() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let repo = "edges/many-tags";
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let manifest = image_manifest(OCI_MANIFEST, &Desc::new(OCI_CONFIG, &config), &[], json!({}));
    // Seed: one config blob and one manifest over HTTP, then a million tags in-process.
    {
        let w = Wharfie::start_in(&dir, &[]);
        let api = Api::new(&w);
        api.push_blob(repo, &config);
        api.push_manifest(repo, "seed", OCI_MANIFEST, &manifest);
    }
    let t = Instant::now();
    seed_tags(&dir, repo, &manifest, TAGS);
    eprintln!("seeded {TAGS} tags in {:?}", t.elapsed());

    let w = Wharfie::start_in(&dir, &[]);
    let api = Api::new(&w);
    let mut path = format!("/v2/{repo}/tags/list?n={PAGE}");
    let mut seen = 0usize;
    let mut prev: Option<String> = None;
    let mut times = Vec::new();
    for page in 0..(TAGS / PAGE + 2) {
        let t = Instant::now();
        let r = api.get(&path);
        times.push(t.elapsed());
        r.expect_status(200);
        let tags = strings(&r.json()["tags"]);
        assert!(tags.len() <= PAGE, "page {page} holds {} tags", tags.len());
        for t in &tags {
            assert!(prev.as_deref() < Some(t.as_str()), "tags out of order at {t} after {prev:?}");
            prev = Some(t.clone());
        }
        seen += tags.len();
        match r.h("Link") {
            Some(l) => {
                let next = l.split('<').nth(1).and_then(|x| x.split('>').next()).expect("Link target");
                path = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(seen, TAGS + 1, "every tag once (the million and \"seed\")");
    // Without `n`, the server's page comes with a Link too.
    let r = api.get(&format!("/v2/{repo}/tags/list"));
    assert_eq!(strings(&r.json()["tags"]).len(), PAGE, "the default page");
    assert!(r.h("Link").is_some(), "a default page cut short must carry a Link: {:?}", r.headers);
    // A page from deep inside.
    let t = Instant::now();
    let r = api.get(&format!("/v2/{repo}/tags/list?n=100&last=t{:07}", TAGS - 50));
    let deep = t.elapsed();
    assert_eq!(strings(&r.json()["tags"]).len(), 49, "the last page after t{:07}", TAGS - 50);
    times.sort();
    eprintln!(
        "{} pages of {PAGE}: median {:?}, max {:?}; a 100-tag page at the end: {deep:?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

/// Tag `manifest` as t0000000 … through the library, many at a time (group commit).
fn seed_tags(dir: &std::path::Path, repo: &str, manifest: &[u8], n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    rt.block_on(async {
        let overrides = wharfie::config::Overrides { listen: None, data_dir: Some(dir.to_path_buf()) };
        let (_, settings) = wharfie::config::load(None, &overrides).expect("settings");
        let reg = wharfie::app::open(&settings).await.expect("open registry");
        let name = wharfie::names::RepoName::parse(repo).expect("name");
        let manifest = bytes::Bytes::copy_from_slice(manifest);
        let mut left = n;
        let mut next = 0usize;
        let mut inflight = tokio::task::JoinSet::new();
        while left > 0 || !inflight.is_empty() {
            while left > 0 && inflight.len() < 512 {
                let (reg, name, m) = (reg.clone(), name.clone(), manifest.clone());
                let tag = format!("t{next:07}");
                next += 1;
                left -= 1;
                inflight.spawn(async move {
                    let r = wharfie::names::Reference::parse(&tag).expect("tag");
                    let body: wharfie::service::Body = Box::pin(futures_util::stream::iter([Ok(m)]));
                    reg.put_manifest(&name, &r, Some(OCI_MANIFEST), body).await.map(|_| ())
                });
            }
            if let Some(r) = inflight.join_next().await {
                r.expect("task").expect("put_manifest");
            }
        }
    });
}

#[test]
fn a_100_deep_repository_name_works_and_129_is_refused() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    for depth in [100usize, 128] {
        let name = vec!["a"; depth].join("/");
        let img = api.push_image(&name, Some("v1"), depth as u64, 1);
        api.get(&format!("/v2/{name}/manifests/v1")).expect_status(200);
        api.head(&format!("/v2/{name}/blobs/{}", img.layers[0].digest)).expect_status(200);
        assert_eq!(api.tags(&name), vec!["v1".to_string()], "tags of the {depth}-deep name");
        assert!(api.catalog().contains(&name), "the catalog lists the {depth}-deep name");
    }
    let name = vec!["a"; 129].join("/");
    let before = api.catalog();
    let files = w.blob_files();
    api.send(api.req("POST", &format!("/v2/{name}/blobs/uploads/"))).expect_err(400, "NAME_INVALID");
    let r = api.put_manifest(&name, "v1", OCI_MANIFEST, b"{}");
    r.expect_err(400, "NAME_INVALID");
    assert_eq!(api.catalog(), before, "nothing stored for the 129-deep name");
    assert_eq!(w.blob_files(), files);
    assert_eq!(w.staging_entries(), 0);
}

/// A manifest cannot name its own digest (that would be a SHA-256 fixed point): the
/// nearest a client can come is an index naming the digest it claims for itself, or a
/// digest not yet stored. Both are refused and nothing is stored.
#[test]
fn a_manifest_referencing_itself_is_refused() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let repo = "edges/selfref";
    let img = api.push_image(repo, Some("base"), 1, 1);
    // An index whose one child is the digest the PUT claims for the index.
    let claimed = sha256(b"the index's claimed digest");
    let child = Desc { media_type: OCI_INDEX.into(), digest: claimed.clone(), size: 100 };
    let idx = index_manifest(OCI_INDEX, &[img.desc(), child], json!({}));
    api.put_manifest(repo, &claimed, OCI_INDEX, &idx).expect_err(400, "DIGEST_INVALID");
    // The same index by tag: its child is unknown.
    let r = api.put_manifest(repo, "selfref", OCI_INDEX, &idx);
    r.expect_err(400, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(
        r.json()["errors"][0]["detail"]["digest"],
        json!(claimed),
        "the detail names the missing child"
    );
    // An image whose subject is "itself" by claimed digest is a referrer of an absent
    // subject (allowed by the spec), but its layer list naming itself is not.
    let selfish = image_manifest(
        OCI_MANIFEST,
        &img.config,
        &[Desc { media_type: OCI_LAYER.into(), digest: claimed.clone(), size: 1 }],
        json!({}),
    );
    api.put_manifest(repo, "selfish", OCI_MANIFEST, &selfish).expect_err(400, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(api.tags(repo), vec!["base".to_string()], "nothing tagged");
    api.get(&format!("/v2/{repo}/manifests/{}", sha256(&idx))).expect_err(404, "MANIFEST_UNKNOWN");
}

#[test]
fn an_index_of_10000_entries_is_stored_exactly_and_an_oversized_one_refused() {
    let w = Wharfie::start();
    let api = Api::new(&w);
    let repo = "edges/big-index";
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    api.push_blob(repo, &config);
    let cfg = Desc::new(OCI_CONFIG, &config);
    // 1000 distinct children, each listed ten times under different platforms.
    let t = Instant::now();
    let mut children = Vec::new();
    for i in 0..1000 {
        let m = image_manifest(OCI_MANIFEST, &cfg, &[], json!({"annotations": {"i": i.to_string()}}));
        api.push_manifest(repo, &sha256(&m), OCI_MANIFEST, &m);
        children.push(Desc::new(OCI_MANIFEST, &m));
    }
    eprintln!("pushed 1000 child manifests in {:?}", t.elapsed());
    let entries = |n: usize| -> Vec<u8> {
        let ms: Vec<_> = (0..n)
            .map(|k| {
                let mut d = children[k % children.len()].json();
                d["platform"] = json!({"architecture": format!("arch{}", k / children.len()), "os": "linux"});
                d
            })
            .collect();
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": ms}))
            .expect("json")
    };
    let idx = entries(10_000);
    eprintln!("10 000-entry index: {} bytes", idx.len());
    assert!(idx.len() < 4 << 20, "the 10 000-entry index fits the 4 MiB default limit");
    let t = Instant::now();
    let r = api.put_manifest(repo, "big", OCI_INDEX, &idx);
    assert_eq!(r.status, 201, "PUT 10 000-entry index: {}", r.describe());
    eprintln!("PUT 10 000-entry index: {:?}", t.elapsed());
    let g = api.get(&format!("/v2/{repo}/manifests/big"));
    g.expect_status(200);
    assert!(g.body == idx, "the index comes back byte for byte");
    // 30 000 entries pass 4 MiB: 413 SIZE_INVALID, nothing stored.
    let huge = entries(30_000);
    assert!(huge.len() > 4 << 20, "{} bytes", huge.len());
    api.put_manifest(repo, "huge", OCI_INDEX, &huge).expect_err(413, "SIZE_INVALID");
    api.get(&format!("/v2/{repo}/manifests/huge")).expect_err(404, "MANIFEST_UNKNOWN");
    assert_eq!(api.tags(repo), vec!["big".to_string()]);
}
