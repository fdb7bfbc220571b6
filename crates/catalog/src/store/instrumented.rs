//! [`InstrumentedStore`]: a [`Store`] decorator that times every call into
//! `db_query_duration_seconds{op}` and wraps it in a `debug` span named
//! `store` with the `op` field, closed by a `store call finished` event with
//! the time taken (`RUST_LOG=catalog=debug` shows them, inside the request's
//! span and so with its request id).
//!
//! A decorator rather than code in each implementation, so that both stores
//! are measured the same way and neither knows about metrics. Failed calls
//! are timed too: a store that times out is exactly what the histogram must
//! show.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use metrics::Histogram;
use tracing::Instrument;

use super::{Expected, PageRequest, ProductChange, Store, StoreError, Updated};
use crate::domain::{NewProduct, Product, ProductPatch};
use crate::metrics::Metrics;

/// One histogram handle per operation, registered once when the decorator is
/// built, so a call never looks a series up by name.
#[derive(Debug)]
struct Timers {
    migrate: Histogram,
    ping: Histogram,
    get: Histogram,
    get_many: Histogram,
    list: Histogram,
    create: Histogram,
    create_many: Histogram,
    replace: Histogram,
    patch: Histogram,
    delete: Histogram,
    apply: Histogram,
    count: Histogram,
}

/// Wraps another store; behaves exactly like it, plus timing and spans.
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn Store>,
    timers: Timers,
}

impl InstrumentedStore {
    /// Wraps `inner`, registering its series in `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: &Metrics) -> Self {
        let timers = Timers {
            migrate: metrics.store_timer("migrate"),
            ping: metrics.store_timer("ping"),
            get: metrics.store_timer("get"),
            get_many: metrics.store_timer("get_many"),
            list: metrics.store_timer("list"),
            create: metrics.store_timer("create"),
            create_many: metrics.store_timer("create_many"),
            replace: metrics.store_timer("replace"),
            patch: metrics.store_timer("patch"),
            delete: metrics.store_timer("delete"),
            apply: metrics.store_timer("apply"),
            count: metrics.store_timer("count"),
        };
        Self { inner, timers }
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

#[async_trait]
impl Store for InstrumentedStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        timed("migrate", &self.timers.migrate, self.inner.migrate()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        timed("ping", &self.timers.ping, self.inner.ping()).await
    }

    /// Not timed: closing waits for in-flight queries, not the database.
    async fn close(&self) {
        self.inner.close().await;
    }

    async fn get(&self, id: i64) -> Result<Option<Product>, StoreError> {
        timed("get", &self.timers.get, self.inner.get(id)).await
    }

    async fn get_many(&self, ids: &[i64]) -> Result<Vec<Product>, StoreError> {
        timed("get_many", &self.timers.get_many, self.inner.get_many(ids)).await
    }

    async fn list(&self, page: &PageRequest) -> Result<Vec<Product>, StoreError> {
        timed("list", &self.timers.list, self.inner.list(page)).await
    }

    async fn create(&self, new: &NewProduct) -> Result<Product, StoreError> {
        timed("create", &self.timers.create, self.inner.create(new)).await
    }

    async fn create_many(&self, new: &[NewProduct]) -> Result<u64, StoreError> {
        timed(
            "create_many",
            &self.timers.create_many,
            self.inner.create_many(new),
        )
        .await
    }

    async fn replace(
        &self,
        id: i64,
        new: &NewProduct,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        timed(
            "replace",
            &self.timers.replace,
            self.inner.replace(id, new, expected),
        )
        .await
    }

    async fn patch(
        &self,
        id: i64,
        patch: &ProductPatch,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        timed(
            "patch",
            &self.timers.patch,
            self.inner.patch(id, patch, expected),
        )
        .await
    }

    async fn delete(&self, id: i64, expected: Expected) -> Result<Product, StoreError> {
        timed(
            "delete",
            &self.timers.delete,
            self.inner.delete(id, expected),
        )
        .await
    }

    async fn apply(&self, changes: &[ProductChange]) -> Result<(), StoreError> {
        timed("apply", &self.timers.apply, self.inner.apply(changes)).await
    }

    async fn count(&self) -> Result<i64, StoreError> {
        timed("count", &self.timers.count, self.inner.count()).await
    }
}
