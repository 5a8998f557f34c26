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
pub(crate) async fn serve_with(
    listeners: Vec<TcpListener>,
    reg: Arc<Registry>,
    auth: Arc<Authenticator>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let svc = super::service(reg, auth, scheme, limits.body_timeout);
    let graceful = Arc::new(GracefulShutdown::new());
    let limit = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut loops = Vec::new();
    for listener in listeners {
        let svc = svc.clone();
        let graceful = graceful.clone();
        let limit = limit.clone();
        let mut stop = stop_rx.clone();
        let tls = tls.clone();
        loops.push(tokio::spawn(async move {
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
        }));
    }
    shutdown.await;
    tracing::info!("shutting down: draining connections");
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        return;
    };
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain timed out; closing remaining connections");
    }
}
