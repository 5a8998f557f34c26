//! Answering `WWW-Authenticate` challenges: `Basic` (send the configured credentials)
//! and `Bearer` (fetch a token from the realm — anonymously, or with the credentials —
//! for the challenged scope, and cache it until shortly before it expires).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use super::UpstreamError;

/// The longest a token server may make us keep a token (its `expires_in` is capped).
const MAX_TOKEN_LIFE_SECS: u64 = 24 * 3600;

#[derive(Clone)]
struct Token {
    value: String,
    expires: Instant,
}

pub(super) struct Auth {
    username: Option<String>,
    password: Option<String>,
    /// Bearer tokens by repository (scopes are per repository for pulls).
    tokens: Mutex<HashMap<String, Token>>,
    /// Set once the upstream asked for Basic auth.
    basic: Mutex<bool>,
}

/// Parse `Bearer realm="…",service="…",scope="…"` parameters.
fn params(challenge: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = challenge.trim().split_once(' ').unwrap_or((challenge.trim(), ""));
    let mut out = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (val, tail) = if let Some(stripped) = v.strip_prefix('"') {
            match stripped.find('"') {
                Some(end) => (&stripped[..end], &stripped[end + 1..]),
                None => (stripped, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        out.insert(k, val.to_owned());
        rest = tail.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), out)
}

impl Auth {
    pub(super) fn new(username: Option<String>, password: Option<String>) -> Self {
        Auth { username, password, tokens: Mutex::new(HashMap::new()), basic: Mutex::new(false) }
    }

    fn basic_value(&self) -> Option<String> {
        let (u, p) = (self.username.as_ref()?, self.password.as_deref().unwrap_or(""));
        Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))
    }

    /// The `Authorization` value to send for `repo`, if we have one.
    pub(super) fn header_for(&self, repo: &str) -> Option<String> {
        if let Ok(tokens) = self.tokens.lock() {
            if let Some(t) = tokens.get(repo) {
                if t.expires > Instant::now() {
                    return Some(format!("Bearer {}", t.value));
                }
            }
        }
        if self.basic.lock().is_ok_and(|b| *b) {
            return self.basic_value();
        }
        None
    }

    /// Answer a challenge so that the next `header_for(repo)` works.
    pub(super) async fn answer(
        &self,
        http: &reqwest::Client,
        challenge: &str,
        repo: &str,
    ) -> Result<(), UpstreamError> {
        let (scheme, p) = params(challenge);
        match scheme.as_str() {
            "basic" => {
                if self.username.is_none() {
                    return Err(UpstreamError::Unauthorized(
                        "upstream wants credentials; none configured".into(),
                    ));
                }
                if let Ok(mut b) = self.basic.lock() {
                    *b = true;
                }
                Ok(())
            }
            "bearer" => {
                let realm = p
                    .get("realm")
                    .ok_or_else(|| UpstreamError::Invalid("Bearer challenge without realm".into()))?;
                let scope = p.get("scope").cloned().unwrap_or_else(|| format!("repository:{repo}:pull"));
                let mut req = http.get(realm).query(&[("scope", scope.as_str())]);
                if let Some(s) = p.get("service") {
                    req = req.query(&[("service", s.as_str())]);
                }
                if let Some(b) = self.basic_value() {
                    req = req.header(reqwest::header::AUTHORIZATION, b);
                }
                let resp = req.send().await.map_err(|e| super::transport_error(&e))?;
                if !resp.status().is_success() {
                    return Err(UpstreamError::Unauthorized(format!(
                        "token endpoint answered {}",
                        resp.status()
                    )));
                }
                #[allow(clippy::items_after_statements)] // the token response, beside its one use
                #[derive(serde::Deserialize)]
                struct TokenResp {
                    token: Option<String>,
                    access_token: Option<String>,
                    expires_in: Option<u64>,
                }
                let t: TokenResp =
                    resp.json().await.map_err(|e| UpstreamError::Invalid(format!("token response: {e}")))?;
                let value = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| UpstreamError::Invalid("token response without a token".into()))?;
                // Docker's default lifetime is 60 s; renew a little early.
                // `expires_in` comes from the network: clamp it, so no value can
                // overflow the clock arithmetic.
                let life = Duration::from_secs(t.expires_in.unwrap_or(60).clamp(10, MAX_TOKEN_LIFE_SECS));
                let now = Instant::now();
                let expires = now.checked_add(life.saturating_sub(Duration::from_secs(5))).unwrap_or(now);
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert(repo.to_owned(), Token { value, expires });
                }
                Ok(())
            }
            other => Err(UpstreamError::Invalid(format!("unsupported auth scheme {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let (s, p) = params(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/nginx:pull");
        let (s, p) = params(r#"Basic realm="x""#);
        assert_eq!(s, "basic");
        assert_eq!(p["realm"], "x");
    }
}
