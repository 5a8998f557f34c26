//! Wiring: open the stores, build the `Registry`, spawn background tasks, serve.
//! `run(listeners, settings, shutdown)` is the one seam tests and `serve` share.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

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
    #[error("TLS: {0}")]
    Tls(String),
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
    let dir = settings.data_dir.clone();
    let dir_err = |source| AppError::DataDir { path: dir.display().to_string(), source };
    std::fs::create_dir_all(&dir).map_err(dir_err)?;
    let blobs = BlobStore::with_hook(dir.clone(), hook).map_err(dir_err)?;
    let db_path = dir.join("meta.redb");
    let meta = tokio::task::spawn_blocking(move || Meta::open(&db_path))
        .await
        .map_err(|e| AppError::Meta(MetaError::Storage(e.to_string().into())))??;
    let opts = Options { max_manifest_bytes: settings.max_manifest_bytes, upload_ttl: settings.upload_ttl };
    let metrics = Arc::new(Metrics::default());
    let mut mirrors = Vec::new();
    for u in &settings.upstreams {
        let mut up = Upstream::new(UpstreamConfig {
            name: u.name.clone(),
            url: u.url.clone(),
            username: u.username.clone(),
            password: u.password.clone(),
            ca_file: u.ca_file.clone(),
            deadline: u.timeout,
        })
        .map_err(|e| AppError::Upstream { name: u.name.clone(), reason: e.to_string() })?;
        let (m, name) = (metrics.clone(), u.name.clone());
        up.on_request =
            Some(Arc::new(move |kind: &str, status: u16| m.upstream_request(&name, kind, status)));
        mirrors.push(Arc::new(Mirror {
            up,
            tag_ttl: u.tag_ttl,
            offline: u.offline,
            stale_if_error: u.stale_if_error,
            default: u.default,
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
    run_with_hook(listeners, settings, Arc::new(NoFaults), shutdown).await
}

/// `run`, with a fault-injection hook in the blob store (see `open_with_hook`).
pub async fn run_with_hook(
    listeners: Vec<TcpListener>,
    settings: Settings,
    hook: Arc<dyn FaultHook>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let reg = open_with_hook(&settings, hook).await?;
    let tasks = spawn_background(&reg, &settings);
    crate::http::server::serve(listeners, reg, crate::http::server::Limits::of(&settings), shutdown).await;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// The server's periodic work: upload expiry, GC, the cache cap.
fn spawn_background(reg: &Arc<Registry>, s: &Settings) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(expire_uploads(reg.clone(), s.upload_ttl))];
    if !s.gc.interval.is_zero() {
        let (reg, gc) = (reg.clone(), s.gc.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(gc.interval);
            tick.tick().await; // not at startup: let recovery and clients go first
            loop {
                tick.tick().await;
                if let Err(e) = reg.gc(gc.grace, false).await {
                    tracing::warn!(error = %e, "scheduled gc failed");
                }
            }
        }));
    }
    let (reg, cache) = (reg.clone(), s.cache.clone());
    tasks.push(tokio::spawn(async move {
        let cap = cache.max_bytes.as_u64();
        let low = cap / 100 * u64::from(cache.low_water_percent);
        let mut tick = tokio::time::interval(cache.check_interval.max(Duration::from_secs(1)));
        loop {
            // The tick persists access times; a fill commit checks the cap at once.
            tokio::select! {
                _ = tick.tick() => {}
                () = reg.filled.notified(), if cap > 0 => {}
            }
            if let Err(e) = reg.flush_access().await {
                tracing::warn!(error = %e, "cannot persist access times");
            }
            if cap > 0 {
                if let Err(e) = reg.evict(cap, low).await {
                    tracing::warn!(error = %e, "eviction failed");
                }
            }
        }
    }));
    tasks
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

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
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
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| AppError::Bind { addr: settings.listen.to_string(), source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| AppError::Bind { addr: settings.listen.to_string(), source })?;
        let tls = match &settings.tls {
            Some(t) => Some(crate::http::server::tls_acceptor(&t.cert, &t.key).map_err(AppError::Tls)?),
            None => None,
        };
        let reg = open(&settings).await?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, data_dir = %settings.data_dir.display(), scheme, "wharfie listening");
        // The one line on stdout: scripts and tests read the bound address from it.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "listening on {scheme}://{addr}");
        let _ = out.flush();
        let tasks = spawn_background(&reg, &settings);
        let limits = crate::http::server::Limits::of(&settings);
        // systemd (Type=notify): ready once the listener is bound and the stores are open;
        // stopping as soon as a signal starts the drain.
        crate::notify::ready();
        let shutdown = async {
            shutdown_signal().await;
            crate::notify::stopping();
        };
        crate::http::server::serve_with(vec![listener], reg, limits, tls, shutdown).await;
        for t in tasks {
            t.abort();
        }
        tracing::info!("wharfie stopped");
        Ok(())
    })
}
