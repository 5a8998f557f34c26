//! Client-side helpers shared by `tests/api.rs` and `tests/bad_input.rs`: a blocking
//! HTTP client with redirects disabled, a raw HTTP/1.1 client over `TcpStream` (for
//! requests reqwest would normalise or refuse: `..` paths, wrong `Content-Length`),
//! push helpers and manifest builders.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{oci_code, sha256, Wharfie};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// How long any single request may take before the test fails.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A response, fully read: status, headers in wire order, body.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// First value of header `name` (case-insensitive).
    pub fn h(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Header `name`, which must be present.
    pub fn hdr(&self, name: &str) -> &str {
        self.h(name).unwrap_or_else(|| panic!("response has no {name} header: {}", self.describe()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `Content-Length`, when present and a number.
    pub fn content_length(&self) -> Option<usize> {
        self.h("Content-Length").and_then(|v| v.parse().ok())
    }

    /// Read a reqwest response whole.
    pub fn read(r: reqwest::blocking::Response) -> reqwest::Result<Resp> {
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = r.bytes()?.to_vec();
        Ok(Resp { status, headers, body })
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.describe()))
    }

    /// The OCI error code; also checks the body is `{"errors":[{code, message}]}`.
    pub fn code(&self) -> String {
        let v = self.json();
        let e = &v["errors"][0];
        assert!(e["message"].is_string(), "OCI error without a message: {}", self.describe());
        oci_code(&self.text())
    }

    /// Assert the status and, for responses with a body, the OCI error code.
    pub fn expect_err(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status, status, "status: {}", self.describe());
        assert_eq!(self.code(), code, "OCI code: {}", self.describe());
        self
    }

    /// Assert a body-less error (HEAD): the status, and no body.
    pub fn expect_head_err(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "status: {}", self.describe());
        assert!(self.body.is_empty(), "HEAD answered with a body: {}", self.describe());
        self
    }

    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "status: {}", self.describe());
        self
    }

    /// One line for failure messages.
    pub fn describe(&self) -> String {
        let mut body = self.text();
        if body.len() > 600 {
            body.truncate(600);
            body.push('…');
        }
        let hs: Vec<String> = self.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("{} [{}] {body}", self.status, hs.join("; "))
    }
}

/// A blocking client over one server's base URL that owns what it needs (`Clone`, `Send`:
/// one per worker thread), never follows redirects, and returns transport errors as
/// values, for suites whose server may die mid-request.
#[derive(Clone)]
pub struct Http {
    pub c: reqwest::blocking::Client,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Http {
    pub fn new(base: &str, timeout: Duration) -> Self {
        let c = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .expect("client");
        Http { c, base: base.to_owned() }
    }

    /// A path or an absolute URL on this server → a URL.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// A `Location` value → a path.
    pub fn path_of(&self, loc: &str) -> String {
        loc.strip_prefix(&self.base).unwrap_or(loc).to_owned()
    }

    pub fn req(&self, method: &str, path: &str) -> reqwest::blocking::RequestBuilder {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.c.request(m, self.url(path))
    }

    /// Send and read the whole response; a transport error is a value.
    pub fn send(&self, rb: reqwest::blocking::RequestBuilder) -> reqwest::Result<Resp> {
        Resp::read(rb.send()?)
    }

    /// [`Http::send`] where the server is up and a transport error fails the test.
    pub fn must(&self, rb: reqwest::blocking::RequestBuilder, what: &str) -> Resp {
        self.send(rb).unwrap_or_else(|e| panic!("{what}: transport error against a running server: {e}"))
    }

    /// Push a blob to any registry (Distribution too): `POST` a session, `PUT ?digest=`
    /// with the whole body. Asserts 201; returns the digest.
    pub fn push_blob(&self, name: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self.must(self.req("POST", &format!("/v2/{name}/blobs/uploads/")), "start upload");
        assert_eq!(r.status, 202, "start upload in {name}: {}", r.describe());
        let loc = self.path_of(r.hdr("Location"));
        let r = self.must(
            self.req("PUT", &with_query(&loc, &format!("digest={d}")))
                .header("Content-Type", "application/octet-stream")
                .body(data.to_vec()),
            "finish upload",
        );
        assert_eq!(r.status, 201, "push blob to {name}: {}", r.describe());
        d
    }

    /// PUT a manifest to any registry; asserts 201 and returns its digest.
    pub fn push_manifest(&self, name: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let r = self.must(
            self.req("PUT", &format!("/v2/{name}/manifests/{reference}"))
                .header("Content-Type", media_type)
                .body(body.to_vec()),
            "push manifest",
        );
        assert_eq!(r.status, 201, "push manifest {name}:{reference}: {}", r.describe());
        sha256(body)
    }

    /// An image manifest (`OCI_MANIFEST`) over the config and layer blobs given, all
    /// pushed; `extra` fields are merged into the manifest (`subject`, `artifactType`).
    /// Tagged `tag`, or pushed by digest.
    pub fn push_manifest_of(
        &self,
        name: &str,
        tag: Option<&str>,
        config: (&str, &[u8]),
        layers: &[(&str, &[u8])],
        extra: Value,
    ) -> Image {
        self.push_blob(name, config.1);
        let config = Desc::new(config.0, config.1);
        let mut ls = Vec::new();
        for (mt, data) in layers {
            self.push_blob(name, data);
            ls.push(Desc::new(mt, data));
        }
        let manifest = image_manifest(OCI_MANIFEST, &config, &ls, extra);
        let digest = sha256(&manifest);
        let reference = tag.map_or_else(|| digest.clone(), str::to_owned);
        self.push_manifest(name, &reference, OCI_MANIFEST, &manifest);
        Image { config, layers: ls, manifest, digest }
    }

    /// An OCI index of a linux/amd64 and a linux/arm64 image (one layer each, of
    /// `layer_sizes`, contents from `seed`), tagged `tag`; returns (amd64, arm64, index).
    pub fn push_two_arch_index(
        &self,
        repo: &str,
        tag: &str,
        seed: u64,
        layer_sizes: [usize; 2],
    ) -> (Image, Image, Vec<u8>) {
        let mut imgs = Vec::new();
        for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
            let config = format!(r#"{{"architecture":"{arch}","os":"linux","seed":{seed}}}"#);
            let layer = crate::common::bytes_of(layer_sizes[i], seed * 10 + i as u64);
            imgs.push(self.push_manifest_of(
                repo,
                None,
                (OCI_CONFIG, config.as_bytes()),
                &[(OCI_LAYER, &layer)],
                json!({}),
            ));
        }
        let entries: Vec<_> = imgs
            .iter()
            .zip(["amd64", "arm64"])
            .map(|(img, arch)| {
                json!({ "mediaType": OCI_MANIFEST, "digest": img.digest, "size": img.manifest.len(),
                        "platform": { "os": "linux", "architecture": arch } })
            })
            .collect();
        let index =
            serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries }))
                .expect("json");
        self.push_manifest(repo, tag, OCI_INDEX, &index);
        let arm = imgs.pop().expect("arm64");
        let amd = imgs.pop().expect("amd64");
        (amd, arm, index)
    }
}

/// A blocking client over one server; never follows redirects.
pub struct Api<'a> {
    pub w: &'a Wharfie,
    pub c: reqwest::blocking::Client,
}

impl<'a> Api<'a> {
    pub fn new(w: &'a Wharfie) -> Self {
        let c = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(IO_TIMEOUT)
            .build()
            .expect("client");
        Api { w, c }
    }

    pub fn req(&self, method: &str, path: &str) -> reqwest::blocking::RequestBuilder {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        self.c.request(m, self.w.url(path))
    }

    pub fn send(&self, rb: reqwest::blocking::RequestBuilder) -> Resp {
        let r = rb.send().expect("request failed at the transport level");
        Resp::read(r).expect("read body")
    }

    pub fn get(&self, path: &str) -> Resp {
        self.send(self.req("GET", path))
    }

    pub fn head(&self, path: &str) -> Resp {
        self.send(self.req("HEAD", path))
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.send(self.req("DELETE", path))
    }

    pub fn get_range(&self, path: &str, range: &str) -> Resp {
        self.send(self.req("GET", path).header("Range", range))
    }

    /// A `Location` header as a path (an absolute URL on this server is reduced to its path).
    pub fn location(&self, r: &Resp) -> String {
        path_of(self.w, r.hdr("Location"))
    }

    /// Monolithic push (`POST ?digest=`); asserts 201 and returns the digest.
    pub fn push_blob(&self, name: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self.send(
            self.req("POST", &format!("/v2/{name}/blobs/uploads/?digest={d}"))
                .header("Content-Type", "application/octet-stream")
                .body(data.to_vec()),
        );
        assert_eq!(r.status, 201, "push blob to {name}: {}", r.describe());
        d
    }

    /// `POST` a new session; asserts 202 and returns its location path.
    pub fn start_upload(&self, name: &str) -> String {
        let r = self.send(self.req("POST", &format!("/v2/{name}/blobs/uploads/")));
        assert_eq!(r.status, 202, "start upload in {name}: {}", r.describe());
        self.location(&r)
    }

    /// PATCH `chunk` at `start` with `Content-Range`.
    pub fn patch(&self, loc: &str, start: u64, chunk: &[u8]) -> Resp {
        let end = start + chunk.len() as u64 - 1;
        self.send(
            self.req("PATCH", loc)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{start}-{end}"))
                .body(chunk.to_vec()),
        )
    }

    /// PUT `?digest=` (appending `&` or `?` to `loc` as needed), optional final chunk.
    pub fn finish(&self, loc: &str, digest: &str, last: Option<(u64, &[u8])>) -> Resp {
        let url = with_query(loc, &format!("digest={digest}"));
        let mut rb = self.req("PUT", &url);
        if let Some((start, chunk)) = last {
            let end = start + chunk.len() as u64 - 1;
            rb = rb
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("{start}-{end}"))
                .body(chunk.to_vec());
        }
        self.send(rb)
    }

    /// Push `data` as a session in `chunks` PATCHes (Content-Range), then PUT.
    pub fn push_blob_chunked(&self, name: &str, data: &[u8], chunk: usize) -> String {
        let d = sha256(data);
        let loc = self.start_upload(name);
        let mut off = 0usize;
        while off < data.len() {
            let end = (off + chunk).min(data.len());
            let r = self.patch(&loc, off as u64, &data[off..end]);
            assert_eq!(r.status, 202, "patch: {}", r.describe());
            off = end;
        }
        let r = self.finish(&loc, &d, None);
        assert_eq!(r.status, 201, "finish: {}", r.describe());
        d
    }

    pub fn put_manifest(&self, name: &str, reference: &str, media_type: &str, body: &[u8]) -> Resp {
        self.send(
            self.req("PUT", &format!("/v2/{name}/manifests/{reference}"))
                .header("Content-Type", media_type)
                .body(body.to_vec()),
        )
    }

    /// PUT a manifest; asserts 201 and returns its digest.
    pub fn push_manifest(&self, name: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let r = self.put_manifest(name, reference, media_type, body);
        assert_eq!(r.status, 201, "push manifest {name}:{reference}: {}", r.describe());
        sha256(body)
    }

    /// Push a config and `layers` layers of distinct content, then an OCI image manifest
    /// tagged `tag` (or by digest when `tag` is None).
    pub fn push_image(&self, name: &str, tag: Option<&str>, seed: u64, layers: usize) -> Image {
        let config_bytes = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
        let config = Desc::new(OCI_CONFIG, &config_bytes);
        self.push_blob(name, &config_bytes);
        let mut ls = Vec::new();
        for i in 0..layers {
            let data = crate::common::bytes_of(1000 + i * 17, seed * 100 + i as u64 + 1);
            self.push_blob(name, &data);
            ls.push(Desc::new(OCI_LAYER, &data));
        }
        let manifest = image_manifest(OCI_MANIFEST, &config, &ls, json!({}));
        let digest = sha256(&manifest);
        let reference = tag.map_or_else(|| digest.clone(), str::to_owned);
        self.push_manifest(name, &reference, OCI_MANIFEST, &manifest);
        Image { config, layers: ls, manifest, digest }
    }

    /// Tags of `name` (asserts 200).
    pub fn tags(&self, name: &str) -> Vec<String> {
        let r = self.get(&format!("/v2/{name}/tags/list"));
        assert_eq!(r.status, 200, "tags list {name}: {}", r.describe());
        strings(&r.json()["tags"])
    }

    /// All repositories (asserts 200).
    pub fn catalog(&self) -> Vec<String> {
        let r = self.get("/v2/_catalog");
        assert_eq!(r.status, 200, "catalog: {}", r.describe());
        strings(&r.json()["repositories"])
    }
}

/// A string array (null → empty).
pub fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Null => vec![],
        Value::Array(a) => a.iter().map(|s| s.as_str().expect("string").to_owned()).collect(),
        other => panic!("expected an array of strings, got {other}"),
    }
}

/// Append a query parameter to a path that may already have a query.
pub fn with_query(path: &str, kv: &str) -> String {
    if path.contains('?') {
        format!("{path}&{kv}")
    } else {
        format!("{path}?{kv}")
    }
}

/// Reduce a `Location` value to a path: `http://127.0.0.1:PORT/v2/…` → `/v2/…`.
pub fn path_of(w: &Wharfie, loc: &str) -> String {
    loc.strip_prefix(&w.base).unwrap_or(loc).to_owned()
}

/// A content descriptor.
#[derive(Debug, Clone)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
}

impl Desc {
    pub fn new(media_type: &str, data: &[u8]) -> Self {
        Desc { media_type: media_type.to_owned(), digest: sha256(data), size: data.len() }
    }

    /// A descriptor of content that was never pushed.
    pub fn phantom(media_type: &str, seed: u64) -> Self {
        Self::new(media_type, &crate::common::bytes_of(77, seed ^ 0xdead_beef))
    }

    pub fn json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// A pushed image.
#[derive(Debug, Clone)]
pub struct Image {
    pub config: Desc,
    pub layers: Vec<Desc>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

impl Image {
    pub fn desc(&self) -> Desc {
        Desc { media_type: OCI_MANIFEST.into(), digest: self.digest.clone(), size: self.manifest.len() }
    }
}

/// An image manifest (OCI or Docker schema2 by `media_type`); `extra` fields are merged in.
pub fn image_manifest(media_type: &str, config: &Desc, layers: &[Desc], extra: Value) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.json(),
        "layers": layers.iter().map(Desc::json).collect::<Vec<_>>(),
    });
    merge(&mut m, extra);
    serde_json::to_vec(&m).expect("json")
}

/// An index / manifest list of `children` (each gets a linux/amd64 platform).
pub fn index_manifest(media_type: &str, children: &[Desc], extra: Value) -> Vec<u8> {
    let ms: Vec<Value> = children
        .iter()
        .map(|c| {
            let mut d = c.json();
            d["platform"] = json!({"architecture": "amd64", "os": "linux"});
            d
        })
        .collect();
    let mut m = json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": ms });
    merge(&mut m, extra);
    serde_json::to_vec(&m).expect("json")
}

fn merge(m: &mut Value, extra: Value) {
    if let Value::Object(e) = extra {
        for (k, v) in e {
            m[k] = v;
        }
    }
}

// ---------------------------------------------------------------------------------
// Raw HTTP/1.1 over TcpStream.

/// How the body goes on the wire.
#[derive(Debug, Clone)]
pub enum Framing {
    /// `Content-Length: <body len>` (omitted for an empty body on GET/HEAD/DELETE).
    Auto,
    /// `Transfer-Encoding: chunked`, in chunks of this many bytes.
    Chunked(usize),
    /// This `Content-Length` value, whatever the body length (a lie, on purpose).
    Length(String),
}

/// A request written byte by byte: the path is sent exactly as given.
#[derive(Debug, Clone)]
pub struct RawReq {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
}

impl RawReq {
    pub fn new(method: &str, path: impl Into<String>) -> Self {
        RawReq {
            method: method.into(),
            path: path.into(),
            headers: vec![],
            body: vec![],
            framing: Framing::Auto,
        }
    }

    pub fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }

    pub fn framing(mut self, f: Framing) -> Self {
        self.framing = f;
        self
    }

    /// The request head and the body bytes as they go on the wire.
    pub fn wire(&self, addr: &str) -> (Vec<u8>, Vec<u8>) {
        let mut head =
            format!("{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n", self.method, self.path);
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = match &self.framing {
            Framing::Auto => {
                let bodyless = matches!(self.method.as_str(), "GET" | "HEAD" | "DELETE");
                if !(bodyless && self.body.is_empty()) {
                    head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
                }
                self.body.clone()
            }
            Framing::Length(v) => {
                head.push_str(&format!("Content-Length: {v}\r\n"));
                self.body.clone()
            }
            Framing::Chunked(n) => {
                head.push_str("Transfer-Encoding: chunked\r\n");
                let mut out = Vec::new();
                for c in self.body.chunks((*n).max(1)) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                out
            }
        };
        head.push_str("\r\n");
        (head.into_bytes(), body)
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// Read until the server closes (or the read timeout, which fails the test).
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset after the response arrived (the server closed with unread input).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !out.is_empty() => break,
            Err(e) => panic!("reading the response: {e} (got {} bytes)", out.len()),
        }
    }
    out
}

/// Send `req` and read the whole response (`Connection: close`).
pub fn raw(w: &Wharfie, req: &RawReq) -> Resp {
    let (head, body) = req.wire(&w.addr);
    let mut s = connect(&w.addr);
    s.write_all(&head).expect("write head");
    // The server may answer (and close) before reading the whole body, e.g. a 413: write
    // the body from another thread while this one reads, so the response is taken in
    // before a reset from the server's close could discard it; a failed body write is
    // fine as long as a response arrives.
    let mut ws = s.try_clone().expect("clone socket");
    let writer = std::thread::spawn(move || {
        let _ = ws.write_all(&body);
    });
    let bytes = read_all(&mut s);
    drop(s);
    let _ = writer.join();
    parse_response(&bytes, req.method == "HEAD").unwrap_or_else(|| {
        panic!("no HTTP response to {} {}: {:?}", req.method, req.path, String::from_utf8_lossy(&bytes))
    })
}

/// Send the head and only part of the body (`body` as given, whatever `Content-Length`
/// says), then half-close. Returns the response if the server sent one.
pub fn raw_truncated(w: &Wharfie, req: &RawReq) -> Option<Resp> {
    let (head, body) = req.wire(&w.addr);
    let mut s = connect(&w.addr);
    s.write_all(&head).expect("write head");
    let _ = s.write_all(&body);
    let _ = s.flush();
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    parse_response(&out, req.method == "HEAD")
}

/// Send the head with `Expect: 100-continue`; send the body only if the server asks.
/// Returns the final response and whether the body was sent.
pub fn raw_expect_continue(w: &Wharfie, req: &RawReq) -> (Resp, bool) {
    let req = req.clone().header("Expect", "100-continue");
    let (head, body) = req.wire(&w.addr);
    let mut s = connect(&w.addr);
    s.write_all(&head).expect("write head");
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    // Wait for the first response head.
    while find(&got, b"\r\n\r\n").is_none() {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("waiting for 100-continue: {e}"),
        }
    }
    let mut sent = false;
    if got.starts_with(b"HTTP/1.1 100") {
        let _ = s.write_all(&body);
        sent = true;
    }
    got.extend_from_slice(&read_all(&mut s));
    let r = parse_response(&got, false)
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&got)));
    (r, sent)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse the first final (non-1xx) response in `bytes`.
pub fn parse_response(mut bytes: &[u8], head_request: bool) -> Option<Resp> {
    loop {
        let end = find(bytes, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&bytes[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let rest = &bytes[end + 4..];
        if (100..200).contains(&status) {
            bytes = rest;
            continue;
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
        let body = if head_request || status == 204 || status == 304 {
            vec![]
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            dechunk(rest)?
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            rest.get(..n)?.to_vec()
        } else {
            rest.to_vec()
        };
        return Some(Resp { status, headers, body });
    }
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = find(b, b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..nl]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}
