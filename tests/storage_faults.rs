//! Storage faults (issue 5, item 2): the blob store's `FaultHook` seam fails the Nth
//! write, fsync or rename, or reports ENOSPC/EDQUOT, and every failure must give the
//! client a clean error (500 `UNKNOWN` for an I/O error, 503 `UNAVAILABLE` for a full
//! disk, always with an OCI JSON body), leave nothing visible or staged, and leave the
//! server serving: the same push retried without the fault succeeds and verifies.
//!
//! The hook lives in this process, so the server runs in-process through the library's
//! `app::run_with_hook` (the seam DESIGN.md names for tests) on 127.0.0.1:0, on a real
//! data directory with real redb and real files. The binary itself has no fault switch.
//!
//! The last test fills a real, size-limited filesystem (tmpfs, mounted by the test as
//! root) with the real binary: the push that does not fit fails cleanly, the space comes
//! back, and a push that fits succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{bytes_of, count_files, http_client, oci_code, sha256, InProc, Wharfie};
use mirror::upstream::FakeUpstream;
use wharfie::blob::{FaultHook, FsOp};

const EIO: i32 = 5;
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;
const MIB: usize = 1 << 20;
/// Not an errno: the hook panics instead of failing the operation (a bug in the fill).
const PANIC: i32 = 0;

// ---------------------------------------------------------------------------------
// The hook: fail the (skip+1)th operation of one kind, once.

#[derive(Default)]
struct Plan {
    rule: Option<(FsOp, u64, i32)>,
    seen: u64,
    fired: usize,
}

#[derive(Default)]
struct Faults(Mutex<Plan>);

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fail the operation `op` after `skip` successful ones, with `errno`, once.
    fn arm(&self, op: FsOp, skip: u64, errno: i32) {
        let mut p = self.lock();
        *p = Plan { rule: Some((op, skip, errno)), seen: 0, fired: 0 };
    }

    fn disarm(&self) -> usize {
        let mut p = self.lock();
        p.rule = None;
        p.fired
    }
}

impl FaultHook for Faults {
    fn check(&self, op: FsOp) -> io::Result<()> {
        let mut p = self.lock();
        if let Some((o, skip, errno)) = p.rule {
            if o == op {
                if p.seen == skip {
                    p.rule = None;
                    p.fired += 1;
                    drop(p);
                    if errno == PANIC {
                        panic!("fault hook: a {op:?} panics on purpose");
                    }
                    return Err(io::Error::from_raw_os_error(errno));
                }
                p.seen += 1;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The server, in-process, with the hook installed.

/// The in-process server (`common::InProc`) with this suite's fault hook installed.
struct Server {
    srv: InProc,
    faults: Arc<Faults>,
}

impl Server {
    fn start(config: Option<&str>) -> Server {
        let faults = Arc::new(Faults::default());
        let hook: Arc<dyn FaultHook> = faults.clone();
        Server { srv: InProc::start_temp(config, Some(hook)), faults }
    }

    fn req(&self, method: &str, path: &str) -> reqwest::blocking::RequestBuilder {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        client().request(m, self.srv.url(path))
    }

    fn send(&self, rb: reqwest::blocking::RequestBuilder) -> Resp {
        let r = rb.send().unwrap_or_else(|e| panic!("transport error (the server must answer): {e:?}"));
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().map(|b| b.to_vec()).unwrap_or_else(|e| panic!("reading body: {e}"));
        Resp { status, headers, body }
    }

    fn staging(&self) -> usize {
        self.srv.staging_entries()
    }
}

impl std::ops::Deref for Server {
    type Target = InProc;
    fn deref(&self) -> &InProc {
        &self.srv
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut InProc {
        &mut self.srv
    }
}

fn client() -> reqwest::blocking::Client {
    http_client(Duration::from_secs(60))
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn h(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Status and OCI code of an error response (asserting a JSON body).
    fn error(&self) -> (u16, String) {
        assert_eq!(self.h("content-type"), "application/json", "error content type: {}", self.text());
        (self.status, oci_code(&self.text()))
    }
}

/// What the server must answer for a failed operation with this errno.
fn expected(errno: i32) -> (u16, String) {
    match errno {
        ENOSPC | EDQUOT => (503, "UNAVAILABLE".into()),
        _ => (500, "UNKNOWN".into()),
    }
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        EIO => "EIO",
        ENOSPC => "ENOSPC",
        EDQUOT => "EDQUOT",
        _ => "errno",
    }
}

/// The blob is not visible in `repo`: GET → 404 BLOB_UNKNOWN, HEAD → 404.
fn assert_absent(s: &Server, repo: &str, d: &str, what: &str) {
    let r = s.send(s.req("GET", &format!("/v2/{repo}/blobs/{d}")));
    assert_eq!(r.error(), (404, "BLOB_UNKNOWN".into()), "{what}: GET of the failed blob");
    let r = s.send(s.req("HEAD", &format!("/v2/{repo}/blobs/{d}")));
    assert_eq!(r.status, 404, "{what}: HEAD of the failed blob");
}

/// GET returns exactly `data`, with its digest.
fn assert_present(s: &Server, repo: &str, data: &[u8], what: &str) {
    let d = sha256(data);
    let r = s.send(s.req("GET", &format!("/v2/{repo}/blobs/{d}")));
    assert_eq!(r.status, 200, "{what}: GET {d}: {}", r.text());
    assert_eq!(r.body.len(), data.len(), "{what}: length");
    assert_eq!(sha256(&r.body), d, "{what}: bytes");
}

/// Every file under `blobs/` hashes to its own name (a failed commit may leave a
/// complete file without a row, never a partial one).
fn assert_blob_files_sound(dir: &Path, what: &str) {
    let mut stack = vec![dir.join("blobs")];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read blobs dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            n += 1;
            let bytes = std::fs::read(&p).expect("read blob file");
            let name = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            assert_eq!(
                sha256(&bytes),
                format!("sha256:{name}"),
                "{what}: blob file {} is not its content",
                p.display()
            );
        }
        assert!(n < 100_000, "runaway walk");
    }
}

fn monolithic(s: &Server, repo: &str, data: &[u8]) -> Resp {
    let d = sha256(data);
    s.send(s.req("POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}")).body(data.to_vec()))
}

fn start_session(s: &Server, repo: &str) -> String {
    let r = s.send(s.req("POST", &format!("/v2/{repo}/blobs/uploads/")));
    assert_eq!(r.status, 202, "POST session: {}", r.text());
    r.h("location").to_owned()
}

fn patch(s: &Server, loc: &str, start: usize, chunk: &[u8]) -> Resp {
    let range = format!("{start}-{}", start + chunk.len() - 1);
    s.send(
        s.req("PATCH", loc)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", range)
            .body(chunk.to_vec()),
    )
}

fn put(s: &Server, loc: &str, d: &str, last: &[u8]) -> Resp {
    let sep = if loc.contains('?') { '&' } else { '?' };
    s.send(s.req("PUT", &format!("{loc}{sep}digest={d}")).body(last.to_vec()))
}

/// The offset a session reports (`Range: 0-N` → N+1; none → 0).
fn session_offset(s: &Server, loc: &str) -> Result<u64, (u16, String)> {
    let r = s.send(s.req("GET", loc));
    if r.status != 204 {
        return Err(r.error());
    }
    let range = r.h("range");
    Ok(range.strip_prefix("0-").and_then(|e| e.parse::<u64>().ok()).map_or(0, |e| e + 1))
}

// ---------------------------------------------------------------------------------

/// (label, op, successful ops before the failing one, errno)
const MONOLITHIC_FAULTS: &[(&str, FsOp, u64, i32)] = &[
    ("first write", FsOp::Write, 0, EIO),
    ("a write mid-body", FsOp::Write, 3, EIO),
    ("a write mid-body, disk full", FsOp::Write, 3, ENOSPC),
    ("a write mid-body, quota", FsOp::Write, 1, EDQUOT),
    ("the file fsync", FsOp::Fsync, 0, EIO),
    ("the file fsync, disk full", FsOp::Fsync, 0, ENOSPC),
    ("the rename into blobs/", FsOp::Rename, 0, EIO),
    ("the directory fsync after the rename", FsOp::Fsync, 1, EIO),
];

#[test]
fn monolithic_push_faults_fail_cleanly_and_leave_nothing() {
    let s = Server::start(None);
    let repo = "faults/mono";
    let mut tried = 0;
    for (i, (label, op, skip, errno)) in MONOLITHIC_FAULTS.iter().enumerate() {
        let what = format!("monolithic 4 MiB push, {label} fails ({})", errno_name(*errno));
        let data = bytes_of(4 * MIB + i, 100 + i as u64);
        let d = sha256(&data);
        s.faults.arm(*op, *skip, *errno);
        let r = monolithic(&s, repo, &data);
        let fired = s.faults.disarm();
        assert_eq!(fired, 1, "{what}: the fault never fired (the seam is not on this path)");
        tried += fired;
        assert_eq!(r.error(), expected(*errno), "{what}: {}", r.text());
        assert_absent(&s, repo, &d, &what);
        assert_eq!(s.staging(), 0, "{what}: staging left under uploads/");
        assert_blob_files_sound(&s.dir, &what);
        // The server keeps serving: the same push, unfaulted, succeeds and verifies.
        let r = monolithic(&s, repo, &data);
        assert_eq!(r.status, 201, "{what}: the retry: {}", r.text());
        assert_present(&s, repo, &data, &what);
        assert_eq!(s.staging(), 0, "{what}: staging after the retry");
    }
    eprintln!("monolithic: {tried} faults injected, every one a clean error, every retry verified");
}

#[test]
fn chunked_patch_fault_keeps_the_session_at_its_acknowledged_offset() {
    let s = Server::start(None);
    let repo = "faults/chunked";
    let mut tried = 0;
    for (i, errno) in [EIO, ENOSPC].into_iter().enumerate() {
        let what = format!("PATCH of chunk 2 fails ({})", errno_name(errno));
        let data = bytes_of(3 * MIB, 200 + i as u64);
        let d = sha256(&data);
        let (c1, c2, c3) = (&data[..MIB], &data[MIB..2 * MIB], &data[2 * MIB..]);
        let loc = start_session(&s, repo);
        let r = patch(&s, &loc, 0, c1);
        assert_eq!(r.status, 202, "{what}: chunk 1: {}", r.text());
        let loc = r.h("location").to_owned();
        // Fail a write in the middle of chunk 2 (its body arrives in several writes).
        s.faults.arm(FsOp::Write, 2, errno);
        let r = patch(&s, &loc, MIB, c2);
        let fired = s.faults.disarm();
        assert_eq!(fired, 1, "{what}: the fault never fired");
        tried += fired;
        assert_eq!(r.error(), expected(errno), "{what}: {}", r.text());
        // The session holds exactly what was acknowledged: chunk 1.
        assert_eq!(session_offset(&s, &loc), Ok(MIB as u64), "{what}: session offset after the failure");
        assert_absent(&s, repo, &d, &what);
        // Resume: chunk 2 again, then chunk 3 with the PUT.
        let r = patch(&s, &loc, MIB, c2);
        assert_eq!(r.status, 202, "{what}: chunk 2 retried: {}", r.text());
        let loc = r.h("location").to_owned();
        let r = put(&s, &loc, &d, c3);
        assert_eq!(r.status, 201, "{what}: PUT: {}", r.text());
        assert_present(&s, repo, &data, &what);
        assert_eq!(s.staging(), 0, "{what}: staging after the commit");
    }
    eprintln!("chunked PATCH: {tried} faults injected");
}

#[test]
fn chunked_put_faults_fail_cleanly() {
    let s = Server::start(None);
    let repo = "faults/put";
    let mut tried = 0;
    // A fault while the PUT's last chunk is written: the session survives at its
    // acknowledged offset and the PUT can be retried.
    {
        let what = "PUT's last chunk write fails (EIO)";
        let data = bytes_of(2 * MIB, 300);
        let d = sha256(&data);
        let loc = start_session(&s, repo);
        let r = patch(&s, &loc, 0, &data[..MIB]);
        assert_eq!(r.status, 202, "{what}: chunk 1: {}", r.text());
        let loc = r.h("location").to_owned();
        s.faults.arm(FsOp::Write, 1, EIO);
        let r = put(&s, &loc, &d, &data[MIB..]);
        tried += s.faults.disarm();
        assert_eq!(r.error(), expected(EIO), "{what}: {}", r.text());
        assert_eq!(session_offset(&s, &loc), Ok(MIB as u64), "{what}: session offset after the failure");
        assert_absent(&s, repo, &d, what);
        let r = put(&s, &loc, &d, &data[MIB..]);
        assert_eq!(r.status, 201, "{what}: PUT retried: {}", r.text());
        assert_present(&s, repo, &data, what);
    }
    // A fault in the commit itself (fsync, rename, directory fsync): the session ends,
    // nothing is visible, and a fresh session succeeds.
    let commit_faults: &[(&str, FsOp, u64, i32)] = &[
        ("the file fsync", FsOp::Fsync, 0, EIO),
        ("the rename", FsOp::Rename, 0, EIO),
        ("the directory fsync", FsOp::Fsync, 1, ENOSPC),
    ];
    for (i, (label, op, skip, errno)) in commit_faults.iter().enumerate() {
        let what = format!("PUT, {label} fails ({})", errno_name(*errno));
        let data = bytes_of(MIB + 17, 310 + i as u64);
        let d = sha256(&data);
        let loc = start_session(&s, repo);
        let r = patch(&s, &loc, 0, &data);
        assert_eq!(r.status, 202, "{what}: chunk: {}", r.text());
        let loc = r.h("location").to_owned();
        s.faults.arm(*op, *skip, *errno);
        let r = put(&s, &loc, &d, b"");
        let fired = s.faults.disarm();
        assert_eq!(fired, 1, "{what}: the fault never fired");
        tried += fired;
        assert_eq!(r.error(), expected(*errno), "{what}: {}", r.text());
        assert_eq!(
            session_offset(&s, &loc),
            Err((404, "BLOB_UPLOAD_UNKNOWN".into())),
            "{what}: a failed commit ends the session"
        );
        assert_absent(&s, repo, &d, &what);
        assert_eq!(s.staging(), 0, "{what}: staging left behind");
        assert_blob_files_sound(&s.dir, &what);
        let loc = start_session(&s, repo);
        let r = put(&s, &loc, &d, &data);
        assert_eq!(r.status, 201, "{what}: a new session: {}", r.text());
        assert_present(&s, repo, &data, &what);
    }
    eprintln!("chunked PUT: {tried} faults injected");
}

/// A commit that fails after its rename leaves a complete file without a row; the
/// next startup removes it (and every staging area and lease of the failed run).
#[test]
fn a_rowless_blob_file_left_by_a_failed_commit_is_removed_at_startup() {
    let mut s = Server::start(None);
    let repo = "faults/orphan";
    let data = bytes_of(2 * MIB, 600);
    let d = sha256(&data);
    let kept = bytes_of(1000, 601);
    assert_eq!(monolithic(&s, repo, &kept).status, 201, "push of the blob that stays");
    s.faults.arm(FsOp::Fsync, 1, EIO); // the directory fsync, after the rename
    let r = monolithic(&s, repo, &data);
    assert_eq!(s.faults.disarm(), 1, "the fault never fired");
    assert_eq!(r.error(), expected(EIO), "{}", r.text());
    assert_absent(&s, repo, &d, "after the failed commit");
    assert_eq!(count_files(&s.dir.join("blobs")), 2, "the renamed file is there, without a row");
    s.shutdown();
    let w = Wharfie::start_in(&s.dir, &[]);
    assert_eq!(w.blob_files(), 1, "startup removed the rowless blob file and kept the committed one");
    assert_eq!(w.staging_entries(), 0, "staging after startup");
    let r = client().get(w.url(&format!("/v2/{repo}/blobs/{}", sha256(&kept)))).send().expect("GET");
    assert_eq!(r.status().as_u16(), 200, "the committed blob survives");
    assert_eq!(r.bytes().expect("body").as_ref(), &kept[..]);
}

#[test]
fn mirror_fill_faults_are_not_cached_and_the_next_pull_fills() {
    let up = FakeUpstream::start();
    let cfg = format!("[[upstreams]]\nname = \"up.example\"\nurl = \"{}\"\ntimeout = \"10s\"\n", up.url());
    let s = Server::start(Some(&cfg));
    let mut tried = 0;
    let faults: &[(&str, FsOp, u64, i32)] = &[
        ("a write mid-fill", FsOp::Write, 2, EIO),
        ("a write mid-fill, disk full", FsOp::Write, 2, ENOSPC),
        ("the fill's fsync", FsOp::Fsync, 0, EIO),
        ("the fill's rename", FsOp::Rename, 0, EIO),
    ];
    for (i, (label, op, skip, errno)) in faults.iter().enumerate() {
        let what = format!("mirror fill, {label} fails ({})", errno_name(*errno));
        let data = bytes_of(3 * MIB, 400 + i as u64);
        let d = up.add_blob(data.clone());
        let path = format!("/v2/up.example/library/app/blobs/{d}");
        s.faults.arm(*op, *skip, *errno);
        // Read the whole answer before looking at the hook: the fill runs detached and
        // may still be writing when the headers arrive.
        let got = client().get(format!("{}{path}", s.base)).send().map(|r| {
            let status = r.status().as_u16();
            (status, r.bytes().map(|b| b.to_vec()))
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.staging() != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let fired = s.faults.disarm();
        assert_eq!(fired, 1, "{what}: the fault never fired");
        tried += fired;
        // Either an error status with an OCI body, or a 200 whose body is cut short:
        // never a complete 200 for a fill that did not commit.
        match got {
            Ok((200, body)) => {
                let complete = body.as_ref().is_ok_and(|b| b.len() == data.len());
                assert!(!complete, "{what}: a complete 200 body for a fill that failed");
            }
            Ok((status, body)) => {
                let text = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
                assert!(status >= 500, "{what}: status {status}: {text}");
                assert!(!oci_code(&text).is_empty(), "{what}: OCI body");
            }
            Err(_) => {} // the connection was aborted: a clean failure for a client
        }
        assert_eq!(s.staging(), 0, "{what}: the failed fill's staging stayed");
        assert_blob_files_sound(&s.dir, &what);
        let r = s.send(s.req("GET", &path));
        assert_eq!(r.status, 200, "{what}: the next pull: {}", r.text());
        assert_eq!(sha256(&r.body), d, "{what}: the next pull's bytes");
    }
    eprintln!("mirror fills: {tried} faults injected");
}

/// A fill whose task panics mid-download (the hook panics in its writer, which panics
/// the fill task): the client gets an error, never a complete body; the flight's guard
/// frees the digest, so the next pull starts a new fill and succeeds (no "task was
/// lost" for ever); and the fill lease is released.
#[test]
fn a_panicking_fill_frees_its_digest_and_the_next_pull_fills() {
    let up = FakeUpstream::start();
    let cfg = format!("[[upstreams]]\nname = \"up.example\"\nurl = \"{}\"\ntimeout = \"10s\"\n", up.url());
    let mut s = Server::start(Some(&cfg));
    let data = bytes_of(3 * MIB, 777);
    let d = up.add_blob(data.clone());
    let path = format!("/v2/up.example/library/app/blobs/{d}");
    s.faults.arm(FsOp::Write, 2, PANIC);
    let got = client().get(format!("{}{path}", s.base)).send().map(|r| {
        let status = r.status().as_u16();
        (status, r.bytes().map(|b| b.to_vec()))
    });
    assert_eq!(s.faults.disarm(), 1, "the panic never fired");
    match got {
        Ok((200, body)) => {
            let complete = body.as_ref().is_ok_and(|b| b.len() == data.len());
            assert!(!complete, "a complete 200 body for a fill that panicked");
        }
        Ok((status, body)) => {
            let text = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
            assert_eq!((status, oci_code(&text).as_str()), (500, "UNKNOWN"), "{text}");
        }
        Err(_) => {} // the connection was aborted: a clean failure for a client
    }
    // The next pulls start a new fill (bounded: the first must already succeed).
    for attempt in 0..2 {
        let r = s.send(s.req("GET", &path));
        assert_eq!(r.status, 200, "pull {attempt} after the panic: {}", r.text());
        assert_eq!(sha256(&r.body), d, "pull {attempt} after the panic: bytes");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.staging() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.staging(), 0, "the panicked fill's staging stayed");
    assert_blob_files_sound(&s.dir, "after a panicked fill");
    s.shutdown();
    let meta = wharfie::meta::Meta::open(&s.dir.join("meta.redb")).expect("open meta after the stop");
    let leases = meta.leases().expect("leases");
    assert!(leases.is_empty(), "leases held after the fills ended: {leases:?}");
}

// ---------------------------------------------------------------------------------
// A real full filesystem.

/// A tmpfs of `size` mounted on a fresh temp dir, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("fs");
        std::fs::create_dir(&path).expect("mountpoint");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount ({e}): apt-get install -y mount"));
        assert!(
            out.status.success(),
            "mount -t tmpfs -o size={size} failed: {} — this test needs root (CAP_SYS_ADMIN) to mount a \
             small filesystem; run the suite as root",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path, _tmp: tmp }
    }

    /// Bytes free.
    fn avail(&self) -> u64 {
        let c = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct we own.
        unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0, "statvfs");
            st.f_bavail * st.f_frsize
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn a_full_real_filesystem_fails_the_upload_cleanly_and_recovers() {
    let fs = Tmpfs::mount("24m");
    let dir = fs.path.join("data");
    let mut w = Wharfie::start_in(&dir, &[]);
    let http = client();
    let repo = "faults/full";
    let free_at_start = fs.avail();

    // 1. A monolithic push larger than the disk.
    let big = bytes_of(32 * MIB, 500);
    let d = sha256(&big);
    let r = http.post(w.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}"))).body(big.clone()).send();
    let r = r.unwrap_or_else(|e| {
        panic!("monolithic push onto a full disk: transport error, not an OCI error: {e:?}")
    });
    let status = r.status().as_u16();
    let text = r.text().unwrap_or_default();
    assert_eq!((status, oci_code(&text)), (503, "UNAVAILABLE".into()), "push onto a full disk: {text}");
    assert!(text.contains("no space"), "the message says the disk is full: {text}");
    let r = http.get(w.url(&format!("/v2/{repo}/blobs/{d}"))).send().expect("GET");
    assert_eq!(r.status().as_u16(), 404, "the too-large blob is not visible");
    assert_eq!(w.staging_entries(), 0, "staging of the failed push left on the full disk");
    assert_eq!(count_files(&dir.join("blobs")), 0, "a blob file after the failed push");
    let free = fs.avail();
    assert!(free + MIB as u64 >= free_at_start, "space came back: {free} of {free_at_start} free");

    // 2. A chunked upload that runs out of space in its third chunk.
    let chunk = 8 * MIB;
    let data = bytes_of(4 * chunk, 501);
    let loc = http.post(w.url(&format!("/v2/{repo}/blobs/uploads/"))).send().expect("POST");
    assert_eq!(loc.status().as_u16(), 202);
    let mut loc = loc.headers()["location"].to_str().expect("location").to_owned();
    let mut full_at = None;
    for (k, c) in data.chunks(chunk).enumerate() {
        let url = if loc.starts_with("http") { loc.clone() } else { w.url(&loc) };
        let r = http
            .patch(url)
            .header("Content-Range", format!("{}-{}", k * chunk, k * chunk + c.len() - 1))
            .header("Content-Type", "application/octet-stream")
            .body(c.to_vec())
            .send()
            .unwrap_or_else(|e| panic!("PATCH {k} onto a filling disk: transport error: {e:?}"));
        let status = r.status().as_u16();
        if status == 202 {
            loc = r.headers()["location"].to_str().expect("location").to_owned();
            continue;
        }
        let text = r.text().unwrap_or_default();
        assert_eq!((status, oci_code(&text)), (503, "UNAVAILABLE".into()), "PATCH {k}: {text}");
        full_at = Some(k);
        break;
    }
    let k = full_at.expect("32 MiB of chunks fitted on a 24 MiB filesystem");
    assert!(k >= 1, "the first 8 MiB chunk should fit");
    let url = if loc.starts_with("http") { loc.clone() } else { w.url(&loc) };
    let r = http.get(&url).send().expect("GET session");
    assert_eq!(r.status().as_u16(), 204, "the session survives a full disk");
    let range = r.headers().get("range").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!(range, format!("0-{}", k * chunk - 1), "the session keeps exactly its acknowledged chunks");
    // Free the space: cancel the session.
    let r = http.delete(&url).send().expect("DELETE session");
    assert_eq!(r.status().as_u16(), 204, "DELETE session");
    assert_eq!(w.staging_entries(), 0, "staging after the cancel");

    // 3. Recovery: a push that fits succeeds and verifies, across a restart too.
    let ok = bytes_of(6 * MIB, 502);
    let od = sha256(&ok);
    let r = http
        .post(w.url(&format!("/v2/{repo}/blobs/uploads/?digest={od}")))
        .body(ok.clone())
        .send()
        .expect("push");
    assert_eq!(r.status().as_u16(), 201, "a push that fits, after the space came back");
    w.stop();
    let w = Wharfie::start_in(&dir, &[]);
    let r = http.get(w.url(&format!("/v2/{repo}/blobs/{od}"))).send().expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(sha256(&r.bytes().expect("body")), od, "bytes after the restart");
    eprintln!("full filesystem: 24 MiB tmpfs, 32 MiB push refused with 503, chunk {k} refused, recovered");
}
