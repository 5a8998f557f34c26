//! `GET /v2/` (the API version check every client starts with), `/healthz`, `/metrics`.

use bytes::Bytes;
use http::{header, HeaderValue, Response};

use crate::http::error::ApiError;

pub(super) fn base() -> Response<Bytes> {
    let mut r = Response::new(Bytes::from_static(b"{}"));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `GET /token`: a Bearer token naming the caller and granting the `scope`s asked for
/// (every `scope` parameter) as far as the rules allow the caller. Both spellings of the
/// field, as the token specification allows.
pub(super) fn token(caller: &crate::http::guard::Caller, req: &super::Req) -> Response<Bytes> {
    let scopes = req.query.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.as_str());
    let (token, ttl, grants) = caller.auth.issue_token(&caller.who, scopes);
    tracing::debug!(user = caller.log_name(), granted = %grants.to_text(), "token issued");
    let issued = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": ttl.as_secs(),
        "issued_at": issued,
    });
    let mut r = super::json(http::StatusCode::OK, &body, "application/json");
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /metrics`: Prometheus text format.
pub(super) fn metrics(reg: &crate::service::Registry) -> Result<Response<Bytes>, ApiError> {
    let store = reg.store_stats()?;
    let mut r = Response::new(Bytes::from(reg.metrics.render(&store)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(r)
}

/// `GET /v2/_wharfie/inventory[?locate=1]`: `{"blobs":[[digest,size],…],"manifests":[…]}`
/// of what the caller may pull, sorted by digest; with `locate`, each entry also names
/// one repository that links it (a mount source). Written by hand: at a million blobs
/// this is one pass and one buffer.
pub(super) fn inventory(
    reg: &crate::service::Registry,
    keep: Option<&crate::service::RepoFilter>,
    locate: bool,
) -> Result<Response<Bytes>, ApiError> {
    use std::fmt::Write as _;
    let inv = reg.inventory(keep)?;
    let mut out = String::with_capacity((inv.blobs.len() + inv.manifests.len()) * 96 + 64);
    out.push_str("{\"wharfie_inventory\":1");
    for (name, list) in [("blobs", &inv.blobs), ("manifests", &inv.manifests)] {
        let _ = write!(out, ",\"{name}\":[");
        for (i, (d, size, repo)) in list.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            // Digests and repository names never need JSON escaping.
            if locate {
                let _ = write!(out, "{sep}[\"{d}\",{size},\"{repo}\"]");
            } else {
                let _ = write!(out, "{sep}[\"{d}\",{size}]");
            }
        }
        out.push(']');
    }
    out.push('}');
    let mut r = Response::new(Bytes::from(out));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}
