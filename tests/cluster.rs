//! Beyond one node, proved on the test's own hosts (network namespaces on a bridge, see
//! tests/support/src/cluster.rs): three wharfie nodes behind HAProxy with the shipped
//! packaging/haproxy/wharfie-cluster.cfg, and tiered mirrors (site → regional → upstream).
//! The upstream is Debian's docker-registry; every upstream request is counted from its
//! access log. Runs as root (ip netns, veth, tc); one line per property is printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cluster::{make_blob, parallel_pulls, seed_image, Topology, HAPROXY_CFG, MIB};

/// Each curl's --max-time. The pulls take a minute alone, through shaped links; under a
/// loaded machine one took 180 s, so the bound is a hang's, not a speed target.
const PULL_SECS: u32 = 300;
const NODES: [&str; 3] = ["node1", "node2", "node3"];

fn require_root() {
    // SAFETY: geteuid(2) has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "tests/cluster.rs builds network namespaces: run it as root (CI does)");
}

/// The shipped configuration, plus a second frontend on :5001 that routes everything by
/// repository (the scheme the shipped one improves on for mirrored blobs), for comparison.
fn haproxy_cfg() -> String {
    format!(
        "{HAPROXY_CFG}\nfrontend all_by_repo\n    bind :5001\n    http-response set-header X-Wharfie-Node %s\n    default_backend nodes_by_repo\n"
    )
}

fn mirror_cfg(upstream_ip: &str) -> String {
    format!("[[upstreams]]\nname = \"docker.io\"\nurl = \"http://{upstream_ip}:5000\"\ntag_ttl = \"10m\"\n")
}

/// Bytes served per node since `before`.
fn served_since(t: &Topology, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    before.iter().map(|(n, b)| (n.clone(), t.bytes_served("cl", n).saturating_sub(*b))).collect()
}

fn served_now(t: &Topology, nodes: &[&str]) -> BTreeMap<String, u64> {
    nodes.iter().map(|n| ((*n).to_owned(), t.bytes_served("cl", n))).collect()
}

fn share_line(m: &BTreeMap<String, u64>) -> String {
    let total: u64 = m.values().sum::<u64>().max(1);
    m.iter()
        .map(|(n, b)| format!("{n} {} MiB ({:.0}%)", b / MIB, *b as f64 * 100.0 / total as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn sharded_cluster_behind_haproxy() {
    require_root();
    let started = Instant::now();
    let mut t =
        Topology::new(&[("up", 10), ("node1", 11), ("node2", 12), ("node3", 13), ("lb", 2), ("cl", 100)]);
    let reg = t.registry("up");
    let big_file = t.tmp.path().join("big");
    // CLUSTER_BIG_MIB=32 for a quicker local run; 256 MiB is the figure the issue asks for.
    let big_mib: u64 = std::env::var("CLUSTER_BIG_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let big = make_blob(&big_file, big_mib * MIB, 1);
    t.seed_blob("up", "library/big", &big_file, &big);
    let img = seed_image(&t, "up", "library/layers", "v1", 12, 4 * MIB, 2);
    let cfg = mirror_cfg(&t.ip("up"));
    for n in NODES {
        t.wharfie(n, &cfg);
    }
    t.haproxy("lb", &haproxy_cfg(), 2 * NODES.len());
    let lb = format!("http://{}:5000", t.ip("lb"));
    let lb_by_repo = format!("http://{}:5001", t.ip("lb"));

    // 1. A cold mirrored blob, 100 clients through the balancer: one upstream GET, one node.
    let url = format!("{lb}/v2/docker.io/library/big/blobs/{big}");
    let (res, wall) = parallel_pulls(&t, "cl", std::slice::from_ref(&url), 100, PULL_SECS);
    let bad: Vec<_> =
        res.iter().filter(|r| r.len() != 1 || r[0].code != 200 || r[0].size != big_mib * MIB).collect();
    assert!(bad.is_empty(), "{} of 100 clients failed: {:?}", bad.len(), bad.first());
    let served_by: BTreeSet<&str> = res.iter().map(|r| r[0].node.as_str()).collect();
    let (gets, _) = t.upstream_count(reg, &format!("/v2/library/big/blobs/{big}"));
    let holders: Vec<&str> = NODES.iter().copied().filter(|n| t.stores(n, &big)).collect();
    println!(
        "cluster: 3 nodes, 100 cold clients, 1 blob of {big_mib} MiB: upstream GETs {gets}, stored on {} node ({}), \
         served by {served_by:?}, all 100 complete in {wall:.1} s",
        holders.len(),
        holders.join(",")
    );
    assert_eq!(gets, 1, "one upstream GET for the whole cluster");
    assert_eq!(holders.len(), 1, "stored on one node");
    assert_eq!(served_by.len(), 1, "every client reached the node holding the fill");
    let big_home = holders[0].to_owned();

    // 2. Hosted repositories: every request of an upload session, then the pull right
    // after the 201s, meet on one node per repository.
    let mut repo_home = BTreeMap::new();
    for r in 0..6 {
        let repo = format!("team/app{r}");
        let home = push_hosted(&t, &lb, &repo, r);
        for n in NODES {
            let has = t.data_dir(n).join("blobs").exists() && hosted_blobs_on(&t, n, &repo, r);
            assert_eq!(has, n == home, "{repo}'s blobs must be on {home} only (checked {n})");
        }
        repo_home.insert(repo, home);
    }
    let per_node: BTreeMap<&str, usize> =
        NODES.iter().map(|n| (*n, repo_home.values().filter(|h| h == n).count())).collect();
    println!(
        "cluster: hosted push through the balancer: 6 repositories, each upload session (POST, PATCH, PUT) and \
         the pull right after its 201s on one node; repositories per node {per_node:?}"
    );

    // 3. One hot mirrored image (12 layers of 4 MiB) pulled by 20 clients: spread by
    // digest (shipped) vs all by repository.
    let urls = |base: &str| -> Vec<String> {
        let mut u = vec![format!("{base}/v2/docker.io/{}/manifests/{}", img.repo, img.tag)];
        u.push(format!("{base}/v2/docker.io/{}/blobs/{}", img.repo, img.config));
        u.extend(img.layers.iter().map(|(d, _)| format!("{base}/v2/docker.io/{}/blobs/{d}", img.repo)));
        u
    };
    let before = served_now(&t, &NODES);
    let (res, wall_b) = parallel_pulls(&t, "cl", &urls(&lb), 20, PULL_SECS);
    check_pulls(&res, &img.layers);
    let by_digest = served_since(&t, &before);
    let layer_home: BTreeMap<String, String> =
        img.layers.iter().enumerate().map(|(i, (d, _))| (d.clone(), res[0][i + 2].node.clone())).collect();
    let layer_gets = |t: &Topology| -> usize {
        img.layers.iter().map(|(d, _)| t.upstream_count(reg, &format!("/v2/{}/blobs/{d}", img.repo)).0).sum()
    };
    let gets_b = layer_gets(&t);
    let before = served_now(&t, &NODES);
    let (res, wall_a) = parallel_pulls(&t, "cl", &urls(&lb_by_repo), 20, PULL_SECS);
    check_pulls(&res, &img.layers);
    let by_repo = served_since(&t, &before);
    let gets_a = layer_gets(&t) - gets_b;
    let max_share = |m: &BTreeMap<String, u64>| {
        *m.values().max().unwrap_or(&0) as f64 / m.values().sum::<u64>().max(1) as f64
    };
    println!(
        "cluster: hot image, 12 layers x 4 MiB, 20 clients: by digest (shipped): {} in {wall_b:.1} s, upstream \
         layer GETs {gets_b}; all by repository: {} in {wall_a:.1} s, upstream layer GETs {gets_a} more",
        share_line(&by_digest),
        share_line(&by_repo)
    );
    assert_eq!(gets_b, 12, "each layer fetched upstream once cluster-wide");
    assert!(max_share(&by_repo) > 0.99, "by repository pins the image on one node: {by_repo:?}");
    assert!(max_share(&by_digest) < 0.9, "by digest spreads the layers: {by_digest:?}");
    let nodes_used: BTreeSet<&String> = layer_home.values().collect();
    assert!(nodes_used.len() >= 2, "layers on at least two nodes: {layer_home:?}");

    // 4. Lose the node that holds the big blob while transfers from it are in flight.
    let victim = big_home;
    let mut inflight = vec![];
    for _ in 0..4 {
        let mut c = t.curl("cl", 120);
        c.args(["--limit-rate", "8M", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", &url]);
        inflight.push(c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("curl"));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let wharfie_of = |n: &str| 1 + NODES.iter().position(|x| *x == n).expect("node");
    let killed = Instant::now();
    t.kill(wharfie_of(&victim));
    let mut marked_down = None;
    while killed.elapsed() < Duration::from_secs(20) {
        if t.server_is("lb", &victim, "DOWN") {
            marked_down = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let marked_down = marked_down.expect("HAProxy marks the lost node down within 20 s");
    let mut cut = 0;
    for k in inflight {
        let out = k.wait_with_output().expect("curl");
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let size: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(
            !out.status.success() && size < big_mib * MIB,
            "an in-flight transfer from the lost node must fail, not end short as a success: {s}"
        );
        cut += 1;
    }
    // The rest of the keys are served by the same nodes; the lost share refills on demand.
    let gets_before = layer_gets(&t);
    // What each survivor already holds (the by-repository run above filled one of them).
    let held: BTreeSet<(String, String)> = NODES
        .iter()
        .filter(|n| **n != victim)
        .flat_map(|n| {
            img.layers.iter().filter(|(d, _)| t.stores(n, d)).map(|(d, _)| ((*n).to_owned(), d.clone()))
        })
        .collect();
    let refill_start = Instant::now();
    let (res, _) = parallel_pulls(&t, "cl", &urls(&lb), 20, PULL_SECS);
    let refill = refill_start.elapsed().as_secs_f64();
    check_pulls(&res, &img.layers);
    let lost: Vec<&String> = layer_home.iter().filter(|(_, n)| **n == victim).map(|(d, _)| d).collect();
    for (i, (d, _)) in img.layers.iter().enumerate() {
        let now = &res[0][i + 2].node;
        if layer_home[d] != victim {
            assert_eq!(now, &layer_home[d], "a layer on a surviving node moved: {d}");
        } else {
            assert_ne!(now, &victim);
        }
    }
    let refetched = layer_gets(&t) - gets_before;
    let cold_on_new_home = img
        .layers
        .iter()
        .enumerate()
        .filter(|(i, (d, _))| {
            layer_home[d] == victim && !held.contains(&(res[0][i + 2].node.clone(), d.clone()))
        })
        .count();
    assert_eq!(
        refetched, cold_on_new_home,
        "exactly the lost node's layers not already on their new node are fetched upstream again"
    );
    // A client retrying the cut transfer gets the whole blob from a survivor.
    let (res, _) = parallel_pulls(&t, "cl", std::slice::from_ref(&url), 1, 120);
    assert_eq!((res[0][0].code, res[0][0].size), (200, big_mib * MIB), "retry after the loss");
    assert_ne!(res[0][0].node, victim);
    let (big_gets, _) = t.upstream_count(reg, &format!("/v2/library/big/blobs/{big}"));
    assert_eq!(big_gets, 2, "the retried blob refilled once on its new node");
    // Hosted repositories on the lost node are gone with it; the others are untouched.
    let mut hosted_ok = 0;
    for (repo, home) in &repo_home {
        let (code, _) = t.get("cl", &format!("{lb}/v2/{repo}/manifests/v1"), &["-o", "/dev/null"]);
        if *home == victim {
            assert_eq!(code, 404, "{repo} lived on the lost node");
        } else {
            assert_eq!(code, 200, "{repo} lives on a survivor");
            hosted_ok += 1;
        }
    }
    println!(
        "cluster: node loss (SIGKILL {victim}): marked DOWN after {:.1} s; {cut} in-flight transfers failed \
         (curl error, no short 200); {} of 12 layers moved to survivors, {} refilled from upstream (1 GET each; the others were \
         already there from the by-repository run), the other {} served by the same nodes; survivors served the whole image to 20 clients in {refill:.1} s; retried big blob: 1 more \
         upstream GET; hosted repositories still served {hosted_ok} of 6 (the lost node's are gone with it)",
        marked_down.as_secs_f64(),
        lost.len(),
        refetched,
        12 - lost.len()
    );
    assert!(marked_down < Duration::from_secs(10), "marked down within a few seconds: {marked_down:?}");
    println!("cluster: total {:.0} s", started.elapsed().as_secs_f64());
}

/// Each client's pull: the manifest, the config and every layer, 200 and full size.
fn check_pulls(res: &[Vec<cluster::Fetch>], layers: &[(String, u64)]) {
    for r in res {
        assert_eq!(r.len(), layers.len() + 2, "one result per URL: {r:?}");
        assert!(r.iter().all(|f| f.code == 200), "every request 200: {r:?}");
        for (i, (_, size)) in layers.iter().enumerate() {
            assert_eq!(r[i + 2].size, *size, "layer {i} complete");
        }
    }
}

/// The blobs a hosted repository was given in `push_hosted`.
fn hosted_layers(t: &Topology, r: usize) -> Vec<(std::path::PathBuf, String)> {
    (0..3)
        .map(|i| {
            let p = t.tmp.path().join(format!("hosted{r}-{i}"));
            let d = if p.exists() {
                wharfie_testkit::common::sha256(&std::fs::read(&p).expect("read"))
            } else {
                make_blob(&p, MIB + i as u64 * 4096, 100 + r as u64 * 10 + i as u64)
            };
            (p, d)
        })
        .collect()
}

fn hosted_blobs_on(t: &Topology, node: &str, _repo: &str, r: usize) -> bool {
    let layers = hosted_layers(t, r);
    let n = layers.iter().filter(|(_, d)| t.stores(node, d)).count();
    assert!(n == 0 || n == layers.len(), "{node} holds {n} of the repository's 3 blobs");
    n == layers.len()
}

/// Push 3 blobs (each: POST, PATCH, PUT, as separate connections through the balancer)
/// and a manifest into `repo`, then pull it back at once; returns the node that served it.
fn push_hosted(t: &Topology, lb: &str, repo: &str, r: usize) -> String {
    let mut nodes = BTreeSet::new();
    // The final response's head (after any `100 Continue`).
    let head_of = |out: &std::process::Output| {
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        s.trim_end().rsplit("\r\n\r\n").next().unwrap_or_default().to_owned()
    };
    let header = |h: &str, name: &str| -> String {
        h.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let code = |h: &str| h.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("").to_owned();
    let layers = hosted_layers(t, r);
    for (p, d) in &layers {
        let out = t
            .curl("cl", 60)
            .args(["-o", "/dev/null", "-D", "-", "-X", "POST", &format!("{lb}/v2/{repo}/blobs/uploads/")])
            .output()
            .expect("curl");
        let h = head_of(&out);
        assert_eq!(code(&h), "202", "POST: {h}");
        nodes.insert(header(&h, "x-wharfie-node"));
        let loc = header(&h, "location");
        let loc = if loc.starts_with("http") { loc } else { format!("{lb}{loc}") };
        let out = t
            .curl("cl", 60)
            .args([
                "-o",
                "/dev/null",
                "-D",
                "-",
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
            ])
            .arg(format!("@{}", p.display()))
            .arg(&loc)
            .output()
            .expect("curl");
        let h = head_of(&out);
        assert_eq!(code(&h), "202", "PATCH: {h}");
        nodes.insert(header(&h, "x-wharfie-node"));
        let loc = header(&h, "location");
        let loc = if loc.starts_with("http") { loc } else { format!("{lb}{loc}") };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let out = t
            .curl("cl", 60)
            .args(["-o", "/dev/null", "-D", "-", "-X", "PUT", &format!("{loc}{sep}digest={d}")])
            .output()
            .expect("curl");
        let h = head_of(&out);
        assert_eq!(code(&h), "201", "PUT: {h}");
        nodes.insert(header(&h, "x-wharfie-node"));
    }
    let cfg = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}";
    let cp = t.tmp.path().join(format!("hosted{r}-config"));
    std::fs::write(&cp, cfg).expect("config");
    let cd = wharfie_testkit::common::sha256(cfg);
    let out = t
        .curl("cl", 60)
        .args(["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "--data-binary"])
        .arg(format!("@{}", cp.display()))
        .arg(format!("{lb}/v2/{repo}/blobs/uploads/?digest={cd}"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "monolithic config upload");
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{}\",\"config\":{{\"mediaType\":\"{}\",\"digest\":\"{cd}\",\"size\":{}}},\"layers\":[{}]}}",
        cluster::OCI_MANIFEST,
        cluster::OCI_CONFIG,
        cfg.len(),
        layers
            .iter()
            .map(|(p, d)| format!("{{\"mediaType\":\"{}\",\"digest\":\"{d}\",\"size\":{}}}", cluster::OCI_LAYER, std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mp = t.tmp.path().join(format!("hosted{r}-manifest"));
    std::fs::write(&mp, &manifest).expect("manifest");
    assert_eq!(t.put_manifest("cl", lb, repo, "v1", &mp), "201", "manifest PUT through the balancer");
    // The pull, right after the 201s.
    let mut urls = vec![format!("{lb}/v2/{repo}/manifests/v1")];
    urls.extend(layers.iter().map(|(_, d)| format!("{lb}/v2/{repo}/blobs/{d}")));
    let (res, _) = parallel_pulls(t, "cl", &urls, 1, 60);
    for (i, f) in res[0].iter().enumerate() {
        assert_eq!(f.code, 200, "pull of {repo} right after the push, URL {i}");
        nodes.insert(f.node.clone());
    }
    assert_eq!(nodes.len(), 1, "{repo}: every request on one node, got {nodes:?}");
    nodes.into_iter().next().unwrap_or_default()
}

#[test]
fn tiered_mirrors_site_regional_upstream() {
    require_root();
    let mut t = Topology::new(&[
        ("up", 10),
        ("regional", 20),
        ("site1", 21),
        ("site2", 22),
        ("cl", 100),
        ("cl2", 101),
    ]);
    let reg = t.registry("up");
    let img = seed_image(&t, "up", "library/tier", "v1", 2, 64 * MIB, 3);
    // The regional tier: a docker.io mirror that sites must log in to (Basic).
    let htpasswd = t.tmp.path().join("htpasswd");
    let out = std::process::Command::new(cluster::tool("htpasswd", "apache2-utils"))
        .args(["-nbB", "site", "site-secret"])
        .output()
        .expect("htpasswd");
    assert!(out.status.success(), "htpasswd -nbB");
    std::fs::write(&htpasswd, &out.stdout).expect("htpasswd file");
    let regional_cfg = format!(
        "{}[auth]\nhtpasswd = \"{}\"\nanonymous = \"none\"\n",
        mirror_cfg(&t.ip("up")),
        htpasswd.display()
    );
    let regional = t.wharfie("regional", &regional_cfg);
    // Sites: their docker.io upstream is the regional's docker.io namespace; clients
    // change nothing.
    let site_cfg = format!(
        "[[upstreams]]\nname = \"docker.io\"\nurl = \"http://{}:5000\"\nnamespace = \"docker.io\"\n\
         username = \"site\"\npassword = \"site-secret\"\ntag_ttl = \"1s\"\ntimeout = \"3s\"\n",
        t.ip("regional")
    );
    t.wharfie("site1", &site_cfg);
    t.wharfie("site2", &site_cfg);
    let ips: std::collections::HashMap<String, String> =
        t.hosts.iter().map(|h| (h.name.clone(), h.ip.clone())).collect();
    let site = |s: &str| format!("http://{}:5000", ips[s]);
    let (layer, size) = img.layers[0].clone();

    // Without credentials the regional refuses: the sites' requests below are authenticated.
    let (code, body) =
        t.get("cl", &format!("{}/v2/docker.io/{}/blobs/{layer}", site("regional"), img.repo), &[]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("UNAUTHORIZED"), "{body}");

    let blob_gets = |t: &Topology, host: &str| {
        t.metric("cl", host, "wharfie_upstream_requests_total", &["kind=\"blob\"", "status=\"200\""])
    };
    let url1 = format!("{}/v2/docker.io/{}/blobs/{layer}", site("site1"), img.repo);
    let (res, wall1) = parallel_pulls(&t, "cl", std::slice::from_ref(&url1), 100, PULL_SECS);
    assert!(
        res.iter().all(|r| r.len() == 1 && r[0].code == 200 && r[0].size == size),
        "site1 clients: {:?}",
        res.iter().find(|r| r[0].code != 200)
    );
    let (s1, rg) = (blob_gets(&t, "site1"), blob_gets(&t, "regional"));
    let (up_gets, _) = t.upstream_count(reg, &format!("/v2/{}/blobs/{layer}", img.repo));
    println!(
        "tiers: 100 cold clients at one site, 1 blob of 64 MiB: site->regional GETs {s1}, regional->upstream GETs \
         {rg}, upstream log GETs {up_gets}, all complete in {wall1:.1} s"
    );
    assert_eq!((s1, rg, up_gets), (1, 1, 1));

    let url2 = format!("{}/v2/docker.io/{}/blobs/{layer}", site("site2"), img.repo);
    let (res, wall2) = parallel_pulls(&t, "cl2", std::slice::from_ref(&url2), 100, PULL_SECS);
    assert!(res.iter().all(|r| r.len() == 1 && r[0].code == 200 && r[0].size == size), "site2 clients");
    let (s2, rg) = (blob_gets(&t, "site2"), blob_gets(&t, "regional"));
    let (up_gets, _) = t.upstream_count(reg, &format!("/v2/{}/blobs/{layer}", img.repo));
    println!(
        "tiers: two sites x 100 cold clients: GETs into the regional {} (site1 {s1}, site2 {s2}), out of it {rg}, \
         upstream log GETs {up_gets}; site2's 100 complete in {wall2:.1} s",
        s1 + s2
    );
    assert_eq!((s1 + s2, rg, up_gets), (2, 1, 1));

    // The manifest by tag through both tiers (cached at site1 and the regional).
    let murl = format!("{}/v2/docker.io/{}/manifests/{}", site("site1"), img.repo, img.tag);
    let out = t.curl("cl", 30).args(["-o", "/dev/null", "-D", "-", &murl]).output().expect("curl");
    let h = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(h.starts_with("http/1.1 200"), "{h}");
    assert!(h.contains(&format!("docker-content-digest: {}", img.manifest)), "{h}");

    // The regional down: the site serves what it has, fails the rest cleanly.
    t.kill(regional);
    std::thread::sleep(Duration::from_millis(1200)); // past the site's tag_ttl
    let timed = |url: &str| {
        let s = Instant::now();
        let (code, _) = t.get("cl", url, &["-o", "/dev/null"]);
        (code, s.elapsed().as_secs_f64())
    };
    let (mcode, mt) = timed(&murl);
    let (bcode, bt) = timed(&url1);
    let (missing, _) = img.layers[1].clone();
    let (ucode, ut) = timed(&format!("{}/v2/docker.io/{}/blobs/{missing}", site("site1"), img.repo));
    println!(
        "tiers: regional down: site serves its cached tag {mcode} in {mt:.2} s, cached blob {bcode} in {bt:.2} s; \
         an uncached blob fails {ucode} in {ut:.2} s (upstream timeout 3 s; h2's down window makes it immediate)"
    );
    assert_eq!((mcode, bcode), (200, 200), "cached content is served with the regional down");
    assert_eq!(ucode, 503, "a miss with the regional down is a clean 503");
    assert!(mt < 20.0 && bt < 20.0 && ut < 20.0, "bounded: {mt} {bt} {ut}");
}
