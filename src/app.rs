//! Wiring: open the stores, build the `Registry`, spawn background tasks, serve.
//! `run(listeners, settings, shutdown)` is the one seam tests and `serve` share.
//!
//! Owns the bootstrap (`Server` and its options: TLS, stdout announcement, SIGHUP reload,
//! `sd_notify`) and the background tasks. May import every module: it is the wiring,
//! and nothing imports it but `cli`.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::blob::{BlobStore, FaultHook, NoFaults};
use crate::config::Settings;
use crate::meta::{Meta, MetaError};
use crate::service::{self, Metrics, Mirror, Options, Registry};
use crate::upstream::{Upstream, UpstreamConfig};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot open the metadata database: {0}")]
    Meta(#[from] MetaError),
    #[error("startup recovery failed: {0}")]
    Recover(#[from] service::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("upstream {name}: {reason}")]
    Upstream { name: String, reason: String },
    #[error("[auth] htpasswd: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Open the data directory and recover from whatever a previous run left.
pub async fn open(settings: &Settings) -> Result<Arc<Registry>, AppError> {
    open_with_hook(settings, Arc::new(NoFaults)).await
}

/// `open`, with a fault-injection hook the blob store consults before each write, fsync
/// and rename. A library-only seam for tests; the binary always passes `NoFaults`.
pub async fn open_with_hook(
    settings: &Settings,
    hook: Arc<dyn FaultHook>,
) -> Result<Arc<Registry>, AppError> {
    open_with_seams(settings, hook, None).await
}

/// `open_with_hook`, with the metadata store already opened by the caller (`Some`: the
/// power-loss tests' `Meta::open_with_backend`) instead of `meta.redb` in the data
/// directory. A library-only seam for tests.
pub async fn open_with_seams(
    settings: &Settings,
    hook: Arc<dyn FaultHook>,
    meta: Option<Meta>,
) -> Result<Arc<Registry>, AppError> {
    let dir = settings.data_dir.clone();
    let dir_err = |source| AppError::DataDir { path: dir.display().to_string(), source };
    std::fs::create_dir_all(&dir).map_err(dir_err)?;
    let blobs = BlobStore::with_hook(dir.clone(), hook).map_err(dir_err)?;
    let meta = match meta {
        Some(m) => m,
        None => {
            let db_path = dir.join("meta.redb");
            tokio::task::spawn_blocking(move || Meta::open(&db_path))
                .await
                .map_err(|e| AppError::Meta(MetaError::Storage(e.to_string().into())))??
        }
    };
    let opts = Options {
        max_manifest_bytes: settings.max_manifest_bytes,
        upload_ttl: settings.upload_ttl,
        cache_max_bytes: settings.cache.max_bytes,
        cache_low_bytes: settings.cache.low_water_bytes,
    };
    let metrics = Arc::new(Metrics::default());
    let mut mirrors = Vec::new();
    for u in &settings.upstreams {
        let mut up = Upstream::new(UpstreamConfig {
            name: u.name.clone(),
            url: u.url.clone(),
            credentials: u.credentials.clone().map(|c| (c.username, c.password)),
            ca_certs: u.ca_certs.clone(),
            deadline: u.timeout,
            namespace: u.namespace.clone(),
            down_min: u.down_min,
            down_max: u.down_max,
            max_concurrent_fetches: u.max_concurrent_fetches,
            max_bytes_per_sec: u.max_bytes_per_sec,
        })
        // Only the HTTP client's own start (its system roots) can fail here.
        .map_err(|e| AppError::Upstream { name: u.name.clone(), reason: e.to_string() })?;
        let (m, name) = (metrics.clone(), u.name.clone());
        up.on_request =
            Some(Arc::new(move |kind: &str, status: u16| m.upstream_request(&name, kind, status)));
        metrics.upstream_health(&u.name, true);
        let (m, name) = (metrics.clone(), u.name.clone());
        up.on_health = Some(Arc::new(move |is_up: bool| m.upstream_health(&name, is_up)));
        mirrors.push(Arc::new(Mirror {
            up,
            tag_ttl: u.tag_ttl,
            offline: u.offline,
            stale_if_error: u.stale_if_error,
            default: u.default,
            warm: u.warm.clone(),
            warm_platforms: u.warm_platforms.clone(),
            counters: metrics.upstream_counters(&u.name),
        }));
    }
    if !mirrors.is_empty() {
        let queues: Vec<_> = mirrors.iter().map(|m| (m.name().to_owned(), m.up.limits().clone())).collect();
        metrics.add_renderer(Box::new(move |o: &mut String| {
            crate::service::metrics::render_queues(&queues, o);
        }));
    }
    let reg = Arc::new(Registry::new(meta, blobs, opts, mirrors, metrics));
    reg.recover().await?;
    Ok(reg)
}

/// Serve on `listeners` until `shutdown` resolves.
pub async fn run(
    listeners: Vec<TcpListener>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    Server::new(settings).listeners(listeners).run(shutdown).await
}

/// `run`, with a fault-injection hook in the blob store (see `open_with_hook`).
pub async fn run_with_hook(
    listeners: Vec<TcpListener>,
    settings: Settings,
    hook: Arc<dyn FaultHook>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    run_with_seams(listeners, settings, hook, None, shutdown).await
}

/// `run_with_hook`, with a metadata store opened by the caller (see `open_with_seams`).
pub async fn run_with_seams(
    listeners: Vec<TcpListener>,
    settings: Settings,
    hook: Arc<dyn FaultHook>,
    meta: Option<Meta>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let mut server = Server::new(settings).listeners(listeners).fault_hook(hook);
    server.meta = meta;
    server.run(shutdown).await
}

/// The one way a wharfie server starts: `serve` (production), the tests' `run` and the
/// CLI's in-process server all build one of these. Options default to what a library
/// caller wants (TLS as `[tls]` says; no stdout line, no `sd_notify`, no SIGHUP handler);
/// `serve_blocking` turns on the operator-facing ones.
#[allow(clippy::struct_excessive_bools)] // independent on/off options of one builder
pub struct Server {
    settings: Settings,
    listeners: Option<Vec<TcpListener>>,
    hook: Arc<dyn FaultHook>,
    /// A metadata store opened by the caller (the power-loss tests' volatile backend).
    meta: Option<Meta>,
    tls: bool,
    auth: Option<Arc<Authenticator>>,
    announce: bool,
    notify: bool,
    reload: bool,
}

impl Server {
    pub fn new(settings: Settings) -> Self {
        Server {
            settings,
            listeners: None,
            hook: Arc::new(NoFaults),
            meta: None,
            tls: true,
            auth: None,
            announce: false,
            notify: false,
            reload: false,
        }
    }

    /// Serve on these listeners instead of binding `settings.listen`.
    #[must_use]
    pub fn listeners(mut self, listeners: Vec<TcpListener>) -> Self {
        self.listeners = Some(listeners);
        self
    }

    /// A fault-injection hook in the blob store (see [`open_with_hook`]).
    #[must_use]
    pub fn fault_hook(mut self, hook: Arc<dyn FaultHook>) -> Self {
        self.hook = hook;
        self
    }

    /// Speak TLS when `[tls]` is configured (the default); `false` serves plain HTTP.
    #[must_use]
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Use this authenticator instead of loading `[auth]` (the CLI's private server
    /// passes [`Authenticator::disabled`]).
    #[must_use]
    pub fn authenticator(mut self, auth: Arc<Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Print `listening on SCHEME://ADDR` on stdout once serving.
    #[must_use]
    pub fn announce(mut self, on: bool) -> Self {
        self.announce = on;
        self
    }

    /// Tell systemd READY=1 once serving and STOPPING=1 when the drain starts.
    #[must_use]
    pub fn notify(mut self, on: bool) -> Self {
        self.notify = on;
        self
    }

    /// Re-read the htpasswd file on SIGHUP.
    #[must_use]
    pub fn reload(mut self, on: bool) -> Self {
        self.reload = on;
        self
    }

    /// Bind, load the htpasswd file, open the stores and recover (TLS was read and checked
    /// with the configuration): every error a start can have, before anything is served (a held database is `AppError::Meta(MetaError::Locked)`).
    pub async fn start(self) -> Result<Started, AppError> {
        let s = &self.settings;
        let listeners = match self.listeners {
            Some(l) => l,
            None => vec![TcpListener::bind(s.listen)
                .await
                .map_err(|source| AppError::Bind { addr: s.listen.to_string(), source })?],
        };
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| AppError::Bind { addr: s.listen.to_string(), source })?;
        let tls = match (&s.tls, self.tls) {
            (Some(t), true) => Some(crate::http::server::tls_acceptor(t)),
            _ => None,
        };
        let auth = match self.auth {
            Some(a) => a,
            None => authenticator(s)?,
        };
        let reg = open_with_seams(s, self.hook, self.meta).await?;
        // Installed now, before READY=1 (see `shutdown_signal`).
        let hup = self.reload.then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()));
        Ok(Started {
            settings: self.settings,
            listeners,
            addrs,
            tls,
            auth,
            reg,
            announce: self.announce,
            notify: self.notify,
            hup,
        })
    }

    /// `start`, then serve until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        self.start().await?.run(shutdown).await
    }
}

/// A server whose stores are open and listeners bound: [`Started::run`] serves.
pub struct Started {
    settings: Settings,
    listeners: Vec<TcpListener>,
    addrs: Vec<std::net::SocketAddr>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Arc<Authenticator>,
    reg: Arc<Registry>,
    announce: bool,
    notify: bool,
    hup: Option<std::io::Result<tokio::signal::unix::Signal>>,
}

impl Started {
    /// The bound addresses, in the order of the listeners.
    pub fn addrs(&self) -> &[std::net::SocketAddr] {
        &self.addrs
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Serve until `shutdown` resolves, then drain and stop the background tasks.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let scheme = self.scheme();
        let s = &self.settings;
        if self.announce {
            for addr in &self.addrs {
                tracing::info!(%addr, data_dir = %s.data_dir.display(), scheme, "wharfie listening");
                // The one line on stdout: scripts and tests read the bound address from it.
                let mut out = std::io::stdout();
                let _ = writeln!(out, "listening on {scheme}://{addr}");
                let _ = out.flush();
            }
        }
        let reg = self.reg.clone();
        let Background { finish, mut tasks } = spawn_background(&self.reg, s);
        let source = crate::events::Source {
            addr: self.addrs.first().map_or_else(|| s.listen.to_string(), ToString::to_string),
            scheme,
            instance_id: uuid::Uuid::new_v4().to_string(),
        };
        let meta = self.reg.meta();
        tasks.extend(
            crate::events::start(meta, &s.notify, s.notify_queue_max, source, &self.reg.metrics).await?,
        );
        let limits = crate::http::server::Limits::of(s);
        let reload = self.hup.map(|hup| tokio::spawn(reload_on_sighup(self.auth.clone(), hup)));
        // systemd (Type=notify): ready once the listener is bound and the stores are open;
        // stopping as soon as the drain starts.
        let notify = self.notify;
        if notify {
            crate::notify::ready();
        }
        let shutdown = async {
            shutdown.await;
            if notify {
                crate::notify::stopping();
            }
        };
        crate::http::server::serve_with(self.listeners, self.reg, self.auth, limits, self.tls, shutdown)
            .await;
        if let Some(r) = reload {
            r.abort();
        }
        for t in tasks {
            t.abort();
        }
        // GC and eviction end after the batch in hand, so a clean stop leaves no blob
        // half deleted (a crash does, and startup finishes it); bounded, then cut.
        reg.begin_stop();
        for t in finish {
            let abort = t.abort_handle();
            if tokio::time::timeout(FINISH_WAIT, t).await.is_err() {
                tracing::warn!("a gc or eviction batch did not end in time; startup will finish it");
                abort.abort();
            }
        }
        Ok(())
    }
}

/// How long a stopping server waits for a GC or eviction batch to end.
const FINISH_WAIT: Duration = Duration::from_secs(20);

/// The background tasks: those that end at a clean point when the server stops
/// (`finish`), and those simply aborted (`tasks`: their work is durable per step).
struct Background {
    finish: Vec<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Load the htpasswd file (the rules were compiled with the configuration): a bad file
/// is a startup error, never an open registry.
fn authenticator(settings: &Settings) -> Result<Arc<Authenticator>, AppError> {
    let auth = Authenticator::new(settings.auth.clone())?;
    if auth.enabled() {
        let c = auth.config();
        tracing::info!(
            users = auth.user_count(),
            rules = c.rules.len(),
            // As the configuration spells it.
            anonymous = match c.anonymous {
                crate::auth::Anonymous::Pull => "pull",
                crate::auth::Anonymous::None => "none",
            },
            "authentication on"
        );
    }
    Ok(Arc::new(auth))
}

/// The server's periodic work: upload expiry, GC, the cache cap.
fn spawn_background(reg: &Arc<Registry>, s: &Settings) -> Background {
    let mut finish = Vec::new();
    let mut tasks = vec![
        tokio::spawn(expire_uploads(reg.clone(), s.upload_ttl)),
        // The web page's chart: counters into a ring of the last hour.
        tokio::spawn(crate::web::history::sample(reg.clone())),
    ];
    if !s.gc.interval.is_zero() {
        let (reg, gc) = (reg.clone(), s.gc.clone());
        finish.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(gc.interval);
            tick.tick().await; // not at startup: let recovery and clients go first
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = reg.until_stop() => break,
                }
                if let Err(e) = reg.gc(gc.grace, false).await {
                    tracing::warn!(error = %e, "scheduled gc failed");
                }
            }
        }));
    }
    // Warm lists: per upstream, a round at startup, then one every `tag_ttl`.
    for u in s.upstreams.iter().filter(|u| !u.warm.is_empty() && !u.offline) {
        let (reg, name, every) = (reg.clone(), u.name.clone(), u.tag_ttl.max(Duration::from_secs(1)));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                reg.warm_round(&name).await;
            }
        }));
    }
    let (reg, cache) = (reg.clone(), s.cache);
    finish.push(tokio::spawn(async move {
        // Persist access times in batches; each fill commit checks the cap at once, the
        // tick catches anything else (a lowered cap after a restart).
        let mut tick = tokio::time::interval(cache.check_interval.max(Duration::from_millis(100)));
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                () = reg.until_stop() => true,
            };
            // On the way out too: the last access times noted in memory order eviction.
            if let Err(e) = reg.flush_access().await {
                tracing::warn!(error = %e, "cannot persist access times");
            }
            if stopping {
                break;
            }
            if let Err(e) = reg.enforce_cap().await {
                tracing::warn!(error = %e, "eviction failed");
            }
        }
    }));
    Background { finish, tasks }
}

async fn expire_uploads(reg: Arc<Registry>, ttl: Duration) {
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match reg.expire_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "removed idle upload sessions"),
            Err(e) => tracing::warn!(error = %e, "upload expiry failed"),
        }
    }
}

/// `systemctl reload wharfie` / `kill -HUP`: re-read the htpasswd file (a bad file keeps
/// the users already loaded) and forget cached passwords. The handler is installed by
/// the caller before READY=1, for the same reason as [`shutdown_signal`]'s.
async fn reload_on_sighup(auth: Arc<Authenticator>, hup: std::io::Result<tokio::signal::unix::Signal>) {
    let Ok(mut hup) = hup else {
        return;
    };
    while hup.recv().await.is_some() {
        if !auth.enabled() {
            continue;
        }
        match auth.reload() {
            Ok(()) => tracing::info!(users = auth.user_count(), "reloaded the htpasswd file"),
            Err(e) => tracing::warn!(error = %e, "cannot reload the htpasswd file; keeping the users loaded"),
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now and returns a future that resolves on
/// the first of them. Called before the listening line and READY=1: a handler installed
/// lazily (when the future is first polled) leaves a window in which a SIGTERM sent
/// right after readiness (`systemctl stop` just after start) kills the process with the
/// default action instead of draining it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn recv(s: std::io::Result<Signal>) {
        match s {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    }
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    for (name, s) in [("SIGTERM", &term), ("SIGINT", &int)] {
        if let Err(e) = s {
            tracing::warn!(error = %e, signal = name, "cannot handle the signal; it will kill the server");
        }
    }
    async move {
        tokio::select! {
            () = recv(term) => {}
            () = recv(int) => {}
        }
    }
}

/// `wharfie serve`: bind, announce the address on stdout, run until a signal.
pub fn serve_blocking(settings: Settings) -> Result<(), AppError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wharfie")
        .build()
        .map_err(AppError::Runtime)?;
    rt.block_on(async move {
        let started = Server::new(settings).announce(true).notify(true).reload(true).start().await?;
        started.run(shutdown_signal()).await?;
        tracing::info!("wharfie stopped");
        Ok(())
    })
}
