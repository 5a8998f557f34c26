//! `http/`: the wire. One warp catch-all hands every request to `handlers::dispatch`
//! (the route parser is a pure function, `route.rs`); errors become OCI JSON bodies in
//! one place (`error.rs`); `server.rs` owns the accept loop and graceful drain.
//!
//! May import: service, digest, names. Only this module names warp/hyper types.

pub mod error;
pub mod handlers;
pub mod route;
pub mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method};
use warp::{Filter, Reply as _};

use crate::service::Registry;
use handlers::Req;

const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");

fn parse_query(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes()).into_owned().collect()
}

/// Run one request: dispatch, render errors, stamp common headers, log one line.
async fn handle(
    reg: Arc<Registry>,
    method: Method,
    path: warp::path::FullPath,
    query: String,
    headers: HeaderMap,
    body: crate::service::Body,
) -> warp::reply::Response {
    let started = Instant::now();
    let path = path.as_str().to_owned();
    let req = Req { method: method.clone(), path: path.clone(), query: parse_query(&query), headers, body };
    let reply = match handlers::dispatch(&reg, req).await {
        Ok(r) => r,
        Err(e) => handlers::Reply::Full(e.render()),
    };
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
    resp.headers_mut().insert("docker-distribution-api-version", API_VERSION);
    let bytes = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    reg.metrics.http_request(method.as_str(), resp.status().as_u16(), bytes);
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    reg.metrics.observe_latency(micros);
    tracing::info!(
        target: "wharfie::request",
        %method,
        path,
        status = resp.status().as_u16(),
        bytes,
        micros,
    );
    resp
}

/// warp's body stream as the service's `Body`, failing with `TimedOut` when no bytes
/// arrive for `idle` (a stalled client must not hold an upload session forever).
fn into_body<S, B>(s: S, idle: Duration) -> crate::service::Body
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
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

/// The whole API as one warp filter.
pub fn routes(
    reg: Arc<Registry>,
    body_timeout: Duration,
) -> impl Filter<Extract = (warp::reply::Response,), Error = std::convert::Infallible>
       + Clone
       + Send
       + Sync
       + 'static {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(move |method, path, query, headers, body| {
            handle(reg.clone(), method, path, query, headers, into_body(body, body_timeout))
        })
        .recover(|_rej: warp::Rejection| async move {
            Ok::<_, std::convert::Infallible>(error::ApiError::NoRoute.render().into_response())
        })
        .unify()
}
