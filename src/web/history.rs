//! The last hour of traffic, for the page's chart, and the counters the page shows.
//!
//! A background task ([`sample`]) reads the registry's counters every [`INTERVAL`]
//! into a ring of the last hour; request handling is untouched (no per-request code).
//! The counters are read from the `/metrics` text, the one stable interface of
//! `service::metrics`, so this module depends on metric names, not on its internals.
//! The sampler keeps the store totals too, but the page reads meta's counters at view
//! time (they cost the same at any store size); the sampled copy is its fallback.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use crate::service::metrics::StoreStats;
use crate::service::{Metrics, Registry};

/// How often the sampler reads the counters.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: one hour.
pub(crate) const SAMPLES: usize = 360;

/// Traffic in one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Unix seconds at the end of the interval.
    pub at: u64,
    pub requests: u64,
    pub bytes: u64,
}

/// The counters the page shows, as `/metrics` has them now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub requests: u64,
    pub bytes_served: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub coalesced: u64,
    pub upstream_bytes: u64,
    pub evicted_blobs: u64,
    pub evicted_bytes: u64,
    pub gc_runs: u64,
    /// Requests sent, per upstream.
    pub upstream_requests: BTreeMap<String, u64>,
    /// The cache counters, per upstream.
    pub per_upstream: BTreeMap<String, UpstreamFigures>,
}

/// One upstream's cache counters (`wharfie_upstream_*{upstream}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UpstreamFigures {
    pub hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub fetched_bytes: u64,
    pub served_bytes: u64,
}

impl Counters {
    /// Read the Prometheus text format `Metrics::render` writes.
    pub(crate) fn parse(text: &str) -> Counters {
        let mut c = Counters::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(v) = value.parse::<u64>() else { continue };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            match name {
                "wharfie_http_requests_total" => c.requests += v,
                "wharfie_http_response_bytes_total" => c.bytes_served += v,
                "wharfie_cache_hits_total" => c.cache_hits = v,
                "wharfie_cache_misses_total" => c.cache_misses = v,
                "wharfie_coalesced_followers_total" => c.coalesced = v,
                "wharfie_upstream_bytes_total" => c.upstream_bytes = v,
                "wharfie_evicted_blobs_total" => c.evicted_blobs = v,
                "wharfie_evicted_bytes_total" => c.evicted_bytes = v,
                "wharfie_gc_runs_total" => c.gc_runs = v,
                "wharfie_upstream_requests_total" => {
                    if let Some(u) = label(labels, "upstream") {
                        *c.upstream_requests.entry(u.to_owned()).or_default() += v;
                    }
                }
                "wharfie_upstream_cache_hits_total"
                | "wharfie_upstream_cache_misses_total"
                | "wharfie_upstream_coalesced_followers_total"
                | "wharfie_upstream_fetched_bytes_total"
                | "wharfie_upstream_served_bytes_total" => {
                    let Some(u) = label(labels, "upstream") else { continue };
                    let f = c.per_upstream.entry(u.to_owned()).or_default();
                    let field = match name {
                        "wharfie_upstream_cache_hits_total" => &mut f.hits,
                        "wharfie_upstream_cache_misses_total" => &mut f.misses,
                        "wharfie_upstream_coalesced_followers_total" => &mut f.coalesced,
                        "wharfie_upstream_fetched_bytes_total" => &mut f.fetched_bytes,
                        _ => &mut f.served_bytes,
                    };
                    *field = v;
                }
                _ => {}
            }
        }
        c
    }

    pub(crate) fn of(m: &Metrics) -> Counters {
        Counters::parse(&m.render(&StoreStats::default()))
    }
}

/// The value of `key="…"` in a label list (our label values never hold a quote).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

#[derive(Default)]
struct Inner {
    ring: VecDeque<Sample>,
    last: Option<(u64, u64)>,
    store: Option<StoreStats>,
    gc_runs: Option<u64>,
    /// Unix seconds of the sample that first saw the latest GC run.
    gc_seen: Option<u64>,
}

/// The ring and the latest store totals. The mutex guards a few field writes per
/// interval and a copy per page view; never held across an await.
#[derive(Default)]
pub(crate) struct History {
    inner: Mutex<Inner>,
}

/// What the page reads from the history.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub samples: Vec<Sample>,
    pub store: Option<StoreStats>,
    pub gc_seen: Option<u64>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record the counters' totals at `at` (the first call only sets the baseline).
    pub(crate) fn record(&self, at: u64, c: &Counters, store: Option<StoreStats>) {
        let mut g = self.lock();
        if let Some((r, b)) = g.last {
            let s = Sample {
                at,
                requests: c.requests.saturating_sub(r),
                bytes: c.bytes_served.saturating_sub(b),
            };
            g.ring.push_back(s);
            while g.ring.len() > SAMPLES {
                g.ring.pop_front();
            }
        }
        g.last = Some((c.requests, c.bytes_served));
        match g.gc_runs {
            Some(n) if c.gc_runs > n => g.gc_seen = Some(at),
            None if c.gc_runs > 0 => g.gc_seen = Some(at),
            _ => {}
        }
        g.gc_runs = Some(c.gc_runs);
        if store.is_some() {
            g.store = store;
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        Snapshot { samples: g.ring.iter().copied().collect(), store: g.store.clone(), gc_seen: g.gc_seen }
    }
}

/// Histories by the registry's `Metrics` (one per server in the process). A process
/// has one server, tests sometimes a few; dead entries are dropped on each lookup.
/// Kept here rather than as a `Registry` field so that the page adds nothing to the
/// service's types.
static HISTORIES: Mutex<Vec<(Weak<Metrics>, Arc<History>)>> = Mutex::new(Vec::new());

/// The history of the registry whose counters are `m`.
pub(crate) fn history_of(m: &Arc<Metrics>) -> Arc<History> {
    let mut all = HISTORIES.lock().unwrap_or_else(PoisonError::into_inner);
    all.retain(|(w, _)| w.strong_count() > 0);
    if let Some((_, h)) = all.iter().find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(m))) {
        return h.clone();
    }
    let h = Arc::new(History::default());
    all.push((Arc::downgrade(m), h.clone()));
    h
}

/// The sampler: every [`INTERVAL`], the counters and the store totals into the ring.
pub(crate) async fn sample(reg: Arc<Registry>) {
    let history = history_of(&reg.metrics);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let counters = Counters::of(&reg.metrics);
        let r = reg.clone();
        let store = match tokio::task::spawn_blocking(move || r.store_stats()).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "web page sampler: cannot read the store totals");
                None
            }
            Err(_) => None,
        };
        history.record(crate::meta::model::now(), &counters, store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_metrics_text() {
        let text = "# HELP x\nwharfie_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 3\n\
                    wharfie_http_requests_total{route=\"manifest\",method=\"GET\",status=\"404\"} 2\n\
                    wharfie_http_response_bytes_total{route=\"blob\"} 1000\n\
                    wharfie_cache_hits_total 7\nwharfie_gc_runs_total 1\n\
                    wharfie_upstream_requests_total{upstream=\"hub\",kind=\"blob\",status=\"200\"} 4\n\
                    wharfie_upstream_requests_total{upstream=\"hub\",kind=\"manifest\",status=\"200\"} 1\n\
                    wharfie_upstream_cache_hits_total{upstream=\"hub\"} 3\n\
                    wharfie_upstream_cache_misses_total{upstream=\"hub\"} 4\n\
                    wharfie_upstream_coalesced_followers_total{upstream=\"hub\"} 1\n\
                    wharfie_upstream_fetched_bytes_total{upstream=\"hub\"} 500\n\
                    wharfie_upstream_served_bytes_total{upstream=\"hub\"} 900\n\
                    wharfie_upstream_cache_hits_total{upstream=\"ghcr\"} 2\n";
        let c = Counters::parse(text);
        assert_eq!((c.requests, c.bytes_served, c.cache_hits, c.gc_runs), (5, 1000, 7, 1));
        assert_eq!(c.upstream_requests.get("hub"), Some(&5));
        let hub = UpstreamFigures { hits: 3, misses: 4, coalesced: 1, fetched_bytes: 500, served_bytes: 900 };
        assert_eq!(c.per_upstream.get("hub"), Some(&hub));
        assert_eq!(c.per_upstream.get("ghcr").map(|f| f.hits), Some(2));
    }

    #[test]
    fn the_ring_keeps_an_hour_of_deltas_and_notes_gc_runs() {
        let h = History::default();
        let mut c = Counters::default();
        h.record(0, &c, None);
        for i in 1..=(SAMPLES as u64 + 5) {
            c.requests += i;
            c.bytes_served += 10 * i;
            if i == 3 {
                c.gc_runs = 1;
            }
            h.record(i * 10, &c, None);
        }
        let s = h.snapshot();
        assert_eq!(s.samples.len(), SAMPLES);
        let last = s.samples.last().copied().unwrap_or_default();
        assert_eq!((last.requests, last.bytes), (SAMPLES as u64 + 5, 10 * (SAMPLES as u64 + 5)));
        assert_eq!(s.gc_seen, Some(30));
    }
}
