//! Read-only views for the operator's web page (`crate::web`): no writes, no upstream
//! calls; each is bounded (see `meta::overview`).

use std::sync::Arc;

use super::{Error, Mirror, Registry};
use crate::meta::{RepoSummary, TagRow};
use crate::names::RepoName;

impl Registry {
    /// The configured upstreams, in configuration order.
    pub fn upstreams(&self) -> &[Arc<Mirror>] {
        self.mirrors.list()
    }

    /// The cap on mirrored blob bytes (0 = none).
    pub fn cache_max_bytes(&self) -> u64 {
        self.opts.cache_max_bytes
    }

    /// The upstream a stored repository is mirrored from (its first component names a
    /// configured upstream), or `None` for a hosted one.
    pub fn mirrored_from(&self, repo: &str) -> Option<&Arc<Mirror>> {
        let (first, _) = repo.split_once('/')?;
        self.mirrors.list().iter().find(|m| m.name() == first)
    }

    /// Tag count and bytes of `repo`.
    pub fn repo_summary(&self, repo: &RepoName) -> Result<RepoSummary, Error> {
        Ok(self.meta.repo_summary(repo.as_str())?)
    }

    /// A page of `repo`'s tags with what they point at.
    pub fn tag_rows(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<TagRow>, bool), Error> {
        Ok(self.meta.tag_rows(repo.as_str(), last, n)?)
    }
}
