//! skopeo and podman, hermetically configured: the approach of tests/interop.rs (which
//! explains it at length) in a form other suites can share. Each `Clients` owns one temp
//! directory holding the clients' configuration (registries.conf, storage.conf,
//! containers.conf, policy.json, auth.json), their storage (`--storage-driver vfs` with
//! their own `--root`/`--runroot`) and their blob-info cache, bind-mounted over
//! /var/lib/containers/cache in a private mount namespace (`unshare --mount`). Every
//! client runs under `timeout`. A missing tool fails the test and names its package.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Wall-clock limit of one client command (`timeout` sends SIGTERM, then SIGKILL 10 s later).
pub const CLIENT_TIMEOUT_SECS: u32 = 180;

/// Find `tool` on PATH or fail the test with the command that installs it.
pub fn require(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(tool);
        if let Ok(meta) = std::fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return p;
            }
        }
    }
    panic!("{tool} not found: apt-get install -y {package} (.ci/run installs every Debian package the suites need)");
}

/// A temp dir with a short, lower-case path (podman's runroot limit; image names).
fn short_tempdir() -> tempfile::TempDir {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    tempfile::Builder::new()
        .prefix(&format!("wa-{}-{n}-{nanos:x}", std::process::id()))
        .rand_bytes(0)
        .tempdir_in(std::env::temp_dir())
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
    policy: String,
    registries_conf: String,
    root: String,
    runroot: String,
    /// The credentials file every client reads and `podman login` writes.
    pub authfile: String,
}

impl Clients {
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
        let accept_all = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;
        std::fs::write(&policy, accept_all).expect("policy");
        std::fs::create_dir_all(t.join("home/.config/containers")).expect("mkdir");
        std::fs::write(t.join("home/.config/containers/policy.json"), accept_all).expect("policy");
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

    /// Run a client and report how it went (a timeout fails the test).
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
        let mut v: Vec<String> = vec![
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
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// podman's argument vector: private storage (vfs) and engine directories, then `args`.
    pub fn podman_args(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--root".into(),
            self.root.clone(),
            "--runroot".into(),
            self.runroot.clone(),
            "--storage-driver".into(),
            "vfs".into(),
            "--tmpdir".into(),
            self.path("libpod-tmp").display().to_string(),
            "--events-backend".into(),
            "none".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--network-config-dir".into(),
            self.path("net").display().to_string(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    pub fn skopeo(&self, sub: &str, args: &[&str]) -> Out {
        self.try_run("skopeo", &self.skopeo_args(sub, args))
    }

    pub fn podman(&self, args: &[&str]) -> Out {
        self.try_run("podman", &self.podman_args(args))
    }
}
