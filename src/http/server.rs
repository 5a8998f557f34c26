//! The accept loop: plain HTTP/1.1 and HTTP/2 (prior knowledge) on any number of
//! listeners, a connection limit, and a graceful drain on shutdown. Owning the loop
//! (rather than `warp::serve`) is what lets TLS slot in beside it later.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::service::Registry;

/// How long in-flight requests get to finish after shutdown is signalled.
const DRAIN: Duration = Duration::from_secs(30);

/// Serve `listeners` until `shutdown` resolves, then drain.
pub async fn serve(
    listeners: Vec<TcpListener>,
    reg: Arc<Registry>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let svc = warp::service(super::routes(reg));
    let graceful = Arc::new(GracefulShutdown::new());
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut loops = Vec::new();
    for listener in listeners {
        let svc = svc.clone();
        let graceful = graceful.clone();
        let limit = limit.clone();
        let mut stop = stop_rx.clone();
        loops.push(tokio::spawn(async move {
            let builder = Builder::new(TokioExecutor::new());
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
                let conn = builder
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc.clone()))
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    drop(permit);
                });
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
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
}
