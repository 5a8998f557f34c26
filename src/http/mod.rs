//! `http/`: the wire. One hyper service hands every request to `handle`:
//! authenticate → dispatch → finish, the route parsed once (by the pure parser in
//! `route.rs`) and handed to `handlers::dispatch`; request bodies a handler leaves
//! unread are drained here and only here. Errors become OCI JSON bodies in one place (`error.rs`); `server.rs` owns the accept loops (one single-threaded runtime per core) and the graceful drain;
//! `guard.rs` authenticates every `/v2` request and names the access each endpoint
//! needs.
//!
//! May import: service, auth, config (listener limits), events (a request's context for
//! its events), web (the page's renderer), manifest, digest, names. Only this module
//! names warp/hyper types.

pub mod error;
pub(crate) mod guard;
pub mod handlers;
pub mod route;
pub(crate) mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method};
use warp::Reply as _;

use crate::auth::Authenticator;
use crate::service::Registry;
use guard::Caller;
use handlers::Req;

const API_VERSION_HEADER: http::HeaderName = http::HeaderName::from_static("docker-distribution-api-version");
const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");

fn parse_query(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes()).into_owned().collect()
}

/// The request body, shared between the handler and [`handle`], so that what a handler
/// leaves unread (a refusal answered before the body: 401/403, 413 by Content-Length)
/// can be read off before the answer goes out. Otherwise hyper closes the connection
/// under a client still sending, which then sees a broken pipe instead of the error.
/// The lock is only held inside one `poll_next`, never across an await.
struct SharedBody(Arc<std::sync::Mutex<Unread>>);

/// A request body and whether it has ended (its end, or an error: never polled again).
struct Unread {
    body: crate::service::Body,
    done: bool,
    /// Whether the handler ever asked for the body.
    polled: bool,
}

impl futures_util::Stream for SharedBody {
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let mut u = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if u.done {
            return Poll::Ready(None);
        }
        u.polled = true;
        let r = u.body.as_mut().poll_next(cx);
        if matches!(r, Poll::Ready(None | Some(Err(_)))) {
            u.done = true;
        }
        r
    }
}

/// At most this much of an unread body is drained, for at most [`DRAIN_FOR`]; past
/// that the connection is closed.
const DRAIN_BYTES: u64 = 64 << 20;
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// The drain bookkeeping of one request: the body shared with the handler, and what
/// the headers say about draining it. Draining request bodies is this layer's job
/// alone: the service only stops reading a body it refuses.
struct Drain {
    body: Arc<std::sync::Mutex<Unread>>,
    /// The client sent `Expect: 100-continue`: it sends its body only once the
    /// server reads it, so if the handler never did, there is nothing to drain.
    expects_continue: bool,
    declared: Option<u64>,
}

impl Drain {
    /// Share `body`: the handler gets one end, the drain keeps the other.
    fn new(headers: &HeaderMap, body: crate::service::Body) -> (Drain, crate::service::Body) {
        let expects_continue = headers
            .get(http::header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = Arc::new(std::sync::Mutex::new(Unread { body, done: false, polled: false }));
        let handler_end: crate::service::Body = Box::pin(SharedBody(body.clone()));
        (Drain { body, expects_continue, declared }, handler_end)
    }

    /// Read off whatever the handler left of the body (nothing, when it consumed it).
    async fn finish(self) {
        {
            let u = self.body.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if u.done
                || (self.expects_continue && !u.polled)
                || self.declared.is_some_and(|n| n > DRAIN_BYTES)
            {
                return;
            }
        }
        let mut rest = SharedBody(self.body);
        let mut left = DRAIN_BYTES;
        let _ = tokio::time::timeout(DRAIN_FOR, async {
            while let Some(Ok(chunk)) = rest.next().await {
                left = left.saturating_sub(chunk.len() as u64);
                if left == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

/// What every request shares: the registry, the authenticator, the listener's scheme.
struct Ctx {
    reg: Arc<Registry>,
    auth: Arc<Authenticator>,
    /// `http` or `https`: with the request's `Host`, the Bearer challenge's token URL.
    scheme: &'static str,
}

/// One request's head as hyper hands it over, its route parsed once.
struct Head {
    /// The URI's authority (HTTP/2's `:authority`); HTTP/1's `Host` is in `headers`.
    host: Option<http::uri::Authority>,
    method: Method,
    path: String,
    route: Result<route::Endpoint, error::ApiError>,
    query: String,
    headers: HeaderMap,
    /// hyper knows the request has no body (no Content-Length, or zero, and not
    /// chunked): nothing for a handler to read, nothing to drain.
    bodiless: bool,
}

/// Run one request: authenticate → dispatch → finish, in one future: each step is
/// awaited here, not wrapped in another, so the request's future is the size of its
/// largest step rather than of the steps nested (a pull's future is what every request
/// moves into place).
async fn handle(ctx: Arc<Ctx>, head: Head, body: crate::service::Body) -> warp::reply::Response {
    let started = Instant::now();
    let caller = authenticate(&ctx, &head).await;
    // The request log line's own copies, made only when that line is written.
    let logged = tracing::enabled!(target: "wharfie::request", tracing::Level::INFO);
    let user = if logged { caller.as_ref().map_or("-", Caller::log_name).to_owned() } else { String::new() };
    let family = head.route.as_ref().map_or("unknown", route::Endpoint::family);
    let Head { method, path, route, query, headers, bodiless, .. } = head;
    let logged_path = if logged { path.clone() } else { String::new() };
    // Dispatch: hand the request to its handler (when authenticated), then drain what
    // it left of the body before the answer goes out.
    let (drain, body) = if bodiless {
        (None, body)
    } else {
        let (drain, body) = Drain::new(&headers, body);
        (Some(drain), body)
    };
    let result = match (caller, route) {
        (Ok(caller), Ok(ep)) => {
            let query = parse_query(&query);
            let req = Req { method: method.clone(), path, query, headers, body };
            handlers::dispatch(&ctx.reg, &caller, ep, req).await
        }
        (Err(e), _) | (Ok(_), Err(e)) => {
            drop(body);
            Err(e)
        }
    };
    if let Some(drain) = drain {
        drain.finish().await;
    }
    let cache = crate::service::metrics::cache_outcome();
    finish(&ctx, Done { started, method, path: logged_path, family, user, cache }, result)
}

/// Every `/v2` request is authenticated before anything else (a wrong password is a
/// 401 whatever it asks for); `/healthz`, `/readyz` and `/metrics` never look at
/// credentials.
async fn authenticate(ctx: &Ctx, req: &Head) -> Result<Caller, error::ApiError> {
    let auth = &ctx.auth;
    let path = req.path.as_str();
    let v2 = path == "/v2" || path.starts_with("/v2/");
    let token = path == "/token" && auth.tokens();
    // The web page is for browsers: Basic, whatever the API's challenge.
    let web = matches!(req.route, Ok(route::Endpoint::Web));
    if !auth.enabled() || !(v2 || token || web) {
        return Ok(Caller::open(auth.clone()));
    }
    // The token endpoint itself asks for Basic credentials; the API points at it.
    let challenge = if token || web {
        auth.challenge()
    } else {
        let scope = req.route.as_ref().ok().and_then(|ep| handlers::scope_needed(ep, &req.method));
        // A malformed Host only loses the Bearer challenge's URL (Basic is offered
        // instead).
        let host = req.host.clone().or_else(|| {
            let h = req.headers.get(http::header::HOST)?;
            h.to_str().ok()?.parse::<http::uri::Authority>().ok()
        });
        let realm = host.map(|h| format!("{}://{h}", ctx.scheme));
        auth.challenge_at(realm.as_deref(), scope.as_deref())
    };
    match req.headers.get(http::header::AUTHORIZATION).map(|v| v.to_str()) {
        Some(Err(_)) => Err(error::ApiError::Unauthorized {
            message: "malformed Authorization header: not visible ASCII".into(),
            challenge,
        }),
        Some(Ok(h)) => Caller::authenticate(auth.clone(), Some(h), challenge).await,
        None => Caller::authenticate(auth.clone(), None, challenge).await,
    }
}

/// What [`finish`] logs and counts of a request (`path` and `user` are empty when the
/// request log is off).
struct Done {
    started: Instant,
    method: Method,
    path: String,
    family: &'static str,
    user: String,
    /// What the mirror counted for it (`Wharfie-Cache`).
    cache: crate::service::metrics::CacheOutcome,
}

/// How the mirror answered: `hit`, `miss` or `coalesced` (on mirrored repositories'
/// responses only; hosted content has nothing to say).
const CACHE_HEADER: http::HeaderName = http::HeaderName::from_static("wharfie-cache");

/// Render the answer, stamp the common headers, count it, log one line.
#[allow(clippy::needless_pass_by_value)] // the request ends here: its bookkeeping is consumed
fn finish(ctx: &Ctx, done: Done, result: Result<handlers::Reply, error::ApiError>) -> warp::reply::Response {
    let reply = result.unwrap_or_else(|e| handlers::Reply::Full(e.render()));
    let mut resp = match reply {
        handlers::Reply::Full(r) => r.into_response(),
        handlers::Reply::Stream(head, body) => {
            let (parts, _) = head.into_parts();
            let mut r = warp::reply::stream(sync_wrapper::SyncStream::new(body)).into_response();
            *r.status_mut() = parts.status;
            *r.headers_mut() = parts.headers;
            r
        }
    };
    resp.headers_mut().insert(API_VERSION_HEADER, API_VERSION);
    if let Some(c) = done.cache.status {
        resp.headers_mut().insert(CACHE_HEADER, HeaderValue::from_static(c.as_str()));
    }
    let bytes = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        // A buffered reply has no Content-Length header yet (hyper adds it on the wire).
        .or_else(|| http_body::Body::size_hint(resp.body()).exact())
        .unwrap_or(0);
    let status = resp.status().as_u16();
    ctx.reg.metrics.http_request(done.family, done.method.as_str(), status, bytes);
    if let Some(up) = &done.cache.upstream {
        if done.method == Method::GET
            && resp.status().is_success()
            && matches!(done.family, "blob" | "manifest")
        {
            up.served_bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let micros = u64::try_from(done.started.elapsed().as_micros()).unwrap_or(u64::MAX);
    ctx.reg.metrics.observe_latency(micros);
    tracing::info!(
        target: "wharfie::request",
        method = %done.method,
        path = done.path,
        status,
        user = done.user,
        bytes,
        micros,
    );
    resp
}

/// hyper's body stream as the service's `Body`, failing with `TimedOut` when no bytes
/// arrive for `idle` (a stalled client must not hold an upload session forever).
fn into_body<S, B, E>(s: S, idle: Duration) -> crate::service::Body
where
    S: futures_util::Stream<Item = Result<B, E>> + Send + 'static,
    B: Buf,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let s = Box::pin(s.map(|r| r.map(|mut b| b.copy_to_bytes(b.remaining())).map_err(std::io::Error::other)));
    Box::pin(futures_util::stream::unfold(Some(s), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => {
                let msg = format!("no body bytes arrived for {}", humantime::format_duration(idle));
                Some((Err(std::io::Error::new(std::io::ErrorKind::TimedOut, msg)), None))
            }
        }
    }))
}

/// The whole API as one hyper service: every request, whatever its method and path, goes
/// to [`handle`]. No warp filter chain runs in front of it: the head is taken apart once,
/// by value (no header map cloned), and a request without a body gets no body plumbing.
/// warp is only the replies' vocabulary.
///
/// `scheme` (`http` or `https`) and the request's `Host` make the Bearer challenge's
/// token URL.
pub(crate) fn service(
    reg: Arc<Registry>,
    auth: Arc<Authenticator>,
    scheme: &'static str,
    body_timeout: Duration,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = warp::reply::Response,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<warp::reply::Response, std::convert::Infallible>> + Send,
> + Clone
       + Send
       + Sync
       + 'static {
    let ctx = Arc::new(Ctx { reg, auth, scheme });
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let ctx = ctx.clone();
        // Not boxed: hyper moves the future it is handed into its dispatcher, which
        // costs its size; with each step awaited in `handle` rather than nested, a
        // pull's future is ~2.6 KiB (nested, it was 18 KiB, and that move was a third
        // of a manifest GET's instructions). A box would only move the copy.
        async move { Ok(request(ctx, req, body_timeout).await) }
    })
}

/// Take the head apart once, by value (no header map cloned); give a request without a
/// body no body plumbing; then [`handle`] it.
fn request(
    ctx: Arc<Ctx>,
    req: http::Request<hyper::body::Incoming>,
    body_timeout: Duration,
) -> impl std::future::Future<Output = warp::reply::Response> + Send {
    let (parts, body) = req.into_parts();
    let http::request::Parts { method, uri, headers, .. } = parts;
    // HTTP/2 carries the host as the URI's authority (HTTP/1, in the Host header, is
    // parsed only when a challenge needs it).
    let host = uri.authority().cloned();
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or_default().to_owned();
    let bodiless = http_body::Body::is_end_stream(&body);
    let body: crate::service::Body = if bodiless {
        // Nothing to read or drain: a stream of no items, boxed without allocating.
        Box::pin(futures_util::stream::empty())
    } else {
        into_body(http_body_util::BodyDataStream::new(body), body_timeout)
    };
    let head = Head { host, method, route: route::parse(&path), path, query, headers, bodiless };
    crate::service::metrics::with_cache_outcome(handle(ctx, head, body))
}
