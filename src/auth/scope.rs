//! Token scopes, as the Distribution token specification spells them:
//! `repository:NAME:pull,push` (actions `pull`, `push`, `delete`, `*` for all of them) and
//! `registry:catalog:*`. A client may send several `scope` parameters, and one parameter may
//! hold several scopes separated by spaces.
//!
//! [`Grants`] is what a token carries: per repository name (as the client names it in the
//! URL), the actions granted, and whether the catalog may be listed. Its text form is the
//! canonical scope list (sorted, one entry per repository), which is also what goes,
//! base64url-encoded and HMAC-signed, into the token.
//!
//! Scopes this server does not know (another resource type, an invalid repository name,
//! an unknown action) grant nothing and are otherwise ignored, as Distribution's token
//! server does with actions it does not know.

use std::collections::BTreeMap;

use super::rules::AccessSet;
use super::Access;
use crate::names::RepoName;

/// Longest text form a token carries; longer requests are cut to the first entries that
/// fit (a client asking for that many repositories at once is not a registry client).
const MAX_TEXT: usize = 4096;

/// What a Bearer token grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    repos: BTreeMap<String, AccessSet>,
    catalog: bool,
}

const ALL: [Access; 3] = [Access::Pull, Access::Push, Access::Delete];

impl Grants {
    /// Parse `scope` parameter values (each may hold several space-separated scopes).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Grants {
        let mut g = Grants::default();
        for scope in values.into_iter().flat_map(str::split_whitespace) {
            let Some((kind, rest)) = scope.split_once(':') else { continue };
            let Some((name, actions)) = rest.rsplit_once(':') else { continue };
            match kind {
                "registry" if name == "catalog" && actions.split(',').any(|a| a == "*") => {
                    g.catalog = true;
                }
                "repository" => {
                    let Ok(repo) = RepoName::parse(name) else { continue };
                    let mut set = AccessSet::default();
                    for a in actions.split(',') {
                        match a {
                            "pull" => set = set.with(Access::Pull),
                            "push" => set = set.with(Access::Push),
                            "delete" => set = set.with(Access::Delete),
                            "*" => set = ALL.iter().fold(set, |s, a| s.with(*a)),
                            _ => {}
                        }
                    }
                    let e = g.repos.entry(repo.as_str().to_owned()).or_default();
                    *e = ALL.iter().filter(|a| set.contains(**a)).fold(*e, |s, a| s.with(*a));
                }
                _ => {}
            }
        }
        g
    }

    /// Keep only what `allowed` says yes to (the intersection of what was asked and what
    /// the rules give the principal); `None` is the catalog.
    pub fn restrict(mut self, mut allowed: impl FnMut(Option<&RepoName>, Access) -> bool) -> Grants {
        self.catalog = self.catalog && allowed(None, Access::Pull);
        self.repos = std::mem::take(&mut self.repos)
            .into_iter()
            .filter_map(|(name, set)| {
                let repo = RepoName::parse(&name).ok()?;
                let kept = ALL
                    .iter()
                    .filter(|a| set.contains(**a) && allowed(Some(&repo), **a))
                    .fold(AccessSet::default(), |s, a| s.with(*a));
                (kept != AccessSet::default()).then_some((name, kept))
            })
            .collect();
        self
    }

    /// Does this grant `access` on `repo` (the name as the request spells it)?
    pub fn allows(&self, repo: &RepoName, access: Access) -> bool {
        self.repos.get(repo.as_str()).is_some_and(|s| s.contains(access))
    }

    /// Does this grant listing the catalog?
    pub fn catalog(&self) -> bool {
        self.catalog
    }

    /// Nothing granted at all.
    pub fn is_empty(&self) -> bool {
        self.repos.is_empty() && !self.catalog
    }

    /// The canonical scope list: `registry:catalog:* repository:a:pull,push …`, at most
    /// [`MAX_TEXT`] bytes (whole entries only).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let catalog = self.catalog.then(|| "registry:catalog:*".to_owned());
        let repos = self.repos.iter().map(|(name, set)| {
            let actions: Vec<String> =
                ALL.iter().filter(|a| set.contains(**a)).map(ToString::to_string).collect();
            format!("repository:{name}:{}", actions.join(","))
        });
        for entry in catalog.into_iter().chain(repos) {
            if out.len() + entry.len() + 1 > MAX_TEXT {
                break;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&entry);
        }
        out
    }
}

/// The `scope` a request for `access` on `name` needs, as a 401 challenge names it:
/// `repository:NAME:pull`, `repository:NAME:pull,push` (a push reads back what exists) or
/// `repository:NAME:delete`.
pub(crate) fn repository_scope(name: &RepoName, access: Access) -> String {
    let actions = match access {
        Access::Pull => "pull",
        Access::Push => "pull,push",
        Access::Delete => "delete",
    };
    format!("repository:{name}:{actions}")
}

/// The scope of the catalog.
pub(crate) const CATALOG_SCOPE: &str = "registry:catalog:*";
