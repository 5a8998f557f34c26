//! Counters the registry keeps, rendered in the Prometheus text format by `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
pub struct Metrics {
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub coalesced_followers: AtomicU64,
    pub stale_served: AtomicU64,
    pub upstream_bytes: AtomicU64,
    /// (upstream, kind, status) → requests sent.
    upstream_requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// (method, status) → responses, and bytes sent.
    http_requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub http_bytes: AtomicU64,
}

impl Metrics {
    pub fn upstream_request(&self, upstream: &str, kind: &str, status: u16) {
        let mut m = self
            .upstream_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *m.entry((upstream.to_owned(), kind.to_owned(), status))
            .or_default() += 1;
    }

    pub fn http_request(&self, method: &str, status: u16, bytes: u64) {
        let mut m = self
            .http_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *m.entry((method.to_owned(), status)).or_default() += 1;
        self.http_bytes.fetch_add(bytes, Relaxed);
    }

    /// Upstream requests of `kind` sent to `upstream` so far, any status.
    pub fn upstream_count(&self, upstream: &str, kind: &str) -> u64 {
        let m = self
            .upstream_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        m.iter()
            .filter(|((u, k, _), _)| u == upstream && k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut o,
            "wharfie_cache_hits_total",
            "Mirror requests served from the cache.",
            self.cache_hits.load(Relaxed),
        );
        counter(
            &mut o,
            "wharfie_cache_misses_total",
            "Mirror requests that needed the upstream.",
            self.cache_misses.load(Relaxed),
        );
        counter(
            &mut o,
            "wharfie_coalesced_followers_total",
            "Requests that joined an upstream fetch already in flight.",
            self.coalesced_followers.load(Relaxed),
        );
        counter(
            &mut o,
            "wharfie_stale_served_total",
            "Cached tags served because the upstream failed (stale-if-error).",
            self.stale_served.load(Relaxed),
        );
        counter(
            &mut o,
            "wharfie_upstream_bytes_total",
            "Blob bytes received from upstreams.",
            self.upstream_bytes.load(Relaxed),
        );
        counter(
            &mut o,
            "wharfie_http_response_bytes_total",
            "Response bytes sent to clients.",
            self.http_bytes.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP wharfie_upstream_requests_total Requests sent to upstream registries."
        );
        let _ = writeln!(o, "# TYPE wharfie_upstream_requests_total counter");
        for ((u, k, s), n) in self
            .upstream_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(o, "wharfie_upstream_requests_total{{upstream=\"{u}\",kind=\"{k}\",status=\"{s}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP wharfie_http_requests_total HTTP requests served."
        );
        let _ = writeln!(o, "# TYPE wharfie_http_requests_total counter");
        for ((m, s), n) in self
            .http_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                o,
                "wharfie_http_requests_total{{method=\"{m}\",status=\"{s}\"}} {n}"
            );
        }
        o
    }
}
