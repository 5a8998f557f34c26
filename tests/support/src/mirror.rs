//! Support for the mirror suites (tests/mirror.rs and others): a fake upstream registry that
//! counts requests and misbehaves on demand (`upstream`), the real upstream and clients
//! (`real`), and a GET that reads what a pulling client sees ([`get`]).

pub mod real;
pub mod upstream;

use std::time::{Duration, Instant};

pub use crate::common::sha256;
use crate::common::Wharfie;

/// What a GET through the mirror got ([`get`]).
pub struct Got {
    pub status: u16,
    pub body: Vec<u8>,
    /// Reading the body failed (connection aborted mid-body).
    pub cut: bool,
    pub took: Duration,
    pub retry_after: Option<u64>,
}

impl Got {
    /// A 200 whose body came whole, `len` bytes.
    pub fn complete(&self, len: usize) -> bool {
        self.status == 200 && !self.cut && self.body.len() == len
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GET `path` as a client pulling a manifest would (`Accept:` the OCI manifest type, 90 s
/// at most): the status, `Retry-After`, how long it took, and the body streamed to its
/// end, or to where the connection was cut.
pub fn get(w: &Wharfie, path: &str) -> Got {
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(90))
        .no_proxy()
        .build()
        .expect("client");
    let t = Instant::now();
    let r = c
        .get(w.url(path))
        .header("Accept", crate::oci::OCI_MANIFEST)
        .send()
        .unwrap_or_else(|e| panic!("GET {path}: no answer at all: {e}"));
    let status = r.status().as_u16();
    let retry_after =
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    let mut r = r;
    let mut body = Vec::new();
    let cut = std::io::Read::read_to_end(&mut r, &mut body).is_err();
    Got { status, body, cut, took: t.elapsed(), retry_after }
}

/// The value of the `/metrics` line that starts with `line_start` (a name with its
/// labels, e.g. `wharfie_upstream_queue_depth{upstream="up.test"}`), if there is one.
pub fn metric(w: &Wharfie, line_start: &str) -> Option<f64> {
    let g = get(w, "/metrics");
    assert_eq!(g.status, 200, "/metrics");
    g.text().lines().find_map(|l| {
        l.strip_prefix(line_start).filter(|v| v.starts_with(' ')).and_then(|v| v.trim().parse::<f64>().ok())
    })
}
