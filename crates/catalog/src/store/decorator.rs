//! How a [`Store`] that wraps another one is written: a [`Decorator`] names
//! its inner store, may wrap every call ([`Decorator::around`]) and
//! overrides only what it changes; one blanket `impl Store` forwards the
//! rest. Also [`StoreMetrics`], the figures decorators keep, which the
//! metrics registry provides (the store knows no metric name).
//!
//! The forwarding adds no allocation: the blanket impl boxes each call's
//! future once, as any `#[async_trait]` impl does, and the hooks it calls
//! return unboxed futures.

use std::future::Future;

use async_trait::async_trait;
use metrics::{Counter, Gauge, Histogram};

use super::{Expected, PageRequest, ProductChange, Store, StoreError, Updated};
use crate::domain::{NewProduct, Product, ProductPatch};

/// A store call a decorator can wrap: every [`Store`] method but `close`,
/// which answers nothing and is always passed straight through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Migrate,
    Ping,
    Get,
    GetMany,
    List,
    Create,
    CreateMany,
    Replace,
    Patch,
    Delete,
    Apply,
    Count,
}

impl Op {
    /// Every operation, in the order of the `Store` trait.
    pub const ALL: [Self; 12] = [
        Self::Migrate,
        Self::Ping,
        Self::Get,
        Self::GetMany,
        Self::List,
        Self::Create,
        Self::CreateMany,
        Self::Replace,
        Self::Patch,
        Self::Delete,
        Self::Apply,
        Self::Count,
    ];

    /// The method's name: the `op` of spans and of `db_query_duration_seconds`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Migrate => "migrate",
            Self::Ping => "ping",
            Self::Get => "get",
            Self::GetMany => "get_many",
            Self::List => "list",
            Self::Create => "create",
            Self::CreateMany => "create_many",
            Self::Replace => "replace",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::Apply => "apply",
            Self::Count => "count",
        }
    }
}

/// The figures the store's decorators keep, as handles registered once (a
/// call never looks a series up). The metrics registry implements it.
pub trait StoreMetrics {
    /// The duration histogram of `op`.
    fn query_duration(&self, op: Op) -> Histogram;
    /// Counts single-product reads that went out in batch queries.
    fn batched_reads(&self) -> Counter;
    /// Counts the batch queries those reads took.
    fn read_batches(&self) -> Counter;
    /// 1 while the circuit breaker refuses calls, else 0.
    fn circuit_open(&self) -> Gauge;
}

/// A [`Store`] that wraps another one. Implementing it implements `Store`:
/// each call goes to [`inner`](Self::inner) through
/// [`around`](Self::around), except those the decorator overrides here.
/// A decorator that must change another method gets a hook like
/// [`get`](Self::get) added here.
pub(crate) trait Decorator: Send + Sync + std::fmt::Debug {
    /// The wrapped store.
    fn inner(&self) -> &dyn Store;

    /// Runs `call`, the inner store's answer to `op`; by default as it is.
    fn around<T: Send>(
        &self,
        _op: Op,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> impl Future<Output = Result<T, StoreError>> + Send {
        call
    }

    /// [`Store::get`]: by default the inner store's answer, through
    /// [`around`](Self::around).
    fn get(&self, id: i64) -> impl Future<Output = Result<Option<Product>, StoreError>> + Send {
        self.around(Op::Get, self.inner().get(id))
    }
}

#[async_trait]
impl<D: Decorator> Store for D {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.around(Op::Migrate, self.inner().migrate()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.around(Op::Ping, self.inner().ping()).await
    }

    async fn close(&self) {
        self.inner().close().await;
    }

    async fn get(&self, id: i64) -> Result<Option<Product>, StoreError> {
        Decorator::get(self, id).await
    }

    async fn get_many(&self, ids: &[i64]) -> Result<Vec<Product>, StoreError> {
        self.around(Op::GetMany, self.inner().get_many(ids)).await
    }

    async fn list(&self, page: &PageRequest) -> Result<Vec<Product>, StoreError> {
        self.around(Op::List, self.inner().list(page)).await
    }

    async fn create(&self, new: &NewProduct) -> Result<Product, StoreError> {
        self.around(Op::Create, self.inner().create(new)).await
    }

    async fn create_many(&self, new: &[NewProduct]) -> Result<u64, StoreError> {
        self.around(Op::CreateMany, self.inner().create_many(new))
            .await
    }

    async fn replace(
        &self,
        id: i64,
        new: &NewProduct,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        let call = self.inner().replace(id, new, expected);
        self.around(Op::Replace, call).await
    }

    async fn patch(
        &self,
        id: i64,
        patch: &ProductPatch,
        expected: Expected,
    ) -> Result<Updated, StoreError> {
        let call = self.inner().patch(id, patch, expected);
        self.around(Op::Patch, call).await
    }

    async fn delete(&self, id: i64, expected: Expected) -> Result<Product, StoreError> {
        self.around(Op::Delete, self.inner().delete(id, expected))
            .await
    }

    async fn apply(&self, changes: &[ProductChange]) -> Result<(), StoreError> {
        self.around(Op::Apply, self.inner().apply(changes)).await
    }

    async fn count(&self) -> Result<i64, StoreError> {
        self.around(Op::Count, self.inner().count()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_listed_in_declaration_order() {
        // Decorators index per-op arrays built from `Op::ALL` by `op as usize`.
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op as usize, i, "{op:?}");
        }
    }
}
