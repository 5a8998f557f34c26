//! `config/`: `RawConfig` as figment layers it — embedded defaults < TOML file
//! (`--config`) < `WHARFIE_*` environment variables (`__` nests) < command-line flags —
//! resolved into `Settings`, the form the rest of the program uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthConfig, AuthError};

/// The commented default configuration, as shipped in /etc/wharfie/wharfie.toml.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The configuration as written: every key, with its default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `host:port` to listen on.
    pub listen: String,
    /// Where `meta.redb`, `blobs/` and `uploads/` live.
    pub data_dir: PathBuf,
    /// An upload session idle this long is removed with its staging.
    #[serde(with = "humantime_serde")]
    pub upload_ttl: Duration,
    /// The largest manifest accepted.
    pub max_manifest_size: ByteSize,
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// A request's headers must arrive within this (slow-loris clients are cut off).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request body that sends nothing for this long fails (the session keeps what
    /// arrived), so a stalled client cannot hold an upload or a connection forever.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// `text` or `json` logs.
    pub log_format: LogFormat,
    /// Registries mirrored (pull-through), as `[[upstreams]]` tables.
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    /// Garbage collection.
    #[serde(default)]
    pub gc: GcConfig,
    /// The byte cap on mirrored content.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with these PEM files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Users (an htpasswd file) and per-repository rules; off without `htpasswd`.
    #[serde(default)]
    pub auth: AuthConfig,
}

/// `[tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[gc]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Run GC this often in the server ("0s" disables the schedule).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Blobs younger than this are never collected (layers pushed ahead of their
    /// manifest).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig { interval: Duration::from_secs(3600), grace: Duration::from_secs(24 * 3600) }
    }
}

/// `[cache]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most bytes of mirrored blobs kept ("0" = no cap). Pushed content never counts.
    pub max_bytes: ByteSize,
    /// Eviction stops at this percentage of `max_bytes`.
    pub low_water_percent: u8,
    /// How often the cap is checked (and access times persisted).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: ByteSize::b(0),
            low_water_percent: 90,
            check_interval: Duration::from_secs(30),
        }
    }
}

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
    /// After a failure the upstream is left alone this long; each failed probe doubles
    /// the window, up to `down_max`.
    #[serde(default = "default_down_min", with = "humantime_serde")]
    pub down_min: Duration,
    #[serde(default = "default_down_max", with = "humantime_serde")]
    pub down_max: Duration,
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

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            listen: "127.0.0.1:5000".into(),
            data_dir: PathBuf::from("./wharfie-data"),
            upload_ttl: Duration::from_secs(24 * 3600),
            max_manifest_size: ByteSize::mib(4),
            max_connections: 4096,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(120),
            log_format: LogFormat::Text,
            upstreams: Vec::new(),
            gc: GcConfig::default(),
            cache: CacheConfig::default(),
            tls: None,
            auth: AuthConfig::default(),
        }
    }
}

/// Values given on the command line (highest precedence).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub upload_ttl: Duration,
    pub max_manifest_bytes: u64,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub log_format: LogFormat,
    pub upstreams: Vec<RawUpstream>,
    pub gc: GcConfig,
    pub cache: CacheConfig,
    pub tls: Option<TlsConfig>,
    /// Checked (rules compile, consistent); the htpasswd path is absolute. The file itself
    /// is read at startup ([`crate::auth::Authenticator::new`]) and by `config check`.
    pub auth: AuthConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// figment's message names the key and the source (file, env var, default).
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("listen = {value:?} is not a socket address (host:port): {reason}")]
    Listen { value: String, reason: String },
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("upstream {name:?}: {reason}")]
    Upstream { name: String, reason: String },
    /// A bad `[auth]` section; the message names the key or rule.
    #[error("{0}")]
    Auth(#[source] AuthError),
    /// `auth.htpasswd` cannot be resolved against the working directory.
    #[error("[auth] htpasswd = {path:?}: {source}")]
    AuthPath { path: PathBuf, source: std::io::Error },
}

/// Layer the sources.
pub fn figment(file: Option<&Path>, overrides: &Overrides) -> Result<Figment, ConfigError> {
    let mut f = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.to_path_buf()));
        }
        f = f.merge(Toml::file_exact(path));
    }
    Ok(f.merge(Env::prefixed("WHARFIE_").split("__").ignore(&["config"]))
        .merge(Serialized::defaults(overrides)))
}

/// Load and check.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<(RawConfig, Settings), ConfigError> {
    let raw: RawConfig = figment(file, overrides)?.extract().map_err(Box::new)?;
    let settings = resolve(&raw)?;
    Ok((raw, settings))
}

fn resolve(raw: &RawConfig) -> Result<Settings, ConfigError> {
    let listen = raw
        .listen
        .parse::<SocketAddr>()
        .map_err(|e| ConfigError::Listen { value: raw.listen.clone(), reason: e.to_string() })?;
    let mut defaults = 0;
    for (i, u) in raw.upstreams.iter().enumerate() {
        let bad = |reason: &str| ConfigError::Upstream { name: u.name.clone(), reason: reason.into() };
        if crate::names::RepoName::parse(&u.name).is_err() || u.name.contains('/') {
            return Err(bad("name must be one repository-name component, like docker.io"));
        }
        if !(u.url.starts_with("http://") || u.url.starts_with("https://")) {
            return Err(bad("url must start with http:// or https://"));
        }
        if raw.upstreams[..i].iter().any(|o| o.name == u.name) {
            return Err(bad("the name is used twice"));
        }
        defaults += usize::from(u.default);
    }
    if !(1..=100).contains(&raw.cache.low_water_percent) {
        return Err(ConfigError::Upstream {
            name: "cache".into(),
            reason: "low_water_percent must be 1 to 100".into(),
        });
    }
    if defaults > 1 {
        return Err(ConfigError::Upstream {
            name: "*".into(),
            reason: "at most one upstream can be the default".into(),
        });
    }
    raw.auth.check().map_err(ConfigError::Auth)?;
    let mut auth = raw.auth.clone();
    if let Some(p) = &auth.htpasswd {
        // Relative to the working directory, like data_dir and the TLS files; made absolute
        // here so logs and errors say which file is meant.
        let abs =
            std::path::absolute(p).map_err(|source| ConfigError::AuthPath { path: p.clone(), source })?;
        auth.htpasswd = Some(abs);
    }
    Ok(Settings {
        listen,
        data_dir: raw.data_dir.clone(),
        upload_ttl: raw.upload_ttl,
        max_manifest_bytes: raw.max_manifest_size.as_u64(),
        max_connections: raw.max_connections,
        header_timeout: raw.header_timeout,
        body_timeout: raw.body_timeout,
        log_format: raw.log_format,
        upstreams: raw.upstreams.clone(),
        gc: raw.gc.clone(),
        cache: raw.cache.clone(),
        tls: raw.tls.clone(),
        auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_file_matches_the_defaults() {
        let f = Figment::from(Serialized::defaults(RawConfig::default())).merge(Toml::string(DEFAULT_TOML));
        let raw: RawConfig = f.extract().expect("default.toml parses");
        let d = RawConfig::default();
        assert_eq!(raw.listen, d.listen);
        assert_eq!(raw.upload_ttl, d.upload_ttl);
        assert_eq!(raw.max_manifest_size, d.max_manifest_size);
        assert_eq!(raw.auth, d.auth, "default.toml's [auth] example must stay commented out");
        let packaged = Figment::from(Serialized::defaults(RawConfig::default()))
            .merge(Toml::string(include_str!("../../packaging/wharfie.toml")));
        let raw: RawConfig = packaged.extract().expect("packaging/wharfie.toml parses");
        assert_eq!(raw.auth, d.auth);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn auth_section_resolves_and_errors_name_the_key() {
        use crate::auth::{Access, Anonymous, Rule};
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "w.toml",
                "[auth]\nhtpasswd = \"users/htpasswd\"\nanonymous = \"none\"\ncache_ttl = \"5s\"\n\
                 [[auth.rules]]\nrepos = \"team/**\"\nusers = [\"alice\", \"*\"]\naccess = [\"pull\", \"push\"]\n",
            )?;
            let (_, s) = load(Some(Path::new("w.toml")), &Overrides::default()).expect("loads");
            let p = s.auth.htpasswd.clone().expect("htpasswd");
            assert!(p.is_absolute() && p.ends_with("users/htpasswd"), "{}", p.display());
            assert_eq!(s.auth.anonymous, Anonymous::None);
            assert_eq!(s.auth.cache_ttl, Duration::from_secs(5));
            assert_eq!(
                s.auth.rules,
                vec![Rule {
                    repos: "team/**".into(),
                    users: vec!["alice".into(), "*".into()],
                    access: vec![Access::Pull, Access::Push]
                }]
            );

            let cases = [
                ("[auth]\nanonymous = \"maybe\"\nhtpasswd = \"h\"\n", "anonymous"),
                ("[auth]\nhtpasswd = \"h\"\n[[auth.rules]]\nrepos = \"a\"\nusers = [\"u\"]\naccess = [\"pul\"]\n", "access"),
                ("[auth]\nhtpasswd = \"h\"\npasswd = \"x\"\n", "passwd"),
                ("[auth]\nhtpasswd = \"h\"\ncache_ttl = \"soon\"\n", "cache_ttl"),
                ("[auth]\nhtpasswd = \"h\"\n[[auth.rules]]\nrepos = \"Team/*\"\nusers = [\"u\"]\naccess = [\"pull\"]\n", "rule 1 (repos = \"Team/*\")"),
                ("[auth]\nanonymous = \"none\"\n", "anonymous = \"none\" needs an htpasswd file"),
                ("[[auth.rules]]\nrepos = \"a\"\nusers = [\"u\"]\naccess = [\"pull\"]\n", "rules need an htpasswd file"),
            ];
            for (text, needle) in cases {
                jail.create_file("bad.toml", text)?;
                let err =
                    load(Some(Path::new("bad.toml")), &Overrides::default()).expect_err(text).to_string();
                assert!(err.contains(needle), "{text:?}: {err}");
            }
            // Environment variables reach the section too.
            jail.set_env("WHARFIE_AUTH__ANONYMOUS", "pull");
            let (_, s) = load(Some(Path::new("w.toml")), &Overrides::default()).expect("loads");
            assert_eq!(s.auth.anonymous, Anonymous::Pull);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn layers_and_errors_name_their_source() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("w.toml", "listen = \"0.0.0.0:6000\"\nupload_ttl = \"90s\"\n")?;
            jail.set_env("WHARFIE_MAX_MANIFEST_SIZE", "1MiB");
            let (_, s) = load(Some(Path::new("w.toml")), &Overrides::default()).expect("loads");
            assert_eq!(s.listen.port(), 6000);
            assert_eq!(s.upload_ttl, Duration::from_secs(90));
            assert_eq!(s.max_manifest_bytes, 1 << 20);
            let o = Overrides { listen: Some("127.0.0.1:7000".into()), data_dir: None };
            let (_, s) = load(Some(Path::new("w.toml")), &o).expect("loads");
            assert_eq!(s.listen.port(), 7000);
            jail.create_file("bad.toml", "upload_ttl = \"soon\"\n")?;
            let err = load(Some(Path::new("bad.toml")), &Overrides::default()).expect_err("bad");
            assert!(err.to_string().contains("bad.toml"), "{err}");
            Ok(())
        });
    }
}
