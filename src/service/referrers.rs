//! Referrers through the mirror: the upstream's referrers API, or the referrers tag
//! schema (`sha256-<hex>`, OCI distribution spec) where the upstream has no such API,
//! cached like a tag (`tag_ttl`, stale-if-error).
//!
//! The answer is stored as a mirrored index under the tag-schema name of the subject,
//! so it is linked in the mirrored repository: the referrers it lists become readable
//! there by the entitlement rule (referenced by a linked manifest) and fill on demand.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::mirror::FlightError;
use super::{Error, Located, Mirror, Registry};
use crate::digest::Digest;
use crate::manifest::OCI_INDEX;
use crate::meta::{model::now, Descriptor};
use crate::names::{Reference, RepoName, Tag};
use crate::upstream::{Attempts, FetchedManifest, UpstreamError};

/// The referrers tag schema's tag for `subject`: `<alg>-<hex>`.
pub(super) fn schema_tag(subject: &Digest) -> String {
    let s = subject.as_str();
    let (alg, hex) = s.split_once(':').unwrap_or(("sha256", s));
    let alg: String = alg.chars().take(32).collect();
    let hex: String = hex.chars().take(64).collect();
    format!("{alg}-{hex}")
}

/// What an upstream with neither a referrers API nor a tag-schema index answers: no
/// referrers. Stored like any answer, so it is cached for `tag_ttl` too.
fn empty_index() -> FetchedManifest {
    let body = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
    FetchedManifest { bytes: body.into(), media_type: Some(OCI_INDEX.to_owned()), digest: None }
}

#[derive(serde::Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

impl Registry {
    /// Referrers of `subject` wherever the name leads: those stored here and, for a
    /// mirrored name, those the upstream lists (cached like a tag). `artifact_type`
    /// filters both.
    pub async fn referrers_via(
        self: &Arc<Self>,
        loc: &Located,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, Error> {
        let mut all = self.manifests.referrers_at(loc, subject, artifact_type)?;
        let Some((m, remote)) = &loc.mirror else {
            return Ok(all);
        };
        let Some(listed) = self.mirrored_referrers(m, remote, &loc.repo, subject).await? else {
            return Ok(all);
        };
        for d in listed {
            if artifact_type.is_some_and(|t| d.artifact_type.as_deref() != Some(t)) {
                continue;
            }
            if !all.iter().any(|a| a.digest == d.digest) {
                all.push(d);
            }
        }
        Ok(all)
    }

    /// The upstream's list for `subject`, from the cache while fresh (or while the
    /// upstream fails, stale-if-error), else asked for once per flight.
    async fn mirrored_referrers(
        self: &Arc<Self>,
        m: &Arc<Mirror>,
        remote: &str,
        local: &RepoName,
        subject: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, Error> {
        let tag = schema_tag(subject);
        let cached = self.meta.tag(local.as_str(), &tag)?;
        let fresh = cached.as_ref().is_some_and(|r| {
            let checked = r.checked.unwrap_or(r.updated);
            m.offline || now().saturating_sub(checked) < m.tag_ttl.as_secs()
        });
        if fresh || m.offline {
            if cached.is_some() {
                self.metrics.hit(&m.counters);
            }
            return self.cached_listing(local, &tag);
        }
        self.metrics.miss(&m.counters);
        let stale_ok = m.stale_if_error && cached.is_some();
        if let Err(e) = m.check_up() {
            if stale_ok {
                self.metrics.stale_served.fetch_add(1, Relaxed);
                return self.cached_listing(local, &tag);
            }
            return Err(e);
        }
        let key = format!("r {} {remote} {subject}", m.name());
        let cached_digest = cached.as_ref().map(|r| r.digest.clone());
        let (me, m2, r2, l2, s2, t2) =
            (self.clone(), m.clone(), remote.to_owned(), local.clone(), subject.clone(), tag.clone());
        let (res, leader) = self
            .mirrors
            .manifest_flights
            .run_with(key, move |flight| async move {
                // One fetch slot for the whole refresh (the API, then the tag schema).
                let _slot = m2.slot(&flight).await?;
                me.refresh_referrers(&m2, &r2, &l2, &s2, &t2, cached_digest, stale_ok).await
            })
            .await;
        self.count_follower(m, leader);
        match res.map_err(|l| Error::Internal(format!("referrers fetch: {l}")))? {
            Ok(_) => self.cached_listing(local, &tag),
            Err(e) if e.transient() && stale_ok => {
                tracing::warn!(upstream = m.name(), repo = %local, %subject, error = %e, "upstream failed; serving the cached referrers");
                self.metrics.stale_served.fetch_add(1, Relaxed);
                self.cached_listing(local, &tag)
            }
            Err(e) => Err(e.into_error(Error::ManifestUnknown)),
        }
    }

    /// Ask the upstream: its referrers API; on 404 the tag schema (a HEAD when cached,
    /// a GET only when it changed); neither: no referrers. Stored under `tag`.
    #[allow(clippy::too_many_arguments)] // one flight's context, passed through as is
    async fn refresh_referrers(
        &self,
        m: &Mirror,
        remote: &str,
        local: &RepoName,
        subject: &Digest,
        tag: &str,
        cached: Option<Digest>,
        stale_ok: bool,
    ) -> Result<Digest, FlightError> {
        let attempts = if stale_ok { Attempts::StaleOk } else { Attempts::Retry };
        // Not remembered across requests: a 404 may be about this repository only.
        match m.up.get_referrers(remote, subject, attempts).await {
            Ok(f) => return self.store_fetched(local, f, None, Some(tag)).await,
            Err(UpstreamError::NotFound) => {}
            Err(e) => return Err(m.failed(e)),
        }
        match self.revalidate_tag(m, remote, local, tag, cached, stale_ok).await {
            Err(FlightError::NotFound) => self.store_fetched(local, empty_index(), None, Some(tag)).await,
            r => r,
        }
    }

    /// The stored answer under `tag`, as descriptors (`None`: none stored).
    fn cached_listing(&self, local: &RepoName, tag: &str) -> Result<Option<Vec<Descriptor>>, Error> {
        let reference = Reference::Tag(Tag::parse(tag)?);
        let out = match self.manifests.get(local, &reference, true) {
            Ok(out) => out,
            Err(Error::ManifestUnknown) => return Ok(None),
            Err(e) => return Err(e),
        };
        let body = out.body.unwrap_or_default();
        let index: Index = serde_json::from_slice(&body).map_err(|e| Error::Upstream {
            message: format!("upstream referrers index: {e}"),
            retry_after: None,
        })?;
        Ok(Some(index.manifests))
    }
}
