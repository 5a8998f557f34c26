//! Support for the operations suites (tests/gc.rs, tests/ops.rs, tests/cache_cap.rs,
//! tests/airgap.rs): running `wharfie` subcommands, reading the real redb file of a
//! stopped server (and ageing its rows, so grace periods need no sleeping), walking the
//! blob files on disk, and a few HTTP helpers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::common::{built_wharfie, hex_lower, Wharfie};

pub use crate::common::require;

/// Wall-clock limit of one `wharfie` subcommand.
const CLI_TIMEOUT_SECS: u32 = 600;

/// What a `wharfie` subcommand did.
#[derive(Debug)]
pub struct CliOut {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CliOut {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "wharfie failed:\n{}", self.describe());
        self
    }

    pub fn describe(&self) -> String {
        format!("exit {:?}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Run `wharfie <args>` (under coreutils `timeout`) with extra environment variables.
pub fn cli_env(args: &[&str], env: &[(&str, &str)]) -> CliOut {
    run_cli(args, env, &[])
}

fn run_cli(args: &[&str], env: &[(&str, &str)], remove: &[String]) -> CliOut {
    require("timeout", "coreutils");
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", &CLI_TIMEOUT_SECS.to_string()])
        .arg(built_wharfie())
        .args(args)
        .env("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null());
    for k in remove {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let out = cmd.output().expect("run wharfie");
    let elapsed = started.elapsed();
    let r = CliOut {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed,
    };
    assert_ne!(r.code, Some(124), "wharfie {args:?} timed out:\n{}", r.describe());
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("$ wharfie {}\n{}", args.join(" "), r.describe());
    }
    r
}

/// `cli_env` without this process's own `WHARFIE_*` variables, for tests that check
/// every line wharfie writes.
pub fn cli_only_env(args: &[&str], env: &[(&str, &str)]) -> CliOut {
    let inherited: Vec<String> = std::env::vars_os()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .filter(|k| is_wharfie_var(k))
        .collect();
    run_cli(args, env, &inherited)
}

/// Named like one of wharfie's configuration variables (any case, as figment reads them).
pub fn is_wharfie_var(name: &str) -> bool {
    name.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("WHARFIE_"))
}

pub fn cli(args: &[&str]) -> CliOut {
    cli_env(args, &[])
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------
// The real redb file of a stopped server.

const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
const REPO_BLOBS: TableDefinition<(&str, &str), ()> = TableDefinition::new("repo_blobs");

fn open_db(dir: &Path) -> redb::Database {
    redb::Database::create(dir.join("meta.redb"))
        .unwrap_or_else(|e| panic!("open {}/meta.redb (is the server stopped?): {e}", dir.display()))
}

/// Every blob row: digest → record (JSON).
pub fn blob_rows(dir: &Path) -> BTreeMap<String, Value> {
    blob_rows_of(&dir.join("meta.redb"))
}

/// Every blob row of the redb file `file` (a copy of a crashed image, say): digest →
/// record (JSON); none when the table was never created.
pub fn blob_rows_of(file: &Path) -> BTreeMap<String, Value> {
    let db = redb::Database::create(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    let rtx = db.begin_read().expect("read txn");
    let t = match rtx.open_table(BLOBS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return BTreeMap::new(),
        Err(e) => panic!("blobs table of {}: {e}", file.display()),
    };
    let mut out = BTreeMap::new();
    for item in t.iter().expect("iter") {
        let (k, v) = item.expect("row");
        out.insert(k.value().to_owned(), serde_json::from_slice(v.value()).expect("blob record"));
    }
    out
}

/// Every manifest row's digest.
pub fn manifest_rows(dir: &Path) -> Vec<String> {
    let db = open_db(dir);
    let rtx = db.begin_read().expect("read txn");
    let t = rtx.open_table(MANIFESTS).expect("manifests table");
    t.iter().expect("iter").map(|i| i.expect("row").0.value().to_owned()).collect()
}

/// (repo, digest) blob links.
pub fn repo_blob_links(dir: &Path) -> Vec<(String, String)> {
    let db = open_db(dir);
    let rtx = db.begin_read().expect("read txn");
    let t = rtx.open_table(REPO_BLOBS).expect("repo_blobs table");
    t.iter()
        .expect("iter")
        .map(|i| {
            let (k, _) = i.expect("row");
            let (r, d) = k.value();
            (r.to_owned(), d.to_owned())
        })
        .collect()
}

/// Make every blob row look `secs` older (as if pushed that long ago), so a grace
/// period can be tested without sleeping through it.
pub fn age_blob_rows(dir: &Path, secs: u64) {
    let db = open_db(dir);
    let txn = db.begin_write().expect("write txn");
    {
        let mut t = txn.open_table(BLOBS).expect("blobs table");
        let rows: Vec<(String, Vec<u8>)> = t
            .iter()
            .expect("iter")
            .map(|i| {
                let (k, v) = i.expect("row");
                (k.value().to_owned(), v.value().to_vec())
            })
            .collect();
        for (k, v) in rows {
            let mut rec: Value = serde_json::from_slice(&v).expect("blob record");
            let created = rec["created"].as_u64().expect("created");
            rec["created"] = Value::from(created.saturating_sub(secs));
            t.insert(k.as_str(), serde_json::to_vec(&rec).expect("json").as_slice()).expect("insert");
        }
    }
    txn.commit().expect("commit");
}

// ---------------------------------------------------------------------------
// Blob files on disk.

/// Every file under `blobs/sha256/`: digest → path.
pub fn blob_files(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let root = dir.join("blobs/sha256");
    let Ok(shards) = std::fs::read_dir(&root) else { return out };
    for shard in shards.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else { continue };
        for f in files.flatten() {
            out.insert(format!("sha256:{}", f.file_name().to_string_lossy()), f.path());
        }
    }
    out
}

pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

pub fn sha256_file(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    std::io::copy(&mut f, &mut h).expect("hash file");
    format!("sha256:{}", hex_lower(&h.finalize()))
}

/// Assert that every blob file hashes to its name.
pub fn assert_blob_files_hash_to_names(dir: &Path) -> usize {
    let files = blob_files(dir);
    for (d, p) in &files {
        assert_eq!(&sha256_file(p), d, "blob file {} does not hash to its name", p.display());
    }
    files.len()
}

/// Flip one byte of a file in place.
pub fn flip_byte(p: &Path, at: usize) {
    let mut b = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    b[at] ^= 0xff;
    std::fs::write(p, b).expect("write corrupted file");
}

// ---------------------------------------------------------------------------
// Metrics.

/// Parse Prometheus text: `name{labels}` → value.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some((k, v)) = line.rsplit_once(' ') {
            if let Ok(v) = v.parse::<f64>() {
                out.insert(k.to_owned(), v);
            }
        }
    }
    out
}

/// The sum of every sample of family `name` whose labels contain all of `labels`
/// (`key="value"` strings).
pub fn metric_sum(m: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            let (n, l) = k.split_once('{').unwrap_or((k.as_str(), ""));
            n == name && labels.iter().all(|want| l.contains(want))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Poll `f` every 50 ms until it returns `Some`, at most `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    for _ in 0..100_000 {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("gave up waiting for {what}");
}

/// A TCP port free right now on 127.0.0.1 (for a server the CLI must find through
/// its configuration's `listen`).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A config file in `dir` listening on `port` with data in `data`, plus `extra` TOML.
pub fn write_config(dir: &Path, port: u16, data: &Path, extra: &str) -> PathBuf {
    let p = dir.join("wharfie.toml");
    std::fs::write(&p, format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{extra}", data.display()))
        .expect("write config");
    p
}

/// `wharfie serve --config FILE`: the listen address and the data directory `data` come
/// from the file (see [`write_config`]).
pub fn serve_config(config: &Path, data: &Path) -> Wharfie {
    let mut cmd = Command::new(built_wharfie());
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stderr(Stdio::inherit());
    Wharfie::from_command(cmd, data)
}

// ---------------------------------------------------------------------------
// TLS: a test CA and a server certificate for 127.0.0.1, made with the openssl CLI.

pub struct Tls {
    _tmp: tempfile::TempDir,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// The CA that signed `cert`.
    pub ca: std::path::PathBuf,
    /// A directory with `ca.crt`, for skopeo's `--cert-dir`.
    pub cert_dir: std::path::PathBuf,
}

pub fn test_ca_and_cert() -> Tls {
    let openssl = require("openssl", "openssl");
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| path_str(&tmp.path().join(n));
    let run = |args: &[&str]| {
        let out = Command::new(&openssl).args(args).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    // A test CA, and a server certificate for 127.0.0.1 it signs (webpki refuses a CA
    // certificate as the server's own).
    run(&[
        &["req", "-x509", "-days", "2", "-subj", "/CN=wharfie test CA"][..],
        &ec,
        &["-keyout", &p("ca.key"), "-out", &p("ca.pem")],
    ]
    .concat());
    run(&[
        &["req", "-subj", "/CN=localhost"][..],
        &ec,
        &["-keyout", &p("key.pem"), "-out", &p("server.csr")],
    ]
    .concat());
    std::fs::write(
        tmp.path().join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("cert.pem"),
    ]);
    let cert_dir = tmp.path().join("certs");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(tmp.path().join("ca.pem"), cert_dir.join("ca.crt")).unwrap();
    let (cert, key, ca) =
        (tmp.path().join("cert.pem"), tmp.path().join("key.pem"), tmp.path().join("ca.pem"));
    Tls { _tmp: tmp, cert, key, ca, cert_dir }
}
