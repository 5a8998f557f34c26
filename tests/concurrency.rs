//! Concurrency that cannot go wrong (issue 2, item 4), over real HTTP:
//!
//! - (a) N clients upload the same blob at once (monolithic and chunked): every one gets
//!   201, and a HEAD right after each 201 answers 200 with the full size, a GET the bytes;
//! - (b) N clients PUT one tag at once with different manifests: all 201, and the tag
//!   resolves to exactly one of them, whole, with its blobs present — also while racing;
//! - (c) readers polling a blob while it is uploaded see 404 and then the whole blob,
//!   never a 200 with a short length;
//! - (d) many distinct blobs and images pushed to many repositories at once leave a
//!   catalog and tag lists that list exactly what was pushed.
//!
//! Concurrency is lined up with barriers, and every loop is bounded by a count.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::oci;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::{bytes_of, sha256, Wharfie};
use oci::Resp;
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------
// Client.

/// `oci::Http` with this suite's pushes and checks, whose errors are values (a worker
/// reports what it saw rather than panicking in its thread).
#[derive(Clone)]
struct Http(oci::Http);

impl std::ops::Deref for Http {
    type Target = oci::Http;
    fn deref(&self) -> &oci::Http {
        &self.0
    }
}

type Res<T> = Result<T, String>;

impl Http {
    fn new(w: &Wharfie) -> Self {
        Http(oci::Http::new(&w.base, Duration::from_secs(60)))
    }

    fn send(&self, rb: reqwest::blocking::RequestBuilder, what: &str) -> Res<Resp> {
        self.0.send(rb).map_err(|e| format!("{what}: transport error: {e}"))
    }

    fn expect(&self, rb: reqwest::blocking::RequestBuilder, status: u16, what: &str) -> Res<Resp> {
        let r = self.send(rb, what)?;
        if r.status != status {
            return Err(format!("{what}: expected {status}, got {}", r.describe()));
        }
        Ok(r)
    }

    fn monolithic(&self, repo: &str, data: &[u8]) -> Res<Resp> {
        let d = sha256(data);
        self.expect(
            self.req("POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"))
                .header("Content-Type", "application/octet-stream")
                .body(data.to_vec()),
            201,
            &format!("monolithic POST {repo} {d} ({} B)", data.len()),
        )
    }

    fn open_session(&self, repo: &str) -> Res<String> {
        let r = self.expect(self.req("POST", &format!("/v2/{repo}/blobs/uploads/")), 202, "POST session")?;
        r.h("Location")
            .map(|l| self.path_of(l))
            .ok_or_else(|| format!("202 without Location: {}", r.describe()))
    }

    /// PATCH `data[from..to]` in `chunk`-sized pieces with `Content-Range`.
    fn patch_range(&self, loc: &str, data: &[u8], from: usize, to: usize, chunk: usize) -> Res<()> {
        let mut off = from;
        while off < to {
            let end = (off + chunk).min(to);
            self.expect(
                self.req("PATCH", loc)
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Range", format!("{off}-{}", end - 1))
                    .body(data[off..end].to_vec()),
                202,
                &format!("PATCH {loc} {off}-{}", end - 1),
            )?;
            off = end;
        }
        Ok(())
    }

    /// PUT `?digest=` with `data[from..]` as the last chunk (none when empty).
    fn finish(&self, loc: &str, data: &[u8], from: usize) -> Res<Resp> {
        let d = sha256(data);
        let sep = if loc.contains('?') { '&' } else { '?' };
        let mut rb = self.req("PUT", &format!("{loc}{sep}digest={d}"));
        if from < data.len() {
            rb = rb
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{from}-{}", data.len() - 1))
                .body(data[from..].to_vec());
        }
        self.expect(rb, 201, &format!("PUT {loc} digest={d} (last chunk from {from})"))
    }

    fn chunked(&self, repo: &str, data: &[u8], chunk: usize) -> Res<Resp> {
        let loc = self.open_session(repo)?;
        self.patch_range(&loc, data, 0, data.len(), chunk)?;
        self.finish(&loc, data, data.len())
    }

    /// HEAD then GET `repo`'s blob: 200, full length, exact bytes.
    fn check_blob(&self, repo: &str, data: &[u8], what: &str) -> Res<()> {
        let d = sha256(data);
        let path = format!("/v2/{repo}/blobs/{d}");
        let h = self.expect(self.req("HEAD", &path), 200, &format!("{what}: HEAD {path}"))?;
        if h.content_length() != Some(data.len()) {
            return Err(format!(
                "{what}: HEAD {path}: expected Content-Length {}, got {}",
                data.len(),
                h.describe()
            ));
        }
        let g = self.expect(self.req("GET", &path), 200, &format!("{what}: GET {path}"))?;
        if g.body != data {
            return Err(format!(
                "{what}: GET {path}: expected the {} pushed bytes, got {} B hashing to {}",
                data.len(),
                g.body.len(),
                sha256(&g.body)
            ));
        }
        Ok(())
    }

    fn put_manifest(&self, repo: &str, reference: &str, body: &[u8]) -> Res<Resp> {
        self.expect(
            self.req("PUT", &format!("/v2/{repo}/manifests/{reference}"))
                .header("Content-Type", OCI_MANIFEST)
                .body(body.to_vec()),
            201,
            &format!("PUT manifest {repo}:{reference} {}", sha256(body)),
        )
    }

    fn get_manifest(&self, repo: &str, reference: &str) -> Res<Resp> {
        self.send(
            self.req("GET", &format!("/v2/{repo}/manifests/{reference}")).header("Accept", OCI_MANIFEST),
            &format!("GET manifest {repo}:{reference}"),
        )
    }

    /// Every page of a paginated list (`key` = "repositories" or "tags"), following `Link`.
    fn list_all(&self, first: &str, key: &str) -> Res<Vec<String>> {
        let mut out = Vec::new();
        let mut next = Some(first.to_owned());
        for _ in 0..10_000 {
            let Some(path) = next.take() else { return Ok(out) };
            let r = self.expect(self.req("GET", &path), 200, &format!("GET {path}"))?;
            let v: Value =
                serde_json::from_slice(&r.body).map_err(|e| format!("GET {path}: not JSON ({e})"))?;
            out.extend(strings(&v[key]));
            if let Some(link) = r.h("Link") {
                let (a, b) = (link.find('<'), link.find('>'));
                let (Some(a), Some(b)) = (a, b) else {
                    return Err(format!("GET {path}: malformed Link {link:?}"));
                };
                next = Some(self.path_of(&link[a + 1..b]));
            }
        }
        Err(format!("{first}: more than 10000 pages"))
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": config.len()},
        "layers": layers
            .iter()
            .map(|l| json!({"mediaType": OCI_LAYER, "digest": sha256(l), "size": l.len()}))
            .collect::<Vec<_>>(),
    }))
    .expect("json")
}

/// Join every thread; panics in threads and returned errors become one failure list.
fn join_all(handles: Vec<std::thread::JoinHandle<Res<()>>>) -> Vec<String> {
    let mut errs = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errs.push(format!("thread {i}: {e}")),
            Err(p) => errs.push(format!(
                "thread {i} panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    }
    errs
}

fn assert_no_failures(what: &str, errs: &[String]) {
    assert!(errs.is_empty(), "{what}: {} failure(s):\n{}", errs.len(), errs.join("\n"));
}

// ---------------------------------------------------------------------------------
// (a) The same blob, N uploads at once.

#[test]
fn same_blob_uploaded_by_16_clients_at_once_all_get_201_and_read_back_whole() {
    const N: usize = 16;
    let w = Wharfie::start();
    let http = Http::new(&w);
    // Sizes: empty, one byte, odd, several chunks' worth.
    let sizes = [0usize, 1, 70_001, 3 * MIB + 17];
    let mut distinct = BTreeSet::new();
    for (round, &size) in sizes.iter().enumerate() {
        let data = Arc::new(bytes_of(size, 0x5A3E_0000 + round as u64));
        distinct.insert(sha256(&data));
        let barrier = Arc::new(Barrier::new(N));
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (http, data, barrier) = (http.clone(), data.clone(), barrier.clone());
                std::thread::spawn(move || -> Res<()> {
                    // Two repositories: one blob row, two links, raced together.
                    let repo = if i % 3 == 0 { "same/other" } else { "same/blob" };
                    let what = format!(
                        "round {round} ({size} B) client {i} ({})",
                        if i % 2 == 0 { "monolithic" } else { "chunked" }
                    );
                    // Chunked clients PATCH all but the last piece before the barrier and
                    // PUT it after, so every commit lines up with the monolithic POSTs.
                    let chunk = 64 * 1024 * (1 + i / 2);
                    let prepared = if i % 2 == 1 {
                        let keep = if size == 0 { 0 } else { 1 + (size - 1) % chunk };
                        http.open_session(repo).and_then(|loc| {
                            http.patch_range(&loc, &data, 0, size - keep, chunk).map(|()| (loc, size - keep))
                        })
                    } else {
                        Ok((String::new(), 0))
                    };
                    barrier.wait();
                    let (loc, from) = prepared.map_err(|e| format!("{what}: {e}"))?;
                    let r = if i % 2 == 1 {
                        http.finish(&loc, &data, from)
                    } else {
                        http.monolithic(repo, &data)
                    }
                    .map_err(|e| format!("{what}: {e}"))?;
                    let d = sha256(&data);
                    if r.h("Docker-Content-Digest") != Some(d.as_str()) {
                        return Err(format!(
                            "{what}: 201 without Docker-Content-Digest {d}: {}",
                            r.describe()
                        ));
                    }
                    // Right after this client's 201: visible, full size, exact bytes.
                    http.check_blob(repo, &data, &what)
                })
            })
            .collect();
        assert_no_failures(&format!("round {round} ({size} B)"), &join_all(handles));
        assert_eq!(w.blob_files(), distinct.len(), "one file per distinct blob after round {round}");
        assert_eq!(w.staging_entries(), 0, "staging left after round {round}");
    }
    println!("same blob: {} rounds × {N} concurrent uploads, all 201 and whole", sizes.len());
}

// ---------------------------------------------------------------------------------
// (b) One tag, N manifests at once.

#[test]
fn concurrent_puts_of_one_tag_leave_one_complete_winner() {
    const N: usize = 16;
    const ROUNDS: usize = 4;
    const READERS: usize = 2;
    const MAX_READS: usize = 20_000;
    let w = Wharfie::start();
    let http = Http::new(&w);
    let repo = "race/tag";
    let shared_layer = bytes_of(50_000, 0xB10B);
    http.monolithic(repo, &shared_layer).unwrap();
    let mut previous: Option<Vec<u8>> = None;
    let mut reads_total = 0;
    for round in 0..ROUNDS {
        // Each manifest: its own config and layer, plus the shared layer.
        let mut manifests = Vec::new();
        for i in 0..N {
            let config =
                format!(r#"{{"architecture":"amd64","os":"linux","round":{round},"i":{i}}}"#).into_bytes();
            let layer = bytes_of(1000 + i * 333, (round * 100 + i) as u64 + 1);
            http.monolithic(repo, &config).unwrap();
            http.chunked(repo, &layer, 4096).unwrap();
            manifests.push((image_manifest(&config, &[&layer, &shared_layer]), config, layer));
        }
        let bodies: Arc<Vec<Vec<u8>>> = Arc::new(manifests.iter().map(|m| m.0.clone()).collect());
        // Readers accept the previous round's winner too: the tag moves from it to one of these.
        let mut acceptable: Vec<Vec<u8>> = bodies.to_vec();
        acceptable.extend(previous.clone());
        let acceptable = Arc::new(acceptable);
        let barrier = Arc::new(Barrier::new(N + READERS));
        let writers_done = Arc::new(AtomicUsize::new(0));
        let reads = Arc::new(AtomicUsize::new(0));
        let mut handles: Vec<_> = (0..N)
            .map(|i| {
                let (http, bodies, barrier, done) =
                    (http.clone(), bodies.clone(), barrier.clone(), writers_done.clone());
                std::thread::spawn(move || -> Res<()> {
                    barrier.wait();
                    let r = http.put_manifest(repo, "latest", &bodies[i]);
                    done.fetch_add(1, Ordering::SeqCst);
                    let r = r.map_err(|e| format!("round {round} writer {i}: {e}"))?;
                    let d = sha256(&bodies[i]);
                    if r.h("Docker-Content-Digest") != Some(d.as_str()) {
                        return Err(format!(
                            "round {round} writer {i}: expected Docker-Content-Digest {d}, got {}",
                            r.describe()
                        ));
                    }
                    Ok(())
                })
            })
            .collect();
        for k in 0..READERS {
            let (http, acceptable, barrier, done, reads) =
                (http.clone(), acceptable.clone(), barrier.clone(), writers_done.clone(), reads.clone());
            handles.push(std::thread::spawn(move || -> Res<()> {
                barrier.wait();
                // Until every writer has its answer, then once more; bounded by MAX_READS.
                let mut after = 0;
                for _ in 0..MAX_READS {
                    if done.load(Ordering::SeqCst) == N {
                        after += 1;
                        if after > 1 {
                            break;
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    let r = http.get_manifest(repo, "latest")?;
                    match r.status {
                        404 if round == 0 => {}
                        200 => {
                            if !acceptable.contains(&r.body) {
                                return Err(format!(
                                    "round {round} reader {k}: the tag resolved to bytes that are none of the \
                                     manifests pushed: {}",
                                    r.describe()
                                ));
                            }
                            if r.h("Docker-Content-Digest") != Some(sha256(&r.body).as_str()) {
                                return Err(format!("round {round} reader {k}: digest header ≠ body: {}", r.describe()));
                            }
                        }
                        _ => {
                            return Err(format!(
                                "round {round} reader {k}: GET {repo}:latest while it moves: expected 200{}, got {}",
                                if round == 0 { " or 404" } else { "" },
                                r.describe()
                            ))
                        }
                    }
                }
                Ok(())
            }));
        }
        assert_no_failures(&format!("round {round}"), &join_all(handles));
        reads_total += reads.load(Ordering::Relaxed);

        // The tag now names one of this round's manifests, whole; every one is stored.
        let g = http.get_manifest(repo, "latest").unwrap();
        assert_eq!(g.status, 200, "GET {repo}:latest: {}", g.describe());
        let winner = manifests.iter().position(|m| m.0 == g.body).unwrap_or_else(|| {
            panic!("round {round}: the tag resolves to none of the {N} manifests: {}", g.describe())
        });
        let wd = sha256(&g.body);
        assert_eq!(g.h("Docker-Content-Digest"), Some(wd.as_str()), "{}", g.describe());
        let h = http
            .send(
                http.req("HEAD", &format!("/v2/{repo}/manifests/latest")).header("Accept", OCI_MANIFEST),
                "HEAD tag",
            )
            .unwrap();
        assert_eq!(
            (h.status, h.h("Docker-Content-Digest")),
            (200, Some(wd.as_str())),
            "HEAD tag: {}",
            h.describe()
        );
        let (_, config, layer) = &manifests[winner];
        for blob in [config.as_slice(), layer.as_slice(), shared_layer.as_slice()] {
            http.check_blob(repo, blob, &format!("round {round} winner {winner}")).unwrap();
        }
        for (i, (body, _, _)) in manifests.iter().enumerate() {
            let r = http.get_manifest(repo, &sha256(body)).unwrap();
            assert!(
                r.status == 200 && &r.body == body,
                "round {round} manifest {i} by digest: {}",
                r.describe()
            );
        }
        let tags = http.list_all(&format!("/v2/{repo}/tags/list"), "tags").unwrap();
        assert_eq!(tags, vec!["latest".to_owned()], "tags of {repo}");
        println!("round {round}: winner {winner} of {N}");
        previous = Some(g.body);
    }
    println!(
        "one tag: {ROUNDS} rounds × {N} concurrent PUTs, {reads_total} racing reads, one whole winner each"
    );
}

// ---------------------------------------------------------------------------------
// (c) Readers during an upload.

#[test]
fn reads_during_an_upload_see_404_then_the_whole_blob_never_a_short_one() {
    const READERS: usize = 3;
    const MAX_READS: usize = 50_000;
    let w = Wharfie::start();
    let http = Http::new(&w);
    let repo = "watch/blob";
    let mut total_404 = 0;
    let mut total_200 = 0;
    for (variant, chunked) in [(0u64, true), (1, false), (2, true)] {
        let data = Arc::new(bytes_of(8 * MIB, 0xC0DE + variant));
        let d = sha256(&data);
        let path = format!("/v2/{repo}/blobs/{d}");
        let barrier = Arc::new(Barrier::new(READERS + 1));
        let uploaded = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((0usize, 0usize)));
        let mut handles = Vec::new();
        for k in 0..READERS {
            let (http, data, barrier, uploaded, seen, path, d) = (
                http.clone(),
                data.clone(),
                barrier.clone(),
                uploaded.clone(),
                seen.clone(),
                path.clone(),
                d.clone(),
            );
            handles.push(std::thread::spawn(move || -> Res<()> {
                let what = format!("variant {variant} reader {k}");
                // Before the upload starts: certainly not there.
                let r = http.send(http.req("HEAD", &path), &what)?;
                if r.status != 404 {
                    return Err(format!("{what}: HEAD before the upload: expected 404, got {}", r.describe()));
                }
                barrier.wait();
                let (mut n404, mut n200, mut after) = (1, 0, 0);
                for i in 0..MAX_READS {
                    if uploaded.load(Ordering::SeqCst) {
                        // A few reads after the 201, to see the whole blob.
                        after += 1;
                        if after > 3 {
                            break;
                        }
                    }
                    let head = (i + k) % 2 == 0;
                    let r = http.send(http.req(if head { "HEAD" } else { "GET" }, &path), &what)?;
                    match r.status {
                        404 if n200 == 0 => n404 += 1,
                        404 => return Err(format!("{what}: 404 after a 200 (the blob vanished): {}", r.describe())),
                        200 => {
                            n200 += 1;
                            if r.content_length() != Some(data.len()) {
                                return Err(format!(
                                    "{what}: {} answered 200 with Content-Length {:?}, expected the full {}: {}",
                                    if head { "HEAD" } else { "GET" },
                                    r.content_length(),
                                    data.len(),
                                    r.describe()
                                ));
                            }
                            if !head && (r.body.len() != data.len() || sha256(&r.body) != d) {
                                return Err(format!(
                                    "{what}: GET 200 with {} B hashing to {}, expected {} B hashing to {d}",
                                    r.body.len(),
                                    sha256(&r.body),
                                    data.len()
                                ));
                            }
                        }
                        _ => return Err(format!("{what}: expected 404 or 200, got {}", r.describe())),
                    }
                }
                if n200 == 0 {
                    return Err(format!("{what}: never saw the blob after its upload finished"));
                }
                let mut s = seen.lock().unwrap();
                s.0 += n404;
                s.1 += n200;
                Ok(())
            }));
        }
        let uploader = {
            let (http, data, barrier, uploaded) =
                (http.clone(), data.clone(), barrier.clone(), uploaded.clone());
            std::thread::spawn(move || -> Res<()> {
                barrier.wait();
                let r = if chunked {
                    http.chunked(repo, &data, 512 * 1024)
                } else {
                    http.monolithic(repo, &data)
                };
                uploaded.store(true, Ordering::SeqCst);
                r.map(|_| ())
            })
        };
        handles.insert(0, uploader);
        assert_no_failures(
            &format!("variant {variant} ({})", if chunked { "chunked" } else { "monolithic" }),
            &join_all(handles),
        );
        // Visible only in the repository it was pushed to.
        let r =
            http.send(http.req("HEAD", &format!("/v2/watch/elsewhere/blobs/{d}")), "HEAD elsewhere").unwrap();
        assert_eq!(r.status, 404, "blob visible in a repository without a link: {}", r.describe());
        let s = *seen.lock().unwrap();
        total_404 += s.0;
        total_200 += s.1;
    }
    println!("reads during uploads: {total_404} × 404 then {total_200} × 200 whole, none short");
}

// ---------------------------------------------------------------------------------
// (d) Many blobs, many repositories, at once.

#[test]
fn many_distinct_pushes_to_many_repos_leave_consistent_catalog_and_tags() {
    const THREADS: usize = 8;
    const REPOS: usize = 24;
    let w = Wharfie::start();
    let http = Http::new(&w);
    let repo_name = |i: usize| {
        if i.is_multiple_of(3) {
            format!("many/deep/x/r{i:02}")
        } else {
            format!("many/r{i:02}")
        }
    };
    let barrier = Arc::new(Barrier::new(THREADS));
    let pushed = Arc::new(Mutex::new(Vec::<(String, String, Vec<u8>, Vec<Vec<u8>>)>::new()));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (http, barrier, pushed) = (http.clone(), barrier.clone(), pushed.clone());
            std::thread::spawn(move || -> Res<()> {
                barrier.wait();
                // Every thread visits every repository, each in its own order.
                for j in 0..REPOS {
                    let i = (j * 5 + t * 7) % REPOS;
                    let repo = repo_name(i);
                    let tag = format!("t{t}");
                    let config =
                        format!(r#"{{"architecture":"amd64","os":"linux","t":{t},"r":{i}}}"#).into_bytes();
                    let layer = bytes_of(1 + (t * 977 + i * 131) % 40_000, (t * 1000 + i) as u64 + 7);
                    http.monolithic(&repo, &config)?;
                    if (t + i).is_multiple_of(2) {
                        http.monolithic(&repo, &layer)?;
                    } else {
                        http.chunked(&repo, &layer, 8192)?;
                    }
                    let m = image_manifest(&config, &[&layer]);
                    http.put_manifest(&repo, &tag, &m)?;
                    pushed.lock().unwrap().push((repo, tag, m, vec![config, layer]));
                }
                Ok(())
            })
        })
        .collect();
    assert_no_failures("concurrent pushes", &join_all(handles));

    let pushed = pushed.lock().unwrap();
    let want_repos: Vec<String> = {
        let s: BTreeSet<String> = (0..REPOS).map(repo_name).collect();
        s.into_iter().collect()
    };
    let cat = http.list_all("/v2/_catalog", "repositories").unwrap();
    assert_eq!(cat, want_repos, "catalog after concurrent pushes");
    let paged = http.list_all("/v2/_catalog?n=5", "repositories").unwrap();
    assert_eq!(paged, want_repos, "catalog walked 5 at a time through Link");
    let want_tags: Vec<String> = {
        let s: BTreeSet<String> = (0..THREADS).map(|t| format!("t{t}")).collect();
        s.into_iter().collect()
    };
    for repo in &want_repos {
        let tags = http.list_all(&format!("/v2/{repo}/tags/list"), "tags").unwrap();
        assert_eq!(tags, want_tags, "tags of {repo}");
        let paged = http.list_all(&format!("/v2/{repo}/tags/list?n=3"), "tags").unwrap();
        assert_eq!(paged, want_tags, "tags of {repo} walked 3 at a time");
    }
    let mut errs = Vec::new();
    let mut digests = BTreeSet::new();
    for (repo, tag, m, blobs) in pushed.iter() {
        let r = http.get_manifest(repo, tag).unwrap();
        if r.status != 200 || &r.body != m {
            errs.push(format!("GET {repo}:{tag}: expected the pushed manifest, got {}", r.describe()));
        }
        for b in blobs {
            digests.insert(sha256(b));
            if let Err(e) = http.check_blob(repo, b, &format!("{repo}:{tag}")) {
                errs.push(e);
            }
        }
    }
    assert_no_failures("read back", &errs);
    assert_eq!(pushed.len(), THREADS * REPOS);
    assert_eq!(w.blob_files(), digests.len(), "one file per distinct blob");
    assert_eq!(w.staging_entries(), 0, "staging left after every upload finished");
    println!(
        "many repos: {} images by {THREADS} clients into {REPOS} repositories; catalog and tags exact",
        pushed.len()
    );
}
