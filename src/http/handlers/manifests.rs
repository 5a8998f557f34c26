//! `GET/HEAD/PUT/DELETE /v2/<name>/manifests/<reference>`.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderName, Response, StatusCode};

use super::{empty, set, Req};
use crate::http::error::ApiError;
use crate::names::{Reference, RepoName};
use crate::service::{Error, Located, Registry};

/// `head`: answer without a body. (A flag rather than the request: the request's body
/// stream is not `Sync`, so a reference to it cannot be held across an await.)
pub(super) async fn get(
    reg: &Arc<Registry>,
    head: bool,
    loc: &Located,
    reference: &Reference,
) -> Result<Response<Bytes>, ApiError> {
    let m = reg.read_manifest(loc, reference, !head).await?;
    let mut resp = empty(StatusCode::OK);
    if let Some(v) = super::media_type_value(&m.media_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    super::set_content(&mut resp, &m.digest, m.size);
    if let Some(b) = m.body {
        *resp.body_mut() = b;
    }
    Ok(resp)
}

pub(super) async fn put(
    reg: &Registry,
    mut req: Req,
    name: &RepoName,
    reference: &Reference,
) -> Result<Response<Bytes>, ApiError> {
    let limit = reg.max_manifest_bytes();
    let declared = req.header(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Error::ManifestTooLarge { limit }.into());
    }
    let content_type = req.header(header::CONTENT_TYPE).map(str::to_owned);
    let out = reg.put_manifest(name, reference, content_type.as_deref(), req.take_body()).await?;
    let mut resp = empty(StatusCode::CREATED);
    set(&mut resp, header::LOCATION, &format!("/v2/{name}/manifests/{}", out.digest));
    set(&mut resp, super::CONTENT_DIGEST, out.digest.as_str());
    if let Some(s) = out.subject {
        set(&mut resp, HeaderName::from_static("oci-subject"), s.as_str());
    }
    Ok(resp)
}

pub(super) async fn delete(
    reg: &Registry,
    name: &RepoName,
    reference: &Reference,
) -> Result<Response<Bytes>, ApiError> {
    reg.delete_manifest(name, reference).await?;
    Ok(empty(StatusCode::ACCEPTED))
}
