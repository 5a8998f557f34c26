//! The cluster of tests/cluster.rs, measured: N = 1 and N = 3 wharfie nodes behind HAProxy
//! (packaging/haproxy/wharfie-cluster.cfg), each node's link capped with tc, a docker-registry
//! upstream, and 100 curl clients each pulling a many-layer mirrored image (manifest, config,
//! every layer) through the balancer. Runs as root (network namespaces).
//!
//! ```sh
//! cargo bench --bench cluster                      # 16 layers x 4 MiB, 100 clients, 1 Gbit/s per node
//! BENCH_QUICK=1 cargo bench --bench cluster        # 8 layers x 2 MiB, 20 clients
//! BENCH_CLUSTER_RATE=400mbit cargo bench --bench cluster
//! ```
//!
//! Per N: the cold wave (every layer cold) and a warm wave: wall time, aggregate throughput,
//! bytes served per node, upstream requests (from the upstream's access log). For N = 3, one
//! node is then SIGKILLed: the time until HAProxy marks it down, and the time until the
//! survivors have served the lost node's share (its layers, refilled from the upstream) to
//! one client, then to all clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::cluster;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::{parallel_pulls, seed_image, Topology, HAPROXY_CFG, MIB};

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes benches; nothing to test here
    }
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let layers: usize = env_or("BENCH_CLUSTER_LAYERS", if quick { 8 } else { 16 });
    let size: u64 = env_or("BENCH_CLUSTER_LAYER_MIB", if quick { 2 } else { 4 }) * MIB;
    let clients: usize = env_or("BENCH_CLUSTER_CLIENTS", if quick { 20 } else { 100 });
    let rate: String = env_or("BENCH_CLUSTER_RATE", "1gbit".to_owned());
    println!(
        "cluster bench: {layers} layers x {} MiB, {clients} clients, node links capped at {rate}",
        size / MIB
    );
    for n in [1usize, 3] {
        run(n, layers, size, clients, &rate);
    }
}

fn run(n: usize, layers: usize, size: u64, clients: usize, rate: &str) {
    let names: Vec<String> = (1..=n).map(|i| format!("node{i}")).collect();
    let mut hosts: Vec<(&str, u8)> = vec![("up", 10), ("lb", 2), ("cl", 100)];
    for (i, name) in names.iter().enumerate() {
        hosts.push((name.as_str(), 11 + i as u8));
    }
    let mut t = Topology::new(&hosts);
    let reg = t.registry("up");
    let img = seed_image(&t, "up", "library/bench", "v1", layers, size, 7);
    let cfg = format!("[[upstreams]]\nname = \"docker.io\"\nurl = \"http://{}:5000\"\n", t.ip("up"));
    let mut procs = BTreeMap::new();
    for name in &names {
        procs.insert(name.clone(), t.wharfie(name, &cfg));
        t.limit(name, rate);
    }
    // The shipped configuration with only this run's servers.
    let hcfg: String = HAPROXY_CFG
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            !l.starts_with("server ") || names.iter().any(|nm| l.starts_with(&format!("server {nm} ")))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    t.haproxy("lb", &hcfg, 2 * n);
    let lb = format!("http://{}:5000", t.ip("lb"));
    let mut urls = vec![format!("{lb}/v2/docker.io/{}/manifests/{}", img.repo, img.tag)];
    urls.push(format!("{lb}/v2/docker.io/{}/blobs/{}", img.repo, img.config));
    urls.extend(img.layers.iter().map(|(d, _)| format!("{lb}/v2/docker.io/{}/blobs/{d}", img.repo)));
    let image_bytes = size * layers as u64;
    let served = |t: &Topology| -> BTreeMap<String, u64> {
        names.iter().map(|nm| (nm.clone(), t.bytes_served("cl", nm))).collect()
    };
    let upstream_gets = |t: &Topology| -> usize {
        img.layers.iter().map(|(d, _)| t.upstream_count(reg, &format!("/v2/{}/blobs/{d}", img.repo)).0).sum()
    };
    let mut home = BTreeMap::new();
    for wave in ["cold", "warm"] {
        let before = served(&t);
        let (res, wall) = parallel_pulls(&t, "cl", &urls, clients, 900);
        let ok = res.iter().filter(|r| r.len() == urls.len() && r.iter().all(|f| f.code == 200)).count();
        if wave == "cold" {
            for (i, (d, _)) in img.layers.iter().enumerate() {
                home.insert(d.clone(), res[0].get(i + 2).map(|f| f.node.clone()).unwrap_or_default());
            }
        }
        let after = served(&t);
        let per: Vec<String> =
            names.iter().map(|nm| format!("{nm} {} MiB", (after[nm] - before[nm]) / MIB)).collect();
        println!(
            "N={n} {wave}: {clients} clients x {} MiB image in {wall:.1} s = {:.0} MiB/s aggregate, {ok}/{clients} ok; \
             served per node: {}; upstream layer GETs so far {}",
            image_bytes / MIB,
            (clients as u64 * image_bytes) as f64 / MIB as f64 / wall,
            per.join(", "),
            upstream_gets(&t)
        );
    }
    if n < 3 {
        return;
    }
    let victim = names[0].clone();
    let lost: Vec<String> = home.iter().filter(|(_, h)| **h == victim).map(|(d, _)| d.clone()).collect();
    let gets = upstream_gets(&t);
    let killed = Instant::now();
    t.kill(procs[&victim]);
    while killed.elapsed() < Duration::from_secs(30) && !t.server_is("lb", &victim, "DOWN") {
        std::thread::sleep(Duration::from_millis(50));
    }
    let down = killed.elapsed().as_secs_f64();
    let lost_urls: Vec<String> =
        lost.iter().map(|d| format!("{lb}/v2/docker.io/{}/blobs/{d}", img.repo)).collect();
    let (one, one_wall) = parallel_pulls(&t, "cl", &lost_urls, 1, 300);
    let first_ok = one.first().is_some_and(|r| r.iter().all(|f| f.code == 200));
    let share_served = killed.elapsed().as_secs_f64();
    let (res, wall) = parallel_pulls(&t, "cl", &urls, clients, 900);
    let ok = res.iter().filter(|r| r.len() == urls.len() && r.iter().all(|f| f.code == 200)).count();
    println!(
        "N=3 node loss (SIGKILL {victim}, {} of {layers} layers): marked DOWN after {down:.1} s; its share served by the \
         survivors {share_served:.1} s after the kill (one client, {one_wall:.1} s, ok {first_ok}); upstream GETs for \
         it {}; then {clients} clients x full image in {wall:.1} s ({ok}/{clients} ok)",
        lost.len(),
        upstream_gets(&t) - gets
    );
}
