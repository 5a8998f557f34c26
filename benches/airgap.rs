//! Air-gap bundles: full and incremental, export and import, against skopeo.
//!
//! ```sh
//! cargo bench --bench airgap                        # 10 layers of 16 MiB
//! BENCH_AIRGAP_LAYER_MIB=4 cargo bench --bench airgap
//! ```
//!
//! A 10-layer image (random, incompressible layers) is imported into a connected
//! wharfie; then: the full bundle (size, export time), its import into a fresh far
//! wharfie (time, MiB/s), the same bundle through `skopeo copy oci-archive:` into
//! another fresh wharfie (time, MiB/s); one layer changes (`:v2`), the far side's
//! inventory is taken, and the incremental bundle is exported (size, time) and
//! imported (time). Needs `skopeo` (Debian package of the same name).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use std::fs;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

use bench::{fail, start_wharfie, wharfie_bin, Res};
use wharfie_testkit::bench;
use wharfie_testkit::common::bytes_of;

const MIB: f64 = (1u64 << 20) as f64;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn put(dir: &Path, b: &[u8]) -> Res<String> {
    let d = sha(b);
    fs::write(dir.join("blobs/sha256").join(&d[7..]), b)?;
    Ok(d)
}

/// An OCI layout with one image of `layers` (tag `tag`).
fn layout(dir: &Path, layers: &[Vec<u8>], tag: &str) -> Res<()> {
    fs::create_dir_all(dir.join("blobs/sha256"))?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut descs = Vec::new();
    let mut diff = Vec::new();
    for l in layers {
        let d = put(dir, l)?;
        diff.push(d.clone());
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": l.len()}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff},
    }))?;
    let cd = put(dir, &config)?;
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))?;
    let md = put(dir, &m)?;
    let idx = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": m.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&idx)?)?;
    Ok(())
}

/// Run `wharfie ARGS`, timed.
fn wharfie(args: &[&str]) -> Res<f64> {
    let t = Instant::now();
    let out = Command::new(wharfie_bin()).args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return fail(format!("wharfie {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(t.elapsed().as_secs_f64())
}

fn run() -> Res<()> {
    let layer_mib: usize =
        std::env::var("BENCH_AIRGAP_LAYER_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let mut layers: Vec<Vec<u8>> = (0..10).map(|i| bytes_of(layer_mib << 20, i + 1)).collect();
    layout(&t.join("v1"), &layers, "v1")?;
    for d in ["conn", "far", "far-skopeo"] {
        fs::create_dir_all(t.join(d))?;
    }
    let (_conn, conn) = start_wharfie(&t.join("conn"), "")?;
    let (_far, far) = start_wharfie(&t.join("far"), "")?;
    let (_sk, sk) = start_wharfie(&t.join("far-skopeo"), "")?;
    let p = |x: &Path| x.display().to_string();
    wharfie(&["import", "--server", &conn, "--quiet", "--repo", "bench/app:v1", &p(&t.join("v1"))])?;

    let full = t.join("full.tar");
    let export_full = wharfie(&["export", "--server", &conn, "bench/app:v1", "-o", &p(&full)])?;
    let full_size = fs::metadata(&full)?.len() as f64;
    let import_full = wharfie(&["import", "--server", &far, "--quiet", &p(&full)])?;

    let t0 = Instant::now();
    let st = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}:v1", full.display()))
        .arg(format!("docker://{}/bench/app:v1", sk.trim_start_matches("http://")))
        .stdin(Stdio::null())
        .status()?;
    if !st.success() {
        return fail("skopeo copy failed");
    }
    let skopeo = t0.elapsed().as_secs_f64();

    layers[9] = bytes_of(layer_mib << 20, 1000);
    layout(&t.join("v2"), &layers, "v2")?;
    wharfie(&["import", "--server", &conn, "--quiet", "--repo", "bench/app:v2", &p(&t.join("v2"))])?;
    let have = t.join("have.json");
    let inventory = wharfie(&["inventory", "--server", &far, "-o", &p(&have)])?;
    let inc = t.join("inc.tar");
    let export_inc =
        wharfie(&["export", "--server", &conn, "--have", &p(&have), "bench/app:v2", "-o", &p(&inc)])?;
    let inc_size = fs::metadata(&inc)?.len() as f64;
    let import_inc = wharfie(&["import", "--server", &far, "--quiet", &p(&inc)])?;

    println!("airgap bench: 10 layers of {layer_mib} MiB, one changed");
    println!("full bundle:        {:8.1} MiB, export {export_full:6.2} s", full_size / MIB);
    println!(
        "full import:        {import_full:6.2} s = {:7.1} MiB/s (wharfie import)",
        full_size / MIB / import_full
    );
    println!(
        "skopeo copy oci-archive: {skopeo:6.2} s = {:7.1} MiB/s (same bundle, same server)",
        full_size / MIB / skopeo
    );
    println!("inventory:          {inventory:6.2} s ({} bytes)", fs::metadata(&have)?.len());
    println!(
        "incremental bundle: {:8.1} MiB (changed layer {layer_mib} MiB), export {export_inc:6.2} s, import {import_inc:6.2} s",
        inc_size / MIB
    );
    Ok(())
}

fn main() -> ExitCode {
    bench::exit("airgap bench", run())
}
