//! A small, real HTTP/1.1 upstream registry for the mirror tests: a raw tokio
//! `TcpListener` that speaks just enough of the distribution API (`GET /v2/`,
//! HEAD/GET manifests by tag and digest, HEAD/GET blobs with `Range: bytes=N-`),
//! one request per connection (`Connection: close`), counting every request, and
//! misbehaving on purpose when a test asks it to (see [`Faults`]).
//!
//! It runs on its own small tokio runtime, so the tests themselves stay synchronous.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use super::sha256;

/// What a request asked for, by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ping,
    Manifest,
    Blob,
    /// `GET /token`, the Bearer token endpoint.
    Token,
    Other,
}

/// One request as the upstream received it, and what it answered.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub kind: Kind,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `Authorization` header, if any.
    pub auth: Option<String>,
    pub status: u16,
    pub at: Instant,
}

/// Misbehaviour, applied to manifest and blob requests.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Answer the next K requests with 500.
    pub fail_500: usize,
    /// Answer the next K requests with 429 and `Retry-After: <retry_after>`.
    pub fail_429: usize,
    pub retry_after: u64,
    /// Cut the connection of the next blob GET after this many body bytes (one-shot).
    pub cut_blob_after: Option<usize>,
    /// Pause the next blob GET after this many body bytes, until `release` (one-shot;
    /// `paused()` tells when it got there).
    pub pause_blob_after: Option<usize>,
    /// Serve blob bodies with their first byte flipped (same length, wrong digest).
    pub corrupt_blobs: bool,
    /// Send blob bodies `chunk` bytes at a time, `every` apart.
    pub throttle: Option<(usize, Duration)>,
    /// Read the request, then never answer.
    pub stall: bool,
    /// Require `Authorization: Bearer <token>` on manifests and blobs (401 with a
    /// Bearer challenge pointing at `/token` otherwise).
    pub bearer: Option<String>,
    /// The token endpoint requires this exact `Authorization` value (e.g. `Basic …`).
    pub token_auth: Option<String>,
    /// Reset (RST) the connection of the next K manifest/blob requests after reading them.
    pub reset: usize,
    /// Announce blob bodies' `Content-Length` off by this many bytes (the bytes sent are
    /// the real ones).
    pub length_delta: i64,
    /// Answer manifest and blob GETs with a 200 HTML page (a captive portal, a proxy).
    pub html: bool,
}

#[derive(Default)]
struct Content {
    /// (repository, tag) → manifest digest.
    tags: HashMap<(String, String), String>,
    /// digest → (media type, bytes).
    manifests: HashMap<String, (String, Vec<u8>)>,
    /// digest → bytes.
    blobs: HashMap<String, Arc<Vec<u8>>>,
}

struct Shared {
    content: Mutex<Content>,
    faults: Mutex<Faults>,
    log: Mutex<Vec<Logged>>,
    /// (blob path, instant the last body byte was written) for every complete blob body.
    blob_done: Mutex<Vec<(String, Instant)>>,
    /// false: hold every non-ping request before answering it.
    gate: tokio::sync::watch::Sender<bool>,
    /// A blob GET reached its `pause_blob_after` point.
    paused: AtomicBool,
    /// Connections in progress (aborted by `stop`).
    conns: Mutex<Vec<AbortHandle>>,
    /// Manifest and blob GETs in progress now (read, possibly held, until the body's
    /// end), and the most there ever were at once.
    gets: Mutex<(usize, usize)>,
    /// `http://127.0.0.1:PORT`
    base: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fake upstream. Stops (and drops every connection) on drop.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
    accept: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    pub fn start() -> FakeUpstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("fake-upstream")
            .build()
            .expect("upstream runtime");
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let (gate, _) = tokio::sync::watch::channel(true);
        let shared = Arc::new(Shared {
            content: Mutex::new(Content::default()),
            faults: Mutex::new(Faults { retry_after: 1, ..Faults::default() }),
            log: Mutex::new(Vec::new()),
            blob_done: Mutex::new(Vec::new()),
            gate,
            paused: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            gets: Mutex::new((0, 0)),
            base: format!("http://{addr}"),
        });
        let accept = rt.spawn(accept_loop(listener, shared.clone()));
        FakeUpstream { addr, shared, rt: Some(rt), accept: Some(accept) }
    }

    /// After `stop`: listen again on the same address, with the same content.
    pub fn resume(&mut self) {
        let Some(rt) = self.rt.as_ref() else { return };
        if self.accept.is_some() {
            return;
        }
        let listener = rt.block_on(TcpListener::bind(self.addr)).expect("bind the upstream again");
        self.accept = Some(rt.spawn(accept_loop(listener, self.shared.clone())));
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Close the listener (later connections are refused) and drop every connection.
    pub fn stop(&mut self) {
        if let (Some(rt), Some(h)) = (self.rt.as_ref(), self.accept.take()) {
            h.abort();
            let _ = rt.block_on(h);
            for c in lock(&self.shared.conns).drain(..) {
                c.abort();
            }
        }
    }

    /// Store a blob; returns its digest.
    pub fn add_blob(&self, bytes: Vec<u8>) -> String {
        let d = sha256(&bytes);
        lock(&self.shared.content).blobs.insert(d.clone(), Arc::new(bytes));
        d
    }

    /// Store `bytes` as if they were the manifest `digest` (wrong bytes for a digest),
    /// and point `repo:tag` at it when a tag is given.
    pub fn add_manifest_as(
        &self,
        repo: &str,
        tag: Option<&str>,
        digest: &str,
        media_type: &str,
        bytes: &[u8],
    ) {
        let mut c = lock(&self.shared.content);
        c.manifests.insert(digest.to_string(), (media_type.to_string(), bytes.to_vec()));
        if let Some(t) = tag {
            c.tags.insert((repo.to_string(), t.to_string()), digest.to_string());
        }
    }

    /// Store a manifest (and point `repo:tag` at it when a tag is given); returns its digest.
    pub fn add_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, bytes: &[u8]) -> String {
        let d = sha256(bytes);
        let mut c = lock(&self.shared.content);
        c.manifests.insert(d.clone(), (media_type.to_string(), bytes.to_vec()));
        if let Some(t) = tag {
            c.tags.insert((repo.to_string(), t.to_string()), d.clone());
        }
        d
    }

    /// Change the faults.
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut lock(&self.shared.faults));
    }

    /// Whether a blob GET reached its `pause_blob_after` point (it then waits for
    /// `release`).
    pub fn paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// Hold every non-ping request (after it is read) until `release`.
    pub fn hold(&self) {
        self.shared.gate.send_replace(false);
    }

    pub fn release(&self) {
        self.shared.gate.send_replace(true);
    }

    /// Every request answered (or being answered) so far.
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.shared.log).clone()
    }

    /// Requests of `method` and `kind` so far.
    pub fn count(&self, method: &str, kind: Kind) -> usize {
        lock(&self.shared.log).iter().filter(|l| l.method == method && l.kind == kind).count()
    }

    /// Every request except pings.
    pub fn total(&self) -> usize {
        lock(&self.shared.log).iter().filter(|l| l.kind != Kind::Ping).count()
    }

    /// Manifest and blob GETs in progress now (held ones included).
    pub fn gets_now(&self) -> usize {
        lock(&self.shared.gets).0
    }

    /// The most manifest and blob GETs that were ever in progress at once.
    pub fn max_concurrent_gets(&self) -> usize {
        lock(&self.shared.gets).1
    }

    /// When the body of blob `digest` was last sent completely.
    pub fn blob_done(&self, digest: &str) -> Option<Instant> {
        lock(&self.shared.blob_done).iter().rev().find(|(p, _)| p.ends_with(digest)).map(|(_, t)| *t)
    }

    /// A one-line summary of the request log, for assertion messages.
    pub fn summary(&self) -> String {
        lock(&self.shared.log)
            .iter()
            .map(|l| {
                format!(
                    "{} {}{} -> {}",
                    l.method,
                    l.path,
                    l.range.as_ref().map(|r| format!(" [{r}]")).unwrap_or_default(),
                    l.status
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.release();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let sh2 = sh.clone();
        let h = tokio::spawn(async move { serve_conn(sock, sh2).await });
        let mut conns = lock(&sh.conns);
        conns.retain(|c| !c.is_finished());
        conns.push(h.abort_handle());
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Read one request head (the tests send no request bodies upstream).
async fn read_head(s: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let path = target.split('?').next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Request { method, path, headers })
}

fn classify(path: &str) -> Kind {
    if path == "/v2/" || path == "/v2" {
        Kind::Ping
    } else if path.starts_with("/v2/") && path.contains("/manifests/") {
        Kind::Manifest
    } else if path.starts_with("/v2/") && path.contains("/blobs/") {
        Kind::Blob
    } else if path == "/token" {
        Kind::Token
    } else {
        Kind::Other
    }
}

/// How a response body is sent.
enum Body {
    None,
    Bytes(Vec<u8>),
    /// A blob from `offset` on, with the faults that apply to it.
    Blob {
        data: Arc<Vec<u8>>,
        offset: usize,
        cut_after: Option<usize>,
        pause_after: Option<usize>,
        corrupt: bool,
        throttle: Option<(usize, Duration)>,
    },
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    /// The Content-Length to announce.
    length: usize,
    body: Body,
}

fn error(status: u16, code: &str) -> Answer {
    let b = format!("{{\"errors\":[{{\"code\":\"{code}\",\"message\":\"fake upstream\"}}]}}").into_bytes();
    Answer {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        length: b.len(),
        body: Body::Bytes(b),
    }
}

fn answer(req: &Request, kind: Kind, sh: &Shared) -> Answer {
    let head = req.method == "HEAD";
    if kind == Kind::Token {
        let f = lock(&sh.faults);
        if f.token_auth.as_deref().is_some_and(|want| req.header("authorization") != Some(want)) {
            return error(401, "UNAUTHORIZED");
        }
        let b = format!("{{\"token\":\"{}\",\"expires_in\":300}}", f.bearer.clone().unwrap_or_default());
        return Answer {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            length: b.len(),
            body: Body::Bytes(b.into_bytes()),
        };
    }
    if kind == Kind::Manifest || kind == Kind::Blob {
        let f = lock(&sh.faults);
        if let Some(t) = &f.bearer {
            if req.header("authorization") != Some(format!("Bearer {t}").as_str()) {
                let (repo, _) = split(&req.path, if kind == Kind::Blob { "/blobs/" } else { "/manifests/" });
                let mut a = error(401, "UNAUTHORIZED");
                a.headers.push((
                    "WWW-Authenticate".into(),
                    format!(
                        "Bearer realm=\"{}/token\",service=\"fake\",scope=\"repository:{repo}:pull\"",
                        sh.base
                    ),
                ));
                return a;
            }
        }
    }
    if kind == Kind::Manifest || kind == Kind::Blob {
        let mut f = lock(&sh.faults);
        if f.fail_500 > 0 {
            f.fail_500 -= 1;
            return error(500, "UNKNOWN");
        }
        if f.fail_429 > 0 {
            f.fail_429 -= 1;
            let mut a = error(429, "TOOMANYREQUESTS");
            a.headers.push(("Retry-After".into(), f.retry_after.to_string()));
            return a;
        }
    }
    if (kind == Kind::Manifest || kind == Kind::Blob) && !head && lock(&sh.faults).html {
        let b = b"<!DOCTYPE html><html><body><h1>Please log in to the network</h1></body></html>".to_vec();
        return Answer {
            status: 200,
            headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
            length: b.len(),
            body: Body::Bytes(b),
        };
    }
    match kind {
        Kind::Ping => Answer {
            status: 200,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Docker-Distribution-API-Version".into(), "registry/2.0".into()),
            ],
            length: 2,
            body: if head { Body::None } else { Body::Bytes(b"{}".to_vec()) },
        },
        Kind::Manifest => {
            let (repo, reference) = split(&req.path, "/manifests/");
            let c = lock(&sh.content);
            let digest = if reference.starts_with("sha256:") {
                Some(reference.to_string())
            } else {
                c.tags.get(&(repo.to_string(), reference.to_string())).cloned()
            };
            let Some((digest, (mt, bytes))) =
                digest.and_then(|d| c.manifests.get(&d).map(|m| (d, m.clone())))
            else {
                return error(404, "MANIFEST_UNKNOWN");
            };
            Answer {
                status: 200,
                headers: vec![("Content-Type".into(), mt), ("Docker-Content-Digest".into(), digest)],
                length: bytes.len(),
                body: if head { Body::None } else { Body::Bytes(bytes) },
            }
        }
        Kind::Blob => {
            let (_, digest) = split(&req.path, "/blobs/");
            let Some(data) = lock(&sh.content).blobs.get(digest).cloned() else {
                return error(404, "BLOB_UNKNOWN");
            };
            let size = data.len();
            let mut headers = vec![
                ("Content-Type".into(), "application/octet-stream".into()),
                ("Docker-Content-Digest".into(), digest.to_string()),
                ("Accept-Ranges".into(), "bytes".into()),
            ];
            let offset = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok());
            let (status, offset) = match offset {
                Some(o) if o < size => {
                    headers.push(("Content-Range".into(), format!("bytes {o}-{}/{size}", size - 1)));
                    (206, o)
                }
                Some(_) => return error(416, "RANGE_INVALID"),
                None => (200, 0),
            };
            if head {
                return Answer { status, headers, length: size - offset, body: Body::None };
            }
            let mut f = lock(&sh.faults);
            let body = Body::Blob {
                data,
                offset,
                cut_after: f.cut_blob_after.take(),
                pause_after: f.pause_blob_after.take(),
                corrupt: f.corrupt_blobs,
                throttle: f.throttle,
            };
            Answer { status, headers, length: size - offset, body }
        }
        Kind::Other | Kind::Token => error(404, "NAME_UNKNOWN"),
    }
}

/// `/v2/<repo><sep><rest>` → (repo, rest).
fn split<'a>(path: &'a str, sep: &str) -> (&'a str, &'a str) {
    let p = path.strip_prefix("/v2/").unwrap_or(path);
    match p.rfind(sep) {
        Some(i) => (&p[..i], &p[i + sep.len()..]),
        None => (p, ""),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Whatever",
    }
}

/// Log `req` as answered with `status` (0: never answered).
fn log(sh: &Shared, req: &Request, kind: Kind, status: u16) {
    lock(&sh.log).push(Logged {
        method: req.method.clone(),
        path: req.path.clone(),
        kind,
        range: req.header("range").map(str::to_owned),
        auth: req.header("authorization").map(str::to_owned),
        status,
        at: Instant::now(),
    });
}

/// Counts one GET in progress until dropped (however the connection ends).
struct InFlight(Arc<Shared>);

impl InFlight {
    fn start(sh: &Arc<Shared>) -> InFlight {
        let mut g = lock(&sh.gets);
        g.0 += 1;
        g.1 = g.1.max(g.0);
        InFlight(sh.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0.gets).0 -= 1;
    }
}

async fn serve_conn(mut s: TcpStream, sh: Arc<Shared>) {
    let Some(req) = read_head(&mut s).await else { return };
    let kind = classify(&req.path);
    let _in_flight =
        (req.method == "GET" && (kind == Kind::Manifest || kind == Kind::Blob)).then(|| InFlight::start(&sh));
    let stall = (kind == Kind::Manifest || kind == Kind::Blob) && lock(&sh.faults).stall;
    if stall {
        log(&sh, &req, kind, 0);
        // Keep the connection open, never answer.
        std::future::pending::<()>().await;
    }
    if kind == Kind::Manifest || kind == Kind::Blob {
        let mut rx = sh.gate.subscribe();
        let _ = rx.wait_for(|open| *open).await;
        let reset = {
            let mut f = lock(&sh.faults);
            let r = f.reset > 0;
            f.reset = f.reset.saturating_sub(1);
            r
        };
        if reset {
            log(&sh, &req, kind, 0);
            // A zero linger does not block on drop (the reason for the deprecation).
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            return; // dropped with linger 0: RST
        }
    }
    let a = answer(&req, kind, &sh);
    log(&sh, &req, kind, a.status);
    let mut head = format!("HTTP/1.1 {} {}\r\n", a.status, reason(a.status));
    for (k, v) in &a.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let delta = if matches!(a.body, Body::Blob { .. }) { lock(&sh.faults).length_delta } else { 0 };
    let length = (a.length as i64 + delta).max(0);
    head.push_str(&format!("Content-Length: {length}\r\nConnection: close\r\n\r\n"));
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    match a.body {
        Body::None => {}
        Body::Bytes(b) => {
            let _ = s.write_all(&b).await;
        }
        Body::Blob { data, offset, cut_after, pause_after, corrupt, throttle } => {
            let mut body = data[offset..].to_vec();
            if corrupt && !body.is_empty() {
                body[0] ^= 0xff;
            }
            let send = cut_after.map_or(body.len(), |m| m.min(body.len()));
            let (chunk, every) = throttle.unwrap_or((256 * 1024, Duration::ZERO));
            let mut sent = 0;
            while sent < send {
                if pause_after.is_some_and(|p| sent >= p) && !sh.paused.swap(true, Ordering::SeqCst) {
                    let _ = s.flush().await;
                    sh.gate.send_replace(false);
                    let mut rx = sh.gate.subscribe();
                    let _ = rx.wait_for(|open| *open).await;
                }
                let n = chunk.min(send - sent);
                let n = pause_after.filter(|p| sent < *p).map_or(n, |p| n.min(p - sent));
                if s.write_all(&body[sent..sent + n]).await.is_err() {
                    return;
                }
                sent += n;
                if sent < send && !every.is_zero() {
                    tokio::time::sleep(every).await;
                }
            }
            if send == body.len() {
                lock(&sh.blob_done).push((req.path.clone(), Instant::now()));
            }
        }
    }
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}
