//! `config/auth.rs`: the `[auth]` section — its types and the checks that need no
//! file (rules compile, options consistent). `auth/` imports these; nothing here
//! imports `auth/`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Whether clients without credentials may pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Anonymous clients may pull every repository (and list the catalog).
    #[default]
    Pull,
    /// Anonymous clients may do only what a rule grants `"anonymous"`.
    None,
}

/// What a request wants to do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// GET/HEAD of manifests, blobs, tags, referrers.
    Pull,
    /// Uploads and manifest PUT.
    Push,
    /// DELETE of manifests, tags, blobs.
    Delete,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Pull => "pull",
            Access::Push => "push",
            Access::Delete => "delete",
        })
    }
}

/// One `[[auth.rules]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A repository-name pattern: `library/nginx`, `team/*`, `team/**`, `**`.
    pub repos: String,
    /// User names, `"*"` (any authenticated user) or `"anonymous"`.
    pub users: Vec<String>,
    /// Any of `"pull"`, `"push"`, `"delete"`.
    pub access: Vec<Access>,
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The htpasswd file (bcrypt entries, as `htpasswd -B` writes). Without it, auth is
    /// off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<PathBuf>,
    /// `"pull"` or `"none"`.
    pub anonymous: Anonymous,
    /// The realm named in the `Basic` challenge.
    pub realm: String,
    /// Per-repository rules; when there are none, every user may do everything.
    pub rules: Vec<Rule>,
    /// How long a verified password is remembered ("0s": always run bcrypt).
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Challenge with `Bearer` and issue tokens at `/token` (Basic still works).
    pub token: bool,
    /// How long an issued token is valid.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// The token endpoint's URL as clients reach it (e.g. behind a proxy); by default
    /// it is built from the request's scheme and `Host`: `http://HOST/token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_realm: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: None,
            anonymous: Anonymous::Pull,
            realm: "wharfie".into(),
            rules: Vec::new(),
            cache_ttl: Duration::from_secs(60),
            token: false,
            token_ttl: Duration::from_secs(300),
            token_realm: None,
        }
    }
}

/// A bad `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    /// A rule (1-based, in file order) is invalid.
    #[error("[auth] rule {number} (repos = {repos:?}): {reason}")]
    Rule { number: usize, repos: String, reason: String },
    /// An inconsistent `[auth]` section.
    #[error("[auth]: {0}")]
    Config(String),
}

/// The `users` entry that matches every authenticated user.
pub(crate) const ANY_USER: &str = "*";
/// The `users` entry that matches the anonymous principal.
pub(crate) const ANONYMOUS: &str = "anonymous";

/// One component of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// `**`: whole components.
    Any,
    /// A component, possibly with `*` wildcards.
    Glob(String),
}

/// A compiled repository-name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segs: Vec<Seg>,
}

impl Pattern {
    /// Compile `s`, or say what is wrong with it.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        if s.is_empty() {
            return Err("the pattern is empty".into());
        }
        let mut segs = Vec::new();
        for comp in s.split('/') {
            if comp.is_empty() {
                return Err(format!("pattern {s:?} has an empty path component"));
            }
            if comp == "**" {
                segs.push(Seg::Any);
                continue;
            }
            if comp.contains("**") {
                return Err(format!(
                    "pattern {s:?}: `**` must be a whole path component (like `team/**`); \
                     use `*` to match within a component"
                ));
            }
            if let Some(bad) = comp.chars().find(|&c| {
                !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '*'))
            }) {
                return Err(format!(
                    "pattern {s:?}: character {bad:?} never occurs in a repository name \
                     (lowercase letters, digits, `.`, `_`, `-`, `/`; `*` and `**` are wildcards)"
                ));
            }
            segs.push(Seg::Glob(comp.to_string()));
        }
        Ok(Pattern { segs })
    }

    /// Does the repository name `name` match?
    pub fn matches(&self, name: &str) -> bool {
        let comps: Vec<&str> = name.split('/').collect();
        let (p, n) = (self.segs.len(), comps.len());
        // dp[i][j]: segs[i..] matches comps[j..]. O(p·n) whatever the number of `**`.
        let mut next = vec![false; n + 1];
        next[n] = true;
        for i in (0..p).rev() {
            let mut cur = vec![false; n + 1];
            let trailing = i + 1 == p;
            for j in (0..=n).rev() {
                cur[j] = match &self.segs[i] {
                    // A trailing `**` takes one or more components.
                    Seg::Any if trailing => j < n,
                    // Elsewhere zero (skip it) or one more (stay on it).
                    Seg::Any => next[j] || (j < n && cur[j + 1]),
                    Seg::Glob(g) => j < n && glob_component(g.as_bytes(), comps[j].as_bytes()) && next[j + 1],
                };
            }
            next = cur;
        }
        next[0]
    }
}

/// `*`-only wildcard match within one component (the classic backtracking scan: linear
/// in practice, O(|pat|·|s|) at worst).
fn glob_component(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if p < pat.len() && pat[p] == s[i] {
            p += 1;
            i += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Check rule `i` (0-based) and return its compiled pattern; errors name the rule
/// (1-based) and its pattern.
pub(crate) fn check_rule(i: usize, r: &Rule) -> Result<Pattern, AuthConfigError> {
    let bad = |reason: String| AuthConfigError::Rule { number: i + 1, repos: r.repos.clone(), reason };
    let pattern = Pattern::parse(&r.repos).map_err(bad)?;
    if r.users.is_empty() {
        return Err(bad(format!(
            "users is empty; list user names, {ANY_USER:?} (any authenticated user) or {ANONYMOUS:?}"
        )));
    }
    if r.access.is_empty() {
        return Err(bad("access is empty; list some of \"pull\", \"push\", \"delete\"".into()));
    }
    for u in &r.users {
        match u.as_str() {
            ANY_USER | ANONYMOUS => {}
            "" => return Err(bad("an empty user name".into())),
            name if name.contains(':') || name.trim() != name => {
                return Err(bad(format!("user name {name:?} cannot occur in an htpasswd file")))
            }
            _ => {}
        }
    }
    Ok(pattern)
}

/// Check an `[auth]` section without reading the htpasswd file: the rules compile, and
/// rules or `anonymous = "none"` come with an htpasswd file.
fn check(cfg: &AuthConfig) -> Result<(), AuthConfigError> {
    for (i, r) in cfg.rules.iter().enumerate() {
        check_rule(i, r)?;
    }
    if cfg.htpasswd.is_none() {
        if !cfg.rules.is_empty() {
            return Err(AuthConfigError::Config(
                "rules need an htpasswd file (set htpasswd = \"/path\"); without one the registry \
                 is open to everyone"
                    .into(),
            ));
        }
        if cfg.anonymous == Anonymous::None {
            return Err(AuthConfigError::Config(
                "anonymous = \"none\" needs an htpasswd file (set htpasswd = \"/path\"); without one \
                 the registry is open to everyone"
                    .into(),
            ));
        }
    }
    if cfg.realm.chars().any(char::is_control) {
        return Err(AuthConfigError::Config("realm must not contain control characters".into()));
    }
    if cfg.token {
        if cfg.htpasswd.is_none() {
            return Err(AuthConfigError::Config(
                "token = true needs an htpasswd file (set htpasswd = \"/path\")".into(),
            ));
        }
        if cfg.token_ttl.is_zero() {
            return Err(AuthConfigError::Config("token_ttl must be longer than 0s".into()));
        }
    }
    if let Some(r) = &cfg.token_realm {
        let ok = (r.starts_with("http://") || r.starts_with("https://"))
            && !r.chars().any(|c| c.is_control() || c == '"' || c.is_whitespace());
        if !ok {
            return Err(AuthConfigError::Config(format!(
                "token_realm = {r:?} must be an http:// or https:// URL (no quotes or spaces)"
            )));
        }
    }
    Ok(())
}

impl AuthConfig {
    /// Check this section as `auth::Authenticator::new` would, without reading the htpasswd
    /// file (for configuration loading; the file is read at startup).
    pub fn check(&self) -> Result<(), AuthConfigError> {
        check(self)
    }
}
