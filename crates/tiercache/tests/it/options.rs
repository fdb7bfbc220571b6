//! Per-call options (`EntryOptions`) and adaptive entries (`Loaded`): what
//! each one does to Redis and L1, checked on the shared Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use tiercache::{EntryOptions, Loaded, Source, TieredCache};

use crate::support::{Item, StoreDown, cache, raw_redis};

type Cache = TieredCache<i64, Item>;

/// Reads `key` with `options`, counting loads in `loads`; the loader
/// answers `loaded(key)`.
async fn read(
    cache: &Cache,
    key: i64,
    options: &EntryOptions,
    loads: &Arc<AtomicUsize>,
    loaded: fn(Item) -> Loaded<Item>,
) -> tiercache::Lookup<Item> {
    let loads = Arc::clone(loads);
    cache
        .get_or_load_with(&key, options, move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, StoreDown>(loaded(Item::new(key)))
        })
        .await
        .unwrap()
}

/// Redis's TTL of `key`'s entry in ms (-2: no entry).
async fn redis_pttl(cache: &Cache, key: i64) -> i64 {
    let mut redis = raw_redis().await;
    redis.pttl(cache.redis_key(&key)).await.unwrap()
}

#[tokio::test]
async fn per_call_ttls_reach_redis_and_l1() {
    let (cache, _prefix) = cache::<Item>().await;
    let loads = Arc::new(AtomicUsize::new(0));
    let options = EntryOptions::new()
        .l1_ttl(Duration::from_millis(200))
        .l2_ttl(Duration::from_secs(7));
    let first = read(&cache, 1, &options, &loads, Loaded::found).await;
    assert_eq!(first.source, Source::Loader);
    let pttl = redis_pttl(&cache, 1).await;
    assert!(
        (6_000..=7_000).contains(&pttl),
        "Redis TTL {pttl} ms, wanted the call's 7 s (builder: 1 h)"
    );
    assert_eq!(
        read(&cache, 1, &options, &loads, Loaded::found)
            .await
            .source,
        Source::L1
    );
    // Past the call's L1 TTL the entry comes from Redis, not the loader.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        read(&cache, 1, &options, &loads, Loaded::found)
            .await
            .source,
        Source::L2
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_loader_sets_its_entry_ttl_or_keeps_it_out() {
    let (cache, _prefix) = cache::<Item>().await;
    let loads = Arc::new(AtomicUsize::new(0));
    let defaults = EntryOptions::new();
    let adapted = read(&cache, 1, &defaults, &loads, |item| {
        Loaded::found(item).ttl(Duration::from_secs(3))
    })
    .await;
    assert_eq!(adapted.source, Source::Loader);
    let pttl = redis_pttl(&cache, 1).await;
    assert!(
        (2_000..=3_000).contains(&pttl),
        "Redis TTL {pttl} ms, wanted the loader's 3 s"
    );

    let once = read(&cache, 2, &defaults, &loads, |item| {
        Loaded::found(item).uncached()
    })
    .await;
    assert_eq!(once.source, Source::Loader);
    assert!(once.value.is_some(), "the caller still gets the value");
    assert_eq!(redis_pttl(&cache, 2).await, -2, "nothing stored in Redis");
    let again = read(&cache, 2, &defaults, &loads, |item| {
        Loaded::found(item).uncached()
    })
    .await;
    assert_eq!(again.source, Source::Loader, "nothing stored in L1 either");
    assert_eq!(loads.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn skipped_levels_are_neither_read_nor_written() {
    let (cache, _prefix) = cache::<Item>().await;
    let loads = Arc::new(AtomicUsize::new(0));
    let no_redis = EntryOptions::new().skip_l2();
    let first = read(&cache, 1, &no_redis, &loads, Loaded::found).await;
    assert_eq!(first.source, Source::Loader);
    assert_eq!(redis_pttl(&cache, 1).await, -2, "skip_l2 wrote Redis");
    assert_eq!(
        read(&cache, 1, &no_redis, &loads, Loaded::found)
            .await
            .source,
        Source::L1
    );

    let no_l1 = EntryOptions::new().skip_l1();
    let first = read(&cache, 2, &no_l1, &loads, Loaded::found).await;
    assert_eq!(first.source, Source::Loader);
    assert!(redis_pttl(&cache, 2).await > 0, "skip_l1 still fills Redis");
    assert_eq!(
        read(&cache, 2, &no_l1, &loads, Loaded::found).await.source,
        Source::L2
    );
    assert_eq!(cache.stats().l1.entries, 1, "only key 1 is in L1");

    // Key 1 is in L1 only: a read that skips both levels loads it.
    let neither = EntryOptions::new().skip_l1().skip_l2();
    assert_eq!(
        read(&cache, 1, &neither, &loads, Loaded::found)
            .await
            .source,
        Source::Loader
    );
    assert_eq!(loads.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_write_that_skips_l1_drops_the_older_copy() {
    let (cache, _prefix) = cache::<Item>().await;
    cache.set(&1, Item::with_name(1, "old".to_owned())).await;
    let no_l1 = EntryOptions::new().skip_l1();
    cache
        .set_with(&1, Item::with_name(1, "new".to_owned()), &no_l1)
        .await;
    let lookup = cache
        .get_or_load(&1, || async { Err::<Option<Item>, _>(StoreDown) })
        .await
        .unwrap();
    assert_eq!(lookup.source, Source::L2);
    assert_eq!(lookup.value.unwrap().name, "new");
}

/// (Without Redis: an expired Redis entry would make client tracking drop
/// the fallback from L1, which is not what is under test.)
#[tokio::test]
async fn fail_safe_can_be_turned_off_per_call() {
    let cache: Cache = crate::failsafe::l1_only(Duration::from_millis(50))
        .fail_safe_window(Some(Duration::from_secs(60)))
        .build()
        .await
        .unwrap();
    cache.set(&1, Item::new(1)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let strict = EntryOptions::new().fail_safe_window(None);
    let error = cache
        .get_or_load_with(&1, &strict, || async { Err::<Loaded<Item>, _>(StoreDown) })
        .await
        .unwrap_err();
    assert!(error.is_loader(), "no stale answer for a strict call");
    let lenient = cache
        .get_or_load(&1, || async { Err::<Option<Item>, _>(StoreDown) })
        .await
        .unwrap();
    assert_eq!(
        lenient.source,
        Source::Stale,
        "the builder's fail-safe still applies"
    );
}
