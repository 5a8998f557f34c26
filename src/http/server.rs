//! The accept loop: plain HTTP/1.1 and HTTP/2 (prior knowledge) on any number of
//! listeners, a connection limit, and a graceful drain on shutdown. Owning the loop
//! (rather than `warp::serve`) is what lets TLS slot in beside it later.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::auth::Authenticator;
use crate::service::Registry;

/// How long in-flight requests get to finish after shutdown is signalled.
const DRAIN: Duration = Duration::from_secs(30);

/// A TLS acceptor for the `[tls]` the configuration resolved (chain and key already read
/// and matched there): HTTP/2 and HTTP/1.1 offered through ALPN.
pub(crate) fn tls_acceptor(tls: &crate::config::TlsSettings) -> TlsAcceptor {
    let mut cfg = tokio_rustls::rustls::ServerConfig::clone(&tls.server);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(cfg))
}

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// HTTP/1 request headers must arrive within this.
    pub header_timeout: Duration,
    /// A request body idle for this long fails.
    pub body_timeout: Duration,
}

impl Limits {
    pub(crate) fn of(s: &crate::config::Settings) -> Self {
        Limits {
            max_connections: s.max_connections,
            header_timeout: s.header_timeout,
            body_timeout: s.body_timeout,
        }
    }
}

/// Serve `listeners` until `shutdown` resolves, then drain; with TLS on every listener
/// when `tls` is given.
///
/// Connections are served by one single-threaded runtime per core, each accepting on
/// every listener (nginx's shape: one event loop a core), not by the caller's
/// work-stealing runtime. A small request's work is a few microseconds, and on the
/// work-stealing runtime its workers woke each other through futexes for nearly every
/// one: per core, the server CPU per small GET went from 8.2–12.5 µs to 5.5–9.0 µs
/// (`cargo bench --bench compare`, beside nginx's 6.7–10.0). Everything heavy a request starts
/// (hashing, file I/O) is on a blocking pool already, so one connection cannot stall
/// the others on its core.
pub(crate) async fn serve_with(
    listeners: Vec<TcpListener>,
    reg: Arc<Registry>,
    auth: Arc<Authenticator>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let limit = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // `stop`: no more accepts. `drained`: the runtimes (and what is left on them) may end.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (drained_tx, drained_rx) = tokio::sync::watch::channel(false);
    // Every accept loop holds a sender: when all are gone, no loop can watch another
    // connection, and the drain can begin.
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut std_listeners = Vec::new();
    for l in listeners {
        match l.into_std() {
            Ok(l) => std_listeners.push(l),
            Err(e) => tracing::warn!(error = %e, "a listener could not be handed to the HTTP threads"),
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let core =
        Core { reg, auth, limits, tls, graceful: graceful.clone(), limit, stop: stop_rx, alive: alive_tx };
    let mut threads = Vec::new();
    for i in 0..cores {
        let mine: Vec<std::net::TcpListener> =
            std_listeners.iter().filter_map(|l| l.try_clone().ok()).collect();
        let core = core.clone();
        let drained = drained_rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("wharfie-http-{i}"))
            .spawn(move || core.run(mine, drained));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => tracing::warn!(error = %e, "an HTTP thread could not be started"),
        }
    }
    drop((std_listeners, core, drained_rx));
    shutdown.await;
    tracing::info!("shutting down: draining connections");
    let _ = stop_tx.send(true);
    // Every loop has stopped accepting once every sender is gone.
    let _ = alive_rx.recv().await;
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => {
            if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
                tracing::warn!("drain timed out; closing remaining connections");
            }
        }
        Err(_) => tracing::warn!("connections closed without a drain: an accept loop outlived its stop"),
    }
    let _ = drained_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
}

/// What one core's runtime serves with: its share of everything the accept loops need
/// (each loop holds a clone).
#[derive(Clone)]
struct Core {
    reg: Arc<Registry>,
    auth: Arc<Authenticator>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    graceful: Arc<GracefulShutdown>,
    limit: Arc<Semaphore>,
    stop: tokio::sync::watch::Receiver<bool>,
    /// Dropped when this core's loops have all ended.
    alive: tokio::sync::mpsc::Sender<()>,
}

impl Core {
    /// Run this core's runtime: accept on every listener until `stop`, then keep the
    /// connections it holds served until the drain is over.
    fn run(self, listeners: Vec<std::net::TcpListener>, mut drained: tokio::sync::watch::Receiver<bool>) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::warn!(error = %e, "an HTTP thread's runtime could not be built");
                return;
            }
        };
        rt.block_on(async move {
            let mut loops = Vec::new();
            for l in listeners {
                match TcpListener::from_std(l) {
                    Ok(l) => loops.push(tokio::spawn(self.clone().accept_loop(l))),
                    Err(e) => tracing::warn!(error = %e, "a listener could not join an HTTP thread"),
                }
            }
            drop(self);
            for l in loops {
                let _ = l.await;
            }
            let _ = drained.wait_for(|d| *d).await;
        });
        // Whatever is still running (a connection past the drain) ends here; blocking
        // work already started gets a moment to finish.
        rt.shutdown_timeout(Duration::from_secs(5));
    }

    fn accept_loop(self, listener: TcpListener) -> impl Future<Output = ()> + Send + 'static {
        let Core { reg, auth, limits, tls, graceful, limit, mut stop, alive } = self;
        async move {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let svc = super::service(reg, auth, scheme, limits.body_timeout);
            let mut builder = Builder::new(TokioExecutor::new());
            // Without a timer hyper applies no header timeout at all: a client that
            // never finishes its headers would hold a connection slot forever.
            builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            loop {
                let permit = tokio::select! {
                    p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    _ = stop.changed() => break,
                };
                let (stream, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(v) => v,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stop.changed() => break,
                };
                let _ = stream.set_nodelay(true);
                let hyper_svc = svc.clone();
                match &tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), hyper_svc).into_owned();
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                            drop(permit);
                        });
                    }
                    Some(acceptor) => {
                        // The handshake runs in the connection's task, never in the
                        // accept loop: a slow client cannot stall other accepts.
                        let (acceptor, builder, watcher) =
                            (acceptor.clone(), builder.clone(), graceful.watcher());
                        tokio::spawn(async move {
                            let hs =
                                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
                            let tls_stream = match hs {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn =
                                builder.serve_connection(TokioIo::new(tls_stream), hyper_svc).into_owned();
                            if let Err(e) = watcher.watch(conn).await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                            drop(permit);
                        });
                    }
                }
            }
            // This loop's share of the drain goes before its `alive` does: once the
            // last sender is gone, `serve_with` takes the drain for itself.
            drop(graceful);
            drop(alive);
        }
    }
}
