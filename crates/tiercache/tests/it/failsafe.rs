//! Fail-safe answers, loader timeouts and eager refresh (L1 only, so that
//! only the manager's own logic is under test).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use testkit::wait_for;
use tiercache::{Source, TieredCache, TieredCacheBuilder};

use crate::support::{Item, StoreDown};

type Cache = TieredCache<i64, Item>;

/// An L1-only cache with no TTL jitter.
pub(crate) fn l1_only(ttl: Duration) -> TieredCacheBuilder<i64, Item> {
    TieredCache::builder().ttl_jitter(0.0).l1_ttl(ttl)
}

fn named(name: &str) -> Result<Option<Item>, StoreDown> {
    Ok(Some(Item::with_name(1, name.to_owned())))
}

fn name_of(lookup: &tiercache::Lookup<Item>) -> &str {
    &lookup.value.as_ref().expect("a value").name
}

/// Reads key 1 from `cache`, loading a value named `name` on a miss.
async fn load_named(cache: &Cache, name: &str) -> tiercache::Lookup<Item> {
    let name = name.to_owned();
    cache
        .get_or_load(&1, || async move { named(&name) })
        .await
        .unwrap()
}

/// Reads key 1 from `cache` with a loader that fails.
async fn read_failing(
    cache: &Cache,
) -> Result<tiercache::Lookup<Item>, tiercache::LoadError<StoreDown>> {
    cache
        .get_or_load(&1, || async { Err::<Option<Item>, _>(StoreDown) })
        .await
}

/// Waits until key 1's L1 entry is past its TTL (a failing read then
/// answers stale instead of hitting).
async fn wait_until_expired(cache: &Cache) {
    wait_for(Duration::from_secs(5), "the entry expires", || async {
        let lookup = read_failing(cache).await;
        matches!(lookup, Ok(lookup) if lookup.source == Source::Stale)
    })
    .await;
}

#[tokio::test]
async fn a_failing_loader_gets_the_stale_value_and_is_throttled() {
    let cache = l1_only(Duration::from_millis(100))
        .fail_safe_window(Some(Duration::from_secs(60)))
        .fail_safe_throttle(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let _ = load_named(&cache, "v1").await;
    wait_until_expired(&cache).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = || {
        let calls = Arc::clone(&calls);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<Option<Item>, _>(StoreDown)
        }
    };

    let throttled = cache.get_or_load(&1, failing).await.unwrap();
    let recovered = {
        tokio::time::sleep(Duration::from_millis(400)).await;
        load_named(&cache, "v2").await
    };

    assert_eq!(
        (throttled.source, name_of(&throttled)),
        (Source::Stale, "v1")
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "retried within the throttle"
    );
    assert_eq!(
        (recovered.source, name_of(&recovered)),
        (Source::Loader, "v2")
    );
    let stats = cache.stats();
    assert_eq!(stats.stale.loader_error, 1);
    assert!(stats.stale.throttled >= 1, "{stats:?}");
}

#[tokio::test]
async fn an_invalidated_value_is_never_a_fallback() {
    let cache = l1_only(Duration::from_millis(50))
        .fail_safe_window(Some(Duration::from_secs(60)))
        .fail_safe_throttle(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let _ = load_named(&cache, "v1").await;
    cache.invalidate(&1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let failed = read_failing(&cache).await;

    assert!(failed.unwrap_err().is_loader());
}

#[tokio::test]
async fn a_slow_loader_past_the_soft_timeout_answers_stale_then_fills_the_cache() {
    // Long enough that a loaded machine still sees the background fill in
    // L1 before it expires again.
    let cache = l1_only(Duration::from_secs(1))
        .fail_safe_window(Some(Duration::from_secs(60)))
        .fail_safe_throttle(Duration::from_millis(50))
        .soft_timeout(Some(Duration::from_millis(50)))
        .build()
        .await
        .unwrap();
    let _ = load_named(&cache, "v1").await;
    wait_until_expired(&cache).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let first = cache
        .get_or_load(&1, || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            named("v2")
        })
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(5),
        "the background load fills L1",
        || async {
            let lookup = read_failing(&cache).await.unwrap();
            lookup.source == Source::L1 && name_of(&lookup) == "v2"
        },
    )
    .await;

    assert_eq!((first.source, name_of(&first)), (Source::Stale, "v1"));
    let stats = cache.stats();
    assert_eq!(stats.loader.soft_timeouts, 1);
    assert_eq!(stats.stale.soft_timeout, 1);
}

// Only tokio timers (the hard timeout, the loader's sleep) and no I/O: on
// a paused clock the 50 ms pass without waiting for them.
#[tokio::test(start_paused = true)]
async fn a_loader_past_the_hard_timeout_without_fallback_is_a_timeout_error() {
    let cache = l1_only(Duration::from_secs(60))
        .hard_timeout(Some(Duration::from_millis(50)))
        .build()
        .await
        .unwrap();

    let error = cache
        .get_or_load(&1, || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            named("never")
        })
        .await
        .unwrap_err();

    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(cache.stats().loader.hard_timeouts, 1);
}

#[tokio::test]
async fn a_hit_late_in_an_entrys_life_refreshes_it_once_in_the_background() {
    let cache = l1_only(Duration::from_secs(5))
        .eager_refresh(Some(0.05))
        .build()
        .await
        .unwrap();
    let _ = load_named(&cache, "v1").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let calls = Arc::new(AtomicUsize::new(0));

    let hits = futures_util::future::join_all((0..20).map(|_| {
        let calls = Arc::clone(&calls);
        cache.get_or_load(&1, move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            named("v2")
        })
    }))
    .await;
    wait_for(
        Duration::from_secs(3),
        "the refreshed value is served",
        || async {
            let lookup = read_failing(&cache).await.unwrap();
            name_of(&lookup) == "v2"
        },
    )
    .await;

    for hit in hits {
        assert_eq!(hit.unwrap().source, Source::L1);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().loader.refreshes, 1);
}
