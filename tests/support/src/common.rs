//! Shared harness for the integration tests: start the real `wharfie` binary on
//! 127.0.0.1 with an ephemeral port and a temp data directory, and small helpers
//! (digests, JSON error bodies) so each test reads as arrange → run → compare.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use wharfie::blob::FaultHook;
use wharfie::meta::Meta;

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

/// The `wharfie` binary cargo built for this test or bench run. `CARGO_BIN_EXE_wharfie`
/// is set only while compiling wharfie's own test targets, not this library, so it is
/// found where cargo puts it: test and bench executables live in `target/<profile>/deps/`,
/// the binary in `target/<profile>/`.
pub fn built_wharfie() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test binary");
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary under target/<profile>/deps");
    let bin = profile_dir.join("wharfie");
    assert!(
        bin.is_file(),
        "{} not found: build it with cargo (it builds the binary for its tests)",
        bin.display()
    );
    bin
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

    /// Start on a fresh temp directory holding `toml` as its configuration file
    /// (`wharfie.toml`, passed with `--config`) and the data directory `data/`.
    pub fn start_with_config(toml: &str) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = tmp.path().join("wharfie.toml");
        std::fs::write(&cfg, toml).expect("write config");
        let mut w = Self::start_in(&tmp.path().join("data"), &["--config", &cfg.display().to_string()]);
        w._tmp = Some(tmp);
        w
    }

    /// Start on `dir` (kept after the server stops), with extra `serve` arguments.
    pub fn start_in(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(dir, extra, &[])
    }

    /// Start on `dir` with extra arguments and environment variables.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(built_wharfie());
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
        let addr = base.split("://").nth(1).unwrap_or_default().to_string();
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

/// Write `users` (name, password) into the htpasswd file `path` with the real tool
/// (`htpasswd -B`, its default cost); the first creates the file.
pub fn htpasswd(path: &Path, users: &[(&str, &str)]) {
    let tool = require("htpasswd", "apache2-utils");
    for (i, (u, p)) in users.iter().enumerate() {
        let flags = if i == 0 { "-Bbc" } else { "-Bb" };
        let out = Command::new(&tool).arg(flags).arg(path).args([u, p]).output().expect("run htpasswd");
        assert!(out.status.success(), "htpasswd {flags} {u}: {}", String::from_utf8_lossy(&out.stderr));
    }
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

/// The blocking reqwest client the in-process suites use: no redirects, no proxy, and
/// `timeout` per request.
pub fn http_client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("client")
}

/// A wharfie server in this process, through the library's bootstrap (`app::run`, or
/// `app::run_with_seams` with a blob-store fault hook and a caller-opened redb), on
/// 127.0.0.1:0 and its own two-worker tokio runtime. For suites whose seams live in the
/// test process (storage faults, power loss); every other suite runs the binary
/// ([`Wharfie`]). Shut down (and joined) on drop.
pub struct InProc {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The data directory.
    pub dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl InProc {
    /// Start on a fresh temp data directory, with `config` (TOML) as its configuration file.
    pub fn start_temp(config: Option<&str>, hook: Option<Arc<dyn FaultHook>>) -> InProc {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = config.map(|c| {
            let p = tmp.path().join("wharfie.toml");
            std::fs::write(&p, c).expect("write config");
            p
        });
        let mut s = InProc::start(&tmp.path().join("data"), cfg.as_deref(), hook, None);
        s._tmp = Some(tmp);
        s
    }

    /// Start on `dir` with the configuration file `config`; `meta` (a redb opened by the
    /// caller) needs a `hook`. Returns once `GET /v2/` answers 200 (the stores are open
    /// and recovery has run).
    pub fn start(
        dir: &Path,
        config: Option<&Path>,
        hook: Option<Arc<dyn FaultHook>>,
        meta: Option<Meta>,
    ) -> InProc {
        assert!(meta.is_none() || hook.is_some(), "a caller-opened Meta goes with a fault hook");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let overrides =
            wharfie::config::Overrides { listen: Some(addr.to_string()), data_dir: Some(dir.to_path_buf()) };
        let (_, settings) = wharfie::config::load(config, &overrides).expect("settings");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).expect("listener");
                let shutdown = async {
                    let _ = rx.await;
                };
                match hook {
                    Some(hook) => wharfie::app::run_with_seams(vec![l], settings, hook, meta, shutdown).await,
                    None => wharfie::app::run(vec![l], settings, shutdown).await,
                }
                .expect("server runs (recovery must be clean)");
            });
        });
        let s = InProc {
            base: format!("http://{addr}"),
            dir: dir.to_path_buf(),
            stop: Some(tx),
            thread: Some(thread),
            _tmp: None,
        };
        // The listener is bound: the first request waits for the stores to open.
        let r =
            http_client(START_DEADLINE).get(s.url("/v2/")).send().expect("GET /v2/ on the in-process server");
        assert_eq!(r.status().as_u16(), 200, "GET /v2/ on the in-process server");
        s
    }

    /// `base` + `path`; an absolute URL is returned as it is.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Number of entries directly under `uploads/` (staging areas).
    pub fn staging_entries(&self) -> usize {
        std::fs::read_dir(self.dir.join("uploads")).map(|d| d.count()).unwrap_or(0)
    }

    /// Stop serving and join the server thread; a server that failed (its thread
    /// panicked) fails the test, unless the test is failing already.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() && !std::thread::panicking() {
                panic!("the in-process server failed (see its panic above)");
            }
        }
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        self.shutdown();
    }
}
