//! `config/`: `RawConfig` as figment layers it — embedded defaults < TOML file
//! (`--config`) < `WHARFIE_*` environment variables (`__` nests) < command-line flags —
//! resolved into `Settings`, the form the rest of the program uses.
//!
//! Every value is resolved here, once: an upstream's URL parsed, its CA file read and
//! its certificates checked, its credentials paired (`upstream.rs`); the `[tls]`
//! certificate chain and key read, parsed and matched (`tls.rs`); the cache's byte
//! figures computed; the `[auth]` rules compiled and the htpasswd path made absolute
//! (`auth.rs`; the htpasswd file itself is the authenticator's, read at startup and
//! again on SIGHUP).
//! A bad value is a [`ConfigError`] naming the key as written and where it came from;
//! `app` only hands the resolved values to constructors.
//!
//! May import: names (and figment, serde, url, rustls for the CA files and `[tls]`).
//! `auth` reads its `[auth]` section from here (`config::auth`), never the reverse.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub(crate) mod auth;
mod pem;
mod tls;
mod upstream;

use self::auth::{AuthConfig, AuthConfigError, AuthSettings};
pub use self::pem::PemFileError;
pub use self::tls::{TlsConfig, TlsSettings};
pub use self::upstream::{split_image, Credentials, RawUpstream, UpstreamSettings, MIN_BYTES_PER_SEC};

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
    /// Endpoints told of every manifest push and delete, as `[[notify]]` tables.
    #[serde(default)]
    pub notify: Vec<RawNotify>,
    /// Most notification events queued (for the slowest endpoint); beyond it the oldest
    /// is dropped and counted.
    pub notify_queue_max: u64,
}

/// One `[[notify]]` table: a webhook receiving Distribution's notification envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// Names the endpoint in logs, metrics and its queue cursor (default: the URL's
    /// host and port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The URL each event is sent to (by `POST`).
    pub url: String,
    /// Extra request headers (e.g. `Authorization`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// One delivery attempt fails after this long.
    #[serde(default = "default_notify_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries wait `backoff_min`, doubling up to `backoff_max`.
    #[serde(default = "default_notify_backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(default = "default_notify_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Only these actions (`push`, `delete`); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// Only repositories matching one of these patterns (`*` within a component, `**`
    /// across, as in `[[auth.rules]]`); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
}

fn default_notify_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_notify_backoff_min() -> Duration {
    Duration::from_millis(500)
}

fn default_notify_backoff_max() -> Duration {
    Duration::from_secs(60)
}

/// A `[[notify]]` entry, checked: the name resolved, header names and values valid,
/// patterns compiled.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub name: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub actions: Vec<String>,
    pub repositories: Vec<auth::Pattern>,
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
            notify: Vec::new(),
            notify_queue_max: 100_000,
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
    /// `[[upstreams]]`, resolved: URLs parsed, CA files read and checked.
    pub upstreams: Vec<UpstreamSettings>,
    pub gc: GcConfig,
    pub cache: CacheSettings,
    /// `[tls]`: the chain and key read, parsed and matched.
    pub tls: Option<TlsSettings>,
    /// Rules compiled, options consistent, the htpasswd path absolute. The file itself is
    /// read at startup, and again on SIGHUP, by the authenticator (and by `config check`).
    pub auth: AuthSettings,
    /// `[[notify]]` endpoints.
    pub notify: Vec<NotifySettings>,
    pub notify_queue_max: u64,
    /// `WHARFIE_*` variables that name no configuration key: ignored (the environment is
    /// shared with other programs), and logged as a warning at startup.
    pub ignored_env: Vec<IgnoredEnv>,
}

/// `[cache]`, resolved: byte counts, the low-water mark computed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Most bytes of mirrored blobs kept (0 = no cap).
    pub max_bytes: u64,
    /// Eviction stops at this many bytes (`low_water_percent` of `max_bytes`).
    pub low_water_bytes: u64,
    /// How often the cap is checked and access times persisted.
    pub check_interval: Duration,
}

impl CacheSettings {
    fn resolve(c: &CacheConfig) -> Self {
        let cap = c.max_bytes.as_u64();
        CacheSettings {
            max_bytes: cap,
            // Multiply first: `cap / 100 * pct` rounds the low-water mark below what it says.
            low_water_bytes: u64::try_from(u128::from(cap) * u128::from(c.low_water_percent) / 100)
                .unwrap_or(cap),
            check_interval: c.check_interval,
        }
    }
}

/// A `WHARFIE_*` environment variable that is not a configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredEnv {
    /// The variable as set, e.g. `WHARFIE_BIN`.
    pub name: String,
    /// The known variable nearest to it, when one is close (a likely typo).
    pub nearest: Option<String>,
}

impl std::fmt::Display for IgnoredEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "environment variable {} is not a wharfie setting; ignored", self.name)?;
        if let Some(n) = &self.nearest {
            write!(f, " (did you mean {n}?)")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A bad or unknown key. `key` is as the user writes it where it came from
    /// (`[cache] max_bytes` in the file, `WHARFIE_CACHE__MAX_BYTES` in the environment,
    /// `--listen` on the command line); `origin` says where that was.
    #[error("{key} {origin}: {reason}")]
    Value { key: String, origin: String, reason: String },
    /// A source that cannot be read at all (a TOML syntax error): `what` names it.
    #[error("{what}: {reason}")]
    Unreadable { what: String, reason: String },
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A bad `[auth]` section; the message names the key or rule.
    #[error("{0}")]
    Auth(#[source] AuthConfigError),
    /// An upstream's `ca_file` cannot be read, or holds no usable CA certificate. `key`
    /// and `origin` as in `Value`.
    #[error("{key} {origin}: upstream {upstream:?}: {}: {cause}", path.display())]
    CaFile { key: String, origin: String, upstream: String, path: PathBuf, cause: Box<PemFileError> },
    /// A `[tls]` file cannot be read, or holds no usable certificate chain or key, or
    /// the key is not the certificate's. `key` and `origin` as in `Value`.
    #[error("{key} {origin}: {}: {cause}", path.display())]
    TlsFile { key: String, origin: String, path: PathBuf, cause: Box<PemFileError> },
    /// `auth.htpasswd` cannot be resolved against the working directory.
    #[error("[auth] htpasswd = {path:?}: {source}")]
    AuthPath { path: PathBuf, source: std::io::Error },
}

/// The prefix of environment variables that set configuration keys.
const ENV_PREFIX: &str = "WHARFIE_";

/// `WHARFIE_*` variables that are not configuration keys but are wharfie's own.
const ENV_NOT_KEYS: &[&str] = &["config"];

/// Keys the defaults leave out (unset options), which the environment may still set.
const OPTIONAL_KEYS: &[&str] = &["tls", "tls.cert", "tls.key", "auth.htpasswd", "auth.token_realm"];

/// Tables whose value is an array of tables (`[[upstreams]]`).
const ARRAY_TABLES: &[&str] = &["upstreams", "auth.rules", "notify"];

/// Every key the environment may set, dotted and lowercase (`cache.max_bytes`): the
/// tables and keys of the defaults, and the optional ones. Arrays are set whole
/// (`WHARFIE_UPSTREAMS='[{name = "…", url = "…"}]'`).
fn known_keys() -> Vec<String> {
    fn walk(prefix: &str, dict: &figment::value::Dict, out: &mut Vec<String>) {
        for (k, v) in dict {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            if let figment::value::Value::Dict(_, d) = v {
                walk(&key, d, out);
            }
            out.push(key);
        }
    }
    let mut out = Vec::new();
    if let Ok(figment::value::Value::Dict(_, d)) = figment::value::Value::serialize(RawConfig::default()) {
        walk("", &d, &mut out);
    }
    out.extend(OPTIONAL_KEYS.iter().map(|k| (*k).to_owned()));
    out.sort();
    out.dedup();
    out
}

/// The dotted key an environment variable sets, as figment's `Env` reads it
/// (`WHARFIE_CACHE__MAX_BYTES` → `cache.max_bytes`); `None` for other variables.
fn env_key(var: &str) -> Option<String> {
    let head = var.get(..ENV_PREFIX.len())?;
    if !head.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    let key = var[ENV_PREFIX.len()..].trim().replace("__", ".").to_ascii_lowercase();
    if key.split('.').any(str::is_empty) {
        return None;
    }
    Some(key)
}

/// The variable name that sets a dotted key.
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_ascii_uppercase())
}

/// The `WHARFIE_*` variables set now that name no key, each with the nearest known one.
pub fn ignored_env_vars() -> Vec<IgnoredEnv> {
    let known = known_keys();
    let mut out: Vec<IgnoredEnv> = std::env::vars_os()
        .filter_map(|(k, _)| {
            let name = k.to_string_lossy().into_owned();
            let key = env_key(&name)?;
            if known.contains(&key) || ENV_NOT_KEYS.contains(&key.as_str()) {
                return None;
            }
            let nearest = nearest(&key, known.iter().map(String::as_str)).map(env_name);
            Some(IgnoredEnv { name, nearest })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The candidate closest to `word`, when it is close enough to be a likely typo.
fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        // A typo, or a key with something added or cut (`grace_period` for `grace`).
        .filter(|(d, c)| {
            *d <= 2.max(c.len().min(word.len()) / 4) || word.starts_with(c) || c.starts_with(word)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Layer the sources. `WHARFIE_*` variables that name no key are left out (see
/// [`Settings::ignored_env`]); unknown keys in the file stay an error.
pub fn figment(file: Option<&Path>, overrides: &Overrides) -> Result<Figment, ConfigError> {
    let mut f = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.to_path_buf()));
        }
        f = f.merge(Toml::file_exact(path));
    }
    let known = std::sync::Arc::new(known_keys());
    let env = Env::prefixed(ENV_PREFIX)
        .split("__")
        .filter(move |k| known.contains(&k.as_str().to_ascii_lowercase()));
    Ok(f.merge(env).merge(Serialized::defaults(overrides)))
}

/// Load and check.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<(RawConfig, Settings), ConfigError> {
    let fig = figment(file, overrides)?;
    let raw: RawConfig = fig.extract().map_err(|e| describe(&e))?;
    let mut settings = resolve(&raw).map_err(|e| name_origin(&fig, e))?;
    settings.ignored_env = ignored_env_vars();
    Ok((raw, settings))
}

/// Where the value at a dotted key came from, and the key as written there.
fn locate(md: Option<&figment::Metadata>, path: &[String]) -> (String, String) {
    let dotted = path.join(".");
    let Some(md) = md else {
        return (dotted, "in the configuration".into());
    };
    if let Some(figment::Source::File(p)) = &md.source {
        return (file_key(path), format!("in {}", p.display()));
    }
    if md.name.contains(ENV_PREFIX) {
        // The variable actually set: the longest prefix of the path that is one (a
        // table can be set whole, `WHARFIE_TLS='{cert = "…"}'`).
        let set: Vec<String> = std::env::vars_os()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .filter(|k| env_key(k).is_some())
            .collect();
        for n in (1..=path.len()).rev() {
            let key = path[..n].join(".");
            if let Some(var) = set.iter().find(|v| env_key(v).as_deref() == Some(key.as_str())) {
                return (var.clone(), "in the environment".into());
            }
        }
        return (env_name(&dotted), "in the environment".into());
    }
    if md.name.ends_with("Overrides") {
        return (format!("--{}", dotted.replace('_', "-")), "on the command line".into());
    }
    (dotted, "in the built-in defaults".into())
}

/// A key as a TOML file spells it: `listen`, `[cache] max_bytes`,
/// `[[upstreams]] #2 url` (entries count from 1; an index into an array of values is
/// dropped: the key names the array).
fn file_key(path: &[String]) -> String {
    let mut names: Vec<&str> = Vec::new();
    let mut entries: Vec<String> = Vec::new();
    for seg in path {
        match seg.parse::<usize>() {
            Ok(i) => {
                if ARRAY_TABLES.contains(&names.join(".").as_str()) {
                    entries.push(format!("#{}", i + 1));
                }
            }
            Err(_) => names.push(seg),
        }
    }
    let Some((key, table)) = names.split_last() else {
        return path.join(".");
    };
    if table.is_empty() {
        return (*key).to_owned();
    }
    let t = table.join(".");
    if ARRAY_TABLES.contains(&t.as_str()) {
        let entry = entries.first().map(|e| format!(" {e}")).unwrap_or_default();
        format!("[[{t}]]{entry} {key}")
    } else {
        format!("[{t}] {key}")
    }
}

/// figment's error in the user's words: the key as written, where, and why.
fn describe(e: &figment::Error) -> ConfigError {
    use figment::error::Kind;
    let md = e.metadata.as_ref();
    if e.path.is_empty() {
        let what = match md {
            Some(figment::Metadata { source: Some(figment::Source::File(p)), .. }) => p.display().to_string(),
            Some(m) if m.name.contains(ENV_PREFIX) => format!("the {ENV_PREFIX}* environment variables"),
            _ => "the configuration".into(),
        };
        return ConfigError::Unreadable { what, reason: e.kind.to_string() };
    }
    let (key, origin) = locate(md, &e.path);
    let reason = match &e.kind {
        Kind::UnknownField(found, expected) => match nearest(found, expected.iter().copied()) {
            Some(n) => format!("unknown key; did you mean {n}?"),
            None => format!("unknown key; the keys here are {}", expected.join(", ")),
        },
        Kind::UnknownVariant(found, expected) => {
            format!(
                "{found:?} is not one of {}",
                expected.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ")
            )
        }
        Kind::MissingField(f) => {
            let mut path = e.path.clone();
            path.push(f.to_string());
            let (key, origin) = locate(md, &path);
            return ConfigError::Value { key, origin, reason: "is required".into() };
        }
        // bytesize's own word for what it wanted says nothing to an operator.
        other => other
            .to_string()
            .replace("expected parsable string", "expected a size such as \"512MiB\" or \"10GB\""),
    };
    ConfigError::Value { key, origin, reason }
}

/// A check of the resolved values names the key as its source spells it.
fn name_origin(fig: &Figment, e: ConfigError) -> ConfigError {
    let named = |key: &str| {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        // An array (`upstreams`) comes whole from one source.
        let md = (1..=path.len()).rev().find_map(|n| fig.find_metadata(&path[..n].join(".")));
        locate(md, &path)
    };
    match e {
        ConfigError::Value { key, origin, reason } if origin.is_empty() => {
            let (key, origin) = named(&key);
            ConfigError::Value { key, origin, reason }
        }
        ConfigError::CaFile { key, origin, upstream, path, cause } if origin.is_empty() => {
            let (key, origin) = named(&key);
            ConfigError::CaFile { key, origin, upstream, path, cause }
        }
        ConfigError::TlsFile { key, origin, path, cause } if origin.is_empty() => {
            let (key, origin) = named(&key);
            ConfigError::TlsFile { key, origin, path, cause }
        }
        e => e,
    }
}

fn resolve(raw: &RawConfig) -> Result<Settings, ConfigError> {
    // The key is dotted here; `name_origin` rewrites it as its source spells it.
    let bad = |key: String, reason: String| ConfigError::Value { key, origin: String::new(), reason };
    let listen = raw.listen.parse::<SocketAddr>().map_err(|e| {
        bad("listen".into(), format!("{:?} is not a socket address (host:port): {e}", raw.listen))
    })?;
    let upstreams = upstream::resolve(&raw.upstreams).map_err(|e| match e {
        upstream::Bad::Value { key, reason } => bad(key, reason),
        upstream::Bad::CaFile { key, upstream, path, cause } => {
            ConfigError::CaFile { key, origin: String::new(), upstream, path, cause: Box::new(cause) }
        }
    })?;
    if !(1..=100).contains(&raw.cache.low_water_percent) {
        return Err(bad(
            "cache.low_water_percent".into(),
            format!("must be 1 to 100, not {}", raw.cache.low_water_percent),
        ));
    }
    let notify = resolve_notify(raw).map_err(|(key, reason)| bad(key, reason))?;
    if raw.notify_queue_max == 0 {
        return Err(bad("notify_queue_max".into(), "must be at least 1".into()));
    }
    // The certificate chain and key: read, parsed and matched now, not at startup.
    let tls = raw.tls.as_ref().map(tls::resolve).transpose()?;
    let mut auth = raw.auth.resolve().map_err(ConfigError::Auth)?;
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
        upstreams,
        gc: raw.gc.clone(),
        cache: CacheSettings::resolve(&raw.cache),
        tls,
        auth,
        notify,
        notify_queue_max: raw.notify_queue_max,
        ignored_env: Vec::new(),
    })
}

/// Check `[[notify]]`; an error is (dotted key, reason).
fn resolve_notify(raw: &RawConfig) -> Result<Vec<NotifySettings>, (String, String)> {
    let mut out: Vec<NotifySettings> = Vec::new();
    for (i, n) in raw.notify.iter().enumerate() {
        let key = |k: &str| format!("notify.{i}.{k}");
        let rest = n.url.strip_prefix("http://").or_else(|| n.url.strip_prefix("https://"));
        let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
        let host = host.map(|h| h.rsplit('@').next().unwrap_or_default()).filter(|h| !h.is_empty());
        let Some(host) = host else {
            return Err((key("url"), "must be an http:// or https:// URL with a host".into()));
        };
        let name = n.name.clone().unwrap_or_else(|| host.to_owned());
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-[]".contains(&b));
        if !name_ok {
            return Err((
                key("name"),
                format!("{name:?} must be 1-64 letters, digits and . _ : - (it names metrics)"),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err((key("name"), format!("{name:?} names two endpoints; give each its own name")));
        }
        let mut headers = Vec::new();
        for (h, v) in &n.headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err((key("headers"), format!("{h:?} is not a valid header name")));
            }
            if http::HeaderValue::from_str(v).is_err() {
                return Err((key("headers"), format!("the value of {h:?} is not a valid header value")));
            }
            headers.push((h.clone(), v.clone()));
        }
        if n.timeout.is_zero() {
            return Err((key("timeout"), "must be more than 0s".into()));
        }
        if n.backoff_min.is_zero() || n.backoff_min > n.backoff_max {
            return Err((key("backoff_min"), "must be more than 0s and at most backoff_max".into()));
        }
        for a in &n.actions {
            if a != "push" && a != "delete" {
                return Err((key("actions"), format!("{a:?} is not one of \"push\", \"delete\"")));
            }
        }
        let repositories = n
            .repositories
            .iter()
            .map(|p| auth::Pattern::parse(p).map_err(|e| (key("repositories"), format!("{p:?}: {e}"))))
            .collect::<Result<_, _>>()?;
        out.push(NotifySettings {
            name,
            url: n.url.clone(),
            headers,
            timeout: n.timeout,
            backoff_min: n.backoff_min,
            backoff_max: n.backoff_max,
            actions: n.actions.clone(),
            repositories,
        });
    }
    Ok(out)
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
        use self::auth::{compile, Access, Anonymous, Rule};
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
            let rule = Rule {
                repos: "team/**".into(),
                users: vec!["alice".into(), "*".into()],
                access: vec![Access::Pull, Access::Push],
            };
            assert_eq!(s.auth.rules, compile(&[rule]).expect("compiles"), "compiled once, at load");

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
    fn upstream_limits_are_checked_with_their_key_and_source() {
        figment::Jail::expect_with(|jail| {
            let up = |extra: &str| {
                format!("[[upstreams]]\nname = \"docker.io\"\nurl = \"http://regional:5000\"\n{extra}\n")
            };
            jail.create_file("w.toml", &up("max_concurrent_fetches = 4\nmax_bytes_per_sec = \"2MiB\""))?;
            let (_, s) = load(Some(Path::new("w.toml")), &Overrides::default()).expect("loads");
            assert_eq!(s.upstreams[0].max_concurrent_fetches, Some(4));
            assert_eq!(s.upstreams[0].max_bytes_per_sec, Some(2 << 20));
            jail.create_file("none.toml", &up(""))?;
            let (_, s) = load(Some(Path::new("none.toml")), &Overrides::default()).expect("loads");
            assert_eq!(
                (s.upstreams[0].max_concurrent_fetches, s.upstreams[0].max_bytes_per_sec),
                (None, None)
            );
            for (extra, want) in [
                (
                    "max_concurrent_fetches = 0",
                    "[[upstreams]] #1 max_concurrent_fetches in bad.toml: must be 1 to 10000 fetches at once, not 0 (leave it out for no limit)",
                ),
                (
                    "max_bytes_per_sec = \"1KiB\"",
                    "[[upstreams]] #1 max_bytes_per_sec in bad.toml: 1.0 KiB is under the least rate, 16.0 KiB per second (leave it out for no limit)",
                ),
            ] {
                jail.create_file("bad.toml", &up(extra))?;
                let err =
                    load(Some(Path::new("bad.toml")), &Overrides::default()).expect_err("bad").to_string();
                assert_eq!(err, want);
            }
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn upstream_namespace_is_a_name_prefix() {
        figment::Jail::expect_with(|jail| {
            let up = |ns: &str| {
                format!("[[upstreams]]\nname = \"docker.io\"\nurl = \"http://regional:5000\"\nnamespace = \"{ns}\"\n")
            };
            jail.create_file("w.toml", &up("docker.io"))?;
            let (_, s) = load(Some(Path::new("w.toml")), &Overrides::default()).expect("loads");
            assert_eq!(s.upstreams[0].namespace.as_deref(), Some("docker.io"));
            jail.create_file("bad.toml", &up("Docker.io/"))?;
            let err = load(Some(Path::new("bad.toml")), &Overrides::default()).expect_err("bad").to_string();
            assert_eq!(
                err,
                r#"[[upstreams]] #1 namespace in bad.toml: "Docker.io/" must be a repository-name prefix, like docker.io"#
            );
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

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn notify_endpoints_resolve_and_errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "w.toml",
                "notify_queue_max = 50\n[[notify]]\nurl = \"http://user:pw@hooks.local:8080/in\"\n\
                 headers = { Authorization = \"Bearer x\" }\nactions = [\"push\"]\nrepositories = [\"team/**\"]\n",
            )?;
            let (_, s) = load(Some(Path::new("w.toml")), &Overrides::default()).expect("loads");
            assert_eq!(s.notify_queue_max, 50);
            let n = &s.notify[0];
            assert_eq!(n.name, "hooks.local:8080", "the default name is host:port, never credentials");
            assert_eq!(n.timeout, Duration::from_secs(5));
            assert_eq!(n.headers, vec![("Authorization".to_owned(), "Bearer x".to_owned())]);
            assert!(n.repositories[0].matches("team/app") && !n.repositories[0].matches("other"));
            let ep = |extra: &str| format!("[[notify]]\nurl = \"http://h:1/\"\n{extra}");
            let cases = [
                (ep("actions = [\"pull\"]\n"), r#"[[notify]] #1 actions in bad.toml: "pull" is not one of "push", "delete""#.to_owned()),
                ("[[notify]]\nurl = \"ftp://h/\"\n".to_owned(), "[[notify]] #1 url in bad.toml: must be an http:// or https:// URL with a host".to_owned()),
                (ep("timeout = \"0s\"\n"), "[[notify]] #1 timeout in bad.toml: must be more than 0s".to_owned()),
                (ep("backoff_min = \"2m\"\n"), "[[notify]] #1 backoff_min in bad.toml: must be more than 0s and at most backoff_max".to_owned()),
                (ep("headers = { \"Bad Header\" = \"x\" }\n"), r#"[[notify]] #1 headers in bad.toml: "Bad Header" is not a valid header name"#.to_owned()),
                (ep("repositories = [\"Team/*\"]\n"), "[[notify]] #1 repositories in bad.toml: \"Team/*\": pattern \"Team/*\": character 'T' never occurs in a repository name (lowercase letters, digits, `.`, `_`, `-`, `/`; `*` and `**` are wildcards)".to_owned()),
                (format!("{}{}", ep(""), ep("")), r#"[[notify]] #2 name in bad.toml: "h:1" names two endpoints; give each its own name"#.to_owned()),
                (ep("uri = \"x\"\n"), "[[notify]] #1 uri in bad.toml: unknown key; did you mean url?".to_owned()),
            ];
            for (text, want) in cases {
                jail.create_file("bad.toml", &text)?;
                let err =
                    load(Some(Path::new("bad.toml")), &Overrides::default()).expect_err(&text).to_string();
                assert_eq!(err, want, "{text:?}");
            }
            Ok(())
        });
    }

    #[test]
    fn every_key_a_full_config_writes_is_known_to_the_environment_filter() {
        // The filter learns keys from the defaults, which leave unset options out: with
        // every option set, no key may be one the filter would drop.
        let full = RawConfig {
            tls: Some(TlsConfig { cert: "c.pem".into(), key: "k.pem".into() }),
            auth: AuthConfig {
                htpasswd: Some("h".into()),
                token_realm: Some("https://r/token".into()),
                ..AuthConfig::default()
            },
            ..RawConfig::default()
        };
        let mut keys = Vec::new();
        fn walk(prefix: &str, v: &figment::value::Value, out: &mut Vec<String>) {
            if let figment::value::Value::Dict(_, d) = v {
                for (k, v) in d {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                    out.push(key);
                }
            }
        }
        walk("", &figment::value::Value::serialize(&full).expect("serialize"), &mut keys);
        let known = known_keys();
        for k in &keys {
            assert!(known.contains(k), "{} ({k}) would be ignored as unknown", env_name(k));
        }
        assert_eq!(env_key("WHARFIE_CACHE__MAX_BYTES").as_deref(), Some("cache.max_bytes"));
        assert_eq!(env_key("wharfie_listen").as_deref(), Some("listen"));
        assert_eq!(env_key("WHARFIE_"), None);
        assert_eq!(env_key("OTHER_LISTEN"), None);
        assert_eq!(nearest("cache.max_byte", known.iter().map(String::as_str)), Some("cache.max_bytes"));
        assert_eq!(nearest("bin", known.iter().map(String::as_str)), None);
        assert_eq!(file_key(&["upstreams".into(), "1".into(), "url".into()]), "[[upstreams]] #2 url");
        assert_eq!(
            file_key(&["auth".into(), "rules".into(), "0".into(), "access".into(), "2".into()]),
            "[[auth.rules]] #1 access"
        );
        assert_eq!(file_key(&["gc".into(), "grace".into()]), "[gc] grace");
    }
}
