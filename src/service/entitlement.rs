//! The entitlement rule: knowing a digest never grants access to its content.
//!
//! Blobs and manifests are stored once, by digest, whichever repository or upstream
//! brought them; what a repository may serve is decided by its links and, for mirrored
//! repositories, by what its own upstream vouches for. The one rule is
//! [`Registry::entitled`]; the read paths (`mirror.rs`) act on its answer.

use super::{Error, Located, Mirror, Registry};
use crate::digest::Digest;
use crate::names::RepoName;
use crate::upstream::UpstreamError;

/// What is being read by digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Content {
    Blob,
    Manifest,
}

/// Whether (and how) a name may serve content it was asked for by digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entitlement {
    /// This repository links it: serve it from there.
    Linked(RepoName),
    /// Mirrored: a manifest linked in the mirrored repository references it (layers
    /// shared between images). Link it without asking the upstream; fetch it from the
    /// upstream only when it is not stored here.
    Referenced,
    /// Mirrored, and nothing here says the repository has it: its own upstream must
    /// confirm — one HEAD before linking content stored here already, or the fill (the
    /// manifest fetch) from that upstream, which is such a confirmation.
    AskUpstream,
    /// Not readable through this name: a hosted repository that does not link it, or an
    /// offline mirror that cannot ask.
    Unknown,
}

impl Registry {
    /// The entitlement rule (DESIGN.md, "Entitlement"). Content is readable through
    /// repository R when
    ///  (a) R links it; or
    ///  (b) R is mirrored and a manifest linked in R references it (config, layers, or
    ///      the children of an index linked in R); or
    ///  (c) R is mirrored and R's upstream confirms R has it.
    ///
    /// Never on a digest alone from hosted content or another upstream's. A bare name
    /// under a default upstream (`hosted_first`) is the hosted repository by (a) only,
    /// then the mirrored name by the whole rule — so a push of layers stored here for
    /// other repositories sees 404 and mounts or uploads.
    pub(super) fn entitled(
        &self,
        loc: &Located,
        digest: &Digest,
        what: Content,
    ) -> Result<Entitlement, Error> {
        let links = |repo: &RepoName| -> Result<bool, Error> {
            Ok(match what {
                Content::Blob => self.meta.repo_blob_size(repo.as_str(), digest)?.is_some(),
                Content::Manifest => self.meta.repo_manifest(repo.as_str(), digest, false)?.is_some(),
            })
        };
        if let Some(h) = &loc.hosted_first {
            if links(h)? {
                return Ok(Entitlement::Linked(h.clone()));
            }
        }
        if links(&loc.repo)? {
            return Ok(Entitlement::Linked(loc.repo.clone()));
        }
        let Some((m, _)) = &loc.mirror else {
            return Ok(Entitlement::Unknown);
        };
        if self.meta.references(loc.repo.as_str(), digest)? {
            return Ok(Entitlement::Referenced);
        }
        if m.offline {
            return Ok(Entitlement::Unknown);
        }
        Ok(Entitlement::AskUpstream)
    }

    /// Case (c) for a blob: one HEAD of `remote`'s blob upstream. `Ok(false)` when the
    /// upstream does not have it there.
    pub(super) async fn upstream_has_blob(
        &self,
        m: &Mirror,
        remote: &str,
        digest: &Digest,
    ) -> Result<bool, Error> {
        match m.up.head_blob(remote, digest).await {
            Ok(_) => Ok(true),
            Err(UpstreamError::NotFound) => Ok(false),
            // The upstream's name, never its URL (which transport errors carry).
            Err(e) => {
                tracing::warn!(upstream = m.name(), %digest, error = %e, "could not confirm a blob upstream");
                Err(m.failed(e).into_error(Error::BlobUnknown))
            }
        }
    }
}
