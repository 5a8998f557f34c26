//! Handlers, one file per endpoint family, each *extract → call the service → render*.
//! `dispatch` is the single entry: given the parsed route, it picks the handler.

mod base;
mod blobs;
mod manifests;
mod tags;
mod uploads;
mod web;

/// The header parsers, public for the property tests and fuzz targets.
pub use blobs::{parse_range, RangeSpec};
pub use uploads::parse_content_range;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::error::ApiError;
use super::guard::Caller;
use super::route::Endpoint;
use crate::auth::Access;
use crate::names::RepoName;
use crate::service::{Body, Error, Located, Registry};

/// A request as the handlers see it.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Body,
}

impl Req {
    /// The first value of query parameter `k`.
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn take_body(&mut self) -> Body {
        std::mem::replace(&mut self.body, Box::pin(futures_util::stream::empty()))
    }

    fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }
}

/// What a handler answers: a whole body, or headers and a stream.
pub enum Reply {
    Full(Response<Bytes>),
    Stream(Response<Bytes>, Body),
}

impl From<Response<Bytes>> for Reply {
    fn from(r: Response<Bytes>) -> Self {
        Reply::Full(r)
    }
}

/// The token scope a request needs, as its 401 challenge names it (`None`: no scope,
/// such as the base or the token endpoint).
pub fn scope_needed(ep: &Endpoint, m: &Method) -> Option<String> {
    use crate::auth::scope::repository_scope;
    let (name, access) = match ep {
        Endpoint::Catalog => return Some(crate::auth::scope::CATALOG_SCOPE.to_owned()),
        Endpoint::Manifest { name, .. } | Endpoint::Blob { name, .. } if *m == Method::DELETE => {
            (name, Access::Delete)
        }
        Endpoint::Manifest { name, .. } if *m == Method::PUT => (name, Access::Push),
        Endpoint::Uploads { name } | Endpoint::Upload { name, .. } => (name, Access::Push),
        Endpoint::Manifest { name, .. }
        | Endpoint::Blob { name, .. }
        | Endpoint::Tags { name }
        | Endpoint::Referrers { name, .. } => (name, Access::Pull),
        _ => return None,
    };
    Some(repository_scope(name, access))
}

/// Route and run one request for `caller` (already authenticated): each endpoint checks
/// the access it needs before it touches the service (see `guard`).
///
/// The writes run in their own boxed future ([`write`]): an upload's is ~13 KiB (the
/// body pump and the commit steps), and inline it would make every request's future
/// that large, so every pull would move and touch KiB it never uses (callgrind: 16k of
/// 50k instructions of a manifest GET were that copy). What stays inline is the reads,
/// whose service calls keep their hits small and box their upstream parts.
pub async fn dispatch(
    reg: &Arc<Registry>,
    caller: &Caller,
    ep: Endpoint,
    req: Req,
) -> Result<Reply, ApiError> {
    if is_write(&ep, &req.method) {
        return write(reg, caller, ep, req).await;
    }
    let m = &req.method;
    let ns = req.q("ns");
    let full = |r: Result<Response<Bytes>, ApiError>| r.map(Reply::Full);
    // Reads may come from two repositories (a hosted one first, then a default
    // upstream's); the caller must be allowed to pull from each.
    let readable = |name: &RepoName| -> Result<Located, ApiError> {
        let loc = reg.locate(name, ns)?;
        caller.require(&loc.repo, Access::Pull)?;
        if let Some(h) = &loc.hosted_first {
            caller.require(h, Access::Pull)?;
        }
        caller.require_scope(name, Access::Pull)?;
        Ok(loc)
    };
    let get_or_head = matches!(*m, Method::GET | Method::HEAD);
    match ep {
        Endpoint::Health if get_or_head => Ok(base::base().into()),
        Endpoint::Base if get_or_head => {
            caller.base()?;
            Ok(base::base().into())
        }
        Endpoint::Ready if get_or_head => {
            reg.ready()?;
            Ok(base::base().into())
        }
        Endpoint::Metrics if *m == Method::GET => Ok(base::metrics(reg)?.into()),
        Endpoint::Token if *m == Method::GET => {
            if caller.auth.tokens() {
                Ok(base::token(caller, &req).into())
            } else {
                Err(ApiError::NoRoute)
            }
        }
        Endpoint::Catalog if *m == Method::GET => {
            caller.catalog()?;
            full(tags::catalog(reg, &req, caller.pull_filter().as_ref()))
        }
        Endpoint::Inventory if *m == Method::GET => {
            caller.catalog()?;
            Ok(base::inventory(reg, caller.pull_filter().as_ref(), req.q("locate").is_some())?.into())
        }
        Endpoint::Web if get_or_head => Ok(web::page(reg, caller, &req)?.into()),
        Endpoint::Tags { name } if *m == Method::GET => full(tags::list(reg, &req, &readable(&name)?)),
        Endpoint::Referrers { name, digest } if *m == Method::GET => {
            let filter = req.q("artifactType").map(str::to_owned);
            let loc = readable(&name)?;
            // Boxed: rare beside manifest and blob reads, and several times their size.
            full(Box::pin(tags::referrers(reg, filter, &loc, &digest)).await)
        }
        Endpoint::Manifest { name, reference } if get_or_head => {
            let loc = readable(&name)?;
            full(manifests::get(reg, req.is_head(), &loc, &reference).await)
        }
        // No manifest has an invalid reference: reads find nothing (what Distribution
        // answers).
        Endpoint::InvalidReference { .. } if get_or_head => Err(Error::ManifestUnknown.into()),
        Endpoint::Blob { name, digest } if get_or_head => {
            let loc = readable(&name)?;
            let range = req.header(header::RANGE);
            blobs::get(reg, req.is_head(), range, &loc, &digest).await
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// The requests [`write`] runs: everything that pushes or deletes.
fn is_write(ep: &Endpoint, m: &Method) -> bool {
    match ep {
        Endpoint::Manifest { .. } | Endpoint::InvalidReference { .. } => {
            matches!(*m, Method::PUT | Method::DELETE)
        }
        Endpoint::Blob { .. } => *m == Method::DELETE,
        Endpoint::Uploads { .. } | Endpoint::Upload { .. } => true,
        _ => false,
    }
}

/// Run a push or a delete, in a future of its own on the heap (not a plain `async fn`,
/// so the caller's future holds only the box).
fn write<'a>(
    reg: &'a Arc<Registry>,
    caller: &'a Caller,
    ep: Endpoint,
    req: Req,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, ApiError>> + Send + 'a>> {
    Box::pin(async move {
        let m = req.method.clone();
        let ns = req.q("ns").map(str::to_owned);
        let ns = ns.as_deref();
        let writable = |name: &RepoName, access: Access| -> Result<RepoName, ApiError> {
            let repo = reg.hosted(name, ns)?;
            caller.require(&repo, access)?;
            caller.require_scope(name, access)?;
            Ok(repo)
        };
        let event =
            |req: &Req| crate::events::RequestContext::of(caller.who.user(), m.as_str(), &req.headers);
        let reply = match ep {
            Endpoint::Manifest { name, reference } if m == Method::PUT => {
                let repo = writable(&name, Access::Push)?;
                let ctx = event(&req);
                crate::events::scope(ctx, manifests::put(reg, req, &repo, &reference)).await
            }
            Endpoint::Manifest { name, reference } if m == Method::DELETE => {
                let repo = writable(&name, Access::Delete)?;
                crate::events::scope(event(&req), manifests::delete(reg, &repo, &reference)).await
            }
            // A PUT is told what is wrong with its reference; nothing has one to delete.
            Endpoint::InvalidReference { error, .. } if m == Method::PUT => Err(Error::from(error).into()),
            Endpoint::InvalidReference { .. } if m == Method::DELETE => Err(Error::ManifestUnknown.into()),
            Endpoint::Blob { name, digest } if m == Method::DELETE => {
                blobs::delete(reg, &writable(&name, Access::Delete)?, &digest).await
            }
            Endpoint::Uploads { name } if m == Method::POST => {
                let repo = writable(&name, Access::Push)?;
                uploads::post(reg, caller, req, &repo).await
            }
            Endpoint::Upload { name, id } => {
                let repo = reg.hosted(&name, ns)?;
                if !matches!(m, Method::PATCH | Method::PUT | Method::GET | Method::DELETE) {
                    return Err(ApiError::MethodNotAllowed);
                }
                // Every step of an upload session is part of a push (cancelling one too).
                caller.require(&repo, Access::Push)?;
                caller.require_scope(&name, Access::Push)?;
                match m {
                    Method::PATCH => uploads::patch(reg, req, &repo, &id).await,
                    Method::PUT => uploads::put(reg, req, &repo, &id).await,
                    Method::GET => uploads::status(reg, &repo, &id).await,
                    _ => uploads::cancel(reg, &repo, &id).await,
                }
            }
            _ => return Err(ApiError::MethodNotAllowed),
        };
        reply.map(Reply::Full)
    })
}

/// An empty response with `status`.
pub(super) fn empty(status: StatusCode) -> Response<Bytes> {
    let mut r = Response::new(Bytes::new());
    *r.status_mut() = status;
    r
}

/// Insert a header whose value we built ourselves (names, digests, numbers: always
/// valid header text; anything else is skipped rather than panicking).
pub(super) fn set(resp: &mut Response<Bytes>, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// `Docker-Content-Digest`.
pub(super) const CONTENT_DIGEST: header::HeaderName =
    header::HeaderName::from_static("docker-content-digest");

/// The headers that name stored content: its digest (`Docker-Content-Digest`, and as
/// the `ETag`) and its length. A pull answers these on every request, so they are
/// written without the formatting machinery.
pub(super) fn set_content(resp: &mut Response<Bytes>, digest: &crate::digest::Digest, len: u64) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(digest.as_str()) {
        h.insert(CONTENT_DIGEST, v);
    }
    let d = digest.as_str().as_bytes();
    let mut etag = bytes::BytesMut::with_capacity(d.len() + 2);
    etag.extend_from_slice(b"\"");
    etag.extend_from_slice(d);
    etag.extend_from_slice(b"\"");
    if let Ok(v) = HeaderValue::from_maybe_shared(etag.freeze()) {
        h.insert(header::ETAG, v);
    }
}

/// A media type as a header value: the common ones from static strings (no copy).
pub(super) fn media_type_value(media_type: &str) -> Option<HeaderValue> {
    use crate::manifest as mt;
    let known = [mt::OCI_MANIFEST, mt::OCI_INDEX, mt::DOCKER_MANIFEST, mt::DOCKER_LIST];
    match known.iter().find(|k| **k == media_type) {
        Some(k) => Some(HeaderValue::from_static(k)),
        None => HeaderValue::from_str(media_type).ok(),
    }
}

/// The `Range` value for an upload holding `len` bytes: `0-<last byte>`.
pub fn range_value(len: u64) -> String {
    format!("0-{}", len.saturating_sub(1))
}

/// A JSON body response.
pub(super) fn json(
    status: StatusCode,
    value: &impl serde::Serialize,
    content_type: &'static str,
) -> Response<Bytes> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
