//! Tags list, catalog and referrers.

use super::{Error, Registry};
use crate::digest::Digest;
use crate::meta::{Descriptor, RepoFilter};
use crate::names::RepoName;

/// Page size when the client gives no `n`, and the largest page served (a larger `n`
/// gets this many and a `Link` to the rest, as the spec allows).
pub const DEFAULT_PAGE: usize = 10_000;

impl Registry {
    /// Sorted tags after `last`, at most `n`; the flag says whether more remain.
    pub fn tags(
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
    pub fn catalog(
        &self,
        last: Option<&str>,
        n: Option<usize>,
        keep: Option<&RepoFilter>,
    ) -> Result<(Vec<String>, bool), Error> {
        Ok(self.meta.catalog(last, n.unwrap_or(DEFAULT_PAGE).min(DEFAULT_PAGE), keep)?)
    }

    /// Manifests in `repo` whose subject is `subject`, optionally only those of
    /// `artifact_type`.
    pub fn referrers(
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
}
