//! The Docker daemon (Debian's docker.io, dockerd 20.10, with the docker CLI) against
//! wharfie: push, `rmi`, pull and run of a hosted image; a second repository with the same
//! layers (Docker's HEAD → mount path); `docker login` with htpasswd (Basic) and with
//! Bearer tokens (scoped, anonymous pulls included); and the daemon's `registry-mirrors`
//! with a `default = true` docker.io upstream (Debian's docker-registry on loopback), the
//! daemon configured with the `daemon.json` that `wharfie client-config` prints.
//!
//! Each test starts its own dockerd (its own data, exec root, socket and containerd, vfs
//! storage, no bridge and no iptables) in a short temp dir, stopped by pid on drop even
//! when the test fails. The image is a static busybox (`/bin/busybox`, busybox-static),
//! `docker import`ed, run with `--network none`. A dockerd that cannot start fails the
//! test with its log: CI runs as root, where it works.
//!
//! The tests run one at a time (a lock): each daemon unpacks images with vfs, and the
//! machine has two cores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{require, Wharfie};
use mirror::real::ReferenceRegistry;

/// Wall-clock limit of one docker CLI command.
const DOCKER_TIMEOUT_SECS: u32 = 180;

/// One dockerd at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a docker command did.
struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// A dockerd of our own, stopped (SIGTERM, then SIGKILL) on drop.
struct Dockerd {
    tmp: tempfile::TempDir,
    child: Option<Child>,
    host: String,
}

impl Dockerd {
    /// Start dockerd with `extra` flags and wait (60 s at most) until it answers.
    fn start(extra: &[String]) -> Dockerd {
        let bin = require("dockerd", "docker.io");
        require("docker", "docker.io");
        require("timeout", "coreutils");
        // Unix socket paths are limited to 108 bytes: keep the dir short.
        let tmp = tempfile::Builder::new().prefix("wd").tempdir_in("/tmp").expect("tempdir");
        let t = tmp.path();
        let d = |p: &str| t.join(p).display().to_string();
        std::fs::create_dir_all(t.join("cfg")).expect("mkdir");
        let log = std::fs::File::create(t.join("dockerd.log")).expect("log");
        let host = format!("unix://{}", d("docker.sock"));
        let mut cmd = Command::new(bin);
        cmd.args(["--data-root", &d("data"), "--exec-root", &d("exec"), "--pidfile", &d("docker.pid")])
            .args(["--host", &host, "--storage-driver", "vfs", "--iptables=false", "--ip6tables=false"])
            .args(["--bridge=none"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start dockerd: {e}"));
        let mut me = Dockerd { tmp, child: Some(child), host };
        let deadline = Instant::now() + Duration::from_secs(60);
        for n in 0.. {
            if let Some(Ok(Some(st))) = me.child.as_mut().map(Child::try_wait) {
                panic!(
                    "dockerd exited at startup ({st}); it needs root (CI runs as root). Its log:\n{}",
                    me.log_tail()
                );
            }
            let out = me.docker(&["info", "--format", "{{.ServerVersion}}"]);
            if out.ok {
                break;
            }
            assert!(
                n < 600 && Instant::now() < deadline,
                "dockerd did not answer in 60 s ({}); its log:\n{}",
                out.stderr.trim(),
                me.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The last 60 lines of dockerd's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// `docker ARGS` with this daemon and a private client config dir, `stdin` fed in.
    fn docker_in(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let started = Instant::now();
        let mut child = Command::new("timeout")
            .args(["-k", "10", &DOCKER_TIMEOUT_SECS.to_string(), "docker"])
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.dir().join("cfg"))
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CONTEXT")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run docker: {e}"));
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().expect("docker output");
        let o = Out {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        };
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("$ docker {} ({:?})\n{}{}", args.join(" "), o.took, o.stdout, o.stderr);
        }
        if o.code == Some(124) || o.code == Some(137) {
            panic!(
                "`docker {}` timed out\n{}{}\n--- dockerd log\n{}",
                args.join(" "),
                o.stdout,
                o.stderr,
                self.log_tail()
            );
        }
        o
    }

    fn docker(&self, args: &[&str]) -> Out {
        self.docker_in(args, None)
    }

    /// `docker ARGS`; panics with its output and dockerd's log unless it succeeds.
    fn ok(&self, args: &[&str]) -> Out {
        let o = self.docker(args);
        if !o.ok {
            panic!(
                "`docker {}` failed (exit {:?})\n--- stdout\n{}\n--- stderr\n{}\n--- dockerd log\n{}",
                args.join(" "),
                o.code,
                o.stdout,
                o.stderr,
                self.log_tail()
            );
        }
        o
    }

    /// `docker login -u USER --password-stdin HOST`.
    fn login(&self, host: &str, user: &str, password: &str) -> Out {
        self.docker_in(&["login", "-u", user, "--password-stdin", host], Some(&format!("{password}\n")))
    }

    /// A one-layer image `name` holding a static busybox (`docker import`).
    fn import_busybox(&self, name: &str) {
        let busybox = Path::new("/bin/busybox");
        assert!(busybox.is_file(), "/bin/busybox not found: apt-get install -y busybox-static");
        let root = self.dir().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
        let tarball = self.dir().join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(st.success(), "tar of the busybox root failed");
        self.ok(&["import", &tarball.display().to_string(), name]);
    }

    /// `docker run --rm --network none IMAGE /bin/busybox echo ok` prints ok.
    fn run_echo(&self, image: &str) {
        let o = self.ok(&["run", "--rm", "--network", "none", image, "/bin/busybox", "echo", "ok"]);
        assert_eq!(o.stdout.trim(), "ok", "{}", o.stderr);
    }

    /// Remove these tags; the image goes when its last tag does.
    fn rmi(&self, images: &[&str]) {
        let mut args = vec!["rmi"];
        args.extend_from_slice(images);
        self.ok(&args);
        for i in images {
            assert!(!self.docker(&["image", "inspect", i]).ok, "{i} is still there after rmi");
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its containerd goes with it; if dockerd was killed, stop that one by its pid.
        let pidfile = self.dir().join("exec/containerd/containerd.pid");
        if let Some(pid) = std::fs::read_to_string(pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on the containerd our dockerd started (signal 0 first: alive?).
            unsafe {
                if libc::kill(pid, 0) == 0 {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("--- dockerd log (tail)\n{}", self.log_tail());
        }
    }
}

/// Write `users` into an htpasswd file with the real tool.
fn htpasswd(path: &Path, users: &[(&str, &str)]) {
    let tool = require("htpasswd", "apache2-utils");
    for (i, (u, p)) in users.iter().enumerate() {
        let flags = if i == 0 { "-Bbc" } else { "-Bb" };
        let out = Command::new(&tool).arg(flags).arg(path).args([u, p]).output().expect("run htpasswd");
        assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// wharfie with `toml` as its configuration file.
fn wharfie_with(toml: &str) -> (Wharfie, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("wharfie.toml");
    std::fs::write(&cfg, toml).expect("config");
    let w = Wharfie::start_in(&dir.path().join("data"), &["--config", &cfg.display().to_string()]);
    (w, dir)
}

/// One sample of a metric from `/metrics` (0 when absent).
fn metric(w: &Wharfie, name: &str) -> f64 {
    let text = reqwest::blocking::get(w.url("/metrics")).and_then(|r| r.text()).expect("metrics");
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0)
}

fn http_status(url: &str) -> u16 {
    reqwest::blocking::Client::new().head(url).send().expect("HEAD").status().as_u16()
}

// ---------------------------------------------------------------------------------

#[test]
fn push_rmi_pull_run_and_a_second_repository_mounts() {
    let _serial = serial();
    let w = Wharfie::start();
    let d = Dockerd::start(&[]);
    d.import_busybox("local/bb:v1");
    let img = format!("{}/site/bb:v1", w.addr);
    d.ok(&["tag", "local/bb:v1", &img]);
    let push = d.ok(&["push", &img]);
    assert!(push.stdout.contains("v1: digest: sha256:"), "{}", push.stdout);
    eprintln!(
        "docker push (1 layer, {} KiB busybox): {:?}",
        std::fs::metadata("/bin/busybox").map_or(0, |m| m.len() / 1024),
        push.took
    );
    let files = w.blob_files();
    assert_eq!(files, 2, "one layer and one config stored");
    assert_eq!(http_status(&w.url("/v2/site/bb/manifests/v1")), 200);

    // A second repository with the same layer: Docker HEADs it there (404: not linked in
    // site/bb2), then mounts it from site/bb; nothing new is stored.
    let img2 = format!("{}/site/bb2:v1", w.addr);
    d.ok(&["tag", "local/bb:v1", &img2]);
    let push2 = d.ok(&["push", &img2]);
    assert!(push2.stdout.contains("Mounted from site/bb"), "{}", push2.stdout);
    eprintln!("docker push of the same layers to a second repository: {:?}", push2.took);
    assert_eq!(w.blob_files(), files, "a mount stores no new blob");
    assert_eq!(http_status(&w.url("/v2/site/bb2/manifests/v1")), 200);

    // rmi every tag, so the pull really downloads; then run it.
    d.rmi(&["local/bb:v1", &img, &img2]);
    let pull = d.ok(&["pull", &img]);
    assert!(pull.stdout.contains("Downloaded newer image"), "{}", pull.stdout);
    eprintln!("docker pull after rmi: {:?}", pull.took);
    d.run_echo(&img);
}

const ALICE: (&str, &str) = ("alice", "alice-pw");
const BOB: (&str, &str) = ("bob", "bob-pw");

/// alice may push to site/**; bob has no rule (pulls only, anonymous = "pull").
fn auth_toml(dir: &Path, token: bool) -> String {
    let pw = dir.join("htpasswd");
    htpasswd(&pw, &[ALICE, BOB]);
    format!(
        "[auth]\nhtpasswd = \"{}\"\nanonymous = \"pull\"\ntoken = {token}\n\n[[auth.rules]]\nrepos = \"site/**\"\nusers = [\"alice\"]\naccess = [\"push\"]\n",
        pw.display()
    )
}

/// wharfie with auth on (and tokens when `token`).
fn auth_server(token: bool) -> (Wharfie, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("wharfie.toml");
    std::fs::write(&cfg, auth_toml(dir.path(), token)).expect("config");
    let w = Wharfie::start_in(&dir.path().join("data"), &["--config", &cfg.display().to_string()]);
    (w, dir)
}

/// `docker login` refuses a wrong password and an unknown user (exit 1, with `why`: with
/// Basic the daemon names the 401, with tokens it relays the token endpoint's message),
/// and stores nothing.
fn wrong_logins_are_refused(d: &Dockerd, host: &str, why: &str) {
    for (user, pw) in [(ALICE.0, "wrong"), ("mallory", ALICE.1)] {
        let o = d.login(host, user, pw);
        assert_eq!(o.code, Some(1), "docker login {user}:{pw} must fail: {}{}", o.stdout, o.stderr);
        assert!(o.stderr.contains(why), "want {why:?} in: {}", o.stderr);
        let cfg = std::fs::read_to_string(d.dir().join("cfg/config.json")).unwrap_or_default();
        assert!(!cfg.contains(host), "a failed login stored credentials: {cfg}");
    }
}

#[test]
fn login_with_htpasswd_basic() {
    let _serial = serial();
    let (w, _dir) = auth_server(false);
    let d = Dockerd::start(&[]);
    d.import_busybox("local/bb:v1");
    let why = format!("login attempt to http://{}/v2/ failed with status: 401 Unauthorized", w.addr);
    wrong_logins_are_refused(&d, &w.addr, &why);

    // Without credentials Docker does not answer a Basic challenge: the push is refused.
    let img = format!("{}/site/bb:v1", w.addr);
    d.ok(&["tag", "local/bb:v1", &img]);
    let o = d.docker(&["push", &img]);
    assert!(!o.ok, "an anonymous push succeeded");
    assert!(o.stderr.contains("no basic auth credentials"), "{}", o.stderr);
    assert_eq!(w.blob_files(), 0, "nothing stored");

    let o = d.login(&w.addr, ALICE.0, ALICE.1);
    assert!(o.ok && o.stdout.contains("Login Succeeded"), "{}{}", o.stdout, o.stderr);
    d.ok(&["push", &img]);
    d.rmi(&["local/bb:v1", &img]);
    d.ok(&["pull", &img]);
    d.run_echo(&img);

    // bob logs in but may not push (403 DENIED, named by Docker as "denied").
    d.ok(&["logout", &w.addr]);
    let o = d.login(&w.addr, BOB.0, BOB.1);
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    let other = format!("{}/site/other:v1", w.addr);
    d.ok(&["tag", &img, &other]);
    let o = d.docker(&["push", &other]);
    assert!(!o.ok, "bob pushed");
    assert!(o.stderr.contains("denied"), "{}", o.stderr);
    assert_eq!(http_status(&w.url("/v2/site/other/manifests/v1")), 404, "nothing stored (anonymous pull)");
    assert_eq!(w.blob_files(), 2, "nothing stored");
}

#[test]
fn login_with_tokens_and_anonymous_pulls() {
    let _serial = serial();
    let (w, _dir) = auth_server(true);
    let d = Dockerd::start(&[]);
    d.import_busybox("local/bb:v1");
    wrong_logins_are_refused(&d, &w.addr, "unauthorized: invalid username or password");

    // Anonymous: Docker fetches an anonymous token; it grants pull only, so a push fails.
    let img = format!("{}/site/bb:v1", w.addr);
    d.ok(&["tag", "local/bb:v1", &img]);
    let o = d.docker(&["push", &img]);
    assert!(!o.ok, "an anonymous push succeeded");
    assert!(o.stderr.contains("unauthorized"), "{}", o.stderr);
    assert_eq!(w.blob_files(), 0, "nothing stored");

    // alice's token (scope repository:site/bb:pull,push) pushes.
    let o = d.login(&w.addr, ALICE.0, ALICE.1);
    assert!(o.ok && o.stdout.contains("Login Succeeded"), "{}{}", o.stdout, o.stderr);
    let push = d.ok(&["push", &img]);
    eprintln!("docker push with a Bearer token: {:?}", push.took);
    // A second repository: Docker asks for site/bb2:pull,push and site/bb:pull in one
    // token request (two scope parameters), then mounts.
    let img2 = format!("{}/site/bb2:v1", w.addr);
    d.ok(&["tag", "local/bb:v1", &img2]);
    let push2 = d.ok(&["push", &img2]);
    assert!(push2.stdout.contains("Mounted from site/bb"), "{}", push2.stdout);
    assert_eq!(w.blob_files(), 2);

    // Logged out, the pull goes through an anonymous token (anonymous = "pull").
    d.ok(&["logout", &w.addr]);
    d.rmi(&["local/bb:v1", &img, &img2]);
    let pull = d.ok(&["pull", &img2]);
    eprintln!("anonymous docker pull with a token: {:?}", pull.took);
    d.run_echo(&img2);

    // bob's token grants pull only: his push is refused, nothing stored.
    let o = d.login(&w.addr, BOB.0, BOB.1);
    assert!(o.ok, "{}{}", o.stdout, o.stderr);
    let other = format!("{}/site/other:v1", w.addr);
    d.ok(&["tag", &img2, &other]);
    let o = d.docker(&["push", &other]);
    assert!(!o.ok, "bob pushed");
    assert!(o.stderr.contains("denied") || o.stderr.contains("unauthorized"), "{}", o.stderr);
    assert_eq!(w.blob_files(), 2, "nothing stored");
}

/// The `daemon.json` block of `wharfie client-config` output.
fn daemon_json(client_config: &str) -> serde_json::Value {
    let start = client_config.find("## Docker daemon").expect("a Docker daemon section");
    let rest = &client_config[start..];
    let open = rest.find("\n{").expect("a JSON block") + 1;
    let close = rest[open..].find("\n}").expect("end of the JSON block") + open + 2;
    serde_json::from_str(&rest[open..close])
        .unwrap_or_else(|e| panic!("daemon.json is not JSON ({e}):\n{rest}"))
}

/// `wharfie client-config --config CFG --host HOST`.
fn client_config(cfg: &Path, host: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_wharfie"))
        .args(["client-config", "--config", &cfg.display().to_string(), "--host", host])
        .output()
        .expect("wharfie client-config");
    assert!(o.status.success(), "client-config: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A docker-registry holding `library/bb:v1` (pushed by `d`, a dockerd without mirrors),
/// and a wharfie mirroring it as the `default = true` docker.io upstream.
struct MirrorSetup {
    upstream: Option<ReferenceRegistry>,
    w: Wharfie,
    _dir: tempfile::TempDir,
    /// dockerd with the daemon.json client-config printed.
    d: Dockerd,
}

fn mirror_setup() -> MirrorSetup {
    let upstream = ReferenceRegistry::start();
    {
        let seed = Dockerd::start(&[]);
        seed.import_busybox("local/bb:v1");
        let up = format!("{}/library/bb:v1", upstream.addr);
        seed.ok(&["tag", "local/bb:v1", &up]);
        seed.ok(&["push", &up]);
    }
    let toml = format!(
        "[[upstreams]]\nname = \"docker.io\"\nurl = \"http://{}\"\ndefault = true\ntag_ttl = \"0s\"\ntimeout = \"10s\"\n",
        upstream.addr
    );
    let (w, dir) = wharfie_with(&toml);
    let cfg = client_config(&dir.path().join("wharfie.toml"), &w.addr);
    let daemon = daemon_json(&cfg);
    assert_eq!(daemon["registry-mirrors"], serde_json::json!([format!("http://{}", w.addr)]), "{cfg}");
    let file: PathBuf = dir.path().join("daemon.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&daemon).expect("json")).expect("daemon.json");
    let d = Dockerd::start(&["--config-file".into(), file.display().to_string()]);
    let info = d.ok(&["info", "--format", "{{json .RegistryConfig.Mirrors}}"]);
    assert!(info.stdout.contains(&w.addr), "dockerd did not take the mirror: {}", info.stdout);
    MirrorSetup { upstream: Some(upstream), w, _dir: dir, d }
}

#[test]
fn registry_mirror_pulls_through_then_serves_from_cache_when_the_upstream_is_down() {
    let _serial = serial();
    let mut m = mirror_setup();
    let (w, d) = (&m.w, &m.d);

    let pull = d.ok(&["pull", "bb:v1"]);
    assert!(pull.stdout.contains("Downloaded newer image for bb:v1"), "{}", pull.stdout);
    eprintln!("docker pull bb:v1 through the mirror (cold): {:?}", pull.took);
    assert!(metric(w, "wharfie_upstream_bytes_total") > 0.0, "the pull went through wharfie's fill");
    assert!(metric(w, "wharfie_store_blobs{origin=\"mirrored\"}") >= 2.0, "layer and config cached");
    d.run_echo("bb:v1");

    // The upstream goes away; after rmi, the pull is served from wharfie's cache (the tag
    // is stale: tag_ttl = 0s, so this is stale-if-error).
    m.upstream.take();
    d.rmi(&["bb:v1"]);
    let pull = d.ok(&["pull", "bb:v1"]);
    eprintln!("docker pull bb:v1 after rmi, upstream down: {:?}", pull.took);
    assert!(
        pull.took < Duration::from_secs(10),
        "a pull from cache took {:?} (needs upstream health, h2)",
        pull.took
    );
    assert!(metric(w, "wharfie_stale_served_total") >= 1.0, "served stale");
    d.run_echo("bb:v1");
}

#[test]
fn registry_mirror_then_push_of_a_site_image_with_the_same_layers() {
    // Needs the entitlement fix (h1): HEAD of the mirrored layer in the hosted site/bb
    // must be 404 so that Docker uploads or mounts it.
    let _serial = serial();
    let m = mirror_setup();
    let (w, d) = (&m.w, &m.d);
    d.ok(&["pull", "bb:v1"]);
    let site = format!("{}/site/bb:v1", w.addr);
    d.ok(&["tag", "bb:v1", &site]);
    let push = d.ok(&["push", &site]);
    assert!(push.stdout.contains("v1: digest: sha256:"), "{}", push.stdout);
    eprintln!("docker push of a site image with mirrored layers: {:?}", push.took);
    d.rmi(&["bb:v1", &site]);
    d.ok(&["pull", &site]);
    d.run_echo(&site);
}

#[test]
fn client_config_for_docker_names_the_daemon_json_and_logins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("wharfie.toml");
    // A hosted registry with auth, no upstreams.
    std::fs::write(&cfg, auth_toml(dir.path(), true)).expect("config");
    let out = client_config(&cfg, "reg.example:5000");
    let daemon = daemon_json(&out);
    assert_eq!(daemon["insecure-registries"], serde_json::json!(["reg.example:5000"]), "{out}");
    assert!(out.contains("docker login reg.example:5000"), "{out}");
    assert!(out.contains("docker tag IMAGE reg.example:5000/"), "{out}");
    assert!(out.contains("registry-1.docker.io"), "the fallback is explained: {out}");
    // With a default docker.io upstream: registry-mirrors.
    std::fs::write(
        &cfg,
        "[[upstreams]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ndefault = true\n",
    )
    .expect("config");
    let out = client_config(&cfg, "mirror.example:5000");
    let daemon = daemon_json(&out);
    assert_eq!(daemon["registry-mirrors"], serde_json::json!(["http://mirror.example:5000"]), "{out}");
    assert!(!out.contains("docker login"), "no auth, no login lines: {out}");
    assert!(out.contains("503"), "says why misses of a down upstream fail fast: {out}");
}
