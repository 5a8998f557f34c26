//! `GET /v2/` (the API version check every client starts with), `/healthz`, `/metrics`.

use bytes::Bytes;
use http::{header, HeaderValue, Response};

use crate::http::error::ApiError;

pub(super) fn base() -> Response<Bytes> {
    let mut r = Response::new(Bytes::from_static(b"{}"));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
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
