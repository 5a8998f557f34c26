//! Tags list, catalog (both paged with `n`/`last` and a `Link` header) and referrers.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderName, Response, StatusCode};

use super::{json, set, Req};
use crate::digest::Digest;
use crate::http::error::ApiError;
use crate::service::{Error, Located, Registry, RepoFilter};

fn page(req: &Req) -> Result<(Option<usize>, Option<&str>), ApiError> {
    let n =
        match req.q("n") {
            None | Some("") => None,
            Some(v) => Some(v.parse::<usize>().map_err(|_| {
                Error::PaginationInvalid(format!("n must be a non-negative integer, not {v:?}"))
            })?),
        };
    Ok((n, req.q("last").filter(|l| !l.is_empty())))
}

/// The `Link` to the next page whenever the page was cut short, also when the client
/// gave no `n` (the server's default page): without it such a client would take the
/// first page for the whole list.
fn link(resp: &mut Response<Bytes>, path: &str, n: Option<usize>, items: &[String], more: bool) {
    let n = n.unwrap_or(crate::service::DEFAULT_PAGE).min(crate::service::DEFAULT_PAGE);
    if let (true, Some(last)) = (more, items.last()) {
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        set(resp, header::LINK, &format!("<{path}?n={n}&last={last}>; rel=\"next\""));
    }
}

pub(super) fn list(reg: &Registry, req: &Req, loc: &Located) -> Result<Response<Bytes>, ApiError> {
    let (n, last) = page(req)?;
    let (name, tags, more) = reg.tags_at(loc, last, n)?;
    let body = serde_json::json!({ "name": name.as_str(), "tags": tags });
    let mut resp = json(StatusCode::OK, &body, "application/json");
    link(&mut resp, &format!("/v2/{name}/tags/list"), n, &tags, more);
    Ok(resp)
}

/// The catalog, only the repositories `keep` accepts (when given).
pub(super) fn catalog(
    reg: &Registry,
    req: &Req,
    keep: Option<&RepoFilter>,
) -> Result<Response<Bytes>, ApiError> {
    let (n, last) = page(req)?;
    let (repos, more) = reg.catalog(last, n, keep)?;
    let body = serde_json::json!({ "repositories": repos });
    let mut resp = json(StatusCode::OK, &body, "application/json");
    link(&mut resp, "/v2/_catalog", n, &repos, more);
    Ok(resp)
}

/// Referrers of `subject`, only of `artifactType` when the query names one; for a
/// mirrored name the upstream's too (cached like a tag). The filter comes in owned:
/// the request (its body stream) is not held across the await.
pub(super) async fn referrers(
    reg: &Arc<Registry>,
    filter: Option<String>,
    loc: &Located,
    subject: &Digest,
) -> Result<Response<Bytes>, ApiError> {
    let filter = filter.as_deref().filter(|t| !t.is_empty());
    let manifests = reg.referrers_via(loc, subject, filter).await?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::manifest::OCI_INDEX,
        "manifests": manifests,
    });
    let mut resp = json(StatusCode::OK, &index, crate::manifest::OCI_INDEX);
    if filter.is_some() {
        set(&mut resp, HeaderName::from_static("oci-filters-applied"), "artifactType");
    }
    Ok(resp)
}
