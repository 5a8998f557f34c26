//! `events/`: push notifications. Every manifest push and delete is recorded as an
//! [`EventRecord`] in the metadata transaction that commits the change (see
//! `meta::events`: both or neither survive a crash); one delivery task per `[[notify]]`
//! endpoint reads the queue in order and POSTs Distribution's notification envelope
//! (`application/vnd.docker.distribution.events.v1+json`), moving its cursor only after
//! a 2xx, retrying with exponential backoff otherwise. A push never waits for delivery:
//! a slow or dead receiver only grows the (bounded) queue.
//!
//! Delivery is at-least-once: a crash between a receiver's 2xx and the cursor's commit
//! sends that batch again, with the same event ids (Distribution's contract).
//!
//! May import: meta, config, service's metrics, digest, and `upstream::webhook` (the outbound
//! HTTP client; reqwest stays in `upstream/`).

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;

use crate::config::NotifySettings;
use crate::meta::{EventRecord, EventRequest, Meta, MetaError};
use crate::service::Metrics;
use crate::upstream::webhook::{Webhook, WebhookError};

/// The envelope's media type.
pub(crate) const EVENTS_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// At most this many events go in one POST.
const MAX_BATCH: usize = 32;

/// An idle task looks at the queue at least this often (besides being woken by commits).
const IDLE_POLL: Duration = Duration::from_secs(1);

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Who made the request that causes an event, and how.
#[derive(Debug, Clone)]
pub(crate) struct RequestContext {
    id: String,
    actor: Option<String>,
    method: String,
    host: Option<String>,
    useragent: Option<String>,
}

impl RequestContext {
    pub(crate) fn of(actor: Option<&str>, method: &str, headers: &HeaderMap) -> Self {
        let h = |n: http::header::HeaderName| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        RequestContext {
            id: uuid::Uuid::new_v4().to_string(),
            actor: actor.map(str::to_owned),
            method: method.to_owned(),
            host: h(http::header::HOST),
            useragent: h(http::header::USER_AGENT),
        }
    }
}

/// Run `f` (a handler that may push or delete) with `ctx` as the events' request.
pub(crate) async fn scope<F: Future>(ctx: RequestContext, f: F) -> F::Output {
    REQUEST.scope(ctx, f).await
}

fn draft(action: &str, repository: &str) -> EventRecord {
    let ctx = REQUEST.try_with(Clone::clone).ok();
    let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    EventRecord {
        id: uuid::Uuid::new_v4().to_string(),
        timestamp_ms: u64::try_from(ms).unwrap_or(u64::MAX),
        action: action.to_owned(),
        repository: repository.to_owned(),
        digest: None,
        media_type: None,
        size: None,
        tag: None,
        actor: ctx.as_ref().and_then(|c| c.actor.clone()),
        request: ctx.map(|c| EventRequest {
            id: c.id,
            method: c.method,
            host: c.host,
            useragent: c.useragent,
        }),
    }
}

/// The event of a manifest push (meta records it only when an endpoint is configured).
pub(crate) fn push(
    repository: &str,
    digest: &crate::digest::Digest,
    media_type: &str,
    size: u64,
    tag: Option<&str>,
) -> EventRecord {
    let mut e = draft("push", repository);
    e.digest = Some(digest.clone());
    e.media_type = Some(media_type.to_owned());
    e.size = Some(size);
    e.tag = tag.map(str::to_owned);
    e
}

/// The event of a manifest or tag delete; meta fills in the target from the rows.
pub(crate) fn delete(repository: &str) -> EventRecord {
    draft("delete", repository)
}

/// This process, as the envelope's `source` names it.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// `host:port` the server listens on.
    pub addr: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Fresh per process start, as in Distribution.
    pub instance_id: String,
}

/// Render `events` as Distribution's envelope.
pub(crate) fn envelope(events: &[EventRecord], source: &Source) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let list: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut target = Map::new();
            if let Some(m) = &e.media_type {
                target.insert("mediaType".into(), json!(m));
            }
            if let Some(s) = e.size {
                target.insert("size".into(), json!(s));
                // Distribution's older name for `size`, still read by some receivers.
                target.insert("length".into(), json!(s));
            }
            if let Some(d) = &e.digest {
                target.insert("digest".into(), json!(d.as_str()));
            }
            target.insert("repository".into(), json!(e.repository));
            let host = e.request.as_ref().and_then(|r| r.host.as_deref()).unwrap_or(&source.addr);
            let reference = e.digest.as_ref().map(|d| d.as_str().to_owned()).or_else(|| e.tag.clone());
            if let Some(r) = reference {
                target.insert(
                    "url".into(),
                    json!(format!("{}://{host}/v2/{}/manifests/{r}", source.scheme, e.repository)),
                );
            }
            if let Some(t) = &e.tag {
                target.insert("tag".into(), json!(t));
            }
            let ts = SystemTime::UNIX_EPOCH + Duration::from_millis(e.timestamp_ms);
            let mut ev = json!({
                "id": e.id,
                "timestamp": humantime::format_rfc3339_millis(ts).to_string(),
                "action": e.action,
                "target": target,
                "actor": match &e.actor { Some(a) => json!({"name": a}), None => json!({}) },
                "source": {"addr": source.addr, "instanceID": source.instance_id},
            });
            if let (Some(r), Some(obj)) = (&e.request, ev.as_object_mut()) {
                let mut req = json!({"id": r.id, "method": r.method});
                if let Some(h) = &r.host {
                    req["host"] = json!(h);
                }
                if let Some(u) = &r.useragent {
                    req["useragent"] = json!(u);
                }
                obj.insert("request".into(), req);
            }
            ev
        })
        .collect();
    json!({ "events": list })
}

/// One endpoint's counters since the process started.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
}

/// Why a delivery attempt failed; never names the endpoint's URL (it may carry
/// credentials) — the endpoint is named by its `name`.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("the receiver answered {0}")]
    Status(u16),
    #[error(transparent)]
    Post(#[from] WebhookError),
    #[error("cannot build the request: {0}")]
    Build(String),
}

/// Turn the queue on, register the endpoints' cursors, and start one delivery task per
/// endpoint. Call before serving.
pub(crate) async fn start(
    meta: &Meta,
    endpoints: &[NotifySettings],
    queue_max: u64,
    source: Source,
    metrics: &Metrics,
) -> Result<Vec<tokio::task::JoinHandle<()>>, MetaError> {
    meta.enable_events(if endpoints.is_empty() { 0 } else { queue_max });
    if !endpoints.is_empty() || meta.has_event_state()? {
        meta.event_endpoints(endpoints.iter().map(|e| e.name.clone()).collect()).await?;
    }
    let mut tasks = Vec::new();
    let mut all = Vec::new();
    for ep in endpoints {
        let counters = Arc::new(Counters::default());
        all.push((ep.name.clone(), counters.clone()));
        let client = match Webhook::new(ep.timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(endpoint = ep.name, error = %e, "cannot build the notification client");
                continue;
            }
        };
        let task = Delivery { meta: meta.clone(), ep: ep.clone(), client, counters, source: source.clone() };
        tasks.push(tokio::spawn(task.run()));
    }
    if !all.is_empty() {
        let meta = meta.clone();
        metrics.add_renderer(Box::new(move |o: &mut String| render(&meta, &all, o)));
    }
    Ok(tasks)
}

fn render(meta: &Meta, all: &[(String, Arc<Counters>)], o: &mut String) {
    let stats: Vec<_> = all.iter().map(|(n, _)| meta.event_stats(n).unwrap_or_default()).collect();
    let mut family = |name: &str, kind: &str, help: &str, v: &dyn Fn(usize) -> u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (i, (n, _)) in all.iter().enumerate() {
            let _ = writeln!(o, "{name}{{endpoint=\"{n}\"}} {}", v(i));
        }
    };
    family("wharfie_notify_queue_depth", "gauge", "Events queued for the endpoint.", &|i| stats[i].depth);
    family("wharfie_notify_delivered_total", "counter", "Events the endpoint accepted (2xx).", &|i| {
        all[i].1.delivered.load(Relaxed)
    });
    family(
        "wharfie_notify_failed_attempts_total",
        "counter",
        "Delivery attempts that failed (error, timeout, non-2xx).",
        &|i| all[i].1.failed_attempts.load(Relaxed),
    );
    family(
        "wharfie_notify_dropped_total",
        "counter",
        "Events dropped for the endpoint by a full queue.",
        &|i| stats[i].dropped,
    );
}

struct Delivery {
    meta: Meta,
    ep: NotifySettings,
    client: Webhook,
    counters: Arc<Counters>,
    source: Source,
}

impl Delivery {
    fn wants(&self, e: &EventRecord) -> bool {
        (self.ep.actions.is_empty() || self.ep.actions.contains(&e.action))
            && (self.ep.repositories.is_empty()
                || self.ep.repositories.iter().any(|p| p.matches(&e.repository)))
    }

    async fn run(self) {
        let mut committed = self.meta.events_committed();
        let mut backoff = self.ep.backoff_min;
        let mut failing = false;
        loop {
            let batch = match self.meta.events_after(&self.ep.name, MAX_BATCH) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(endpoint = self.ep.name, error = %e, "cannot read the notification queue");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let Some(last) = batch.last().map(|(s, _)| *s) else {
                // Mark what we have seen before looking, so a commit after the read wakes us.
                committed.borrow_and_update();
                if self.meta.events_after(&self.ep.name, 1).map_or(true, |b| b.is_empty()) {
                    let _ = tokio::time::timeout(IDLE_POLL, committed.changed()).await;
                }
                continue;
            };
            let send: Vec<EventRecord> =
                batch.into_iter().map(|(_, e)| e).filter(|e| self.wants(e)).collect();
            if !send.is_empty() {
                if let Err(e) = self.post(&send).await {
                    self.counters.failed_attempts.fetch_add(1, Relaxed);
                    if !failing {
                        tracing::warn!(endpoint = self.ep.name, error = %e, "notification delivery failed; retrying with backoff");
                    }
                    failing = true;
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(self.ep.backoff_max);
                    continue;
                }
                if failing {
                    tracing::info!(endpoint = self.ep.name, "notification delivery recovered");
                }
                failing = false;
                backoff = self.ep.backoff_min;
                self.counters.delivered.fetch_add(send.len() as u64, Relaxed);
            }
            if let Err(e) = self.meta.ack_events(self.ep.name.clone(), last).await {
                tracing::warn!(endpoint = self.ep.name, error = %e, "cannot record notification delivery");
                tokio::time::sleep(backoff).await;
            }
        }
    }

    async fn post(&self, events: &[EventRecord]) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(&envelope(events, &self.source))
            .map_err(|e| DeliveryError::Build(e.to_string()))?;
        let status = self.client.post(&self.ep.url, EVENTS_MEDIA_TYPE, &self.ep.headers, body).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(DeliveryError::Status(status))
        }
    }
}

/// `d` ± 25 %, so endpoints failing together do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.75..1.25))
}
