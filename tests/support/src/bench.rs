//! What the side-by-side benchmarks share: child processes that die with the bench,
//! ephemeral ports, curl for small requests, and starting the wharfie under test and
//! Distribution beside it.

use std::error::Error;
use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::common::built_wharfie;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

pub type Res<T> = Result<T, Box<dyn Error>>;

pub fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(msg.into().into())
}

/// A bench's `main` ends here: success, or the error on stderr (after the bench's
/// `name`) and exit 1.
pub fn exit(name: &str, r: Res<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A child process killed (SIGKILL) when dropped, and when we die (PDEATHSIG).
pub struct Proc {
    pub child: Child,
    dir: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, dir: &Path) -> Res<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout.log"))?)
            .stderr(File::create(dir.join("stderr.log"))?);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
        Ok(Proc { child, dir: dir.to_path_buf() })
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Have `cmd`'s process killed (SIGKILL) when this one dies (`PR_SET_PDEATHSIG`), so a
/// failed or interrupted bench or test leaves no server behind.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: only prctl(2), async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Requests in a docker-registry access log whose request line contains `needle`:
/// (GETs, HEADs).
pub fn access_log_count(log: &str, needle: &str) -> (usize, usize) {
    let mut n = (0, 0);
    for l in log.lines().filter(|l| l.contains(needle)) {
        if l.contains("\"GET ") {
            n.0 += 1;
        } else if l.contains("\"HEAD ") {
            n.1 += 1;
        }
    }
    n
}

/// An `http://host[:port]/path` URL as (host, path), for a bench's own raw HTTP/1.1
/// client: the `Host` it connects to and the request target it sends.
pub fn host_and_path(url: &str) -> Res<(&str, &str)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("not an http URL: {url}"))?;
    Ok(rest.split_at(rest.find('/').unwrap_or(rest.len())))
}

pub fn port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn curl() -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--noproxy", "*", "--max-time", "600"]).stdin(Stdio::null());
    c
}

/// Status code of a small request; `args` go before the URL.
pub fn status(args: &[&str], url: &str) -> Res<(u16, String)> {
    let out = curl().args(["-o", "/dev/null", "-D", "-"]).args(args).arg(url).output()?;
    if !out.status.success() {
        return fail(format!("curl {url}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    let block = head.trim_end().rsplit("\r\n\r\n").next().unwrap_or_default().to_owned();
    let code = block.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, block))
}

/// The `Location` header of a response head as curl prints it (`-D -`), made absolute
/// against `base`.
pub fn location(head: &str, base: &str) -> Option<String> {
    let loc =
        head.lines().find_map(|l| l.strip_prefix("Location: ").or_else(|| l.strip_prefix("location: ")))?;
    let loc = loc.trim();
    Some(if loc.starts_with("http") { loc.to_owned() } else { format!("{base}{loc}") })
}

pub fn wait_ready(p: &mut Proc, url: &str) -> Res<()> {
    for _ in 0..300 {
        if let Ok(Some(st)) = p.child.try_wait() {
            return fail(format!("{url}: server exited ({st}):\n{}", p.log("stderr.log")));
        }
        if matches!(status(&["--max-time", "2"], url), Ok((200, _))) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fail(format!("{url} did not answer 200 within 30 s"))
}

/// Distribution (`/usr/bin/docker-registry serve`) on 127.0.0.1 with its storage in
/// `dir/storage`; `config` writes its YAML, given the port to listen on and the storage
/// directory. Returns the process and its base URL once `/v2/` answers.
pub fn start_distribution(dir: &Path, config: impl FnOnce(u16, &Path) -> String) -> Res<(Proc, String)> {
    let port = port()?;
    let storage = dir.join("storage");
    fs::create_dir_all(&storage)?;
    fs::write(dir.join("config.yml"), config(port, &storage))?;
    let mut cmd = Command::new("/usr/bin/docker-registry");
    cmd.arg("serve").arg(dir.join("config.yml"));
    let mut p = Proc::spawn(cmd, dir)?;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&mut p, &format!("{base}/v2/"))?;
    Ok((p, base))
}

/// The wharfie under test: `$WHARFIE_BIN`, else the one cargo built ([`built_wharfie`]).
pub fn wharfie_bin() -> PathBuf {
    std::env::var_os("WHARFIE_BIN").map_or_else(built_wharfie, PathBuf::from)
}

/// `wharfie serve` on 127.0.0.1:0 with its data in `dir/data` and `extra` appended to
/// its configuration file; returns the process and its base URL.
pub fn start_wharfie(dir: &Path, extra: &str) -> Res<(Proc, String)> {
    let cfg = format!("listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{extra}", dir.join("data").display());
    fs::write(dir.join("wharfie.toml"), cfg)?;
    let mut cmd = Command::new(wharfie_bin());
    cmd.arg("serve").arg("--config").arg(dir.join("wharfie.toml")).env("RUST_LOG", "warn");
    let mut p = Proc::spawn(cmd, dir)?;
    for _ in 0..300 {
        if let Some(u) = p.log("stdout.log").lines().next().and_then(|l| l.strip_prefix("listening on ")) {
            let base = u.trim().to_owned();
            wait_ready(&mut p, &format!("{base}/v2/"))?;
            return Ok((p, base));
        }
        if let Ok(Some(st)) = p.child.try_wait() {
            return fail(format!("wharfie exited ({st}):\n{}", p.log("stderr.log")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fail("wharfie printed no `listening on` line within 30 s")
}
