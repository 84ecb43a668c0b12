//! Serving connections on a listener, one hyper connection per socket.
//!
//! Owns the accept loop and the per-connection [`ConnKill`] token that lets
//! the gate close a connection mid-request, which `axum::serve` cannot do.
//! Knows nothing about routes.

use std::time::Duration;

use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::gate::ConnKill;

/// Accepts connections until `shutdown` fires; every task goes on `tracker`.
pub(crate) fn spawn(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let conns = tracker.clone();
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        conns.spawn(serve(stream, router.clone(), shutdown.clone()));
                    }
                    Err(e) => {
                        // Usually out of file descriptors: a short pause lets
                        // connections close instead of spinning on the error.
                        tracing::warn!("sandbox accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    });
}

async fn serve(stream: TcpStream, router: Router, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let kill = CancellationToken::new();
    let service = TowerToHyperService::new(router.layer(Extension(ConnKill(kill.clone()))));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    // Dropping `conn` drops the socket: the client sees EOF with no response.
    tokio::select! {
        _ = conn => {}
        _ = kill.cancelled() => {}
        _ = shutdown.cancelled() => {}
    }
}
