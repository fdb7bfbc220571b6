//! One HTTP/1.1 connection, served by hyper under the header and idle
//! timeouts of [`ConnectionLimits`].
//!
//! Without them a client that opens a connection and sends nothing, one
//! that trickles a header line every few seconds (slowloris), and an idle
//! keep-alive connection all hold a file descriptor forever. hyper's own
//! `header_read_timeout` cannot tell the last two apart (its clock also
//! runs while a kept-alive connection waits for its next request), so the
//! connection is watched here, the way Go's `ReadHeaderTimeout` and
//! `IdleTimeout` work:
//!
//! - **head**: from the opening of the connection, or from the first byte
//!   of a later request, the request head must be complete within
//!   `header_timeout`; otherwise the connection is dropped;
//! - **idle**: from the end of a response, the next request must start
//!   within `idle_timeout`; otherwise the connection is shut down
//!   gracefully (nothing is in flight, so it closes at once);
//! - **busy**: while a request is being answered neither applies; the
//!   request timeout bounds it (its 408 closes the connection).
//!
//! The state lives in an [`Activity`] shared by the socket wrapper, which
//! notes the first byte of a head, and the service wrapper, which notes a
//! request's start and its response's end: two relaxed atomic writes and a
//! clock read per request, on an allocation made once per connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use metrics::{Counter, Gauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::App;
use super::server::ConnectionLimits;
use crate::metrics::{HTTP_CONNECTION_TIMEOUTS, HTTP_CONNECTIONS_OPEN, Metrics};

/// The series the connections update; registered once, cloned per
/// connection.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    open: Gauge,
    header_timeouts: Counter,
    idle_timeouts: Counter,
}

impl ConnectionMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            open: metrics.gauge(HTTP_CONNECTIONS_OPEN),
            header_timeouts: metrics.labelled_counter(HTTP_CONNECTION_TIMEOUTS, "kind", "header"),
            idle_timeouts: metrics.labelled_counter(HTTP_CONNECTION_TIMEOUTS, "kind", "idle"),
        }
    }
}

/// Counts a connection as open for as long as it lives.
struct Open(Gauge);

impl Open {
    fn new(gauge: &Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Serves one connection until the client closes it, a timeout ends it, or
/// `stop` asks it to finish.
pub(super) async fn serve(
    stream: TcpStream,
    app: App,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
) {
    let _open = Open::new(&metrics.open);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: Arc::clone(&activity),
    });
    let service = TowerToHyperService::new(Tracked {
        app,
        activity: Arc::clone(&activity),
    });
    let connection = http1::Builder::new()
        // Replaced by the watch below (see the module documentation).
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let watch = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(watch);
    let mut finishing = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "HTTP connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !finishing => {
                connection.as_mut().graceful_shutdown();
                finishing = true;
            }
            () = &mut watch => match activity.due(limits) {
                Due::At(at) => watch.as_mut().reset(at),
                Due::Header => {
                    metrics.header_timeouts.increment(1);
                    return;
                }
                // Already told to finish and still open: drop it.
                Due::Idle if finishing => return,
                Due::Idle => {
                    metrics.idle_timeouts.increment(1);
                    connection.as_mut().graceful_shutdown();
                    finishing = true;
                    watch.as_mut().reset(Instant::now() + limits.header_timeout);
                }
            },
        }
    }
}

/// "Not set" in [`Activity`]'s time fields.
const NEVER: u64 = u64::MAX;

/// What a connection is doing, as times in milliseconds since it opened.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Requests being answered.
    in_flight: AtomicU32,
    /// When the request head being read began ([`NEVER`]: none is).
    head_since: AtomicU64,
    /// When the last response finished ([`NEVER`]: none has).
    idle_since: AtomicU64,
}

/// What the watch should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Nothing yet: look again at this time.
    At(Instant),
    /// A request head took longer than the header timeout.
    Header,
    /// No request came within the idle timeout.
    Idle,
}

impl Activity {
    /// A new connection: its first request head is awaited from now.
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            head_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(NEVER),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.opened + Duration::from_millis(millis)
    }

    /// Bytes arrived: between requests, they start the next head.
    fn on_bytes(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == NEVER
        {
            self.head_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// A request head was read and the request handed to the app.
    fn on_request(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(NEVER, Ordering::Relaxed);
    }

    /// A response was produced (or its request abandoned).
    fn on_response(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now(), Ordering::Relaxed);
        }
    }

    fn due(&self, limits: ConnectionLimits) -> Due {
        let now = self.now();
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            let recheck = limits.header_timeout.min(limits.idle_timeout);
            return Due::At(Instant::now() + recheck);
        }
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NEVER - 1);
        let (since, limit, verdict) = match self.head_since.load(Ordering::Relaxed) {
            NEVER => (
                self.idle_since.load(Ordering::Relaxed),
                millis(limits.idle_timeout),
                Due::Idle,
            ),
            head => (head, millis(limits.header_timeout), Due::Header),
        };
        let deadline = since.saturating_add(limit);
        if now >= deadline {
            verdict
        } else {
            Due::At(self.at(deadline))
        }
    }
}

/// The socket, noting when a request head begins.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_bytes();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The app, noting when a request starts and its response is ready.
#[derive(Clone)]
struct Tracked {
    app: App,
    activity: Arc<Activity>,
}

impl Service<Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = TrackedFuture<<App as Service<Request>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.app.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        self.activity.on_request();
        TrackedFuture {
            response: self.app.call(request.map(Body::new)),
            _in_flight: InFlight(Arc::clone(&self.activity)),
        }
    }
}

/// Ends a request's time in flight when its future goes: answered, or
/// dropped because the client left.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.on_response();
    }
}

pin_project_lite::pin_project! {
    /// The app's response future, carrying its request's [`InFlight`].
    struct TrackedFuture<F> {
        #[pin]
        response: F,
        _in_flight: InFlight,
    }
}

impl<F: Future> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().response.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 1,
    };

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_gets_the_header_timeout() {
        let activity = Activity::new();
        assert_eq!(activity.due(LIMITS), Due::At(activity.at(10_000)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(activity.due(LIMITS), Due::Header);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_does_not_extend_the_header_timeout() {
        let activity = Activity::new();
        for _ in 0..9 {
            tokio::time::advance(Duration::from_secs(1)).await;
            activity.on_bytes();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(activity.due(LIMITS), Due::Header);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_response_the_idle_timeout_applies_then_the_header_one() {
        let activity = Activity::new();
        activity.on_request();
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(matches!(activity.due(LIMITS), Due::At(_)), "busy");
        activity.on_response();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(activity.due(LIMITS), Due::At(activity.at(160_000)));
        activity.on_bytes();
        assert_eq!(activity.due(LIMITS), Due::At(activity.at(169_000)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(activity.due(LIMITS), Due::Header);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out() {
        let activity = Activity::new();
        activity.on_request();
        activity.on_response();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(activity.due(LIMITS), Due::Idle);
    }
}
