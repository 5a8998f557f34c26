//! Warm lists: images an upstream's `warm` names, kept fresh in the background.
//!
//! A round revalidates each tag with one HEAD (a GET only when the digest changed), then
//! walks what the tag names — every platform of an index, or the `warm_platforms` —
//! through the ordinary read paths: content already here costs nothing upstream, the
//! rest fills as a pull would (one flight per key, entitlement, commit protocol).

use std::sync::Arc;

use futures_util::StreamExt;

use super::mirror::BlobRead;
use super::{parse_manifest, Error, Located, Mirror, Registry};
use crate::digest::Digest;
use crate::manifest::{is_index, Manifest};
use crate::names::{Reference, RepoName, Tag};

/// What warming one image did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmOutcome {
    /// The digest the tag names.
    pub digest: Option<Digest>,
    /// Manifests (the tag's and its children) already here, and fetched now.
    pub manifests_cached: usize,
    pub manifests_fetched: usize,
    /// Blobs (configs, layers) already here, and fetched now, with their bytes.
    pub blobs_cached: usize,
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
}

impl Registry {
    /// One round over `upstream`'s warm list. Failures are logged per image; a round
    /// never stops at one.
    pub async fn warm_round(self: &Arc<Self>, upstream: &str) {
        let Some(m) = self.mirrors.list().iter().find(|m| m.name() == upstream).cloned() else {
            return;
        };
        if m.offline || m.warm.is_empty() {
            return;
        }
        for (repo, tag) in m.warm.clone() {
            match self.warm_image(&m, &repo, &tag, &m.warm_platforms).await {
                Ok(o) => tracing::debug!(upstream = m.name(), %repo, %tag, ?o, "warm"),
                Err(e) => {
                    tracing::warn!(upstream = m.name(), %repo, %tag, error = %e, "cannot keep a warm image fresh");
                }
            }
        }
    }

    /// Where `repo` (the upstream's name) of `m` is stored here.
    fn warm_location(&self, m: &Arc<Mirror>, repo: &str) -> Result<Located, Error> {
        let name = RepoName::parse(&format!("{}/{repo}", m.name()))?;
        self.mirrors.locate(&name, None)
    }

    /// Revalidate `repo:tag` of `m` now (one HEAD when cached, a GET when new or
    /// changed) and fill what it names: the platforms in `platforms` of an index (all
    /// when empty), each image's config and layers.
    pub async fn warm_image(
        self: &Arc<Self>,
        m: &Arc<Mirror>,
        repo: &str,
        tag: &str,
        platforms: &[String],
    ) -> Result<WarmOutcome, Error> {
        let loc = self.warm_location(m, repo)?;
        let Some((_, remote)) = &loc.mirror else {
            return Err(Error::Internal(format!("{repo} does not lead to upstream {}", m.name())));
        };
        let mut out = WarmOutcome::default();
        let t = Tag::parse(tag)?;
        let cached = self.meta.tag(loc.repo.as_str(), tag)?;
        let digest = match cached {
            Some(rec) => {
                m.check_up()?;
                let key = format!("t {} {remote} {tag}", m.name());
                let (me, m2, r2, l2, t2, cd) = (
                    self.clone(),
                    m.clone(),
                    remote.clone(),
                    loc.repo.clone(),
                    tag.to_owned(),
                    rec.digest.clone(),
                );
                let (res, leader) = self
                    .mirrors
                    .manifest_flights
                    .run_with(key, move |flight| async move {
                        // Queued with the pulls' fetches, as `read_manifest`'s are.
                        let _slot = m2.slot(&flight).await?;
                        me.revalidate_tag(&m2, &r2, &l2, &t2, Some(cd), m2.stale_if_error).await
                    })
                    .await;
                self.count_follower(m, leader);
                let d = res
                    .map_err(|l| Error::Internal(format!("warm revalidation: {l}")))?
                    .map_err(|e| e.into_error(Error::ManifestUnknown))?;
                if d == rec.digest {
                    out.manifests_cached += 1;
                } else {
                    out.manifests_fetched += 1;
                }
                d
            }
            None => {
                let got = self.read_manifest(&loc, &Reference::Tag(t), false).await?;
                out.manifests_fetched += 1;
                got.digest
            }
        };
        out.digest = Some(digest.clone());
        self.warm_manifest(&loc, &digest, platforms, 0, &mut out).await?;
        Ok(out)
    }

    /// Fill what the manifest `digest` (stored in `loc`) names.
    async fn warm_manifest(
        self: &Arc<Self>,
        loc: &Located,
        digest: &Digest,
        platforms: &[String],
        depth: u32,
        out: &mut WarmOutcome,
    ) -> Result<(), Error> {
        let got = self.read_manifest(loc, &Reference::Digest(digest.clone()), true).await?;
        let body = got.body.unwrap_or_default();
        if is_index(&got.media_type) {
            if depth > 0 {
                return Ok(()); // an index of indexes: one level is what clients pull
            }
            let index = Manifest::from_slice(&body)
                .map_err(|e| Error::ManifestInvalid(format!("warm index {digest}: {e}")))?;
            for c in index.manifests.unwrap_or_default() {
                let wanted = platforms.is_empty() || platforms.iter().any(|w| c.platform_matches(w));
                let Ok(d) = c.digest() else { continue };
                if !wanted {
                    continue;
                }
                if self.meta.repo_manifest(loc.repo.as_str(), &d, false)?.is_some() {
                    out.manifests_cached += 1;
                } else {
                    out.manifests_fetched += 1;
                }
                Box::pin(self.warm_manifest(loc, &d, platforms, depth + 1, out)).await?;
            }
            return Ok(());
        }
        let parsed = parse_manifest(Some(&got.media_type), &body)?;
        for b in &parsed.blobs {
            match self.read_blob(loc, b, false).await? {
                BlobRead::Stored { .. } => out.blobs_cached += 1,
                BlobRead::Filling { mut body, .. } => {
                    // Reading to the end is waiting for the fill's commit.
                    while let Some(chunk) = body.next().await {
                        let chunk = chunk.map_err(|e| Error::Upstream {
                            message: format!("warm fill of {b}: {e}"),
                            retry_after: None,
                        })?;
                        out.bytes_fetched += chunk.len() as u64;
                    }
                    out.blobs_fetched += 1;
                }
            }
        }
        Ok(())
    }
}
