//! The entitlement rule (DESIGN.md "Entitlement", `Registry::entitled`): knowing a
//! digest never grants access to content stored here for another repository.
//!
//! Against the real binary with a real upstream: Debian's `docker-registry` for the
//! Docker push flow (HEAD of known layers in a new repository is 404, then a mount),
//! and the counting fake upstream of tests/support/src/mirror for the leak (a private blob
//! or manifest asked for by digest through a mirrored name) and for what the rule
//! saves: layers shared between mirrored images cost no upstream request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;
use wharfie_testkit::oci;

use serde_json::json;

use common::{bytes_of, htpasswd, sha256, Wharfie};
use mirror::real;
use mirror::upstream::{FakeUpstream, Kind};
use oci::{index_manifest, Api, Desc, Resp, OCI_INDEX, OCI_MANIFEST};

/// One `[[upstreams]]` table named docker.io, the default upstream for bare names.
fn docker_io(url: &str) -> String {
    format!("[[upstreams]]\nname = \"docker.io\"\nurl = \"{url}\"\ntimeout = \"10s\"\ndefault = true\n")
}

fn mount(api: &Api, into: &str, digest: &str, from: &str) -> Resp {
    api.send(api.req("POST", &format!("/v2/{into}/blobs/uploads/?mount={digest}&from={from}")))
}

/// Does `haystack` contain `needle` anywhere?
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------
// The Docker push flow, with a real upstream as the default for bare names

#[test]
fn push_of_layers_stored_for_another_repo_sees_404_then_mounts() {
    let reg = real::ReferenceRegistry::start();
    let s = Wharfie::start_with_config(&docker_io(&format!("http://{}", reg.addr)));
    let api = Api::new(&s);
    // Bare names under a default upstream: pushes go to the hosted repositories.
    let img = api.push_image("a/app", Some("v1"), 7, 2);
    let blobs: Vec<Desc> = std::iter::once(img.config.clone()).chain(img.layers.iter().cloned()).collect();
    // Before: 200 for each HEAD ("cached for another repository"), so Docker skipped
    // the mount and the manifest PUT failed with MANIFEST_BLOB_UNKNOWN.
    for b in &blobs {
        let path = format!("/v2/b/app/blobs/{}", b.digest);
        api.head(&path).expect_head_err(404);
        api.get(&path).expect_err(404, "BLOB_UNKNOWN");
    }
    api.get(&format!("/v2/b/app/manifests/{}", img.digest)).expect_err(404, "MANIFEST_UNKNOWN");
    api.put_manifest("b/app", "v1", OCI_MANIFEST, &img.manifest).expect_err(400, "MANIFEST_BLOB_UNKNOWN");
    for b in &blobs {
        let r = mount(&api, "b/app", &b.digest, "a/app");
        r.expect_status(201);
        assert_eq!(r.hdr("Location"), format!("/v2/b/app/blobs/{}", b.digest));
        api.head(&format!("/v2/b/app/blobs/{}", b.digest)).expect_status(200);
    }
    api.push_manifest("b/app", "v1", OCI_MANIFEST, &img.manifest);
    let r = api.get("/v2/b/app/manifests/v1");
    r.expect_status(200);
    assert_eq!(r.body, img.manifest);
}

#[test]
fn layers_pulled_through_the_mirror_are_404_in_a_hosted_repo_until_mounted() {
    let sk = real::Skopeo::new();
    let reg = real::ReferenceRegistry::start();
    let src = real::Layout::create(&sk.dir("src"));
    let big = bytes_of(150_000, 41);
    let img = real::write_image(
        &src,
        "amd64",
        &[vec![("hello.txt", b"entitled\n".as_slice()), ("big.bin", big.as_slice())]],
        "entitlement",
    );
    src.set_refs(&[("v1", &img.manifest)]);
    sk.push(&src, "v1", &reg.addr, "library/hello:v1");
    let s = Wharfie::start_with_config(&docker_io(&format!("http://{}", reg.addr)));
    let api = Api::new(&s);
    // Pull through the mirror: by prefix for the manifest, by bare name for the blobs.
    let r = api.get("/v2/docker.io/library/hello/manifests/v1");
    r.expect_status(200);
    assert_eq!(r.body, img.manifest_bytes);
    let mut blobs = vec![(img.config.digest.clone(), img.config_bytes.clone())];
    blobs.extend(img.layers.iter().map(|l| (l.digest.clone(), src.blob(&l.digest))));
    for (d, bytes) in &blobs {
        let r = api.get(&format!("/v2/library/hello/blobs/{d}"));
        r.expect_status(200);
        assert_eq!(&r.body, bytes, "blob {d} through the mirror");
    }
    // Push the same image to hosted c/app: each HEAD is 404 (the upstream, asked for
    // c/app, has none of it), then mounts from the mirrored repository, named either
    // way, succeed.
    for (i, (d, _)) in blobs.iter().enumerate() {
        api.head(&format!("/v2/c/app/blobs/{d}")).expect_head_err(404);
        let from = if i % 2 == 0 { "library/hello" } else { "docker.io/library/hello" };
        mount(&api, "c/app", d, from).expect_status(201);
    }
    api.push_manifest("c/app", "v1", OCI_MANIFEST, &img.manifest_bytes);
    for (d, bytes) in &blobs {
        let r = api.get(&format!("/v2/c/app/blobs/{d}"));
        r.expect_status(200);
        assert_eq!(&r.body, bytes);
    }
}

// ---------------------------------------------------------------------------------
// The leak: private content asked for by digest through a mirrored name

const RULES: &str = r#"anonymous = "none"

[[auth.rules]]
repos = "docker.io/**"
users = ["anonymous", "*"]
access = ["pull"]

[[auth.rules]]
repos = "library/**"
users = ["anonymous", "*"]
access = ["pull"]

[[auth.rules]]
repos = "private/**"
users = ["alice"]
access = ["pull", "push"]
"#;

const ALICE: (&str, &str) = ("alice", "alice-pw");
const BOB: (&str, &str) = ("bob", "bob-pw");

/// The server with alice and bob in an htpasswd file, and the temp dir holding that file.
fn auth_server(upstream: &str) -> (Wharfie, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("htpasswd");
    htpasswd(&pw, &[ALICE, BOB]);
    let toml = format!("[auth]\nhtpasswd = \"{}\"\n{RULES}\n{}", pw.display(), docker_io(upstream));
    (Wharfie::start_with_config(&toml), dir)
}

fn as_user(api: &Api, who: Option<(&str, &str)>, method: &str, path: &str) -> Resp {
    let mut rb = api.req(method, path);
    if let Some((u, p)) = who {
        rb = rb.basic_auth(u, Some(p));
    }
    api.send(rb)
}

/// Push `data` as alice into `repo` (monolithic).
fn push_private_blob(api: &Api, repo: &str, data: &[u8]) -> String {
    let d = sha256(data);
    let r = api.send(
        api.req("POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"))
            .basic_auth(ALICE.0, Some(ALICE.1))
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec()),
    );
    r.expect_status(201);
    d
}

#[test]
fn private_content_is_never_served_through_a_mirrored_name_on_its_digest() {
    let up = FakeUpstream::start();
    let (s, _htpasswd) = auth_server(&up.url());
    let api = Api::new(&s);
    let secret = [b"PRIVATE-LAYER-".as_slice(), &bytes_of(5000, 3)].concat();
    let config = br#"{"architecture":"amd64","os":"linux","private":true}"#.to_vec();
    let d = push_private_blob(&api, "private/secret", &secret);
    let cd = push_private_blob(&api, "private/secret", &config);
    let manifest = oci::image_manifest(
        OCI_MANIFEST,
        &Desc::new(oci::OCI_CONFIG, &config),
        &[Desc::new(oci::OCI_LAYER, &secret)],
        json!({"annotations": {"org.example": "PRIVATE-MANIFEST"}}),
    );
    let r = api.send(
        api.req("PUT", "/v2/private/secret/manifests/v1")
            .basic_auth(ALICE.0, Some(ALICE.1))
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest.clone()),
    );
    r.expect_status(201);
    let md = sha256(&manifest);
    // Sanity: alice reads it; anonymous and bob may not even ask the private repo.
    assert_eq!(as_user(&api, Some(ALICE), "GET", &format!("/v2/private/secret/blobs/{d}")).body, secret);
    as_user(&api, None, "GET", &format!("/v2/private/secret/blobs/{d}")).expect_err(401, "UNAUTHORIZED");
    as_user(&api, Some(BOB), "GET", &format!("/v2/private/secret/blobs/{d}")).expect_err(403, "DENIED");

    let names = [
        ("prefix", "/v2/docker.io/library/anything", ""),
        ("ns", "/v2/library/anything", "?ns=docker.io"),
        ("bare name, default upstream", "/v2/library/anything", ""),
    ];
    let (mut blob_asks, mut manifest_asks) = (0, 0);
    for who in [None, Some(BOB)] {
        for (how, base, q) in names {
            let what = format!("{how} as {}", who.map_or("anonymous", |w| w.0));
            for digest in [&d, &cd] {
                // Before: 200 with the private bytes ("cached for another repository").
                let r = as_user(&api, who, "GET", &format!("{base}/blobs/{digest}{q}"));
                r.expect_err(404, "BLOB_UNKNOWN");
                assert!(
                    !contains(&r.body, &secret) && !contains(&r.body, &config),
                    "{what}: private bytes sent"
                );
                as_user(&api, who, "HEAD", &format!("{base}/blobs/{digest}{q}")).expect_head_err(404);
                blob_asks += 2;
            }
            let r = as_user(&api, who, "GET", &format!("{base}/manifests/{md}{q}"));
            r.expect_err(404, "MANIFEST_UNKNOWN");
            assert!(!contains(&r.body, b"PRIVATE-MANIFEST"), "{what}: private manifest sent");
            as_user(&api, who, "HEAD", &format!("{base}/manifests/{md}{q}")).expect_head_err(404);
            manifest_asks += 2;
        }
    }
    // The upstream was asked every time (nothing got linked on the way: a link would
    // have answered later requests locally), with a HEAD for the stored blobs; never
    // one GET of a blob, so nothing came from the upstream either.
    assert_eq!(up.count("HEAD", Kind::Blob), blob_asks, "{}", up.summary());
    assert_eq!(up.count("GET", Kind::Blob), 0, "{}", up.summary());
    assert_eq!(up.count("GET", Kind::Manifest), manifest_asks, "{}", up.summary());
    // Still private, still only alice's.
    let r = as_user(&api, Some(ALICE), "GET", &format!("/v2/private/secret/manifests/{md}"));
    r.expect_status(200);
    assert_eq!(r.body, manifest);

    // Rule (c): when the upstream confirms it has the digest in that repository, the
    // copy stored here is linked and served, without downloading it again.
    let public = [b"PUBLIC-LAYER-".as_slice(), &bytes_of(7000, 4)].concat();
    let pd = push_private_blob(&api, "private/other", &public);
    assert_eq!(up.add_blob(public.clone()), pd);
    let (heads, gets) = (up.count("HEAD", Kind::Blob), up.count("GET", Kind::Blob));
    let r = as_user(&api, None, "GET", &format!("/v2/docker.io/library/public/blobs/{pd}"));
    r.expect_status(200);
    assert_eq!(r.body, public);
    assert_eq!(up.count("HEAD", Kind::Blob), heads + 1, "{}", up.summary());
    assert_eq!(up.count("GET", Kind::Blob), gets, "{}", up.summary());
    // Linked now: no more upstream requests for it.
    let total = up.total();
    assert_eq!(as_user(&api, None, "GET", &format!("/v2/docker.io/library/public/blobs/{pd}")).body, public);
    assert_eq!(up.total(), total, "{}", up.summary());
}

// ---------------------------------------------------------------------------------
// Rule (b): what a manifest linked in the repository references costs no upstream call

#[test]
fn layers_and_children_shared_between_mirrored_images_cost_no_upstream_request() {
    let up = FakeUpstream::start();
    let s = Wharfie::start_with_config(&docker_io(&up.url()));
    let api = Api::new(&s);
    let shared = bytes_of(120_000, 9);
    let sd = up.add_blob(shared.clone());
    let mut images = Vec::new();
    for (i, repo) in ["library/one", "library/two"].iter().enumerate() {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","n":{i}}}"#).into_bytes();
        let own = bytes_of(50_000 + i, 20 + i as u64);
        up.add_blob(config.clone());
        up.add_blob(own.clone());
        let m = oci::image_manifest(
            OCI_MANIFEST,
            &Desc::new(oci::OCI_CONFIG, &config),
            &[Desc::new(oci::OCI_LAYER, &shared), Desc::new(oci::OCI_LAYER, &own)],
            json!({}),
        );
        let md = up.add_manifest(repo, Some("v1"), OCI_MANIFEST, &m);
        images.push((repo.to_string(), md, m, config, own));
    }
    // The first image, whole: manifest, config, both layers.
    let (repo, _, m, config, own) = &images[0];
    assert_eq!(api.get(&format!("/v2/docker.io/{repo}/manifests/v1")).body, *m);
    for (d, bytes) in [(sha256(config), config), (sd.clone(), &shared), (sha256(own), own)] {
        let r = api.get(&format!("/v2/docker.io/{repo}/blobs/{d}"));
        r.expect_status(200);
        assert_eq!(&r.body, bytes);
    }
    // The second: its manifest and its own blobs come from the upstream, the shared
    // layer from here, with no request at all.
    let (repo, _, m, _, _) = &images[1];
    assert_eq!(api.get(&format!("/v2/docker.io/{repo}/manifests/v1")).body, *m);
    let before = up.total();
    api.head(&format!("/v2/docker.io/{repo}/blobs/{sd}")).expect_status(200);
    let r = api.get(&format!("/v2/docker.io/{repo}/blobs/{sd}"));
    r.expect_status(200);
    assert_eq!(r.body, shared);
    assert_eq!(up.total(), before, "shared layer asked upstream: {}", up.summary());

    // An index linked in a third repository names the first image's manifest: that
    // child, and through it its layers, are served without asking the upstream.
    let (_, md0, m0, _, own0) = &images[0];
    let child = Desc { media_type: OCI_MANIFEST.into(), digest: md0.clone(), size: m0.len() };
    let idx = index_manifest(OCI_INDEX, &[child], json!({}));
    up.add_manifest("library/multi", Some("v1"), OCI_INDEX, &idx);
    assert_eq!(api.get("/v2/docker.io/library/multi/manifests/v1").body, idx);
    let before = up.total();
    let r = api.get(&format!("/v2/docker.io/library/multi/manifests/{md0}"));
    r.expect_status(200);
    assert_eq!(r.body, *m0);
    let r = api.get(&format!("/v2/docker.io/library/multi/blobs/{}", sha256(own0)));
    r.expect_status(200);
    assert_eq!(r.body, *own0);
    assert_eq!(up.total(), before, "index children asked upstream: {}", up.summary());
}
