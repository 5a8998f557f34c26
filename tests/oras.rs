//! ORAS, the artifact client, against the real server: `tests/oras_client.py` drives
//! oras-py (PyPI package `oras`, installed by .ci/run) through push (monolithic and
//! chunked), pull, `subject` + the referrers API, tag listing and deletion. The script
//! exits non-zero with a message on the first difference from what ORAS expects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;

use std::path::Path;
use std::process::Command;

use common::Wharfie;

#[test]
fn oras_push_pull_attach_referrers_and_delete() {
    let have = Command::new("python3").args(["-c", "import oras.client"]).output();
    match have {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 cannot import oras: pip install oras (.ci/run installs it)\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("python3 not found ({e}): apt-get install -y python3; pip install oras"),
    }
    let w = Wharfie::start();
    let work = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oras_client.py");
    let out = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(&script)
        .arg(&w.addr)
        .arg(work.path())
        .env("NO_PROXY", "*")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "oras-py interop failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("oras interop: ok"), "script did not finish:\n{stdout}\n{stderr}");
}
