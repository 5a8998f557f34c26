//! `GET /v2/`: the API version check every client starts with.

use bytes::Bytes;
use http::{header, HeaderValue, Response};

pub(super) fn base() -> Response<Bytes> {
    let mut r = Response::new(Bytes::from_static(b"{}"));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
