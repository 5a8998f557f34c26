//! The one table from errors to HTTP statuses and OCI error codes, and the OCI error
//! body. `Display` of the errors stays human; only `render` writes wire JSON.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::service::Error;

/// Errors of the HTTP layer: the service's, plus those of routing itself.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Service(#[from] Error),
    #[error("no such endpoint")]
    NoRoute,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("{0}")]
    BadRequest(String),
    /// No (or bad) credentials where they are needed: 401 with the `Basic` challenge.
    #[error("{message}")]
    Unauthorized { message: String, challenge: String },
    /// Authenticated, but the rules do not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// The credential check itself failed (not the client's fault).
    #[error("credential check failed: {0}")]
    AuthFailed(String),
}

impl ApiError {
    /// The single mapping from error to (HTTP status, OCI code).
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        let e = match self {
            ApiError::NoRoute => return (S::NOT_FOUND, "NOT_FOUND"),
            ApiError::MethodNotAllowed => return (S::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            ApiError::BadRequest(_) => return (S::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            ApiError::Unauthorized { .. } => return (S::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::Forbidden(_) => return (S::FORBIDDEN, "DENIED"),
            ApiError::AuthFailed(_) => return (S::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            ApiError::Service(e) => e,
        };
        match e {
            Error::NameInvalid(_) => (S::BAD_REQUEST, "NAME_INVALID"),
            Error::NameUnknown(_) => (S::NOT_FOUND, "NAME_UNKNOWN"),
            Error::TagInvalid(_) => (S::BAD_REQUEST, "TAG_INVALID"),
            Error::DigestInvalid(_) => (S::BAD_REQUEST, "DIGEST_INVALID"),
            Error::BlobUnknown => (S::NOT_FOUND, "BLOB_UNKNOWN"),
            Error::BlobUploadUnknown => (S::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            Error::BlobUploadInvalid(_) | Error::BodyRead(_) => (S::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            Error::UploadOutOfOrder { .. } => (S::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            Error::ManifestUnknown => (S::NOT_FOUND, "MANIFEST_UNKNOWN"),
            Error::ManifestInvalid(_) => (S::BAD_REQUEST, "MANIFEST_INVALID"),
            Error::ManifestBlobUnknown(_) => (S::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            Error::ManifestTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            Error::SizeInvalid(_) => (S::BAD_REQUEST, "SIZE_INVALID"),
            Error::RangeNotSatisfiable { .. } => (S::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN"),
            Error::Unsupported(_) => (S::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Error::PaginationInvalid(_) => (S::BAD_REQUEST, "PAGINATION_NUMBER_INVALID"),
            Error::Denied(_) => (S::FORBIDDEN, "DENIED"),
            Error::Internal(_) => (S::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            Error::Unavailable(_) | Error::Upstream { .. } => (S::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        }
    }

    /// The response: status, OCI JSON body, and the headers some errors carry.
    pub fn render(&self) -> Response<Bytes> {
        let (status, code) = self.status_and_code();
        if matches!(self, ApiError::Service(Error::Upstream { .. })) {
            // The upstream's transitions are logged where they happen, once each.
            tracing::debug!(error = %self, "request failed");
        } else if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let detail = match self {
            ApiError::Service(Error::ManifestBlobUnknown(d)) => serde_json::json!({ "digest": d }),
            _ => serde_json::Value::Null,
        };
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": self.to_string(), "detail": detail }]
        });
        let mut resp = Response::new(Bytes::from(body.to_string()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            ApiError::Service(Error::RangeNotSatisfiable { size }) => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(http::header::CONTENT_RANGE, v);
                }
            }
            ApiError::Unauthorized { challenge, .. } => {
                if let Ok(v) = HeaderValue::from_str(challenge) {
                    h.insert(http::header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::Service(Error::Upstream { retry_after: Some(secs), .. }) => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            ApiError::Service(Error::UploadOutOfOrder { offset, .. }) => {
                if let Ok(v) = HeaderValue::from_str(&super::handlers::range_value(*offset)) {
                    h.insert(http::header::RANGE, v);
                }
            }
            _ => {}
        }
        resp
    }
}
