//! The pull-through mirror: routing a name to an upstream, manifests fetched once per
//! key however many clients ask (a singleflight), and blob fills that run detached from
//! any client while every client streams the staging file as it grows.
//!
//! A fill verifies the digest before its commit and holds the last byte back from
//! every reader until then: no client ever receives a complete body with wrong bytes.
//! What a fill commits goes through the same commit path as a push, marked mirrored.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::entitlement::{Content, Entitlement};
use super::manifests::{parse, ManifestOut};
use super::{Error, Registry};
use crate::blob::GrowingReader;
use crate::digest::Digest;
use crate::flight::{Joined, Lost};
use crate::meta::{model::now, LeaseKey, LeaseRecord, Origin, PutManifest};
use crate::names::{Reference, RepoName};
use crate::upstream::{Attempts, Upstream, UpstreamError};

/// One configured upstream and its policy.
pub struct Mirror {
    pub up: Upstream,
    /// Trust a cached tag this long before revalidating it upstream.
    pub tag_ttl: Duration,
    /// Never contact the upstream.
    pub offline: bool,
    /// Serve cached tags when the upstream fails.
    pub stale_if_error: bool,
    /// Serves bare names (the Docker daemon's `registry-mirrors`).
    pub default: bool,
    /// Images (upstream repository, tag) kept fresh in the background (`warm.rs`).
    pub warm: Vec<(String, String)>,
    /// Platforms (`os/arch[/variant]`) of a warm index to fill; all when empty.
    pub warm_platforms: Vec<String>,
    /// Its share of the cache counters (`Metrics::upstream_counters`).
    pub counters: Arc<super::metrics::UpstreamCounters>,
}

impl Mirror {
    pub fn name(&self) -> &str {
        self.up.name()
    }

    /// Docker Hub keeps official images under `library/`.
    fn is_docker_hub(&self) -> bool {
        self.name() == "docker.io"
    }

    /// An upstream failure as every waiter of a flight sees it.
    pub(super) fn failed(&self, e: UpstreamError) -> FlightError {
        match e {
            UpstreamError::NotFound => FlightError::NotFound,
            UpstreamError::Invalid(m) => FlightError::Invalid(m),
            e @ UpstreamError::Down { .. } => {
                FlightError::Upstream { retry_after: e.retry_after(), message: e.to_string() }
            }
            e => FlightError::Upstream { message: format!("{}: {e}", self.name()), retry_after: None },
        }
    }

    /// `Err` at once while the upstream is marked down (no flight, no fill, no lease).
    pub(super) fn check_up(&self) -> Result<(), Error> {
        match self.up.down_now() {
            Some(e) => Err(self.failed(e).into_error(Error::ManifestUnknown)),
            None => Ok(()),
        }
    }

    /// A fetch slot under `max_concurrent_fetches`, waiting in FIFO order; a fetch whose
    /// every client went away while it waited leaves the queue with an error nobody sees.
    pub(super) async fn slot<P, V>(
        &self,
        flight: &crate::flight::Progress<P, V>,
    ) -> Result<crate::upstream::limits::Slot, FlightError> {
        self.up.limits().slot(flight.abandoned()).await.map_err(|_| {
            tracing::debug!(upstream = self.name(), "a queued fetch left the queue: its clients went away");
            FlightError::Unavailable(format!(
                "upstream {}: every client went away while the fetch waited for a slot",
                self.name()
            ))
        })
    }

    fn remote_name(&self, name: &str) -> String {
        if self.is_docker_hub() && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_owned()
        }
    }
}

/// Where a request's name leads.
#[derive(Clone)]
pub struct Located {
    /// The repository the content is stored under here.
    pub repo: RepoName,
    /// The upstream and its name for the repository, for mirrored names.
    pub mirror: Option<(Arc<Mirror>, String)>,
    /// A hosted repository to try first (bare names under a default upstream).
    pub hosted_first: Option<RepoName>,
}

/// Failures shared by every waiter of one flight.
#[derive(Debug, Clone)]
pub(super) enum FlightError {
    NotFound,
    Unavailable(String),
    /// The upstream failed or is down; `retry_after` in seconds when it is down.
    Upstream {
        message: String,
        retry_after: Option<u64>,
    },
    Invalid(String),
    Internal(String),
}

impl FlightError {
    pub(super) fn into_error(self, not_found: Error) -> Error {
        match self {
            FlightError::NotFound => not_found,
            FlightError::Unavailable(m) => Error::Unavailable(m),
            FlightError::Upstream { message, retry_after } => Error::Upstream { message, retry_after },
            FlightError::Invalid(m) => {
                Error::Upstream { message: format!("upstream sent invalid content: {m}"), retry_after: None }
            }
            FlightError::Internal(m) => Error::Internal(m),
        }
    }

    /// Would a cached copy be a better answer than this error?
    pub(super) fn transient(&self) -> bool {
        matches!(self, FlightError::Unavailable(_) | FlightError::Upstream { .. } | FlightError::Invalid(_))
    }
}

/// In words, for logs and for the error a follower's transfer ends with.
impl std::fmt::Display for FlightError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlightError::NotFound => f.write_str("not found upstream"),
            FlightError::Unavailable(m) | FlightError::Internal(m) => f.write_str(m),
            FlightError::Upstream { message, .. } => f.write_str(message),
            FlightError::Invalid(m) => write!(f, "upstream sent invalid content: {m}"),
        }
    }
}

impl From<Error> for FlightError {
    fn from(e: Error) -> Self {
        match e {
            Error::ManifestInvalid(m) | Error::DigestInvalid(m) => FlightError::Invalid(m),
            Error::Unavailable(m) => FlightError::Unavailable(m),
            Error::Upstream { message, retry_after } => FlightError::Upstream { message, retry_after },
            e => FlightError::Internal(e.to_string()),
        }
    }
}

/// A fill's progress, published to every reader (the flight's progress).
#[derive(Debug, Clone)]
pub(super) struct FillProgress {
    /// The repository the fill was started for (from its own upstream).
    repo: RepoName,
    /// A reader of the staging file, once the fill created it.
    reader: Option<GrowingReader>,
    /// The blob's size, once the upstream said it.
    total: Option<u64>,
    /// Bytes readers may send: everything written except the held-back last byte.
    visible: u64,
    /// Repositories of followers, to link the blob into once it commits; `None` once
    /// the fill has taken the list (a later follower links it itself). Followers do
    /// not hold a watch on the fill for this: a queued fill whose every client went
    /// away must see itself abandoned.
    links: Arc<std::sync::Mutex<Option<Vec<RepoName>>>>,
}

/// What a fill ends with: committed, or why not.
type FillResult = Result<(), FlightError>;

/// Blob fills in flight, by digest: the one singleflight (`crate::flight`).
pub(super) type Fills = crate::flight::Flights<Digest, FillProgress, FillResult>;

type FillWatch = crate::flight::Watch<FillProgress, FillResult>;
type FillHandle = crate::flight::Progress<FillProgress, FillResult>;

impl From<Lost> for FlightError {
    fn from(l: Lost) -> Self {
        FlightError::Internal(format!("blob fill: {l}"))
    }
}

/// A flight's end as the fill's result (`Lost`: its task panicked or was cancelled).
#[allow(clippy::ref_option)] // callers hold a borrow of the watch channel's state
fn fill_outcome(done: &Option<Result<FillResult, Lost>>) -> Option<FillResult> {
    done.as_ref().map(|d| d.clone().unwrap_or_else(|l| Err(l.into())))
}

/// A blob as a GET or HEAD answers it.
pub enum BlobRead {
    /// Stored: its size, and its bytes unless HEAD.
    Stored { size: u64, bytes: Option<Bytes> },
    /// Streaming from a fill in progress.
    Filling { size: u64, body: super::Body },
}

/// How far a blob read got without waiting.
enum Held {
    /// Answered from what is linked.
    Here(BlobRead),
    /// Not linked where the name leads: the rest of the way, `confirmed` when the
    /// upstream's manifests already vouch for the digest.
    Elsewhere { confirmed: bool },
}

/// Staging ids of fills start with this (uploads use bare uuids).
const FILL_STAGING: &str = "fill-";

const READ_CHUNK: u64 = 256 * 1024;
/// Times a fill broken mid-body is resumed before giving up.
const MAX_RESUMES: u32 = 5;

/// Manifest fetches in flight, by upstream/repository/reference.
type ManifestFlights = crate::flight::Flights<String, (), Result<Digest, FlightError>>;

/// The configured upstreams, routing names to them, and the flights in progress
/// against them (the one singleflight, `crate::flight`, for manifests and fills).
pub(super) struct MirrorSet {
    list: Vec<Arc<Mirror>>,
    /// Blob fills in flight, by digest.
    pub(super) fills: Arc<Fills>,
    /// Manifest fetches in flight, by upstream/repository/reference.
    pub(super) manifest_flights: Arc<ManifestFlights>,
}

impl MirrorSet {
    pub(super) fn new(list: Vec<Arc<Mirror>>) -> Self {
        MirrorSet {
            list,
            fills: Arc::new(crate::flight::Flights::default()),
            manifest_flights: Arc::new(crate::flight::Flights::default()),
        }
    }

    /// The configured upstreams, in configuration order.
    pub(super) fn list(&self) -> &[Arc<Mirror>] {
        &self.list
    }

    /// Route a name: by `ns` (containerd), by an upstream-name prefix, or to the default
    /// upstream for bare names (hosted first); otherwise a hosted repository.
    pub(super) fn locate(&self, name: &RepoName, ns: Option<&str>) -> Result<Located, Error> {
        let hosted = |repo: &RepoName| Located { repo: repo.clone(), mirror: None, hosted_first: None };
        let via = |m: &Arc<Mirror>, rest: &str, hosted_first: Option<RepoName>| -> Result<Located, Error> {
            let remote = m.remote_name(rest);
            let repo = RepoName::parse(&format!("{}/{remote}", m.name()))?;
            Ok(Located { repo, mirror: Some((m.clone(), remote)), hosted_first })
        };
        if let Some(ns) = ns {
            if let Some(m) = self.list.iter().find(|m| m.name() == ns) {
                return via(m, name.as_str(), None);
            }
        }
        if let Some((first, rest)) = name.as_str().split_once('/') {
            if let Some(m) = self.list.iter().find(|m| m.name() == first) {
                return via(m, rest, None);
            }
        }
        if let Some(m) = self.list.iter().find(|m| m.default) {
            return via(m, name.as_str(), Some(name.clone()));
        }
        Ok(hosted(name))
    }

    /// The hosted repository a write goes to; mirrored namespaces are read-only.
    pub(super) fn hosted(&self, name: &RepoName, ns: Option<&str>) -> Result<RepoName, Error> {
        let loc = self.locate(name, ns)?;
        match (loc.mirror, loc.hosted_first) {
            (None, _) => Ok(loc.repo),
            (Some(_), Some(h)) => Ok(h),
            (Some((m, _)), None) => Err(Error::Denied(format!(
                "{name} is mirrored from {}: push to a repository outside the mirror's namespace",
                m.name()
            ))),
        }
    }

    /// Which repositories hold mirrored content: those under an upstream's name (the
    /// only names `locate` sends to a mirror; `hosted` refuses pushes to them).
    pub(super) fn mirrored_repos(&self) -> crate::meta::RepoFilter {
        let names: Vec<String> = self.list.iter().map(|m| m.name().to_owned()).collect();
        Arc::new(move |repo: &str| {
            repo.split_once('/').is_some_and(|(first, _)| names.iter().any(|n| n == first))
        })
    }
}

impl Registry {
    /// GET/HEAD a manifest wherever the name leads.
    pub async fn read_manifest(
        self: &Arc<Self>,
        loc: &Located,
        reference: &Reference,
        with_body: bool,
    ) -> Result<ManifestOut, Error> {
        if let Some(h) = &loc.hosted_first {
            match self.manifests.get(h, reference, with_body) {
                Err(Error::ManifestUnknown) => {}
                r => return r,
            }
        }
        let Some((m, remote)) = &loc.mirror else {
            return self.manifests.get(&loc.repo, reference, with_body);
        };
        let local = &loc.repo;
        match reference {
            Reference::Digest(d) => {
                match self.entitled(loc, d, Content::Manifest)? {
                    Entitlement::Linked(r) => {
                        if let Ok(out) = self.manifests.get(&r, reference, with_body) {
                            self.metrics.hit(&m.counters);
                            return Ok(out);
                        }
                    }
                    Entitlement::Referenced => {
                        if self.meta.link_manifest(local.as_str().to_owned(), d.clone()).await? {
                            self.metrics.hit(&m.counters);
                            return self.manifests.get(local, reference, with_body);
                        }
                    }
                    Entitlement::Unknown => return Err(Error::ManifestUnknown),
                    // The fetch from R's upstream below is the confirmation.
                    Entitlement::AskUpstream => {}
                }
                if m.offline {
                    return Err(Error::ManifestUnknown);
                }
                self.metrics.miss(&m.counters);
                m.check_up()?;
                let key = format!("m {} {remote} {d}", m.name());
                let (me, m2, r2, l2, d2) =
                    (self.clone(), m.clone(), remote.clone(), local.clone(), d.clone());
                let (res, leader) = self
                    .mirrors
                    .manifest_flights
                    .run_with(key, move |flight| async move {
                        let _slot = m2.slot(&flight).await?;
                        me.fetch_manifest(&m2, &r2, &l2, d2.as_str(), Some(&d2), None, Attempts::Retry).await
                    })
                    .await;
                self.count_follower(m, leader);
                let digest = res
                    .map_err(|l| Error::Internal(format!("manifest fetch: {l}")))?
                    .map_err(|e| e.into_error(Error::ManifestUnknown))?;
                self.manifests.get(local, &Reference::Digest(digest), with_body)
            }
            Reference::Tag(t) => {
                let cached = self.meta.tag(local.as_str(), t.as_str())?;
                let fresh = cached.as_ref().is_some_and(|r| {
                    let checked = r.checked.unwrap_or(r.updated);
                    m.offline || now().saturating_sub(checked) < m.tag_ttl.as_secs()
                });
                if fresh {
                    if let Ok(out) = self.manifests.get(local, reference, with_body) {
                        self.metrics.hit(&m.counters);
                        return Ok(out);
                    }
                }
                if m.offline {
                    return Err(Error::ManifestUnknown);
                }
                self.metrics.miss(&m.counters);
                let stale_ok = m.stale_if_error && cached.is_some();
                if let Err(e) = m.check_up() {
                    // Down: the cached tag answers without asking the upstream.
                    if stale_ok {
                        if let Ok(out) = self.manifests.get(local, reference, with_body) {
                            tracing::debug!(upstream = m.name(), repo = %local, tag = %t, "upstream down; serving the cached tag");
                            self.metrics.stale_served.fetch_add(1, Relaxed);
                            return Ok(out);
                        }
                    }
                    return Err(e);
                }
                let key = format!("t {} {remote} {t}", m.name());
                let cached_digest = cached.as_ref().map(|r| r.digest.clone());
                let (me, m2, r2, l2, t2) =
                    (self.clone(), m.clone(), remote.clone(), local.clone(), t.as_str().to_owned());
                let (res, leader) = self
                    .mirrors
                    .manifest_flights
                    .run_with(key, move |flight| async move {
                        let _slot = m2.slot(&flight).await?;
                        me.revalidate_tag(&m2, &r2, &l2, &t2, cached_digest, stale_ok).await
                    })
                    .await;
                self.count_follower(m, leader);
                let res = res.map_err(|l| Error::Internal(format!("manifest fetch: {l}")))?;
                match res {
                    Ok(digest) => self.manifests.get(local, &Reference::Digest(digest), with_body),
                    Err(e) if e.transient() && m.stale_if_error && cached.is_some() => {
                        tracing::warn!(upstream = m.name(), repo = %local, tag = %t, error = %e, "upstream failed; serving the cached tag");
                        self.metrics.stale_served.fetch_add(1, Relaxed);
                        self.manifests.get(local, reference, with_body)
                    }
                    Err(e) => Err(e.into_error(Error::ManifestUnknown)),
                }
            }
        }
    }

    pub(super) fn count_follower(&self, m: &Mirror, leader: bool) {
        if !leader {
            self.metrics.follower(&m.counters);
        }
    }

    /// A tag whose TTL ran out: one HEAD upstream; only a changed digest costs a GET.
    pub(super) async fn revalidate_tag(
        &self,
        m: &Mirror,
        remote: &str,
        local: &RepoName,
        tag: &str,
        cached: Option<Digest>,
        stale_ok: bool,
    ) -> Result<Digest, FlightError> {
        // With a cached copy to fall back on, a connect failure is final at once.
        let attempts = if stale_ok { Attempts::StaleOk } else { Attempts::Retry };
        if let Some(cd) = cached {
            let head = m.up.head_manifest(remote, tag, attempts).await.map_err(|e| m.failed(e))?;
            if head.digest.as_ref() == Some(&cd) {
                self.meta
                    .touch_tag(local.as_str().to_owned(), tag.to_owned(), now())
                    .await
                    .map_err(Error::from)?;
                return Ok(cd);
            }
        }
        self.fetch_manifest(m, remote, local, tag, None, Some(tag), attempts).await
    }

    /// GET a manifest upstream, verify it, and store it by digest (and under `tag`) in
    /// one transaction.
    #[allow(clippy::too_many_arguments)] // one flight's context, passed through as is
    async fn fetch_manifest(
        &self,
        m: &Mirror,
        remote: &str,
        local: &RepoName,
        reference: &str,
        expect: Option<&Digest>,
        tag: Option<&str>,
        attempts: Attempts,
    ) -> Result<Digest, FlightError> {
        let f = m.up.get_manifest(remote, reference, attempts).await.map_err(|e| m.failed(e))?;
        self.store_fetched(local, f, expect, tag).await
    }

    /// Verify a manifest fetched upstream and store it by digest (and under `tag`) in
    /// one transaction, marked mirrored.
    pub(super) async fn store_fetched(
        &self,
        local: &RepoName,
        f: crate::upstream::FetchedManifest,
        expect: Option<&Digest>,
        tag: Option<&str>,
    ) -> Result<Digest, FlightError> {
        if f.bytes.len() as u64 > self.manifests.max_bytes() {
            return Err(FlightError::Invalid(format!(
                "manifest of {} bytes is over the limit",
                f.bytes.len()
            )));
        }
        let digest = Digest::of(&f.bytes);
        if let Some(e) = expect {
            if *e != digest {
                return Err(FlightError::Invalid(format!("asked for {e}, got bytes hashing to {digest}")));
            }
        }
        if let Some(h) = f.digest.as_deref() {
            if h != digest.as_str() {
                return Err(FlightError::Invalid(format!(
                    "Docker-Content-Digest {h} but bytes hash to {digest}"
                )));
            }
        }
        let p = parse(f.media_type.as_deref(), &f.bytes)?;
        let size = f.bytes.len() as u64;
        let (record, referrer) = p.record(&digest, size, Origin::Mirrored);
        self.meta
            .put_manifest(PutManifest {
                repo: local.as_str().to_owned(),
                digest: digest.clone(),
                record,
                body: f.bytes.to_vec(),
                blobs: vec![],
                manifests: vec![],
                tag: tag.map(str::to_owned),
                tag_checked: tag.map(|_| now()),
                referrer,
                check_refs: false,
                event: None,
            })
            .await
            .map_err(Error::from)?;
        Ok(digest)
    }

    /// GET/HEAD a blob wherever the name leads, as far as the entitlement rule
    /// (`Registry::entitled`) lets it: a digest stored here for another repository or
    /// upstream is served only once this name is entitled to it.
    pub async fn read_blob(
        self: &Arc<Self>,
        loc: &Located,
        digest: &Digest,
        head: bool,
    ) -> Result<BlobRead, Error> {
        match self.read_blob_held(loc, digest, head)? {
            Held::Here(read) => Ok(read),
            // Boxed: the upstream's part is many times the size of a hit's, and a hit
            // should not carry (and copy) it.
            Held::Elsewhere { confirmed } => {
                Box::pin(self.read_blob_elsewhere(loc, digest, head, confirmed)).await
            }
        }
    }

    /// A blob read as far as it goes without waiting on anything: what is linked here
    /// (the hit), or where the rest of the way starts.
    fn read_blob_held(&self, loc: &Located, digest: &Digest, head: bool) -> Result<Held, Error> {
        let ent = self.entitled(loc, digest, Content::Blob)?;
        let Some((m, _)) = &loc.mirror else {
            return match ent {
                Entitlement::Linked(r) => self.stored_blob(&r, digest, head).map(Held::Here),
                _ => Err(Error::BlobUnknown),
            };
        };
        let local = &loc.repo;
        if let Entitlement::Linked(r) = &ent {
            if r != local {
                return self.stored_blob(r, digest, head).map(Held::Here);
            }
        }
        self.cache.touch(digest);
        let confirmed = match ent {
            Entitlement::Linked(_) => match self.stored_blob(local, digest, head) {
                // Unlinked since (a DELETE, GC): ask again, as for any unlinked blob.
                Err(Error::BlobUnknown) => false,
                r => {
                    self.metrics.hit(&m.counters);
                    return r.map(Held::Here);
                }
            },
            Entitlement::Referenced => true,
            Entitlement::AskUpstream => false,
            Entitlement::Unknown => return Err(Error::BlobUnknown),
        };
        Ok(Held::Elsewhere { confirmed })
    }

    /// A blob linked into `repo`: its size, and its bytes unless `head`.
    fn stored_blob(&self, repo: &RepoName, digest: &Digest, head: bool) -> Result<BlobRead, Error> {
        let size = self.stored.size(repo, digest)?;
        let bytes = if head { None } else { Some(self.stored.mapped(digest, size)?) };
        Ok(BlobRead::Stored { size, bytes })
    }

    /// The rest of a mirrored blob read: stored for another repository (link it once
    /// entitled), else the upstream through the one fill for the digest.
    async fn read_blob_elsewhere(
        self: &Arc<Self>,
        loc: &Located,
        digest: &Digest,
        head: bool,
        mut confirmed: bool,
    ) -> Result<BlobRead, Error> {
        let stored = |repo: &RepoName| self.stored_blob(repo, digest, head);
        let Some((m, remote)) = &loc.mirror else {
            return Err(Error::BlobUnknown);
        };
        let local = &loc.repo;
        // Stored for another repository: link it here once entitled, no download.
        if self.stored.stored(digest)? {
            if !confirmed {
                if m.offline || !self.upstream_has_blob(m, remote, digest).await? {
                    return Err(Error::BlobUnknown);
                }
                confirmed = true;
            }
            if self.stored.link_entitled(local, digest).await? {
                self.metrics.hit(&m.counters);
                return stored(local);
            }
        }
        if m.offline {
            return Err(Error::BlobUnknown);
        }
        self.metrics.miss(&m.counters);
        m.check_up()?;
        let fill = match self.join_fill(m, remote, local, digest, confirmed) {
            Some(f) => f,
            None => {
                // Another repository's fill is in flight: only R's upstream vouches for R.
                if !self.upstream_has_blob(m, remote, digest).await? {
                    return Err(Error::BlobUnknown);
                }
                if self.stored.link_entitled(local, digest).await? {
                    return stored(local);
                }
                self.join_fill(m, remote, local, digest, true)
                    .ok_or_else(|| Error::Internal("fill join refused after confirmation".into()))?
            }
        };
        let mut rx = fill.clone();
        let st = rx
            .wait_for(|s| s.progress.total.is_some() || s.done.is_some())
            .await
            .map_err(|_| Error::Internal("blob fill ended without a result".into()))?
            .clone();
        let size = match (st.progress.total, fill_outcome(&st.done)) {
            (_, Some(Err(e))) => return Err(e.into_error(Error::BlobUnknown)),
            (Some(t), _) => t,
            // Committed before the size was published: it is stored now.
            (None, Some(Ok(()))) => return stored(local),
            (None, None) => return Err(Error::Internal("fill state without size".into())),
        };
        if head {
            return Ok(BlobRead::Stored { size, bytes: None });
        }
        Ok(BlobRead::Filling { size, body: Box::pin(fill_reader(fill)) })
    }

    /// Join the fill for `digest`, starting it if none is in flight. A fill started for
    /// another repository is joined only when `entitled` (`local`'s own entitlement is
    /// established); otherwise `None`: confirm upstream first. Nothing here touches the
    /// filesystem: the fill task creates its staging on the blocking pool.
    fn join_fill(
        self: &Arc<Self>,
        m: &Arc<Mirror>,
        remote: &str,
        local: &RepoName,
        digest: &Digest,
        entitled: bool,
    ) -> Option<FillWatch> {
        let (me, m2, r2, l2, d2) =
            (self.clone(), m.clone(), remote.to_owned(), local.clone(), digest.clone());
        let joined = self.mirrors.fills.join(
            digest.clone(),
            |p| entitled || p.repo == *local,
            || FillProgress {
                repo: local.clone(),
                reader: None,
                total: None,
                visible: 0,
                links: Arc::new(std::sync::Mutex::new(Some(Vec::new()))),
            },
            move |progress| async move { Box::pin(me.run_fill(m2, r2, l2, d2, progress)).await },
        );
        match joined {
            Joined::Leader(rx) => Some(rx),
            Joined::Refused => None,
            Joined::Follower(rx) => {
                self.metrics.follower(&m.counters);
                // Link the blob into this repository too once the fill commits: the fill
                // does it, unless it is already past that point.
                let links = rx.borrow().progress.links.clone();
                let mut list = links.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(l) = list.as_mut() {
                    if !l.contains(local) {
                        l.push(local.clone());
                    }
                    return Some(rx);
                }
                drop(list);
                let (me, repo, d) = (self.clone(), local.clone(), digest.clone());
                let mut wait = rx.clone();
                tokio::spawn(async move {
                    let committed = wait
                        .wait_for(|s| s.done.is_some())
                        .await
                        .is_ok_and(|st| matches!(fill_outcome(&st.done), Some(Ok(()))));
                    if committed {
                        let _ = me
                            .meta
                            .mount_blob(repo.as_str().to_owned(), d, None, None, Origin::Mirrored)
                            .await;
                    }
                });
                Some(rx)
            }
        }
    }

    /// The detached fill (the flight's work): create the staging area, download
    /// (resuming with `Range` after a break), verify, commit. Runs to the end whether or
    /// not any client is still reading. The flight publishes the result; if this task
    /// panics, the flight's guard wakes every reader with an error and frees the digest
    /// for a new fill, and the lease guard releases the fill lease.
    async fn run_fill(
        self: Arc<Self>,
        m: Arc<Mirror>,
        remote: String,
        local: RepoName,
        digest: Digest,
        progress: FillHandle,
    ) -> FillResult {
        // Queued behind the upstream's other fetches, until a slot or every client is gone.
        let _slot = m.slot(&progress).await?;
        let id = format!("{FILL_STAGING}{}", uuid::Uuid::new_v4().simple());
        let lease = LeaseKey::Fill { digest: digest.clone() };
        let rec = LeaseRecord { owner: id.clone(), expires: now() + 24 * 3600 };
        let _lease = match self.meta.hold_lease(lease, rec).await {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot take the fill lease");
                None
            }
        };
        let _staging = self.blobs.staging_cleanup(&id);
        let result = match self.blobs.create_fill(id).await {
            Ok((staging, reader)) => {
                progress.update(|p| p.reader = Some(reader));
                self.download(&m, &remote, &local, &digest, staging, &progress).await
            }
            Err(e) => Err(FlightError::Internal(format!("cannot create the fill's staging: {e}"))),
        };
        let links = progress.read(|p| p.links.clone());
        let followers =
            links.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().unwrap_or_default();
        if result.is_ok() {
            for repo in followers.into_iter().filter(|r| *r != local) {
                if let Err(e) = self
                    .meta
                    .mount_blob(repo.as_str().to_owned(), digest.clone(), None, None, Origin::Mirrored)
                    .await
                {
                    tracing::warn!(%repo, %digest, error = %e, "cannot link the filled blob");
                }
            }
        }
        match &result {
            Ok(()) => {
                // Enforce the cache cap before the fill reports done: when a client's
                // pull completes, the store is back under the cap.
                if let Err(e) = self.enforce_cap().await {
                    tracing::warn!(error = %e, "eviction failed");
                }
                progress.update(|s| s.visible = s.total.unwrap_or(s.visible));
            }
            Err(e) => {
                tracing::warn!(upstream = m.name(), %digest, error = %e, "blob fill failed; nothing cached");
            }
        }
        result
    }

    async fn download(
        &self,
        m: &Mirror,
        remote: &str,
        local: &RepoName,
        digest: &Digest,
        mut staging: crate::blob::Staging,
        progress: &FillHandle,
    ) -> Result<(), FlightError> {
        let mut resumes = 0;
        loop {
            let offset = staging.len();
            let stream = match m.up.get_blob(remote, digest, offset).await {
                Ok(s) => s,
                Err(e) => {
                    self.blobs.remove_staging_blocking(staging.id().to_owned()).await;
                    return Err(m.failed(e));
                }
            };
            let total = if stream.partial || offset == 0 {
                stream.remaining.map(|r| r + if stream.partial { offset } else { 0 })
            } else {
                stream.remaining
            };
            if let Some(t) = total {
                progress.update(|s| {
                    if s.total.is_none() {
                        s.total = Some(t);
                    }
                });
            }
            // An upstream that ignored our Range resends from 0: skip what we have.
            let skip = if stream.partial { 0 } else { offset };
            let (metrics, counters) = (self.metrics.clone(), m.counters.clone());
            let body: super::Body = Box::pin(skip_prefix(stream.body, skip).map(move |r| {
                if let Ok(b) = &r {
                    metrics.fetched(&counters, b.len() as u64);
                }
                r.map_err(io::Error::other)
            }));
            let body = min_rate(body, m.up.deadline(), m.up.limits().min_rate(MIN_RATE));
            let total_now = progress.read(|p| p.total);
            let tx2 = progress.clone();
            let reader = progress.read(|p| p.reader.clone());
            let on_write = move |written: u64, chunks: &[Bytes]| {
                // Readers that keep up take these chunks from memory, not the file.
                if let Some(r) = &reader {
                    let mut pos = written - chunks.iter().map(|c| c.len() as u64).sum::<u64>();
                    for c in chunks {
                        r.remember(pos, c.clone());
                        pos += c.len() as u64;
                    }
                }
                tx2.update(|s| {
                    // Hold back the last byte until the digest verifies.
                    let cap = total_now.map_or(written.saturating_sub(1), |t| t.saturating_sub(1));
                    s.visible = written.min(cap);
                });
            };
            let (st, outcome) = super::uploads::pump_with(staging, body, Some(Box::new(on_write))).await?;
            staging = st;
            let complete = total_now.is_none_or(|t| staging.len() >= t);
            match outcome {
                Ok(()) if complete => break,
                Ok(()) | Err(Error::BodyRead(_)) => {
                    resumes += 1;
                    if resumes > MAX_RESUMES {
                        self.blobs.remove_staging_blocking(staging.id().to_owned()).await;
                        return Err(FlightError::Upstream {
                            message: format!(
                                "upstream {} broke off the blob body {resumes} times; gave up at byte {}",
                                m.name(),
                                staging.len()
                            ),
                            retry_after: None,
                        });
                    }
                    tracing::warn!(upstream = m.name(), %digest, at = staging.len(), "upstream body broke; resuming");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(resumes))).await;
                }
                Err(e) => {
                    self.blobs.remove_staging_blocking(staging.id().to_owned()).await;
                    return Err(e.into());
                }
            }
        }
        self.uploads.commit(local, digest, staging, None, Origin::Mirrored).await.map_err(FlightError::from)
    }
}

/// Below this rate, sustained over one upstream `timeout` window, an attempt is broken
/// off (and resumed with a Range, up to `MAX_RESUMES` times): a slow-loris upstream that
/// trickles bytes would otherwise hold a fill, and every client waiting on it, for ever.
const MIN_RATE: u64 = 16 * 1024;

/// End `body` with an error when fewer than `floor` bytes per second (`MIN_RATE`, or
/// less under a `max_bytes_per_sec` budget) arrive over a window of `window`.
fn min_rate(body: super::Body, window: Duration, floor: u64) -> super::Body {
    let window = window.max(Duration::from_secs(1));
    let need = floor.saturating_mul(window.as_secs().max(1));
    let state = (body, tokio::time::Instant::now(), 0u64, false);
    Box::pin(futures_util::stream::unfold(state, move |(mut body, start, got, done)| async move {
        if done {
            return None;
        }
        let item = body.next().await?;
        let (start, got) = match &item {
            Ok(b) => (start, got + b.len() as u64),
            Err(_) => (start, got),
        };
        if start.elapsed() >= window {
            if got < need {
                let msg = format!(
                    "upstream sent {got} bytes in {}, under {floor} B/s",
                    humantime::format_duration(window)
                );
                return Some((Err(io::Error::new(io::ErrorKind::TimedOut, msg)), (body, start, got, true)));
            }
            return Some((item, (body, tokio::time::Instant::now(), 0, false)));
        }
        Some((item, (body, start, got, false)))
    }))
}

/// Drop the first `skip` bytes of a stream.
fn skip_prefix<S>(s: S, skip: u64) -> impl Stream<Item = Result<Bytes, UpstreamError>> + Send
where
    S: Stream<Item = Result<Bytes, UpstreamError>> + Send,
{
    let mut left = skip;
    s.filter_map(move |r| {
        let out = match r {
            Ok(mut b) if left > 0 => {
                let n = left.min(b.len() as u64);
                left -= n;
                let _ = b.split_to(usize::try_from(n).unwrap_or(0));
                if b.is_empty() {
                    None
                } else {
                    Some(Ok(b))
                }
            }
            other => Some(other),
        };
        std::future::ready(out)
    })
}

/// A reader of a fill: streams the staging file from offset 0 as it grows, ends when
/// the fill commits, fails (aborting the client's connection) when it fails.
fn fill_reader(rx: FillWatch) -> impl Stream<Item = io::Result<Bytes>> + Send {
    futures_util::stream::unfold((rx, 0u64, false), |(mut rx, pos, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let (p, outcome) = {
                let st = rx.borrow_and_update();
                (st.progress.clone(), fill_outcome(&st.done))
            };
            if let Some(Err(e)) = &outcome {
                let err = io::Error::other(format!("upstream fill failed: {e}"));
                return Some((Err(err), (rx, pos, true)));
            }
            let committed = matches!(outcome, Some(Ok(())));
            let limit = if committed { p.total.unwrap_or(p.visible) } else { p.visible };
            if pos < limit {
                let Some(reader) = p.reader else {
                    let err = io::Error::other("fill published bytes without a staging file");
                    return Some((Err(err), (rx, pos, true)));
                };
                // From memory while this reader keeps up with the fill; from the file
                // once it fell behind the fill's window.
                if let Some(b) = reader.recent_at(pos, limit) {
                    let n = b.len() as u64;
                    return Some((Ok(b), (rx, pos + n, false)));
                }
                // Behind the window of a committed fill: slices of the mapped file.
                if committed {
                    match reader.committed_at(pos, limit) {
                        Ok(Some(b)) => {
                            let n = b.len() as u64;
                            return Some((Ok(b), (rx, pos + n, false)));
                        }
                        Ok(None) => {}
                        Err(e) => return Some((Err(e), (rx, pos, true))),
                    }
                }
                let n = (limit - pos).min(READ_CHUNK);
                return match reader.read_at(pos, n).await {
                    Ok(b) => Some((Ok(b), (rx, pos + n, false))),
                    Err(e) => Some((Err(e), (rx, pos, true))),
                };
            }
            if committed {
                return None;
            }
            if rx.changed().await.is_err() {
                // The fill's flight is gone; its last state decides.
                let done = fill_outcome(&rx.borrow().done);
                if !matches!(done, Some(Ok(()))) {
                    return Some((
                        Err(io::Error::other("blob fill ended without a result")),
                        (rx, pos, true),
                    ));
                }
            }
        }
    })
}
