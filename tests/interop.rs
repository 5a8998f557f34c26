//! Real-client interoperability: skopeo, podman and buildah (Debian's packages)
//! push to and pull from a running `wharfie`, and every byte that comes back is
//! compared with what went in.
//!
//! There is no network here but loopback, so the images are made by the tests
//! themselves: an OCI image layout (tar layers, config, manifest, index.json)
//! written byte by byte below.
//!
//! Hermetic by construction: each test gets its own temp directory holding the
//! clients' configuration (registries.conf, storage.conf, containers.conf,
//! policy.json, auth.json), their storage (`--storage-driver vfs` with their own
//! `--root`/`--runroot`) and their blob-info cache. That cache's path is fixed at
//! /var/lib/containers/cache for root, so every client runs in a private mount
//! namespace (`unshare --mount`) where the test's own directory is bind-mounted
//! there; nothing the clients write lands outside the temp directory. Every client
//! runs under `timeout`.
//!
//! A missing client fails the test and says which package to install (`.ci/run`
//! installs them all).
//!
//! `WHARFIE_INTEROP_AGAINST=docker-registry` runs the same tests against the
//! reference registry (`/usr/bin/docker-registry`, Debian's `docker-registry`)
//! instead, to tell a client or test problem from a wharfie bug.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::clients;
use wharfie_testkit::common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use clients::{
    layer, require, Clients, Desc, Image, Layout, ReferenceRegistry, OCI_LAYER_GZIP, OCI_MANIFEST,
};
use common::{sha256, Wharfie};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

// ---------------------------------------------------------------------------
// The registry under test
// ---------------------------------------------------------------------------

/// wharfie (default) or, with `WHARFIE_INTEROP_AGAINST=docker-registry`, the reference registry.
struct Registry {
    /// `127.0.0.1:PORT`
    addr: String,
    _server: Server,
}

/// Held only to keep the server running (both stop on drop).
#[allow(dead_code)]
enum Server {
    Wharfie(Wharfie),
    Reference(ReferenceRegistry),
}

impl Registry {
    fn start() -> Registry {
        match std::env::var("WHARFIE_INTEROP_AGAINST").as_deref() {
            Ok("docker-registry") => {
                let r = ReferenceRegistry::start_deletable();
                Registry { addr: r.addr.clone(), _server: Server::Reference(r) }
            }
            Ok("") | Ok("wharfie") | Err(_) => {
                let w = Wharfie::start();
                Registry { addr: w.addr.clone(), _server: Server::Wharfie(w) }
            }
            Ok(other) => {
                panic!("WHARFIE_INTEROP_AGAINST={other}: expected `wharfie` or `docker-registry`")
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `docker://127.0.0.1:PORT/<repo_ref>`
    fn docker(&self, repo_ref: &str) -> String {
        format!("docker://{}/{}", self.addr, repo_ref)
    }

    /// `127.0.0.1:PORT/<repo_ref>`
    fn name(&self, repo_ref: &str) -> String {
        format!("{}/{}", self.addr, repo_ref)
    }

    /// GET a manifest with every manifest type accepted: (status, Content-Type, Docker-Content-Digest, body).
    fn get_manifest(&self, repo: &str, reference: &str) -> (u16, String, String, Vec<u8>) {
        let resp = http()
            .get(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("Accept", ACCEPT_ALL)
            .send()
            .expect("GET manifest");
        let status = resp.status().as_u16();
        let ct = header(&resp, "content-type");
        let dcd = header(&resp, "docker-content-digest");
        let body = resp.bytes().expect("manifest body").to_vec();
        (status, ct, dcd, body)
    }

    /// GET a blob: (status, body).
    fn get_blob(&self, repo: &str, digest: &str) -> (u16, Vec<u8>) {
        let resp = http().get(self.url(&format!("/v2/{repo}/blobs/{digest}"))).send().expect("GET blob");
        let status = resp.status().as_u16();
        (status, resp.bytes().expect("blob body").to_vec())
    }

    fn catalog(&self) -> Vec<String> {
        let resp = http().get(self.url("/v2/_catalog")).send().expect("GET /v2/_catalog");
        assert_eq!(resp.status().as_u16(), 200, "GET /v2/_catalog");
        let v: Value = resp.json().expect("catalog JSON");
        v["repositories"]
            .as_array()
            .unwrap_or_else(|| panic!("no repositories array in {v}"))
            .iter()
            .map(|s| s.as_str().expect("repository name").to_string())
            .collect()
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .expect("http client")
}

fn header(resp: &reqwest::blocking::Response, name: &str) -> String {
    resp.headers().get(name).map(|v| v.to_str().unwrap_or("").to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// What the clients print (they are set up in tests/support/src/clients.rs)
// ---------------------------------------------------------------------------

/// The last non-empty line of a client's stdout (podman/buildah print IDs there).
fn last_line(s: &str) -> String {
    s.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("").to_string()
}

fn parse_json(s: &str, what: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{what} is not JSON ({e}):\n{s}"))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("not a sha256 digest: {digest}"))
}

// ---------------------------------------------------------------------------
// Test images, written by hand: tar, gzip, OCI image layout
// ---------------------------------------------------------------------------

/// The regular files of an uncompressed tar: (name, contents). PAX/GNU extension
/// records are skipped (the names used here are short).
fn untar(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut off = 0;
    while off + 512 <= data.len() {
        let h = &data[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let field = |r: std::ops::Range<usize>| {
            let f = &h[r];
            let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).trim().to_string()
        };
        let size = u64::from_str_radix(&field(124..136), 8).unwrap_or(0) as usize;
        let prefix = field(345..500);
        let name = field(0..100);
        let name = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let body = off + 512;
        if h[156] == b'0' || h[156] == 0 {
            files.push((name.trim_start_matches("./").to_string(), data[body..body + size].to_vec()));
        }
        off = body + size.div_ceil(512) * 512;
    }
    files
}

/// Write an OCI image (config + gzip layers + manifest) for `arch` into `layout`.
fn write_image(layout: &Layout, arch: &str, layers: &[(Vec<u8>, Vec<u8>)], label: &str) -> Image {
    let layer_descs: Vec<Desc> = layers.iter().map(|(gz, _)| layout.put(OCI_LAYER_GZIP, gz)).collect();
    let diff_ids: Vec<String> = layers.iter().map(|(_, raw)| sha256(raw)).collect();
    let history: Vec<Value> = layers
        .iter()
        .enumerate()
        .map(|(i, _)| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("interop layer {i}")}))
        .collect();
    let config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/hello.txt"],
            "Labels": {"org.example.interop": label}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history
    });
    layout.put_image(&config, layer_descs, Some(json!({"org.example.interop": label})))
}

/// A shared "base" layer (bigger than one gzip stored block, so the blob spans blocks).
fn base_layer() -> (Vec<u8>, Vec<u8>) {
    let big = common::bytes_of(200_000, 7);
    layer(&[("hello.txt", b"hello from wharfie interop\n"), ("base.bin", &big)])
}

/// Assert that `dst` holds exactly `expected` blobs, each byte-identical to `src`'s.
fn assert_same_blobs(src: &Layout, dst: &Layout, expected: &BTreeSet<String>) {
    let got = dst.blob_set();
    assert_eq!(&got, expected, "blobs copied back into {} differ from those pushed", dst.dir.display());
    for d in expected {
        let (a, b) = (src.blob(d), dst.blob(d));
        assert!(a == b, "blob {d}: {} bytes pushed, {} different bytes pulled back", a.len(), b.len());
        assert_eq!(sha256(&b), *d, "blob file {d} pulled back does not hash to its name");
    }
}

/// From a containers/image debug log (skopeo `--debug`, buildah/podman
/// `--log-level=debug`): the client asked to mount `digest` from repository `from`
/// into `to`; every mount it tried was answered 201 Created (it logs "... mount OK";
/// a 202 means "mount refused, upload instead", anything else an error); and the
/// blob was not uploaded again. Layers are copied concurrently, so the answers are
/// counted rather than matched line by line.
fn assert_mounted(client: &str, log: &str, to: &str, from: &str, digest: &str) {
    let hex = hex_of(digest);
    let from_q = from.replace('/', "%2F");
    let request = format!("POST /v2/{to}/blobs/uploads/?from={from}&mount={digest}");
    let asked = log.lines().any(|l| {
        l.contains("POST ")
            && l.contains(&format!("/v2/{to}/blobs/uploads/?"))
            && l.contains(&format!("mount=sha256%3A{hex}"))
            && l.contains(&format!("from={from_q}"))
    });
    assert!(asked, "{client} never sent `{request}`; its log:\n{log}");
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let (tried, ok) = (count("Trying to mount "), count("... mount OK"));
    let mount_lines: Vec<&str> =
        log.lines().filter(|l| l.contains("mount") && !l.contains("Trying to reuse")).collect();
    assert!(
        tried > 0 && ok == tried,
        "`{request}` (and {tried} mount(s) in all): expected 201 Created for each, {ok} answered so; \
         {client}'s mount log:\n{}",
        mount_lines.join("\n")
    );
    let uploaded = log.lines().any(|l| {
        l.contains("PUT ")
            && l.contains(&format!("/v2/{to}/blobs/uploads/"))
            && l.contains(&format!("digest=sha256%3A{hex}"))
    });
    assert!(!uploaded, "{client} uploaded {digest} into {to} after mounting it:\n{log}");
}

// ---------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------

/// oci: → wharfie → oci: with --preserve-digests; inspect, raw manifest/config,
/// list-tags, registry-to-registry copy, catalog.
#[test]
fn skopeo_copy_roundtrip_is_byte_identical() {
    let reg = Registry::start();
    let c = Clients::new();
    let src = Layout::create(&c.dir("src"));
    let img =
        write_image(&src, "amd64", &[base_layer(), layer(&[("etc/motd", b"skopeo layer\n")])], "skopeo");
    src.set_refs(&[("v1", &img.manifest)]);

    let repo = "interop/skopeo";
    c.skopeo_ok(
        "copy",
        &[
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src.oci("v1"),
            &reg.docker(&format!("{repo}:v1")),
        ],
    );

    // What the registry serves is exactly what was pushed.
    let (status, ct, dcd, body) = reg.get_manifest(repo, "v1");
    assert_eq!(status, 200, "GET /v2/{repo}/manifests/v1");
    assert_eq!(ct, OCI_MANIFEST, "Content-Type of GET /v2/{repo}/manifests/v1");
    assert_eq!(dcd, img.manifest.digest, "Docker-Content-Digest of GET /v2/{repo}/manifests/v1");
    assert!(body == img.manifest_bytes, "manifest bytes served differ from those pushed");
    for l in &img.layers {
        let (st, b) = reg.get_blob(repo, &l.digest);
        assert_eq!(st, 200, "GET /v2/{repo}/blobs/{}", l.digest);
        assert!(b == src.blob(&l.digest), "layer {} served differs from the one pushed", l.digest);
    }

    // skopeo inspect: digest, layers, platform, labels.
    let tagged = reg.docker(&format!("{repo}:v1"));
    let info = parse_json(&c.skopeo_ok("inspect", &["--tls-verify=false", &tagged]).stdout, "skopeo inspect");
    assert_eq!(info["Digest"], img.manifest.digest.as_str(), "skopeo inspect Digest: {info}");
    let layers: Vec<&str> = img.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(info["Layers"], json!(layers), "skopeo inspect Layers: {info}");
    assert_eq!(info["Architecture"], "amd64", "{info}");
    assert_eq!(info["Os"], "linux", "{info}");
    assert_eq!(info["Labels"]["org.example.interop"], "skopeo", "{info}");
    let raw = c.skopeo_ok("inspect", &["--tls-verify=false", "--raw", &tagged]).stdout;
    assert!(
        raw.as_bytes() == img.manifest_bytes,
        "skopeo inspect --raw differs from the manifest pushed:\n{raw}"
    );
    let raw_config = c.skopeo_ok("inspect", &["--tls-verify=false", "--config", "--raw", &tagged]).stdout;
    assert!(
        raw_config.as_bytes() == img.config_bytes,
        "skopeo inspect --config --raw differs:\n{raw_config}"
    );
    let by_digest = reg.docker(&format!("{repo}@{}", img.manifest.digest));
    let info2 =
        parse_json(&c.skopeo_ok("inspect", &["--tls-verify=false", &by_digest]).stdout, "inspect by digest");
    assert_eq!(info2["Digest"], img.manifest.digest.as_str(), "{info2}");

    // A second tag, registry to registry (blobs already there), then list-tags.
    c.skopeo_ok(
        "copy",
        &[
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &tagged,
            &reg.docker(&format!("{repo}:latest")),
        ],
    );
    let tags = parse_json(
        &c.skopeo_ok("list-tags", &["--tls-verify=false", &reg.docker(repo)]).stdout,
        "skopeo list-tags",
    );
    assert_eq!(tags["Tags"], json!(["latest", "v1"]), "skopeo list-tags (lexical order): {tags}");
    let (_, _, latest_digest, _) = reg.get_manifest(repo, "latest");
    assert_eq!(latest_digest, img.manifest.digest, "the tag `latest` names the same manifest");

    // And back out into a fresh layout: the same bytes, the same manifest digest.
    let dst = Layout::create(&c.dir("dst"));
    c.skopeo_ok("copy", &["--preserve-digests", "--src-tls-verify=false", &tagged, &dst.oci("v1")]);
    let d = dst.ref_desc("v1");
    assert_eq!(d["digest"], img.manifest.digest.as_str(), "index.json of the copy: {d}");
    assert_eq!(d["mediaType"], OCI_MANIFEST, "{d}");
    assert_same_blobs(&src, &dst, &img.digests());

    assert!(
        reg.catalog().contains(&repo.to_string()),
        "{repo} missing from /v2/_catalog: {:?}",
        reg.catalog()
    );
}

/// Docker schema2: skopeo converts an OCI image (`--format v2s2`) on push, and
/// what comes back is the schema2 manifest the registry stored.
#[test]
fn skopeo_docker_schema2_roundtrip() {
    let reg = Registry::start();
    let c = Clients::new();
    let src = Layout::create(&c.dir("src"));
    let img = write_image(&src, "amd64", &[base_layer()], "schema2");
    src.set_refs(&[("v1", &img.manifest)]);

    let repo = "interop/schema2";
    let tagged = reg.docker(&format!("{repo}:v1"));
    c.skopeo_ok("copy", &["--format", "v2s2", "--dest-tls-verify=false", &src.oci("v1"), &tagged]);

    let (status, ct, dcd, body) = reg.get_manifest(repo, "v1");
    assert_eq!(status, 200, "GET /v2/{repo}/manifests/v1");
    assert_eq!(ct, DOCKER_MANIFEST, "Content-Type of a pushed schema2 manifest");
    assert_eq!(dcd, sha256(&body), "Docker-Content-Digest is the digest of the bytes served");
    let m: Value = serde_json::from_slice(&body).expect("schema2 manifest JSON");
    assert_eq!(m["mediaType"], DOCKER_MANIFEST, "{m}");
    assert_eq!(m["config"]["mediaType"], DOCKER_CONFIG, "{m}");
    assert_eq!(
        m["config"]["digest"],
        img.config.digest.as_str(),
        "config blob unchanged by the conversion: {m}"
    );
    assert_eq!(m["layers"][0]["mediaType"], DOCKER_LAYER_GZIP, "{m}");
    assert_eq!(m["layers"][0]["digest"], img.layers[0].digest.as_str(), "{m}");

    let raw = c.skopeo_ok("inspect", &["--tls-verify=false", "--raw", &tagged]).stdout;
    assert!(raw.as_bytes() == body.as_slice(), "skopeo inspect --raw differs from GET");

    // Back out, keeping the schema2 manifest as is.
    let dst = c.dir("dst");
    let dst_ref = format!("dir:{}", dst.display());
    c.skopeo_ok("copy", &["--preserve-digests", "--src-tls-verify=false", &tagged, &dst_ref]);
    let pulled = std::fs::read(dst.join("manifest.json")).expect("dir:/manifest.json");
    assert!(pulled == body, "schema2 manifest pulled back differs from the one served");
    let layer = std::fs::read(dst.join(hex_of(&img.layers[0].digest))).expect("layer file in dir:");
    assert!(layer == src.blob(&img.layers[0].digest), "layer pulled back differs");
    let config = std::fs::read(dst.join(hex_of(&img.config.digest))).expect("config file in dir:");
    assert!(config == img.config_bytes, "config pulled back differs");
}

/// A two-platform OCI index, copied with `--all` both ways.
#[test]
fn skopeo_multi_arch_index_copy_all() {
    let reg = Registry::start();
    let c = Clients::new();
    let src = Layout::create(&c.dir("src"));
    let amd = write_image(&src, "amd64", &[base_layer(), layer(&[("arch", b"amd64\n")])], "amd64");
    let arm = write_image(&src, "arm64", &[base_layer(), layer(&[("arch", b"arm64\n")])], "arm64");
    let mut amd_d = amd.manifest.json();
    amd_d["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let mut arm_d = arm.manifest.json();
    arm_d["platform"] = json!({"architecture": "arm64", "os": "linux", "variant": "v8"});
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd_d, arm_d]});
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let index_desc = src.put(OCI_INDEX, &index_bytes);
    src.set_refs(&[("multi", &index_desc)]);

    let repo = "interop/multi";
    let tagged = reg.docker(&format!("{repo}:v1"));
    c.skopeo_ok(
        "copy",
        &["--all", "--preserve-digests", "--dest-tls-verify=false", &src.oci("multi"), &tagged],
    );

    let (status, ct, dcd, body) = reg.get_manifest(repo, "v1");
    assert_eq!(status, 200, "GET /v2/{repo}/manifests/v1");
    assert_eq!(ct, OCI_INDEX, "Content-Type of the index");
    assert_eq!(dcd, index_desc.digest, "Docker-Content-Digest of the index");
    assert!(body == index_bytes, "index bytes served differ from those pushed");
    for img in [&amd, &arm] {
        let (st, ct, dcd, b) = reg.get_manifest(repo, &img.manifest.digest);
        assert_eq!(st, 200, "GET /v2/{repo}/manifests/{}", img.manifest.digest);
        assert_eq!(ct, OCI_MANIFEST);
        assert_eq!(dcd, img.manifest.digest);
        assert!(b == img.manifest_bytes, "child manifest {} differs", img.manifest.digest);
    }

    let raw = c.skopeo_ok("inspect", &["--tls-verify=false", "--raw", &tagged]).stdout;
    assert!(raw.as_bytes() == index_bytes, "skopeo inspect --raw of the index differs:\n{raw}");
    // skopeo picks the platform's manifest out of the index.
    for (arch, variant, img) in [("amd64", "", &amd), ("arm64", "v8", &arm)] {
        let mut global = vec!["--override-os", "linux", "--override-arch", arch];
        if !variant.is_empty() {
            global.extend(["--override-variant", variant]);
        }
        let out = c.run("skopeo", &c.skopeo_args_with(&global, "inspect", &["--tls-verify=false", &tagged]));
        let info = parse_json(&out.stdout, "skopeo inspect --override-arch");
        // skopeo reports the digest of what the tag names (the index) ...
        assert_eq!(info["Digest"], index_desc.digest.as_str(), "{arch}: {info}");
        // ... and the platform image's layers, architecture and labels.
        let layers: Vec<&str> = img.layers.iter().map(|l| l.digest.as_str()).collect();
        assert_eq!(info["Layers"], json!(layers), "{arch}: {info}");
        assert_eq!(info["Architecture"], arch, "{info}");
        assert_eq!(info["Labels"]["org.example.interop"], arch, "{info}");
        // The platform manifest by digest.
        let by_digest = reg.docker(&format!("{repo}@{}", img.manifest.digest));
        let out = c.skopeo_ok("inspect", &["--tls-verify=false", &by_digest]);
        let info = parse_json(&out.stdout, "skopeo inspect by digest");
        assert_eq!(info["Digest"], img.manifest.digest.as_str(), "{arch}: {info}");
    }

    let dst = Layout::create(&c.dir("dst"));
    c.skopeo_ok(
        "copy",
        &["--all", "--preserve-digests", "--src-tls-verify=false", &tagged, &dst.oci("multi")],
    );
    let d = dst.ref_desc("multi");
    assert_eq!(d["digest"], index_desc.digest.as_str(), "index.json of the copy: {d}");
    assert_eq!(d["mediaType"], OCI_INDEX, "{d}");
    let mut expected = amd.digests();
    expected.extend(arm.digests());
    expected.insert(index_desc.digest.clone());
    assert_same_blobs(&src, &dst, &expected);
}

/// Two images sharing a base layer pushed to two repositories: skopeo mounts the
/// shared layer across repositories instead of uploading it again.
#[test]
fn skopeo_cross_repository_mount() {
    let reg = Registry::start();
    let c = Clients::new();
    let src = Layout::create(&c.dir("src"));
    let base = base_layer();
    let first = write_image(&src, "amd64", &[base.clone(), layer(&[("first", b"1\n")])], "first");
    let second = write_image(&src, "amd64", &[base, layer(&[("second", b"2\n")])], "second");
    src.set_refs(&[("first", &first.manifest), ("second", &second.manifest)]);
    let shared = first.layers[0].digest.clone();
    assert_eq!(shared, second.layers[0].digest);

    // No --preserve-digests here: with it, skopeo 1.9 does not consult its blob-info
    // cache and never mounts. Nothing needs changing anyway (gzip layers, OCI manifest),
    // and the manifest digests are checked below.
    c.skopeo_ok("copy", &["--dest-tls-verify=false", &src.oci("first"), &reg.docker("interop/first:v1")]);
    let out = c.skopeo_debug(
        "copy",
        &["--dest-tls-verify=false", &src.oci("second"), &reg.docker("interop/second:v1")],
    );
    assert_mounted("skopeo", &out.stderr, "interop/second", "interop/first", &shared);
    for (repo, img) in [("interop/first", &first), ("interop/second", &second)] {
        let (st, _, dcd, body) = reg.get_manifest(repo, "v1");
        assert_eq!(st, 200, "GET /v2/{repo}/manifests/v1");
        assert_eq!(dcd, img.manifest.digest, "{repo}:v1 digest");
        assert!(body == img.manifest_bytes, "{repo}:v1 manifest bytes");
    }

    // The mounted blob is served from the new repository.
    let head = http().head(reg.url(&format!("/v2/interop/second/blobs/{shared}"))).send().expect("HEAD blob");
    assert_eq!(head.status().as_u16(), 200, "HEAD /v2/interop/second/blobs/{shared} after the mount");
    assert_eq!(header(&head, "content-length"), src.blob(&shared).len().to_string());
    assert_eq!(header(&head, "docker-content-digest"), shared);
    let (st, b) = reg.get_blob("interop/second", &shared);
    assert_eq!(st, 200);
    assert!(b == src.blob(&shared), "mounted blob bytes differ");

    let dst = Layout::create(&c.dir("dst"));
    c.skopeo_ok(
        "copy",
        &["--preserve-digests", "--src-tls-verify=false", &reg.docker("interop/second:v1"), &dst.oci("v1")],
    );
    assert_same_blobs(&src, &dst, &second.digests());
}

// ---------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------

/// oci: → podman storage → push → rmi → pull: the same image ID, and the manifest
/// digest podman pushed is the one it pulls and the one the registry serves.
#[test]
fn podman_push_rmi_pull_roundtrip() {
    let reg = Registry::start();
    let c = Clients::new();
    let src = Layout::create(&c.dir("src"));
    let img = write_image(&src, "amd64", &[base_layer(), layer(&[("podman", b"podman\n")])], "podman");
    src.set_refs(&[("v1", &img.manifest)]);
    let policy = c.policy.clone();
    let sig = ["--signature-policy", policy.as_str()];

    let id = last_line(&c.podman_ok(&[&["pull", "-q"][..], &sig, &[&src.oci("v1")]].concat()).stdout);
    assert_eq!(id, hex_of(&img.config.digest), "podman's image ID is the config digest");

    for (tag, format) in [("v1", "oci"), ("v2s2", "v2s2")] {
        let name = reg.name(&format!("interop/podman:{tag}"));
        c.podman_ok(&["tag", &id, &name]);
        let digestfile = c.path(&format!("digest-{tag}"));
        let df = digestfile.display().to_string();
        c.podman_ok(
            &[&["push", "--tls-verify=false", "--format", format, "--digestfile", &df][..], &sig, &[&name]]
                .concat(),
        );
        let pushed = std::fs::read_to_string(&digestfile).expect("podman --digestfile").trim().to_string();
        let (status, ct, dcd, body) = reg.get_manifest("interop/podman", tag);
        assert_eq!(status, 200, "GET /v2/interop/podman/manifests/{tag}");
        assert_eq!(dcd, pushed, "Docker-Content-Digest vs podman push --digestfile ({tag})");
        assert_eq!(sha256(&body), pushed, "digest of the manifest bytes served ({tag})");
        let expected_ct = if format == "oci" { OCI_MANIFEST } else { DOCKER_MANIFEST };
        assert_eq!(ct, expected_ct, "Content-Type of the {format} manifest podman pushed");
    }

    c.podman_ok(&["rmi", "-a", "-f"]);
    let left = c.podman_ok(&["images", "-a", "-q"]).stdout;
    assert!(left.trim().is_empty(), "podman rmi -a left images: {left}");

    for tag in ["v1", "v2s2"] {
        let name = reg.name(&format!("interop/podman:{tag}"));
        let pulled = last_line(
            &c.podman_ok(&[&["pull", "-q", "--tls-verify=false"][..], &sig, &[&name]].concat()).stdout,
        );
        assert_eq!(pulled, id, "image ID after podman pull {name}");
        let (_, _, dcd, _) = reg.get_manifest("interop/podman", tag);
        // Both tags are one image (one ID); each pull records its manifest digest.
        let got = c.podman_ok(&["image", "inspect", "--format", "{{json .RepoDigests}}", &name]);
        let repo_digests = parse_json(&last_line(&got.stdout), "podman RepoDigests");
        let want = format!("{}@{dcd}", reg.name("interop/podman"));
        assert!(
            repo_digests.as_array().is_some_and(|a| a.iter().any(|d| d == want.as_str())),
            "podman image inspect {name}: RepoDigests {repo_digests} lack {want}"
        );
    }

    let tags = parse_json(
        &c.skopeo_ok("list-tags", &["--tls-verify=false", &reg.docker("interop/podman")]).stdout,
        "skopeo list-tags",
    );
    assert_eq!(tags["Tags"], json!(["v1", "v2s2"]), "{tags}");
}

/// A Docker manifest list made by podman (`podman manifest`) from two platform
/// images, pushed with `--all --format v2s2`; `podman pull --arch` picks each back.
#[test]
fn podman_manifest_list_push_pull_by_arch() {
    let reg = Registry::start();
    let c = Clients::new();
    let src = Layout::create(&c.dir("src"));
    let amd = write_image(&src, "amd64", &[layer(&[("arch", b"amd64\n")])], "list-amd64");
    let arm = write_image(&src, "arm64", &[layer(&[("arch", b"arm64\n")])], "list-arm64");
    src.set_refs(&[("amd64", &amd.manifest), ("arm64", &arm.manifest)]);
    let policy = c.policy.clone();
    let sig = ["--signature-policy", policy.as_str()];

    let list = "localhost/interop-list:v1";
    c.podman_ok(&["manifest", "create", list]);
    for (arch, img) in [("amd64", &amd), ("arm64", &arm)] {
        let id = last_line(
            &c.podman_ok(&[&["pull", "-q", "--arch", arch][..], &sig, &[&src.oci(arch)]].concat()).stdout,
        );
        assert_eq!(id, hex_of(&img.config.digest), "{arch} image ID");
        c.podman_ok(&["manifest", "add", list, &format!("containers-storage:{id}")]);
    }
    let name = reg.name("interop/list:v1");
    c.podman_ok(&[
        "manifest",
        "push",
        "--all",
        "--format",
        "v2s2",
        "--tls-verify=false",
        list,
        &format!("docker://{name}"),
    ]);

    let (status, ct, dcd, body) = reg.get_manifest("interop/list", "v1");
    assert_eq!(status, 200, "GET /v2/interop/list/manifests/v1");
    assert_eq!(ct, DOCKER_LIST, "Content-Type of the manifest list");
    assert_eq!(dcd, sha256(&body), "Docker-Content-Digest of the manifest list");
    let l: Value = serde_json::from_slice(&body).expect("manifest list JSON");
    assert_eq!(l["mediaType"], DOCKER_LIST, "{l}");
    let entries = l["manifests"].as_array().expect("manifests").clone();
    assert_eq!(entries.len(), 2, "{l}");
    for (arch, img) in [("amd64", &amd), ("arm64", &arm)] {
        let e = entries
            .iter()
            .find(|e| e["platform"]["architecture"] == arch)
            .unwrap_or_else(|| panic!("no {arch} entry in {l}"));
        assert_eq!(e["mediaType"], DOCKER_MANIFEST, "{e}");
        let child = e["digest"].as_str().expect("digest");
        let (st, ct, child_dcd, child_body) = reg.get_manifest("interop/list", child);
        assert_eq!(st, 200, "GET /v2/interop/list/manifests/{child}");
        assert_eq!(ct, DOCKER_MANIFEST, "Content-Type of {child}");
        assert_eq!(child_dcd, child, "Docker-Content-Digest of {child}");
        assert_eq!(e["size"], child_body.len(), "size of {child} in the list");
        let m: Value = serde_json::from_slice(&child_body).expect("child manifest JSON");
        assert_eq!(m["config"]["digest"], img.config.digest.as_str(), "{arch}: {m}");
    }

    c.podman_ok(&["manifest", "rm", list]);
    c.podman_ok(&["rmi", "-a", "-f"]);
    for (arch, img) in [("arm64", &arm), ("amd64", &amd)] {
        let id = last_line(
            &c.podman_ok(
                &[&["pull", "-q", "--tls-verify=false", "--arch", arch][..], &sig, &[&name]].concat(),
            )
            .stdout,
        );
        assert_eq!(id, hex_of(&img.config.digest), "podman pull --arch {arch} {name}");
    }
}

// ---------------------------------------------------------------------------
// buildah
// ---------------------------------------------------------------------------

/// buildah from scratch + a file → commit → push; a second image built FROM the
/// pushed one (pulled back from the registry) → push to another repository;
/// rmi; pull both back; the file content survives in the layer served.
#[test]
fn buildah_build_push_pull() {
    let reg = Registry::start();
    let c = Clients::new();
    let policy = c.policy.clone();
    let sig = ["--signature-policy", policy.as_str()];
    let file = c.path("greeting.txt");
    std::fs::write(&file, b"built by buildah for wharfie\n").unwrap();
    let file = file.display().to_string();

    // 1. From scratch.
    let ctr = last_line(&c.buildah(&[&["from"][..], &sig, &["scratch"]].concat()).stdout);
    c.buildah(&["copy", &ctr, &file, "/greeting.txt"]);
    c.buildah(&["config", "--cmd", "/greeting.txt", "--label", "org.example.interop=buildah", &ctr]);
    let base_id =
        last_line(&c.buildah(&[&["commit"][..], &sig, &[&ctr, "localhost/interop-base:v1"]].concat()).stdout);
    c.buildah(&["rm", &ctr]);
    let base_name = reg.name("interop/buildah-base:v1");
    let df = c.path("base-digest").display().to_string();
    c.buildah(
        &[
            &["push", "--tls-verify=false", "--digestfile", &df][..],
            &sig,
            &["localhost/interop-base:v1", &format!("docker://{base_name}")],
        ]
        .concat(),
    );
    let base_digest = std::fs::read_to_string(&df).unwrap().trim().to_string();

    let info = parse_json(
        &c.skopeo_ok("inspect", &["--tls-verify=false", &reg.docker("interop/buildah-base:v1")]).stdout,
        "skopeo inspect",
    );
    assert_eq!(info["Digest"], base_digest.as_str(), "skopeo inspect vs buildah push --digestfile: {info}");
    assert_eq!(info["Labels"]["org.example.interop"], "buildah", "{info}");
    let config = parse_json(
        &c.skopeo_ok("inspect", &["--tls-verify=false", "--config", &reg.docker("interop/buildah-base:v1")])
            .stdout,
        "skopeo inspect --config",
    );
    assert_eq!(config["config"]["Cmd"], json!(["/greeting.txt"]), "{config}");

    // The layer's content, decompressed by skopeo into a dir: layout.
    let out = c.dir("base-dir");
    c.skopeo_ok(
        "copy",
        &[
            "--src-tls-verify=false",
            "--dest-decompress",
            &reg.docker("interop/buildah-base:v1"),
            &format!("dir:{}", out.display()),
        ],
    );
    let manifest = parse_json(&std::fs::read_to_string(out.join("manifest.json")).unwrap(), "dir: manifest");
    let layer_digest = manifest["layers"][0]["digest"].as_str().expect("a layer").to_string();
    let layer_tar = std::fs::read(out.join(hex_of(&layer_digest))).expect("layer file");
    let files = untar(&layer_tar);
    let greeting = files.iter().find(|(n, _)| n == "greeting.txt");
    assert_eq!(
        greeting.map(|(_, d)| d.as_slice()),
        Some(&b"built by buildah for wharfie\n"[..]),
        "greeting.txt in the pushed layer (files: {:?})",
        files.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );

    // 2. FROM the pushed image, pulled from the registry; pushed to another repository.
    c.buildah(&["rmi", "-a", "-f"]);
    let ctr =
        last_line(&c.buildah(&[&["from", "--tls-verify=false"][..], &sig, &[&base_name]].concat()).stdout);
    let extra = c.path("extra.txt");
    std::fs::write(&extra, b"second layer\n").unwrap();
    c.buildah(&["copy", &ctr, &extra.display().to_string(), "/extra.txt"]);
    let child_id = last_line(
        &c.buildah(&[&["commit"][..], &sig, &[&ctr, "localhost/interop-child:v1"]].concat()).stdout,
    );
    c.buildah(&["rm", &ctr]);
    let child_name = reg.name("interop/buildah-child:v1");
    let df = c.path("child-digest").display().to_string();
    let push = c.buildah(
        &[
            &["--log-level=debug", "push", "--tls-verify=false", "--digestfile", &df][..],
            &sig,
            &["localhost/interop-child:v1", &format!("docker://{child_name}")],
        ]
        .concat(),
    );
    let child_digest = std::fs::read_to_string(&df).unwrap().trim().to_string();
    let child = parse_json(
        &c.skopeo_ok("inspect", &["--tls-verify=false", &reg.docker("interop/buildah-child:v1")]).stdout,
        "skopeo inspect",
    );
    assert_eq!(child["Digest"], child_digest.as_str(), "{child}");
    let child_layers = child["Layers"].as_array().expect("Layers").clone();
    assert_eq!(child_layers.len(), 2, "the child has the base layer and its own: {child}");
    assert_eq!(child_layers[0], info["Layers"][0], "the child's first layer is the base image's layer");
    // The base layer came from interop/buildah-base: buildah mounts it.
    let base_layer = info["Layers"][0].as_str().expect("base layer digest");
    assert_mounted("buildah", &push.stderr, "interop/buildah-child", "interop/buildah-base", base_layer);

    // 3. Nothing local; pull both back.
    c.buildah(&["rmi", "-a", "-f"]);
    for (name, id, digest) in [(&base_name, &base_id, &base_digest), (&child_name, &child_id, &child_digest)]
    {
        let pulled =
            last_line(&c.buildah(&[&["pull", "--tls-verify=false"][..], &sig, &[name]].concat()).stdout);
        assert_eq!(&pulled, id, "image ID after buildah pull {name}");
        let fmt = "{{.FromImageDigest}}";
        let got = last_line(&c.buildah(&["inspect", "--type", "image", "--format", fmt, name]).stdout);
        assert_eq!(&got, digest, "buildah inspect {name}: manifest digest");
    }
}

// ---------------------------------------------------------------------------
// Self-checks of the hand-written formats (no registry needed)
// ---------------------------------------------------------------------------

#[test]
fn handmade_tar_and_gzip_are_read_by_system_tools() {
    require("tar", "tar");
    require("gzip", "gzip");
    let tmp = tempfile::tempdir().unwrap();
    let big = common::bytes_of(150_000, 3);
    let (gz, raw) = layer(&[("a.txt", b"alpha\n"), ("dir/b.bin", &big)]);
    assert_eq!(untar(&raw).len(), 2);
    let gz_path = tmp.path().join("l.tar.gz");
    std::fs::write(&gz_path, &gz).unwrap();
    let out = Command::new("timeout")
        .args(["60", "gzip", "-dc"])
        .arg(&gz_path)
        .stdin(Stdio::null())
        .output()
        .expect("gzip");
    assert!(out.status.success(), "gzip -d: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == raw, "gzip -dc does not give the tar back");
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let out = Command::new("timeout")
        .args(["60", "tar", "-xzf"])
        .arg(&gz_path)
        .arg("-C")
        .arg(&x)
        .stdin(Stdio::null())
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar -xzf: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(x.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(std::fs::read(x.join("dir/b.bin")).unwrap(), big);
}
