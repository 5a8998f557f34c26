//! The bad-input table: malformed and mismatched digests, bad names (traversal
//! attempts, uppercase, empty segments), bad tags, bad `Content-Range`, garbage,
//! oversized and dangling-reference manifests, wrong `Content-Length`, unknown
//! sessions. Every case is sent byte for byte over a raw socket (so `..` and `%2e%2e`
//! reach the server unnormalised) and asserts:
//! - the exact HTTP status (never a 5xx, never a redirect),
//! - the exact OCI error code of the JSON body (HEAD: no body at all),
//! - that nothing was stored: no new file under `blobs/`, the catalog, the tag lists
//!   and the fixture's referrers unchanged, every `absent` path still HEAD 404,
//! - and what became of the upload session the case used: kept at the same offset,
//!   or gone with its staging directory.
//!
//! All failures of a table are collected and reported together.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::oci;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{bytes_of, sha256, Wharfie};
use oci::*;
use serde_json::json;

/// The fixture repository: an image tagged `v1` (config + one layer).
const REPO: &str = "fix/app";
/// Another repository, holding content `REPO` must not see.
const OTHER: &str = "other/repo";
/// A valid name that holds nothing.
const FRESH: &str = "fresh/repo";
/// What the fixture's sessions hold before a case runs.
const SESSION_BYTES: &[u8] = b"0123456789";

struct Fx {
    w: Wharfie,
    c: reqwest::blocking::Client,
    /// The image in `REPO`, tagged `v1`.
    img: Image,
    /// A blob only in `OTHER`.
    other_blob: Desc,
    /// An image only in `OTHER`, tagged `x`.
    other_img: Image,
}

impl Fx {
    fn new() -> Self {
        let w = Wharfie::start();
        let (img, other_blob, other_img) = {
            let api = Api::new(&w);
            let img = api.push_image(REPO, Some("v1"), 1, 1);
            let ob = bytes_of(333, 99);
            api.push_blob(OTHER, &ob);
            let other_img = api.push_image(OTHER, Some("x"), 2, 1);
            (img, Desc::new(OCI_LAYER, &ob), other_img)
        };
        let c = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Fx { w, c, img, other_blob, other_img }
    }

    fn api(&self) -> Api<'_> {
        Api { w: &self.w, c: self.c.clone() }
    }

    /// Open a session in `repo` holding `SESSION_BYTES`; returns its location path.
    fn session(&self, repo: &str) -> String {
        let api = self.api();
        let loc = api.start_upload(repo);
        api.patch(&loc, 0, SESSION_BYTES).expect_status(202);
        loc
    }

    /// Open an empty session in `repo`.
    fn empty_session(&self, repo: &str) -> String {
        self.api().start_upload(repo)
    }

    /// A manifest valid in `REPO` that was never pushed (distinct per `salt`).
    fn fresh_manifest(&self, salt: &str) -> Vec<u8> {
        image_manifest(
            OCI_MANIFEST,
            &self.img.config,
            &self.img.layers,
            json!({"annotations": {"salt": salt}}),
        )
    }

    fn snapshot(&self, watch: &[String]) -> Snap {
        let api = self.api();
        let mut repos: Vec<String> = vec![REPO.into(), OTHER.into(), FRESH.into()];
        repos.extend(watch.iter().cloned());
        let tags = repos
            .iter()
            .map(|r| {
                let t = api.get(&format!("/v2/{r}/tags/list"));
                (r.clone(), t.status, t.text())
            })
            .collect();
        let refs = api.get(&format!("/v2/{REPO}/referrers/{}", self.img.digest)).text();
        Snap {
            blob_files: self.w.blob_files(),
            staging: self.w.staging_entries(),
            catalog: api.get("/v2/_catalog").text(),
            tags,
            referrers: refs,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Snap {
    blob_files: usize,
    staging: usize,
    catalog: String,
    tags: Vec<(String, u16, String)>,
    referrers: String,
}

/// How the request goes out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    /// `Expect: 100-continue`: the body goes only if the server asks for it.
    ExpectContinue,
}

/// What a case should have done to the session it used.
#[derive(Clone, Copy, Debug)]
enum After {
    /// No session involved: staging unchanged.
    Nothing,
    /// The session is still open with this many bytes; staging unchanged.
    SessionKept(u64),
    /// The request ended the session: GET on it is 404 and its staging is gone.
    SessionGone,
    /// Either of the two above, consistently (the contract leaves it open).
    SessionEither,
}

/// One request, built against the fixture.
struct Prepared {
    req: RawReq,
    mode: Mode,
    /// Paths that must answer HEAD 404 afterwards (the content the request carried).
    absent: Vec<String>,
    /// Extra repositories whose tag list must not change.
    watch: Vec<String>,
    /// The session the case used (location path).
    session: Option<String>,
}

fn prep(req: RawReq) -> Prepared {
    Prepared { req, mode: Mode::Plain, absent: vec![], watch: vec![], session: None }
}

impl Prepared {
    fn absent(mut self, p: impl Into<String>) -> Self {
        self.absent.push(p.into());
        self
    }
    fn watch(mut self, repo: &str) -> Self {
        self.watch.push(repo.into());
        self
    }
    fn session(mut self, loc: &str) -> Self {
        self.session = Some(loc.into());
        self
    }
    fn mode(mut self, m: Mode) -> Self {
        self.mode = m;
        self
    }
}

struct Case {
    name: String,
    prep: Box<dyn Fn(&Fx) -> Prepared>,
    status: u16,
    /// Acceptable OCI codes (one, except where the contract allows two); empty for HEAD.
    codes: &'static [&'static str],
    after: After,
}

fn case(
    name: impl Into<String>,
    status: u16,
    codes: &'static [&'static str],
    after: After,
    prep: impl Fn(&Fx) -> Prepared + 'static,
) -> Case {
    Case { name: name.into(), prep: Box::new(prep), status, codes, after }
}

fn run_case(fx: &Fx, c: &Case) {
    let p = (c.prep)(fx);
    let before = fx.snapshot(&p.watch);
    let r = match p.mode {
        Mode::Plain => raw(&fx.w, &p.req),
        Mode::ExpectContinue => raw_expect_continue(&fx.w, &p.req).0,
    };
    let what = format!("{} {}", p.req.method, p.req.path);
    assert_eq!(r.status, c.status, "{what}: status: {}", r.describe());
    if p.req.method == "HEAD" {
        assert!(r.body.is_empty(), "{what}: HEAD error with a body: {}", r.describe());
    } else {
        let ct = r.h("Content-Type").unwrap_or("");
        assert!(ct.starts_with("application/json"), "{what}: error Content-Type {ct:?}: {}", r.describe());
        let code = r.code();
        assert!(
            c.codes.contains(&code.as_str()),
            "{what}: OCI code {code}, want {:?}: {}",
            c.codes,
            r.describe()
        );
    }

    // The session's fate.
    let api = fx.api();
    let mut staging_delta: i64 = 0;
    if let Some(loc) = &p.session {
        let s = api.get(loc);
        match c.after {
            After::Nothing => panic!("case with a session must say what becomes of it"),
            After::SessionKept(n) => {
                assert_eq!(s.status, 204, "{what}: session should still be open: {}", s.describe());
                if n > 0 {
                    let want = format!("0-{}", n - 1);
                    assert_eq!(s.h("Range"), Some(want.as_str()), "{what}: offset moved: {}", s.describe());
                }
            }
            After::SessionGone => {
                s.expect_err(404, "BLOB_UPLOAD_UNKNOWN");
                staging_delta = -1;
            }
            After::SessionEither => {
                if s.status == 404 {
                    assert_eq!(s.code(), "BLOB_UPLOAD_UNKNOWN", "{what}: {}", s.describe());
                    staging_delta = -1;
                } else {
                    assert_eq!(s.status, 204, "{what}: {}", s.describe());
                    assert_eq!(s.h("Range"), Some("0-9"), "{what}: offset moved: {}", s.describe());
                }
            }
        }
    }

    // Nothing stored.
    let after = fx.snapshot(&p.watch);
    assert_eq!(after.blob_files, before.blob_files, "{what}: a blob file was stored");
    assert_eq!(
        after.staging as i64,
        before.staging as i64 + staging_delta,
        "{what}: staging entries before {} after {} (want delta {staging_delta})",
        before.staging,
        after.staging
    );
    assert_eq!(after.catalog, before.catalog, "{what}: the catalog changed");
    assert_eq!(after.tags, before.tags, "{what}: a tag list changed");
    assert_eq!(after.referrers, before.referrers, "{what}: the referrers changed");
    for a in &p.absent {
        let h = api.head(a);
        assert_eq!(h.status, 404, "{what}: {a} exists after a refused request: {}", h.describe());
    }

    // Leave no open session behind for the next case.
    if let Some(loc) = &p.session {
        let _ = api.delete(loc);
    }
}

/// Run every case on one fixture; report all failures at once.
fn run_table(cases: Vec<Case>) {
    let fx = Fx::new();
    let mut failed = Vec::new();
    for c in &cases {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| run_case(&fx, c))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("[{}] {msg}", c.name));
        }
    }
    assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), cases.len(), failed.join("\n"));
}

fn blob_path(repo: &str, d: &str) -> String {
    format!("/v2/{repo}/blobs/{d}")
}

fn manifest_path(repo: &str, r: &str) -> String {
    format!("/v2/{repo}/manifests/{r}")
}

fn put_manifest_req(path: String, media_type: &str, body: Vec<u8>) -> RawReq {
    RawReq::new("PUT", path).header("Content-Type", media_type).body(body)
}

// ---------------------------------------------------------------------------------
// Names

fn bad_names() -> Vec<String> {
    let comp = "x".repeat(50);
    let long = format!("{}yz", [comp.as_str(); 5].join("/"));
    assert_eq!(long.len(), 256);
    [
        "Upper",
        "fix/App",
        "UPPER/case",
        "",
        "a//b",
        "a/",
        "..",
        ".",
        "a/../b",
        "a/./b",
        "..%2f..%2fetc",
        "..%2F..%2Fmeta.redb",
        "%2e%2e",
        "%2E%2E/x",
        "a/%2e%2e/b",
        "a%2fb",
        "a%20b",
        "%C3%BC",
        "trailing-",
        "-lead",
        "_lead",
        "a..b",
        "a___b",
        "a_-b",
        "a.",
        "a:b",
        "a@b",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long])
    .collect()
}

#[test]
fn bad_names_are_400_name_invalid() {
    let mut cases = Vec::new();
    const NI: &[&str] = &["NAME_INVALID"];
    for n in bad_names() {
        let n2 = n.clone();
        cases.push(case(format!("GET manifest {n:?}"), 400, NI, After::Nothing, move |_| {
            prep(RawReq::new("GET", manifest_path(&n2, "v1")))
        }));
        let n2 = n.clone();
        cases.push(case(format!("HEAD manifest {n:?}"), 400, &[], After::Nothing, move |_| {
            prep(RawReq::new("HEAD", manifest_path(&n2, "v1")))
        }));
        let n2 = n.clone();
        cases.push(case(format!("PUT manifest {n:?}"), 400, NI, After::Nothing, move |fx| {
            let m = fx.fresh_manifest("bad-name");
            let d = sha256(&m);
            prep(put_manifest_req(manifest_path(&n2, "v1"), OCI_MANIFEST, m)).absent(manifest_path(REPO, &d))
        }));
        let n2 = n.clone();
        cases.push(case(format!("DELETE manifest {n:?}"), 400, NI, After::Nothing, move |fx| {
            prep(RawReq::new("DELETE", manifest_path(&n2, &fx.img.digest)))
        }));
        let n2 = n.clone();
        cases.push(case(format!("GET blob {n:?}"), 400, NI, After::Nothing, move |fx| {
            prep(RawReq::new("GET", blob_path(&n2, &fx.img.config.digest)))
        }));
        let n2 = n.clone();
        cases.push(case(format!("HEAD blob {n:?}"), 400, &[], After::Nothing, move |fx| {
            prep(RawReq::new("HEAD", blob_path(&n2, &fx.img.config.digest)))
        }));
        let n2 = n.clone();
        cases.push(case(format!("DELETE blob {n:?}"), 400, NI, After::Nothing, move |fx| {
            prep(RawReq::new("DELETE", blob_path(&n2, &fx.img.config.digest)))
        }));
        let n2 = n.clone();
        cases.push(case(format!("POST upload {n:?}"), 400, NI, After::Nothing, move |_| {
            prep(RawReq::new("POST", format!("/v2/{n2}/blobs/uploads/")))
        }));
        let n2 = n.clone();
        cases.push(case(format!("POST monolithic {n:?}"), 400, NI, After::Nothing, move |_| {
            let data = b"monolithic into a bad name".to_vec();
            let d = sha256(&data);
            prep(RawReq::new("POST", format!("/v2/{n2}/blobs/uploads/?digest={d}")).body(data))
                .absent(blob_path(REPO, &d))
                .absent(blob_path(FRESH, &d))
        }));
        let n2 = n.clone();
        cases.push(case(format!("POST mount into {n:?}"), 400, NI, After::Nothing, move |fx| {
            prep(RawReq::new(
                "POST",
                format!("/v2/{n2}/blobs/uploads/?mount={}&from={REPO}", fx.img.config.digest),
            ))
        }));
        let n2 = n.clone();
        cases.push(case(format!("PATCH upload {n:?}"), 400, NI, After::SessionKept(10), move |fx| {
            let loc = fx.session(REPO);
            let id = loc.rsplit('/').next().expect("id").to_owned();
            prep(
                RawReq::new("PATCH", format!("/v2/{n2}/blobs/uploads/{id}"))
                    .header("Content-Range", "10-19")
                    .body(b"abcdefghij".to_vec()),
            )
            .session(&loc)
        }));
        let n2 = n.clone();
        cases.push(case(format!("tags list {n:?}"), 400, NI, After::Nothing, move |_| {
            prep(RawReq::new("GET", format!("/v2/{n2}/tags/list")))
        }));
        let n2 = n.clone();
        cases.push(case(format!("referrers {n:?}"), 400, NI, After::Nothing, move |fx| {
            prep(RawReq::new("GET", format!("/v2/{n2}/referrers/{}", fx.img.digest)))
        }));
    }
    // A bad `from` in a mount.
    for from in ["Bad", "..%2f..%2fetc", "a//b", "%2e%2e", "a%2F..%2Fb"] {
        cases.push(case(format!("POST mount from {from:?}"), 400, NI, After::Nothing, move |fx| {
            prep(RawReq::new(
                "POST",
                format!("/v2/{FRESH}/blobs/uploads/?mount={}&from={from}", fx.img.config.digest),
            ))
            .absent(blob_path(FRESH, &fx.img.config.digest))
        }));
    }
    run_table(cases);
}

// ---------------------------------------------------------------------------------
// Tags

#[test]
/// A PUT under an invalid tag is 400 TAG_INVALID; reads and deletes of one find nothing
/// (404 MANIFEST_UNKNOWN, as Distribution and the OCI conformance suite expect).
fn bad_tags_are_400_tag_invalid_on_put_and_404_on_reads() {
    const TI: &[&str] = &["TAG_INVALID"];
    const MU: &[&str] = &["MANIFEST_UNKNOWN"];
    let long = format!("a{}", "b".repeat(128));
    assert_eq!(long.len(), 129);
    let tags: Vec<String> = [
        "-bad",
        ".hidden",
        ".INVALID_MANIFEST_NAME",
        "bad!tag",
        "a%20b",
        "tag%2Fslash",
        "%C3%A9t%C3%A9",
        "a*b",
        "a+b",
        "%2e%2e",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([long])
    .collect();
    let mut cases = Vec::new();
    for t in tags {
        let t2 = t.clone();
        cases.push(case(format!("GET manifest tag {t:?}"), 404, MU, After::Nothing, move |_| {
            prep(RawReq::new("GET", manifest_path(REPO, &t2)))
        }));
        let t2 = t.clone();
        cases.push(case(format!("HEAD manifest tag {t:?}"), 404, &[], After::Nothing, move |_| {
            prep(RawReq::new("HEAD", manifest_path(REPO, &t2)))
        }));
        let t2 = t.clone();
        cases.push(case(format!("PUT manifest tag {t:?}"), 400, TI, After::Nothing, move |fx| {
            let m = fx.fresh_manifest("bad-tag");
            let d = sha256(&m);
            prep(put_manifest_req(manifest_path(REPO, &t2), OCI_MANIFEST, m)).absent(manifest_path(REPO, &d))
        }));
        let t2 = t.clone();
        cases.push(case(
            format!("PUT manifest tag {t:?} in a fresh repo"),
            400,
            TI,
            After::Nothing,
            move |fx| {
                let m = fx.fresh_manifest("bad-tag-fresh");
                prep(put_manifest_req(manifest_path(FRESH, &t2), OCI_MANIFEST, m))
            },
        ));
        let t2 = t.clone();
        cases.push(case(format!("DELETE manifest tag {t:?}"), 404, MU, After::Nothing, move |_| {
            prep(RawReq::new("DELETE", manifest_path(REPO, &t2)))
        }));
    }
    run_table(cases);
}

// ---------------------------------------------------------------------------------
// Digests

fn bad_digests() -> Vec<String> {
    let h = "0123456789abcdef".repeat(4);
    vec![
        "sha256:xyz".into(),
        format!("sha256:{}", &h[..63]),
        format!("sha256:{h}0"),
        format!("sha256:{}", h.to_uppercase()),
        format!("SHA256:{h}"),
        format!("sha256:{}g", &h[..63]),
        format!("md5:{}", &h[..32]),
        format!("sha512:{h}{h}"),
        format!(":{h}"),
        "sha256:".into(),
        format!("sha256::{h}"),
        format!("sha256%3A{}", &h[..63]),
    ]
}

#[test]
/// A malformed digest is 400 DIGEST_INVALID wherever only a digest may go and on a
/// manifest PUT; as a manifest reference to read or delete it names nothing: 404
/// MANIFEST_UNKNOWN (neither a valid tag nor a valid digest, as Distribution answers).
fn bad_digests_are_400_digest_invalid() {
    const DI: &[&str] = &["DIGEST_INVALID"];
    const MU: &[&str] = &["MANIFEST_UNKNOWN"];
    let mut cases = Vec::new();
    for d in bad_digests() {
        let d2 = d.clone();
        cases.push(case(format!("GET manifest {d:?}"), 404, MU, After::Nothing, move |_| {
            prep(RawReq::new("GET", manifest_path(REPO, &d2)))
        }));
        let d2 = d.clone();
        cases.push(case(format!("HEAD manifest {d:?}"), 404, &[], After::Nothing, move |_| {
            prep(RawReq::new("HEAD", manifest_path(REPO, &d2)))
        }));
        let d2 = d.clone();
        cases.push(case(format!("DELETE manifest {d:?}"), 404, MU, After::Nothing, move |_| {
            prep(RawReq::new("DELETE", manifest_path(REPO, &d2)))
        }));
        let d2 = d.clone();
        cases.push(case(format!("PUT manifest {d:?}"), 400, DI, After::Nothing, move |fx| {
            let m = fx.fresh_manifest("bad-digest");
            let md = sha256(&m);
            prep(put_manifest_req(manifest_path(REPO, &d2), OCI_MANIFEST, m)).absent(manifest_path(REPO, &md))
        }));
        let d2 = d.clone();
        cases.push(case(format!("GET blob {d:?}"), 400, DI, After::Nothing, move |_| {
            prep(RawReq::new("GET", blob_path(REPO, &d2)))
        }));
        let d2 = d.clone();
        cases.push(case(format!("HEAD blob {d:?}"), 400, &[], After::Nothing, move |_| {
            prep(RawReq::new("HEAD", blob_path(REPO, &d2)))
        }));
        let d2 = d.clone();
        cases.push(case(format!("DELETE blob {d:?}"), 400, DI, After::Nothing, move |_| {
            prep(RawReq::new("DELETE", blob_path(REPO, &d2)))
        }));
        let d2 = d.clone();
        cases.push(case(format!("referrers {d:?}"), 400, DI, After::Nothing, move |_| {
            prep(RawReq::new("GET", format!("/v2/{REPO}/referrers/{d2}")))
        }));
        let d2 = d.clone();
        cases.push(case(format!("POST monolithic ?digest={d:?}"), 400, DI, After::Nothing, move |_| {
            let data = b"monolithic with a malformed digest".to_vec();
            let real = sha256(&data);
            prep(RawReq::new("POST", format!("/v2/{REPO}/blobs/uploads/?digest={d2}")).body(data))
                .absent(blob_path(REPO, &real))
        }));
        let d2 = d.clone();
        cases.push(case(format!("POST ?mount={d:?}"), 400, DI, After::Nothing, move |_| {
            prep(RawReq::new("POST", format!("/v2/{FRESH}/blobs/uploads/?mount={d2}&from={REPO}")))
        }));
        let d2 = d.clone();
        cases.push(case(format!("PUT upload ?digest={d:?}"), 400, DI, After::SessionEither, move |fx| {
            let loc = fx.session(REPO);
            prep(RawReq::new("PUT", with_query(&loc, &format!("digest={d2}"))))
                .session(&loc)
                .absent(blob_path(REPO, &sha256(SESSION_BYTES)))
        }));
    }
    // Not a digest at all where only a digest may go.
    for d in ["latest", "sha256"] {
        cases.push(case(format!("GET blob {d:?}"), 400, DI, After::Nothing, move |_| {
            prep(RawReq::new("GET", blob_path(REPO, d)))
        }));
        cases.push(case(format!("referrers {d:?}"), 400, DI, After::Nothing, move |_| {
            prep(RawReq::new("GET", format!("/v2/{REPO}/referrers/{d}")))
        }));
    }
    run_table(cases);
}

#[test]
fn mismatched_digests_are_400_digest_invalid_and_store_nothing() {
    const DI: &[&str] = &["DIGEST_INVALID"];
    let cases = vec![
        case("PUT manifest by a digest its bytes do not hash to", 400, DI, After::Nothing, |fx| {
            let m = fx.fresh_manifest("mismatch");
            let claimed = sha256(b"not the manifest");
            prep(put_manifest_req(manifest_path(REPO, &claimed), OCI_MANIFEST, m.clone()))
                .absent(manifest_path(REPO, &claimed))
                .absent(manifest_path(REPO, &sha256(&m)))
        }),
        case("PUT manifest by the digest of another existing manifest", 400, DI, After::Nothing, |fx| {
            let m = fx.fresh_manifest("mismatch-existing");
            prep(put_manifest_req(manifest_path(REPO, &fx.img.digest), OCI_MANIFEST, m.clone()))
                .absent(manifest_path(REPO, &sha256(&m)))
        }),
        case("POST monolithic, body does not match ?digest", 400, DI, After::Nothing, |_| {
            let claimed = sha256(b"claimed");
            let body = b"actual body".to_vec();
            let real = sha256(&body);
            prep(RawReq::new("POST", format!("/v2/{REPO}/blobs/uploads/?digest={claimed}")).body(body))
                .absent(blob_path(REPO, &claimed))
                .absent(blob_path(REPO, &real))
        }),
        case("POST monolithic in a fresh repo, body does not match", 400, DI, After::Nothing, |_| {
            let claimed = sha256(b"claimed fresh");
            prep(
                RawReq::new("POST", format!("/v2/{FRESH}/blobs/uploads/?digest={claimed}"))
                    .body(b"x".to_vec()),
            )
            .absent(blob_path(FRESH, &claimed))
            .absent(blob_path(FRESH, &sha256(b"x")))
        }),
        case("POST monolithic chunked, body does not match", 400, DI, After::Nothing, |_| {
            let body = bytes_of(50_000, 5);
            let claimed = sha256(&body[..49_999]);
            prep(
                RawReq::new("POST", format!("/v2/{REPO}/blobs/uploads/?digest={claimed}"))
                    .body(body.clone())
                    .framing(Framing::Chunked(4096)),
            )
            .absent(blob_path(REPO, &claimed))
            .absent(blob_path(REPO, &sha256(&body)))
        }),
        case("POST monolithic, Content-Length shorter than the body", 400, DI, After::Nothing, |_| {
            let body = bytes_of(100, 6);
            let claimed = sha256(&body);
            prep(
                RawReq::new("POST", format!("/v2/{REPO}/blobs/uploads/?digest={claimed}"))
                    .body(body.clone())
                    .framing(Framing::Length("60".into())),
            )
            .absent(blob_path(REPO, &claimed))
            .absent(blob_path(REPO, &sha256(&body[..60])))
        }),
        case("POST monolithic, empty body with the digest of content", 400, DI, After::Nothing, |_| {
            let claimed = sha256(b"content");
            prep(RawReq::new("POST", format!("/v2/{REPO}/blobs/uploads/?digest={claimed}")))
                .absent(blob_path(REPO, &claimed))
        }),
        case("PUT upload, wrong digest, no final chunk", 400, DI, After::SessionGone, |fx| {
            let loc = fx.session(REPO);
            let wrong = sha256(b"wrong");
            prep(RawReq::new("PUT", with_query(&loc, &format!("digest={wrong}"))))
                .session(&loc)
                .absent(blob_path(REPO, &wrong))
                .absent(blob_path(REPO, &sha256(SESSION_BYTES)))
        }),
        case("PUT upload, wrong digest, with final chunk", 400, DI, After::SessionGone, |fx| {
            let loc = fx.session(REPO);
            let wrong = sha256(b"wrong");
            let mut all = SESSION_BYTES.to_vec();
            all.extend_from_slice(b"tail");
            prep(
                RawReq::new("PUT", with_query(&loc, &format!("digest={wrong}")))
                    .header("Content-Range", "10-13")
                    .body(b"tail".to_vec()),
            )
            .session(&loc)
            .absent(blob_path(REPO, &wrong))
            .absent(blob_path(REPO, &sha256(&all)))
        }),
        case("PUT upload, digest of the first chunk only", 400, DI, After::SessionGone, |fx| {
            let loc = fx.session(REPO);
            let prefix = sha256(SESSION_BYTES);
            let mut all = SESSION_BYTES.to_vec();
            all.extend_from_slice(b"tail");
            prep(
                RawReq::new("PUT", with_query(&loc, &format!("digest={prefix}")))
                    .header("Content-Range", "10-13")
                    .body(b"tail".to_vec()),
            )
            .session(&loc)
            .absent(blob_path(REPO, &prefix))
            .absent(blob_path(REPO, &sha256(&all)))
        }),
        case("PUT upload, wrong digest, empty session", 400, DI, After::SessionGone, |fx| {
            let loc = fx.empty_session(FRESH);
            let wrong = sha256(b"wrong");
            prep(RawReq::new("PUT", with_query(&loc, &format!("digest={wrong}"))))
                .session(&loc)
                .absent(blob_path(FRESH, &wrong))
        }),
        case("PUT upload without ?digest", 400, DI, After::SessionEither, |fx| {
            let loc = fx.session(REPO);
            prep(RawReq::new("PUT", loc.clone()))
                .session(&loc)
                .absent(blob_path(REPO, &sha256(SESSION_BYTES)))
        }),
        case("PUT upload with an empty ?digest=", 400, DI, After::SessionEither, |fx| {
            let loc = fx.session(REPO);
            prep(RawReq::new("PUT", with_query(&loc, "digest="))).session(&loc)
        }),
    ];
    run_table(cases);
}

// ---------------------------------------------------------------------------------
// Manifests: garbage, schema1, mismatches, oversize

#[test]
fn invalid_manifests_are_400_manifest_invalid() {
    const MI: &[&str] = &["MANIFEST_INVALID"];
    type Body = fn(&Fx) -> (String, Vec<u8>);
    let bodies: Vec<(&str, Body)> = vec![
        ("garbage text", |_| (OCI_MANIFEST.into(), b"this is not json".to_vec())),
        ("empty body", |_| (OCI_MANIFEST.into(), vec![])),
        ("binary garbage", |_| (OCI_MANIFEST.into(), bytes_of(1000, 7))),
        ("JSON array", |_| (OCI_MANIFEST.into(), b"[]".to_vec())),
        ("JSON null", |_| (OCI_MANIFEST.into(), b"null".to_vec())),
        ("JSON string", |_| (OCI_MANIFEST.into(), b"\"manifest\"".to_vec())),
        ("truncated JSON", |fx| {
            let m = fx.fresh_manifest("trunc");
            (OCI_MANIFEST.into(), m[..m.len() / 2].to_vec())
        }),
        ("schemaVersion 1 as application/json", |_| {
            (
                "application/json".into(),
                br#"{"schemaVersion":1,"name":"fix/app","tag":"v9","fsLayers":[],"history":[]}"#.to_vec(),
            )
        }),
        ("schemaVersion 1 with no Content-Type worth believing", |_| {
            (
                "application/octet-stream".into(),
                br#"{"schemaVersion":1,"name":"fix/app","tag":"v9","fsLayers":[],"history":[]}"#.to_vec(),
            )
        }),
        ("schema1 media type", |_| {
            (DOCKER_V1.into(), br#"{"schemaVersion":1,"name":"fix/app","tag":"v9","architecture":"amd64","fsLayers":[],"history":[]}"#.to_vec())
        }),
        ("schema1 signed media type", |_| {
            (DOCKER_V1_SIGNED.into(), br#"{"schemaVersion":1,"name":"fix/app","tag":"v9","architecture":"amd64","fsLayers":[],"history":[],"signatures":[]}"#.to_vec())
        }),
        ("schema1 signed media type on a schema2 body", |fx| {
            (DOCKER_V1_SIGNED.into(), fx.fresh_manifest("s1"))
        }),
        ("schemaVersion 3", |fx| {
            let mut v: serde_json::Value = serde_json::from_slice(&fx.fresh_manifest("v3")).expect("json");
            v["schemaVersion"] = json!(3);
            (OCI_MANIFEST.into(), serde_json::to_vec(&v).expect("json"))
        }),
        ("schemaVersion missing", |fx| {
            let mut v: serde_json::Value = serde_json::from_slice(&fx.fresh_manifest("nov")).expect("json");
            v.as_object_mut().expect("object").remove("schemaVersion");
            (OCI_MANIFEST.into(), serde_json::to_vec(&v).expect("json"))
        }),
        ("schemaVersion as a string", |fx| {
            let mut v: serde_json::Value = serde_json::from_slice(&fx.fresh_manifest("strv")).expect("json");
            v["schemaVersion"] = json!("2");
            (OCI_MANIFEST.into(), serde_json::to_vec(&v).expect("json"))
        }),
        ("Content-Type OCI manifest, mediaType OCI index", |fx| {
            (OCI_MANIFEST.into(), index_manifest(OCI_INDEX, &[fx.img.desc()], json!({})))
        }),
        ("Content-Type OCI index, mediaType OCI manifest", |fx| {
            (OCI_INDEX.into(), fx.fresh_manifest("ct-idx"))
        }),
        ("Content-Type Docker schema2, mediaType OCI manifest", |fx| {
            (DOCKER_MANIFEST.into(), fx.fresh_manifest("ct-d2"))
        }),
        ("Content-Type OCI manifest, mediaType Docker schema2", |fx| {
            (OCI_MANIFEST.into(), image_manifest(DOCKER_MANIFEST, &fx.img.config, &fx.img.layers, json!({})))
        }),
        ("Content-Type Docker list, mediaType OCI index", |fx| {
            (DOCKER_LIST.into(), index_manifest(OCI_INDEX, &[fx.img.desc()], json!({})))
        }),
        ("unknown media type", |fx| {
            let t = "application/vnd.example.unknown.v1+json";
            (t.into(), image_manifest(t, &fx.img.config, &fx.img.layers, json!({})))
        }),
        ("image manifest without config", |fx| {
            let mut v: serde_json::Value = serde_json::from_slice(&fx.fresh_manifest("nocfg")).expect("json");
            v.as_object_mut().expect("object").remove("config");
            (OCI_MANIFEST.into(), serde_json::to_vec(&v).expect("json"))
        }),
        ("config is a string", |fx| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&fx.fresh_manifest("cfgstr")).expect("json");
            v["config"] = json!("sha256:abc");
            (OCI_MANIFEST.into(), serde_json::to_vec(&v).expect("json"))
        }),
        ("layers is an object", |fx| {
            let mut v: serde_json::Value = serde_json::from_slice(&fx.fresh_manifest("lobj")).expect("json");
            v["layers"] = json!({});
            (OCI_MANIFEST.into(), serde_json::to_vec(&v).expect("json"))
        }),
        ("config digest malformed", |fx| {
            let mut c = fx.img.config.clone();
            c.digest = "sha256:zz".into();
            (OCI_MANIFEST.into(), image_manifest(OCI_MANIFEST, &c, &fx.img.layers, json!({})))
        }),
        ("layer digest malformed", |fx| {
            let mut l = fx.img.layers[0].clone();
            l.digest = format!("sha256:{}", "A".repeat(64));
            (OCI_MANIFEST.into(), image_manifest(OCI_MANIFEST, &fx.img.config, &[l], json!({})))
        }),
        ("layer without digest", |fx| {
            let m = json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": fx.img.config.json(),
                "layers": [{"mediaType": OCI_LAYER, "size": 3}],
            });
            (OCI_MANIFEST.into(), serde_json::to_vec(&m).expect("json"))
        }),
        ("index without manifests", |_| {
            (
                OCI_INDEX.into(),
                serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX})).expect("json"),
            )
        }),
        ("index child digest malformed", |fx| {
            let mut d = fx.img.desc();
            d.digest = "md5:0123456789abcdef0123456789abcdef".into();
            (OCI_INDEX.into(), index_manifest(OCI_INDEX, &[d], json!({})))
        }),
        ("subject digest malformed", |fx| {
            let mut s = fx.img.desc();
            s.digest = "sha256:nothex".into();
            (
                OCI_MANIFEST.into(),
                image_manifest(OCI_MANIFEST, &fx.img.config, &fx.img.layers, json!({"subject": s.json()})),
            )
        }),
    ];
    let mut cases = Vec::new();
    for (what, body) in bodies {
        for (where_, repo) in [("", REPO), (" in a fresh repo", FRESH)] {
            cases.push(case(format!("{what}{where_}, by tag"), 400, MI, After::Nothing, move |fx| {
                let (ct, b) = body(fx);
                let d = sha256(&b);
                prep(put_manifest_req(manifest_path(repo, "new"), &ct, b))
                    .absent(manifest_path(repo, "new"))
                    .absent(manifest_path(repo, &d))
            }));
        }
        cases.push(case(format!("{what}, by digest"), 400, MI, After::Nothing, move |fx| {
            let (ct, b) = body(fx);
            let d = sha256(&b);
            prep(put_manifest_req(manifest_path(REPO, &d), &ct, b)).absent(manifest_path(REPO, &d))
        }));
        cases.push(case(format!("{what}, over the existing tag v1"), 400, MI, After::Nothing, move |fx| {
            let (ct, b) = body(fx);
            let d = sha256(&b);
            prep(put_manifest_req(manifest_path(REPO, "v1"), &ct, b)).absent(manifest_path(REPO, &d))
        }));
    }
    run_table(cases);
    // The fixture's tag still points at its image (checked by the tag-list snapshots too).
}

#[test]
fn oversized_manifests_are_413() {
    const TOO_BIG: &[&str] = &["SIZE_INVALID", "MANIFEST_INVALID"];
    fn big(fx: &Fx) -> Vec<u8> {
        let base = fx.fresh_manifest("");
        let pad = "p".repeat(4 * 1024 * 1024 + 1 - base.len());
        let m = fx.fresh_manifest(&pad);
        assert_eq!(m.len(), 4 * 1024 * 1024 + 1);
        m
    }
    let cases = vec![
        case("4 MiB + 1, Content-Length, Expect: 100-continue", 413, TOO_BIG, After::Nothing, |fx| {
            let m = big(fx);
            let d = sha256(&m);
            prep(put_manifest_req(manifest_path(REPO, "big"), OCI_MANIFEST, m))
                .mode(Mode::ExpectContinue)
                .absent(manifest_path(REPO, "big"))
                .absent(manifest_path(REPO, &d))
        }),
        case("4 MiB + 1, Content-Length", 413, TOO_BIG, After::Nothing, |fx| {
            let m = big(fx);
            let d = sha256(&m);
            prep(put_manifest_req(manifest_path(REPO, "big"), OCI_MANIFEST, m))
                .absent(manifest_path(REPO, "big"))
                .absent(manifest_path(REPO, &d))
        }),
        case("4 MiB + 1, chunked (no Content-Length)", 413, TOO_BIG, After::Nothing, |fx| {
            let m = big(fx);
            let d = sha256(&m);
            prep(
                put_manifest_req(manifest_path(REPO, "big"), OCI_MANIFEST, m)
                    .framing(Framing::Chunked(64 * 1024)),
            )
            .absent(manifest_path(REPO, "big"))
            .absent(manifest_path(REPO, &d))
        }),
        case(
            "4 MiB + 1 by digest, over tag v1's repo, in a fresh repo",
            413,
            TOO_BIG,
            After::Nothing,
            |fx| {
                let m = big(fx);
                let d = sha256(&m);
                prep(put_manifest_req(manifest_path(FRESH, &d), OCI_MANIFEST, m))
                    .mode(Mode::ExpectContinue)
                    .absent(manifest_path(FRESH, &d))
            },
        ),
        case("declared 1 GiB, Expect: 100-continue, no body sent", 413, TOO_BIG, After::Nothing, |_| {
            prep(
                RawReq::new("PUT", manifest_path(REPO, "huge"))
                    .header("Content-Type", OCI_MANIFEST)
                    .framing(Framing::Length((1u64 << 30).to_string())),
            )
            .mode(Mode::ExpectContinue)
            .absent(manifest_path(REPO, "huge"))
        }),
    ];
    run_table(cases);
}

// ---------------------------------------------------------------------------------
// Dangling references

#[test]
fn dangling_references_are_400_manifest_blob_unknown() {
    const MBU: &[&str] = &["MANIFEST_BLOB_UNKNOWN"];
    type Body = fn(&Fx) -> (String, Vec<u8>);
    let bodies: Vec<(&str, Body)> = vec![
        ("config never pushed", |fx| {
            let c = Desc::phantom(OCI_CONFIG, 1);
            (OCI_MANIFEST.into(), image_manifest(OCI_MANIFEST, &c, &fx.img.layers, json!({})))
        }),
        ("layer never pushed", |fx| {
            let l = Desc::phantom(OCI_LAYER, 2);
            (
                OCI_MANIFEST.into(),
                image_manifest(OCI_MANIFEST, &fx.img.config, &[fx.img.layers[0].clone(), l], json!({})),
            )
        }),
        ("config only in another repository", |fx| {
            let c = fx.other_img.config.clone();
            (OCI_MANIFEST.into(), image_manifest(OCI_MANIFEST, &c, &fx.img.layers, json!({})))
        }),
        ("layer only in another repository", |fx| {
            (
                OCI_MANIFEST.into(),
                image_manifest(OCI_MANIFEST, &fx.img.config, std::slice::from_ref(&fx.other_blob), json!({})),
            )
        }),
        ("Docker schema2, layer never pushed", |fx| {
            let mut c = fx.img.config.clone();
            c.media_type = DOCKER_CONFIG.into();
            let l = Desc::phantom(DOCKER_LAYER, 3);
            (DOCKER_MANIFEST.into(), image_manifest(DOCKER_MANIFEST, &c, &[l], json!({})))
        }),
        ("a manifest digest used as a layer", |fx| {
            let l = Desc {
                media_type: OCI_LAYER.into(),
                digest: fx.img.digest.clone(),
                size: fx.img.manifest.len(),
            };
            (OCI_MANIFEST.into(), image_manifest(OCI_MANIFEST, &fx.img.config, &[l], json!({})))
        }),
        ("with a subject, layer never pushed", |fx| {
            let l = Desc::phantom(OCI_LAYER, 4);
            (
                OCI_MANIFEST.into(),
                image_manifest(OCI_MANIFEST, &fx.img.config, &[l], json!({"subject": fx.img.desc().json()})),
            )
        }),
        ("OCI index, child never pushed", |_| {
            (OCI_INDEX.into(), index_manifest(OCI_INDEX, &[Desc::phantom(OCI_MANIFEST, 5)], json!({})))
        }),
        ("OCI index, child only in another repository", |fx| {
            (OCI_INDEX.into(), index_manifest(OCI_INDEX, &[fx.other_img.desc()], json!({})))
        }),
        ("OCI index, one good child and one missing", |fx| {
            (
                OCI_INDEX.into(),
                index_manifest(OCI_INDEX, &[fx.img.desc(), Desc::phantom(OCI_MANIFEST, 6)], json!({})),
            )
        }),
        ("OCI index, a blob digest as a child", |fx| {
            let c = Desc {
                media_type: OCI_MANIFEST.into(),
                digest: fx.img.config.digest.clone(),
                size: fx.img.config.size,
            };
            (OCI_INDEX.into(), index_manifest(OCI_INDEX, &[c], json!({})))
        }),
        ("OCI index with a subject, child missing", |fx| {
            (
                OCI_INDEX.into(),
                index_manifest(
                    OCI_INDEX,
                    &[Desc::phantom(OCI_MANIFEST, 7)],
                    json!({"subject": fx.img.desc().json()}),
                ),
            )
        }),
        ("Docker list, child never pushed", |_| {
            (DOCKER_LIST.into(), index_manifest(DOCKER_LIST, &[Desc::phantom(DOCKER_MANIFEST, 8)], json!({})))
        }),
    ];
    let mut cases = Vec::new();
    for (what, body) in bodies {
        cases.push(case(format!("{what}, by tag"), 400, MBU, After::Nothing, move |fx| {
            let (ct, b) = body(fx);
            let d = sha256(&b);
            prep(put_manifest_req(manifest_path(REPO, "dangling"), &ct, b))
                .absent(manifest_path(REPO, "dangling"))
                .absent(manifest_path(REPO, &d))
        }));
        cases.push(case(format!("{what}, by digest"), 400, MBU, After::Nothing, move |fx| {
            let (ct, b) = body(fx);
            let d = sha256(&b);
            prep(put_manifest_req(manifest_path(REPO, &d), &ct, b)).absent(manifest_path(REPO, &d))
        }));
        cases.push(case(format!("{what}, over the existing tag v1"), 400, MBU, After::Nothing, move |fx| {
            let (ct, b) = body(fx);
            let d = sha256(&b);
            prep(put_manifest_req(manifest_path(REPO, "v1"), &ct, b)).absent(manifest_path(REPO, &d))
        }));
    }
    // A fresh repository has none of the fixture's blobs or manifests.
    cases.push(case("fixture's image into a fresh repository", 400, MBU, After::Nothing, |fx| {
        prep(put_manifest_req(manifest_path(FRESH, "v1"), OCI_MANIFEST, fx.img.manifest.clone()))
            .absent(manifest_path(FRESH, "v1"))
            .absent(manifest_path(FRESH, &fx.img.digest))
    }));
    cases.push(case(
        "index of the fixture's image into a fresh repository",
        400,
        MBU,
        After::Nothing,
        |fx| {
            let idx = index_manifest(OCI_INDEX, &[fx.img.desc()], json!({}));
            let d = sha256(&idx);
            prep(put_manifest_req(manifest_path("fresh/two/deep", "v1"), OCI_INDEX, idx))
                .watch("fresh/two/deep")
                .absent(manifest_path("fresh/two/deep", "v1"))
                .absent(manifest_path("fresh/two/deep", &d))
        },
    ));
    run_table(cases);
}

// ---------------------------------------------------------------------------------
// Upload sessions: Content-Range, unknown and foreign sessions

#[test]
fn bad_chunks_and_unknown_sessions() {
    const BUI: &[&str] = &["BLOB_UPLOAD_INVALID"];
    const BUU: &[&str] = &["BLOB_UPLOAD_UNKNOWN"];
    let unknown = format!("/v2/{REPO}/blobs/uploads/{}", "0".repeat(32));
    let mut cases = Vec::new();

    // Out of order / repeated: 416, offset unchanged.
    for (what, range, body) in [
        ("gap after the current offset", "20-29", b"abcdefghij".as_slice()),
        ("chunk sent twice", "0-9", SESSION_BYTES),
        ("overlapping chunk", "5-14", b"abcdefghij".as_slice()),
        ("chunk ending at the current end", "9-9", b"x".as_slice()),
        ("far beyond the end", "1000000-1000009", b"abcdefghij".as_slice()),
    ] {
        cases.push(case(format!("PATCH {what} ({range})"), 416, BUI, After::SessionKept(10), move |fx| {
            let loc = fx.session(REPO);
            let mut all = SESSION_BYTES.to_vec();
            all.extend_from_slice(body);
            prep(RawReq::new("PATCH", loc.clone()).header("Content-Range", range).body(body.to_vec()))
                .session(&loc)
                .absent(blob_path(REPO, &sha256(&all)))
        }));
        cases.push(case(
            format!("PUT final chunk {what} ({range})"),
            416,
            BUI,
            After::SessionKept(10),
            move |fx| {
                let loc = fx.session(REPO);
                let mut all = SESSION_BYTES.to_vec();
                all.extend_from_slice(body);
                let d = sha256(&all);
                prep(
                    RawReq::new("PUT", with_query(&loc, &format!("digest={d}")))
                        .header("Content-Range", range)
                        .body(body.to_vec()),
                )
                .session(&loc)
                .absent(blob_path(REPO, &d))
            },
        ));
    }
    cases.push(case("PATCH first chunk not starting at 0", 416, BUI, After::SessionKept(0), |fx| {
        let loc = fx.empty_session(REPO);
        prep(RawReq::new("PATCH", loc.clone()).header("Content-Range", "1-10").body(b"abcdefghij".to_vec()))
            .session(&loc)
    }));

    // Malformed Content-Range: 400, offset unchanged.
    for cr in [
        "garbage",
        "",
        "10-",
        "-19",
        "a-b",
        "19-10",
        "10 - 19 - 20",
        "10-99999999999999999999999",
        "bytes */10",
        "0x0a-0x13",
    ] {
        cases.push(case(
            format!("PATCH Content-Range {cr:?}"),
            400,
            BUI,
            After::SessionKept(10),
            move |fx| {
                let loc = fx.session(REPO);
                prep(
                    RawReq::new("PATCH", loc.clone())
                        .header("Content-Range", cr)
                        .body(b"abcdefghij".to_vec()),
                )
                .session(&loc)
            },
        ));
    }
    cases.push(case(
        "PATCH Content-Range covering more than Content-Length",
        400,
        BUI,
        After::SessionKept(10),
        |fx| {
            let loc = fx.session(REPO);
            prep(
                RawReq::new("PATCH", loc.clone())
                    .header("Content-Range", "10-29")
                    .body(b"abcdefghij".to_vec()),
            )
            .session(&loc)
        },
    ));
    cases.push(case(
        "PATCH Content-Range covering less than Content-Length",
        400,
        BUI,
        After::SessionKept(10),
        |fx| {
            let loc = fx.session(REPO);
            prep(
                RawReq::new("PATCH", loc.clone())
                    .header("Content-Range", "10-12")
                    .body(b"abcdefghij".to_vec()),
            )
            .session(&loc)
        },
    ));
    // A chunked body (no Content-Length) that does not fill its Content-Range exactly:
    // the range cannot be checked up front, so the chunk must be refused once read and
    // the session left at its old offset (or ended), never answered with a Range that
    // disagrees with the request's Content-Range.
    for (what, body) in [("shorter", &b"abcde"[..]), ("longer", &b"abcdefghijklmno"[..])] {
        cases.push(case(
            format!("PATCH chunked body {what} than its Content-Range"),
            400,
            BUI,
            After::SessionEither,
            move |fx| {
                let loc = fx.session(REPO);
                prep(
                    RawReq::new("PATCH", loc.clone())
                        .header("Content-Range", "10-19")
                        .body(body.to_vec())
                        .framing(Framing::Chunked(4)),
                )
                .session(&loc)
            },
        ));
    }
    cases.push(case("PUT with a malformed Content-Range", 400, BUI, After::SessionEither, |fx| {
        let loc = fx.session(REPO);
        let mut all = SESSION_BYTES.to_vec();
        all.extend_from_slice(b"abc");
        let d = sha256(&all);
        prep(
            RawReq::new("PUT", with_query(&loc, &format!("digest={d}")))
                .header("Content-Range", "garbage")
                .body(b"abc".to_vec()),
        )
        .session(&loc)
        .absent(blob_path(REPO, &d))
    }));

    // Unknown sessions: 404 on every verb.
    let u = unknown.clone();
    cases.push(case("PATCH unknown session", 404, BUU, After::Nothing, move |_| {
        prep(RawReq::new("PATCH", u.clone()).header("Content-Range", "0-2").body(b"abc".to_vec()))
            .absent(blob_path(REPO, &sha256(b"abc")))
    }));
    let u = unknown.clone();
    cases.push(case("PATCH unknown session, no Content-Range", 404, BUU, After::Nothing, move |_| {
        prep(RawReq::new("PATCH", u.clone()).body(b"abc".to_vec()))
    }));
    let u = unknown.clone();
    cases.push(case("PUT unknown session with the whole blob", 404, BUU, After::Nothing, move |_| {
        let d = sha256(b"abc");
        prep(RawReq::new("PUT", format!("{u}?digest={d}")).body(b"abc".to_vec())).absent(blob_path(REPO, &d))
    }));
    let u = unknown.clone();
    cases.push(case("GET unknown session", 404, BUU, After::Nothing, move |_| {
        prep(RawReq::new("GET", u.clone()))
    }));
    let u = unknown.clone();
    cases.push(case("DELETE unknown session", 404, BUU, After::Nothing, move |_| {
        prep(RawReq::new("DELETE", u.clone()))
    }));
    let ids = [
        "..%2f..%2fmeta.redb".to_owned(),
        "%2e%2e".into(),
        "not-a-real-id".into(),
        "a.b".into(),
        "x".repeat(65),
    ];
    for id in ids {
        let i2 = id.clone();
        cases.push(case(format!("PATCH session id {id:?}"), 404, BUU, After::Nothing, move |_| {
            prep(RawReq::new("PATCH", format!("/v2/{REPO}/blobs/uploads/{i2}")).body(b"abc".to_vec()))
        }));
        cases.push(case(format!("PUT session id {id:?}"), 404, BUU, After::Nothing, move |_| {
            let d = sha256(b"abc");
            prep(
                RawReq::new("PUT", format!("/v2/{REPO}/blobs/uploads/{id}?digest={d}")).body(b"abc".to_vec()),
            )
            .absent(blob_path(REPO, &d))
        }));
    }
    // Finished and cancelled sessions are unknown.
    cases.push(case("PATCH a finished session", 404, BUU, After::Nothing, |fx| {
        let api = fx.api();
        let loc = fx.session(FRESH);
        api.finish(&loc, &sha256(SESSION_BYTES), None).expect_status(201);
        api.delete(&blob_path(FRESH, &sha256(SESSION_BYTES))).expect_status(202);
        prep(RawReq::new("PATCH", loc.clone()).header("Content-Range", "10-12").body(b"abc".to_vec()))
            .absent(blob_path(FRESH, &sha256(SESSION_BYTES)))
    }));
    cases.push(case("PUT a cancelled session", 404, BUU, After::Nothing, |fx| {
        let api = fx.api();
        let loc = fx.session(REPO);
        api.delete(&loc).expect_status(204);
        let d = sha256(SESSION_BYTES);
        prep(RawReq::new("PUT", with_query(&loc, &format!("digest={d}")))).absent(blob_path(REPO, &d))
    }));
    // Another repository's session.
    for (verb, query) in [("GET", ""), ("PATCH", ""), ("PUT", "digest"), ("DELETE", "")] {
        cases.push(case(
            format!("{verb} a session through another repository"),
            404,
            BUU,
            After::SessionKept(10),
            move |fx| {
                let loc = fx.session(REPO);
                let foreign = loc.replacen(&format!("/v2/{REPO}/"), &format!("/v2/{OTHER}/"), 1);
                let d = sha256(SESSION_BYTES);
                let path =
                    if query.is_empty() { foreign } else { with_query(&foreign, &format!("digest={d}")) };
                let mut r = RawReq::new(verb, path);
                if verb == "PATCH" {
                    r = r.header("Content-Range", "10-12").body(b"abc".to_vec());
                }
                prep(r).session(&loc).absent(blob_path(OTHER, &d)).absent(blob_path(REPO, &d))
            },
        ));
    }
    run_table(cases);
}

// ---------------------------------------------------------------------------------
// Unknown content

#[test]
fn unknown_content_is_404() {
    const MU: &[&str] = &["MANIFEST_UNKNOWN"];
    const BU: &[&str] = &["BLOB_UNKNOWN"];
    let nowhere = sha256(b"nowhere");
    let mut cases = Vec::new();
    for m in ["GET", "DELETE"] {
        cases.push(case(format!("{m} manifest by unknown tag"), 404, MU, After::Nothing, move |_| {
            prep(RawReq::new(m, manifest_path(REPO, "nope")))
        }));
        let n = nowhere.clone();
        cases.push(case(format!("{m} manifest by unknown digest"), 404, MU, After::Nothing, move |_| {
            prep(RawReq::new(m, manifest_path(REPO, &n)))
        }));
        cases.push(case(format!("{m} manifest of another repository"), 404, MU, After::Nothing, move |fx| {
            prep(RawReq::new(m, manifest_path(REPO, &fx.other_img.digest)))
        }));
        let n = nowhere.clone();
        cases.push(case(format!("{m} unknown blob"), 404, BU, After::Nothing, move |_| {
            prep(RawReq::new(m, blob_path(REPO, &n)))
        }));
        cases.push(case(format!("{m} blob of another repository"), 404, BU, After::Nothing, move |fx| {
            prep(RawReq::new(m, blob_path(REPO, &fx.other_blob.digest)))
        }));
        cases.push(case(format!("{m} manifest digest as a blob"), 404, BU, After::Nothing, move |fx| {
            prep(RawReq::new(m, blob_path(REPO, &fx.img.digest)))
        }));
    }
    cases.push(case("HEAD manifest by unknown tag", 404, &[], After::Nothing, |_| {
        prep(RawReq::new("HEAD", manifest_path(REPO, "nope")))
    }));
    cases.push(case("HEAD blob of another repository", 404, &[], After::Nothing, |fx| {
        prep(RawReq::new("HEAD", blob_path(REPO, &fx.other_blob.digest)))
    }));
    cases.push(case("tags list of an unknown repository", 404, &["NAME_UNKNOWN"], After::Nothing, |_| {
        prep(RawReq::new("GET", format!("/v2/{FRESH}/tags/list")))
    }));
    run_table(cases);
}

// ---------------------------------------------------------------------------------
// Wrong Content-Length: the client declares more than it sends, then goes away.

/// Builds a truncated request, and the session it uses if any.
type Try<'a> = Box<dyn Fn() -> (RawReq, Option<String>) + 'a>;

#[test]
fn truncated_bodies_store_nothing() {
    let fx = Fx::new();
    let api = fx.api();
    let data = bytes_of(20_000, 77);
    let d = sha256(&data);
    let tries: Vec<(&str, Try)> = vec![
        (
            "monolithic POST",
            Box::new(|| {
                (
                    RawReq::new("POST", format!("/v2/{REPO}/blobs/uploads/?digest={d}"))
                        .body(data[..8000].to_vec())
                        .framing(Framing::Length("20000".into())),
                    None,
                )
            }),
        ),
        (
            "monolithic POST with the digest of the bytes actually sent",
            Box::new(|| {
                (
                    RawReq::new(
                        "POST",
                        format!("/v2/{REPO}/blobs/uploads/?digest={}", sha256(&data[..8000])),
                    )
                    .body(data[..8000].to_vec())
                    .framing(Framing::Length("20000".into())),
                    None,
                )
            }),
        ),
        (
            "closing PUT",
            Box::new(|| {
                let loc = fx.session(REPO);
                let mut all = SESSION_BYTES.to_vec();
                all.extend_from_slice(&data);
                (
                    RawReq::new("PUT", with_query(&loc, &format!("digest={}", sha256(&all))))
                        .body(data[..5000].to_vec())
                        .framing(Framing::Length("20000".into())),
                    Some(loc),
                )
            }),
        ),
        (
            "closing PUT with the digest of the bytes actually sent",
            Box::new(|| {
                let loc = fx.session(REPO);
                let mut sent = SESSION_BYTES.to_vec();
                sent.extend_from_slice(&data[..5000]);
                (
                    RawReq::new("PUT", with_query(&loc, &format!("digest={}", sha256(&sent))))
                        .body(data[..5000].to_vec())
                        .framing(Framing::Length("20000".into())),
                    Some(loc),
                )
            }),
        ),
        (
            "manifest PUT",
            Box::new(|| {
                let m = fx.fresh_manifest("truncated");
                let n = m.len();
                (
                    put_manifest_req(manifest_path(REPO, "trunc"), OCI_MANIFEST, m[..n / 2].to_vec())
                        .framing(Framing::Length(n.to_string())),
                    None,
                )
            }),
        ),
    ];
    let mut failed = Vec::new();
    for (what, build) in &tries {
        let (req, session) = build();
        let before = fx.snapshot(&[]);
        let r = raw_truncated(&fx.w, &req);
        let res = catch_unwind(AssertUnwindSafe(|| {
            if let Some(r) = &r {
                assert!((400..500).contains(&r.status), "a truncated request was answered {}", r.describe());
                if !r.body.is_empty() {
                    r.code();
                }
            }
            // The server has seen the EOF (it answered or closed); now nothing is stored.
            let after = fx.snapshot(&[]);
            assert_eq!(after.blob_files, before.blob_files, "a blob file was stored");
            assert_eq!(after.catalog, before.catalog);
            assert_eq!(after.tags, before.tags);
            for p in
                [blob_path(REPO, &d), blob_path(REPO, &sha256(&data[..8000])), manifest_path(REPO, "trunc")]
            {
                assert_eq!(api.head(&p).status, 404, "{p} exists");
            }
            if let Some(loc) = &session {
                // Still open or gone — but never committed, and cancellable.
                let s = api.get(loc);
                assert!(s.status == 204 || s.status == 404, "{}", s.describe());
            }
        }));
        if let Some(loc) = &session {
            let _ = api.delete(loc);
        }
        if let Err(e) = res {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            failed.push(format!("[{what}] {msg}"));
        }
    }
    assert_eq!(fx.w.staging_entries(), 0, "staging left behind after truncated requests");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
