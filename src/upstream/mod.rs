//! `upstream/`: a client for one upstream registry — manifests, blob streams, the
//! `WWW-Authenticate` dance (anonymous or basic-credential bearer tokens, cached until
//! they expire; plain basic auth), retries with exponential backoff and jitter inside a
//! deadline, and the upstream's health (`health.rs`): after a transport failure, a
//! response-header timeout, or 5xx/429 past the retries, it is down for a growing
//! window and requests fail at once with [`UpstreamError::Down`].
//!
//! Errors name the upstream by its configured name and the cause in a few words; they
//! never carry its URL (they reach clients).
//!
//! May import: reqwest, digest, names, manifest. Only this module names reqwest.

mod auth;
pub(crate) mod client;
mod health;
pub(crate) mod limits;
pub(crate) mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::{header, Method, StatusCode};

use crate::digest::Digest;
use auth::Auth;

/// Every manifest type we store, for `Accept`.
const MANIFEST_ACCEPT: &str = crate::manifest::ACCEPT;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("not found upstream")]
    NotFound,
    #[error("upstream refused our credentials: {0}")]
    Unauthorized(String),
    #[error("upstream answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("upstream unreachable: {0}")]
    Transport(String),
    /// The connection could not be made (refused, unreachable, DNS, TLS).
    #[error("upstream unreachable: {0}")]
    Connect(String),
    /// No response headers within the deadline (a hung upstream).
    #[error("upstream sent no response within {0:?}")]
    Timeout(Duration),
    #[error("upstream sent something unusable: {0}")]
    Invalid(String),
    /// The upstream is marked down: nothing was sent (or this request just found it
    /// failing). `cause` reads after the name: "is unreachable (connection refused)".
    #[error("upstream {upstream} {cause}; retry in {retry_in} s")]
    Down { upstream: String, cause: String, retry_in: u64 },
}

impl UpstreamError {
    /// Worth another try (the upstream may recover)?
    fn retryable(&self) -> bool {
        match self {
            UpstreamError::Transport(_) | UpstreamError::Connect(_) | UpstreamError::Timeout(_) => true,
            UpstreamError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Does this failure mark the upstream down? As what (after its name)? A 404, a
    /// 401 or an unusable answer show an upstream that answers: not a health failure.
    fn health_cause(&self) -> Option<String> {
        match self {
            UpstreamError::Transport(c) | UpstreamError::Connect(c) => Some(format!("is unreachable ({c})")),
            UpstreamError::Timeout(d) => Some(format!("is not answering (no response within {d:?})")),
            UpstreamError::Status { status, .. } if *status == 429 || *status >= 500 => {
                let reason = StatusCode::from_u16(*status).ok().and_then(|s| s.canonical_reason());
                Some(format!(
                    "is failing (answered {status}{})",
                    reason.map(|r| format!(" {r}")).unwrap_or_default()
                ))
            }
            _ => None,
        }
    }

    /// Seconds to wait before trying again, when the upstream is down.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            UpstreamError::Down { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }
}

/// One request to the upstream, as `send`, `send_retrying` and `send_once` pass it on.
struct Request<'a> {
    /// What it is for `on_request` (metrics): `manifest`, `blob_head`, …
    kind: &'a str,
    method: Method,
    /// The path on the upstream (`/v2/…`), in its own repository names.
    path: &'a str,
    /// The upstream repository, for its Bearer token.
    repo: &'a str,
    headers: &'a [(header::HeaderName, String)],
    attempts: Attempts,
}

/// How hard one request tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempts {
    /// A cached copy can answer if this fails: a connect failure is final at once.
    StaleOk,
    /// A miss: retry within the deadline (connect failures only twice, quickly).
    Retry,
}

/// Retries of a connect failure for a miss: a restarting upstream gets two more tries
/// within a second; a refusing one is not asked again and again.
const CONNECT_RETRIES: u32 = 2;

/// Settings of one upstream, as the config resolves them: nothing here is parsed or
/// read again.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// The base URL; API paths (`/v2/…`) are appended to it.
    pub url: reqwest::Url,
    /// (username, password) for Basic auth and token requests.
    pub credentials: Option<(String, String)>,
    /// Extra CA certificates to trust (DER), already checked as trust anchors.
    pub ca_certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Total time one logical request may spend on retries.
    pub deadline: Duration,
    /// A namespace on the upstream that every repository lives under: `docker.io` makes
    /// `library/nginx` be requested as `/v2/docker.io/library/nginx/…` (a wharfie tier
    /// whose upstream is another wharfie's mirrored namespace).
    pub namespace: Option<String>,
    /// The first down window after a failure; it doubles on each failed probe...
    pub down_min: Duration,
    /// ...up to this.
    pub down_max: Duration,
    /// Fetches (blob fills, manifest fetches) at once; the rest queue (`None`: no limit).
    pub max_concurrent_fetches: Option<usize>,
    /// Blob body bytes per second, all fetches together (`None`: no limit).
    pub max_bytes_per_sec: Option<u64>,
}

/// A manifest as fetched.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: Option<String>,
    /// The upstream's `Docker-Content-Digest`, when it sent one.
    pub digest: Option<String>,
}

/// What a manifest HEAD tells.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
}

/// An open blob body.
pub struct BlobStream {
    /// Bytes still to come (the full size for a fresh GET, the rest for a range).
    pub remaining: Option<u64>,
    /// Whether the upstream honoured the `Range` we asked for.
    pub partial: bool,
    pub body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>,
}

/// Called with (kind, status) for every request sent.
pub(crate) type RequestHook = Arc<dyn Fn(&str, u16) + Send + Sync>;

/// Called with `true` when the upstream comes up, `false` when it goes down.
pub(crate) type HealthHook = Arc<dyn Fn(bool) + Send + Sync>;

/// One upstream registry.
pub struct Upstream {
    cfg: UpstreamConfig,
    http: reqwest::Client,
    auth: Auth,
    health: health::Health,
    limits: Arc<limits::Limits>,
    /// Counts every HTTP request sent, by kind and status (for metrics).
    pub on_request: Option<RequestHook>,
    /// Told of every health transition (for the `wharfie_upstream_up` gauge).
    pub on_health: Option<HealthHook>,
}

impl Upstream {
    pub fn new(cfg: UpstreamConfig) -> Result<Self, UpstreamError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A stalled body must not outlast the deadline of the request it belongs to.
            .read_timeout(cfg.deadline.clamp(Duration::from_secs(1), Duration::from_secs(30)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("wharfie/", env!("CARGO_PKG_VERSION")));
        for der in &cfg.ca_certs {
            let cert = reqwest::Certificate::from_der(der.as_ref())
                .map_err(|e| UpstreamError::Invalid(format!("a CA certificate: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        let http = b.build().map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        let (username, password) = cfg.credentials.clone().unzip();
        let auth = Auth::new(username, password);
        let health = health::Health::new(cfg.down_min, cfg.down_max);
        let limits = Arc::new(limits::Limits::new(cfg.max_concurrent_fetches, cfg.max_bytes_per_sec));
        Ok(Upstream { cfg, http, auth, health, limits, on_request: None, on_health: None })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Its fetch slots and byte budget (blob bodies from `get_blob` are throttled here).
    pub fn limits(&self) -> &Arc<limits::Limits> {
        &self.limits
    }

    /// The per-attempt deadline (`timeout` in the config).
    pub fn deadline(&self) -> Duration {
        self.cfg.deadline
    }

    /// The repository's name on the upstream: under `namespace` when one is set. The
    /// same name goes into the path and the token scope.
    fn remote<'a>(&self, repo: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.cfg.namespace {
            Some(ns) => format!("{ns}/{repo}").into(),
            None => repo.into(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.cfg.url.as_str().trim_end_matches('/'), path)
    }

    /// The error while the upstream is marked down, or `None` when a request may be
    /// sent (also when it would be the probe: that slot is not taken here).
    pub fn down_now(&self) -> Option<UpstreamError> {
        self.health.refused(Instant::now()).map(|r| self.down_error(&r.cause, r.retry_in))
    }

    fn down_error(&self, cause: &str, retry_in: Duration) -> UpstreamError {
        // Whole seconds, rounded up, at least 1 (also while a probe is in flight).
        let secs = retry_in.as_secs() + u64::from(retry_in.subsec_nanos() > 0);
        UpstreamError::Down {
            upstream: self.cfg.name.clone(),
            cause: cause.to_owned(),
            retry_in: secs.max(1),
        }
    }

    fn changed(&self, change: health::Change, cause: &str, retry_in: Duration) {
        match change {
            health::Change::None => return,
            health::Change::WentDown => {
                tracing::warn!(upstream = %self.cfg.name, cause, ?retry_in, "upstream marked down");
            }
            health::Change::CameUp => tracing::info!(upstream = %self.cfg.name, "upstream is up again"),
        }
        if let Some(cb) = &self.on_health {
            cb(change == health::Change::CameUp);
        }
    }

    /// Send one request, unless the upstream is down; its outcome updates the health.
    async fn send(&self, req: &Request<'_>) -> Result<reqwest::Response, UpstreamError> {
        let ticket = match self.health.admit(Instant::now()) {
            Ok(t) => t,
            Err(r) => return Err(self.down_error(&r.cause, r.retry_in)),
        };
        match self.send_retrying(req).await {
            Ok(resp) => {
                let ch = self.health.succeeded(ticket);
                self.changed(ch, "", Duration::ZERO);
                Ok(resp)
            }
            Err((e, retry_after)) => {
                let Some(cause) = e.health_cause() else {
                    let ch = self.health.succeeded(ticket);
                    self.changed(ch, "", Duration::ZERO);
                    return Err(e);
                };
                let (left, ch) = self.health.failed(ticket, &cause, retry_after, Instant::now());
                self.changed(ch, &cause, left);
                Err(self.down_error(&cause, left))
            }
        }
    }

    /// Send with auth, retrying what is worth retrying until the deadline. The error
    /// comes with the upstream's last `Retry-After`.
    async fn send_retrying(
        &self,
        req: &Request<'_>,
    ) -> Result<reqwest::Response, (UpstreamError, Option<Duration>)> {
        let deadline = Instant::now() + self.cfg.deadline;
        let mut attempt: u32 = 0;
        let mut connect_failures: u32 = 0;
        loop {
            // Each attempt (connect, auth dance, response headers) gets what is left of
            // the deadline: a stalled upstream costs `timeout`, not the client's own limits.
            let left = deadline.saturating_duration_since(Instant::now());
            let r = match tokio::time::timeout(left, self.send_once(req)).await {
                Ok(r) => r,
                Err(_) => Err((UpstreamError::Timeout(self.cfg.deadline), None)),
            };
            let err = match r {
                Ok(resp) => return Ok(resp),
                Err((e, retry_after)) => {
                    if !e.retryable() {
                        return Err((e, retry_after));
                    }
                    (e, retry_after)
                }
            };
            if matches!(err.0, UpstreamError::Connect(_)) {
                connect_failures += 1;
                if req.attempts == Attempts::StaleOk || connect_failures > CONNECT_RETRIES {
                    return Err(err);
                }
            }
            attempt += 1;
            let backoff = err.1.unwrap_or_else(|| backoff(attempt));
            if Instant::now() + backoff >= deadline {
                return Err(err);
            }
            tracing::warn!(upstream = %self.cfg.name, path = %req.path, attempt, error = %err.0, backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX), "retrying upstream");
            tokio::time::sleep(backoff).await;
        }
    }

    async fn send_once(
        &self,
        req: &Request<'_>,
    ) -> Result<reqwest::Response, (UpstreamError, Option<Duration>)> {
        let Request { kind, ref method, path, repo, headers, .. } = *req;
        let mut reauthed = false;
        loop {
            let mut rb = self.http.request(method.clone(), self.url(path));
            for (k, v) in headers {
                rb = rb.header(k, v);
            }
            if let Some(h) = self.auth.header_for(repo) {
                rb = rb.header(header::AUTHORIZATION, h);
            }
            let resp = rb.send().await.map_err(|e| {
                // The read timeout is the deadline too: no answer is a hung upstream.
                let e = if e.is_timeout() && !e.is_connect() {
                    UpstreamError::Timeout(self.cfg.deadline)
                } else {
                    transport_error(&e)
                };
                (e, None)
            })?;
            let status = resp.status();
            if let Some(cb) = &self.on_request {
                cb(kind, status.as_u16());
            }
            if status == StatusCode::UNAUTHORIZED && !reauthed {
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if let Some(c) = challenge {
                    reauthed = true;
                    self.auth.answer(&self.http, &c, repo).await.map_err(|e| (e, None))?;
                    continue;
                }
            }
            return match status {
                s if s.is_success() => Ok(resp),
                StatusCode::NOT_FOUND => Err((UpstreamError::NotFound, None)),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    Err((UpstreamError::Unauthorized(status.to_string()), None))
                }
                s => {
                    let retry_after = resp
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(30)));
                    let message = resp.text().await.unwrap_or_default();
                    let message: String = message.chars().take(200).collect();
                    Err((UpstreamError::Status { status: s.as_u16(), message }, retry_after))
                }
            };
        }
    }

    /// GET a manifest by tag or digest.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        attempts: Attempts,
    ) -> Result<FetchedManifest, UpstreamError> {
        let (headers, bytes) =
            self.get_document("manifest", "manifests", repo, reference, MANIFEST_ACCEPT, attempts).await?;
        let digest = headers.get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(FetchedManifest { bytes, media_type: content_type(&headers), digest })
    }

    /// GET the referrers API's index for `subject` (the OCI distribution spec's
    /// `/v2/<name>/referrers/<digest>`). `NotFound` means the upstream has no referrers
    /// API (Distribution 2.8): the caller falls back to the referrers tag schema.
    pub async fn get_referrers(
        &self,
        repo: &str,
        subject: &Digest,
        attempts: Attempts,
    ) -> Result<FetchedManifest, UpstreamError> {
        let subject = subject.to_string();
        let (headers, bytes) = self
            .get_document("referrers", "referrers", repo, &subject, crate::manifest::OCI_INDEX, attempts)
            .await?;
        // The answer is built per request: no digest of the upstream's to check it by.
        Ok(FetchedManifest { bytes, media_type: content_type(&headers), digest: None })
    }

    /// GET `/v2/<repo>/<endpoint>/<reference>` (a manifest, a referrers index) with
    /// `accept`, read whole: the response headers and the body.
    async fn get_document(
        &self,
        kind: &str,
        endpoint: &str,
        repo: &str,
        reference: &str,
        accept: &str,
        attempts: Attempts,
    ) -> Result<(header::HeaderMap, Bytes), UpstreamError> {
        let repo = &*self.remote(repo);
        let path = format!("/v2/{repo}/{endpoint}/{reference}");
        let accept = [(header::ACCEPT, accept.to_owned())];
        let resp = self
            .send(&Request { kind, method: Method::GET, path: &path, repo, headers: &accept, attempts })
            .await?;
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| UpstreamError::Transport(cause(&e)))?;
        Ok((headers, bytes))
    }

    /// HEAD a manifest (free against Docker Hub's pull limit).
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
        attempts: Attempts,
    ) -> Result<ManifestHead, UpstreamError> {
        let repo = &*self.remote(repo);
        let path = format!("/v2/{repo}/manifests/{reference}");
        let accept = [(header::ACCEPT, MANIFEST_ACCEPT.into())];
        let resp = self
            .send(&Request {
                kind: "manifest_head",
                method: Method::HEAD,
                path: &path,
                repo,
                headers: &accept,
                attempts,
            })
            .await?;
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(ManifestHead { digest, media_type: content_type(resp.headers()) })
    }

    /// HEAD a blob: does the upstream have it in `repo`? Its size, when it said.
    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, UpstreamError> {
        let repo = &*self.remote(repo);
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .send(&Request {
                kind: "blob_head",
                method: Method::HEAD,
                path: &path,
                repo,
                headers: &[],
                attempts: Attempts::Retry,
            })
            .await?;
        Ok(resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok()))
    }

    /// GET a blob from byte `offset` on.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobStream, UpstreamError> {
        let repo = &*self.remote(repo);
        let path = format!("/v2/{repo}/blobs/{digest}");
        let headers: Vec<(header::HeaderName, String)> =
            if offset > 0 { vec![(header::RANGE, format!("bytes={offset}-"))] } else { vec![] };
        let resp = self
            .send(&Request {
                kind: "blob",
                method: Method::GET,
                path: &path,
                repo,
                headers: &headers,
                attempts: Attempts::Retry,
            })
            .await?;
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
        let remaining = resp.content_length();
        let body = resp.bytes_stream().map(|r| r.map_err(|e| UpstreamError::Transport(cause(&e))));
        Ok(BlobStream { remaining, partial, body: self.limits.throttle(body) })
    }
}

fn content_type(headers: &header::HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
}

/// Exponential backoff with full jitter: up to 100 ms × 2^attempt, capped at 5 s.
fn backoff(attempt: u32) -> Duration {
    let cap = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
    Duration::from_millis(rand::random_range(cap / 2..=cap))
}

/// A request that failed before any answer, classified; its cause carries no URL.
fn transport_error(e: &reqwest::Error) -> UpstreamError {
    if e.is_connect() {
        UpstreamError::Connect(cause(e))
    } else {
        UpstreamError::Transport(cause(e))
    }
}

/// What went wrong, in a few words and without the URL (reqwest's own message names
/// it): "connection refused", "DNS lookup failed: …", "TLS: invalid peer certificate…".
fn cause(e: &reqwest::Error) -> String {
    use std::io::ErrorKind as K;
    let mut chain: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        chain.push(c);
        src = c.source();
    }
    if let Some(io) = chain.iter().find_map(|c| c.downcast_ref::<std::io::Error>()) {
        let known = match io.kind() {
            K::ConnectionRefused => Some("connection refused"),
            K::ConnectionReset => Some("connection reset"),
            K::ConnectionAborted => Some("connection aborted"),
            K::TimedOut => Some("timed out"),
            K::UnexpectedEof => Some("connection closed early"),
            K::HostUnreachable => Some("host unreachable"),
            K::NetworkUnreachable => Some("network unreachable"),
            _ => None,
        };
        if let Some(k) = known {
            return k.to_owned();
        }
    }
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let inner = chain.last().map_or_else(|| e.to_string(), ToString::to_string);
    let texts: Vec<String> = chain.iter().map(ToString::to_string).collect();
    let what = if texts.iter().any(|t| t.contains("dns error")) {
        "DNS lookup failed: "
    } else if texts.iter().any(|t| t.contains("certificate") || t.to_lowercase().contains("tls")) {
        "TLS: "
    } else if e.is_connect() {
        "connect failed: "
    } else if e.is_body() || e.is_decode() {
        "body: "
    } else {
        ""
    };
    let s = format!("{what}{inner}");
    // Never a URL, whatever a lower layer put in its message.
    if s.contains("://") {
        tracing::debug!(error = %error_chain(e), "upstream request failed");
        format!("{what}request failed").trim_end_matches([':', ' ']).to_owned()
    } else {
        s
    }
}

/// An error with its causes, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
