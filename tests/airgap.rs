//! Air-gap import and export (issue 4, item 8), end to end: skopeo writes real
//! `docker save` tarballs, OCI archives and OCI layout directories; `wharfie import`
//! reads them with the server stopped (opening the data directory) and with the server
//! running (talking to it); skopeo pulls the images back and compares bytes;
//! `wharfie export` writes OCI archives that `skopeo copy oci-archive:` and `podman
//! load` (vfs storage, private root) accept. Bad archives fail clearly and import
//! nothing.

mod common;
mod mirror_support;
mod ops_support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use mirror_support::real::{self, Layout, Skopeo};
use ops_support::*;

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
    let mut srv = Server::start(&cfg);
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
    let srv = Server::start(&cfg);
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
