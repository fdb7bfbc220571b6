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
//! The connection's socket wrapper notes the first byte of a head and its
//! service wrapper a request's start and its response's end, in an
//! [`Activity`]: two relaxed increments per request, no clock read. A
//! watch task of its own looks at it every quarter of the shorter timeout
//! and orders the connection finished or closed, so timeouts are enforced
//! to within that tick (2.5 s with the defaults).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
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
///
/// The connection's task polls only the connection and a channel of
/// orders: the watch runs in a task of its own, woken by its timer, so
/// that a request pays nothing for it.
pub(super) async fn serve(
    stream: TcpStream,
    app: App,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
) {
    let _open = Open::new(&metrics.open);
    let activity = Arc::new(Activity::default());
    let (orders, mut ordered) = mpsc::channel(2);
    let _watch = AbortOnDropHandle::new(tokio::spawn(watch(
        Arc::clone(&activity),
        limits,
        metrics,
        stop,
        orders,
    )));
    let io = TokioIo::new(Watched {
        stream,
        activity: Arc::clone(&activity),
    });
    let service = TowerToHyperService::new(Tracked { app, activity });
    let connection = http1::Builder::new()
        // Replaced by the watch (see the module documentation).
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    loop {
        tokio::select! {
            biased;
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "HTTP connection ended with an error");
                }
                return;
            }
            order = ordered.recv() => match order {
                Some(Order::Finish) => connection.as_mut().graceful_shutdown(),
                Some(Order::Close) | None => return,
            },
        }
    }
}

/// What the watch tells a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Answer the request in flight, if any, then close.
    Finish,
    /// Close now.
    Close,
}

/// Watches one connection: looks at its [`Activity`] every tick (a
/// quarter of the shorter timeout), and orders it closed when a timeout
/// has passed or finished when the server stops. Timeouts are therefore
/// enforced to within a tick.
async fn watch(
    activity: Arc<Activity>,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
    orders: mpsc::Sender<Order>,
) {
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 4).max(MIN_TICK);
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watcher = Watcher::new(Instant::now());
    let order = loop {
        tokio::select! {
            () = stop.cancelled() => break Order::Finish,
            now = ticks.tick() => match watcher.look(&activity, now, limits) {
                Due::Nothing => {}
                Due::Header => {
                    metrics.header_timeouts.increment(1);
                    break Order::Close;
                }
                Due::Idle => {
                    metrics.idle_timeouts.increment(1);
                    break Order::Finish;
                }
            },
        }
    };
    // The connection may have ended meanwhile: then nobody listens.
    let _ = orders.send(order).await;
}

/// Shortest interval between two looks at a connection.
const MIN_TICK: Duration = Duration::from_millis(50);

/// What a connection does, counted by its socket and its service: the
/// only state a request touches (two relaxed increments, and a few loads
/// per read).
#[derive(Debug, Default)]
struct Activity {
    /// Requests handed to the app.
    started: AtomicU64,
    /// Requests answered (or abandoned).
    finished: AtomicU64,
    /// Bytes arrived while no request was in flight: a head is being read.
    head: AtomicBool,
}

impl Activity {
    /// Bytes arrived: between requests, they start the next head.
    fn on_bytes(&self) {
        if !self.head.load(Ordering::Relaxed)
            && self.started.load(Ordering::Relaxed) == self.finished.load(Ordering::Relaxed)
        {
            self.head.store(true, Ordering::Relaxed);
        }
    }

    /// A request head was read and the request handed to the app.
    fn on_request(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.head.store(false, Ordering::Relaxed);
    }

    /// A response was produced (or its request abandoned).
    fn on_response(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the watch should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Nothing,
    /// A request head took longer than the header timeout.
    Header,
    /// No request came within the idle timeout.
    Idle,
}

/// The watch's view of a connection, kept between looks.
#[derive(Debug)]
struct Watcher {
    /// The counters at the last look.
    seen: (u64, u64),
    /// When the connection was last seen busy or a request was seen done.
    idle_since: Instant,
    /// When a head was first seen being read; a new connection awaits its
    /// first head from its opening.
    head_since: Option<Instant>,
}

impl Watcher {
    fn new(opened: Instant) -> Self {
        Self {
            seen: (0, 0),
            idle_since: opened,
            head_since: Some(opened),
        }
    }

    fn look(&mut self, activity: &Activity, now: Instant, limits: ConnectionLimits) -> Due {
        let counters = (
            activity.started.load(Ordering::Relaxed),
            activity.finished.load(Ordering::Relaxed),
        );
        if counters.0 != counters.1 || counters != self.seen {
            // Busy, or a request came and went since the last look.
            self.seen = counters;
            self.idle_since = now;
            self.head_since = None;
        }
        if counters.0 != counters.1 {
            return Due::Nothing;
        }
        if activity.head.load(Ordering::Relaxed) {
            self.head_since.get_or_insert(now);
        }
        match self.head_since {
            Some(since) if now.duration_since(since) >= limits.header_timeout => Due::Header,
            Some(_) => Due::Nothing,
            None if now.duration_since(self.idle_since) >= limits.idle_timeout => Due::Idle,
            None => Due::Nothing,
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

    /// A new connection's activity and a function looking at it after
    /// that many seconds.
    fn opened() -> (Arc<Activity>, impl FnMut(u64) -> Due) {
        let activity = Arc::new(Activity::default());
        let opened = Instant::now();
        let mut watcher = Watcher::new(opened);
        let watched = Arc::clone(&activity);
        let look =
            move |seconds| watcher.look(&watched, opened + Duration::from_secs(seconds), LIMITS);
        (activity, look)
    }

    #[test]
    fn a_new_connection_gets_the_header_timeout() {
        let (_, mut look) = opened();
        assert_eq!((look(9), look(10)), (Due::Nothing, Due::Header));
    }

    #[test]
    fn a_trickled_head_does_not_extend_the_header_timeout() {
        let (activity, mut look) = opened();
        for second in 1..10 {
            activity.on_bytes();
            assert_eq!(look(second), Due::Nothing);
        }
        assert_eq!(look(10), Due::Header);
    }

    #[test]
    fn after_a_response_the_idle_timeout_applies_then_the_header_one() {
        let (activity, mut look) = opened();
        activity.on_bytes();
        activity.on_request();
        assert_eq!(look(100), Due::Nothing, "busy");
        activity.on_response();
        assert_eq!((look(101), look(160)), (Due::Nothing, Due::Nothing));
        activity.on_bytes();
        assert_eq!(
            (look(161), look(170)),
            (Due::Nothing, Due::Nothing),
            "a head"
        );
        assert_eq!(look(171), Due::Header);
    }

    #[test]
    fn an_idle_connection_times_out_and_a_new_request_restarts_the_clock() {
        let (activity, mut look) = opened();
        activity.on_request();
        activity.on_response();
        assert_eq!(look(1), Due::Nothing);
        // A request came and went between two looks: idle from the later look.
        activity.on_request();
        activity.on_response();
        assert_eq!((look(50), look(109)), (Due::Nothing, Due::Nothing));
        assert_eq!(look(110), Due::Idle);
    }
}
