//! Assembles the service from its configuration and runs it until told to
//! stop: store (migrated), HTTP router, TCP listener, and on PostgreSQL the
//! listener for changes made outside the service.
//!
//! Shutdown order: stop accepting → let in-flight requests finish (each is
//! bounded by the request timeout) → stop the change listener → drain the
//! write-behind queue into the store (at most 10 s) → close the store's
//! pool → drop the product cache, the last handle of it, which stops its
//! background tasks (invalidation bus, write-behind flusher).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use crate::config::{CacheConfig, ServeConfig, WriteStrategy};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::seed;
use crate::service::{
    Caches, PageCache, ProductCache, ProductService, RenderedCodec, RenderedProduct, StoreFlusher,
};
use crate::store::{
    self, BatchedReads, ChangeListener, GuardedStore, InstrumentedStore, ListenerStats, Store,
};

/// A built service, bound to its address, not yet serving.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: http::App,
    limits: http::ConnectionLimits,
    connection_metrics: http::ConnectionMetrics,
    store: Arc<dyn Store>,
    /// PostgreSQL only: invalidates the cache on changes made outside the
    /// service.
    changes: Option<ChangeListener>,
    /// Held to drain its write-behind queue at shutdown.
    products: ProductCache,
}

impl Application {
    /// Connects and migrates the store, seeds `seed` products if the table is
    /// empty, and binds the listener.
    ///
    /// # Errors
    /// The store cannot be reached or migrated, or the address cannot be bound.
    pub async fn build(config: ServeConfig, seed: Option<u64>) -> anyhow::Result<Self> {
        let metrics = Metrics::start();
        let connection_metrics = http::ConnectionMetrics::new(&metrics);
        let connected = store::connect(config.db.database_url.expose_secret(), &config.db.pool())
            .await
            .context("could not connect to the store at DATABASE_URL")?;
        let timed = Arc::new(InstrumentedStore::new(Arc::from(connected), &metrics));
        let batched = Arc::new(BatchedReads::new(
            timed,
            config.db.db_read_lanes,
            config.cache.loader_hard_timeout,
            &metrics,
        ));
        let store: Arc<dyn Store> = Arc::new(GuardedStore::new(batched, &metrics));
        store
            .migrate()
            .await
            .context("could not migrate the store")?;
        if let Some(count) = seed {
            seed_if_empty(store.as_ref(), count).await?;
        }
        let caches = build_caches(&config.cache, &store, &metrics).await?;
        let products = caches.products.clone();
        let service = ProductService::new(Arc::clone(&store), caches, config.cache.write_strategy);
        let changes = spawn_change_listener(&config, &service).await?;
        let state = AppState::new(
            service,
            config.api_token.unwrap_or_else(generated_token),
            metrics,
        );
        let router = http::router(state, config.request_timeout);
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .with_context(|| format!("could not listen on {}", config.bind_addr))?;
        Ok(Self {
            listener,
            router,
            limits: config.http.limits(),
            connection_metrics,
            store,
            changes,
            products,
        })
    }

    /// The change listener's counters; `None` on SQLite, which has no
    /// change notifications.
    pub fn change_listener_stats(&self) -> Option<ListenerStats> {
        self.changes.as_ref().map(ChangeListener::stats)
    }

    /// The address the server listens on (useful with port 0).
    ///
    /// # Panics
    /// Never in practice: a bound TCP listener has a local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has a local address")
    }

    /// Serves until `shutdown` completes, then shuts down in the order the
    /// module documentation gives: in-flight requests, change listener,
    /// write-behind queue, store pool, product cache.
    ///
    /// # Errors
    /// The server failed while accepting connections.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "catalog listening");
        http::serve(
            self.listener,
            self.router,
            self.limits,
            self.connection_metrics,
            shutdown,
        )
        .await
        .context("the HTTP server failed")?;
        if let Some(changes) = self.changes {
            changes.stop().await;
        }
        // SPEC §4: graceful shutdown drains the write-behind queue, while
        // the pool it flushes into is still open.
        if !self.products.drain_write_behind(WRITE_BEHIND_DRAIN).await {
            tracing::warn!(
                "write-behind queue not empty at shutdown; the remaining changes stay in Redis \
                 and are flushed by the next instance that starts"
            );
        }
        self.store.close().await;
        tracing::info!("catalog stopped");
        Ok(())
    }
}

/// Longest graceful shutdown waits for the write-behind queue to empty.
const WRITE_BEHIND_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Most category pages kept in L1 (they are few and small next to products).
const PAGE_L1_ENTRIES: u64 = 2_000;
/// Most bytes of category pages kept in L1.
const PAGE_L1_BYTES: u64 = 16 * 1024 * 1024;

/// The caches as configured: L1 always, L2 when `REDIS_URL` is set.
///
/// An unreachable Redis does not fail this: the caches start with L2 down
/// and keep reconnecting in the background.
///
/// # Errors
/// A setting the cache rejects (e.g. a malformed `REDIS_URL`).
/// With `CACHE_WRITE_STRATEGY=write-behind`, the product cache queues
/// changes for `store`; that needs Redis, and is refused without it.
pub async fn build_caches(
    config: &CacheConfig,
    store: &Arc<dyn Store>,
    metrics: &Metrics,
) -> anyhow::Result<Caches> {
    let products = build_product_cache(config, store, metrics).await?;
    let pages = with_common_settings(PageCache::builder(), config)
        .namespace("page")
        .l1_max_entries(PAGE_L1_ENTRIES)
        .l1_max_bytes(PAGE_L1_BYTES)
        .build()
        .await
        .context("invalid cache settings (REDIS_URL, L1_*, L2_*, CACHE_PREFIX)")?;
    Ok(Caches { products, pages })
}

/// The settings both caches take from the configuration: prefix, TTLs,
/// Redis, fail-safe and loader timeouts.
fn with_common_settings<K, V>(
    builder: tiercache::TieredCacheBuilder<K, V>,
    config: &CacheConfig,
) -> tiercache::TieredCacheBuilder<K, V>
where
    K: tiercache::CacheKey,
    V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let builder = builder
        .key_prefix(config.cache_prefix.clone())
        .l1_ttl(config.l1_ttl)
        .l2_ttl(config.l2_ttl)
        .l2_timeout(config.l2_timeout)
        .client_tracking(config.client_tracking)
        .fail_safe_window((!config.fail_safe.is_zero()).then_some(config.fail_safe))
        .soft_timeout(Some(config.loader_soft_timeout))
        .hard_timeout(Some(config.loader_hard_timeout));
    match &config.redis_url {
        Some(url) => builder.redis_url(url.expose_secret()),
        None => builder,
    }
}

async fn build_product_cache(
    config: &CacheConfig,
    store: &Arc<dyn Store>,
    metrics: &Metrics,
) -> anyhow::Result<ProductCache> {
    let mut builder = with_common_settings(ProductCache::builder(), config)
        .namespace("product")
        // Its series are `/metrics`'s cache series (the page cache's are
        // not exported).
        .metrics_recorder(metrics.recorder())
        .codec(RenderedCodec)
        .versioned("version", |p: &RenderedProduct| {
            u64::try_from(p.version()).unwrap_or(0)
        })
        .l1_max_entries(config.l1_max_entries)
        .l1_max_bytes(config.l1_max_bytes)
        .eager_refresh((config.eager_refresh > 0.0).then_some(config.eager_refresh));
    if config.write_strategy == WriteStrategy::WriteBehind {
        if config.redis_url.is_none() {
            anyhow::bail!(
                "CACHE_WRITE_STRATEGY=write-behind needs REDIS_URL: its durable queue is a Redis Stream"
            );
        }
        builder = builder.write_behind(
            StoreFlusher::new(Arc::clone(store)),
            config.write_behind_interval,
        );
        // Unset: the library's default for the topology (a wait on a
        // cluster, none on a single server).
        if let Some(wait) = config.write_behind_replica_wait {
            builder = builder.write_behind_replica_wait(wait.timeout());
        }
    }
    if config.redis_url.is_none() {
        tracing::info!(
            "L2 is off: REDIS_URL is unset, so products are cached in this process only; \
             set REDIS_URL=redis://127.0.0.1:6379 to share a Redis cache across instances"
        );
    }
    let cache = builder
        .build()
        .await
        .context("invalid cache settings (REDIS_URL, L1_*, L2_*, CACHE_PREFIX)")?;
    tracing::info!(
        l2 = %cache.l2_state(),
        write_strategy = ?config.write_strategy,
        "product cache ready"
    );
    Ok(cache)
}

/// On PostgreSQL, starts listening for changes made outside the service
/// before any request is served, so that none is missed; `service` forgets
/// what they made stale.
async fn spawn_change_listener(
    config: &ServeConfig,
    service: &ProductService,
) -> anyhow::Result<Option<ChangeListener>> {
    let url = config.db.database_url.expose_secret();
    if !store::is_postgres_url(url) {
        return Ok(None);
    }
    let changes = ChangeListener::spawn(url, &config.db.pool(), service.clone())
        .await
        .context("could not LISTEN for product changes in PostgreSQL")?;
    Ok(Some(changes))
}

async fn seed_if_empty(store: &dyn Store, count: u64) -> anyhow::Result<()> {
    let existing = store.count().await.context("could not count products")?;
    if existing > 0 {
        tracing::info!(existing, "products exist already; not seeding");
        return Ok(());
    }
    let inserted = seed::seed(store, count)
        .await
        .context("could not seed products")?;
    tracing::info!(inserted, "seeded sample products");
    Ok(())
}

/// A random token for this run, logged once so that the operator can use it.
fn generated_token() -> SecretString {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    tracing::warn!("CATALOG_API_TOKEN is not set; bearer token for writes in this run: {token}");
    SecretString::from(token)
}
