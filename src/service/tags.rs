//! Tags list, catalog and referrers (part of [`Manifests`]), and their hosted-first
//! fallback for bare names under a default upstream.

use super::manifests::Manifests;
use super::{Error, Located};
use crate::digest::Digest;
use crate::meta::{Descriptor, RepoFilter};
use crate::names::RepoName;

/// Page size when the client gives no `n`, and the largest page served (a larger `n`
/// gets this many and a `Link` to the rest, as the spec allows).
pub const DEFAULT_PAGE: usize = 10_000;

impl Manifests {
    /// Sorted tags after `last`, at most `n`; the flag says whether more remain.
    pub(super) fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<(Vec<String>, bool), Error> {
        self.meta
            .tags(repo.as_str(), last, n.unwrap_or(DEFAULT_PAGE).min(DEFAULT_PAGE))?
            .ok_or_else(|| Error::NameUnknown(repo.to_string()))
    }

    /// Sorted repository names after `last`, at most `n`.
    /// A page of repository names, only those `keep` accepts when given (pages are
    /// counted after filtering).
    pub(super) fn catalog(
        &self,
        last: Option<&str>,
        n: Option<usize>,
        keep: Option<&RepoFilter>,
    ) -> Result<(Vec<String>, bool), Error> {
        Ok(self.meta.catalog(last, n.unwrap_or(DEFAULT_PAGE).min(DEFAULT_PAGE), keep)?)
    }

    /// Manifests in `repo` whose subject is `subject`, optionally only those of
    /// `artifact_type`.
    pub(super) fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, Error> {
        let mut all = self.meta.referrers(repo.as_str(), subject)?;
        if let Some(t) = artifact_type {
            all.retain(|d| d.artifact_type.as_deref() == Some(t));
        }
        Ok(all)
    }

    /// Tags wherever the name leads: a bare name under a default upstream lists the
    /// hosted repository when it exists, else the mirrored one. Returns the name
    /// listed with the page.
    pub(super) fn tags_at(
        &self,
        loc: &Located,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<(RepoName, Vec<String>, bool), Error> {
        if let Some(h) = &loc.hosted_first {
            if let Ok((tags, more)) = self.tags(h, last, n) {
                return Ok((h.clone(), tags, more));
            }
        }
        let (tags, more) = self.tags(&loc.repo, last, n)?;
        Ok((loc.repo.clone(), tags, more))
    }

    /// Referrers wherever the name leads: those of the mirrored repository and, for a
    /// bare name under a default upstream, of the hosted one too.
    pub(super) fn referrers_at(
        &self,
        loc: &Located,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, Error> {
        let mut all = self.referrers(&loc.repo, subject, artifact_type)?;
        if let Some(h) = &loc.hosted_first {
            all.extend(self.referrers(h, subject, artifact_type)?);
        }
        Ok(all)
    }
}
