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
/// The writes' futures are boxed: an upload's is ~13 KiB (the body pump and the commit
/// steps), and unboxed it would make every request's future that large, so every pull
/// would move and touch 13 KiB it never uses (callgrind: 16k of 50k instructions of a
/// manifest GET were that copy).
pub async fn dispatch(
    reg: &Arc<Registry>,
    caller: &Caller,
    ep: Endpoint,
    req: Req,
) -> Result<Reply, ApiError> {
    let m = req.method.clone();
    let ns = req.q("ns").map(str::to_owned);
    let ns = ns.as_deref();
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
    let writable = |name: &RepoName, access: Access| -> Result<RepoName, ApiError> {
        let repo = reg.hosted(name, ns)?;
        caller.require(&repo, access)?;
        caller.require_scope(name, access)?;
        Ok(repo)
    };
    match ep {
        Endpoint::Health => match m {
            Method::GET | Method::HEAD => Ok(base::base().into()),
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Base => match m {
            Method::GET | Method::HEAD => {
                caller.base()?;
                Ok(base::base().into())
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Ready => match m {
            Method::GET | Method::HEAD => {
                reg.ready()?;
                Ok(base::base().into())
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Metrics => match m {
            Method::GET => Ok(base::metrics(reg)?.into()),
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Token => match m {
            Method::GET if caller.auth.tokens() => Ok(base::token(caller, &req).into()),
            Method::GET => Err(ApiError::NoRoute),
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Catalog => match m {
            Method::GET => {
                caller.catalog()?;
                full(tags::catalog(reg, &req, caller.pull_filter().as_ref()))
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Inventory => match m {
            Method::GET => {
                caller.catalog()?;
                Ok(base::inventory(reg, caller.pull_filter().as_ref(), req.q("locate").is_some())?.into())
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Web => match m {
            Method::GET | Method::HEAD => Ok(web::page(reg, caller, &req)?.into()),
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Tags { name } => match m {
            Method::GET => full(tags::list(reg, &req, &readable(&name)?)),
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Referrers { name, digest } => match m {
            Method::GET => {
                let filter = req.q("artifactType").map(str::to_owned);
                full(tags::referrers(reg, filter, &readable(&name)?, &digest).await)
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Manifest { name, reference } => match m {
            Method::GET | Method::HEAD => {
                let loc = readable(&name)?;
                full(manifests::get(reg, req.is_head(), &loc, &reference).await)
            }
            Method::PUT => {
                let repo = writable(&name, Access::Push)?;
                let ctx = crate::events::RequestContext::of(caller.who.user(), m.as_str(), &req.headers);
                full(Box::pin(crate::events::scope(ctx, manifests::put(reg, req, &repo, &reference))).await)
            }
            Method::DELETE => {
                let repo = writable(&name, Access::Delete)?;
                let ctx = crate::events::RequestContext::of(caller.who.user(), m.as_str(), &req.headers);
                full(Box::pin(crate::events::scope(ctx, manifests::delete(reg, &repo, &reference))).await)
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        // No manifest has an invalid reference: reads and deletes find nothing (what
        // Distribution answers); a PUT is told what is wrong with it.
        Endpoint::InvalidReference { error, .. } => match m {
            Method::GET | Method::HEAD | Method::DELETE => Err(Error::ManifestUnknown.into()),
            Method::PUT => Err(Error::from(error).into()),
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Blob { name, digest } => match m {
            Method::GET | Method::HEAD => {
                let loc = readable(&name)?;
                let range = req.header(header::RANGE).map(str::to_owned);
                blobs::get(reg, req.is_head(), range, &loc, &digest).await
            }
            Method::DELETE => {
                full(Box::pin(blobs::delete(reg, &writable(&name, Access::Delete)?, &digest)).await)
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Uploads { name } => match m {
            Method::POST => {
                let repo = writable(&name, Access::Push)?;
                full(Box::pin(uploads::post(reg, caller, req, &repo)).await)
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Endpoint::Upload { name, id } => {
            let repo = reg.hosted(&name, ns)?;
            if !matches!(m, Method::PATCH | Method::PUT | Method::GET | Method::DELETE) {
                return Err(ApiError::MethodNotAllowed);
            }
            // Every step of an upload session is part of a push (cancelling one too).
            caller.require(&repo, Access::Push)?;
            caller.require_scope(&name, Access::Push)?;
            full(match m {
                Method::PATCH => Box::pin(uploads::patch(reg, req, &repo, &id)).await,
                Method::PUT => Box::pin(uploads::put(reg, req, &repo, &id)).await,
                Method::GET => Box::pin(uploads::status(reg, &repo, &id)).await,
                _ => Box::pin(uploads::cancel(reg, &repo, &id)).await,
            })
        }
    }
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
