//! The HTTP server: the accept loop, the bound on open connections and
//! graceful shutdown. Each connection is served by [`connection::serve`]
//! under its header and idle timeouts.
//!
//! At most [`ConnectionLimits::max_connections`] connections are open at
//! once. At the bound the loop stops accepting: new clients wait in the
//! kernel's backlog until a connection ends (every one ends: the timeouts
//! close idle and slow clients), so a flood of connections can never make
//! the process run out of file descriptors, which would also fail its
//! Redis and database connections.
//!
//! Shutdown: stop accepting, tell every connection to finish (idle ones
//! close at once, a request in flight completes and its response says
//! `Connection: close`), then wait for all of them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::App;
use super::connection::{self, ConnectionMetrics};

/// How long the loop pauses after a failed `accept` (say, the process is
/// out of file descriptors for a moment), so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What bounds the server's connections (settings `HTTP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A client must send a complete request head within this long of
    /// opening the connection or of starting the head on a kept-alive one.
    pub header_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` completes, then lets the
/// open connections finish.
///
/// # Errors
/// Never in practice: failed accepts are logged and retried.
pub async fn serve(
    listener: TcpListener,
    app: App,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => {
                slot.expect("the semaphore is never closed")
            }
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let (app, stop, metrics) = (app.clone(), stop.clone(), metrics.clone());
        connections.spawn(async move {
            connection::serve(stream, app, limits, metrics, stop).await;
            drop(slot);
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}
