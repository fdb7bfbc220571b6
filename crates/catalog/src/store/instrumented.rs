//! [`InstrumentedStore`]: a [`Store`] decorator that times every call into
//! `db_query_duration_seconds{op}` and wraps it in a `debug` span named
//! `store` with the `op` field, closed by a `store call finished` event with
//! the time taken (`RUST_LOG=catalog=debug` shows them, inside the request's
//! span and so with its request id).
//!
//! A decorator rather than code in the store, so that every call is
//! measured the same way on both databases and the store itself knows
//! nothing of timing. Failed calls
//! are timed too: a store that times out is exactly what the histogram must
//! show. `close` is not timed: closing waits for in-flight queries, not the
//! database.

use std::future::Future;
use std::sync::Arc;

use metrics::Histogram;
use tracing::Instrument;

use super::decorator::{Decorator, Op, StoreMetrics};
use super::{Store, StoreError};

/// Wraps another store; behaves exactly like it, plus timing and spans.
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn Store>,
    /// One histogram handle per [`Op`], in the order of [`Op::ALL`],
    /// registered once when the decorator is built, so a call never looks a
    /// series up by name.
    timers: [Histogram; Op::ALL.len()],
}

impl InstrumentedStore {
    /// Wraps `inner`, registering its series in `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: &dyn StoreMetrics) -> Self {
        Self {
            inner,
            timers: Op::ALL.map(|op| metrics.query_duration(op)),
        }
    }
}

impl Decorator for InstrumentedStore {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }

    fn around<T: Send>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> impl Future<Output = Result<T, StoreError>> + Send {
        timed(op.as_str(), &self.timers[op as usize], call)
    }
}

/// Runs `call` inside a `store` span for `op`, records its duration, and
/// ends the span with a `debug` event (a span alone prints nothing).
async fn timed<T>(
    op: &'static str,
    timer: &Histogram,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let span = tracing::debug_span!("store", op);
    let started = quanta::Instant::now();
    let output = call.instrument(span.clone()).await;
    let elapsed = started.elapsed();
    timer.record(elapsed);
    span.in_scope(|| {
        tracing::debug!(
            elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            ok = output.is_ok(),
            "store call finished"
        );
    });
    output
}
