//! Shared harness for the integration tests: start the real `wharfie` binary on
//! 127.0.0.1 with an ephemeral port and a temp data directory, and small helpers
//! (digests, JSON error bodies) so each test reads as arrange → run → compare.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// Find `tool` on PATH (or in the sbin directories) or fail the test with the command
/// that installs it.
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
    panic!("{tool} not found: apt-get install -y {package} (.ci/run installs every Debian package the suites need)");
}

/// How long a server may take to print its listening line.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running `wharfie serve` child process.
pub struct Wharfie {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// The data directory (`meta.redb`, `blobs/`, `uploads/`).
    pub dir: PathBuf,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl Wharfie {
    /// Start on a fresh temp data directory.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut w = Self::start_in(&dir, &[]);
        w._tmp = Some(tmp);
        w
    }

    /// Start on `dir` (kept after the server stops), with extra `serve` arguments.
    pub fn start_in(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(dir, extra, &[])
    }

    /// Start on `dir` with extra arguments and environment variables.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharfie"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::from_command(cmd, dir)
    }

    /// Spawn a prepared `wharfie serve` command line (it may go through wrappers that
    /// exec it, such as `setpriv`) whose data directory is `dir`, and wait for its
    /// listening line. Stdout is piped here; stdin is set to null.
    pub fn from_command(mut cmd: Command, dir: &Path) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(START_DEADLINE).expect("wharfie did not print its listening line in time");
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first stdout line: {line}"))
            .trim()
            .to_string();
        let addr = base.trim_start_matches("http://").to_string();
        Wharfie { base, addr, dir: dir.to_path_buf(), child: Some(child), _tmp: None }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The child's pid (the server's own, or that of a wrapper such as strace).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait for a graceful exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let c = self.child.as_ref()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        self.wait_exit()
    }

    /// Wait (30 s at most, then SIGKILL) for the child to exit on its own; returns the
    /// exit status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Take ownership of the temp dir so the data survives a restart in the same test.
    pub fn keep_dir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }

    /// Number of regular files under `blobs/` (committed blob files).
    pub fn blob_files(&self) -> usize {
        count_files(&self.dir.join("blobs"))
    }

    /// Number of entries directly under `uploads/` (staging areas).
    pub fn staging_entries(&self) -> usize {
        std::fs::read_dir(self.dir.join("uploads")).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Wharfie {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            n += count_files(&p);
        } else {
            n += 1;
        }
    }
    n
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    format!("sha256:{}", hex_lower(&h.finalize()))
}

pub fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The first OCI error code of an error body, e.g. `BLOB_UNKNOWN`.
pub fn oci_code(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    v["errors"][0]["code"].as_str().unwrap_or_else(|| panic!("no errors[0].code in {body}")).to_string()
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no rand crate.
pub fn bytes_of(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
