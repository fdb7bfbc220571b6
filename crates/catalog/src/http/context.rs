//! [`RequestContextLayer`]: the one middleware every request passes through.
//!
//! It gives each request an id (the client's `X-Request-Id`, or a new one)
//! and a tracing span carrying it, bounds the request by the timeout, turns a
//! panic into a 500 problem, turns bare error responses (axum's 405, the
//! timeout's 408) into problem+json, and echoes the id on the response.
//!
//! It also records the request's duration in `request_duration_seconds`
//! under its route template (e.g. `/products/{id}`; `unmatched` for
//! requests no route matches), so the number of series is bounded by the
//! routes, not by the ids clients ask for. Timeouts and panics are measured
//! too, since they are recorded here, outside them.
//!
//! It wraps the whole [`Router`](axum::Router), not each route: axum's
//! `Router::layer` wraps every route in a second boxed route, which costs
//! each request three allocations more (a boxed clone of the route, a boxed
//! future, and the clone of the inner route it calls). Outside the router,
//! axum's `MatchedPath` is not known yet, so the template is found by
//! matching the path against the router's templates with `matchit`, the
//! matcher axum routes with.
//!
//! These are the jobs of six tower-http layers (request id set and
//! propagate, trace, catch-panic, timeout, and a response mapper) plus a
//! metrics layer. They are one service here because every layer runs on the
//! cache-hit path, where each allocation shows: the response future is a
//! plain struct (no box), the only allocation is the header value of a new
//! id when the client sent none, and the timer is armed only for requests
//! that wait. The id is not added to the request: no handler reads it, and
//! the span carries it to every log line. The duration costs two reads of
//! quanta's TSC clock (see [`Metrics::start`]), a match of the path against
//! the templates (never a lookup in the metrics registry by name and
//! labels), one handle clone and two increments of per-thread stripes
//! ([`RequestTimer`]).

use std::convert::Infallible;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use tokio::time::Sleep;
use tower::{Layer, Service};
use tracing::Span;

use super::body::closing;
use super::error::{panic_response, problem, problem_for_bare_errors};
use crate::metrics::{Metrics, RequestTimer};

/// The request id header, read from clients and set on every response.
pub(super) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied request id we keep; longer ones are replaced.
const MAX_CLIENT_ID: usize = 128;

/// The `endpoint` label of requests no route matched.
const UNMATCHED: &str = "unmatched";

/// Builds [`RequestContext`] services.
#[derive(Debug, Clone)]
pub(super) struct RequestContextLayer {
    shared: Arc<Shared>,
}

/// What every [`RequestContext`] shares: behind one `Arc`, because axum
/// clones the service for every request.
#[derive(Debug)]
struct Shared {
    timers: RequestTimers,
    timeout: Duration,
}

impl RequestContextLayer {
    pub(super) fn new(timeout: Duration, timers: RequestTimers) -> Self {
        Self {
            shared: Arc::new(Shared { timers, timeout }),
        }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContext {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct RequestContext<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// `request_duration_seconds` handles by route template, registered when the
/// router is built.
#[derive(Debug)]
pub(super) struct RequestTimers {
    /// The router's templates, each with its series.
    templates: matchit::Router<Arc<RequestTimer>>,
    /// For requests no route matches (the 404 fallback), so that they add
    /// no series.
    unmatched: Arc<RequestTimer>,
}

impl RequestTimers {
    /// Registers one series per template in `templates`, plus `unmatched`.
    ///
    /// # Panics
    /// If a template is not valid `matchit` syntax or repeats one: the
    /// templates are those of the router, which axum has matched with the
    /// same `matchit`.
    pub(super) fn new<'a>(metrics: &Metrics, templates: impl IntoIterator<Item = &'a str>) -> Self {
        let mut matcher = matchit::Router::new();
        for template in templates {
            matcher
                .insert(template, metrics.request_timer(template))
                .unwrap_or_else(|err| panic!("route template {template:?}: {err}"));
        }
        Self {
            templates: matcher,
            unmatched: metrics.request_timer(UNMATCHED),
        }
    }

    fn for_request(&self, request: &Request) -> &Arc<RequestTimer> {
        match self.templates.at(request.uri().path()) {
            Ok(found) => found.value,
            Err(_) => &self.unmatched,
        }
    }
}

impl<S> Service<Request> for RequestContext<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ContextFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = quanta::Instant::now();
        let timer = Arc::clone(self.shared.timers.for_request(&request));
        let id = match request.headers().get(REQUEST_ID) {
            Some(id) if !id.is_empty() && id.len() <= MAX_CLIENT_ID => id.clone(),
            _ => request_ids::next(),
        };
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path(),
            request_id = ?id,
        );
        let response = self.inner.call(request);
        ContextFuture {
            response,
            deadline: None,
            timeout: self.shared.timeout,
            span,
            id: Some(id),
            timer,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a [`RequestContext`]. A struct rather than a boxed
    /// `async` block: one allocation less on every request.
    pub struct ContextFuture<F> {
        #[pin]
        response: F,
        // The timeout, armed only if the response does not come on the
        // first poll: a cache hit answers on the first poll, and a tokio
        // timer would cost it a clock read and a reference to the runtime's
        // shared timer state. A request that waits gets the full limit from
        // its second poll.
        #[pin]
        deadline: Option<Sleep>,
        timeout: Duration,
        span: Span,
        // Taken when the response is ready.
        id: Option<HeaderValue>,
        timer: Arc<RequestTimer>,
        started: quanta::Instant,
    }
}

impl<F> Future for ContextFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let polled = panic::catch_unwind(AssertUnwindSafe(|| this.response.as_mut().poll(cx)));
        let mut response = match polled {
            Ok(Poll::Ready(Ok(response))) => problem_for_bare_errors(response),
            Ok(Poll::Ready(Err(never))) => match never {},
            Err(panic) => panic_response(panic),
            Ok(Poll::Pending) => {
                if this.deadline.is_none() {
                    this.deadline.set(Some(tokio::time::sleep(*this.timeout)));
                }
                let Some(deadline) = this.deadline.as_pin_mut() else {
                    unreachable!("the deadline was armed above");
                };
                ready!(deadline.poll(cx));
                // Part of the request (its body) may still be unread: the
                // connection cannot carry another one.
                closing(problem(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request took too long".to_owned(),
                    None,
                ))
            }
        };
        tracing::debug!(status = response.status().as_u16(), "request finished");
        let id = this
            .id
            .take()
            .expect("a request's response is not polled after it is ready");
        response.headers_mut().insert(REQUEST_ID, id);
        this.timer.record(this.started.elapsed());
        Poll::Ready(Ok(response))
    }
}

/// Request ids for requests that bring none: this process's random prefix
/// and a counter (`4f1c9a2e-17`), unique across instances without a random
/// draw per request.
///
/// Each thread takes the counter's values in blocks of `ID_BLOCK` (1024),
/// so that the shared counter is written once per block rather than by
/// every request on every core; ids are unique, not in order of arrival.
/// The id is written into a stack buffer and copied once into its header
/// value.
mod request_ids {
    use std::cell::Cell;
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use axum::http::HeaderValue;

    /// Ids a thread takes from the shared counter at a time.
    const ID_BLOCK: u64 = 1024;

    /// Eight hex digits, drawn once per process.
    static PREFIX: LazyLock<String> = LazyLock::new(|| format!("{:08x}", rand::random::<u32>()));
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);

    thread_local! {
        /// The next id of this thread's block and the end of the block.
        static BLOCK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }

    fn next_number() -> u64 {
        BLOCK.with(|block| {
            let (mut next, mut end) = block.get();
            if next == end {
                next = NEXT_BLOCK.fetch_add(ID_BLOCK, Ordering::Relaxed) + 1;
                end = next + ID_BLOCK;
            }
            block.set((next + 1, end));
            next
        })
    }

    /// A new request id.
    pub(super) fn next() -> HeaderValue {
        let mut id = [0u8; 8 + 1 + 20];
        id[..8].copy_from_slice(PREFIX.as_bytes());
        id[8] = b'-';
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(next_number()).as_bytes();
        id[9..9 + digits.len()].copy_from_slice(digits);
        HeaderValue::from_bytes(&id[..9 + digits.len()])
            .expect("hex digits, a dash and a number are a valid header value")
    }

    #[cfg(test)]
    mod tests {
        use std::collections::HashSet;

        #[test]
        fn ids_are_the_prefix_and_a_distinct_number_across_threads() {
            let ids: Vec<String> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| (0..3000).map(|_| super::next()).collect::<Vec<_>>()))
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|worker| worker.join().unwrap())
                    .map(|id| id.to_str().unwrap().to_owned())
                    .collect()
            });

            let distinct: HashSet<&String> = ids.iter().collect();
            assert_eq!(distinct.len(), ids.len());
            for id in &ids {
                let (head, number) = id.split_once('-').unwrap();
                assert_eq!(head, *super::PREFIX);
                assert!(number.parse::<u64>().unwrap() > 0, "{id}");
            }
        }
    }
}
