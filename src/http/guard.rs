//! Who is calling and what they may do, per endpoint: the one place the HTTP layer asks
//! [`Authenticator`]. Every `/v2/` request is authenticated first (a wrong password is
//! a 401 whatever the endpoint); each endpoint then names the access it needs.
//!
//! | request | needs |
//! | --- | --- |
//! | `GET /v2/` | an authenticated user when auth is on (anonymous: 401 + challenge) |
//! | `GET /v2/_catalog` | a user, or anonymous with `anonymous = "pull"`; filtered to pullable repositories |
//! | GET/HEAD manifests, blobs; tags list; referrers | pull (on every repository the name reads from) |
//! | POST/PATCH/PUT/GET/DELETE uploads; PUT manifest | push |
//! | DELETE manifest or blob | delete |
//! | `POST …/uploads/?mount=&from=` | push here; without pull on `from`, a plain upload session |
//! | `/healthz`, `/readyz`, `/metrics` | nothing |
//! | `GET /token` (`token = true`) | nothing; `Basic` credentials make it a user's token |
//!
//! Refusals: an anonymous caller gets 401 `UNAUTHORIZED` with the `Basic` challenge (so
//! the client retries with credentials); an authenticated one gets 403 `DENIED`.
//!
//! With a Bearer token (`token = true`), the rules are checked first (as above), then the
//! token's scopes on the repository as the URL names it: what the rules allow but the
//! token does not grant is 401 `UNAUTHORIZED` with a challenge naming the scope needed
//! (`scope="repository:NAME:pull,push"`), so the client asks for a token that covers it.
//! The catalog needs `registry:catalog:*`; a mount's `from` needs pull in the token too.
//!
//! The base answers an anonymous caller 401 even when anonymous pull is allowed: that is
//! how `podman login` / `skopeo login` / `docker login` verify credentials (they ping
//! `GET /v2/`, and only a challenge makes them send the credentials and look at the
//! answer). Anonymous pulls still work: containers/image then sends `Basic Og==` (no
//! user, no password), which is anonymous, and containerd never pings the base.

use std::sync::Arc;

use super::error::ApiError;
use crate::auth::scope::repository_scope;
use crate::auth::{Access, Authenticator, Identity, Principal};
use crate::names::RepoName;
use crate::service::RepoFilter;

/// The authenticated caller of one request.
pub struct Caller {
    pub auth: Arc<Authenticator>,
    pub who: Principal,
    /// What the caller's Bearer token grants; `None` without a token.
    pub grants: Option<crate::auth::Grants>,
    /// The `WWW-Authenticate` value of this request's 401s; `None`: the plain `Basic`
    /// one, written only if a 401 is ever answered (most open requests never need it).
    challenge: Option<String>,
}

impl Caller {
    /// Authenticate the `Authorization` header (bcrypt, on a cache miss, runs on the
    /// blocking pool; a Bearer token is one HMAC). Auth off: anonymous, header ignored.
    /// `challenge` goes with every 401 of this request.
    pub async fn authenticate(
        auth: Arc<Authenticator>,
        header: Option<&str>,
        challenge: String,
    ) -> Result<Caller, ApiError> {
        match auth.identify_async(header).await {
            Ok(Identity { principal: who, grants }) => {
                Ok(Caller { auth, who, grants, challenge: Some(challenge) })
            }
            Err(e) if e.is_unauthorized() => {
                Err(ApiError::Unauthorized { message: e.to_string(), challenge })
            }
            Err(e) => Err(ApiError::AuthFailed(e.to_string())),
        }
    }

    /// A request that needs no credentials (or auth is off).
    pub fn open(auth: Arc<Authenticator>) -> Caller {
        Caller { auth, who: Principal::Anonymous, grants: None, challenge: None }
    }

    fn unauthorized(&self, message: String) -> ApiError {
        let challenge = self.challenge.clone().unwrap_or_else(|| self.auth.challenge());
        ApiError::Unauthorized { message, challenge }
    }

    /// `GET /v2/`: with auth on, only users get 200.
    pub fn base(&self) -> Result<(), ApiError> {
        if self.auth.enabled() && !self.who.is_authenticated() {
            return Err(self.unauthorized("authentication required".into()));
        }
        Ok(())
    }

    /// `GET /v2/_catalog`.
    pub fn catalog(&self) -> Result<(), ApiError> {
        if !self.auth.authorize(&self.who, None, Access::Pull) {
            return Err(self.refuse("list the catalog"));
        }
        if !self.identity().token_allows_catalog() {
            return Err(self.unauthorized(format!(
                "the token does not grant {}: ask the token endpoint for that scope",
                crate::auth::scope::CATALOG_SCOPE
            )));
        }
        Ok(())
    }

    /// May the caller pull `repo`, by the rules and by its token? (No error: for
    /// filtering, and for a mount's `from`.)
    pub fn may_pull(&self, repo: &str) -> bool {
        RepoName::parse(repo).is_ok_and(|r| {
            self.auth.authorize(&self.who, Some(&r), Access::Pull)
                && self.identity().token_allows(&r, Access::Pull)
        })
    }

    fn identity(&self) -> Identity {
        Identity { principal: self.who.clone(), grants: self.grants.clone() }
    }

    /// The caller's token grants `access` on `name` (the repository as the URL names it),
    /// or 401 with the challenge naming the scope needed. Always true without a token.
    pub fn require_scope(&self, name: &RepoName, access: Access) -> Result<(), ApiError> {
        match &self.grants {
            Some(g) if !g.allows(name, access) => Err(self.unauthorized(format!(
                "the token does not grant {access} on {name}: ask the token endpoint for scope {}",
                repository_scope(name, access)
            ))),
            _ => Ok(()),
        }
    }

    /// The repositories the caller may pull by the rules, as a filter; `None` when that
    /// is all of them (auth off). For the catalog, whose token scope is checked whole.
    pub fn pull_filter(&self) -> Option<RepoFilter> {
        if !self.auth.enabled() {
            return None;
        }
        let (auth, who) = (self.auth.clone(), self.who.clone());
        Some(Arc::new(move |repo: &str| {
            RepoName::parse(repo).is_ok_and(|r| auth.authorize(&who, Some(&r), Access::Pull))
        }))
    }

    /// [`Self::pull_filter`], also within the token's pull scopes (a mount without
    /// `from` reads from any repository the caller may pull).
    pub fn scoped_pull_filter(&self) -> Option<RepoFilter> {
        let Some(grants) = self.grants.clone() else {
            return self.pull_filter();
        };
        let (auth, who) = (self.auth.clone(), self.who.clone());
        Some(Arc::new(move |repo: &str| {
            RepoName::parse(repo).is_ok_and(|r| {
                auth.authorize(&who, Some(&r), Access::Pull) && grants.allows(&r, Access::Pull)
            })
        }))
    }

    /// `access` on `repo`, or the refusal.
    pub fn require(&self, repo: &RepoName, access: Access) -> Result<(), ApiError> {
        if self.auth.authorize(&self.who, Some(repo), access) {
            return Ok(());
        }
        Err(self.refuse(&format!("{access} {repo}")))
    }

    /// A refusal to do `what`: 401 for anonymous callers, 403 for users.
    fn refuse(&self, what: &str) -> ApiError {
        match &self.who {
            Principal::Anonymous => self.unauthorized(format!("authentication required to {what}")),
            Principal::User(u) => ApiError::Forbidden(format!("user {u:?} may not {what}")),
        }
    }

    /// The user name for the request log (`-` for anonymous).
    pub fn log_name(&self) -> &str {
        self.who.user().unwrap_or("-")
    }
}
