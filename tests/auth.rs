//! Authentication and authorization over real HTTP and with real clients: the server
//! binary with an `[auth]` section, an htpasswd file written by Apache's own `htpasswd
//! -B` (apache2-utils), raw requests for every verb per principal (anonymous, users the
//! rules treat differently, wrong passwords, malformed headers), and podman/skopeo
//! logging in, pushing and pulling.
//!
//! Every refusal is checked for its exact status, OCI code and `WWW-Authenticate` header,
//! and for leaving nothing behind (no blob file, no staging, no tag, no link), asked
//! afterwards as a user who may see everything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::clients;
use wharfie_testkit::common;
use wharfie_testkit::oci;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use clients::{require, Clients};
use common::{bytes_of, htpasswd, sha256, Wharfie};
use oci::{image_manifest, raw, strings, Api, Desc, RawReq, Resp, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};

const CHALLENGE: &str = "Basic realm=\"wharfie\"";

const ADMIN: (&str, &str) = ("admin", "admin-pw");
const ALICE: (&str, &str) = ("alice", "alice-pw");
const BOB: (&str, &str) = ("bob", "b0b:with colon");

// ---------------------------------------------------------------------------------
// Harness

/// A server with `[auth]` = `auth_toml` (the htpasswd line is added), and its files.
struct Server {
    w: Wharfie,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(auth_toml: &str, users: &[(&str, &str)]) -> Server {
        Self::start_with(auth_toml, "", users)
    }

    /// With more configuration (top-level tables such as `[[upstreams]]`) after `[auth]`.
    fn start_with(auth_toml: &str, more_toml: &str, users: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("htpasswd");
        htpasswd(&pw, users);
        let cfg = dir.path().join("wharfie.toml");
        let text = format!("[auth]\nhtpasswd = \"{}\"\n{auth_toml}\n{more_toml}", pw.display());
        std::fs::write(&cfg, text).expect("config");
        let w = Wharfie::start_in(&dir.path().join("data"), &["--config", &cfg.display().to_string()]);
        Server { w, dir }
    }

    fn api(&self) -> Api<'_> {
        Api::new(&self.w)
    }
}

/// Who sends a request.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// No `Authorization` header.
    Anonymous,
    /// `Basic` user:password.
    User(&'static str, &'static str),
    /// This `Authorization` value, verbatim.
    Header(&'static str),
}

impl Who {
    fn name(self) -> String {
        match self {
            Who::Anonymous => "anonymous".into(),
            Who::User(u, p) => format!("{u}:{p}"),
            Who::Header(h) => format!("Authorization: {h}"),
        }
    }
}

fn basic(u: &str, p: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
}

fn send(api: &Api, who: Who, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> Resp {
    let mut rb = api.req(method, path);
    match who {
        Who::Anonymous => {}
        Who::User(u, p) => rb = rb.header("Authorization", basic(u, p)),
        Who::Header(h) => rb = rb.header("Authorization", h),
    }
    if let Some((ct, b)) = body {
        rb = rb.header("Content-Type", ct).body(b);
    }
    api.send(rb)
}

const AS_ADMIN: Who = Who::User(ADMIN.0, ADMIN.1);

/// An image podman can unpack: one gzipped tar layer, an OCI config whose diff_ids match.
struct Image {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(seed: u64) -> Image {
        let mut tar = tar::Builder::new(Vec::new());
        let data = bytes_of(3000, seed);
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, format!("seed-{seed}.bin"), data.as_slice()).expect("tar");
        let tar = tar.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        let layer = gz.finish().expect("gzip");
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"seed": seed.to_string()}},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
        }))
        .expect("config");
        let manifest = image_manifest(
            OCI_MANIFEST,
            &Desc::new(OCI_CONFIG, &config),
            &[Desc::new(OCI_LAYER, &layer)],
            json!({}),
        );
        Image { config, layer, manifest }
    }

    fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    fn layer_digest(&self) -> String {
        sha256(&self.layer)
    }

    fn config_digest(&self) -> String {
        sha256(&self.config)
    }
}

fn push_blob(api: &Api, who: Who, repo: &str, data: &[u8]) -> Resp {
    let d = sha256(data);
    send(
        api,
        who,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        Some(("application/octet-stream", data.to_vec())),
    )
}

/// Push `img` to `repo:tag` as `who`; every step must answer 201.
fn push_image(api: &Api, who: Who, repo: &str, tag: &str, img: &Image) {
    for b in [&img.config, &img.layer] {
        let r = push_blob(api, who, repo, b);
        assert_eq!(r.status, 201, "push blob to {repo}: {}", r.describe());
    }
    let r = send(
        api,
        who,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        Some((OCI_MANIFEST, img.manifest.clone())),
    );
    assert_eq!(r.status, 201, "push {repo}:{tag}: {}", r.describe());
}

fn tags_as_admin(api: &Api, repo: &str) -> Vec<String> {
    let r = send(api, AS_ADMIN, "GET", &format!("/v2/{repo}/tags/list"), None);
    match r.status {
        200 => strings(&r.json()["tags"]),
        404 => vec![],
        _ => panic!("tags list {repo} as admin: {}", r.describe()),
    }
}

fn blob_status_as_admin(api: &Api, repo: &str, digest: &str) -> u16 {
    send(api, AS_ADMIN, "HEAD", &format!("/v2/{repo}/blobs/{digest}"), None).status
}

/// What a request must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// This success status.
    Ok(u16),
    /// 401 `UNAUTHORIZED` with the challenge.
    Unauthorized,
    /// 403 `DENIED`, no challenge.
    Denied,
}

/// Check status, OCI code and `WWW-Authenticate`; `what` names the case for messages.
fn check(r: &Resp, want: Want, head: bool, what: &str) {
    match want {
        Want::Ok(s) => {
            assert_eq!(r.status, s, "{what}: {}", r.describe());
            assert_eq!(r.h("WWW-Authenticate"), None, "{what}: a success carries no challenge");
        }
        Want::Unauthorized => {
            assert_eq!(r.status, 401, "{what}: {}", r.describe());
            assert_eq!(r.h("WWW-Authenticate"), Some(CHALLENGE), "{what}: {}", r.describe());
            if !head {
                assert_eq!(r.code(), "UNAUTHORIZED", "{what}: {}", r.describe());
            }
        }
        Want::Denied => {
            assert_eq!(r.status, 403, "{what}: {}", r.describe());
            assert_eq!(r.h("WWW-Authenticate"), None, "{what}: 403 must not invite another login");
            if !head {
                assert_eq!(r.code(), "DENIED", "{what}: {}", r.describe());
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// anonymous = "pull": the table

const RULES_PULL: &str = r#"anonymous = "pull"

[[auth.rules]]
repos = "team/**"
users = ["alice"]
access = ["push", "delete"]

[[auth.rules]]
repos = "**"
users = ["admin"]
access = ["push", "delete"]
"#;

/// The principals of the table and how the rules treat them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Anonymous,
    /// push + delete on team/**
    Alice,
    /// no rule: pulls (anonymous pull), nothing else
    Bob,
    /// bad credentials or a malformed header: 401 on every /v2 request
    Bad,
}

fn principals() -> Vec<(Who, Kind)> {
    vec![
        (Who::Anonymous, Kind::Anonymous),
        // containers/image's "no credentials" after a Basic challenge.
        (Who::Header("Basic Og=="), Kind::Anonymous),
        (Who::User(ALICE.0, ALICE.1), Kind::Alice),
        (Who::User(BOB.0, BOB.1), Kind::Bob),
        (Who::User(ALICE.0, "wrong"), Kind::Bad),
        (Who::User(ALICE.0, ""), Kind::Bad),
        (Who::User("mallory", "x"), Kind::Bad),
        (Who::User("", "x"), Kind::Bad),
        (Who::Header("Basic !!!"), Kind::Bad),
        (Who::Header("Basic"), Kind::Bad),
        (Who::Header("Bearer abc.def.ghi"), Kind::Bad),
        (Who::Header("alice:alice-pw"), Kind::Bad),
    ]
}

/// Pull, push and delete by principal: (anonymous, alice, bob). Bad is always 401.
struct Row {
    what: &'static str,
    anonymous: Want,
    alice: Want,
    bob: Want,
}

impl Row {
    fn want(&self, k: Kind) -> Want {
        match k {
            Kind::Anonymous => self.anonymous,
            Kind::Alice => self.alice,
            Kind::Bob => self.bob,
            Kind::Bad => Want::Unauthorized,
        }
    }
}

const fn pull() -> (Want, Want, Want) {
    (Want::Ok(200), Want::Ok(200), Want::Ok(200))
}

#[test]
fn every_verb_by_principal_with_anonymous_pull() {
    let s = Server::start(RULES_PULL, &[ADMIN, ALICE, BOB]);
    let api = s.api();
    let img = Image::new(1);
    push_image(&api, AS_ADMIN, "team/app", "v1", &img);
    let other = Image::new(2);
    push_image(&api, AS_ADMIN, "other/src", "v1", &other);

    let row = |what, (anonymous, alice, bob): (Want, Want, Want)| Row { what, anonymous, alice, bob };
    let push = (Want::Unauthorized, Want::Ok(201), Want::Denied);
    for (i, (who, kind)) in principals().into_iter().enumerate() {
        let w = who.name();
        let files = (s.w.blob_files(), s.w.staging_entries());
        let nothing_stored = |what: &str| {
            assert_eq!(
                (s.w.blob_files(), s.w.staging_entries()),
                files,
                "{what} as {w}: refused, yet stored"
            );
        };

        // --- reads
        let reads: Vec<(Row, &str, String)> = vec![
            (row("GET /v2/", (Want::Unauthorized, Want::Ok(200), Want::Ok(200))), "GET", "/v2/".into()),
            (row("GET manifest", pull()), "GET", "/v2/team/app/manifests/v1".into()),
            (row("HEAD manifest", pull()), "HEAD", format!("/v2/team/app/manifests/{}", img.digest())),
            (row("GET blob", pull()), "GET", format!("/v2/team/app/blobs/{}", img.layer_digest())),
            (row("HEAD blob", pull()), "HEAD", format!("/v2/team/app/blobs/{}", img.config_digest())),
            (row("GET tags", pull()), "GET", "/v2/team/app/tags/list".into()),
            (row("GET referrers", pull()), "GET", format!("/v2/team/app/referrers/{}", img.digest())),
            (row("GET catalog", pull()), "GET", "/v2/_catalog".into()),
            (row("GET other repo", pull()), "GET", "/v2/other/src/manifests/v1".into()),
        ];
        for (r, method, path) in &reads {
            let got = send(&api, who, method, path, None);
            check(&got, r.want(kind), *method == "HEAD", &format!("{} as {w}", r.what));
            if r.want(kind) == Want::Ok(200) && r.what == "GET blob" {
                assert_eq!(got.body, img.layer, "blob bytes as {w}");
            }
        }
        nothing_stored("reads");

        // --- open endpoints never look at credentials
        for path in ["/healthz", "/readyz", "/metrics"] {
            check(&send(&api, who, "GET", path, None), Want::Ok(200), false, &format!("GET {path} as {w}"));
        }

        // --- upload session
        let r = row("POST upload session", (Want::Unauthorized, Want::Ok(202), Want::Denied));
        let got = send(&api, who, "POST", "/v2/team/app/blobs/uploads/", None);
        check(&got, r.want(kind), false, &format!("{} as {w}", r.what));
        if kind == Kind::Alice {
            let loc = got.hdr("Location").to_owned();
            let del = send(&api, who, "DELETE", &loc, None);
            check(&del, Want::Ok(204), false, &format!("cancel own session as {w}"));
        } else {
            nothing_stored(r.what);
        }

        // --- monolithic blob push
        let data = bytes_of(500, 1000 + i as u64);
        let got = push_blob(&api, who, "team/app", &data);
        check(&got, row("", push).want(kind), false, &format!("POST monolithic as {w}"));
        let stored = blob_status_as_admin(&api, "team/app", &sha256(&data));
        assert_eq!(stored == 200, got.status == 201, "monolithic as {w}: HEAD as admin says {stored}");
        if got.status != 201 {
            nothing_stored("POST monolithic");
        }

        // --- PATCH into a session someone else may open (admin)
        let opened = send(&api, AS_ADMIN, "POST", "/v2/team/app/blobs/uploads/", None);
        assert_eq!(opened.status, 202, "{}", opened.describe());
        let loc = opened.hdr("Location").to_owned();
        let chunk = bytes_of(10, 2000 + i as u64);
        let mut rb =
            api.req("PATCH", &loc).header("Content-Type", "application/octet-stream").body(chunk.clone());
        rb = match who {
            Who::Anonymous => rb,
            Who::User(u, p) => rb.header("Authorization", basic(u, p)),
            Who::Header(h) => rb.header("Authorization", h),
        };
        let got = api.send(rb);
        check(
            &got,
            row("", (Want::Unauthorized, Want::Ok(202), Want::Denied)).want(kind),
            false,
            &format!("PATCH as {w}"),
        );
        let status = send(&api, AS_ADMIN, "GET", &loc, None);
        assert_eq!(status.status, 204, "{}", status.describe());
        let want_range = if got.status == 202 { "0-9" } else { "0-0" };
        assert_eq!(status.h("Range"), Some(want_range), "PATCH as {w}: the session holds what was accepted");
        let st = send(&api, who, "GET", &loc, None);
        check(
            &st,
            row("", (Want::Unauthorized, Want::Ok(204), Want::Denied)).want(kind),
            false,
            &format!("GET session as {w}"),
        );
        let got = send(&api, who, "PUT", &format!("{loc}?digest={}", sha256(&chunk)), None);
        check(&got, row("", push).want(kind), false, &format!("PUT to finish the session as {w}"));
        assert_eq!(
            blob_status_as_admin(&api, "team/app", &sha256(&chunk)) == 200,
            got.status == 201,
            "PUT session as {w}"
        );
        // Still open (204) unless the PUT finished it.
        let cancel = send(&api, AS_ADMIN, "DELETE", &loc, None);
        assert_eq!(cancel.status, if got.status == 201 { 404 } else { 204 }, "{}", cancel.describe());

        // --- manifest PUT
        let tag = format!("p-{i}");
        let got = send(
            &api,
            who,
            "PUT",
            &format!("/v2/team/app/manifests/{tag}"),
            Some((OCI_MANIFEST, img.manifest.clone())),
        );
        check(&got, row("", push).want(kind), false, &format!("PUT manifest as {w}"));
        assert_eq!(tags_as_admin(&api, "team/app").contains(&tag), got.status == 201, "PUT manifest as {w}");

        // --- push outside the user's rules: only admin may
        let got = push_blob(&api, who, "other/dst", &data);
        check(
            &got,
            row("", (Want::Unauthorized, Want::Denied, Want::Denied)).want(kind),
            false,
            &format!("push to other/dst as {w}"),
        );
        assert_eq!(blob_status_as_admin(&api, "other/dst", &sha256(&data)), 404, "as {w}");

        // --- cross-repository mount from a repository everyone may pull
        let got = send(
            &api,
            who,
            "POST",
            &format!("/v2/team/app/blobs/uploads/?mount={}&from=other/src", other.layer_digest()),
            None,
        );
        check(&got, row("", push).want(kind), false, &format!("mount as {w}"));
        if kind == Kind::Alice {
            // Unlink again so the next principal's refusal is visible.
            let del =
                send(&api, AS_ADMIN, "DELETE", &format!("/v2/team/app/blobs/{}", other.layer_digest()), None);
            assert_eq!(del.status, 202, "{}", del.describe());
        } else {
            assert_eq!(blob_status_as_admin(&api, "team/app", &other.layer_digest()), 404, "mount as {w}");
        }

        // --- deletes: of a tag and of a blob, each seeded for this principal
        let dtag = format!("d-{i}");
        let seeded = send(
            &api,
            AS_ADMIN,
            "PUT",
            &format!("/v2/team/app/manifests/{dtag}"),
            Some((OCI_MANIFEST, img.manifest.clone())),
        );
        assert_eq!(seeded.status, 201, "{}", seeded.describe());
        let del = (Want::Unauthorized, Want::Ok(202), Want::Denied);
        let got = send(&api, who, "DELETE", &format!("/v2/team/app/manifests/{dtag}"), None);
        check(&got, row("", del).want(kind), false, &format!("DELETE tag as {w}"));
        assert_eq!(tags_as_admin(&api, "team/app").contains(&dtag), got.status != 202, "DELETE tag as {w}");

        let blob = bytes_of(300, 3000 + i as u64);
        assert_eq!(push_blob(&api, AS_ADMIN, "team/app", &blob).status, 201);
        let got = send(&api, who, "DELETE", &format!("/v2/team/app/blobs/{}", sha256(&blob)), None);
        check(&got, row("", del).want(kind), false, &format!("DELETE blob as {w}"));
        let left = blob_status_as_admin(&api, "team/app", &sha256(&blob));
        assert_eq!(left == 200, got.status != 202, "DELETE blob as {w}: HEAD as admin says {left}");
    }
    // The image everyone read is untouched.
    assert!(tags_as_admin(&api, "team/app").contains(&"v1".to_owned()));
}

/// `Authorization` values that are not text at all are refused like any malformed one.
#[test]
fn non_ascii_authorization_is_401_and_cheap_requests_stay_open() {
    let s = Server::start(RULES_PULL, &[ADMIN, ALICE]);
    for path in ["/v2/", "/v2/team/app/tags/list"] {
        let r = raw(&s.w, &RawReq::new("GET", path).header("Authorization", "Basic é"));
        check(&r, Want::Unauthorized, false, &format!("GET {path} with a non-ASCII header"));
    }
    let r = raw(&s.w, &RawReq::new("GET", "/healthz").header("Authorization", "Basic é"));
    check(&r, Want::Ok(200), false, "healthz ignores credentials");
    // A bad path is still answered as a bad path (after authentication).
    let r = send(&s.api(), Who::User(ALICE.0, ALICE.1), "GET", "/v2/Bad/manifests/v1", None);
    r.expect_err(400, "NAME_INVALID");
    let r = send(&s.api(), Who::User(ALICE.0, "nope"), "GET", "/v2/Bad/manifests/v1", None);
    check(&r, Want::Unauthorized, false, "a wrong password is a 401 before routing");
}

// ---------------------------------------------------------------------------------
// anonymous = "none": rules decide, catalog filtering, mounts

const RULES_NONE: &str = r#"anonymous = "none"

[[auth.rules]]
repos = "team/**"
users = ["alice"]
access = ["push", "delete"]

[[auth.rules]]
repos = "private/**"
users = ["alice"]
access = ["pull"]

[[auth.rules]]
repos = "public/**"
users = ["anonymous", "*"]
access = ["pull"]

[[auth.rules]]
repos = "shared/**"
users = ["*"]
access = ["pull"]

[[auth.rules]]
repos = "bob/**"
users = ["bob"]
access = ["push"]

[[auth.rules]]
repos = "**"
users = ["admin"]
access = ["push", "delete"]
"#;

fn catalog(api: &Api, who: Who, query: &str) -> (Vec<String>, Option<String>) {
    let r = send(api, who, "GET", &format!("/v2/_catalog{query}"), None);
    assert_eq!(r.status, 200, "catalog as {}: {}", who.name(), r.describe());
    (strings(&r.json()["repositories"]), r.h("Link").map(str::to_owned))
}

#[test]
fn anonymous_none_rules_and_filtered_catalog() {
    let s = Server::start(RULES_NONE, &[ADMIN, ALICE, BOB]);
    let api = s.api();
    let repos = ["bob/own", "other/w", "private/x", "public/y", "shared/z", "team/app"];
    let imgs: Vec<Image> = (0..repos.len()).map(|i| Image::new(10 + i as u64)).collect();
    for (r, img) in repos.iter().zip(&imgs) {
        push_image(&api, AS_ADMIN, r, "v1", img);
    }
    let alice = Who::User(ALICE.0, ALICE.1);
    let bob = Who::User(BOB.0, BOB.1);

    // Anonymous: only public/**; base and catalog want credentials.
    for who in [Who::Anonymous, Who::Header("Basic Og==")] {
        let w = who.name();
        check(&send(&api, who, "GET", "/v2/", None), Want::Unauthorized, false, &format!("base as {w}"));
        check(
            &send(&api, who, "GET", "/v2/_catalog", None),
            Want::Unauthorized,
            false,
            &format!("catalog as {w}"),
        );
        check(&send(&api, who, "GET", "/v2/public/y/manifests/v1", None), Want::Ok(200), false, &w);
        for path in ["/v2/team/app/manifests/v1", "/v2/private/x/tags/list", "/v2/private/nope/tags/list"] {
            check(
                &send(&api, who, "GET", path, None),
                Want::Unauthorized,
                false,
                &format!("GET {path} as {w}"),
            );
        }
        let got = push_blob(&api, who, "public/y", b"anonymous bytes");
        check(&got, Want::Unauthorized, false, &format!("push to public/y as {w}"));
        assert_eq!(blob_status_as_admin(&api, "public/y", &sha256(b"anonymous bytes")), 404);
    }

    // The catalog lists what each caller may pull, and pages over that.
    let (all, _) = catalog(&api, AS_ADMIN, "");
    assert_eq!(all, repos);
    let (a, _) = catalog(&api, alice, "");
    assert_eq!(a, ["private/x", "public/y", "shared/z", "team/app"]);
    let (b, _) = catalog(&api, bob, "");
    assert_eq!(b, ["bob/own", "public/y", "shared/z"]);
    let (page1, link) = catalog(&api, alice, "?n=2");
    assert_eq!(page1, ["private/x", "public/y"]);
    let link = link.expect("a Link to the next page");
    assert!(link.contains("last=public%2Fy") && link.contains("n=2"), "{link}");
    let (page2, link) = catalog(&api, alice, "?n=2&last=public%2Fy");
    assert_eq!(page2, ["shared/z", "team/app"]);
    assert_eq!(link, None, "the last page of what alice may see has no Link");

    // Users outside a rule get 403, and never learn whether a repository exists.
    for path in ["/v2/team/app/manifests/v1", "/v2/private/x/tags/list", "/v2/private/nope/tags/list"] {
        check(&send(&api, bob, "GET", path, None), Want::Denied, false, &format!("GET {path} as bob"));
    }
    check(
        &send(&api, bob, "HEAD", &format!("/v2/private/x/blobs/{}", imgs[2].layer_digest()), None),
        Want::Denied,
        true,
        "HEAD as bob",
    );
    check(
        &send(&api, alice, "GET", "/v2/private/x/manifests/v1", None),
        Want::Ok(200),
        false,
        "alice pulls private",
    );
    let got = push_blob(&api, alice, "private/x", b"alice bytes");
    check(&got, Want::Denied, false, "alice may only pull private/x");
    assert_eq!(blob_status_as_admin(&api, "private/x", &sha256(b"alice bytes")), 404);
    check(
        &send(&api, alice, "DELETE", "/v2/private/x/manifests/v1", None),
        Want::Denied,
        false,
        "alice deletes private",
    );
    assert_eq!(tags_as_admin(&api, "private/x"), ["v1"]);
    // push implies pull: bob may read his own repository back.
    check(
        &send(&api, bob, "GET", "/v2/bob/own/manifests/v1", None),
        Want::Ok(200),
        false,
        "bob pulls bob/own",
    );
    // Delete is never implied.
    check(&send(&api, bob, "DELETE", "/v2/bob/own/manifests/v1", None), Want::Denied, false, "bob deletes");

    // Mounts: without pull on `from`, a plain upload session (nothing linked).
    let private_layer = imgs[2].layer_digest();
    let files = s.w.blob_files();
    let r = send(
        &api,
        bob,
        "POST",
        &format!("/v2/bob/own/blobs/uploads/?mount={private_layer}&from=private/x"),
        None,
    );
    check(&r, Want::Ok(202), false, "mount from private/x as bob");
    assert!(r.hdr("Location").contains("/v2/bob/own/blobs/uploads/"), "{}", r.describe());
    assert_eq!(
        blob_status_as_admin(&api, "bob/own", &private_layer),
        404,
        "bob mounted a blob he may not read"
    );
    // Automatic mount (no `from`) only considers repositories the caller may pull.
    let r = send(&api, bob, "POST", &format!("/v2/bob/own/blobs/uploads/?mount={private_layer}"), None);
    check(&r, Want::Ok(202), false, "automatic mount as bob");
    assert_eq!(blob_status_as_admin(&api, "bob/own", &private_layer), 404);
    assert_eq!(s.w.blob_files(), files);
    let shared_layer = imgs[4].layer_digest();
    let r = send(
        &api,
        bob,
        "POST",
        &format!("/v2/bob/own/blobs/uploads/?mount={shared_layer}&from=shared/z"),
        None,
    );
    check(&r, Want::Ok(201), false, "mount from shared/z as bob");
    assert_eq!(blob_status_as_admin(&api, "bob/own", &shared_layer), 200);
    let other_layer = imgs[1].layer_digest();
    let r = send(&api, AS_ADMIN, "POST", &format!("/v2/bob/own/blobs/uploads/?mount={other_layer}"), None);
    check(&r, Want::Ok(201), false, "automatic mount as admin");
}

// ---------------------------------------------------------------------------------
// Mirrors: pull-through namespaces are authorized like hosted repositories

#[test]
fn mirrored_namespaces_need_pull_and_stay_read_only() {
    // The upstream: a plain wharfie (auth off) holding one image.
    let up = Wharfie::start();
    let img = Image::new(99);
    push_image(&Api::new(&up), Who::Anonymous, "lib/tool", "v1", &img);
    let rules = r#"anonymous = "none"

[[auth.rules]]
repos = "up/**"
users = ["alice"]
access = ["pull"]

[[auth.rules]]
repos = "**"
users = ["admin"]
access = ["push", "delete"]
"#;
    let upstreams =
        format!("[[upstreams]]\nname = \"up\"\nurl = \"{}\"\ntimeout = \"10s\"\ndefault = true\n", up.base);
    let s = Server::start_with(rules, &upstreams, &[ADMIN, ALICE, BOB]);
    let api = s.api();
    let alice = Who::User(ALICE.0, ALICE.1);
    let bob = Who::User(BOB.0, BOB.1);
    let path = "/v2/up/lib/tool/manifests/v1";
    check(
        &send(&api, Who::Anonymous, "GET", path, None),
        Want::Unauthorized,
        false,
        "anonymous via the mirror",
    );
    check(&send(&api, bob, "GET", path, None), Want::Denied, false, "bob via the mirror");
    // containerd's ?ns= names the same repository, and is checked the same way.
    let ns = "/v2/lib/tool/manifests/v1?ns=up";
    check(&send(&api, bob, "GET", ns, None), Want::Denied, false, "bob via ?ns=up");
    let r = send(&api, alice, "GET", path, None);
    check(&r, Want::Ok(200), false, "alice via the mirror");
    assert_eq!(r.body, img.manifest);
    let r = send(&api, alice, "GET", &format!("/v2/up/lib/tool/blobs/{}", img.layer_digest()), None);
    check(&r, Want::Ok(200), false, "alice pulls a blob through");
    assert_eq!(r.body, img.layer);
    check(&send(&api, alice, "GET", ns, None), Want::Ok(200), false, "alice via ?ns=up");
    // A bare name under the default upstream reads a hosted repository first, then the
    // mirror: alice may pull the mirror but not the hosted `lib/tool`, so no.
    check(
        &send(&api, alice, "GET", "/v2/lib/tool/manifests/v1", None),
        Want::Denied,
        false,
        "alice, bare name",
    );
    // The mirror's namespace stays read-only, whoever asks.
    let r = push_blob(&api, AS_ADMIN, "up/lib/tool", b"into the mirror");
    r.expect_err(403, "DENIED");
    assert_eq!(blob_status_as_admin(&api, "up/lib/tool", &sha256(b"into the mirror")), 404);
}

// ---------------------------------------------------------------------------------
// Configuration and startup

fn wharfie(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharfie"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wharfie");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("stderr");
            return (st.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wharfie {args:?} did not exit within 60s (it should refuse to start)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_auth_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("htpasswd");
    htpasswd(&good, &[ALICE]);
    // An MD5 entry, as `htpasswd -m` writes it.
    let md5 = dir.path().join("htpasswd-md5");
    let out = Command::new(require("htpasswd", "apache2-utils"))
        .args(["-mbn", "old", "pw"])
        .output()
        .expect("htpasswd");
    std::fs::write(&md5, &out.stdout).expect("write");
    let missing = dir.path().join("nope");
    let cases: Vec<(String, &str)> = vec![
        (format!("[auth]\nhtpasswd = \"{}\"\n", missing.display()), "[auth] htpasswd"),
        (format!("[auth]\nhtpasswd = \"{}\"\n", md5.display()), "$apr1$"),
        (
            format!(
                "[auth]\nhtpasswd = \"{}\"\n[[auth.rules]]\nrepos = \"team//x\"\nusers = [\"alice\"]\naccess = [\"pull\"]\n",
                good.display()
            ),
            "rule 1 (repos = \"team//x\")",
        ),
        (format!("[auth]\nhtpasswd = \"{}\"\nanonymous = \"all\"\n", good.display()), "[auth] anonymous in "),
        ("[auth]\nanonymous = \"none\"\n".into(), "needs an htpasswd file"),
    ];
    let data = dir.path().join("data");
    for (i, (text, needle)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&cfg, text).expect("config");
        let cfg = cfg.display().to_string();
        let (code, err) = wharfie(&["config", "check", "--config", &cfg]);
        assert_eq!(code, Some(2), "config check of {text:?}: {err}");
        assert!(err.contains(needle), "config check of {text:?} should name {needle:?}: {err}");
        let (code, err) = wharfie(&[
            "serve",
            "--config",
            &cfg,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data.display().to_string(),
        ]);
        assert!(code.is_some_and(|c| c != 0), "serve with {text:?} must not start: {code:?} {err}");
        assert!(err.contains(needle), "serve with {text:?} should name {needle:?}: {err}");
    }
    // A relative htpasswd path is relative to the working directory.
    let cfg = dir.path().join("rel.toml");
    std::fs::write(&cfg, "[auth]\nhtpasswd = \"htpasswd\"\n").expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_wharfie"))
        .args(["config", "check", "--config", "rel.toml"])
        .current_dir(dir.path())
        .output()
        .expect("config check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("1 user(s)"), "{err}");
}

/// `kill -HUP` (systemctl reload) re-reads the htpasswd file.
#[test]
fn sighup_reloads_the_htpasswd_file() {
    let s = Server::start(RULES_PULL, &[ADMIN, ALICE]);
    let api = s.api();
    let carol = Who::User("carol", "carol-pw");
    check(&send(&api, carol, "GET", "/v2/", None), Want::Unauthorized, false, "carol before");
    check(
        &send(&api, Who::User(ALICE.0, ALICE.1), "GET", "/v2/", None),
        Want::Ok(200),
        false,
        "alice before",
    );
    htpasswd(&s.dir.path().join("htpasswd"), &[ADMIN, ("carol", "carol-pw")]);
    let pid = s.w.pid().expect("running");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        let r = send(&api, carol, "GET", "/v2/", None);
        if r.status == 200 {
            break;
        }
        n += 1;
        assert!(n < 3000 && Instant::now() < deadline, "carol never got in after SIGHUP: {}", r.describe());
        std::thread::sleep(Duration::from_millis(10));
    }
    // alice is gone, and her cached password with her.
    check(
        &send(&api, Who::User(ALICE.0, ALICE.1), "GET", "/v2/", None),
        Want::Unauthorized,
        false,
        "alice after",
    );
}

// ---------------------------------------------------------------------------------
// Real clients

/// `podman login` against the base; returns what it did.
fn podman_login(c: &Clients, addr: &str, user: &str, password: &str) -> clients::Out {
    c.podman(&["login", "--tls-verify=false", "--authfile", &c.authfile, "-u", user, "-p", password, addr])
}

fn authfile_has(c: &Clients, addr: &str) -> bool {
    let text = std::fs::read_to_string(&c.authfile).expect("authfile");
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("authfile is not JSON ({e}): {text}"));
    v["auths"].get(addr).is_some()
}

fn login_checks(addr: &str) {
    let c = Clients::new();
    let wrong = podman_login(&c, addr, ALICE.0, "wrong");
    assert!(!wrong.ok, "podman login with a wrong password succeeded:\n{}{}", wrong.stdout, wrong.stderr);
    assert!(
        wrong.stderr.contains("invalid username/password") || wrong.stderr.contains("unauthorized"),
        "{}",
        wrong.stderr
    );
    assert!(!authfile_has(&c, addr), "a failed login stored credentials");
    let unknown = podman_login(&c, addr, "mallory", ALICE.1);
    assert!(!unknown.ok, "podman login as an unknown user succeeded");
    let ok = podman_login(&c, addr, ALICE.0, ALICE.1);
    assert!(ok.ok, "podman login failed:\n{}{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("Login Succeeded"), "{}", ok.stdout);
    assert!(authfile_has(&c, addr), "podman login did not write the authfile");
}

#[test]
fn podman_login_skopeo_creds_and_anonymous_pull() {
    let s = Server::start(RULES_PULL, &[ADMIN, ALICE, BOB]);
    let api = s.api();
    let addr = s.w.addr.clone();
    let img = Image::new(42);
    push_image(&api, AS_ADMIN, "seed/img", "v1", &img);
    let docker = |r: &str| format!("docker://{addr}/{r}");

    // Login works with the right password and fails with a wrong one, although
    // anonymous pull is allowed.
    login_checks(&addr);

    let c = Clients::new();
    let copy = |creds: Option<&str>, dst: &str| {
        let mut args = vec!["--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false"];
        if let Some(cr) = creds {
            args.extend(["--dest-creds", cr]);
        }
        let (src, dst) = (docker("seed/img:v1"), docker(dst));
        args.extend([src.as_str(), dst.as_str()]);
        c.skopeo("copy", &args)
    };
    // skopeo push with credentials.
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    let out = copy(Some(&alice), "team/app:copied");
    assert!(out.ok, "skopeo copy --dest-creds failed:\n{}", out.stderr);
    let r = send(&api, Who::Anonymous, "GET", "/v2/team/app/manifests/copied", None);
    check(&r, Want::Ok(200), false, "the copied manifest");
    assert_eq!(r.body, img.manifest);
    // Without credentials: 401, and nothing lands.
    let out = copy(None, "team/anon:copied");
    assert!(!out.ok, "skopeo copy without credentials succeeded");
    assert!(
        out.stderr.contains("authentication required") || out.stderr.contains("unauthorized"),
        "{}",
        out.stderr
    );
    assert!(tags_as_admin(&api, "team/anon").is_empty());
    assert_eq!(blob_status_as_admin(&api, "team/anon", &img.layer_digest()), 404);
    // With credentials the rules do not allow: 403.
    let out = copy(Some(&format!("{}:{}", BOB.0, BOB.1)), "team/bob:copied");
    assert!(!out.ok, "skopeo copy as bob succeeded");
    assert!(out.stderr.contains("denied") || out.stderr.contains("403"), "{}", out.stderr);
    assert!(tags_as_admin(&api, "team/bob").is_empty());
    // With a wrong password: 401 even though the source is anonymous.
    let out = copy(Some(&format!("{}:nope", ALICE.0)), "team/app:wrong");
    assert!(!out.ok, "skopeo copy with a wrong password succeeded");
    assert!(!tags_as_admin(&api, "team/app").contains(&"wrong".to_owned()));

    // skopeo inspect: with and without credentials (anonymous pull).
    for creds in [Some(alice.as_str()), None] {
        let mut args = vec!["--tls-verify=false", "--raw"];
        if let Some(cr) = creds {
            args.extend(["--creds", cr]);
        }
        let target = docker("team/app:copied");
        args.push(&target);
        let out = c.skopeo("inspect", &args);
        assert!(out.ok, "skopeo inspect (creds {creds:?}) failed:\n{}", out.stderr);
        assert_eq!(out.stdout.trim().as_bytes(), img.manifest.as_slice());
    }

    // Anonymous podman pull.
    let name = format!("{addr}/team/app:copied");
    let out = c.podman(&["pull", "-q", "--tls-verify=false", &name]);
    assert!(out.ok, "anonymous podman pull failed:\n{}", out.stderr);
    let inspect = c.podman(&["image", "inspect", "--format", "{{.Digest}}", &name]);
    assert!(inspect.ok, "{}", inspect.stderr);
    assert_eq!(inspect.stdout.trim(), img.digest());
}

#[test]
fn anonymous_none_with_real_clients() {
    let s = Server::start(RULES_NONE, &[ADMIN, ALICE, BOB]);
    let api = s.api();
    let addr = s.w.addr.clone();
    let img = Image::new(77);
    push_image(&api, AS_ADMIN, "private/x", "v1", &img);
    login_checks(&addr);
    let c = Clients::new();
    let target = format!("docker://{addr}/private/x:v1");
    let inspect = |creds: Option<String>| {
        let mut args = vec!["--tls-verify=false".to_string(), "--raw".into()];
        if let Some(cr) = creds {
            args.extend(["--creds".into(), cr]);
        }
        args.push(target.clone());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        c.skopeo("inspect", &refs)
    };
    let out = inspect(Some(format!("{}:{}", ALICE.0, ALICE.1)));
    assert!(out.ok, "skopeo inspect --creds failed:\n{}", out.stderr);
    assert_eq!(out.stdout.trim().as_bytes(), img.manifest.as_slice());
    let out = inspect(None);
    assert!(!out.ok, "anonymous skopeo inspect of private/x succeeded");
    assert!(
        out.stderr.contains("unauthorized") || out.stderr.contains("authentication required"),
        "{}",
        out.stderr
    );
    let out = inspect(Some(format!("{}:{}", BOB.0, BOB.1)));
    assert!(!out.ok, "skopeo inspect as bob succeeded");
    assert!(out.stderr.contains("denied") || out.stderr.contains("403"), "{}", out.stderr);
}

/// `wharfie export/import --server URL --creds USER:PASSWORD` against a server with auth.
/// Import streams an archive into a scratch repository `wharfie-import/<id>` first (it
/// cannot know which image a blob belongs to before the whole archive is read), so an
/// importing user needs push and delete there too.
#[test]
fn wharfie_export_and_import_take_creds() {
    let rules = format!(
        "{RULES_NONE}\n[[auth.rules]]\nrepos = \"wharfie-import/**\"\nusers = [\"alice\"]\naccess = [\"push\", \"delete\"]\n"
    );
    let s = Server::start(&rules, &[ADMIN, ALICE, BOB]);
    let api = s.api();
    let img = Image::new(5);
    push_image(&api, AS_ADMIN, "team/app", "v1", &img);
    let out = s.dir.path().join("out.tar");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_wharfie")).args(args).output().expect("run wharfie");
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let alice = format!("{}:{}", ALICE.0, ALICE.1);
    let file = out.display().to_string();
    let (ok, err) = run(&["export", "--server", &s.w.base, "--creds", &alice, "-o", &file, "team/app:v1"]);
    assert!(ok, "export with credentials: {err}");
    let (ok, err) =
        run(&["export", "--server", &s.w.base, "--creds", "alice:nope", "-o", &file, "team/app:v1"]);
    assert!(!ok && err.contains("401"), "export with a wrong password: {err}");
    let (ok, err) =
        run(&["import", "--server", &s.w.base, "--creds", &alice, "--repo", "team/back:v2", &file]);
    assert!(ok, "import with credentials: {err}");
    assert_eq!(tags_as_admin(&api, "team/back"), ["v2"]);
    // Without push on the scratch namespace the import stops at once, saying where.
    let bob = format!("{}:{}", BOB.0, BOB.1);
    let (ok, err) = run(&["import", "--server", &s.w.base, "--creds", &bob, "--repo", "bob/back:v2", &file]);
    assert!(!ok && err.contains("403") && err.contains("wharfie-import/"), "import as bob: {err}");
    assert!(tags_as_admin(&api, "bob/back").is_empty());
    let r = send(&api, AS_ADMIN, "GET", "/v2/team/back/manifests/v2", None);
    check(&r, Want::Ok(200), false, "the imported manifest");
    assert_eq!(r.body, img.manifest);
}

// ---------------------------------------------------------------------------------
// Bearer tokens (`token = true`)

fn token(api: &Api, who: Who) -> Resp {
    token_for(api, who, &["repository:team/app:pull,push"])
}

/// `GET /token` with one `scope` parameter per entry.
fn token_for(api: &Api, who: Who, scopes: &[&str]) -> Resp {
    let mut q = String::from("/token?service=wharfie");
    for sc in scopes {
        q.push_str("&scope=");
        q.push_str(
            &sc.replace(':', "%3A")
                .replace(',', "%2C")
                .replace('/', "%2F")
                .replace('*', "%2A")
                .replace(' ', "%20"),
        );
    }
    send(api, who, "GET", &q, None)
}

fn token_of(r: &Resp) -> &'static str {
    assert_eq!(r.status, 200, "token: {}", r.describe());
    assert_eq!(r.h("Cache-Control"), Some("no-store"));
    let v = r.json();
    assert_eq!(v["token"], v["access_token"], "{}", r.describe());
    assert!(v["expires_in"].as_u64().is_some_and(|s| s > 0), "{}", r.describe());
    let t = v["token"].as_str().expect("token string").to_owned();
    // `Who::Header` takes a 'static value; a test leaks a few tokens.
    Box::leak(format!("Bearer {t}").into_boxed_str())
}

#[test]
fn bearer_tokens_over_raw_http_and_with_real_clients() {
    let s = Server::start(&format!("token = true\n{RULES_PULL}"), &[ADMIN, ALICE, BOB]);
    let api = s.api();
    let addr = s.w.addr.clone();
    let bearer = format!("Bearer realm=\"http://{addr}/token\",service=\"wharfie\"");
    let img = Image::new(7);
    push_image(&api, AS_ADMIN, "seed/img", "v1", &img);

    // The API challenges with Bearer, pointing at the token endpoint.
    let r = send(&api, Who::Anonymous, "GET", "/v2/", None);
    r.expect_err(401, "UNAUTHORIZED");
    assert_eq!(r.h("WWW-Authenticate"), Some(bearer.as_str()), "{}", r.describe());
    // The token endpoint wants Basic, and refuses wrong passwords.
    let r = token(&api, Who::User(ALICE.0, "wrong"));
    check(&r, Want::Unauthorized, false, "token with a wrong password");
    let r = token(&api, Who::Header("Basic !!!"));
    check(&r, Want::Unauthorized, false, "token with a malformed header");
    // A user's token is that user, under the same rules.
    let alice = Who::Header(token_of(&token(&api, Who::User(ALICE.0, ALICE.1))));
    let bob = Who::Header(token_of(&token(&api, Who::User(BOB.0, BOB.1))));
    check(&send(&api, alice, "GET", "/v2/", None), Want::Ok(200), false, "base with alice's token");
    check(
        &push_blob(&api, alice, "team/app", b"with a token"),
        Want::Ok(201),
        false,
        "push with alice's token",
    );
    let r = push_blob(&api, bob, "team/app", b"bob with a token");
    check(&r, Want::Denied, false, "push with bob's token");
    assert_eq!(blob_status_as_admin(&api, "team/app", &sha256(b"bob with a token")), 404);
    // An anonymous token is anonymous: pulls (anonymous = "pull"), no base, no push.
    let anon = Who::Header(token_of(&token_for(
        &api,
        Who::Anonymous,
        &["repository:seed/img:pull", "repository:team/app:pull,push"],
    )));
    check(
        &send(&api, anon, "GET", "/v2/seed/img/manifests/v1", None),
        Want::Ok(200),
        false,
        "pull, anonymous token",
    );
    let r = send(&api, anon, "GET", "/v2/", None);
    assert_eq!((r.status, r.h("WWW-Authenticate")), (401, Some(bearer.as_str())), "{}", r.describe());
    let r = push_blob(&api, anon, "team/app", b"anonymous token");
    assert_eq!((r.status, r.code()), (401, "UNAUTHORIZED".to_owned()), "{}", r.describe());
    // Forged or mangled tokens are 401 with the challenge, never anonymous.
    let t = token_of(&token(&api, Who::User(BOB.0, BOB.1)));
    let forged: &'static str = Box::leak(t.replacen("Ym9i", "YWxpY2U", 1).into_boxed_str()); // bob → alice
    let bearer_pull = format!("{bearer},scope=\"repository:seed/img:pull\"");
    for h in [forged, "Bearer ", "Bearer x.y.z", "Bearer 1.1.YWxpY2U.AAAA"] {
        let r = send(&api, Who::Header(h), "GET", "/v2/seed/img/manifests/v1", None);
        assert_eq!(
            (r.status, r.h("WWW-Authenticate")),
            (401, Some(bearer_pull.as_str())),
            "{h}: {}",
            r.describe()
        );
        assert_eq!(r.code(), "UNAUTHORIZED");
    }
    // Basic still works beside tokens.
    check(
        &send(&api, Who::User(ALICE.0, ALICE.1), "GET", "/v2/", None),
        Want::Ok(200),
        false,
        "Basic beside tokens",
    );

    // Real clients go through the token endpoint.
    login_checks(&addr);
    let c = Clients::new();
    let docker = |r: &str| format!("docker://{addr}/{r}");
    let copy = |creds: Option<&str>, dst: &str| {
        let mut args = vec!["--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false"];
        if let Some(cr) = creds {
            args.extend(["--dest-creds", cr]);
        }
        let (src, dst) = (docker("seed/img:v1"), docker(dst));
        args.extend([src.as_str(), dst.as_str()]);
        c.skopeo("copy", &args)
    };
    let out = copy(Some(&format!("{}:{}", ALICE.0, ALICE.1)), "team/app:copied");
    assert!(out.ok, "skopeo copy --dest-creds (tokens) failed:\n{}", out.stderr);
    assert_eq!(send(&api, AS_ADMIN, "GET", "/v2/team/app/manifests/copied", None).body, img.manifest);
    let out = copy(None, "team/anon:copied");
    assert!(!out.ok, "skopeo copy without credentials succeeded");
    assert!(tags_as_admin(&api, "team/anon").is_empty());
    let out = copy(Some(&format!("{}:nope", ALICE.0)), "team/app:wrong");
    assert!(!out.ok, "skopeo copy with a wrong password succeeded");
    let target = docker("team/app:copied");
    let out = c.skopeo("inspect", &["--tls-verify=false", "--raw", &target]);
    assert!(out.ok, "anonymous skopeo inspect (anonymous token) failed:\n{}", out.stderr);
    assert_eq!(out.stdout.trim().as_bytes(), img.manifest.as_slice());
    // wharfie's own registry client (import/export, mirrors) does the token dance too.
    let file = s.dir.path().join("out.tar").display().to_string();
    let alice_creds = format!("{}:{}", ALICE.0, ALICE.1);
    let o = Command::new(env!("CARGO_BIN_EXE_wharfie"))
        .args(["export", "--server", &s.w.base, "--creds", &alice_creds, "-o", &file, "team/app:copied"])
        .output()
        .expect("wharfie export");
    assert!(o.status.success(), "wharfie export via tokens: {}", String::from_utf8_lossy(&o.stderr));

    // A reload of the htpasswd file retires every token issued before it.
    let pid = s.w.pid().expect("running");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        let r = send(&api, alice, "GET", "/v2/", None);
        if r.status == 401 {
            assert_eq!(r.h("WWW-Authenticate"), Some(bearer.as_str()));
            break;
        }
        n += 1;
        assert!(
            n < 3000 && Instant::now() < deadline,
            "alice's old token still works after SIGHUP: {}",
            r.describe()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn token_scopes_are_enforced_and_challenged() {
    let s = Server::start(
        &format!("token = true\n{RULES_PULL}\n[[auth.rules]]\nrepos = \"a\"\nusers = [\"alice\"]\naccess = [\"push\"]\n"),
        &[ADMIN, ALICE, BOB],
    );
    let api = s.api();
    let addr = s.w.addr.clone();
    let bearer = format!("Bearer realm=\"http://{addr}/token\",service=\"wharfie\"");
    let img = Image::new(11);
    push_image(&api, AS_ADMIN, "a", "v1", &img);
    push_image(&api, AS_ADMIN, "b", "v1", &img);

    // A 401 names the scope the request needs, as Distribution does.
    let r = send(&api, Who::Anonymous, "POST", "/v2/a/blobs/uploads/", None);
    r.expect_err(401, "UNAUTHORIZED");
    let push_challenge = format!("{bearer},scope=\"repository:a:pull,push\"");
    assert_eq!(r.h("WWW-Authenticate"), Some(push_challenge.as_str()), "{}", r.describe());
    let r = send(&api, Who::Anonymous, "GET", "/v2/_catalog", None);
    assert_eq!(r.status, 200, "anonymous = pull lists the catalog without a token: {}", r.describe());

    // alice may push to a by the rules, but her token says a:pull only.
    let t = Who::Header(token_of(&token_for(&api, Who::User(ALICE.0, ALICE.1), &["repository:a:pull"])));
    let r = send(&api, t, "GET", "/v2/a/manifests/v1", None);
    assert_eq!((r.status, r.body.clone()), (200, img.manifest.clone()), "{}", r.describe());
    let data = b"pushed with a pull-only token";
    let r = push_blob(&api, t, "a", data);
    r.expect_err(401, "UNAUTHORIZED");
    assert_eq!(r.h("WWW-Authenticate"), Some(push_challenge.as_str()), "{}", r.describe());
    assert_eq!(blob_status_as_admin(&api, "a", &sha256(data)), 404, "nothing stored");
    let r = send(&api, t, "PUT", "/v2/a/manifests/v2", Some((OCI_MANIFEST, img.manifest.clone())));
    r.expect_err(401, "UNAUTHORIZED");
    assert_eq!(r.h("WWW-Authenticate"), Some(push_challenge.as_str()), "{}", r.describe());
    assert_eq!(tags_as_admin(&api, "a"), vec!["v1".to_string()], "no tag written");
    // ... and cannot pull b (never asked for), though the rules would let it.
    for path in ["/v2/b/manifests/v1", &format!("/v2/b/blobs/{}", img.layer_digest()), "/v2/b/tags/list"] {
        let r = send(&api, t, "GET", path, None);
        r.expect_err(401, "UNAUTHORIZED");
        let want = format!("{bearer},scope=\"repository:b:pull\"");
        assert_eq!(r.h("WWW-Authenticate"), Some(want.as_str()), "{path}: {}", r.describe());
        assert!(!r.body.windows(img.manifest.len()).any(|w| w == img.manifest.as_slice()), "{path}: leaked");
        assert!(
            !r.body.windows(16).any(|w| img.layer.windows(16).any(|l| l == w)),
            "{path}: leaked layer bytes"
        );
    }
    // Nor mount from b into a (a plain upload session, nothing mounted, as without pull on b).
    let t_push =
        Who::Header(token_of(&token_for(&api, Who::User(ALICE.0, ALICE.1), &["repository:a:pull,push"])));
    let r = send(
        &api,
        t_push,
        "POST",
        &format!("/v2/a/blobs/uploads/?mount={}&from=b", img.layer_digest()),
        None,
    );
    assert_eq!(r.status, 202, "mount without pull scope on b: {}", r.describe());
    // The catalog needs registry:catalog:*.
    let r = send(&api, t, "GET", "/v2/_catalog", None);
    r.expect_err(401, "UNAUTHORIZED");
    let want = format!("{bearer},scope=\"registry:catalog:*\"");
    assert_eq!(r.h("WWW-Authenticate"), Some(want.as_str()), "{}", r.describe());
    let tc = Who::Header(token_of(&token_for(&api, Who::User(ALICE.0, ALICE.1), &["registry:catalog:*"])));
    let r = send(&api, tc, "GET", "/v2/_catalog", None);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(strings(&r.json()["repositories"]), vec!["a".to_string(), "b".to_string()]);

    // The token grants the intersection: bob asking for a:pull,push gets a:pull only, so
    // his push is refused by the rules first (403, no challenge).
    let tb = Who::Header(token_of(&token_for(&api, Who::User(BOB.0, BOB.1), &["repository:a:pull,push"])));
    let r = push_blob(&api, tb, "a", data);
    check(&r, Want::Denied, false, "bob's push with a token he asked push for");
    assert_eq!(blob_status_as_admin(&api, "a", &sha256(data)), 404, "nothing stored");
    // With the right scope, alice's push goes through.
    let r = push_blob(&api, t_push, "a", data);
    assert_eq!(r.status, 201, "{}", r.describe());
    // Several scope parameters in one request, and space-separated ones in one parameter.
    let both =
        Who::Header(token_of(&token_for(&api, Who::Anonymous, &["repository:a:pull repository:b:pull"])));
    for repo in ["a", "b"] {
        let r = send(&api, both, "GET", &format!("/v2/{repo}/manifests/v1"), None);
        assert_eq!(r.status, 200, "{repo}: {}", r.describe());
    }
}
