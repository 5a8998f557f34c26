//! A blocking client for one registry's push and pull API — what `wharfie import`,
//! `wharfie export` and `wharfie prefetch` use to talk to a wharfie server (a running one, or one started
//! in-process on the data directory). Blocking, because archives are read and written
//! with `std::io` (tar), and bodies stream through `Read`.

use std::io::Read;
use std::time::Duration;

use reqwest::blocking::{Body, Client, Response};
use reqwest::{header, StatusCode};

use super::UpstreamError;
use crate::digest::Digest;

pub(crate) struct RegistryClient {
    base: String,
    http: Client,
    auth: Option<(String, String)>,
}

fn check(resp: Response, what: &str) -> Result<Response, UpstreamError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::NOT_FOUND {
        return Err(UpstreamError::NotFound);
    }
    let body: String = resp.text().unwrap_or_default().chars().take(300).collect();
    Err(UpstreamError::Status { status: status.as_u16(), message: format!("{what}: {body}") })
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` takes
fn transport(e: reqwest::Error) -> UpstreamError {
    UpstreamError::Transport(super::error_chain(&e))
}

impl RegistryClient {
    /// `base` like `http://127.0.0.1:5000`; `ca_file`: extra CA certificates (PEM) to
    /// trust for an `https://` base.
    pub(crate) fn new(
        base: &str,
        auth: Option<(String, String)>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, UpstreamError> {
        let mut b = Client::builder()
            .timeout(None::<Duration>)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca_file {
            let bad = |e: &dyn std::fmt::Display| UpstreamError::Invalid(format!("{}: {e}", ca.display()));
            let pem = std::fs::read(ca).map_err(|e| bad(&e))?;
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).map_err(|e| bad(&e))?);
        }
        let http = b.build().map_err(transport)?;
        Ok(RegistryClient { base: base.trim_end_matches('/').to_owned(), http, auth })
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::blocking::RequestBuilder {
        let url = if url.starts_with("http") { url.to_owned() } else { format!("{}{url}", self.base) };
        let b = self.http.request(method, url);
        match &self.auth {
            Some((u, p)) => b.basic_auth(u, Some(p)),
            None => b,
        }
    }

    /// `GET /v2/`: is the server there?
    pub(crate) fn ping(&self) -> Result<(), UpstreamError> {
        let r = self.req(reqwest::Method::GET, "/v2/").send().map_err(transport)?;
        check(r, "GET /v2/").map(|_| ())
    }

    /// Upload a blob of known digest and size in one request.
    pub(crate) fn put_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        body: impl Read + Send + 'static,
    ) -> Result<(), UpstreamError> {
        let r = self
            .req(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::sized(body, size))
            .send()
            .map_err(transport)?;
        check(r, "blob upload").map(|_| ())
    }

    /// Upload a blob whose digest is known only at the end: open a session, stream the
    /// body with PATCH, then finish with the digest `digest_after` returns.
    pub(crate) fn put_blob_streamed(
        &self,
        repo: &str,
        body: impl Read + Send + 'static,
        digest_after: impl FnOnce() -> Option<Digest>,
    ) -> Result<Digest, UpstreamError> {
        let r = self
            .req(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .map_err(transport)?;
        let r = check(r, "open upload")?;
        let loc = location(&r)?;
        let r = self
            .req(reqwest::Method::PATCH, &loc)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::new(body))
            .send()
            .map_err(transport)?;
        let r = check(r, "upload chunk")?;
        let loc = location(&r)?;
        let Some(digest) = digest_after() else {
            // Cancel the session rather than leave its staging until it expires.
            let _ = self.req(reqwest::Method::DELETE, &loc).send();
            return Err(UpstreamError::Invalid("the blob could not be read to its end".into()));
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .req(reqwest::Method::PUT, &format!("{loc}{sep}digest={digest}"))
            .send()
            .map_err(transport)?;
        check(r, "finish upload")?;
        Ok(digest)
    }

    /// Cross-repository mount; false when the server opened a session instead (which
    /// is then cancelled).
    pub(crate) fn mount(&self, repo: &str, digest: &Digest, from: &str) -> Result<bool, UpstreamError> {
        let r = self
            .req(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"))
            .send()
            .map_err(transport)?;
        let r = check(r, "mount")?;
        if r.status() == StatusCode::CREATED {
            return Ok(true);
        }
        if let Ok(loc) = location(&r) {
            let _ = self.req(reqwest::Method::DELETE, &loc).send();
        }
        Ok(false)
    }

    pub(crate) fn delete_blob(&self, repo: &str, digest: &Digest) -> Result<(), UpstreamError> {
        let r = self
            .req(reqwest::Method::DELETE, &format!("/v2/{repo}/blobs/{digest}"))
            .send()
            .map_err(transport)?;
        check(r, "delete blob").map(|_| ())
    }

    /// A blob as a reader, with its length.
    pub(crate) fn get_blob(&self, repo: &str, digest: &Digest) -> Result<(u64, Response), UpstreamError> {
        let r = self
            .req(reqwest::Method::GET, &format!("/v2/{repo}/blobs/{digest}"))
            .send()
            .map_err(transport)?;
        let r = check(r, "get blob")?;
        let len =
            r.content_length().ok_or_else(|| UpstreamError::Invalid("blob without Content-Length".into()))?;
        Ok((len, r))
    }

    pub(crate) fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<(), UpstreamError> {
        let r = self
            .req(reqwest::Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header(header::CONTENT_TYPE, media_type)
            .body(bytes)
            .send()
            .map_err(transport)?;
        check(r, "manifest upload").map(|_| ())
    }

    /// A manifest: bytes, media type and digest.
    pub(crate) fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, String, Digest), UpstreamError> {
        let r = self
            .req(reqwest::Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
            .header(header::ACCEPT, super::MANIFEST_ACCEPT)
            .send()
            .map_err(transport)?;
        let r = check(r, "get manifest")?;
        let mt = r
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(crate::manifest::OCI_MANIFEST)
            .to_owned();
        let bytes = r.bytes().map_err(transport)?.to_vec();
        Ok((bytes.clone(), mt, Digest::of(&bytes)))
    }
}

/// What a GET answered, whatever its status, the body still to be read (`Read`).
pub(crate) struct Answer(Response);

impl Answer {
    pub(crate) fn status(&self) -> u16 {
        self.0.status().as_u16()
    }

    /// A response header's value, when it is text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.0.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// An error answer's first OCI error code and message (the code is `UNKNOWN`, and
    /// the message the start of the body, when it is no OCI error JSON).
    pub(crate) fn oci_error(self) -> (String, String) {
        let mut text = String::new();
        let _ = self.0.take(64 * 1024).read_to_string(&mut text);
        let first = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| {
            let e = v.get("errors")?.get(0)?;
            let code = e.get("code")?.as_str()?.to_owned();
            Some((code, e.get("message").and_then(|m| m.as_str()).unwrap_or_default().to_owned()))
        });
        first.unwrap_or_else(|| ("UNKNOWN".into(), text.chars().take(200).collect()))
    }
}

impl Read for Answer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl RegistryClient {
    /// `GET path` (with `Accept: accept`): the answer whatever its status, for callers
    /// that read its headers, stream its body, or name an error's OCI code.
    pub(crate) fn get_answer(&self, path: &str, accept: Option<&str>) -> Result<Answer, UpstreamError> {
        let mut b = self.req(reqwest::Method::GET, path);
        if let Some(a) = accept {
            b = b.header(header::ACCEPT, a);
        }
        b.send().map(Answer).map_err(transport)
    }

    /// Every tag of `repo`, following `Link` pages.
    pub(crate) fn list_tags(&self, repo: &str) -> Result<Vec<String>, UpstreamError> {
        let mut url = format!("/v2/{repo}/tags/list?n=1000");
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let r = check(self.req(reqwest::Method::GET, &url).send().map_err(transport)?, "list tags")?;
            let next = r
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| Some(l.split_once('<')?.1.split_once('>')?.0.to_owned()));
            let v: serde_json::Value = r.json().map_err(transport)?;
            out.extend(
                v["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)),
            );
            match next {
                Some(n) => url = n,
                None => return Ok(out),
            }
        }
        Err(UpstreamError::Invalid(format!("{repo}: more than 10000 pages of tags")))
    }

    /// `GET /v2/_wharfie/inventory` (wharfie only): `None` when the server is not a
    /// wharfie that has it.
    pub(crate) fn inventory(&self, locate: bool) -> Result<Option<Vec<u8>>, UpstreamError> {
        let q = if locate { "?locate=1" } else { "" };
        let r = self
            .req(reqwest::Method::GET, &format!("/v2/_wharfie/inventory{q}"))
            .send()
            .map_err(transport)?;
        match check(r, "inventory") {
            Ok(r) => Ok(Some(r.bytes().map_err(transport)?.to_vec())),
            Err(UpstreamError::NotFound | UpstreamError::Status { status: 400 | 405, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn location(r: &Response) -> Result<String, UpstreamError> {
    r.headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| UpstreamError::Invalid("upload response without Location".into()))
}
