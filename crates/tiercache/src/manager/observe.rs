//! What a [`TieredCache`] tells about itself: counters ([`stats`](TieredCache::stats)),
//! events ([`subscribe`](TieredCache::subscribe)), metrics (feature
//! `metrics`), and the state of its Redis level and bus.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(feature = "metrics")]
use super::Inner;
use super::counters::Counter;
use super::{CacheKey, TieredCache};
#[cfg(feature = "redis")]
use crate::bus::Bus;
use crate::events::CacheEvents;
#[cfg(feature = "redis")]
use crate::remote::RemoteCache;
use crate::stats::{BusState, BusStats, CacheStats, L2State, L2Stats, LoaderStats, StaleStats};
#[cfg(feature = "redis")]
use crate::write_behind::WriteBehind;

impl<K, V> TieredCache<K, V>
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A snapshot of every counter.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// let _ = cache.get_or_load(&7, || async { Ok::<_, StoreDown>(Some("widget".to_owned())) }).await?;
    /// let stats = cache.stats();
    /// assert_eq!(stats.l1.entries, 1);
    /// println!("{}", serde_json::to_string(&stats).unwrap());
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> CacheStats {
        let inner = &*self.inner;
        let count = |counter| inner.counters.sum(counter);
        #[cfg(feature = "redis")]
        let (l2_errors, write_behind, bus) = (
            inner.l2.as_ref().map_or(0, RemoteCache::errors),
            inner
                .write_behind
                .as_ref()
                .map(WriteBehind::stats)
                .unwrap_or_default(),
            inner
                .bus
                .as_ref()
                .map_or_else(BusStats::disabled, Bus::stats),
        );
        #[cfg(not(feature = "redis"))]
        let (l2_errors, write_behind, bus) = (0, Default::default(), BusStats::disabled());
        CacheStats {
            l1: inner.local.l1.stats(),
            l2: L2Stats {
                hits: count(Counter::L2Hits),
                misses: count(Counter::L2Misses),
                errors: l2_errors,
                decode_errors: count(Counter::DecodeErrors),
                guard_rejections: count(Counter::GuardRejections),
                state: self.l2_state(),
            },
            loader: LoaderStats {
                loads: count(Counter::Loads),
                coalesced: count(Counter::Coalesced),
                errors: count(Counter::LoaderErrors),
                soft_timeouts: count(Counter::SoftTimeouts),
                hard_timeouts: count(Counter::HardTimeouts),
                refreshes: count(Counter::Refreshes),
                refresh_errors: count(Counter::RefreshErrors),
            },
            negative_hits: count(Counter::NegativeHits),
            stale: StaleStats {
                loader_error: count(Counter::StaleLoaderError),
                soft_timeout: count(Counter::StaleSoftTimeout),
                throttled: count(Counter::StaleThrottled),
            },
            fenced_fills: count(Counter::FencedFills),
            write_behind,
            bus,
        }
    }

    /// Subscribes to this cache's [`CacheEvent`](crate::CacheEvent)s: evictions,
    /// invalidations applied (and whether they were local, from the bus, a
    /// replay of its change log or Redis client tracking), L1 clears and
    /// why, L2 and bus state changes, stale answers, write-behind flushes.
    ///
    /// Costs nothing while nobody subscribes. A subscriber that falls more
    /// than [`EVENT_CAPACITY`](crate::EVENT_CAPACITY) events behind gets a
    /// [`CacheEvent::Lagged`](crate::CacheEvent::Lagged) in place of those it missed; it never slows
    /// the cache down.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{CacheEvent, ClearReason, InvalidationOrigin, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// let mut events = cache.subscribe();
    /// cache.invalidate(&7).await;
    /// cache.clear_local();
    /// assert_eq!(
    ///     events.recv().await,
    ///     Some(CacheEvent::Invalidated { key: "7".to_owned(), origin: InvalidationOrigin::Local })
    /// );
    /// assert_eq!(events.recv().await, Some(CacheEvent::Cleared { reason: ClearReason::Requested }));
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&self) -> CacheEvents {
        self.inner.local.events.subscribe()
    }

    /// Publishes this cache's counters to its metrics recorder now (they
    /// are published every [`PUBLISH_INTERVAL`](crate::telemetry::PUBLISH_INTERVAL)
    /// anyway): call it before rendering a scrape for exact numbers. See
    /// [`telemetry`](crate::telemetry).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn scrape(
    /// #     cache: tiercache::TieredCache<u64, String>,
    /// #     handle: metrics_exporter_prometheus::PrometheusHandle,
    /// # ) -> String {
    /// // In the handler of `GET /metrics`:
    /// cache.record_metrics();
    /// handle.render()
    /// # }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_metrics(&self) {
        self.inner.telemetry.publish(&self.stats());
    }

    /// Whether this instance listens to the invalidation bus right now:
    /// `Disabled` without Redis (or with the bus turned off), else
    /// `Subscribed` or `Connecting`.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{BusState, L2State, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// // Without Redis there is no bus.
    /// assert_eq!(cache.bus_state(), BusState::Disabled);
    /// # Ok(())
    /// # }
    /// ```
    pub fn bus_state(&self) -> BusState {
        #[cfg(feature = "redis")]
        if let Some(bus) = &self.inner.bus {
            return bus.state();
        }
        BusState::Disabled
    }

    /// Waits until the invalidation bus is subscribed, at most `limit`, and
    /// returns whether it is; `true` at once when there is no bus.
    ///
    /// For a service that reports healthy only once it hears the bus.
    /// `build` already waits for the first subscription as long as it
    /// waits for Redis, so this only waits when Redis was slow or down.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{BusState, L2State, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// // Report healthy only once the bus hears the other instances.
    /// let ready = cache.wait_subscribed(std::time::Duration::from_secs(5)).await;
    /// assert!(ready, "true at once without a bus");
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(not(feature = "redis"), expect(unused_variables))]
    pub async fn wait_subscribed(&self, limit: Duration) -> bool {
        #[cfg(feature = "redis")]
        if let Some(bus) = &self.inner.bus {
            return bus.wait_subscribed(limit).await;
        }
        true
    }

    /// The bus channel of this cache, `{key_prefix}{namespace}:bus` (on a
    /// cluster hash-tagged: `{{key_prefix}{namespace}:bus}`), or `None`
    /// without a bus.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{Source, TieredCache};
    /// # #[derive(Debug, thiserror::Error)] #[error("store down")] struct StoreDown;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// assert_eq!(cache.bus_channel(), None, "no Redis, no bus");
    /// # Ok(())
    /// # }
    /// ```
    pub fn bus_channel(&self) -> Option<&str> {
        #[cfg(feature = "redis")]
        if let Some(bus) = &self.inner.bus {
            return Some(bus.channel());
        }
        None
    }

    /// Health of the Redis level: `Disabled` without Redis, else `Up` or `Down`.
    ///
    /// # Example
    ///
    /// ```
    /// # use tiercache::{BusState, L2State, TieredCache};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tiercache::Error> {
    /// # let cache: TieredCache<u64, String> = TieredCache::builder().build().await?;
    /// assert_eq!(cache.l2_state(), L2State::Disabled);
    /// # Ok(())
    /// # }
    /// ```
    pub fn l2_state(&self) -> L2State {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.inner.l2 {
            return l2.state();
        }
        L2State::Disabled
    }
}

/// Publishes the cache's counters every `PUBLISH_INTERVAL` while it lives.
#[cfg(feature = "metrics")]
pub(super) async fn publish_metrics<K, V>(inner: std::sync::Weak<Inner<K, V>>)
where
    K: CacheKey,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let mut ticks = tokio::time::interval(crate::telemetry::PUBLISH_INTERVAL);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        TieredCache { inner }.record_metrics();
    }
}
