//! `config/upstream.rs`: one `[[upstreams]]` table as written ([`RawUpstream`]) and as
//! the server uses it ([`UpstreamSettings`]): the URL parsed, the CA file read and its
//! certificates checked, the credentials paired, limits and warm images typed. Nothing
//! about an upstream is read or parsed again at startup.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use url::Url;

use super::pem::{read_certs, reason, PemFileError};

/// One `[[upstreams]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Name and path prefix, e.g. `docker.io` (also matched against containerd's `ns`).
    pub name: String,
    /// Base URL, e.g. `https://registry-1.docker.io`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PEM file of extra CA certificates to trust for this upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Serve a cached tag this long before revalidating it with a HEAD.
    #[serde(default = "default_tag_ttl", with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// Never contact the upstream; serve only what is cached.
    #[serde(default)]
    pub offline: bool,
    /// Serve cached tags when the upstream fails.
    #[serde(default = "yes")]
    pub stale_if_error: bool,
    /// Mirror bare names (`/v2/nginx/…`) from this upstream, after hosted repositories.
    #[serde(default)]
    pub default: bool,
    /// Retries of one upstream request stop after this long.
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Request every repository under this namespace of the upstream (`docker.io`:
    /// `/v2/docker.io/<repo>/…`), for an upstream that is itself a wharfie mirroring
    /// that registry (tiered mirrors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// After a failure the upstream is left alone this long; each failed probe doubles
    /// the window, up to `down_max`.
    #[serde(default = "default_down_min", with = "humantime_serde")]
    pub down_min: Duration,
    #[serde(default = "default_down_max", with = "humantime_serde")]
    pub down_max: Duration,
    /// Fetches (blob fills, manifest fetches and tag revalidations, referrers, warm-list
    /// revalidations) sent to this upstream at once; more wait in arrival order
    /// (clients asking for one thing still share one fetch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_fetches: Option<usize>,
    /// Blob bytes per second fetched from this upstream, all fills together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<ByteSize>,
    /// Images (`library/nginx:1.27`, the upstream's names) kept fresh in the background
    /// every `tag_ttl`: one HEAD each, a GET only when the digest changed, layers filled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm: Vec<String>,
    /// The platforms (`linux/amd64`, `linux/arm64/v8`) of a warm index to fill; every
    /// platform when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm_platforms: Vec<String>,
}

fn default_tag_ttl() -> Duration {
    Duration::from_secs(300)
}

fn default_upstream_timeout() -> Duration {
    // Well under clients' own timeouts (Docker's are 30 s and more).
    Duration::from_secs(10)
}

fn default_down_min() -> Duration {
    Duration::from_secs(5)
}

fn default_down_max() -> Duration {
    Duration::from_secs(60)
}

fn yes() -> bool {
    true
}

/// The least `max_bytes_per_sec` may be: below it a layer takes hours.
pub const MIN_BYTES_PER_SEC: u64 = 16 * 1024;

/// A `warm` entry: `repository:tag` (the tag after the last `:` past the last `/`).
pub fn split_image(s: &str) -> Option<(&str, &str)> {
    let (repo, tag) = s.rsplit_once(':')?;
    if tag.contains('/') || repo.is_empty() || tag.is_empty() {
        return None;
    }
    Some((repo, tag))
}

/// An upstream's login. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    /// Empty when the table gives a username alone.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"…").finish()
    }
}

/// One `[[upstreams]]` entry, resolved: what the upstream client and the mirror are
/// built from, with nothing left to parse or read.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub name: String,
    /// `http` or `https`, with a host; no query, fragment or credentials.
    pub url: Url,
    pub credentials: Option<Credentials>,
    /// Extra CA certificates to trust (from `ca_file`), each checked as a trust anchor.
    pub ca_certs: Vec<CertificateDer<'static>>,
    pub tag_ttl: Duration,
    pub offline: bool,
    pub stale_if_error: bool,
    pub default: bool,
    /// Retries of one request stop after this long.
    pub timeout: Duration,
    pub namespace: Option<String>,
    pub down_min: Duration,
    pub down_max: Duration,
    /// 1 to 10 000 (`None`: no limit).
    pub max_concurrent_fetches: Option<usize>,
    /// At least [`MIN_BYTES_PER_SEC`] (`None`: no limit).
    pub max_bytes_per_sec: Option<u64>,
    /// (upstream repository, tag), each a valid name.
    pub warm: Vec<(String, String)>,
    /// `os/arch` or `os/arch/variant`.
    pub warm_platforms: Vec<String>,
}

/// A bad `[[upstreams]]` entry; `key` is dotted (`upstreams.0.url`) until the loader
/// names it as its source spells it.
#[derive(Debug)]
pub(super) enum Bad {
    Value { key: String, reason: String },
    CaFile { key: String, upstream: String, path: PathBuf, cause: PemFileError },
}

/// Check and resolve `[[upstreams]]`.
pub(super) fn resolve(raw: &[RawUpstream]) -> Result<Vec<UpstreamSettings>, Bad> {
    let bad = |key: String, reason: String| Bad::Value { key, reason };
    let mut out: Vec<UpstreamSettings> = Vec::new();
    let mut defaults = Vec::new();
    for (i, u) in raw.iter().enumerate() {
        let key = |k: &str| format!("upstreams.{i}.{k}");
        if crate::names::RepoName::parse(&u.name).is_err() || u.name.contains('/') {
            return Err(bad(
                key("name"),
                format!("{:?} must be one repository-name component, like docker.io", u.name),
            ));
        }
        let url =
            parse_url(&u.url).map_err(|why| bad(key("url"), format!("upstream {:?}: {why}", u.name)))?;
        let credentials = match (&u.username, &u.password) {
            (Some(username), password) => Some(Credentials {
                username: username.clone(),
                password: password.clone().unwrap_or_default(),
            }),
            (None, Some(_)) => {
                return Err(bad(
                    key("password"),
                    format!("upstream {:?}: a password needs a username", u.name),
                ))
            }
            (None, None) => None,
        };
        if let Some(ns) = &u.namespace {
            if crate::names::RepoName::parse(ns).is_err() {
                return Err(bad(
                    key("namespace"),
                    format!("{ns:?} must be a repository-name prefix, like docker.io"),
                ));
            }
        }
        if let Some(n) = u.max_concurrent_fetches {
            if !(1..=10_000).contains(&n) {
                return Err(bad(
                    key("max_concurrent_fetches"),
                    format!("must be 1 to 10000 fetches at once, not {n} (leave it out for no limit)"),
                ));
            }
        }
        if let Some(r) = u.max_bytes_per_sec {
            if r.as_u64() < MIN_BYTES_PER_SEC {
                return Err(bad(
                    key("max_bytes_per_sec"),
                    format!(
                        "{r} is under the least rate, {} per second (leave it out for no limit)",
                        ByteSize::b(MIN_BYTES_PER_SEC)
                    ),
                ));
            }
        }
        let mut warm = Vec::new();
        for (j, w) in u.warm.iter().enumerate() {
            let image = split_image(w).filter(|(r, t)| {
                crate::names::RepoName::parse(r).is_ok() && crate::names::Tag::parse(t).is_ok()
            });
            let Some((r, t)) = image else {
                return Err(bad(
                    format!("{}.{j}", key("warm")),
                    format!("{w:?} must be repository:tag, like library/nginx:1.27"),
                ));
            };
            warm.push((r.to_owned(), t.to_owned()));
        }
        for (j, p) in u.warm_platforms.iter().enumerate() {
            let parts = p.split('/').count();
            if !(2..=3).contains(&parts) || p.split('/').any(str::is_empty) {
                return Err(bad(
                    format!("{}.{j}", key("warm_platforms")),
                    format!("{p:?} must be os/arch or os/arch/variant, like linux/amd64"),
                ));
            }
        }
        if out.iter().any(|o| o.name == u.name) {
            return Err(bad(
                key("name"),
                format!("{:?} names two upstreams; each needs its own name", u.name),
            ));
        }
        // Last: the one check that reads a file.
        let ca_certs = match &u.ca_file {
            Some(path) => read_ca(path).map_err(|cause| Bad::CaFile {
                key: key("ca_file"),
                upstream: u.name.clone(),
                path: path.clone(),
                cause,
            })?,
            None => Vec::new(),
        };
        if u.default {
            defaults.push(u.name.as_str());
        }
        out.push(UpstreamSettings {
            name: u.name.clone(),
            url,
            credentials,
            ca_certs,
            tag_ttl: u.tag_ttl,
            offline: u.offline,
            stale_if_error: u.stale_if_error,
            default: u.default,
            timeout: u.timeout,
            namespace: u.namespace.clone(),
            down_min: u.down_min,
            down_max: u.down_max,
            max_concurrent_fetches: u.max_concurrent_fetches,
            max_bytes_per_sec: u.max_bytes_per_sec.map(|b| b.as_u64()),
            warm,
            warm_platforms: u.warm_platforms.clone(),
        });
    }
    if defaults.len() > 1 {
        let i = raw.iter().rposition(|u| u.default).unwrap_or(0);
        return Err(bad(
            format!("upstreams.{i}.default"),
            format!(
                "only one upstream can be the default, and {} all say default = true",
                defaults.join(", ")
            ),
        ));
    }
    Ok(out)
}

/// An upstream's base URL, or what is wrong with it (after "upstream NAME: ").
fn parse_url(s: &str) -> Result<Url, String> {
    if !(s.starts_with("http://") || s.starts_with("https://")) {
        return Err("the url must start with http:// or https://".into());
    }
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a valid URL: {e}"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?} must not have a query or fragment (the API paths are appended to it)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("put the credentials in username and password, not in the url".into());
    }
    Ok(url)
}

/// Read a CA file: every PEM certificate in it, each one a trust anchor rustls accepts.
fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let certs = read_certs(path)?;
    for (i, c) in certs.iter().enumerate() {
        // What the client does with it when it is built: checked here, named here.
        let mut store = tokio_rustls::rustls::RootCertStore::empty();
        store
            .add(c.clone())
            .map_err(|e| PemFileError::BadCaCertificate { number: i + 1, reason: reason(e) })?;
    }
    Ok(certs)
}
