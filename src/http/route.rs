//! The route parser: `(path) → Endpoint`, a pure function. Repository names have any
//! number of `/`-separated components, so the path is matched from its end: the last
//! one to three segments name the endpoint, everything before them is the name.
//!
//! Nothing here is percent-decoded except the reference segment (some clients encode
//! the `:` of a digest); a `%` anywhere in a name makes it invalid, which is what turns
//! traversal attempts like `..%2f` into `NAME_INVALID`.

use super::error::ApiError;
use crate::digest::Digest;
use crate::names::{NameError, Reference, RepoName};
use crate::service::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: RepoName, reference: Reference },
    /// `/v2/<name>/manifests/<reference>` where the reference is neither a valid tag
    /// nor a valid digest: no manifest can have it, so reads and deletes answer
    /// `MANIFEST_UNKNOWN` (as Distribution and the conformance suite expect); a PUT is
    /// refused with `error` (`TAG_INVALID`, `DIGEST_INVALID`).
    InvalidReference { name: RepoName, error: NameError },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: RepoName, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`
    Uploads { name: RepoName },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: RepoName, id: String },
    /// `/v2/<name>/tags/list`
    Tags { name: RepoName },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: RepoName, digest: Digest },
    /// `/healthz`
    Health,
    /// `/metrics`
    Metrics,
    /// `/readyz`
    Ready,
    /// `/token`: Bearer tokens (when `[auth] token = true`)
    Token,
    /// `/v2/_wharfie/inventory`: every blob and manifest digest held (wharfie only; what
    /// `wharfie inventory` and incremental imports read)
    Inventory,
    /// `/` and `/ui/…`: the operator's web page (`crate::web` parses the rest)
    Web,
}

impl Endpoint {
    /// The endpoint family, as the `route` label of the request metrics.
    pub fn family(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Manifest { .. } | Endpoint::InvalidReference { .. } => "manifest",
            Endpoint::Blob { .. } => "blob",
            Endpoint::Uploads { .. } => "uploads",
            Endpoint::Upload { .. } => "upload",
            Endpoint::Tags { .. } => "tags",
            Endpoint::Referrers { .. } => "referrers",
            Endpoint::Health => "healthz",
            Endpoint::Metrics => "metrics",
            Endpoint::Ready => "readyz",
            Endpoint::Token => "token",
            Endpoint::Inventory => "inventory",
            Endpoint::Web => "web",
        }
    }
}

/// Decode `%XX` escapes into ASCII; anything else is kept as it is.
fn decode_segment(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                #[allow(clippy::cast_possible_truncation)] // two hex digits: at most 255
                let v = (h * 16 + l) as u8;
                if v.is_ascii() {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| s.to_owned()))
}

fn upload_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Is `path` one of the web page's (`/`, `/ui`, `/ui/…`)? A few byte compares.
pub fn is_web(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// Parse a request path (without the query string).
pub fn parse(path: &str) -> Result<Endpoint, ApiError> {
    match path {
        "/v2" | "/v2/" => return Ok(Endpoint::Base),
        "/v2/_catalog" => return Ok(Endpoint::Catalog),
        "/v2/_wharfie/inventory" => return Ok(Endpoint::Inventory),
        "/healthz" => return Ok(Endpoint::Health),
        "/metrics" => return Ok(Endpoint::Metrics),
        "/readyz" => return Ok(Endpoint::Ready),
        "/token" => return Ok(Endpoint::Token),
        p if is_web(p) => return Ok(Endpoint::Web),
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Err(ApiError::NoRoute);
    };
    // The last three segments, and what is before them (the name, or part of it):
    // taken from the end without collecting, and a name is a slice of the path itself.
    let mut from_end = rest.rsplitn(4, '/');
    let s0 = from_end.next().unwrap_or_default();
    let (s1, s2, s3) = (from_end.next(), from_end.next(), from_end.next());
    // The name: what stands before the last `tail` segments (and their slashes).
    let name = |tail: &[&str]| -> Result<RepoName, ApiError> {
        let cut = tail.iter().map(|t| t.len() + 1).sum::<usize>();
        let name = rest.get(..rest.len().saturating_sub(cut)).unwrap_or_default();
        Ok(RepoName::parse(name).map_err(Error::from)?)
    };
    let (Some(s1), Some(s2)) = (s1, s2) else {
        return Err(ApiError::NoRoute);
    };
    if s3.is_some() && s2 == "blobs" && s1 == "uploads" {
        let name = name(&[s2, s1, s0])?;
        if s0.is_empty() {
            return Ok(Endpoint::Uploads { name });
        }
        if !upload_id_ok(s0) {
            return Err(Error::BlobUploadUnknown.into());
        }
        return Ok(Endpoint::Upload { name, id: s0.to_owned() });
    }
    if s1 == "blobs" && s0 == "uploads" {
        return Ok(Endpoint::Uploads { name: name(&[s1, s0])? });
    }
    let last = decode_segment(s0);
    match s1 {
        "manifests" => {
            let name = name(&[s1, s0])?;
            return Ok(match Reference::parse(&last) {
                Ok(reference) => Endpoint::Manifest { name, reference },
                Err(error) => Endpoint::InvalidReference { name, error },
            });
        }
        "blobs" => {
            let name = name(&[s1, s0])?;
            let digest = last.parse().map_err(Error::from)?;
            return Ok(Endpoint::Blob { name, digest });
        }
        "tags" if last == "list" => return Ok(Endpoint::Tags { name: name(&[s1, s0])? }),
        "referrers" => {
            let name = name(&[s1, s0])?;
            let digest = last.parse().map_err(Error::from)?;
            return Ok(Endpoint::Referrers { name, digest });
        }
        _ => {}
    }
    Err(ApiError::NoRoute)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepoName {
        RepoName::parse(s).expect("valid name")
    }

    #[test]
    fn routes() {
        let d = Digest::of(b"x");
        assert_eq!(parse("/v2/").ok(), Some(Endpoint::Base));
        assert_eq!(parse("/v2").ok(), Some(Endpoint::Base));
        assert_eq!(parse("/v2/_catalog").ok(), Some(Endpoint::Catalog));
        assert_eq!(
            parse("/v2/a/b/c/manifests/latest").ok(),
            Some(Endpoint::Manifest {
                name: name("a/b/c"),
                reference: Reference::parse("latest").expect("tag")
            })
        );
        assert_eq!(
            parse(&format!("/v2/a/blobs/{d}")).ok(),
            Some(Endpoint::Blob { name: name("a"), digest: d.clone() })
        );
        assert_eq!(
            parse(&format!("/v2/a/blobs/{}", d.as_str().replace(':', "%3A"))).ok(),
            Some(Endpoint::Blob { name: name("a"), digest: d.clone() })
        );
        assert_eq!(parse("/v2/a/blobs/uploads/").ok(), Some(Endpoint::Uploads { name: name("a") }));
        assert_eq!(parse("/v2/a/blobs/uploads").ok(), Some(Endpoint::Uploads { name: name("a") }));
        assert_eq!(
            parse("/v2/blobs/blobs/uploads/abc-1").ok(),
            Some(Endpoint::Upload { name: name("blobs"), id: "abc-1".into() })
        );
        assert_eq!(parse("/v2/x/tags/list").ok(), Some(Endpoint::Tags { name: name("x") }));
        assert_eq!(parse("/").ok(), Some(Endpoint::Web));
        assert_eq!(parse("/ui/repo/a/b").ok(), Some(Endpoint::Web));
        assert_eq!(
            parse("/v2/manifests/manifests/tags/list").ok(),
            Some(Endpoint::Tags { name: name("manifests/manifests") })
        );
        assert_eq!(
            parse(&format!("/v2/x/y/referrers/{d}")).ok(),
            Some(Endpoint::Referrers { name: name("x/y"), digest: d })
        );
    }

    fn code(path: &str) -> &'static str {
        match parse(path) {
            Err(e) => e.status_and_code().1,
            Ok(e) => panic!("{path} parsed as {e:?}"),
        }
    }

    #[test]
    fn bad_paths() {
        assert_eq!(code("/v2/A/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("/v2/a//b/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("/v2/..%2f..%2fetc/manifests/latest"), "NAME_INVALID");
        assert_eq!(code("/v2/../manifests/latest"), "NAME_INVALID");
        // An invalid reference routes (reads answer 404, a PUT its error), but only
        // under a valid name.
        for r in ["bad:tag", "-bad", ".INVALID_MANIFEST_NAME", "sha256:zz"] {
            match parse(&format!("/v2/a/manifests/{r}")) {
                Ok(Endpoint::InvalidReference { name: n, error }) => {
                    assert_eq!(n, name("a"));
                    let want = if r.contains(':') { "DIGEST_INVALID" } else { "TAG_INVALID" };
                    assert_eq!(ApiError::from(Error::from(error)).status_and_code().1, want, "{r}");
                }
                other => panic!("{r} parsed as {other:?}"),
            }
        }
        assert_eq!(code("/v2/A/manifests/-bad"), "NAME_INVALID");
        assert_eq!(code("/v2/a/blobs/latest"), "DIGEST_INVALID");
        assert_eq!(code("/v2/a/blobs/uploads/..%2f"), "BLOB_UPLOAD_UNKNOWN");
        assert_eq!(code("/v2/manifests/latest"), "NOT_FOUND");
        assert_eq!(code("/v1/x"), "NOT_FOUND");
        assert_eq!(code("/v2/a/unknown/x"), "NOT_FOUND");
        assert_eq!(decode_segment("%"), "%");
        assert_eq!(decode_segment("a%3"), "a%3");
        assert_eq!(decode_segment("%e2%82%ac"), "%e2%82%ac");
    }
}
