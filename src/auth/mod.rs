//! `auth/`: who is asking ([`Principal`], from an htpasswd file and `Basic` credentials)
//! and what they may do ([`Access`] on a repository, from `[auth]` rules).
//!
//! May import: [`crate::config::auth`] (the `[auth]` section, resolved: its compiled
//! rules) and [`crate::names`]. Never
//! names warp/hyper: the caller hands over the `Authorization` header value and turns the
//! answers into 401/403 responses.
//!
//! # Semantics
//!
//! - **No `[auth]` section, or no `htpasswd` file**: auth is off ([`Authenticator::enabled`]
//!   is false). Everyone may do everything — the behaviour before auth existed. Headers
//!   are not even parsed. Rules or `anonymous = "none"` without an htpasswd file are a
//!   configuration error (they would otherwise silently leave the registry open).
//! - **With an htpasswd file and no rules**: an authenticated user may pull, push and
//!   delete everywhere. The anonymous principal may pull everywhere when
//!   `anonymous = "pull"` (the default) and nothing when `anonymous = "none"`.
//! - **With rules**: a principal's access to a repository is the union of the `access`
//!   lists of every rule whose `repos` pattern matches the repository and whose `users`
//!   names the principal (a user name, `"*"` for any authenticated user, `"anonymous"` for
//!   unauthenticated clients) — plus pull everywhere for everyone (users included: a user
//!   never has less than an anonymous client) when `anonymous = "pull"`. With
//!   `anonymous = "none"`, anonymous clients get only what a rule grants `"anonymous"`.
//!   `push` implies `pull` (pushing reads back what exists). Nothing else is implied:
//!   `delete` must be granted explicitly. Patterns: see [`rules`] (`*` within one path
//!   component, `**` across components).
//! - **Catalog and base** (`repo = None`): every authenticated user may list; anonymous
//!   clients may only when `anonymous = "pull"`. The caller should filter catalog entries
//!   with `authorize(p, Some(repo), Access::Pull)`. The HTTP layer is stricter on the
//!   base `/v2/`: it challenges every anonymous caller when auth is on, because that
//!   challenge is how `podman login` and friends learn to send (and so verify)
//!   credentials (see `http/guard.rs`).
//! - **Credentials**: a missing `Authorization` header is [`Principal::Anonymous`], and so
//!   is `Basic` with an empty user name *and* an empty password (`Basic Og==`): that is
//!   what podman, skopeo and buildah (containers/image) send after a `Basic` challenge
//!   when they have no credentials for the registry. A header that is present but malformed ([`AuthError::BadHeader`]) or wrong
//!   ([`AuthError::BadCredentials`]) is an error, never a silent fallback to anonymous —
//!   that is what makes `podman login` with a wrong password fail even when anonymous
//!   pull is allowed.
//! - **Cost and timing**: bcrypt is slow on purpose. A successful verification is
//!   remembered for `cache_ttl` (default 60s; `"0s"` disables the cache) as a salted
//!   sha256 of (user, password) — never the password — keyed by user name and compared in
//!   constant time. Failures are never cached. An unknown user still costs one bcrypt
//!   verification against a real hash from the file, so timing does not tell which users
//!   exist. [`Authenticator::authenticate_async`] runs bcrypt on tokio's blocking pool.
//!
//! - **Tokens** (`token = true`, off by default): the 401 challenge becomes `Bearer
//!   realm="<token endpoint>",service="<realm>",scope="<what this request needs>"`
//!   (`repository:NAME:pull`, `repository:NAME:pull,push` for a push,
//!   `repository:NAME:delete`, `registry:catalog:*`; see [`scope`]), and `GET /token`
//!   trades `Basic` credentials (or none: an anonymous token) and the `scope` parameters
//!   asked for (several are allowed) for a token clients then send as `Authorization:
//!   Bearer`. A token carries *who* and *what*: the scopes granted, which are the
//!   intersection of what was asked and what the rules allow the principal at issue time
//!   (like Distribution's token server, the token may grant less than asked, or
//!   nothing). A request with a token needs both: the token's scope on the repository as
//!   the URL names it, and the rules, re-checked on every request (on the repositories
//!   the name resolves to), so an htpasswd reload or a rule change still applies. The
//!   rules are checked first: what they refuse is 403 (users) or 401 (anonymous) as
//!   without tokens; what they allow but the token does not cover is 401 with the
//!   challenge naming the scope needed, so the client fetches a better token. `/v2/`
//!   needs only an authenticated token. Tokens are HMAC-SHA256-signed with a
//!   per-process random key, expire after `token_ttl`, and die with a restart or an
//!   htpasswd reload (clients fetch a new one on the next 401). `Basic` keeps working
//!   beside them, unscoped. Verifying a token is one HMAC, no bcrypt. This is what lets
//!   Docker pull anonymously from a registry with auth on: Docker refuses to answer a
//!   `Basic` challenge without credentials, but fetches an anonymous token for a
//!   `Bearer` one.
//!
//! # Invariants
//!
//! - The password cache never outlives the htpasswd contents it was verified against:
//!   [`Authenticator::reload`] bumps a generation, and entries of an older generation are
//!   ignored (and dropped).
//! - A failed reload keeps the previous users.

pub(crate) mod htpasswd;
pub(crate) mod rules;
pub(crate) mod scope;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::names::RepoName;

pub(crate) use self::scope::Grants;
pub(crate) use crate::config::auth::{Access, Anonymous, AuthSettings};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// No credentials were sent (or auth is off).
    Anonymous,
    /// A user whose password verified against the htpasswd file.
    User(String),
}

impl Principal {
    /// The user name, for logs and audit; `None` for anonymous.
    pub fn user(&self) -> Option<&str> {
        match self {
            Principal::Anonymous => None,
            Principal::User(u) => Some(u),
        }
    }

    pub fn is_authenticated(&self) -> bool {
        matches!(self, Principal::User(_))
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Anonymous => f.write_str(rules::ANONYMOUS),
            Principal::User(u) => f.write_str(u),
        }
    }
}

/// Who is asking and, for a Bearer token, what the token was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    /// `Some` for a Bearer token: every request must also be within these scopes.
    /// `None` for Basic credentials or none (the rules alone decide).
    pub grants: Option<Grants>,
}

impl Identity {
    fn plain(principal: Principal) -> Identity {
        Identity { principal, grants: None }
    }

    /// Does the token (if any) grant `access` on `repo`, the name as the request spells it?
    pub fn token_allows(&self, repo: &RepoName, access: Access) -> bool {
        self.grants.as_ref().is_none_or(|g| g.allows(repo, access))
    }

    /// Does the token (if any) grant the catalog?
    pub fn token_allows_catalog(&self) -> bool {
        self.grants.as_ref().is_none_or(Grants::catalog)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read htpasswd file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of the htpasswd file (1-based) is not a bcrypt entry.
    #[error("{path}:{line}: {reason}")]
    Htpasswd { path: PathBuf, line: usize, reason: String },
    /// The `Authorization` header is present but unusable (→ 401 with the challenge).
    #[error("malformed Authorization header: {0}")]
    BadHeader(String),
    /// Unknown user or wrong password (→ 401 with the challenge).
    #[error("invalid username or password")]
    BadCredentials,
    /// A Bearer token that is malformed, forged, expired or from before a reload (→ 401
    /// with the challenge: the client fetches a new one).
    #[error("invalid token: {0}")]
    BadToken(&'static str),
    /// The verification task failed (→ 500).
    #[error("credential check failed: {0}")]
    Internal(String),
}

impl AuthError {
    /// Errors that mean "answer 401 with the challenge" (the client's fault).
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, AuthError::BadHeader(_) | AuthError::BadCredentials | AuthError::BadToken(_))
    }
}

/// `Basic` credentials, decoded.
struct Credentials {
    user: String,
    password: Vec<u8>,
}

/// Standard alphabet, padding optional (some clients strip it).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parse `Basic base64(user:password)`. `Ok(None)`: no header.
fn parse_basic(header: Option<&str>) -> Result<Option<Credentials>, AuthError> {
    let Some(header) = header else {
        return Ok(None);
    };
    let bad = |s: &str| AuthError::BadHeader(s.to_string());
    let header = header.trim();
    if header.is_empty() {
        return Err(bad("empty value"));
    }
    let (scheme, rest) = match header.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&header[..i], header[i..].trim()),
        None => (header, ""),
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        // Echo the scheme only when it looks like one (a bare token could be a secret).
        let shown = if scheme.len() <= 16 && scheme.bytes().all(|b| b.is_ascii_alphabetic()) {
            format!("unsupported scheme {scheme:?} (only Basic is accepted)")
        } else {
            "unsupported scheme (only Basic is accepted)".to_string()
        };
        return Err(AuthError::BadHeader(shown));
    }
    if rest.is_empty() {
        return Err(bad("Basic without credentials"));
    }
    let decoded = BASE64.decode(rest).map_err(|_| bad("Basic credentials are not valid base64"))?;
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return Err(bad("Basic credentials have no `:` between user name and password"));
    };
    let user = std::str::from_utf8(&decoded[..colon]).map_err(|_| bad("the user name is not UTF-8"))?;
    if decoded.len() == 1 {
        // `:` alone: containers/image's "no credentials" after a Basic challenge.
        return Ok(None);
    }
    if user.is_empty() {
        return Err(bad("the user name is empty"));
    }
    Ok(Some(Credentials { user: user.to_string(), password: decoded[colon + 1..].to_vec() }))
}

/// `Bearer <token>` → the token (scheme case-insensitive).
fn bearer_token(header: &str) -> Option<&str> {
    let h = header.trim();
    let (scheme, rest) = h.split_once(|c: char| c.is_ascii_whitespace())?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// URL-safe base64 without padding: token text needs no escaping anywhere.
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A bcrypt hash of a random, discarded password: the timing dummy when the file has no
/// users at all.
const EMPTY_FILE_DUMMY: &str = "$2y$10$CVuUS58ouuB1CFAwTQJcpOLyp/ryWluPR9ADFaR8f9S8VideBeFzy";

/// The loaded htpasswd file, replaced whole on reload.
struct Users {
    map: HashMap<String, String>,
    /// Verified against when the user is unknown.
    dummy: String,
    generation: u64,
}

/// A remembered successful verification.
struct CacheEntry {
    digest: [u8; 32],
    generation: u64,
    expires: Instant,
}

/// Answers "who is this" and "may they".
pub struct Authenticator {
    /// Resolved at configuration load: the rules arrive compiled.
    cfg: AuthSettings,
    users: RwLock<Arc<Users>>,
    /// User name → the last password that verified (as a salted digest).
    cache: Mutex<HashMap<String, CacheEntry>>,
    /// Per-process random salt for the cache digests.
    cache_key: [u8; 32],
    /// Per-process random HMAC key for Bearer tokens.
    token_key: [u8; 32],
    verifications: AtomicU64,
    generations: AtomicU64,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print hashes or cache digests.
        f.debug_struct("Authenticator")
            .field("enabled", &self.enabled())
            .field("htpasswd", &self.cfg.htpasswd)
            .field("anonymous", &self.cfg.anonymous)
            .field("rules", &self.cfg.rules.len())
            .field("users", &self.user_count())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Load the htpasswd file (if any) of an `[auth]` section resolved by `config`.
    pub fn new(cfg: AuthSettings) -> Result<Self, AuthError> {
        let me = Self::build(cfg);
        me.reload()?;
        Ok(me)
    }

    /// Auth off: everyone may do everything (the in-process server of `wharfie import`).
    pub fn disabled() -> Self {
        Self::build(AuthSettings::off())
    }

    fn build(cfg: AuthSettings) -> Self {
        Authenticator {
            cfg,
            users: RwLock::new(Arc::new(Users {
                map: HashMap::new(),
                dummy: EMPTY_FILE_DUMMY.into(),
                generation: 0,
            })),
            cache: Mutex::new(HashMap::new()),
            cache_key: rand::random(),
            token_key: rand::random(),
            verifications: AtomicU64::new(0),
            generations: AtomicU64::new(0),
        }
    }

    /// Re-read the htpasswd file. On error the previous users stay in force. Forgets every
    /// cached verification.
    pub fn reload(&self) -> Result<(), AuthError> {
        let Some(path) = &self.cfg.htpasswd else {
            return Ok(());
        };
        let file = htpasswd::load(path)?;
        for r in &self.cfg.rules {
            for u in r.named_users() {
                if !file.users.contains_key(u) {
                    tracing::warn!(user = u, htpasswd = %path.display(), "an [auth] rule names a user the htpasswd file does not have");
                }
            }
        }
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        let users = Users {
            dummy: file.first_hash.unwrap_or_else(|| EMPTY_FILE_DUMMY.into()),
            map: file.users,
            generation,
        };
        tracing::info!(users = users.map.len(), htpasswd = %path.display(), "loaded htpasswd");
        *self.users.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(users);
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).clear();
        Ok(())
    }

    /// Is auth on (an htpasswd file is configured)?
    pub fn enabled(&self) -> bool {
        self.cfg.htpasswd.is_some()
    }

    /// The configuration this was built from.
    pub fn config(&self) -> &AuthSettings {
        &self.cfg
    }

    /// Users in the loaded htpasswd file.
    pub fn user_count(&self) -> usize {
        self.snapshot().map.len()
    }

    /// The `WWW-Authenticate` value for a 401: `Basic realm="wharfie"`.
    pub fn challenge(&self) -> String {
        let realm = self.cfg.realm.replace('\\', "\\\\").replace('"', "\\\"");
        format!("Basic realm=\"{realm}\"")
    }

    /// The challenge for a 401 from a server clients reach at `base_url`
    /// (`http://host:port`): `Bearer realm="<base_url>/token",service="…"` when tokens
    /// are on (or `token_realm` when set), else [`Self::challenge`]. `None`: the base URL
    /// is unknown (no `Host`), so `Basic` unless `token_realm` is set. `scope` (the scope
    /// the request needs, see [`scope::repository_scope`]) is added to a `Bearer`
    /// challenge as Distribution does, so that clients ask for the right token.
    pub fn challenge_at(&self, base_url: Option<&str>, scope: Option<&str>) -> String {
        if !self.cfg.token {
            return self.challenge();
        }
        let realm = match (&self.cfg.token_realm, base_url) {
            (Some(r), _) => r.clone(),
            (None, Some(b)) if !b.contains(['"', '\\']) => format!("{b}/token"),
            _ => return self.challenge(),
        };
        let service = self.cfg.realm.replace('\\', "\\\\").replace('"', "\\\"");
        match scope.filter(|s| !s.contains(['"', '\\'])) {
            Some(scope) => format!("Bearer realm=\"{realm}\",service=\"{service}\",scope=\"{scope}\""),
            None => format!("Bearer realm=\"{realm}\",service=\"{service}\""),
        }
    }

    /// Are Bearer tokens on?
    pub fn tokens(&self) -> bool {
        self.enabled() && self.cfg.token
    }

    /// A token for `p` and the scopes asked for (`scope` parameter values), granted as
    /// the intersection of what was asked and what the rules allow `p` (so it may grant
    /// less than asked, or nothing), and how long it is valid. Format:
    /// `<expiry unix secs>.<htpasswd generation>.<base64url user>.<base64url scopes>.<base64url HMAC of the rest>`.
    pub fn issue_token<'a>(
        &self,
        p: &Principal,
        scopes: impl IntoIterator<Item = &'a str>,
    ) -> (String, Duration, Grants) {
        let grants = Grants::parse(scopes).restrict(|repo, access| self.authorize(p, repo, access));
        let ttl = self.cfg.token_ttl;
        let expiry = unix_now().saturating_add(ttl.as_secs().max(1));
        let user = URL_SAFE.encode(p.user().unwrap_or(""));
        let granted = URL_SAFE.encode(grants.to_text());
        let payload = format!("{expiry}.{}.{user}.{granted}", self.snapshot().generation);
        let mac = URL_SAFE.encode(self.token_mac(&payload));
        (format!("{payload}.{mac}"), ttl, grants)
    }

    fn token_mac(&self, payload: &str) -> [u8; 32] {
        use hmac::Mac as _;
        // HMAC takes keys of any length; unreachable, and a zero MAC never verifies
        // against a real one.
        let Ok(mut m) = hmac::Hmac::<Sha256>::new_from_slice(&self.token_key) else {
            return [0; 32];
        };
        m.update(payload.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// Who a Bearer token names and what it grants, if it is ours, current and unexpired.
    fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        let bad = AuthError::BadToken;
        let (payload, mac) = token.rsplit_once('.').ok_or(bad("not a wharfie token"))?;
        let mac = URL_SAFE.decode(mac).map_err(|_| bad("not a wharfie token"))?;
        if !bool::from(self.token_mac(payload).as_slice().ct_eq(&mac)) {
            return Err(bad("bad signature (issued by another process or forged)"));
        }
        let mut parts = payload.splitn(4, '.');
        let (Some(expiry), Some(generation), Some(user), Some(granted)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a wharfie token"));
        };
        let expiry: u64 = expiry.parse().map_err(|_| bad("not a wharfie token"))?;
        if unix_now() >= expiry {
            return Err(bad("expired"));
        }
        let users = self.snapshot();
        if generation.parse::<u64>().ok() != Some(users.generation) {
            return Err(bad("issued before the htpasswd file was reloaded"));
        }
        let granted = URL_SAFE
            .decode(granted)
            .ok()
            .and_then(|g| String::from_utf8(g).ok())
            .ok_or(bad("not a wharfie token"))?;
        let grants = Some(Grants::parse([granted.as_str()]));
        let user = URL_SAFE.decode(user).ok().and_then(|u| String::from_utf8(u).ok());
        match user.as_deref() {
            Some("") => Ok(Identity { principal: Principal::Anonymous, grants }),
            Some(u) if users.map.contains_key(u) => {
                Ok(Identity { principal: Principal::User(u.to_string()), grants })
            }
            _ => Err(bad("unknown user")),
        }
    }

    /// How many bcrypt verifications ran (cache misses and failures). For tests and
    /// metrics.
    pub fn bcrypt_verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> Arc<Users> {
        self.users.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn digest(&self, c: &Credentials) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update((c.user.len() as u64).to_le_bytes());
        h.update(c.user.as_bytes());
        h.update(&c.password);
        h.finalize().into()
    }

    /// A cache hit for these credentials?
    fn cached(&self, c: &Credentials, digest: &[u8; 32], generation: u64) -> bool {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(e) = cache.get(&c.user) else {
            return false;
        };
        if e.generation != generation || Instant::now() >= e.expires {
            cache.remove(&c.user);
            return false;
        }
        e.digest.ct_eq(digest).into()
    }

    fn remember(&self, c: &Credentials, digest: [u8; 32], generation: u64) {
        if self.cfg.cache_ttl.is_zero() {
            return;
        }
        let Some(expires) = Instant::now().checked_add(self.cfg.cache_ttl) else {
            return;
        };
        // A reload since the verification started: the result is stale, don't keep it.
        if self.snapshot().generation != generation {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.insert(c.user.clone(), CacheEntry { digest, generation, expires });
    }

    /// Everything before bcrypt: `Err(identity)` is a final answer, `Ok` a pending
    /// verification.
    fn prepare(&self, header: Option<&str>) -> Result<Result<Pending, Identity>, AuthError> {
        if !self.enabled() {
            return Ok(Err(Identity::plain(Principal::Anonymous)));
        }
        if self.cfg.token {
            if let Some(token) = header.and_then(bearer_token) {
                return self.verify_token(token).map(Err);
            }
        }
        let Some(creds) = parse_basic(header)? else {
            return Ok(Err(Identity::plain(Principal::Anonymous)));
        };
        let users = self.snapshot();
        let digest = self.digest(&creds);
        if self.cached(&creds, &digest, users.generation) {
            return Ok(Err(Identity::plain(Principal::User(creds.user))));
        }
        let (known, hash) = match users.map.get(&creds.user) {
            Some(h) => (true, h.clone()),
            None => (false, users.dummy.clone()),
        };
        self.verifications.fetch_add(1, Ordering::Relaxed);
        Ok(Ok(Pending { creds, digest, generation: users.generation, known, hash }))
    }

    fn finish(&self, p: Pending, verified: bool) -> Result<Principal, AuthError> {
        if !(p.known && verified) {
            return Err(AuthError::BadCredentials);
        }
        self.remember(&p.creds, p.digest, p.generation);
        Ok(Principal::User(p.creds.user))
    }

    /// Who sent this `Authorization` header? Runs bcrypt on the calling thread on a cache
    /// miss (tens of milliseconds): async callers use [`Self::authenticate_async`].
    pub fn authenticate(&self, authorization_header: Option<&str>) -> Result<Principal, AuthError> {
        self.identify(authorization_header).map(|i| i.principal)
    }

    /// [`Self::authenticate`], with what a Bearer token grants.
    pub fn identify(&self, authorization_header: Option<&str>) -> Result<Identity, AuthError> {
        match self.prepare(authorization_header)? {
            Err(identity) => Ok(identity),
            Ok(p) => {
                let ok = verify(&p.creds.password, &p.hash);
                self.finish(p, ok).map(Identity::plain)
            }
        }
    }

    /// [`Self::authenticate`], with bcrypt on tokio's blocking pool.
    pub async fn authenticate_async(
        &self,
        authorization_header: Option<&str>,
    ) -> Result<Principal, AuthError> {
        self.identify_async(authorization_header).await.map(|i| i.principal)
    }

    /// [`Self::identify`], with bcrypt on tokio's blocking pool.
    pub async fn identify_async(&self, authorization_header: Option<&str>) -> Result<Identity, AuthError> {
        match self.prepare(authorization_header)? {
            Err(identity) => Ok(identity),
            Ok(mut p) => {
                let password = std::mem::take(&mut p.creds.password);
                let hash = p.hash.clone();
                let ok = tokio::task::spawn_blocking(move || verify(&password, &hash))
                    .await
                    .map_err(|e| AuthError::Internal(e.to_string()))?;
                self.finish(p, ok).map(Identity::plain)
            }
        }
    }

    /// May `p` have `access` to `repo`? `repo = None` is the catalog or the `/v2/` base,
    /// where `access` is ignored. Always true when auth is off.
    pub fn authorize(&self, p: &Principal, repo: Option<&RepoName>, access: Access) -> bool {
        if !self.enabled() {
            return true;
        }
        let anonymous_pull = self.cfg.anonymous == Anonymous::Pull;
        let Some(repo) = repo else {
            return p.is_authenticated() || anonymous_pull;
        };
        if anonymous_pull && access == Access::Pull {
            return true;
        }
        if self.cfg.rules.is_empty() {
            return p.is_authenticated();
        }
        rules::granted(&self.cfg.rules, p, repo.as_str()).contains(access)
    }
}

/// A verification to run.
struct Pending {
    creds: Credentials,
    digest: [u8; 32],
    generation: u64,
    known: bool,
    hash: String,
}

fn verify(password: &[u8], hash: &str) -> bool {
    match bcrypt::verify(password, hash) {
        Ok(ok) => ok,
        Err(e) => {
            // Hashes are checked at load, so this is not expected.
            tracing::warn!(error = %e, "bcrypt verification failed");
            false
        }
    }
}

#[cfg(test)]
mod tests;
