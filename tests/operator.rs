//! What an operator reads (issue 15), word for word: `wharfie verify`'s summary and exit
//! code, configuration errors that name keys as the user wrote them (and where), and
//! stray `WHARFIE_*` variables that warn instead of taking the server down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::mirror;
use wharfie_testkit::oci;
use wharfie_testkit::ops;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bytes_of, Wharfie};
use mirror::real;
use mirror::upstream::FakeUpstream;
use oci::*;
use ops::*;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    path_str(&p)
}

/// stderr without the lines of other programs' making (none expected; keeps the
/// assertions exact about ours).
fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

// ---------------------------------------------------------------------------
// 1. verify: a summary in words, exit 1 with a message that says what was found

#[test]
fn verify_summarises_corruption_in_words_and_exits_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let dir_s = path_str(&dir);
    let up = FakeUpstream::start();
    let mirrored = bytes_of(5000, 7);
    let md = up.add_blob(mirrored.clone());
    let cfg = write(tmp.path(), "w.toml", &format!("[[upstreams]]\nname = \"up\"\nurl = \"{}\"\n", up.url()));
    let mut w = Wharfie::start_in(&dir, &["--config", &cfg]);
    let api = Api::new(&w);
    let flipped = api.push_blob("team/app", &bytes_of(4096, 1));
    let gone = api.push_blob("team/app", &bytes_of(1000, 2));
    let sound = api.push_blob("team/app", &bytes_of(3000, 3));
    assert_eq!(api.get(&format!("/v2/up/lib/m/blobs/{md}")).body, mirrored);
    w.stop();

    // Clean: one line, exit 0, nothing on stderr.
    let out = cli_only_env(&["verify", "--config", &cfg, "--data-dir", &dir_s], &[]);
    out.ok();
    assert_eq!(out.stdout, "checked 4 blobs (13096 bytes, 12.8 KiB): 0 corrupt\n", "{}", out.describe());
    assert_eq!(out.stderr, "", "{}", out.describe());

    let rows = blob_rows(&dir);
    let recorded = |d: &str| rows[d]["blake3"].as_str().expect("blake3").to_owned();
    flip_byte(&blob_path(&dir, &flipped), 10);
    flip_byte(&blob_path(&dir, &md), 4000);
    std::fs::remove_file(blob_path(&dir, &gone)).expect("remove");
    let hash_of =
        |d: &str| blake3::hash(&std::fs::read(blob_path(&dir, d)).expect("read")).to_hex().to_string();
    let (h_flipped, h_md) = (hash_of(&flipped), hash_of(&md));
    let quarantine = |d: &str| dir.join("quarantine").join(d.trim_start_matches("sha256:"));

    let out = cli_only_env(&["verify", "--config", &cfg, "--data-dir", &dir_s], &[("RUST_LOG", "off")]);
    assert_eq!(out.code, Some(1), "finding corruption exits 1:\n{}", out.describe());
    let mut blocks = vec![
        (
            flipped.clone(),
            format!(
                "corrupt blob {flipped} (pushed, 4096 bytes): its content hashes to blake3 {h_flipped}, not the {} recorded\n  \
                 the bad file was moved to {}\n  \
                 the server now answers 404 (BLOB_UNKNOWN) for it: push the image again to restore it\n",
                recorded(&flipped),
                quarantine(&flipped).display()
            ),
        ),
        (
            gone.clone(),
            format!(
                "corrupt blob {gone} (pushed, 1000 bytes): its file is missing\n  \
                 no file was left to quarantine\n  \
                 the server now answers 404 (BLOB_UNKNOWN) for it: push the image again to restore it\n"
            ),
        ),
        (
            md.clone(),
            format!(
                "corrupt blob {md} (mirrored, 5000 bytes): its content hashes to blake3 {h_md}, not the {} recorded\n  \
                 the bad file was moved to {}\n  \
                 the server fetches it again from its upstream on the next pull\n",
                recorded(&md),
                quarantine(&md).display()
            ),
        ),
    ];
    blocks.sort();
    let expected: String = std::iter::once("checked 4 blobs (13096 bytes, 12.8 KiB): 3 corrupt\n".to_owned())
        .chain(blocks.into_iter().map(|(_, b)| b))
        .collect();
    assert_eq!(out.stdout, expected, "{}", out.describe());
    assert_eq!(
        out.stderr,
        "wharfie: verify found 3 corrupt blobs; each was quarantined (see above)\n",
        "{}",
        out.describe()
    );
    assert!(quarantine(&flipped).is_file() && quarantine(&md).is_file());
    assert!(blob_path(&dir, &sound).is_file(), "the sound blob stays");
    let rows = blob_rows(&dir);
    assert!(!rows.contains_key(&flipped) && !rows.contains_key(&gone) && !rows.contains_key(&md));

    // The log line says the same in words: no `Ok((…))`, no Rust `Debug`.
    flip_byte(&blob_path(&dir, &sound), 0);
    let out =
        cli_only_env(&["verify", "--full", "--config", &cfg, "--data-dir", &dir_s], &[("RUST_LOG", "error")]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let log = lines(&out.stderr);
    assert_eq!(log.len(), 2, "{}", out.describe());
    assert!(
        log[0].contains(&format!(
            "corrupt blob: its content hashes to sha256 {}",
            sha256_file(&quarantine(&sound)).trim_start_matches("sha256:")
        )),
        "{}",
        out.describe()
    );
    assert!(
        log[0].contains(&format!("not the {} recorded", sound.trim_start_matches("sha256:"))),
        "{}",
        out.describe()
    );
    assert!(
        log[0]
            .contains(&format!("digest={sound} origin=pushed quarantined={}", quarantine(&sound).display())),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains("Ok((") && !out.stderr.contains("internal error"), "{}", out.describe());
    assert_eq!(log[1], "wharfie: verify found 1 corrupt blob; each was quarantined (see above)");
}

// ---------------------------------------------------------------------------
// 2. configuration errors name the key as written, and where

#[test]
fn config_errors_name_the_key_as_the_user_wrote_it_and_where() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = path_str(&tmp.path().join("data"));
    let f = |name: &str, text: &str| write(tmp.path(), name, text);
    let bad_size = f("size.toml", "[cache]\nmax_bytes = \"lots\"\n");
    let typo = f("typo.toml", "[cache]\nmax_byte = \"1GiB\"\n");
    let top_typo = f("top.toml", "lisen = \"127.0.0.1:5000\"\n");
    let listen = f("listen.toml", "listen = \"localhost\"\n");
    let url = f(
        "url.toml",
        "[[upstreams]]\nname = \"a\"\nurl = \"https://a.example\"\n[[upstreams]]\nname = \"b\"\nurl = \"b.example\"\n",
    );
    let up = |url: &str, extra: &str| format!("[[upstreams]]\nname = \"a\"\nurl = \"{url}\"\n{extra}");
    let bad_host = f("host.toml", &up("https://bad host", ""));
    let no_host = f("nohost.toml", &up("https://", ""));
    let query = f("query.toml", &up("https://a.example/?x=1", ""));
    let lone_pw = f("pw.toml", &up("https://a.example", "password = \"x\"\n"));
    // An upstream's CA file is read and checked at load: missing, not PEM, no usable CA.
    let missing_ca = path_str(&tmp.path().join("missing-ca.pem"));
    let no_ca = f("noca.toml", &up("https://a.example", &format!("ca_file = \"{missing_ca}\"\n")));
    let text_ca = write(tmp.path(), "text-ca.pem", "not a certificate\n");
    let text = f("textca.toml", &up("https://a.example", &format!("ca_file = \"{text_ca}\"\n")));
    let junk_ca =
        write(tmp.path(), "junk-ca.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let junk = f("junkca.toml", &up("https://a.example", &format!("ca_file = \"{junk_ca}\"\n")));
    // `[tls]` is read, parsed and matched at load too: a missing file, no certificate,
    // no key, a key that is not the certificate's, a certificate that does not parse.
    let tls = test_ca_and_cert();
    let (cert, key) = (path_str(&tls.cert), path_str(&tls.key));
    let other_key = path_str(&tls.ca.with_file_name("ca.key"));
    let missing_cert = path_str(&tmp.path().join("missing-cert.pem"));
    let tls_file =
        |name: &str, cert: &str, key: &str| f(name, &format!("[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n"));
    let no_cert = tls_file("nocert.toml", &missing_cert, &key);
    let key_as_cert = tls_file("keyascert.toml", &key, &key);
    let cert_as_key = tls_file("certaskey.toml", &cert, &cert);
    let mismatch = tls_file("mismatch.toml", &cert, &other_key);
    let junk_cert = tls_file("junkcert.toml", &junk_ca, &key);
    let low = f("low.toml", "[cache]\nlow_water_percent = 150\n");
    let syntax = f("syntax.toml", "[cache\n");
    let size_reason = "invalid value string \"lots\", expected a size such as \"512MiB\" or \"10GB\"";
    // (arguments, environment, the exact line the user reads)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case<'_>> = vec![
        (vec!["--config", &bad_size], vec![], format!("[cache] max_bytes in {bad_size}: {size_reason}")),
        (vec![], vec![("WHARFIE_CACHE__MAX_BYTES", "lots")], format!("WHARFIE_CACHE__MAX_BYTES in the environment: {size_reason}")),
        (vec!["--config", &typo], vec![], format!("[cache] max_byte in {typo}: unknown key; did you mean max_bytes?")),
        (vec!["--config", &top_typo], vec![], format!("lisen in {top_typo}: unknown key; did you mean listen?")),
        (
            vec!["--config", &listen],
            vec![],
            format!("listen in {listen}: \"localhost\" is not a socket address (host:port): invalid socket address syntax"),
        ),
        (
            vec![],
            vec![("WHARFIE_LISTEN", "localhost")],
            "WHARFIE_LISTEN in the environment: \"localhost\" is not a socket address (host:port): invalid socket address syntax".into(),
        ),
        (
            vec!["--listen", "localhost"],
            vec![],
            "--listen on the command line: \"localhost\" is not a socket address (host:port): invalid socket address syntax".into(),
        ),
        (
            vec!["--config", &url],
            vec![],
            format!("[[upstreams]] #2 url in {url}: upstream \"b\": the url must start with http:// or https://"),
        ),
        (
            vec!["--config", &bad_host],
            vec![],
            format!("[[upstreams]] #1 url in {bad_host}: upstream \"a\": \"https://bad host\" is not a valid URL: invalid international domain name"),
        ),
        (
            vec!["--config", &no_host],
            vec![],
            format!("[[upstreams]] #1 url in {no_host}: upstream \"a\": \"https://\" is not a valid URL: empty host"),
        ),
        (
            vec!["--config", &query],
            vec![],
            format!("[[upstreams]] #1 url in {query}: upstream \"a\": \"https://a.example/?x=1\" must not have a query or fragment (the API paths are appended to it)"),
        ),
        (
            vec!["--config", &lone_pw],
            vec![],
            format!("[[upstreams]] #1 password in {lone_pw}: upstream \"a\": a password needs a username"),
        ),
        (
            vec!["--config", &no_ca],
            vec![],
            format!("[[upstreams]] #1 ca_file in {no_ca}: upstream \"a\": {missing_ca}: cannot read it: No such file or directory (os error 2)"),
        ),
        (
            vec!["--config", &text],
            vec![],
            format!("[[upstreams]] #1 ca_file in {text}: upstream \"a\": {text_ca}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ),
        (
            vec!["--config", &junk],
            vec![],
            format!("[[upstreams]] #1 ca_file in {junk}: upstream \"a\": {junk_ca}: certificate 1 is not a usable CA certificate: BadEncoding"),
        ),
        (
            vec!["--config", &no_cert],
            vec![],
            format!("[tls] cert in {no_cert}: {missing_cert}: cannot read it: No such file or directory (os error 2)"),
        ),
        (
            vec![],
            vec![("WHARFIE_TLS__CERT", missing_cert.as_str()), ("WHARFIE_TLS__KEY", key.as_str())],
            format!("WHARFIE_TLS__CERT in the environment: {missing_cert}: cannot read it: No such file or directory (os error 2)"),
        ),
        (
            vec!["--config", &key_as_cert],
            vec![],
            format!("[tls] cert in {key_as_cert}: {key}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ),
        (
            vec!["--config", &cert_as_key],
            vec![],
            format!("[tls] key in {cert_as_key}: {cert}: holds no PEM private key (-----BEGIN PRIVATE KEY-----, or RSA or EC PRIVATE KEY)"),
        ),
        (
            vec!["--config", &mismatch],
            vec![],
            format!("[tls] key in {mismatch}: {other_key}: does not match the certificate in {cert}"),
        ),
        (
            vec!["--config", &junk_cert],
            vec![],
            format!("[tls] cert in {junk_cert}: {junk_ca}: certificate 1 is not a usable server certificate: BadEncoding"),
        ),
        (vec!["--config", &low], vec![], format!("[cache] low_water_percent in {low}: must be 1 to 100, not 150")),
        (vec![], vec![("WHARFIE_CACHE__LOW_WATER_PERCENT", "0")], "WHARFIE_CACHE__LOW_WATER_PERCENT in the environment: must be 1 to 100, not 0".into()),
    ];
    for (args, env, want) in &cases {
        let check = cli_only_env(&[&["config", "check"][..], args].concat(), env);
        assert_eq!(check.code, Some(2), "{args:?} {env:?}:\n{}", check.describe());
        assert_eq!(check.stdout, "", "nothing printed as the configuration:\n{}", check.describe());
        assert_eq!(
            lines(&check.stderr),
            vec![format!("wharfie: configuration error: {want}")],
            "{}",
            check.describe()
        );
        assert!(!check.stderr.contains("default."), "figment's profile leaks:\n{}", check.describe());
        // serve refuses with the same words and stores nothing.
        let serve = cli_only_env(&[&["serve", "--data-dir", &data][..], args].concat(), env);
        assert_eq!(serve.code, Some(2), "{}", serve.describe());
        assert_eq!(
            lines(&serve.stderr),
            vec![format!("wharfie: configuration error: {want}")],
            "{}",
            serve.describe()
        );
        assert!(!tmp.path().join("data").exists(), "a refused start made the data directory");
    }
    let check = cli_only_env(&["config", "check", "--config", &syntax], &[]);
    assert_eq!(check.code, Some(2), "{}", check.describe());
    let first = lines(&check.stderr)[0].to_owned();
    assert!(
        first.starts_with(&format!("wharfie: configuration error: {syntax}: TOML parse error at line 1")),
        "{first}"
    );
}

// ---------------------------------------------------------------------------
// 3. unknown WHARFIE_* variables warn and are ignored; unknown file keys stay errors

const STRAY: &[(&str, &str)] = &[("WHARFIE_BIN", "/usr/local/bin/x"), ("WHARFIE_CACHE_MAX_BYTES", "1GiB")];
const WARN_BIN: &str = "environment variable WHARFIE_BIN is not a wharfie setting; ignored";
const WARN_CACHE: &str = "environment variable WHARFIE_CACHE_MAX_BYTES is not a wharfie setting; ignored \
                          (did you mean WHARFIE_CACHE__MAX_BYTES?)";

#[test]
fn stray_wharfie_variables_are_warned_about_and_ignored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharfie"));
    for (k, _) in std::env::vars_os() {
        if is_wharfie_var(&k.to_string_lossy()) {
            cmd.env_remove(k);
        }
    }
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("WHARFIE_LOG_FORMAT", "json")
        .env("WHARFIE_MAX_CONNECTIONS", "64") // a real key keeps working
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"));
    for (k, v) in STRAY {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn wharfie");
    let stdout = child.stdout.take().expect("stdout");
    let mut guard = real::ChildGuard(Some(child));
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("listening line");
    let base = line.trim().strip_prefix("listening on ").expect("the server started").to_owned();
    let c = reqwest::blocking::Client::new();
    assert_eq!(c.get(format!("{base}/v2/")).send().expect("GET /v2/").status(), 200);
    let child = guard.0.as_mut().expect("child");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let st = wait_for("wharfie to stop", Duration::from_secs(30), || child.try_wait().ok().flatten());
    assert_eq!(st.code(), Some(0));
    let text = std::fs::read_to_string(&log).expect("log");
    let warnings: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["variable"].is_string())
        .collect();
    assert_eq!(warnings.len(), 2, "one warning per stray variable:\n{text}");
    assert_eq!(warnings[0]["level"], "WARN");
    assert_eq!(warnings[0]["fields"]["message"], WARN_BIN, "{text}");
    assert_eq!(warnings[0]["fields"]["variable"], "WHARFIE_BIN");
    assert_eq!(warnings[1]["fields"]["message"], WARN_CACHE, "{text}");
    assert_eq!(warnings[1]["fields"]["nearest"], "WHARFIE_CACHE__MAX_BYTES");

    // config check lists them, and still checks out.
    let out = cli_only_env(&["config", "check"], STRAY);
    out.ok();
    assert_eq!(
        lines(&out.stderr),
        vec![format!("warning: {WARN_BIN}"), format!("warning: {WARN_CACHE}"), "configuration ok".into()]
    );
    assert!(
        out.stdout.contains("max_bytes = \"0 B\"") || out.stdout.contains("max_bytes = \"0\""),
        "ignored: {}",
        out.stdout
    );

    // An unknown key in the file stays an error; check lists both.
    let cfg = write(tmp.path(), "typo.toml", "[gc]\ninterval = \"1h\"\ngrace_period = \"1d\"\n");
    let out = cli_only_env(&["config", "check", "--config", &cfg], STRAY);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert_eq!(
        lines(&out.stderr),
        vec![
            format!("warning: {WARN_BIN}"),
            format!("warning: {WARN_CACHE}"),
            format!(
                "wharfie: configuration error: [gc] grace_period in {cfg}: unknown key; did you mean grace?"
            ),
        ],
        "{}",
        out.describe()
    );
}
