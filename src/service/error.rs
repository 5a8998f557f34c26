//! `service::Error`: every way a registry operation can fail, in registry terms. The
//! HTTP layer maps each variant to a status and an OCI error code in one table
//! (`http/error.rs`); `Display` here is the human message.

use crate::blob::BlobError;
use crate::digest::{Digest, DigestError};
use crate::meta::MetaError;
use crate::names::NameError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NameInvalid(String),
    #[error("repository {0} is not known to this registry")]
    NameUnknown(String),
    #[error("{0}")]
    TagInvalid(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("blob unknown to this repository")]
    BlobUnknown,
    #[error("upload session unknown (it may have finished, been cancelled or expired)")]
    BlobUploadUnknown,
    #[error("{0}")]
    BlobUploadInvalid(String),
    /// A chunk that does not start at the current end of the upload.
    #[error("chunk starts at {start} but the upload holds {offset} bytes")]
    UploadOutOfOrder { start: u64, offset: u64 },
    #[error("manifest unknown to this repository")]
    ManifestUnknown,
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest references {0}, which is not in this repository: push it first")]
    ManifestBlobUnknown(Digest),
    #[error("manifest is larger than the {limit}-byte limit")]
    ManifestTooLarge { limit: u64 },
    #[error("{0}")]
    SizeInvalid(String),
    #[error("requested range is not satisfiable for a {size}-byte blob")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    PaginationInvalid(String),
    #[error("{0}")]
    Denied(String),
    #[error("request body could not be read: {0}")]
    BodyRead(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    /// An upstream failed, or is marked down: `retry_after` (seconds) while it is down.
    /// The message names the upstream by its configured name, never its URL.
    #[error("{message}")]
    Upstream { message: String, retry_after: Option<u64> },
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Name(_) => Error::NameInvalid(e.to_string()),
            NameError::Tag(_) => Error::TagInvalid(e.to_string()),
            NameError::Digest(d) => d.into(),
        }
    }
}

impl From<DigestError> for Error {
    fn from(e: DigestError) -> Self {
        Error::DigestInvalid(e.to_string())
    }
}

impl From<MetaError> for Error {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::MissingReference(d) => Error::ManifestBlobUnknown(d),
            MetaError::NotFound => Error::Internal("unexpected not-found from metadata".into()),
            MetaError::Closed => Error::Unavailable(e.to_string()),
            MetaError::Storage(_) | MetaError::Corrupt(_) | MetaError::Locked => {
                Error::Internal(e.to_string())
            }
        }
    }
}

impl From<BlobError> for Error {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::DigestMismatch { .. } => Error::DigestInvalid(e.to_string()),
            BlobError::Io(io) => io.into(),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        // ENOSPC (28) and EDQUOT (122): the disk is full, not a bug.
        match e.raw_os_error() {
            Some(28 | 122) => Error::Unavailable(format!("no space left for blob storage: {e}")),
            _ => Error::Internal(format!("blob storage: {e}")),
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("background task failed: {e}"))
    }
}
