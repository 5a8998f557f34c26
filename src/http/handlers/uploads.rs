//! `/v2/<name>/blobs/uploads/…`: POST (session, monolithic, mount), PATCH, PUT, GET,
//! DELETE.

use bytes::Bytes;
use http::{header, HeaderName, Response, StatusCode};

use super::{empty, range_value, set, Req};
use crate::digest::Digest;
use crate::http::error::ApiError;
use crate::http::guard::Caller;
use crate::names::RepoName;
use crate::service::{Error, Registry};

fn upload_location(name: &RepoName, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// 202 for an open session holding `len` bytes.
fn accepted(name: &RepoName, id: &str, len: u64) -> Response<Bytes> {
    let mut r = empty(StatusCode::ACCEPTED);
    set(&mut r, header::LOCATION, &upload_location(name, id));
    set(&mut r, HeaderName::from_static("docker-upload-uuid"), id);
    set(&mut r, header::RANGE, &range_value(len));
    set(&mut r, header::CONTENT_LENGTH, "0");
    r
}

/// 201 for a committed blob.
fn created(name: &RepoName, digest: &Digest) -> Response<Bytes> {
    let mut r = empty(StatusCode::CREATED);
    set(&mut r, header::LOCATION, &format!("/v2/{name}/blobs/{digest}"));
    set(&mut r, super::CONTENT_DIGEST, digest.as_str());
    set(&mut r, header::CONTENT_LENGTH, "0");
    r
}

fn digest_param(req: &Req, key: &str) -> Result<Option<Digest>, ApiError> {
    match req.q(key) {
        None => Ok(None),
        Some(v) => Ok(Some(v.parse::<Digest>().map_err(Error::from)?)),
    }
}

/// `Content-Range` of a chunk: `a-b` as the spec writes it (also `bytes a-b/*` and
/// `bytes=a-b`). Checked against `Content-Length` when both are present.
pub fn parse_content_range(req: &Req) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = req.header(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || ApiError::BadRequest(format!("malformed Content-Range {v:?}: expected <start>-<end>"));
    let s = v.trim();
    let s = s.strip_prefix("bytes=").or_else(|| s.strip_prefix("bytes ")).unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    // The span must be countable: `0-18446744073709551615` would wrap to 0 bytes.
    let span = b.checked_sub(a).and_then(|n| n.checked_add(1)).ok_or_else(bad)?;
    if let Some(len) = req.header(header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok()) {
        if len != span {
            return Err(ApiError::BadRequest(format!(
                "Content-Range {v:?} covers {span} bytes but Content-Length is {len}"
            )));
        }
    }
    Ok(Some((a, b)))
}

pub(super) async fn post(
    reg: &Registry,
    caller: &Caller,
    mut req: Req,
    name: &RepoName,
) -> Result<Response<Bytes>, ApiError> {
    if let Some(mount) = digest_param(&req, "mount")? {
        let from = req.q("from").map(RepoName::parse).transpose().map_err(Error::from)?;
        // Mounting reads the blob from `from`, which must link it: without pull there,
        // answer with a plain upload session, as if the blob were not there (as
        // distribution does), so nothing about `from` leaks. `from` is read like any
        // name: a bare name under a default upstream is the hosted repository, then the
        // mirrored one. Without `from`, only repositories the caller may pull count.
        let mounted = match &from {
            Some(f) => {
                let loc = reg.locate(f, None)?;
                let mut mounted = false;
                for src in loc.hosted_first.iter().chain(std::iter::once(&loc.repo)) {
                    if caller.may_pull(src.as_str()) && reg.mount(name, &mount, Some(src), None).await? {
                        mounted = true;
                        break;
                    }
                }
                mounted
            }
            None => reg.mount(name, &mount, None, caller.scoped_pull_filter()).await?,
        };
        if mounted {
            return Ok(created(name, &mount));
        }
        let id = reg.start_upload(name).await?;
        return Ok(accepted(name, &id, 0));
    }
    if let Some(digest) = digest_param(&req, "digest")? {
        reg.upload_monolithic(name, &digest, req.take_body()).await?;
        return Ok(created(name, &digest));
    }
    let id = reg.start_upload(name).await?;
    Ok(accepted(name, &id, 0))
}

pub(super) async fn patch(
    reg: &Registry,
    mut req: Req,
    name: &RepoName,
    id: &str,
) -> Result<Response<Bytes>, ApiError> {
    let range = parse_content_range(&req)?;
    let len = reg.patch_upload(name, id, range, req.take_body()).await?;
    Ok(accepted(name, id, len))
}

pub(super) async fn put(
    reg: &Registry,
    mut req: Req,
    name: &RepoName,
    id: &str,
) -> Result<Response<Bytes>, ApiError> {
    let Some(digest) = digest_param(&req, "digest")? else {
        return Err(Error::DigestInvalid("PUT to finish an upload needs ?digest=".into()).into());
    };
    let range = parse_content_range(&req)?;
    reg.finish_upload(name, id, &digest, range, req.take_body()).await?;
    Ok(created(name, &digest))
}

pub(super) async fn status(reg: &Registry, name: &RepoName, id: &str) -> Result<Response<Bytes>, ApiError> {
    let len = reg.upload_status(name, id).await?;
    let mut r = accepted(name, id, len);
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

pub(super) async fn cancel(reg: &Registry, name: &RepoName, id: &str) -> Result<Response<Bytes>, ApiError> {
    reg.cancel_upload(name, id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
