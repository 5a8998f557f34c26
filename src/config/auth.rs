//! `config/auth.rs`: the `[auth]` section as written ([`AuthConfig`]) and resolved
//! ([`AuthSettings`]): the rules compiled ([`CompiledRule`]), the options checked for
//! consistency. Nothing here reads the htpasswd file: the authenticator reads it at
//! startup and again on SIGHUP. `auth/` imports these; nothing here imports `auth/`.

use std::collections::HashSet;
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

/// A set of [`Access`] kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AccessSet(u8);

impl AccessSet {
    fn bit(a: Access) -> u8 {
        match a {
            Access::Pull => 1,
            Access::Push => 2,
            Access::Delete => 4,
        }
    }

    pub(crate) fn with(self, a: Access) -> AccessSet {
        AccessSet(self.0 | Self::bit(a))
    }

    pub(crate) fn union(self, other: AccessSet) -> AccessSet {
        AccessSet(self.0 | other.0)
    }

    pub(crate) fn contains(self, a: Access) -> bool {
        self.0 & Self::bit(a) != 0
    }
}

/// A [`Rule`], compiled: its pattern parsed, its users sorted into the two wildcards
/// and a set of names, its access a bit set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    pattern: Pattern,
    any_user: bool,
    anonymous: bool,
    users: HashSet<String>,
    access: AccessSet,
}

impl CompiledRule {
    /// What this rule grants `user` (`None`: the anonymous principal) on the repository
    /// `repo`: its access when it names the user and its pattern matches, else nothing.
    pub(crate) fn grants(&self, user: Option<&str>, repo: &str) -> AccessSet {
        let names = match user {
            None => self.anonymous,
            Some(u) => self.any_user || self.users.contains(u),
        };
        if names && self.pattern.matches(repo) {
            self.access
        } else {
            AccessSet::default()
        }
    }

    /// The user names this rule lists explicitly (for load-time warnings).
    pub(crate) fn named_users(&self) -> impl Iterator<Item = &str> {
        self.users.iter().map(String::as_str)
    }
}

/// Check rule `i` (0-based) and compile it; errors name the rule (1-based) and its
/// pattern.
fn compile_rule(i: usize, r: &Rule) -> Result<CompiledRule, AuthConfigError> {
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
    let (mut any_user, mut anonymous, mut users) = (false, false, HashSet::new());
    for u in &r.users {
        match u.as_str() {
            ANY_USER => any_user = true,
            ANONYMOUS => anonymous = true,
            "" => return Err(bad("an empty user name".into())),
            name if name.contains(':') || name.trim() != name => {
                return Err(bad(format!("user name {name:?} cannot occur in an htpasswd file")))
            }
            name => {
                users.insert(name.to_string());
            }
        }
    }
    let access = r.access.iter().fold(AccessSet::default(), |s, &a| s.with(a));
    Ok(CompiledRule { pattern, any_user, anonymous, users, access })
}

/// Compile every rule, in file order.
pub(crate) fn compile(rules: &[Rule]) -> Result<Vec<CompiledRule>, AuthConfigError> {
    rules.iter().enumerate().map(|(i, r)| compile_rule(i, r)).collect()
}

/// Check the options of an `[auth]` section (its rules compile apart): rules or
/// `anonymous = "none"` come with an htpasswd file, and so on.
fn check_options(cfg: &AuthConfig) -> Result<(), AuthConfigError> {
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

/// `[auth]`, resolved: what the authenticator is built from. The htpasswd path is made
/// absolute by the loader; the file itself is the authenticator's to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    /// Without it, auth is off.
    pub htpasswd: Option<PathBuf>,
    pub anonymous: Anonymous,
    /// The realm named in the `Basic` challenge (and the `service` of a `Bearer` one).
    pub realm: String,
    /// In file order; when there are none, every user may do everything.
    pub rules: Vec<CompiledRule>,
    /// How long a verified password is remembered (zero: always run bcrypt).
    pub cache_ttl: Duration,
    pub token: bool,
    pub token_ttl: Duration,
    pub token_realm: Option<String>,
}

impl AuthSettings {
    /// Auth off: what the default `[auth]` section resolves to.
    pub fn off() -> Self {
        AuthSettings::with_rules(&AuthConfig::default(), Vec::new())
    }

    fn with_rules(cfg: &AuthConfig, rules: Vec<CompiledRule>) -> Self {
        AuthSettings {
            htpasswd: cfg.htpasswd.clone(),
            anonymous: cfg.anonymous,
            realm: cfg.realm.clone(),
            rules,
            cache_ttl: cfg.cache_ttl,
            token: cfg.token,
            token_ttl: cfg.token_ttl,
            token_realm: cfg.token_realm.clone(),
        }
    }
}

impl AuthConfig {
    /// Check this section and compile its rules, without reading the htpasswd file.
    pub fn resolve(&self) -> Result<AuthSettings, AuthConfigError> {
        let rules = compile(&self.rules)?;
        check_options(self)?;
        Ok(AuthSettings::with_rules(self, rules))
    }
}
