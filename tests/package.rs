//! The Debian package, end to end on this machine: `cargo deb --no-build` packs the
//! release binary this `cargo test --release` run just built; `dpkg-deb` shows what is
//! inside; `dpkg -i` installs it for real (system user, state directory, conffile,
//! unit enabled); `systemd-analyze verify` checks the installed unit; the installed
//! binary serves a push and a pull under the unit's ExecStart, user and privilege
//! limits; a reinstall keeps an edited conffile and the data; `dpkg -r` keeps
//! configuration and data; `dpkg -P` removes both and keeps the user.
//!
//! There is no systemd as PID 1 here, so the unit is never started: the maintainer
//! scripts' deb-systemd-invoke calls are skipped ([ -d /run/systemd/system ]), and the
//! server runs under setpriv/prlimit with the unit's User=, NoNewPrivileges=,
//! CapabilityBoundingSet=, LimitNOFILE= and UMask= instead. tests/systemd.rs checks the
//! rest of the sandbox.
//!
//! Runs as root and changes the machine (as CI does): it installs and purges the
//! package `wharfie` and leaves the system user `wharfie`. It refuses to touch a
//! wharfie package or /var/lib/wharfie that it did not install itself.
//!
//! Needs cargo-deb (`cargo install cargo-deb --locked`), dpkg and dpkg-dev
//! (dpkg-shlibdeps), binutils (strip, objcopy, readelf), systemd (systemd-analyze) and
//! util-linux (setpriv, prlimit).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::oci;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::{bytes_of, require, Wharfie};
use oci::*;
use serde_json::json;

const PKG: &str = "wharfie";
const BIN: &str = "/usr/bin/wharfie";
const CONF: &str = "/etc/wharfie/wharfie.toml";
const STATE: &str = "/var/lib/wharfie";
const UNIT_DIRS: [&str; 2] = ["/usr/lib/systemd/system", "/lib/systemd/system"];
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/wharfie.service";
const MASK: &str = "/etc/systemd/system/wharfie.service";
/// Written right after `dpkg -i`: a package or state directory with this file in it
/// was installed by this test, and a later run may purge it.
const MARKER: &str = "/var/lib/wharfie/.installed-by-wharfie-package-test";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run to completion with stdin closed; panics with the output if it fails.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", show(&out));
    out
}

fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn preflight() {
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "tests/package.rs installs a .deb with dpkg -i: run it as root (CI does)");
    for (tool, package) in [
        ("dpkg", "dpkg"),
        ("dpkg-deb", "dpkg"),
        ("dpkg-query", "dpkg"),
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("strip", "binutils"),
        ("readelf", "binutils"),
        ("systemd-analyze", "systemd"),
        ("setpriv", "util-linux"),
        ("prlimit", "util-linux"),
        ("getent", "libc-bin"),
    ] {
        require(tool, package);
    }
    let v = cargo().args(["deb", "--version"]).stdin(Stdio::null()).output();
    assert!(
        v.as_ref().is_ok_and(|o| o.status.success()),
        "cargo-deb is not installed: cargo install cargo-deb --locked ({})",
        v.map(|o| show(&o)).unwrap_or_else(|e| e.to_string())
    );
}

/// `${db:Status-Abbrev}` of the package (`ii `, `rc `, ...), None when dpkg has never
/// heard of it or has forgotten it.
fn dpkg_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", PKG])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run dpkg-query");
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty() && !s.starts_with("un")).then_some(s)
}

/// Purge what an earlier, interrupted run of this test left; refuse anything else.
fn clean_leftovers() {
    let ours = Path::new(MARKER).exists();
    if let Some(status) = dpkg_status() {
        assert!(
            ours,
            "the package wharfie is on this machine (dpkg status {status:?}) and this test did not \
             install it: refusing to purge it (and {STATE}). `dpkg -P wharfie` first if it is disposable"
        );
        eprintln!("purging the wharfie package an earlier run left (status {status:?})");
        run(Command::new("dpkg").args(["--purge", PKG]));
    }
    if Path::new(STATE).exists() {
        assert!(
            Path::new(MARKER).exists(),
            "{STATE} exists and this test did not create it: refusing to go on, since purging \
             the package deletes it. Move it away first"
        );
        std::fs::remove_dir_all(STATE).expect("remove the earlier run's state directory");
    }
}

/// Purges the package when the test ends early (the server, a `Wharfie`, is dropped
/// before this: declare it after).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if std::thread::panicking() && Path::new(MARKER).exists() && dpkg_status().is_some() {
            let _ = Command::new("dpkg").args(["--purge", PKG]).stdin(Stdio::null()).status();
        }
    }
}

/// Entries of `dpkg-deb -c`: (mode string, owner, path without the leading `.`).
fn deb_contents(deb: &Path) -> Vec<(String, String, String)> {
    let text = stdout_of(Command::new("dpkg-deb").arg("-c").arg(deb));
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6)
                .then(|| (f[0].to_string(), f[1].to_string(), f[5].trim_start_matches('.').to_string()))
        })
        .collect()
}

fn deb_field(deb: &Path, field: &str) -> String {
    stdout_of(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field)).trim().to_string()
}

fn build_deb(out_dir: &Path) -> PathBuf {
    // `cargo test --release` has just built target/release/wharfie (CARGO_BIN_EXE_wharfie)
    // for the integration tests; --no-build packs exactly that binary. A `cargo build
    // --release` here would relink it with different dependency features (tests unify
    // dev-dependency features) for minutes.
    let bin = Path::new(env!("CARGO_BIN_EXE_wharfie"));
    assert!(bin.exists(), "{} is missing", bin.display());
    let t = Instant::now();
    run(cargo()
        .args(["deb", "--no-build", "--output"])
        .arg(out_dir)
        .arg("--manifest-path")
        .arg(manifest_dir().join("Cargo.toml"))
        .current_dir(manifest_dir()));
    eprintln!("measure: cargo deb --no-build took {:.1?}", t.elapsed());
    let mut debs: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .expect("read cargo deb's output directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "expected one .deb in {}: {debs:?}", out_dir.display());
    debs.remove(0)
}

fn check_contents(deb: &Path) {
    let entries = deb_contents(deb);
    let files: Vec<(&str, &str, &str)> = entries
        .iter()
        .filter(|(mode, _, _)| !mode.starts_with('d'))
        .map(|(m, o, p)| (m.as_str(), o.as_str(), p.as_str()))
        .collect();
    let expected = [
        ("-rwxr-xr-x", "root/root", BIN),
        ("-rw-r--r--", "root/root", CONF),
        ("-rw-r--r--", "root/root", "/usr/lib/systemd/system/wharfie.service"),
        ("-rw-r--r--", "root/root", "/usr/share/doc/wharfie/README.md"),
        ("-rw-r--r--", "root/root", "/usr/share/doc/wharfie/copyright"),
        ("-rw-r--r--", "root/root", "/usr/share/doc/wharfie/examples/haproxy/wharfie-cluster.cfg"),
    ];
    let mut got: Vec<(&str, &str, &str)> =
        files.iter().map(|&(m, o, p)| (m, if o == "0/0" { "root/root" } else { o }, p)).collect();
    got.sort_by_key(|e| e.2);
    let mut want = expected.to_vec();
    want.sort_by_key(|e| e.2);
    assert_eq!(got, want, "the files in the .deb (mode, owner, path)");

    assert_eq!(deb_field(deb, "Package"), PKG);
    assert_eq!(deb_field(deb, "Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    let depends = deb_field(deb, "Depends");
    assert!(depends.contains("libc6 (>="), "Depends without dpkg-shlibdeps' libc6: {depends}");
    assert!(depends.contains("adduser | passwd"), "Depends without the user tools postinst runs: {depends}");
    // A cluster runs behind HAProxy, one node does not: suggested, never a dependency.
    assert!(!depends.contains("haproxy"), "haproxy must not be a dependency: {depends}");
    assert_eq!(deb_field(deb, "Suggests"), "haproxy");

    let ctrl = tempfile::tempdir().expect("tempdir");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(ctrl.path()));
    let read = |name: &str| {
        std::fs::read_to_string(ctrl.path().join(name)).unwrap_or_else(|e| panic!("control {name}: {e}"))
    };
    assert_eq!(read("conffiles"), format!("{CONF}\n"));
    for script in ["postinst", "prerm", "postrm"] {
        let text = read(script);
        let path = ctrl.path().join(script);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o755, 0o755, "{script} is not executable ({mode:o})");
        run(Command::new("sh").arg("-n").arg(&path));
        assert!(!text.contains("#DEBHELPER#"), "{script} still has the debhelper marker:\n{text}");
        assert_eq!(
            text.matches("# Automatically added by cargo-deb").count(),
            if script == "prerm" { 1 } else { 2 },
            "{script}: the generated systemd blocks should appear once each:\n{text}"
        );
    }
    let postinst = read("postinst");
    for needle in [
        "deb-systemd-helper enable wharfie.service",
        "if [ -d /run/systemd/system ]; then",
        "deb-systemd-invoke $_dh_action wharfie.service",
    ] {
        assert!(postinst.contains(needle), "postinst lacks {needle:?}:\n{postinst}");
    }
    assert!(read("prerm").contains("deb-systemd-invoke stop wharfie.service"));
    let postrm = read("postrm");
    assert!(postrm.contains("deb-systemd-helper mask wharfie.service"));
    assert!(postrm.contains("deb-systemd-helper purge wharfie.service"));

    // Stripped: the symbols go to the -dbgsym .ddeb (Cargo.toml: dbgsym = true).
    let x = tempfile::tempdir().expect("tempdir");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(x.path()));
    let sections =
        stdout_of(Command::new("readelf").arg("-S").arg("-W").arg(x.path().join("usr/bin/wharfie")));
    for debug in [".debug_info", ".debug_line", ".symtab"] {
        assert!(!sections.contains(debug), "/usr/bin/wharfie in the .deb still has {debug}:\n{sections}");
    }
    assert!(
        sections.contains(".gnu_debuglink"),
        "/usr/bin/wharfie does not point at its debug file:\n{sections}"
    );
    let build_id = |bin: &Path| {
        let notes = stdout_of(Command::new("readelf").arg("-n").arg(bin));
        notes
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID:").map(|id| id.trim().to_string()))
            .unwrap_or_else(|| panic!("no build id in {}", bin.display()))
    };
    assert_eq!(
        build_id(&x.path().join("usr/bin/wharfie")),
        build_id(Path::new(env!("CARGO_BIN_EXE_wharfie"))),
        "the .deb packs another binary than the one cargo test built"
    );
    let ddeb = deb.with_file_name(format!(
        "{PKG}-dbgsym_{}-1_{}.ddeb",
        env!("CARGO_PKG_VERSION"),
        deb_field(deb, "Architecture")
    ));
    assert!(ddeb.exists(), "no {} next to the .deb", ddeb.display());
}

fn passwd_entry(user: &str) -> Option<Vec<String>> {
    let out =
        Command::new("getent").args(["passwd", user]).stdin(Stdio::null()).output().expect("run getent");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().split(':').map(str::to_string).collect())
}

fn installed_unit() -> PathBuf {
    UNIT_DIRS
        .iter()
        .map(|d| Path::new(d).join("wharfie.service"))
        .find(|p| p.exists())
        .expect("no wharfie.service under /usr/lib/systemd/system after dpkg -i")
}

/// The ExecStart= command line of the installed unit, split on whitespace (it has no
/// quoting).
fn exec_start(unit: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(unit).expect("read the installed unit");
    let line =
        text.lines().find_map(|l| l.trim().strip_prefix("ExecStart=")).expect("the unit has no ExecStart=");
    line.split_whitespace().map(str::to_string).collect()
}

/// The unit's LimitNOFILE=, or this process's hard limit if that is lower: raising it
/// takes CAP_SYS_RESOURCE, which a container may not have (systemd has it).
fn nofile_limit() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    assert_eq!(rc, 0, "getrlimit(RLIMIT_NOFILE)");
    65536.min(r.rlim_max)
}

/// Like the unit: User=wharfie, NoNewPrivileges=, CapabilityBoundingSet= (empty),
/// LimitNOFILE= (see nofile_limit), UMask=0027, WorkingDirectory / and a clean
/// environment.
fn as_the_service(args: &[String]) -> Command {
    let n = nofile_limit();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 0027 && exec \"$@\"", "sh", "prlimit", &format!("--nofile={n}:{n}"), "setpriv"])
        .args(["--reuid=wharfie", "--regid=wharfie", "--init-groups", "--no-new-privs"])
        .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("RUST_LOG", "warn")
        .current_dir("/");
    cmd
}

fn proc_status_field(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        }
        out.push(p);
    }
}

fn smoke(unit: &Path, wharfie_uid: u32) {
    let mut args = exec_start(unit);
    assert_eq!(args.first().map(String::as_str), Some(BIN), "ExecStart= runs something else: {args:?}");
    // The configured 127.0.0.1:5000 may be taken on a shared machine.
    args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    let mut w = Wharfie::from_command(as_the_service(&args), Path::new(STATE));
    let pid = w.pid().expect("server pid");
    assert_eq!(
        proc_status_field(pid, "Uid").split_whitespace().next(),
        Some(wharfie_uid.to_string().as_str())
    );
    assert_eq!(proc_status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status_field(pid, "CapBnd"), "0000000000000000");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let n = nofile_limit();
    if n < 65536 {
        eprintln!("note: the hard open-file limit here is {n}, below the unit's LimitNOFILE=65536");
    }
    let open_files =
        limits.lines().find(|l| l.starts_with("Max open files")).expect("no Max open files limit");
    assert_eq!(open_files.split_whitespace().nth(3), Some(n.to_string().as_str()), "{open_files}");

    // Push: config and layer monolithically, then the manifest; pull all back.
    let api = Api::new(&w);
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = bytes_of(256 * 1024 + 7, 42);
    let config = Desc::new(OCI_CONFIG, cfg);
    let l = Desc::new(OCI_LAYER, &layer);
    assert_eq!(api.push_blob("smoke/pkg", cfg), config.digest);
    assert_eq!(api.push_blob("smoke/pkg", &layer), l.digest);
    let m = image_manifest(OCI_MANIFEST, &config, std::slice::from_ref(&l), json!({}));
    let md = api.push_manifest("smoke/pkg", "v1", OCI_MANIFEST, &m);
    let g = api.send(api.req("GET", "/v2/smoke/pkg/manifests/v1").header("Accept", OCI_MANIFEST));
    g.expect_status(200);
    assert_eq!(g.body, m, "manifest bytes differ");
    assert_eq!(g.h("Docker-Content-Digest"), Some(md.as_str()));
    let b = api.get(&format!("/v2/smoke/pkg/blobs/{}", l.digest));
    b.expect_status(200);
    assert!(b.body == layer, "layer bytes differ");
    assert_eq!(api.get(&format!("/v2/smoke/pkg/blobs/{}", config.digest)).body, cfg);

    assert_eq!(w.stop(), Some(0), "the installed server did not exit 0 on SIGTERM");
    // Everything it wrote is the service user's, and not readable by others (UMask=).
    let mut written = Vec::new();
    files_under(Path::new(STATE), &mut written);
    written.retain(|p| p != Path::new(MARKER));
    assert!(written.iter().any(|p| p.ends_with("meta.redb")), "no meta.redb in {STATE}: {written:?}");
    for p in &written {
        let md = std::fs::metadata(p).expect("stat");
        assert_eq!(md.uid(), wharfie_uid, "{} is not owned by wharfie", p.display());
        assert_eq!(md.mode() & 0o007, 0, "{} is accessible to others ({:o})", p.display(), md.mode());
    }
}

#[test]
fn deb_builds_installs_serves_upgrades_removes_and_purges() {
    preflight();
    clean_leftovers();

    let out = tempfile::tempdir().expect("tempdir");
    let deb = build_deb(out.path());
    let deb_size = std::fs::metadata(&deb).expect("stat .deb").len();
    check_contents(&deb);

    // Install.
    let user_before = passwd_entry("wharfie").is_some();
    let t = Instant::now();
    let installed = Command::new("dpkg")
        .args(["--force-confdef", "--force-confold", "-i"])
        .arg(&deb)
        .stdin(Stdio::null())
        .output()
        .expect("run dpkg -i");
    let install_time = t.elapsed();
    let _guard = Installed;
    if Path::new(STATE).is_dir() {
        std::fs::write(MARKER, b"").expect("write the marker");
    }
    assert!(installed.status.success(), "dpkg -i failed: {}", show(&installed));
    assert_eq!(dpkg_status().as_deref(), Some("ii"));

    let user = passwd_entry("wharfie").expect("postinst created no user wharfie");
    let uid: u32 = user[2].parse().expect("uid");
    assert!(uid < 1000, "wharfie is not a system user (uid {uid})");
    assert_eq!(user[5], STATE, "home");
    assert_eq!(user[6], "/usr/sbin/nologin", "shell");
    let state = std::fs::metadata(STATE).expect("postinst created no /var/lib/wharfie");
    assert_eq!((state.uid(), state.mode() & 0o7777), (uid, 0o750), "{STATE} owner and mode");
    let shipped =
        std::fs::read(manifest_dir().join("packaging/wharfie.toml")).expect("read packaging/wharfie.toml");
    assert_eq!(std::fs::read(CONF).expect("read the installed config"), shipped);
    let conffiles = stdout_of(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PKG]));
    assert!(conffiles.contains(CONF), "dpkg does not list {CONF} as a conffile: {conffiles}");
    let version = stdout_of(Command::new(BIN).arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{BIN} --version: {version}");

    // The unit: installed, enabled (deb-systemd-helper works without a running
    // systemd), and clean under systemd-analyze verify with the binary in place.
    let unit = installed_unit();
    let wants = std::fs::read_link(WANTS).unwrap_or_else(|e| panic!("{WANTS} (enablement symlink): {e}"));
    assert!(wants.ends_with("wharfie.service"), "{WANTS} -> {}", wants.display());
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    assert!(verify.status.success(), "systemd-analyze verify {}: {}", unit.display(), show(&verify));
    assert!(
        verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify warned: {}",
        show(&verify)
    );

    // The installed binary with the installed configuration, as the service user.
    let check = stdout_of(&mut as_the_service(&[
        BIN.into(),
        "config".into(),
        "check".into(),
        "--config".into(),
        CONF.into(),
    ]));
    assert!(check.contains("data_dir = \"/var/lib/wharfie\""), "config check: {check}");
    smoke(&unit, uid);

    // Upgrade path (postinst configure <old-version>): an edited conffile and the data
    // survive a reinstall.
    let mut edited = shipped.clone();
    edited.extend_from_slice(b"\n# edited by tests/package.rs\n");
    std::fs::write(CONF, &edited).expect("edit the conffile");
    let blobs_before = common::count_files(&Path::new(STATE).join("blobs"));
    assert!(blobs_before >= 2, "no blobs in {STATE} after the smoke push");
    run(Command::new("dpkg").args(["--force-confdef", "--force-confold", "-i"]).arg(&deb));
    assert_eq!(std::fs::read(CONF).expect("read conffile"), edited, "reinstall replaced the edited conffile");
    assert_eq!(common::count_files(&Path::new(STATE).join("blobs")), blobs_before);

    // Remove: program gone, configuration and data kept, unit masked.
    let t = Instant::now();
    run(Command::new("dpkg").args(["--remove", PKG]));
    let remove_time = t.elapsed();
    assert_eq!(dpkg_status().as_deref(), Some("rc"));
    assert!(!Path::new(BIN).exists(), "{BIN} is still there after dpkg -r");
    assert!(!unit.exists(), "{} is still there after dpkg -r", unit.display());
    assert!(Path::new(CONF).exists(), "dpkg -r removed the conffile");
    assert_eq!(
        common::count_files(&Path::new(STATE).join("blobs")),
        blobs_before,
        "dpkg -r touched the data"
    );
    assert_eq!(
        std::fs::read_link(MASK).ok(),
        Some(PathBuf::from("/dev/null")),
        "dpkg -r did not mask the unit"
    );

    // Purge: configuration, data, enablement and mask gone; the user stays.
    let t = Instant::now();
    run(Command::new("dpkg").args(["--purge", PKG]));
    let purge_time = t.elapsed();
    assert_eq!(dpkg_status(), None);
    for gone in ["/etc/wharfie", STATE, WANTS, MASK] {
        assert!(std::fs::symlink_metadata(gone).is_err(), "{gone} is still there after dpkg -P");
    }
    assert!(passwd_entry("wharfie").is_some(), "purge removed the user wharfie (it should stay)");

    eprintln!(
        "measure: .deb {} bytes ({:.1} MiB); dpkg -i {:.2?} (user existed before: {user_before}); dpkg -r {:.2?}; dpkg -P {:.2?}",
        deb_size,
        deb_size as f64 / 1048576.0,
        install_time,
        remove_time,
        purge_time
    );
}
