//! skopeo, podman and buildah, hermetically configured, and hand-made OCI image layouts
//! (tar, gzip, blobs, index.json) for them to exchange: one copy shared by tests/interop.rs
//! (which explains the approach at length), tests/auth.rs, tests/airgap.rs and, through
//! tests/support/src/mirror/real.rs, the mirror suites. Each `Clients` owns one temp
//! directory holding the clients' configuration (registries.conf, storage.conf,
//! containers.conf, policy.json, auth.json), their storage (`--storage-driver vfs` with
//! their own `--root`/`--runroot`) and their blob-info cache, bind-mounted over
//! /var/lib/containers/cache in a private mount namespace (`unshare --mount`). Every
//! client runs under `timeout`. A missing tool fails the test and names its package.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

pub use crate::common::require;
use crate::common::sha256;

/// Wall-clock limit of one client command (`timeout` sends SIGTERM, then SIGKILL 10 s later).
pub const CLIENT_TIMEOUT_SECS: u32 = 180;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A temp dir with a short path (podman refuses a runroot longer than 50 characters)
/// and no upper-case letters: podman names an image pulled from `oci:PATH` after PATH,
/// and image names must be lower-case.
fn short_tempdir() -> tempfile::TempDir {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let base = std::env::temp_dir();
    assert!(
        !base.display().to_string().chars().any(|c| c.is_ascii_uppercase()),
        "TMPDIR {} has upper-case letters; podman cannot name images after such paths",
        base.display()
    );
    tempfile::Builder::new()
        .prefix(&format!("wa-{}-{n}-{nanos:x}", std::process::id()))
        .rand_bytes(0)
        .tempdir_in(base)
        .expect("tempdir")
}

/// What a client did.
pub struct Out {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `$@` with the test's cache directory (`$0`) mounted where root's
/// containers/image blob-info cache lives, inside a private mount namespace.
const CACHE_SHIM: &str =
    "mkdir -p /var/lib/containers/cache && mount --bind \"$0\" /var/lib/containers/cache && exec \"$@\"";

pub struct Clients {
    tmp: tempfile::TempDir,
    /// The accept-anything signature policy (`--signature-policy` for podman and buildah).
    pub policy: String,
    registries_conf: String,
    root: String,
    runroot: String,
    /// The credentials file every client reads and `podman login` writes.
    pub authfile: String,
}

impl Clients {
    #[allow(clippy::new_without_default)] // new() checks the machine for the tools; no silent default
    pub fn new() -> Clients {
        for (tool, package) in [("timeout", "coreutils"), ("unshare", "util-linux"), ("mount", "mount")] {
            require(tool, package);
        }
        let tmp = short_tempdir();
        let t = tmp.path();
        for d in ["home", "xdg-run", "xdg-data", "xdg-config", "tmp", "cache", "libpod-tmp", "net"] {
            std::fs::create_dir_all(t.join(d)).expect("mkdir");
        }
        let s = |p: &str| t.join(p).display().to_string();
        let (policy, registries_conf, root, runroot, authfile) =
            (s("policy.json"), s("registries.conf"), s("s/root"), s("s/run"), s("auth.json"));
        assert!(
            runroot.len() <= 50,
            "runroot {runroot} is too long for podman: set TMPDIR to a shorter path"
        );
        // Passed explicitly where a command takes it, and found at $HOME/.config/containers
        // by those that do not (`podman manifest push`), instead of /etc/containers.
        let accept_all = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;
        std::fs::write(&policy, accept_all).expect("policy");
        std::fs::create_dir_all(t.join("home/.config/containers")).expect("mkdir");
        std::fs::write(t.join("home/.config/containers/policy.json"), accept_all).expect("policy");
        // Only fully qualified names; no short-name aliases, no mirrors.
        std::fs::write(
            &registries_conf,
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        )
        .expect("registries.conf");
        std::fs::write(
            t.join("storage.conf"),
            format!("[storage]\ndriver = \"vfs\"\ngraphroot = \"{root}\"\nrunroot = \"{runroot}\"\n"),
        )
        .expect("storage.conf");
        std::fs::write(
            t.join("containers.conf"),
            format!(
                "[engine]\ntmp_dir = \"{}\"\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\n\
                 image_copy_tmp_dir = \"{}\"\n\n[network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{}\"\n",
                s("libpod-tmp"),
                s("tmp"),
                s("net")
            ),
        )
        .expect("containers.conf");
        std::fs::write(&authfile, "{\"auths\":{}}\n").expect("auth.json");
        Clients { tmp, policy, registries_conf, root, runroot, authfile }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// A fresh directory inside the temp dir.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    /// Run a client and report how it went (a timeout fails the test).
    /// `program` is skopeo, podman or buildah, each from the Debian package of that name.
    pub fn try_run(&self, program: &str, args: &[String]) -> Out {
        require(program, program);
        let s = |p: &str| self.tmp.path().join(p);
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "10", &CLIENT_TIMEOUT_SECS.to_string()])
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c", CACHE_SHIM])
            .arg(s("cache"))
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
            .env("HOME", s("home"))
            .env("XDG_RUNTIME_DIR", s("xdg-run"))
            .env("XDG_DATA_HOME", s("xdg-data"))
            .env("XDG_CONFIG_HOME", s("xdg-config"))
            .env("TMPDIR", s("tmp"))
            .env("CONTAINERS_CONF", s("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", s("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", &self.registries_conf)
            .env("REGISTRY_AUTH_FILE", &self.authfile)
            .env("BUILDAH_ISOLATION", "chroot")
            .stdin(Stdio::null());
        let line = format!("{program} {}", args.join(" "));
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("$ {line}\n{stdout}{stderr}");
        }
        let code = out.status.code();
        if code == Some(124) || code == Some(137) {
            panic!(
                "`{line}` timed out after {CLIENT_TIMEOUT_SECS}s\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
            );
        }
        Out { ok: out.status.success(), code, stdout, stderr }
    }

    /// Run a client; panic with everything it printed unless it succeeds.
    pub fn run(&self, program: &str, args: &[String]) -> Out {
        let out = self.try_run(program, args);
        if !out.ok {
            panic!(
                "`{program} {}` failed (exit {:?})\n--- stdout\n{}\n--- stderr\n{}",
                args.join(" "),
                out.code,
                out.stdout,
                out.stderr
            );
        }
        out
    }

    /// skopeo's argument vector: the subcommand and its flags, with the test's policy,
    /// temp dir and registries configuration.
    pub fn skopeo_args(&self, sub: &str, args: &[&str]) -> Vec<String> {
        self.skopeo_args_with(&[], sub, args)
    }

    /// skopeo's argument vector with global flags (`--debug`) before the rest.
    pub fn skopeo_args_with(&self, global: &[&str], sub: &str, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = global.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--policy".into(),
            self.policy.clone(),
            "--tmpdir".into(),
            self.path("tmp").display().to_string(),
            "--registries.d".into(),
            self.path("registries.d").display().to_string(),
            sub.into(),
            // skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF; this (hidden) flag is its equivalent.
            "--registries-conf".into(),
            self.registries_conf.clone(),
        ]);
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// podman's argument vector: private storage (vfs) and engine directories, then `args`.
    pub fn podman_args(&self, args: &[&str]) -> Vec<String> {
        let mut v = self.storage_flags();
        v.extend([
            "--tmpdir".into(),
            self.path("libpod-tmp").display().to_string(),
            "--events-backend".into(),
            "none".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--network-config-dir".into(),
            self.path("net").display().to_string(),
        ]);
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// The private storage flags podman and buildah share (vfs, own root and runroot).
    fn storage_flags(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.root.clone(),
            "--runroot".into(),
            self.runroot.clone(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    /// `skopeo <sub> <args>`, however it went.
    pub fn skopeo(&self, sub: &str, args: &[&str]) -> Out {
        self.try_run("skopeo", &self.skopeo_args(sub, args))
    }

    /// `podman <args>`, however it went.
    pub fn podman(&self, args: &[&str]) -> Out {
        self.try_run("podman", &self.podman_args(args))
    }

    /// `skopeo <sub> <args>`; panics with its output unless it succeeds.
    pub fn skopeo_ok(&self, sub: &str, args: &[&str]) -> Out {
        self.run("skopeo", &self.skopeo_args(sub, args))
    }

    /// skopeo's `--debug` output for one command (the HTTP requests it made are in stderr).
    pub fn skopeo_debug(&self, sub: &str, args: &[&str]) -> Out {
        self.run("skopeo", &self.skopeo_args_with(&["--debug"], sub, args))
    }

    /// `podman <args>`; panics with its output unless it succeeds.
    pub fn podman_ok(&self, args: &[&str]) -> Out {
        self.run("podman", &self.podman_args(args))
    }

    /// `buildah <storage flags> <args>`; panics with its output unless it succeeds.
    pub fn buildah(&self, args: &[&str]) -> Out {
        let mut v = self.storage_flags();
        v.extend(args.iter().map(|s| s.to_string()));
        self.run("buildah", &v)
    }
}

// ---------------------------------------------------------------------------
// docker-registry, the reference registry
// ---------------------------------------------------------------------------

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `docker-registry serve` on 127.0.0.1 with an ephemeral port and a temp storage root.
pub struct ReferenceRegistry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    _child: ChildGuard,
    _tmp: tempfile::TempDir,
}

impl ReferenceRegistry {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// One that also accepts DELETE of manifests and blobs.
    pub fn start_deletable() -> Self {
        Self::start_with(true)
    }

    fn start_with(delete: bool) -> Self {
        let bin = require("docker-registry", "docker-registry");
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = tmp.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n{}\
                 http:\n  addr: 127.0.0.1:0\n  secret: wharfie-test\n",
                tmp.path().join("storage").display(),
                if delete { "  delete:\n    enabled: true\n" } else { "" }
            ),
        )
        .expect("write registry config");
        let mut child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn docker-registry");
        let stderr = child.stderr.take().expect("stderr");
        let guard = ChildGuard(Some(child));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(i) = line.find("listening on ") {
                        let rest = &line[i + "listening on ".len()..];
                        let addr: String =
                            rest.chars().take_while(|c| !c.is_whitespace() && *c != '"').collect();
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("docker-registry: {line}");
                }
            }
        });
        let addr =
            rx.recv_timeout(Duration::from_secs(60)).expect("docker-registry did not say where it listens");
        ReferenceRegistry { addr, _child: guard, _tmp: tmp }
    }
}

// ---------------------------------------------------------------------------
// Test images, written by hand: tar, gzip, OCI image layout
// ---------------------------------------------------------------------------

/// An uncompressed ustar archive of regular files, deterministic (mtime 0, uid 0).
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    fn octal(field: &mut [u8], value: u64) {
        let s = format!("{:0width$o}\0", value, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    }
    let mut out = Vec::new();
    for (name, data) in files {
        assert!(name.len() < 100, "tar name too long: {name}");
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 0);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A valid gzip member holding `data` in stored (uncompressed) deflate blocks.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks: Vec<&[u8]> = data.chunks(65_535).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let n = chunks.len();
    for (i, c) in chunks.into_iter().enumerate() {
        out.push(u8::from(i + 1 == n));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// A content descriptor.
#[derive(Clone, Debug)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
}

impl Desc {
    pub fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An OCI image layout directory.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn create(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir layout");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = Layout { dir: dir.to_path_buf() };
        l.set_refs(&[]);
        l
    }

    /// An existing layout (one a client wrote).
    pub fn open(dir: &Path) -> Layout {
        Layout { dir: dir.to_path_buf() }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        self.dir.join("blobs/sha256").join(hex)
    }

    pub fn put(&self, media_type: &str, bytes: &[u8]) -> Desc {
        let digest = sha256(bytes);
        std::fs::write(self.blob_path(&digest), bytes).expect("write blob");
        Desc { media_type: media_type.into(), digest, size: bytes.len() }
    }

    pub fn blob(&self, digest: &str) -> Vec<u8> {
        std::fs::read(self.blob_path(digest))
            .unwrap_or_else(|e| panic!("blob {digest} missing from {}: {e}", self.dir.display()))
    }

    /// Digests of every blob file in the layout.
    pub fn blob_set(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.dir.join("blobs/sha256"))
            .expect("read blobs dir")
            .map(|e| format!("sha256:{}", e.expect("dir entry").file_name().to_string_lossy()))
            .collect()
    }

    /// Write index.json naming each descriptor with `org.opencontainers.image.ref.name`.
    pub fn set_refs(&self, refs: &[(&str, &Desc)]) {
        let manifests: Vec<Value> = refs
            .iter()
            .map(|(name, d)| {
                let mut v = d.json();
                v["annotations"] = json!({"org.opencontainers.image.ref.name": name});
                v
            })
            .collect();
        let index = json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// The descriptor index.json gives for `name`.
    pub fn ref_desc(&self, name: &str) -> Value {
        let raw = std::fs::read(self.dir.join("index.json")).expect("index.json");
        let index: Value = serde_json::from_slice(&raw).expect("index.json is JSON");
        index["manifests"]
            .as_array()
            .expect("manifests array")
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
            .unwrap_or_else(|| panic!("no ref {name} in {}", String::from_utf8_lossy(&raw)))
            .clone()
    }

    /// Write `config` and an image manifest over it and `layers` (already in the layout),
    /// with `annotations` on the manifest when given.
    pub fn put_image(&self, config: &Value, layers: Vec<Desc>, annotations: Option<Value>) -> Image {
        let config_bytes = serde_json::to_vec(config).unwrap();
        let config_desc = self.put(OCI_CONFIG, &config_bytes);
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.json(),
            "layers": layers.iter().map(Desc::json).collect::<Vec<_>>(),
        });
        if let Some(a) = annotations {
            manifest["annotations"] = a;
        }
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let manifest = self.put(OCI_MANIFEST, &manifest_bytes);
        Image { manifest, manifest_bytes, config: config_desc, config_bytes, layers }
    }

    /// `oci:<dir>:<name>`
    pub fn oci(&self, name: &str) -> String {
        format!("oci:{}:{name}", self.dir.display())
    }
}

/// One image written into a layout.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Desc,
    pub manifest_bytes: Vec<u8>,
    pub config: Desc,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<Desc>,
}

impl Image {
    /// Every blob of the image, manifest included.
    pub fn digests(&self) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = self.layers.iter().map(|l| l.digest.clone()).collect();
        s.insert(self.config.digest.clone());
        s.insert(self.manifest.digest.clone());
        s
    }
}

/// A layer: a gzip'd tar of `files`. Returns (compressed, uncompressed).
pub fn layer(files: &[(&str, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    let t = tar(files);
    (gzip_stored(&t), t)
}
