//! Push notifications (`[[notify]]`): the real server (the real binary, so it can be
//! killed with SIGKILL) and a real small HTTP receiver in the test that answers each
//! POST as scripted — 500, stall past the endpoint's timeout, or 200 — and records
//! every request it got.
//!
//! - events for a push by tag, a push by digest, a tag delete and a manifest delete
//!   arrive in that order, in Distribution's envelope, through failures and a stall;
//! - a push completes promptly while the receiver stalls (figures printed);
//! - SIGKILL with events queued, restart: every event is delivered (at-least-once; the
//!   test counts duplicates and prints them);
//! - a queue over `notify_queue_max` drops its oldest events, counted per endpoint, and
//!   delivers the newest in order;
//! - an endpoint's `actions` and `repositories` filters: it receives exactly the events
//!   they match, while an unfiltered endpoint beside it receives every one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking, helpers too
#![allow(clippy::pedantic)] // pedantic is for src/; test and bench code reads as scenarios

use wharfie_testkit::common;
use wharfie_testkit::oci;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Wharfie;
use oci::*;
use serde_json::{json, Value};

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Fail,
    /// Hold the request without answering (until the client gives up, at most `STALL_MAX`).
    Stall,
    Accept,
}

const STALL_MAX: Duration = Duration::from_secs(20);
const DEADLINE: Duration = Duration::from_secs(60);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    answer: Answer,
    content_type: String,
    authorization: String,
    body: Value,
    at: Instant,
}

struct Receiver {
    url: String,
    /// Scripted answers, then `then` for every later request.
    script: Arc<Mutex<(VecDeque<Answer>, Answer)>>,
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(script: &[Answer], then: Answer) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let url = format!("http://{}/events", l.local_addr().expect("addr"));
        l.set_nonblocking(true).expect("nonblocking");
        let script = Arc::new(Mutex::new((script.iter().copied().collect::<VecDeque<_>>(), then)));
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, g, st) = (script.clone(), got.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            // Bounded: the test ends long before this.
            while !st.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600) {
                match l.accept() {
                    Ok((conn, _)) => {
                        let (s, g, st) = (s.clone(), g.clone(), st.clone());
                        std::thread::spawn(move || serve(conn, &s, &g, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Receiver { url, script, got, stop }
    }

    fn set(&self, then: Answer) {
        let mut s = self.script.lock().expect("script");
        s.0.clear();
        s.1 = then;
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().expect("got").clone()
    }

    /// Events of accepted requests, in arrival order.
    fn accepted_events(&self) -> Vec<Value> {
        self.got()
            .iter()
            .filter(|g| g.answer == Answer::Accept)
            .flat_map(|g| g.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Wait until `n` events were accepted (bounded by `DEADLINE`).
    fn wait_events(&self, n: usize) -> Vec<Value> {
        let end = Instant::now() + DEADLINE;
        loop {
            let ev = self.accepted_events();
            if ev.len() >= n {
                return ev;
            }
            assert!(Instant::now() < end, "only {} of {n} events arrived: {:#?}", ev.len(), self.got());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Read one HTTP/1.1 request (headers, Content-Length body), answer as scripted, close.
fn serve(
    conn: TcpStream,
    script: &Mutex<(VecDeque<Answer>, Answer)>,
    got: &Mutex<Vec<Got>>,
    stop: &AtomicBool,
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut r = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let (mut len, mut ct, mut auth) = (0usize, String::new(), String::new());
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "content-type" => ct = v.trim().to_owned(),
                "authorization" => auth = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    let answer = {
        let mut s = script.lock().expect("script");
        let then = s.1;
        s.0.pop_front().unwrap_or(then)
    };
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    got.lock().expect("got").push(Got {
        answer,
        content_type: ct,
        authorization: auth,
        body,
        at: Instant::now(),
    });
    let mut conn = conn;
    match answer {
        Answer::Fail => {
            let _ = conn.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops",
            );
        }
        Answer::Accept => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        Answer::Stall => {
            // Until the client hangs up (its timeout), the test ends, or STALL_MAX.
            let end = Instant::now() + STALL_MAX;
            let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
            let mut b = [0u8; 1];
            while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                match conn.read(&mut b) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// A config file with one `[[notify]]` endpoint at `url`.
fn config(dir: &Path, url: &str, timeout: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let p = dir.join("wharfie.toml");
    let text = endpoint("ci", url, timeout, "headers = { Authorization = \"Bearer t0ken\" }\n");
    std::fs::write(&p, text).expect("write config");
    p
}

/// One `[[notify]]` table: `name` at `url`, short backoffs, then `extra` lines.
fn endpoint(name: &str, url: &str, timeout: &str, extra: &str) -> String {
    format!(
        "[[notify]]\nname = \"{name}\"\nurl = \"{url}\"\ntimeout = \"{timeout}\"\nbackoff_min = \"50ms\"\n\
         backoff_max = \"200ms\"\n{extra}"
    )
}

fn start(dir: &Path, cfg: Option<&Path>) -> Wharfie {
    match cfg {
        Some(c) => Wharfie::start_in(&dir.join("data"), &["--config", c.to_str().expect("utf-8 path")]),
        None => Wharfie::start_in(&dir.join("data"), &[]),
    }
}

/// The value of an unlabelled-but-for-endpoint metric line, for the endpoint `ci`.
fn metric(w: &Wharfie, name: &str) -> u64 {
    metric_of(w, name, "ci")
}

/// The value of `name{endpoint="<endpoint>"}`.
fn metric_of(w: &Wharfie, name: &str, endpoint: &str) -> u64 {
    let text = reqwest::blocking::get(w.url("/metrics")).expect("metrics").text().expect("text");
    let prefix = format!("{name}{{endpoint=\"{endpoint}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        .trim()
        .parse()
        .expect("number")
}

/// A small image manifest over a config and one layer pushed to `name`.
fn image(api: &Api, name: &str, seed: u64) -> Vec<u8> {
    let cfg = format!(r#"{{"seed":{seed}}}"#).into_bytes();
    api.push_blob(name, &cfg);
    let layer = common::bytes_of(64, seed);
    api.push_blob(name, &layer);
    image_manifest(OCI_MANIFEST, &Desc::new(OCI_CONFIG, &cfg), &[Desc::new(OCI_LAYER, &layer)], json!({}))
}

#[test]
fn push_and_delete_events_arrive_in_order_through_failures_and_a_stall() {
    let rx = Receiver::start(&[Answer::Fail, Answer::Fail, Answer::Stall, Answer::Fail], Answer::Accept);
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = config(tmp.path(), &rx.url, "300ms");
    let w = start(tmp.path(), Some(&cfg));
    let api = Api::new(&w);

    let by_tag = image(&api, "team/app", 1);
    let d_tag = api.push_manifest("team/app", "v1", OCI_MANIFEST, &by_tag);
    let by_digest = image(&api, "team/app", 2);
    let d_digest = common::sha256(&by_digest);
    api.push_manifest("team/app", &d_digest, OCI_MANIFEST, &by_digest);
    assert_eq!(api.delete("/v2/team/app/manifests/v1").status, 202);
    assert_eq!(api.delete(&format!("/v2/team/app/manifests/{d_digest}")).status, 202);
    // A refused push (unknown layer) and a delete of nothing record no event.
    let bad = image_manifest(
        OCI_MANIFEST,
        &Desc::phantom(OCI_CONFIG, 9),
        &[Desc::phantom(OCI_LAYER, 10)],
        json!({}),
    );
    api.put_manifest("team/app", "bad", OCI_MANIFEST, &bad).expect_err(400, "MANIFEST_BLOB_UNKNOWN");
    api.delete("/v2/team/app/manifests/nope").expect_err(404, "MANIFEST_UNKNOWN");
    api.get("/v2/team/app/manifests/bad").expect_err(404, "MANIFEST_UNKNOWN");

    let ev = rx.wait_events(4);
    std::thread::sleep(Duration::from_millis(300));
    let ev2 = rx.accepted_events();
    assert_eq!(ev2.len(), 4, "exactly four events (no event for refused requests): {ev2:#?}");
    let got = rx.got();
    for g in &got {
        assert_eq!(g.content_type, "application/vnd.docker.distribution.events.v1+json");
        assert_eq!(g.authorization, "Bearer t0ken", "configured headers are sent");
    }
    let answers: Vec<Answer> = got.iter().map(|g| g.answer).collect();
    assert_eq!(&answers[..5], &[Answer::Fail, Answer::Fail, Answer::Stall, Answer::Fail, Answer::Accept]);
    // Every retry resends the same events, ids included.
    let first_ids = |g: &Got| g.body["events"][0]["id"].as_str().map(str::to_owned);
    assert!(got.iter().all(|g| first_ids(g) == first_ids(&got[0])), "retries keep the event ids");

    let t = |i: usize, k: &str| ev[i]["target"][k].clone();
    assert_eq!(
        ev.iter().map(|e| e["action"].as_str().unwrap_or("")).collect::<Vec<_>>(),
        ["push", "push", "delete", "delete"]
    );
    // push by tag
    assert_eq!(t(0, "repository"), json!("team/app"));
    assert_eq!(t(0, "tag"), json!("v1"));
    assert_eq!(t(0, "digest"), json!(d_tag));
    assert_eq!(t(0, "mediaType"), json!(OCI_MANIFEST));
    assert_eq!(t(0, "size"), json!(by_tag.len()));
    assert_eq!(t(0, "length"), json!(by_tag.len()));
    assert_eq!(t(0, "url"), json!(format!("http://{}/v2/team/app/manifests/{d_tag}", w.addr)));
    // push by digest: no tag
    assert_eq!(t(1, "digest"), json!(d_digest));
    assert_eq!(t(1, "size"), json!(by_digest.len()));
    assert!(ev[1]["target"].get("tag").is_none(), "{:#}", ev[1]);
    // tag delete: the tag and the digest it pointed at
    assert_eq!(t(2, "tag"), json!("v1"));
    assert_eq!(t(2, "digest"), json!(d_tag));
    // manifest delete: the digest, and what the manifest was
    assert_eq!(t(3, "digest"), json!(d_digest));
    assert_eq!(t(3, "mediaType"), json!(OCI_MANIFEST));
    assert!(ev[3]["target"].get("tag").is_none());
    let mut ids = std::collections::BTreeSet::new();
    for (i, e) in ev.iter().enumerate() {
        assert!(ids.insert(e["id"].as_str().unwrap_or_default().to_owned()), "event {i} id unique: {e:#}");
        assert!(e["timestamp"].as_str().is_some_and(|s| s.ends_with('Z')), "RFC 3339: {e:#}");
        assert_eq!(e["source"]["addr"], json!(w.addr));
        assert!(e["source"]["instanceID"].as_str().is_some_and(|s| s.len() == 36));
        let method = if i < 2 { "PUT" } else { "DELETE" };
        assert_eq!(e["request"]["method"], json!(method), "{e:#}");
        assert!(e["request"]["id"].as_str().is_some());
        assert_eq!(e["actor"], json!({}), "anonymous: no actor name");
    }
    assert_eq!(metric(&w, "wharfie_notify_delivered_total"), 4);
    assert_eq!(metric(&w, "wharfie_notify_queue_depth"), 0);
    assert!(metric(&w, "wharfie_notify_failed_attempts_total") >= 4);
    assert_eq!(metric(&w, "wharfie_notify_dropped_total"), 0);
}

/// Median and max of `d`, in milliseconds.
fn stats(d: &mut [Duration]) -> (f64, f64) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1e3;
    (ms(d[d.len() / 2]), ms(d[d.len() - 1]))
}

fn push_times(w: &Wharfie, n: u64) -> Vec<Duration> {
    let api = Api::new(w);
    let mut out = Vec::new();
    for i in 0..n {
        let m = image(&api, "lat/app", 100 + i);
        let t0 = Instant::now();
        api.push_manifest("lat/app", &format!("t{i}"), OCI_MANIFEST, &m);
        out.push(t0.elapsed());
    }
    out
}

#[test]
fn a_stalled_receiver_never_slows_a_push() {
    const N: u64 = 20;
    let tmp = tempfile::tempdir().expect("tmp");
    // Baseline: no endpoint.
    let plain = start(&tmp.path().join("plain"), None);
    let mut base = push_times(&plain, N);
    drop(plain);
    // Every delivery stalls far past the endpoint's timeout.
    let rx = Receiver::start(&[], Answer::Stall);
    let cfg = config(&tmp.path().join("stall"), &rx.url, "10s");
    let w = start(&tmp.path().join("stall"), Some(&cfg));
    let mut stalled = push_times(&w, N);
    let (b50, bmax) = stats(&mut base);
    let (s50, smax) = stats(&mut stalled);
    println!("push latency, no endpoint: p50 {b50:.2} ms, max {bmax:.2} ms ({N} pushes)");
    println!("push latency, stalled receiver: p50 {s50:.2} ms, max {smax:.2} ms ({N} pushes)");
    // Generous: a push must never wait for the 10 s delivery timeout.
    assert!(smax < 2000.0, "a push waited for the stalled receiver: max {smax:.1} ms");
    assert!(rx.got().len() <= 2, "one delivery in flight at a time: {}", rx.got().len());
    assert_eq!(metric(&w, "wharfie_notify_queue_depth"), N, "every event stays queued");
    drop(w);

    // Delivery latency with the receiver up: push → the receiver has the event.
    let up = Receiver::start(&[], Answer::Accept);
    let cfg = config(&tmp.path().join("up"), &up.url, "5s");
    let w = start(&tmp.path().join("up"), Some(&cfg));
    let api = Api::new(&w);
    let mut lat = Vec::new();
    for i in 0..N {
        let m = image(&api, "lat/app", 200 + i);
        let before = up.accepted_events().len();
        api.push_manifest("lat/app", &format!("u{i}"), OCI_MANIFEST, &m);
        let acked = Instant::now();
        up.wait_events(before + 1);
        let at = up.got().last().map_or(acked, |g| g.at);
        lat.push(at.saturating_duration_since(acked));
    }
    let (l50, lmax) = stats(&mut lat);
    println!("delivery latency (201 → receiver has it): p50 {l50:.2} ms, max {lmax:.2} ms ({N} pushes)");
    assert!(lmax < 2000.0, "delivery took {lmax:.1} ms");
}

#[test]
fn sigkill_with_events_queued_loses_none() {
    const N: u64 = 12;
    let rx = Receiver::start(&[], Answer::Fail);
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = config(tmp.path(), &rx.url, "2s");
    let mut w = start(tmp.path(), Some(&cfg));
    let api = Api::new(&w);
    let mut digests = Vec::new();
    for i in 0..N {
        let m = image(&api, "crash/app", 300 + i);
        digests.push(api.push_manifest("crash/app", &format!("k{i}"), OCI_MANIFEST, &m));
    }
    assert_eq!(metric(&w, "wharfie_notify_queue_depth"), N);
    drop(api);
    w.kill(); // SIGKILL
    assert!(rx.accepted_events().is_empty());

    rx.set(Answer::Accept);
    let w = start(tmp.path(), Some(&cfg));
    let t0 = Instant::now();
    let ev = rx.wait_events(N as usize);
    println!(
        "after SIGKILL and restart: {N} queued events delivered {:.1} ms after the restart",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let got: Vec<String> =
        ev.iter().map(|e| e["target"]["digest"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(got[..N as usize], digests[..], "every acknowledged push's event, in push order");
    // And no event announces a push that is not there.
    let api = Api::new(&w);
    for d in &got {
        api.get(&format!("/v2/crash/app/manifests/{d}")).expect_status(200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let ev = rx.accepted_events();
    let ids: std::collections::BTreeSet<_> =
        ev.iter().map(|e| e["id"].as_str().unwrap_or_default()).collect();
    println!(
        "delivered {} events, {} distinct ids (duplicates: {})",
        ev.len(),
        ids.len(),
        ev.len() - ids.len()
    );
    assert_eq!(ids.len(), N as usize, "every event at least once, none invented");
    assert_eq!(metric(&w, "wharfie_notify_queue_depth"), 0);
}

#[test]
fn a_full_queue_drops_the_oldest_events_and_counts_them() {
    const N: u64 = 5;
    const CAP: u64 = 3;
    let rx = Receiver::start(&[], Answer::Fail);
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = config(tmp.path(), &rx.url, "2s");
    let text = std::fs::read_to_string(&cfg).expect("read config");
    std::fs::write(&cfg, format!("notify_queue_max = {CAP}\n{text}")).expect("write config");
    let w = start(tmp.path(), Some(&cfg));
    let api = Api::new(&w);
    let mut digests = Vec::new();
    for i in 0..N {
        let m = image(&api, "full/app", 500 + i);
        digests.push(api.push_manifest("full/app", &format!("t{i}"), OCI_MANIFEST, &m));
    }
    // The receiver refuses everything: the queue holds the newest CAP, the rest dropped.
    assert_eq!(metric(&w, "wharfie_notify_queue_depth"), CAP);
    assert_eq!(metric(&w, "wharfie_notify_dropped_total"), N - CAP);
    // Two more failed attempts: every batch read from then on was read after the last
    // push (the first may have been read before it), so none can hold a dropped event.
    let failed = metric(&w, "wharfie_notify_failed_attempts_total");
    let end = Instant::now() + DEADLINE;
    while metric(&w, "wharfie_notify_failed_attempts_total") < failed + 2 {
        assert!(Instant::now() < end, "the endpoint was not retried");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(rx.accepted_events().is_empty());

    rx.set(Answer::Accept);
    rx.wait_events(CAP as usize);
    std::thread::sleep(Duration::from_millis(300));
    let ev = rx.accepted_events();
    let tags: Vec<&str> = ev.iter().map(|e| e["target"]["tag"].as_str().unwrap_or_default()).collect();
    let got: Vec<&str> = ev.iter().map(|e| e["target"]["digest"].as_str().unwrap_or_default()).collect();
    assert_eq!(tags, ["t2", "t3", "t4"], "the newest {CAP} events, in order: the oldest were dropped");
    assert_eq!(got, digests[(N - CAP) as usize..].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(metric(&w, "wharfie_notify_delivered_total"), CAP);
    assert_eq!(metric(&w, "wharfie_notify_queue_depth"), 0);
    assert_eq!(metric(&w, "wharfie_notify_dropped_total"), N - CAP, "dropped stays counted");
    println!(
        "queue of {CAP}, {N} pushes with the receiver refusing: {} dropped, delivered {tags:?}",
        N - CAP
    );
}

#[test]
fn filtered_endpoints_receive_exactly_the_actions_and_repositories_they_name() {
    let team = Receiver::start(&[], Answer::Accept);
    let deletes = Receiver::start(&[], Answer::Accept);
    let all = Receiver::start(&[], Answer::Accept);
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(tmp.path()).expect("mkdir");
    let cfg = tmp.path().join("wharfie.toml");
    let text = [
        endpoint("team", &team.url, "2s", "actions = [\"push\"]\nrepositories = [\"team/**\"]\n"),
        endpoint("deletes", &deletes.url, "2s", "actions = [\"delete\"]\nrepositories = [\"*/app\"]\n"),
        endpoint("all", &all.url, "2s", ""),
    ]
    .join("\n");
    std::fs::write(&cfg, text).expect("write config");
    let w = start(tmp.path(), Some(&cfg));
    let api = Api::new(&w);

    // (action, repository, tag) in push order.
    let steps = [
        ("push", "team/app", "v1"),
        ("push", "other/app", "v1"),
        ("push", "team/sub/tool", "v1"),
        ("push", "teamster/app", "v1"), // `team/**` is a path prefix, not a string prefix
        ("delete", "team/app", "v1"),
        ("delete", "other/app", "v1"),
        ("delete", "team/sub/tool", "v1"), // `*/app` names one component before `app`
    ];
    for (i, (action, repo, tag)) in steps.iter().enumerate() {
        match *action {
            "push" => {
                let m = image(&api, repo, 700 + i as u64);
                api.push_manifest(repo, tag, OCI_MANIFEST, &m);
            }
            _ => assert_eq!(api.delete(&format!("/v2/{repo}/manifests/{tag}")).status, 202),
        }
    }

    // The unfiltered endpoint is the barrier: every event was committed and delivered there.
    let every = all.wait_events(steps.len());
    let seen = |ev: &[Value]| -> Vec<(String, String)> {
        ev.iter()
            .map(|e| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (s(&e["action"]), s(&e["target"]["repository"]))
            })
            .collect()
    };
    let want = |f: &dyn Fn(&str, &str) -> bool| -> Vec<(String, String)> {
        steps.iter().filter(|(a, r, _)| f(a, r)).map(|(a, r, _)| ((*a).to_owned(), (*r).to_owned())).collect()
    };
    assert_eq!(seen(&every), want(&|_, _| true), "the unfiltered endpoint gets every event in order");
    // Each filtered endpoint has moved past every event (delivered or skipped) once its
    // queue is empty: only then is "it got nothing else" a fact, not a race.
    let end = Instant::now() + DEADLINE;
    for name in ["team", "deletes", "all"] {
        while metric_of(&w, "wharfie_notify_queue_depth", name) != 0 {
            assert!(Instant::now() < end, "endpoint {name} never emptied its queue");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(
        seen(&team.accepted_events()),
        want(&|a, r| a == "push" && (r == "team/app" || r == "team/sub/tool")),
        "team: pushes under team/ only"
    );
    assert_eq!(
        seen(&deletes.accepted_events()),
        want(&|a, r| a == "delete" && r.ends_with("/app") && r.matches('/').count() == 1),
        "deletes: deletes of <one component>/app only"
    );
    assert_eq!(metric_of(&w, "wharfie_notify_delivered_total", "team"), 2);
    assert_eq!(metric_of(&w, "wharfie_notify_delivered_total", "deletes"), 2);
    assert_eq!(metric_of(&w, "wharfie_notify_delivered_total", "all"), steps.len() as u64);
    // Skipped events are not failures and are not retried.
    for name in ["team", "deletes", "all"] {
        assert_eq!(metric_of(&w, "wharfie_notify_failed_attempts_total", name), 0, "{name}");
    }
}
