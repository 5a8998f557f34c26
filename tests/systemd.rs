//! The systemd side of the service, without systemd as PID 1 (tests and CI run in a
//! container): the real binary's `sd_notify` datagrams on a real `NOTIFY_SOCKET`,
//! `systemd-analyze verify` of `systemd/wharfie.service` in a scratch root, and the
//! unit's sandbox (SystemCallFilter=, MemoryDenyWriteExecute=, RestrictAddressFamilies=,
//! ProtectSystem=strict, ProcSubset=pid) checked against what the real server does
//! under `strace` while it serves a push and a pull. None of this runs the unit itself:
//! that needs a running systemd, which the sandbox has not.
//!
//! Needs `systemd-analyze` (apt-get install -y systemd) and `strace`
//! (apt-get install -y strace).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::oci;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bytes_of, require, Wharfie};
use oci::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/wharfie.service");

/// `(key, value)` of every assignment in the unit's `[Service]` section, in order.
fn service_directives() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(UNIT).expect("read systemd/wharfie.service");
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section == "[Service]" {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    out
}

fn directive(key: &str) -> Vec<String> {
    service_directives().into_iter().filter(|(k, _)| k == key).map(|(_, v)| v).collect()
}

// ---------------------------------------------------------------------------------
// sd_notify

fn recv_timeout(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).expect("set_read_timeout");
    let mut buf = [0u8; 512];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv on the notify socket: {e}"),
    }
}

/// What systemd's Type=notify relies on: READY=1 only once the port accepts
/// connections, STOPPING=1 when SIGTERM starts the drain, nothing else in between.
#[test]
fn ready_after_the_port_is_bound_and_stopping_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    let mut w = Wharfie::start_with_env(
        &tmp.path().join("data"),
        &[],
        &[("NOTIFY_SOCKET", sock_path.to_str().expect("utf-8 temp path"))],
    );

    let ready = recv_timeout(&sock, Duration::from_secs(30)).expect("no READY=1 within 30 s of start");
    assert_eq!(ready, "READY=1\n");
    // Ready means ready: the very first request after READY=1 is served.
    let api = Api::new(&w);
    api.get("/v2/").expect_status(200);
    let d = api.push_blob("notify/ready", &bytes_of(5000, 3));
    api.get(&format!("/v2/notify/ready/blobs/{d}")).expect_status(200);
    assert_eq!(
        recv_timeout(&sock, Duration::from_millis(200)),
        None,
        "a datagram other than READY=1 before SIGTERM"
    );

    assert_eq!(w.stop(), Some(0), "wharfie did not exit 0 on SIGTERM");
    let stopping = recv_timeout(&sock, Duration::from_secs(5)).expect("no STOPPING=1 after SIGTERM");
    assert_eq!(stopping, "STOPPING=1\n");
    assert_eq!(recv_timeout(&sock, Duration::from_millis(200)), None, "a datagram after STOPPING=1");
}

/// systemd hands services an abstract socket name (`@/org/freedesktop/...`) in some
/// setups; the binary must reach it too.
#[test]
fn ready_on_an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("wharfie-systemd-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = format!("@{name}");
    let mut w = Wharfie::start_with_env(&tmp.path().join("data"), &[], &[("NOTIFY_SOCKET", &env)]);
    assert_eq!(recv_timeout(&sock, Duration::from_secs(30)).as_deref(), Some("READY=1\n"));
    assert_eq!(w.stop(), Some(0));
    assert_eq!(recv_timeout(&sock, Duration::from_secs(5)).as_deref(), Some("STOPPING=1\n"));
}

// ---------------------------------------------------------------------------------
// systemd-analyze verify

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("run cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// `systemd-analyze verify` needs the unit's ExecStart binary and the targets it
/// names (sysinit.target, multi-user.target, ...) to exist; without a booted systemd
/// `--root` gives it a scratch root holding exactly that. The package test verifies
/// the installed unit on the real root as well.
#[test]
fn unit_passes_systemd_analyze_verify() {
    require("systemd-analyze", "systemd");
    let root = tempfile::tempdir().expect("tempdir");
    let units = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&units).expect("mkdir");
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("multi-user.target").exists())
        .expect("no multi-user.target under /usr/lib/systemd/system: apt-get install -y systemd");
    copy_tree(&system_units, &units.join("system"));
    std::fs::copy(UNIT, units.join("system/wharfie.service")).expect("copy unit");
    let bin = root.path().join("usr/bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::copy(env!("CARGO_BIN_EXE_wharfie"), bin.join("wharfie")).expect("copy binary");
    // ExecReload's /bin/kill (procps).
    std::fs::create_dir_all(root.path().join("bin")).expect("mkdir");
    std::fs::copy("/bin/kill", root.path().join("bin/kill"))
        .expect("copy /bin/kill: apt-get install -y procps");

    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .arg("wharfie.service")
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed ({}):\n{stderr}", out.status);
    // Unknown or misspelt directives are only warnings (exit 0): any output is a finding.
    assert!(
        stderr.trim().is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify warned:\n{stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---------------------------------------------------------------------------------
// The sandbox against the real server's system calls

/// Members of a `systemd-analyze syscall-filter` group, nested groups expanded.
fn syscall_group(name: &str, memo: &mut HashMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    if let Some(s) = memo.get(name) {
        return s.clone();
    }
    let out =
        Command::new("systemd-analyze").args(["syscall-filter", name]).output().expect("run systemd-analyze");
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut set = BTreeSet::new();
    for line in text.lines().skip(1).map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('@') {
            set.extend(syscall_group(line, memo));
        } else {
            set.insert(line.to_string());
        }
    }
    assert!(!set.is_empty(), "systemd-analyze knows no syscall group {name}");
    memo.insert(name.to_string(), set.clone());
    set
}

/// The system calls the unit's SystemCallFilter= lines allow (systemd's rules: the
/// first line decides allow- or deny-list; later lines add to or take from it).
fn allowed_syscalls() -> BTreeSet<String> {
    let mut memo = HashMap::new();
    let mut allowed: Option<BTreeSet<String>> = None;
    for value in directive("SystemCallFilter") {
        let (deny, list) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value.as_str()),
        };
        let mut names = BTreeSet::new();
        for item in list.split_whitespace() {
            if item.starts_with('@') {
                names.extend(syscall_group(item, &mut memo));
            } else {
                names.insert(item.to_string());
            }
        }
        let set = allowed.get_or_insert_with(BTreeSet::new);
        if deny {
            set.retain(|s| !names.contains(s));
        } else {
            set.extend(names);
        }
    }
    allowed.expect("the unit has no allow-list SystemCallFilter= line")
}

/// One traced call: the syscall name and the rest of the line (its arguments).
fn traced_calls(trace: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in trace.lines() {
        let Some((_pid, rest)) = line.split_once(' ') else { continue };
        let rest = rest.trim_start();
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() && rest[name.len()..].starts_with('(') {
            let args = rest[name.len()..].to_string();
            out.push((name, args));
        }
    }
    out
}

/// The first quoted string argument of a traced call, resolved against the `<dir>`
/// that `strace -y` prints after the directory fd before it.
fn first_path(args: &str) -> Option<PathBuf> {
    let start = args.find('"')?;
    let end = start + 1 + args[start + 1..].find('"')?;
    let p = &args[start + 1..end];
    if p.starts_with('/') {
        return Some(PathBuf::from(p));
    }
    let before = &args[..start];
    let dir_end = before.rfind('>')?;
    let dir_start = before[..dir_end].rfind('<')?;
    Some(Path::new(&before[dir_start + 1..dir_end]).join(p))
}

#[test]
fn the_unit_sandbox_allows_everything_the_server_does() {
    require("strace", "strace");
    require("systemd-analyze", "systemd");
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let trace_file = tmp.path().join("trace");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-y", "-o"])
        .arg(&trace_file)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_wharfie"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .current_dir("/")
        .stderr(Stdio::inherit());
    let mut w = Wharfie::from_command(cmd, &data);

    // The work of a registry: a push (monolithic and chunked blobs, a manifest), a pull
    // (manifest and blobs, by tag and digest), listings, deletes.
    let api = Api::new(&w);
    let img = api.push_image("sandbox/app", Some("v1"), 7, 2);
    let big = bytes_of(300_000, 9);
    let big_d = api.push_blob_chunked("sandbox/app", &big, 64 * 1024);
    let g = api.get(&format!("/v2/sandbox/app/blobs/{big_d}"));
    g.expect_status(200);
    assert_eq!(g.body, big);
    let m = api.send(api.req("GET", "/v2/sandbox/app/manifests/v1").header("Accept", OCI_MANIFEST));
    m.expect_status(200);
    assert_eq!(m.body, img.manifest);
    for l in &img.layers {
        api.get(&format!("/v2/sandbox/app/blobs/{}", l.digest)).expect_status(200);
    }
    assert_eq!(api.tags("sandbox/app"), vec!["v1"]);
    assert_eq!(api.catalog(), vec!["sandbox/app"]);
    api.delete(&format!("/v2/sandbox/app/manifests/{}", img.digest)).expect_status(202);
    api.delete(&format!("/v2/sandbox/app/blobs/{big_d}")).expect_status(202);

    // SIGTERM the server itself (strace's only child), then strace exits with it.
    let strace_pid = w.pid().expect("strace pid");
    let children = std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
        .expect("read strace's children");
    let server_pid: i32 =
        children.split_whitespace().next().and_then(|p| p.parse().ok()).expect("strace has no child");
    // SAFETY: plain kill(2) on the server we started.
    unsafe {
        libc::kill(server_pid, libc::SIGTERM);
    }
    assert_eq!(w.wait_exit(), Some(0), "the traced server did not exit 0 on SIGTERM");
    let trace = std::fs::read_to_string(&trace_file).expect("read trace");
    let calls = traced_calls(&trace);
    assert!(calls.len() > 100, "implausibly short trace ({} calls)", calls.len());

    // SystemCallFilter=: a filtered call fails with EPERM (SystemCallErrorNumber=).
    let allowed = allowed_syscalls();
    let used: BTreeSet<&str> = calls.iter().map(|(n, _)| n.as_str()).collect();
    let denied: Vec<&&str> = used.iter().filter(|s| !allowed.contains(**s)).collect();
    assert!(
        denied.is_empty(),
        "the unit's SystemCallFilter= denies system calls the server makes: {denied:?}"
    );

    // MemoryDenyWriteExecute=yes: no writable+executable mapping, no mprotect to exec.
    assert_eq!(directive("MemoryDenyWriteExecute"), vec!["yes"]);
    for (name, args) in &calls {
        let wx = name.starts_with("mmap") && args.contains("PROT_WRITE") && args.contains("PROT_EXEC");
        let px = name.ends_with("mprotect") && args.contains("PROT_EXEC");
        assert!(!wx && !px, "MemoryDenyWriteExecute=yes would refuse {name}{args}");
    }

    // RestrictAddressFamilies=.
    let families: Vec<String> = directive("RestrictAddressFamilies")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(str::to_string)
        .collect();
    for (name, args) in calls.iter().filter(|(n, _)| n == "socket" || n == "socketpair") {
        let family = args.trim_start_matches('(').split(',').next().unwrap_or("");
        assert!(
            families.iter().any(|f| f == family),
            "RestrictAddressFamilies={families:?} refuses {name}{args}"
        );
    }

    // ProtectSystem=strict + StateDirectory=: every write is inside the data directory.
    let writes = [
        "mkdir",
        "mkdirat",
        "rename",
        "renameat",
        "renameat2",
        "unlink",
        "unlinkat",
        "rmdir",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
        "truncate",
        "chmod",
        "fchmodat",
    ];
    for (name, args) in &calls {
        let opens_for_write = (name == "open" || name == "openat")
            && (args.contains("O_WRONLY") || args.contains("O_RDWR") || args.contains("O_CREAT"));
        if !(opens_for_write || writes.contains(&name.as_str())) {
            continue;
        }
        let path = first_path(args).unwrap_or_else(|| panic!("no path in {name}{args}"));
        assert!(
            path.starts_with(&data),
            "ProtectSystem=strict: {name} outside the data directory: {name}{args}"
        );
    }

    // ProcSubset=pid hides /proc outside the process's own directories. The only other
    // file read is glibc malloc's /proc/sys/vm/overcommit_memory probe, which falls back
    // to a safe default when it cannot open it.
    for (name, args) in calls.iter().filter(|(n, _)| n == "openat" || n == "open") {
        let Some(path) = first_path(args) else { continue };
        let Ok(rest) = path.strip_prefix("/proc") else { continue };
        let own = rest.starts_with("self")
            || rest.starts_with("thread-self")
            || rest.starts_with(server_pid.to_string());
        assert!(
            own || path == Path::new("/proc/sys/vm/overcommit_memory"),
            "ProcSubset=pid hides {name}{args}"
        );
    }
}
