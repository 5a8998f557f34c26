//! Real upstream and real clients for the mirror tests: Debian's `docker-registry`
//! (CNCF Distribution 2.8) as the upstream, skopeo and containerd (`ctr`) as clients,
//! and the hand-made OCI image layout they exchange. skopeo's hermetic setup and the
//! image builders are in `crate::clients`, re-exported here as `real::clients`.
//!
//! Every child is killed on drop; a missing tool fails the test with the package to
//! install.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::sha256;

pub use crate::clients;

// Re-exported so the mirror suites find the real upstream and its clients in one place.
pub use clients::{
    gzip_stored, require, tar, ChildGuard, Desc, Image, Layout, ReferenceRegistry, OCI_CONFIG,
    OCI_LAYER_GZIP, OCI_MANIFEST,
};
use clients::{Clients, CLIENT_TIMEOUT_SECS};

// ---------------------------------------------------------------------------
// skopeo, hermetically configured
// ---------------------------------------------------------------------------

/// skopeo's configuration and caches, all inside one temp dir (`Clients` with a
/// skopeo-only interface).
pub struct Skopeo {
    clients: Clients,
}

impl Skopeo {
    #[allow(clippy::new_without_default)] // new() checks the machine for skopeo; no silent default
    pub fn new() -> Skopeo {
        require("skopeo", "skopeo");
        Skopeo { clients: Clients::new() }
    }

    /// A path inside the temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.clients.path(rel)
    }

    pub fn dir(&self, rel: &str) -> PathBuf {
        self.clients.dir(rel)
    }

    /// `skopeo <global flags> <sub> --registries-conf R <args>`; panics with its output on failure.
    pub fn run(&self, sub: &str, args: &[&str]) -> String {
        self.clients.skopeo_ok(sub, args).stdout
    }

    /// Copy tag `tag` of the layout `src` to `dest` (`repo:tag`) on the plain-HTTP registry
    /// at `addr`, digests preserved.
    pub fn push(&self, src: &Layout, tag: &str, addr: &str, dest: &str) -> String {
        let to = format!("docker://{addr}/{dest}");
        self.run("copy", &["--preserve-digests", "--dest-tls-verify=false", &src.oci(tag), &to])
    }
}

// ---------------------------------------------------------------------------
// containerd as a plain process
// ---------------------------------------------------------------------------

/// `containerd` with its own root, state and socket in a temp dir.
pub struct Containerd {
    pub tmp: tempfile::TempDir,
    pub socket: PathBuf,
    _child: ChildGuard,
    log: PathBuf,
}

impl Containerd {
    pub fn start() -> Containerd {
        let bin = require("containerd", "containerd");
        let ctr = require("ctr", "containerd");
        let tmp = tempfile::Builder::new().prefix("wm-ctd").tempdir().expect("tempdir");
        let t = tmp.path();
        let socket = t.join("c.sock");
        let config = t.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
                 \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
                 \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.tracing.processor.v1.otlp\", \
                 \"io.containerd.internal.v1.tracing\"]\n\
                 [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n  level = \"info\"\n[metrics]\n  address = \"\"\n",
                root = t.join("root").display(),
                state = t.join("state").display(),
                sock = socket.display(),
            ),
        )
        .expect("write containerd config");
        let log = t.join("containerd.log");
        let logf = std::fs::File::create(&log).expect("containerd log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .expect("spawn containerd");
        let c = Containerd { tmp, socket, _child: ChildGuard(Some(child)), log };
        // Ready once `ctr version` gets an answer over the socket.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = c.socket.exists()
                && Command::new(&ctr)
                    .arg("--address")
                    .arg(&c.socket)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up in 60 s; its log:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr --address SOCK <args>` under `timeout`: (success, stdout + stderr).
    pub fn ctr(&self, args: &[&str]) -> (bool, String) {
        require("ctr", "containerd");
        let out = Command::new("timeout")
            .args(["-k", "10", &CLIENT_TIMEOUT_SECS.to_string(), "ctr", "--address"])
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("$ ctr {}\n{text}", args.join(" "));
        }
        (out.status.success(), text)
    }
}

// ---------------------------------------------------------------------------
// Test images, written by hand: tar, gzip, OCI image layout
// ---------------------------------------------------------------------------

/// The Go architecture name of this machine (what containerd matches images against).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Write a one-or-more-layer OCI image for `arch` into `layout`; each layer is a gzip'd tar of `files`.
pub fn write_image(layout: &Layout, arch: &str, layers: &[Vec<(&str, &[u8])>], label: &str) -> Image {
    let tars: Vec<Vec<u8>> = layers.iter().map(|f| tar(f)).collect();
    let layer_descs: Vec<Desc> = tars.iter().map(|t| layout.put(OCI_LAYER_GZIP, &gzip_stored(t))).collect();
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
    let config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/hello.txt"], "Labels": {"org.example.mirror": label}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    layout.put_image(&config, layer_descs, None)
}
