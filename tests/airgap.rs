//! Air-gap import and export (issue 4, item 8), end to end: skopeo writes real
//! `docker save` tarballs, OCI archives and OCI layout directories; `wharfie import`
//! reads them with the server stopped (opening the data directory) and with the server
//! running (talking to it); skopeo pulls the images back and compares bytes;
//! `wharfie export` writes OCI archives that `skopeo copy oci-archive:` and `podman
//! load` (vfs storage, private root) accept. Bad archives fail clearly and import
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;
use wharfie_testkit::ops;

use std::collections::BTreeSet;
use std::path::PathBuf;

use mirror::real::{self, Layout, Skopeo};
use ops::*;

/// A two-layer image in an OCI layout, and the archives skopeo makes of it.
struct Fixture {
    sk: Skopeo,
    src: Layout,
    img: real::Image,
    docker_tar: PathBuf,
    oci_tar: PathBuf,
}

fn fixture() -> Fixture {
    let sk = Skopeo::new();
    let src = Layout::create(&sk.dir("src"));
    let big = common::bytes_of(3 << 20, 42);
    let img = real::write_image(
        &src,
        "amd64",
        &[vec![("etc/hello.txt", b"hello from the air gap\n")], vec![("big.bin", &big[..])]],
        "airgap",
    );
    src.set_refs(&[("v1", &img.manifest)]);
    let docker_tar = sk.path("docker-save.tar");
    let oci_tar = sk.path("oci-archive.tar");
    // skopeo writes the normalized name, docker.io/airgap/docker:v1, into RepoTags; the
    // importer keeps a registry host as the first component of the repository name.
    sk.run("copy", &[&src.oci("v1"), &format!("docker-archive:{}:airgap/docker:v1", docker_tar.display())]);
    sk.run("copy", &[&src.oci("v1"), &format!("oci-archive:{}:v1", oci_tar.display())]);
    Fixture { sk, src, img, docker_tar, oci_tar }
}

/// skopeo's own reading of an archive, as an OCI layout (the reference to compare with).
fn skopeo_read(sk: &Skopeo, transport: &str, name: &str) -> (Layout, BTreeSet<String>) {
    let out = Layout::create(&sk.dir(name));
    sk.run("copy", &[transport, &out.oci("x")]);
    let blobs = out.blob_set();
    (out, blobs)
}

/// Pull `repo:tag` from `addr` with skopeo into a fresh layout; returns it and its
/// manifest digest.
fn pull(sk: &Skopeo, addr: &str, image: &str, name: &str) -> (Layout, String) {
    let out = Layout::create(&sk.dir(name));
    sk.run("copy", &["--src-tls-verify=false", &format!("docker://{addr}/{image}"), &out.oci("x")]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.dir.join("index.json")).unwrap()).unwrap();
    let d = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    (out, d)
}

fn assert_same_blobs(got: &Layout, want: &Layout, what: &str) {
    let (g, w) = (got.blob_set(), want.blob_set());
    assert_eq!(g, w, "{what}: blob sets differ");
    for d in &w {
        assert!(got.blob(d) == want.blob(d), "{what}: {d} differs");
    }
}

#[test]
fn import_offline_docker_save_oci_archive_and_layout_then_pull_back_identically() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = path_str(&dir);
    let out = cli(&["import", "--data-dir", &d, &path_str(&f.docker_tar)]);
    out.ok();
    assert!(out.stdout.contains("imported 1 image(s)"), "{}", out.describe());
    cli(&["import", "--data-dir", &d, "--repo", "airgap/oci:v2", &path_str(&f.oci_tar)]).ok();
    cli(&["import", "--data-dir", &d, "--repo", "airgap/dir:v3", &path_str(&f.src.dir)]).ok();
    // No scratch repository is left linking anything.
    let links = repo_blob_links(&dir);
    assert!(links.iter().all(|(r, _)| !r.starts_with("wharfie-import")), "scratch links left: {links:?}");

    let w = common::Wharfie::start_in(&dir, &[]);
    // OCI archive and layout: the very same manifest and blobs.
    for (image, name) in [("airgap/oci:v2", "p-oci"), ("airgap/dir:v3", "p-dir")] {
        let (got, digest) = pull(&f.sk, &w.addr, image, name);
        assert_eq!(digest, f.img.manifest.digest, "{image}: manifest digest");
        assert_same_blobs(&got, &f.src, image);
    }
    // docker save: what skopeo itself reads from the tarball (uncompressed layers, the
    // same config), served under the name the tarball carries.
    let (want, want_blobs) =
        skopeo_read(&f.sk, &format!("docker-archive:{}", f.docker_tar.display()), "ref-docker");
    let (got, _) = pull(&f.sk, &w.addr, "docker.io/airgap/docker:v1", "p-docker");
    assert_same_blobs(&got, &want, "docker save import");
    assert_eq!(got.blob_set(), want_blobs);
}

#[test]
fn import_and_export_talk_to_the_running_server_and_export_is_loadable() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let cfg = write_config(tmp.path(), free_port(), &dir, "");
    let c = path_str(&cfg);
    let mut srv = serve_config(&cfg, &dir);
    let out = cli(&["import", "--config", &c, "--repo", "airgap/live:v1", &path_str(&f.oci_tar)]);
    out.ok();
    let metrics = reqwest::blocking::get(format!("{}/metrics", srv.base)).unwrap().text().unwrap();
    let m = parse_metrics(&metrics);
    assert!(
        metric_sum(&m, "wharfie_http_requests_total", &["route=\"manifest\"", "method=\"PUT\""]) >= 1.0,
        "the running server did not receive the import:\n{metrics}"
    );
    let (got, digest) = pull(&f.sk, &srv.addr, "airgap/live:v1", "p-live");
    assert_eq!(digest, f.img.manifest.digest);
    assert_same_blobs(&got, &f.src, "online import");

    // Export while the server runs, and again with it stopped: the same archive.
    let online = tmp.path().join("online.tar");
    let offline = tmp.path().join("offline.tar");
    cli(&["export", "--config", &c, "airgap/live:v1", "-o", &path_str(&online)]).ok();
    assert_eq!(srv.stop(), Some(0));
    cli(&["export", "--config", &c, "airgap/live:v1", "-o", &path_str(&offline)]).ok();
    assert!(
        std::fs::read(&online).unwrap() == std::fs::read(&offline).unwrap(),
        "online and offline exports differ"
    );

    // skopeo reads the export by its tag, byte for byte.
    let (back, _) = skopeo_read(&f.sk, &format!("oci-archive:{}:v1", online.display()), "from-export");
    assert_same_blobs(&back, &f.src, "skopeo copy oci-archive:export");

    // podman loads it (vfs storage in a private root): the image ID is the config digest.
    let p = real::clients::Clients::new();
    let podman = |args: &[&str]| {
        let out = p.podman_ok(args);
        format!("{}{}", out.stdout, out.stderr)
    };
    let loaded = podman(&["load", "-i", &path_str(&online)]);
    assert!(loaded.contains("Loaded image"), "podman load said: {loaded}");
    let ids = podman(&["images", "-q", "--no-trunc"]);
    assert!(
        ids.lines()
            .any(|l| l.trim().trim_start_matches("sha256:")
                == f.img.config.digest.trim_start_matches("sha256:")),
        "podman images: {ids} (want {})",
        f.img.config.digest
    );
}

/// A running server that speaks TLS: import and export reach it over https, trusting
/// its CA with `--ca-file`, and refuse (clearly) without it.
#[test]
fn import_and_export_reach_a_running_tls_server() {
    let f = fixture();
    let tls = test_ca_and_cert();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let extra = format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", tls.cert.display(), tls.key.display());
    let cfg = write_config(tmp.path(), free_port(), &dir, &extra);
    let (c, ca) = (path_str(&cfg), path_str(&tls.ca));
    let srv = serve_config(&cfg, &dir);
    assert!(srv.base.starts_with("https://"), "{}", srv.base);
    let tar = path_str(&f.oci_tar);
    let refused = cli(&["import", "--config", &c, "--repo", "airgap/tls:v1", &tar]);
    assert_eq!(refused.code, Some(1), "{}", refused.describe());
    assert!(refused.stderr.contains("certificate"), "unclear refusal:\n{}", refused.describe());
    cli(&["import", "--config", &c, "--ca-file", &ca, "--repo", "airgap/tls:v1", &tar]).ok();
    let out = real::Layout::create(&f.sk.dir("p-tls"));
    let certs = path_str(&tls.cert_dir);
    f.sk.run(
        "copy",
        &["--src-cert-dir", &certs, &format!("docker://{}/airgap/tls:v1", srv.addr), &out.oci("x")],
    );
    assert_same_blobs(&out, &f.src, "import over TLS");
    let exported = tmp.path().join("tls-export.tar");
    cli(&["export", "--config", &c, "--ca-file", &ca, "airgap/tls:v1", "-o", &path_str(&exported)]).ok();
    let (back, _) = skopeo_read(&f.sk, &format!("oci-archive:{}:v1", exported.display()), "tls-back");
    assert_same_blobs(&back, &f.src, "export over TLS");
}

#[test]
fn bad_archives_fail_clearly_and_import_nothing() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = path_str(&dir);

    // A truncated OCI archive (cut in the middle of the big layer).
    let bytes = std::fs::read(&f.oci_tar).unwrap();
    let cut = tmp.path().join("truncated.tar");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = cli(&["import", "--data-dir", &d, "--repo", "bad/cut:v1", &path_str(&cut)]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stderr.contains("truncated.tar"), "the error names the file:\n{}", out.describe());

    // An OCI layout whose layer file does not hash to its name.
    let bad = Layout::create(&tmp.path().join("bad-layout"));
    for b in f.src.blob_set() {
        std::fs::write(bad.dir.join("blobs/sha256").join(b.trim_start_matches("sha256:")), f.src.blob(&b))
            .unwrap();
    }
    std::fs::copy(f.src.dir.join("index.json"), bad.dir.join("index.json")).unwrap();
    let layer = &f.img.layers[1].digest;
    flip_byte(&bad.dir.join("blobs/sha256").join(layer.trim_start_matches("sha256:")), 1000);
    let out = cli(&["import", "--data-dir", &d, "--repo", "bad/digest:v1", &path_str(&bad.dir)]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains(layer.trim_start_matches("sha256:")),
        "the error names the blob:\n{}",
        out.describe()
    );
    assert!(out.stderr.contains("digest"), "the error says what is wrong:\n{}", out.describe());

    // A docker save tarball whose manifest.json names a layer it lacks.
    let mut ar = tar::Builder::new(Vec::new());
    let manifest = br#"[{"Config":"c.json","RepoTags":["bad/missing:v1"],"Layers":["nope/layer.tar"]}]"#;
    for (name, data) in [("c.json", &br#"{"os":"linux"}"#[..]), ("manifest.json", &manifest[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        ar.append_data(&mut h, name, data).unwrap();
    }
    let missing = tmp.path().join("missing.tar");
    std::fs::write(&missing, ar.into_inner().unwrap()).unwrap();
    let out = cli(&["import", "--data-dir", &d, &path_str(&missing)]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stderr.contains("nope/layer.tar"), "{}", out.describe());

    // Not an archive at all.
    let junk = tmp.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar file at all, just text that goes on and on").unwrap();
    let out = cli(&["import", "--data-dir", &d, "--repo", "bad/junk:v1", &path_str(&junk)]);
    assert_eq!(out.code, Some(1), "{}", out.describe());

    // Nothing was imported: no manifest, no tag, no blob linked anywhere.
    assert!(manifest_rows(&dir).is_empty(), "manifests: {:?}", manifest_rows(&dir));
    assert!(repo_blob_links(&dir).is_empty(), "links: {:?}", repo_blob_links(&dir));
    let w = common::Wharfie::start_in(&dir, &[]);
    let cat: serde_json::Value = reqwest::blocking::get(w.url("/v2/_catalog")).unwrap().json().unwrap();
    assert_eq!(cat["repositories"], serde_json::json!([]), "{cat}");
}

// ---------------------------------------------------------------------------
// Air gap II (issue 14): bundles from a list, incremental bundles, resumable import
// ---------------------------------------------------------------------------

/// A connected-side server holding `team/a:v1` and `team/b:v1` (pushed with skopeo,
/// digests preserved), and the layout they came from.
struct Connected {
    sk: Skopeo,
    src: Layout,
    a: real::Image,
    b: real::Image,
    w: common::Wharfie,
    _tmp: tempfile::TempDir,
}

fn connected(extra: &[&str]) -> Connected {
    let sk = Skopeo::new();
    let src = Layout::create(&sk.dir("src2"));
    let big_a = common::bytes_of(2 << 20, 7);
    let big_b = common::bytes_of(1 << 20, 8);
    let a = real::write_image(
        &src,
        "amd64",
        &[vec![("etc/base.txt", b"shared base\n")], vec![("a.bin", &big_a[..])]],
        "a",
    );
    let b = real::write_image(&src, "amd64", &[vec![("b.bin", &big_b[..])], vec![("etc/b", b"b\n")]], "b");
    src.set_refs(&[("a", &a.manifest), ("b", &b.manifest)]);
    let tmp = tempfile::tempdir().unwrap();
    let w = common::Wharfie::start_in(&tmp.path().join("connected"), extra);
    sk.push(&src, "a", &w.addr, "team/a:v1");
    sk.push(&src, "b", &w.addr, "team/b:v1");
    Connected { sk, src, a, b, w, _tmp: tmp }
}

/// Pull `image` from `addr` and check it is `want`, blob for blob.
fn pulls_identically(sk: &Skopeo, addr: &str, image: &str, want: &real::Image, src: &Layout, name: &str) {
    let (got, digest) = pull(sk, addr, image, name);
    assert_eq!(digest, want.manifest.digest, "{image}: manifest digest");
    assert_eq!(got.blob_set(), want.digests(), "{image}: blob set");
    for d in want.digests() {
        assert!(got.blob(&d) == src.blob(&d), "{image}: {d} differs");
    }
}

fn manifest_status(base: &str, image: &str) -> u16 {
    let (repo, tag) = image.rsplit_once(':').unwrap();
    reqwest::blocking::Client::new()
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn full_bundle_from_one_server_imports_on_another_and_pulls_identically() {
    let c = connected(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let far = tmp.path().join("far");
    let zst = tmp.path().join("bundle.tar.zst");
    let plain = tmp.path().join("bundle.tar");
    cli(&["export", "--server", &c.w.base, "team/a:v1", "team/b:v1", "-o", &path_str(&zst)]).ok();
    cli(&["export", "--server", &c.w.base, "team/a:v1", "-o", &path_str(&plain)]).ok();
    let head = std::fs::read(&zst).unwrap();
    assert_eq!(&head[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a .tar.zst bundle is zstd");
    // skopeo reads the full (plain) bundle as the OCI archive it is.
    let (back, _) = skopeo_read(&c.sk, &format!("oci-archive:{}:v1", plain.display()), "sk-full");
    assert_eq!(back.blob_set(), c.a.digests(), "skopeo reads the bundle");
    let out = cli(&["import", "--data-dir", &path_str(&far), "--json", &path_str(&zst)]);
    out.ok();
    let summary: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(summary["imported"].as_array().unwrap().len(), 2, "{summary}");
    assert_eq!(summary["refused"], serde_json::json!([]), "{summary}");
    let links = repo_blob_links(&far);
    assert!(links.iter().all(|(r, _)| !r.starts_with("wharfie-import")), "scratch links left: {links:?}");
    let w = common::Wharfie::start_in(&far, &[]);
    pulls_identically(&c.sk, &w.addr, "team/a:v1", &c.a, &c.src, "far-a");
    pulls_identically(&c.sk, &w.addr, "team/b:v1", &c.b, &c.src, "far-b");
    // podman pulls from the far side too (vfs storage in a private root).
    let p = real::clients::Clients::new();
    let o = p.podman_ok(&["pull", "--tls-verify=false", &format!("{}/team/a:v1", w.addr)]);
    assert!(o.stdout.contains(c.a.config.digest.trim_start_matches("sha256:")), "podman pull: {}", o.stdout);
}

#[test]
fn incremental_bundle_carries_the_change_and_refuses_where_the_rest_is_missing() {
    let c = connected(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let far = tmp.path().join("far");
    let full = tmp.path().join("full.tar");
    cli(&["export", "--server", &c.w.base, "team/a:v1", "team/b:v1", "-o", &path_str(&full)]).ok();
    cli(&["import", "--data-dir", &path_str(&far), &path_str(&full)]).ok();

    // One layer of a changes: a:v2 shares its base layer with a:v1.
    let changed = common::bytes_of(1 << 20, 99);
    let a2 = real::write_image(
        &c.src,
        "amd64",
        &[vec![("etc/base.txt", b"shared base\n")], vec![("a.bin", &changed[..])]],
        "a",
    );
    c.src.set_refs(&[("a2", &a2.manifest)]);
    c.sk.push(&c.src, "a2", &c.w.addr, "team/a:v2");

    // The far side's inventory (read through an in-process server on its data dir).
    let have = tmp.path().join("have.json");
    let out = cli(&["inventory", "--data-dir", &path_str(&far), "-o", &path_str(&have)]);
    out.ok();
    let inv: serde_json::Value = serde_json::from_slice(&std::fs::read(&have).unwrap()).unwrap();
    let held: BTreeSet<String> =
        inv["blobs"].as_array().unwrap().iter().map(|e| e[0].as_str().unwrap().to_owned()).collect();
    assert!(c.a.digests().iter().all(|d| held.contains(d) || *d == c.a.manifest.digest), "{inv}");

    let inc = tmp.path().join("inc.tar");
    let out = cli(&[
        "export",
        "--server",
        &c.w.base,
        "--have",
        &path_str(&have),
        "team/a:v2",
        "-o",
        &path_str(&inc),
    ]);
    out.ok();
    let size = std::fs::metadata(&inc).unwrap().len();
    let layer = a2.layers[1].size as u64;
    eprintln!("incremental bundle {size} bytes, changed layer {layer} bytes");
    assert!(
        size >= layer && size < layer + 64 * 1024,
        "incremental bundle of {size} bytes for a {layer}-byte change"
    );
    // The bundle says what it left out and against which inventory.
    let mut ar = tar::Archive::new(std::fs::File::open(&inc).unwrap());
    let mut names = Vec::new();
    let mut bundle_json = None;
    let mut index = None;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let n = e.path().unwrap().to_string_lossy().to_string();
        let mut buf = Vec::new();
        if n == "wharfie-bundle.json" || n == "index.json" {
            std::io::Read::read_to_end(&mut e, &mut buf).unwrap();
            if n == "index.json" {
                index = Some(buf);
            } else {
                bundle_json = Some(buf);
            }
        }
        names.push(n);
    }
    let bj: serde_json::Value = serde_json::from_slice(&bundle_json.expect("wharfie-bundle.json")).unwrap();
    let idx: serde_json::Value = serde_json::from_slice(&index.unwrap()).unwrap();
    let inv_id = format!("sha256:{}", sha256_file(&have).trim_start_matches("sha256:"));
    assert_eq!(bj["inventory"].as_str(), Some(inv_id.as_str()), "{bj}");
    assert_eq!(idx["annotations"]["io.wharfie.bundle.inventory"].as_str(), Some(inv_id.as_str()), "{idx}");
    assert_eq!(idx["annotations"]["io.wharfie.bundle.left-out"], "wharfie-bundle.json");
    let left: BTreeSet<String> = bj["left_out"]["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_str().unwrap().to_owned())
        .collect();
    assert!(left.contains(&a2.layers[0].digest), "the shared layer is left out: {bj}");
    assert!(
        !names.iter().any(|n| n.ends_with(a2.layers[0].digest.trim_start_matches("sha256:"))),
        "{names:?}"
    );

    // Imported where the rest is missing (a fresh server): refused, digests named,
    // nothing of it committed.
    let empty = tmp.path().join("empty");
    let out = cli(&["import", "--data-dir", &path_str(&empty), "--json", &path_str(&inc)]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stderr.contains(&a2.layers[0].digest), "the missing digest is named:\n{}", out.describe());
    let s: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(s["refused"][0]["repo"], "team/a", "{s}");
    assert!(s["refused"][0]["missing"].as_array().unwrap().iter().any(|d| d == &a2.layers[0].digest), "{s}");
    assert!(manifest_rows(&empty).is_empty(), "manifests: {:?}", manifest_rows(&empty));
    assert!(repo_blob_links(&empty).is_empty(), "links: {:?}", repo_blob_links(&empty));

    // Imported on the far side: complete, byte-identical.
    cli(&["import", "--data-dir", &path_str(&far), &path_str(&inc)]).ok();
    let w = common::Wharfie::start_in(&far, &[]);
    pulls_identically(&c.sk, &w.addr, "team/a:v2", &a2, &c.src, "far-a2");
    pulls_identically(&c.sk, &w.addr, "team/a:v1", &c.a, &c.src, "far-a1");
}

#[test]
fn a_flipped_byte_refuses_that_image_and_imports_the_others() {
    let c = connected(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    cli(&["export", "--server", &c.w.base, "--dir", "team/a:v1", "team/b:v1", "-o", &path_str(&dir)]).ok();
    let layer = &c.a.layers[1].digest;
    flip_byte(&dir.join("blobs/sha256").join(layer.trim_start_matches("sha256:")), 4096);
    let far = tmp.path().join("far");
    let out = cli(&["import", "--data-dir", &path_str(&far), &path_str(&dir)]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stderr.contains("refused team/a:v1"), "{}", out.describe());
    assert!(out.stderr.contains(layer.as_str()), "the bad member is named:\n{}", out.describe());
    assert!(out.stderr.contains("imported team/b:v1"), "{}", out.describe());
    let rows = manifest_rows(&far);
    assert!(!rows.iter().any(|r| r.contains(&c.a.manifest.digest)), "a was committed: {rows:?}");
    assert!(!blob_rows(&far).contains_key(layer.as_str()), "the bad layer was stored");
    let w = common::Wharfie::start_in(&far, &[]);
    assert_eq!(manifest_status(&w.base, "team/a:v1"), 404);
    pulls_identically(&c.sk, &w.addr, "team/b:v1", &c.b, &c.src, "far-b");
}

#[test]
fn an_import_killed_midway_resumes_and_reports_what_it_skipped() {
    use std::io::{BufRead, Write};
    let c = connected(&[]);
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle.tar");
    cli(&["export", "--server", &c.w.base, "team/a:v1", "team/b:v1", "-o", &path_str(&bundle)]).ok();
    let bytes = std::fs::read(&bundle).unwrap();
    // Where b's big layer starts: feed everything before it and half of it.
    let mut ar = tar::Archive::new(&bytes[..]);
    let b_big = c.b.layers[0].digest.trim_start_matches("sha256:").to_owned();
    let mut cut = None;
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy().ends_with(&b_big) {
            cut = Some(e.raw_file_position() as usize + e.size() as usize / 2);
        }
    }
    let cut = cut.expect("b's layer is in the bundle");
    let far = tmp.path().join("far");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wharfie"))
        .args(["import", "--data-dir", &path_str(&far), "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    stdin.write_all(&bytes[..cut]).unwrap();
    stdin.flush().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("imported team/a:v1")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("a:v1 did not land before b's layer was complete: {seen:?}"),
        }
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
    }
    let _ = child.wait();
    drop(stdin);
    assert!(!seen.iter().any(|l| l.contains("team/b")), "{seen:?}");

    // The re-run: a is skipped (and its blobs not sent again), b lands.
    let out = cli(&["import", "--data-dir", &path_str(&far), "--json", &path_str(&bundle)]);
    out.ok();
    assert!(out.stderr.contains("skipped team/a:v1"), "{}", out.describe());
    let s: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(s["skipped"][0]["repo"], "team/a", "{s}");
    assert_eq!(s["imported"][0]["repo"], "team/b", "{s}");
    assert!(s["skipped_blobs"].as_u64().unwrap() >= 2, "a's blobs were sent again: {s}");
    let w = common::Wharfie::start_in(&far, &[]);
    pulls_identically(&c.sk, &w.addr, "team/a:v1", &c.a, &c.src, "re-a");
    pulls_identically(&c.sk, &w.addr, "team/b:v1", &c.b, &c.src, "re-b");
}

#[test]
fn images_from_a_list_with_tags_digests_whole_repositories_and_a_cold_mirror() {
    let sk0 = Skopeo::new();
    let upstream = real::ReferenceRegistry::start();
    let up_src = Layout::create(&sk0.dir("up"));
    let hello = real::write_image(&up_src, "amd64", &[vec![("hello.txt", b"from upstream\n")]], "up");
    up_src.set_refs(&[("v1", &hello.manifest)]);
    sk0.push(&up_src, "v1", &upstream.addr, "library/hello:v1");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("up.toml");
    std::fs::write(
        &cfg,
        format!("[[upstreams]]\nname = \"docker.io\"\nurl = \"http://{}\"\n", upstream.addr),
    )
    .unwrap();
    let c = connected(&["--config", &path_str(&cfg)]);
    c.sk.push(&c.src, "a", &c.w.addr, "team/multi:x");
    c.sk.push(&c.src, "b", &c.w.addr, "team/multi:y");
    let list = tmp.path().join("images.txt");
    std::fs::write(
        &list,
        format!(
            "# what the far side needs\nteam/a:v1\n\nteam/b@{}   # by digest\nteam/multi\ndocker.io/library/hello:v1\n",
            c.b.manifest.digest
        ),
    )
    .unwrap();
    let dir = tmp.path().join("bundle");
    let out = cli(&[
        "export",
        "--server",
        &c.w.base,
        "--images-from",
        &path_str(&list),
        "--dir",
        "-o",
        &path_str(&dir),
    ]);
    out.ok();
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let names: BTreeSet<String> = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["annotations"]["io.containerd.image.name"].as_str().unwrap().to_owned())
        .collect();
    let want: BTreeSet<String> = [
        "team/a:v1".to_owned(),
        format!("team/b@{}", c.b.manifest.digest),
        "team/multi:x".into(),
        "team/multi:y".into(),
        "docker.io/library/hello:v1".into(),
    ]
    .into_iter()
    .collect();
    assert_eq!(names, want);
    // The export fetched the cold mirrored image through the mirror (a prefetch).
    let m = parse_metrics(&reqwest::blocking::get(c.w.url("/metrics")).unwrap().text().unwrap());
    assert!(metric_sum(&m, "wharfie_store_blobs", &["origin=\"mirrored\""]) >= 2.0, "{m:?}");

    let far = tmp.path().join("far");
    cli(&["import", "--data-dir", &path_str(&far), &path_str(&dir)]).ok();
    let w = common::Wharfie::start_in(&far, &[]);
    pulls_identically(&c.sk, &w.addr, "team/a:v1", &c.a, &c.src, "l-a");
    pulls_identically(&c.sk, &w.addr, &format!("team/b@{}", c.b.manifest.digest), &c.b, &c.src, "l-b");
    pulls_identically(&c.sk, &w.addr, "team/multi:x", &c.a, &c.src, "l-x");
    pulls_identically(&c.sk, &w.addr, "team/multi:y", &c.b, &c.src, "l-y");
    pulls_identically(&sk0, &w.addr, "docker.io/library/hello:v1", &hello, &up_src, "l-hello");
}
