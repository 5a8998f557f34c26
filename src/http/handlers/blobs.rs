//! `GET/HEAD/DELETE /v2/<name>/blobs/<digest>`, with single `Range` requests.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use std::sync::Arc;

use super::{empty, set, Reply};
use crate::digest::Digest;
use crate::http::error::ApiError;
use crate::names::RepoName;
use crate::service::{BlobRead, Error, Located, Registry};

/// A parsed `Range: bytes=…` header, resolved against the blob size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeSpec {
    /// Serve the whole blob (no header, or one we do not honour such as multi-range).
    Full,
    /// Inclusive byte range.
    Part(u64, u64),
    Unsatisfiable,
}

/// Parse `bytes=a-b`, `bytes=a-` and `bytes=-n` against a blob of `size` bytes.
pub fn parse_range(value: Option<&str>, size: u64) -> RangeSpec {
    let Some(v) = value else {
        return RangeSpec::Full;
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            Some(0) => RangeSpec::Unsatisfiable,
            Some(_) if size == 0 => RangeSpec::Unsatisfiable,
            Some(n) => RangeSpec::Part(size.saturating_sub(n), size - 1),
            None => RangeSpec::Full,
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return RangeSpec::Full;
            };
            let end = if b.is_empty() { Some(u64::MAX) } else { num(b) };
            let Some(end) = end else {
                return RangeSpec::Full;
            };
            if end < start {
                return RangeSpec::Full;
            }
            if start >= size {
                return RangeSpec::Unsatisfiable;
            }
            RangeSpec::Part(start, end.min(size - 1))
        }
        (true, true) => RangeSpec::Full,
    }
}

fn headers(resp: &mut Response<Bytes>, digest: &Digest, len: u64) {
    // Room for these six and the two `finish` adds: the map is allocated once instead
    // of growing and rehashing on the way (a manifest's five fit the first allocation).
    resp.headers_mut().reserve(8);
    super::set_content(resp, digest, len);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=31536000"));
}

/// `head`: answer without a body; `range`: the `Range` header. (Not the request: its
/// body stream is not `Sync`, so a reference to it cannot be held across an await.)
pub(super) async fn get(
    reg: &Arc<Registry>,
    head: bool,
    range: Option<&str>,
    loc: &Located,
    digest: &Digest,
) -> Result<Reply, ApiError> {
    let (size, bytes) = match reg.read_blob(loc, digest, head).await? {
        BlobRead::Stored { size, bytes } => (size, bytes),
        BlobRead::Filling { size, body } => {
            // Cold: stream the fill from its start (a Range is answered with the whole
            // blob, which RFC 9110 allows).
            let mut resp = empty(StatusCode::OK);
            headers(&mut resp, digest, size);
            return Ok(Reply::Stream(resp, body));
        }
    };
    let range = parse_range(range, size);
    let (status, start, end) = match range {
        RangeSpec::Full => (StatusCode::OK, 0, size),
        RangeSpec::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        RangeSpec::Unsatisfiable => return Err(Error::RangeNotSatisfiable { size }.into()),
    };
    let mut resp = empty(status);
    headers(&mut resp, digest, end - start);
    if status == StatusCode::PARTIAL_CONTENT {
        set(&mut resp, header::CONTENT_RANGE, &format!("bytes {start}-{}/{size}", end - 1));
    }
    if let Some(all) = bytes {
        *resp.body_mut() = all.slice(usize::try_from(start).unwrap_or(0)..usize::try_from(end).unwrap_or(0));
    }
    Ok(Reply::Full(resp))
}

pub(super) async fn delete(
    reg: &Registry,
    name: &RepoName,
    digest: &Digest,
) -> Result<Response<Bytes>, ApiError> {
    reg.delete_blob(name, digest).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=5-100"), 10), Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=3-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Full);
    }
}
