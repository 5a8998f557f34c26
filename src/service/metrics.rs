//! Counters the registry keeps, rendered in the Prometheus text format by `/metrics`.
//!
//! The mirror's cache counters are kept twice: in total, and per upstream
//! ([`UpstreamCounters`], a few atomics each `Mirror` holds, so the hot path takes no lock
//! and looks nothing up). Where the service counts a hit, a miss or a coalesced follower
//! it also notes it as the request's [`CacheStatus`] (a task-local the HTTP layer opens
//! around each request, [`with_cache_outcome`]): the `Wharfie-Cache` header and the
//! counters come from the same decision, so they cannot disagree.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Default)]
pub struct Metrics {
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub coalesced_followers: AtomicU64,
    pub stale_served: AtomicU64,
    pub upstream_bytes: AtomicU64,
    /// (upstream, kind, status) → requests sent.
    upstream_requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// upstream → up (not marked down).
    upstream_up: Mutex<BTreeMap<String, bool>>,
    /// (route, method, status) → responses.
    http_requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    /// route → response bytes sent (as `Content-Length` announces them).
    http_bytes: Mutex<BTreeMap<&'static str, u64>>,
    pub gc_runs: AtomicU64,
    pub gc_manifests: AtomicU64,
    pub gc_blobs: AtomicU64,
    pub gc_bytes: AtomicU64,
    pub evicted_blobs: AtomicU64,
    pub evicted_bytes: AtomicU64,
    /// (repository, manifest) links evicted with the mirrored blobs they referenced.
    pub evicted_manifests: AtomicU64,
    /// Request latency histogram: cumulative counts per bucket (seconds), sum in µs.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// Families other parts render themselves (the notification endpoints').
    renderers: Mutex<Vec<Renderer>>,
    /// Each upstream's counters, in configuration order (read only to render).
    upstreams: Mutex<Vec<(String, Arc<UpstreamCounters>)>>,
}

/// One upstream's share of the cache counters (each also counts in the totals).
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    /// Requests for its mirrored content answered from what is held here.
    pub hits: AtomicU64,
    /// Requests that needed the upstream (a fetch, a fill, a tag revalidation).
    pub misses: AtomicU64,
    /// Requests that joined one of its fetches already in flight.
    pub coalesced: AtomicU64,
    /// Blob bytes received from it.
    pub fetched_bytes: AtomicU64,
    /// Response bytes of manifest and blob GETs of its mirrored repositories (as
    /// `Content-Length` announces them).
    pub served_bytes: AtomicU64,
}

/// One of an upstream's counters, picked out to render it.
type CounterOf = fn(&UpstreamCounters) -> &AtomicU64;

/// How the mirror answered a request, as the `Wharfie-Cache` response header says it
/// (after the `X-Cache-Status` of nginx and Varnish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// Served from what is held here.
    Hit,
    /// This request went to the upstream (it started the fetch or fill).
    Miss,
    /// This request joined a fetch or fill already in flight.
    Coalesced,
}

impl CacheStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
        }
    }
}

/// What one request learned about the cache: the last status counted for it (a miss
/// that then joins a fill in flight ends coalesced), and whose upstream it was.
#[derive(Debug, Default)]
pub(crate) struct CacheOutcome {
    pub status: Option<CacheStatus>,
    pub upstream: Option<Arc<UpstreamCounters>>,
}

tokio::task_local! {
    static OUTCOME: RefCell<CacheOutcome>;
}

/// Run `f` (one request) inside a scope that records what it counts of the cache, for
/// [`cache_outcome`] to read. Counting outside such a scope (the warm lists' background
/// rounds) records no outcome.
pub(crate) fn with_cache_outcome<F: std::future::Future>(
    f: F,
) -> impl std::future::Future<Output = F::Output> {
    OUTCOME.scope(RefCell::new(CacheOutcome::default()), f)
}

/// What the request so far has counted of the cache (inside [`with_cache_outcome`]).
pub(crate) fn cache_outcome() -> CacheOutcome {
    OUTCOME.try_with(RefCell::take).unwrap_or_default()
}

fn note(status: CacheStatus, up: &Arc<UpstreamCounters>) {
    let _ = OUTCOME.try_with(|o| {
        let mut o = o.borrow_mut();
        o.status = Some(status);
        o.upstream = Some(up.clone());
    });
}

/// A request method as its metrics label: the methods the API answers by name, any
/// other as `OTHER` (a client cannot grow the label set with made-up methods, and a
/// count costs no allocation).
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// Appends metric families to the `/metrics` text.
pub(crate) type Renderer = Box<dyn Fn(&mut String) + Send + Sync>;

/// What the blob rows hold, per origin (the store-size gauges), kept as counters in meta.
pub(crate) use crate::meta::StoreStats;

/// Upper bounds (seconds) of the latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

impl Metrics {
    /// The counters of upstream `name`, registered for `/metrics` (call once per
    /// upstream, at startup).
    pub fn upstream_counters(&self, name: &str) -> Arc<UpstreamCounters> {
        let c = Arc::new(UpstreamCounters::default());
        self.upstreams.lock().unwrap_or_else(PoisonError::into_inner).push((name.to_owned(), c.clone()));
        c
    }

    /// A mirrored request served from what is held here.
    pub fn hit(&self, up: &Arc<UpstreamCounters>) {
        self.cache_hits.fetch_add(1, Relaxed);
        up.hits.fetch_add(1, Relaxed);
        note(CacheStatus::Hit, up);
    }

    /// A mirrored request that needs the upstream.
    pub fn miss(&self, up: &Arc<UpstreamCounters>) {
        self.cache_misses.fetch_add(1, Relaxed);
        up.misses.fetch_add(1, Relaxed);
        note(CacheStatus::Miss, up);
    }

    /// A request that joined a fetch in flight.
    pub fn follower(&self, up: &Arc<UpstreamCounters>) {
        self.coalesced_followers.fetch_add(1, Relaxed);
        up.coalesced.fetch_add(1, Relaxed);
        note(CacheStatus::Coalesced, up);
    }

    /// Blob bytes received from an upstream.
    pub fn fetched(&self, up: &UpstreamCounters, bytes: u64) {
        self.upstream_bytes.fetch_add(bytes, Relaxed);
        up.fetched_bytes.fetch_add(bytes, Relaxed);
    }

    pub fn upstream_request(&self, upstream: &str, kind: &str, status: u16) {
        let mut m = self.upstream_requests.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry((upstream.to_owned(), kind.to_owned(), status)).or_default() += 1;
    }

    /// The upstream's health changed (or, at startup, is up).
    pub fn upstream_health(&self, upstream: &str, up: bool) {
        self.upstream_up.lock().unwrap_or_else(PoisonError::into_inner).insert(upstream.to_owned(), up);
    }

    pub fn add_renderer(&self, r: Renderer) {
        self.renderers.lock().unwrap_or_else(PoisonError::into_inner).push(r);
    }

    pub fn observe_latency(&self, micros: u64) {
        #[allow(clippy::cast_precision_loss)] // microseconds fit an f64 exactly in practice
        let secs = micros as f64 / 1e6;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros.fetch_add(micros, Relaxed);
    }

    /// One response: `route` is the endpoint family (`blob`, `manifest`, …).
    pub fn http_request(&self, route: &'static str, method: &str, status: u16, bytes: u64) {
        let mut m = self.http_requests.lock().unwrap_or_else(PoisonError::into_inner);
        *m.entry((route, method_label(method), status)).or_default() += 1;
        drop(m);
        *self.http_bytes.lock().unwrap_or_else(PoisonError::into_inner).entry(route).or_default() += bytes;
    }

    /// Upstream requests of `kind` sent to `upstream` so far, any status.
    pub fn upstream_count(&self, upstream: &str, kind: &str) -> u64 {
        let m = self.upstream_requests.lock().unwrap_or_else(PoisonError::into_inner);
        m.iter().filter(|((u, k, _), _)| u == upstream && k == kind).map(|(_, n)| n).sum()
    }

    /// The text format; `store` is what the blob rows hold now, per origin.
    pub fn render(&self, store: &StoreStats) -> String {
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
        counter(&mut o, "wharfie_gc_runs_total", "Garbage collections run.", self.gc_runs.load(Relaxed));
        counter(
            &mut o,
            "wharfie_gc_manifests_removed_total",
            "Manifests garbage collection removed.",
            self.gc_manifests.load(Relaxed),
        );
        counter(
            &mut o,
            "wharfie_gc_blobs_removed_total",
            "Blobs garbage collection removed.",
            self.gc_blobs.load(Relaxed),
        );
        counter(
            &mut o,
            "wharfie_gc_bytes_removed_total",
            "Blob bytes garbage collection removed.",
            self.gc_bytes.load(Relaxed),
        );
        counter(
            &mut o,
            "wharfie_evicted_blobs_total",
            "Mirrored blobs evicted to keep the cache under its cap.",
            self.evicted_blobs.load(Relaxed),
        );
        counter(
            &mut o,
            "wharfie_evicted_bytes_total",
            "Mirrored blob bytes evicted to keep the cache under its cap.",
            self.evicted_bytes.load(Relaxed),
        );
        counter(
            &mut o,
            "wharfie_evicted_manifests_total",
            "Mirrored manifests (per repository) evicted with the blobs they reference.",
            self.evicted_manifests.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP wharfie_store_blobs Blobs stored, by origin.");
        let _ = writeln!(o, "# TYPE wharfie_store_blobs gauge");
        let _ = writeln!(o, "wharfie_store_blobs{{origin=\"pushed\"}} {}", store.pushed_blobs);
        let _ = writeln!(o, "wharfie_store_blobs{{origin=\"mirrored\"}} {}", store.mirrored_blobs);
        let _ = writeln!(o, "# HELP wharfie_store_bytes Blob bytes stored, by origin.");
        let _ = writeln!(o, "# TYPE wharfie_store_bytes gauge");
        let _ = writeln!(o, "wharfie_store_bytes{{origin=\"pushed\"}} {}", store.pushed_bytes);
        let _ = writeln!(o, "wharfie_store_bytes{{origin=\"mirrored\"}} {}", store.mirrored_bytes);
        let _ = writeln!(o, "# HELP wharfie_http_response_bytes_total Response bytes sent to clients.");
        let _ = writeln!(o, "# TYPE wharfie_http_response_bytes_total counter");
        for (r, n) in self.http_bytes.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let _ = writeln!(o, "wharfie_http_response_bytes_total{{route=\"{r}\"}} {n}");
        }
        let _ = writeln!(o, "# HELP wharfie_upstream_requests_total Requests sent to upstream registries.");
        let _ = writeln!(o, "# TYPE wharfie_upstream_requests_total counter");
        for ((u, k, s), n) in self.upstream_requests.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let _ = writeln!(
                o,
                "wharfie_upstream_requests_total{{upstream=\"{u}\",kind=\"{k}\",status=\"{s}\"}} {n}"
            );
        }
        let _ =
            writeln!(o, "# HELP wharfie_upstream_up Whether the upstream takes requests (0: marked down).");
        let _ = writeln!(o, "# TYPE wharfie_upstream_up gauge");
        for (u, up) in self.upstream_up.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let _ = writeln!(o, "wharfie_upstream_up{{upstream=\"{u}\"}} {}", u8::from(*up));
        }
        let _ =
            writeln!(o, "# HELP wharfie_http_request_duration_seconds Time to produce a response's head.");
        let _ = writeln!(o, "# TYPE wharfie_http_request_duration_seconds histogram");
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            let n = self.latency_buckets[i].load(Relaxed);
            let _ = writeln!(o, "wharfie_http_request_duration_seconds_bucket{{le=\"{le}\"}} {n}");
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(o, "wharfie_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        #[allow(clippy::cast_precision_loss)]
        let sum = self.latency_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(o, "wharfie_http_request_duration_seconds_sum {sum}");
        let _ = writeln!(o, "wharfie_http_request_duration_seconds_count {count}");
        let _ = writeln!(o, "# HELP wharfie_http_requests_total HTTP requests served.");
        let _ = writeln!(o, "# TYPE wharfie_http_requests_total counter");
        for ((r, m, s), n) in self.http_requests.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let _ =
                writeln!(o, "wharfie_http_requests_total{{route=\"{r}\",method=\"{m}\",status=\"{s}\"}} {n}");
        }
        self.render_upstreams(&mut o);
        for r in self.renderers.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            r(&mut o);
        }
        o
    }

    /// The per-upstream cache families (their unlabelled totals are rendered above).
    fn render_upstreams(&self, o: &mut String) {
        let ups = self.upstreams.lock().unwrap_or_else(PoisonError::into_inner);
        if ups.is_empty() {
            return;
        }
        let families: [(&str, &str, CounterOf); 5] = [
            (
                "wharfie_upstream_cache_hits_total",
                "Requests for the upstream's mirrored content served from the cache.",
                |c| &c.hits,
            ),
            (
                "wharfie_upstream_cache_misses_total",
                "Requests for the upstream's mirrored content that needed the upstream.",
                |c| &c.misses,
            ),
            (
                "wharfie_upstream_coalesced_followers_total",
                "Requests that joined a fetch from the upstream already in flight.",
                |c| &c.coalesced,
            ),
            ("wharfie_upstream_fetched_bytes_total", "Blob bytes received from the upstream.", |c| {
                &c.fetched_bytes
            }),
            (
                "wharfie_upstream_served_bytes_total",
                "Manifest and blob bytes served to clients from the upstream's mirrored repositories.",
                |c| &c.served_bytes,
            ),
        ];
        for (name, help, field) in families {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (u, c) in ups.iter() {
                let _ = writeln!(o, "{name}{{upstream=\"{u}\"}} {}", field(c).load(Relaxed));
            }
        }
    }
}

/// The upstreams' fetch queues (`max_concurrent_fetches`): how many wait now, and how
/// long the fetches waited for a slot (a summary: sum and count).
pub(crate) fn render_queues(
    queues: &[(String, std::sync::Arc<crate::upstream::limits::Limits>)],
    o: &mut String,
) {
    let stats: Vec<_> = queues.iter().map(|(n, l)| (n, l.stats())).collect();
    let _ = writeln!(
        o,
        "# HELP wharfie_upstream_queue_depth Fetches waiting for a slot under the upstream's max_concurrent_fetches.\n# TYPE wharfie_upstream_queue_depth gauge"
    );
    for (n, s) in &stats {
        let _ = writeln!(o, "wharfie_upstream_queue_depth{{upstream=\"{n}\"}} {}", s.depth);
    }
    let _ = writeln!(
        o,
        "# HELP wharfie_upstream_queue_wait_seconds Time fetches waited for a slot before their request.\n# TYPE wharfie_upstream_queue_wait_seconds summary"
    );
    for (n, s) in &stats {
        let _ =
            writeln!(o, "wharfie_upstream_queue_wait_seconds_sum{{upstream=\"{n}\"}} {:.6}", s.wait_seconds);
        let _ = writeln!(o, "wharfie_upstream_queue_wait_seconds_count{{upstream=\"{n}\"}} {}", s.waits);
    }
    let _ = writeln!(
        o,
        "# HELP wharfie_upstream_queue_abandoned_total Queued fetches that left the queue because their clients went away.\n# TYPE wharfie_upstream_queue_abandoned_total counter"
    );
    for (n, s) in &stats {
        let _ = writeln!(o, "wharfie_upstream_queue_abandoned_total{{upstream=\"{n}\"}} {}", s.abandoned);
    }
}
