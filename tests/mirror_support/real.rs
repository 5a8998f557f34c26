//! Real upstream and real clients for the mirror tests: Debian's `docker-registry`
//! (CNCF Distribution 2.8) as the upstream, skopeo and containerd (`ctr`) as clients,
//! and the hand-made OCI image layout they exchange. Helpers copied (trimmed) from
//! tests/interop.rs: test crates cannot import each other.
//!
//! Every child is killed on drop; a missing tool fails the test with the package to
//! install.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::sha256;

/// Wall-clock limit of one client command.
const CLIENT_TIMEOUT_SECS: u32 = 180;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Find `tool` on PATH (or in the sbin directories) or fail with the command that installs it.
pub fn require(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    for dir in std::env::split_paths(&path).chain(extra) {
        let p = dir.join(tool);
        if let Ok(meta) = std::fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return p;
            }
        }
    }
    panic!("{tool} not found: apt-get install -y {package}");
}

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

// ---------------------------------------------------------------------------
// docker-registry
// ---------------------------------------------------------------------------

/// `docker-registry serve` on 127.0.0.1 with an ephemeral port and a temp storage root.
pub struct ReferenceRegistry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    _child: ChildGuard,
    _tmp: tempfile::TempDir,
}

impl ReferenceRegistry {
    pub fn start() -> Self {
        let bin = require("docker-registry", "docker-registry");
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = tmp.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:0\n  secret: mirror-test\n",
                tmp.path().join("storage").display()
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
// skopeo, hermetically configured
// ---------------------------------------------------------------------------

/// Runs `$@` with the test's cache directory (`$0`) mounted where root's
/// containers/image blob-info cache lives, inside a private mount namespace.
const CACHE_SHIM: &str =
    "mkdir -p /var/lib/containers/cache && mount --bind \"$0\" /var/lib/containers/cache && exec \"$@\"";

/// skopeo's configuration and caches, all inside one temp dir.
pub struct Skopeo {
    pub tmp: tempfile::TempDir,
}

impl Skopeo {
    pub fn new() -> Skopeo {
        for (tool, package) in
            [("timeout", "coreutils"), ("unshare", "util-linux"), ("mount", "mount"), ("skopeo", "skopeo")]
        {
            require(tool, package);
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = tmp.path();
        for d in ["home", "xdg-run", "xdg-config", "tmp", "cache", "registries.d"] {
            std::fs::create_dir_all(t.join(d)).expect("mkdir");
        }
        std::fs::write(t.join("policy.json"), r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
        std::fs::write(
            t.join("registries.conf"),
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        )
        .unwrap();
        std::fs::write(t.join("auth.json"), "{\"auths\":{}}\n").unwrap();
        Skopeo { tmp }
    }

    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.tmp.path().join(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    /// `skopeo <global flags> <sub> --registries-conf R <args>`; panics with its output on failure.
    pub fn run(&self, sub: &str, args: &[&str]) -> String {
        let t = self.tmp.path();
        let s = |p: &str| t.join(p);
        let mut argv: Vec<String> = vec![
            "--policy".into(),
            s("policy.json").display().to_string(),
            "--tmpdir".into(),
            s("tmp").display().to_string(),
            "--registries.d".into(),
            s("registries.d").display().to_string(),
            sub.into(),
            "--registries-conf".into(),
            s("registries.conf").display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "10", &CLIENT_TIMEOUT_SECS.to_string()])
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c", CACHE_SHIM])
            .arg(s("cache"))
            .arg("skopeo")
            .args(&argv)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
            .env("HOME", s("home"))
            .env("XDG_RUNTIME_DIR", s("xdg-run"))
            .env("XDG_CONFIG_HOME", s("xdg-config"))
            .env("TMPDIR", s("tmp"))
            .env("REGISTRY_AUTH_FILE", s("auth.json"))
            .stdin(Stdio::null());
        let line = format!("skopeo {}", argv.join(" "));
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run `{line}`: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("$ {line}\n{stdout}{stderr}");
        }
        assert!(
            out.status.success(),
            "`{line}` failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            out.status
        );
        stdout
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
        self.dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
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

    /// `oci:<dir>:<name>`
    pub fn oci(&self, name: &str) -> String {
        format!("oci:{}:{name}", self.dir.display())
    }
}

/// One image written into a layout.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Desc,
    pub config: Desc,
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
    let config_desc = layout.put(OCI_CONFIG, &serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.json(),
        "layers": layer_descs.iter().map(Desc::json).collect::<Vec<_>>(),
    });
    let manifest_desc = layout.put(OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    Image { manifest: manifest_desc, config: config_desc, layers: layer_descs }
}
