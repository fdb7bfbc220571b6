//! `TieredCache` behaviour against a real Redis: level transitions, TTLs,
//! bounds, single-flight, negative caching, errors, batches, warming.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use testkit::{PrivateRedis, wait_for};
use tiercache::{L2State, Source, TieredCache};
use tokio::sync::Barrier;

use crate::support::{self, Item, StoreDown, found, found_all};

#[tokio::test]
async fn first_get_loads_second_hits_l1_and_after_l1_clear_hits_l2() {
    let (cache, _prefix) = support::cache::<Item>().await;

    let first = cache.get_or_load(&1, || async { found(1) }).await.unwrap();
    let second = cache.get_or_load(&1, || async { found(1) }).await.unwrap();
    cache.clear_local();
    let third = cache.get_or_load(&1, || async { found(1) }).await.unwrap();
    let fourth = cache.get_or_load(&1, || async { found(1) }).await.unwrap();

    assert_eq!(first.source, Source::Loader);
    assert_eq!(second.source, Source::L1);
    assert_eq!(third.source, Source::L2);
    assert_eq!(fourth.source, Source::L1);
    for lookup in [&first, &second, &third, &fourth] {
        assert_eq!(lookup.value.as_deref(), Some(&Item::new(1)));
    }
    assert!(
        Arc::ptr_eq(
            first.value.as_ref().unwrap(),
            second.value.as_ref().unwrap()
        ),
        "an L1 hit shares the cached Arc instead of cloning the value"
    );
    let stats = cache.stats();
    assert_eq!((stats.l1.hits, stats.l1.misses), (2, 2));
    assert_eq!((stats.l2.hits, stats.l2.misses, stats.l2.errors), (1, 1, 0));
    assert_eq!(stats.loader.loads, 1);
    assert_eq!(stats.l2.state, L2State::Up);
}

#[tokio::test]
async fn stored_values_are_plain_json_with_a_ttl_in_redis() {
    let mut redis = support::raw_redis().await;
    let prefix = support::unique_prefix();
    let cache = support::builder::<Item>(&prefix)
        .l2_ttl(Duration::from_secs(120))
        .build()
        .await
        .unwrap();

    let _ = cache.get_or_load(&7, || async { found(7) }).await.unwrap();

    let key = format!("{prefix}item:7");
    assert_eq!(cache.redis_key(&7), key);
    let stored: String = redis.get(&key).await.unwrap();
    assert_eq!(stored, serde_json::to_string(&Item::new(7)).unwrap());
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!(ttl > 0 && ttl <= 120, "TTL {ttl}");
}

#[tokio::test]
async fn entries_expire_from_l1_then_from_l2() {
    support::raw_redis().await;
    let prefix = support::unique_prefix();
    let cache = support::builder::<Item>(&prefix)
        .l1_ttl(Duration::from_millis(200))
        .l2_ttl(Duration::from_millis(1_500))
        .build()
        .await
        .unwrap();
    let _ = cache.get_or_load(&1, || async { found(1) }).await.unwrap();

    // L1 expires first: the value comes back from Redis.
    wait_for(Duration::from_secs(5), "L1 entry to expire", || async {
        let lookup = cache.get_or_load(&1, || async { found(1) }).await.unwrap();
        assert_ne!(lookup.source, Source::Loader, "L2 expired before L1");
        lookup.source == Source::L2
    })
    .await;
    // Then Redis expires too: the loader runs again.
    wait_for(Duration::from_secs(10), "L2 entry to expire", || async {
        cache.clear_local();
        let lookup = cache.get_or_load(&1, || async { found(1) }).await.unwrap();
        lookup.source == Source::Loader
    })
    .await;
}

#[tokio::test]
async fn l1_byte_bound_evicts_and_holds() {
    support::raw_redis().await;
    let prefix = support::unique_prefix();
    let max_bytes = 16 * 1024;
    let cache = support::builder::<Item>(&prefix)
        .l1_max_bytes(max_bytes)
        .build()
        .await
        .unwrap();

    for id in 0..200 {
        let item = Item::with_name(id, "x".repeat(500));
        let _ = cache
            .get_or_load(&id, || async { Ok::<_, StoreDown>(Some(item)) })
            .await
            .unwrap();
    }

    let l1 = cache.stats().l1;
    assert!(l1.bytes <= max_bytes, "{l1:?}");
    assert!(l1.evictions > 0, "{l1:?}");
    assert!(l1.entries > 0 && l1.entries < 200, "{l1:?}");
}

#[tokio::test]
async fn l1_entry_bound_evicts_and_holds() {
    support::raw_redis().await;
    let prefix = support::unique_prefix();
    let cache = support::builder::<Item>(&prefix)
        .l1_max_entries(40)
        .build()
        .await
        .unwrap();

    for id in 0..500 {
        let _ = cache
            .get_or_load(&id, || async move { found(id) })
            .await
            .unwrap();
    }

    let l1 = cache.stats().l1;
    assert!(l1.entries <= 40, "{l1:?}");
    assert!(l1.evictions >= 460, "{l1:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_misses_run_the_loader_once() {
    let (cache, _prefix) = support::cache::<Item>().await;
    let loads = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(64));

    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (cache, loads, barrier) = (cache.clone(), loads.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_load(&42, || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        found(42)
                    })
                    .await
            })
        })
        .collect();
    let mut sources = HashMap::new();
    for task in tasks {
        let lookup = task.await.unwrap().unwrap();
        assert_eq!(lookup.value.as_deref(), Some(&Item::new(42)));
        *sources.entry(lookup.source).or_insert(0) += 1;
    }

    assert_eq!(loads.load(Ordering::SeqCst), 1, "sources: {sources:?}");
    let stats = cache.stats();
    assert_eq!(stats.loader.loads, 1);
    // Every caller but the loader's either waited for it or, arriving after
    // it finished, hit L1.
    assert_eq!(stats.loader.coalesced + stats.l1.hits, 63, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_load_is_shared_by_waiters_and_not_cached() {
    let (cache, _prefix) = support::cache::<Item>().await;
    let loads = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(16));

    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (cache, loads, barrier) = (cache.clone(), loads.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_load(&5, || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err::<Option<Item>, _>(StoreDown)
                    })
                    .await
            })
        })
        .collect();
    for task in tasks {
        let error = task.await.unwrap().unwrap_err();
        assert!(error.is_loader());
        assert_eq!(error.loader_error().map(|e| e.as_ref()), Some(&StoreDown));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    let recovered = cache.get_or_load(&5, || async { found(5) }).await.unwrap();
    assert_eq!(recovered.source, Source::Loader, "the error was not cached");
    assert_eq!(recovered.value.as_deref(), Some(&Item::new(5)));
    assert_eq!(cache.stats().loader.errors, 1);
}

#[tokio::test]
async fn not_found_is_cached_negatively_in_both_levels() {
    let (cache, prefix) = support::cache::<Item>().await;
    let mut redis = support::raw_redis().await;
    let loads = Arc::new(AtomicUsize::new(0));
    let load_nothing = || {
        let loads = Arc::clone(&loads);
        async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<Item>, StoreDown>(None)
        }
    };

    let sources: Vec<Source> = {
        let mut sources = Vec::new();
        for _ in 0..10 {
            let lookup = cache.get_or_load(&404, load_nothing).await.unwrap();
            assert_eq!(lookup.value, None);
            sources.push(lookup.source);
        }
        sources
    };
    cache.clear_local();
    let from_l2 = cache.get_or_load(&404, load_nothing).await.unwrap();

    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(sources[0], Source::Loader);
    assert!(sources[1..].iter().all(|s| *s == Source::L1), "{sources:?}");
    assert_eq!((from_l2.source, from_l2.value), (Source::L2, None));
    let key = format!("{prefix}item:404");
    let stored: Vec<u8> = redis.get(&key).await.unwrap();
    assert!(
        stored.is_empty(),
        "negative entries are stored as an empty string"
    );
    let ttl: i64 = redis.pttl(&key).await.unwrap();
    let negative_ttl = i64::try_from(tiercache::defaults::NEGATIVE_TTL.as_millis()).unwrap();
    assert!(ttl > 0 && ttl <= negative_ttl, "negative TTL {ttl} ms");
    assert_eq!(cache.stats().negative_hits, 10);
}

#[tokio::test]
async fn get_many_loads_only_what_l1_and_one_mget_lacked() {
    let server = PrivateRedis::start().await;
    let mut redis = server.raw().await;
    let prefix = support::unique_prefix();
    let build = || {
        support::builder::<Item>(&prefix)
            .redis_url(server.url())
            .build()
    };
    let (writer, cache) = (build().await.unwrap(), build().await.unwrap());
    // 1 and 2 only in Redis (written by another instance), 3 in our L1.
    writer.set(&1, Item::new(1)).await;
    writer.set(&2, Item::new(2)).await;
    let _ = cache.get_or_load(&3, || async { found(3) }).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut redis)
        .await
        .unwrap();

    let asked = std::sync::Mutex::new(Vec::new());
    let keys = [1, 2, 3, 4, 5, 3];
    let lookups = cache
        .get_many_or_load(&keys, |missing| {
            asked.lock().unwrap().extend(missing.iter().copied());
            async move { found_all(&missing, &[5]) }
        })
        .await
        .unwrap();

    let mut asked = asked.into_inner().unwrap();
    asked.sort_unstable();
    assert_eq!(
        asked,
        vec![4, 5],
        "the loader gets exactly the keys no level had"
    );
    let answers: Vec<(i64, Source, Option<Item>)> = lookups
        .into_iter()
        .map(|(k, l)| (k, l.source, l.value.map(|v| (*v).clone())))
        .collect();
    assert_eq!(
        answers,
        vec![
            (1, Source::L2, Some(Item::new(1))),
            (2, Source::L2, Some(Item::new(2))),
            (3, Source::L1, Some(Item::new(3))),
            (4, Source::Loader, Some(Item::new(4))),
            (5, Source::Loader, None),
            (3, Source::L1, Some(Item::new(3))),
        ]
    );
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mgets = info
        .lines()
        .find(|l| l.starts_with("cmdstat_mget:"))
        .unwrap_or("none");
    assert!(mgets.starts_with("cmdstat_mget:calls=1,"), "{mgets}");
    // The loaded value and the negative entry were written back.
    let stored: Vec<Option<Vec<u8>>> = redis
        .mget(&[format!("{prefix}item:4"), format!("{prefix}item:5")])
        .await
        .unwrap();
    assert!(stored[0].as_ref().is_some_and(|v| !v.is_empty()));
    assert_eq!(stored[1].as_deref(), Some(&b""[..]));

    let again = cache
        .get_many_or_load(&keys, |_| async { Err::<HashMap<i64, Item>, _>(StoreDown) })
        .await
        .unwrap();
    assert!(
        again.iter().all(|(_, l)| l.source == Source::L1),
        "all cached now"
    );
}

#[tokio::test]
async fn get_many_loader_errors_are_returned_and_not_cached() {
    let (cache, _prefix) = support::cache::<Item>().await;

    let failed = cache
        .get_many_or_load(&[1, 2], |_| async {
            Err::<HashMap<i64, Item>, _>(StoreDown)
        })
        .await;
    let loaded = cache
        .get_many_or_load(&[1, 2], |keys| async move { found_all(&keys, &[]) })
        .await
        .unwrap();

    assert!(failed.unwrap_err().is_loader());
    assert!(loaded.iter().all(|(_, l)| l.source == Source::Loader));
}

#[tokio::test]
async fn set_and_invalidate_reach_both_levels() {
    let (cache, prefix) = support::cache::<Item>().await;
    let mut redis = support::raw_redis().await;
    let key = format!("{prefix}item:9");

    cache.set(&9, Item::with_name(9, "written".into())).await;
    let after_set = cache.get_or_load(&9, || async { found(9) }).await.unwrap();
    let in_redis: bool = redis.exists(&key).await.unwrap();
    cache.invalidate(&9).await;
    let gone: bool = redis.exists(&key).await.unwrap();
    let after_invalidate = cache.get_or_load(&9, || async { found(9) }).await.unwrap();

    assert_eq!(after_set.source, Source::L1);
    assert_eq!(after_set.value.unwrap().name, "written");
    assert!(in_redis);
    assert!(!gone);
    assert_eq!(after_invalidate.source, Source::Loader);
}

#[tokio::test]
async fn invalidate_many_removes_every_key_everywhere() {
    let (cache, prefix) = support::cache::<Item>().await;
    let mut redis = support::raw_redis().await;
    for id in 1..=5 {
        let _ = cache
            .get_or_load(&id, || async move { found(id) })
            .await
            .unwrap();
    }

    cache.invalidate_many(&[1, 2, 3]).await;

    let left = support::scan_keys(&mut redis, &format!("{prefix}*")).await;
    assert_eq!(
        left,
        vec![format!("{prefix}item:4"), format!("{prefix}item:5")]
    );
    let reloaded = cache.get_or_load(&2, || async { found(2) }).await.unwrap();
    let kept = cache.get_or_load(&4, || async { found(4) }).await.unwrap();
    assert_eq!((reloaded.source, kept.source), (Source::Loader, Source::L1));
}

#[tokio::test]
async fn clear_removes_only_this_caches_keys() {
    let mut redis = support::raw_redis().await;
    let prefix = support::unique_prefix();
    let ours = support::builder::<Item>(&prefix).build().await.unwrap();
    let other = support::builder::<Item>(&prefix)
        .namespace("other")
        .build()
        .await
        .unwrap();
    // More keys than one SCAN batch, to exercise the cursor loop.
    let ids: Vec<i64> = (0..1_200).collect();
    ours.warm(
        ids.clone(),
        300,
        |keys| async move { found_all(&keys, &[]) },
    )
    .await
    .unwrap();
    other.set(&1, Item::new(1)).await;
    let _: () = redis
        .set(format!("{prefix}itemx"), "not ours")
        .await
        .unwrap();

    ours.clear().await;

    let left = support::scan_keys(&mut redis, &format!("{prefix}*")).await;
    assert_eq!(
        left,
        vec![format!("{prefix}itemx"), format!("{prefix}other:1")]
    );
    assert_eq!(ours.stats().l1.entries, 0);
    let reloaded = ours.get_or_load(&1, || async { found(1) }).await.unwrap();
    assert_eq!(reloaded.source, Source::Loader);
}

#[tokio::test]
async fn warm_loads_in_batches_and_fills_both_levels() {
    let (cache, prefix) = support::cache::<Item>().await;
    let mut redis = support::raw_redis().await;
    let batches = std::sync::Mutex::new(Vec::new());

    let warmed = cache
        .warm((1..=250).collect(), 100, |keys| {
            batches.lock().unwrap().push(keys.len());
            async move { found_all(&keys, &[13]) }
        })
        .await
        .unwrap();

    assert_eq!(warmed, 249);
    assert_eq!(batches.into_inner().unwrap(), vec![100, 100, 50]);
    assert_eq!(
        support::scan_keys(&mut redis, &format!("{prefix}*"))
            .await
            .len(),
        249
    );
    let hit = cache
        .get_or_load(&200, || async { found(200) })
        .await
        .unwrap();
    assert_eq!(hit.source, Source::L1);
    assert_eq!(cache.stats().loader.loads, 3);
}

#[tokio::test]
async fn redis_unreachable_at_start_serves_from_the_loader() {
    let closed = testkit::free_port();
    let cache: TieredCache<i64, Item> = support::builder(&support::unique_prefix())
        .redis_url(format!("redis://127.0.0.1:{closed}"))
        .build()
        .await
        .unwrap();

    assert_eq!(cache.l2_state(), L2State::Down);
    for id in 0..20 {
        let lookup = cache
            .get_or_load(&id, || async move { found(id) })
            .await
            .unwrap();
        assert_eq!(lookup.source, Source::Loader);
        assert_eq!(lookup.value.as_deref(), Some(&Item::new(id)));
    }
    let again = cache.get_or_load(&3, || async { found(3) }).await.unwrap();
    assert_eq!(again.source, Source::L1);
    cache.set(&100, Item::new(100)).await;
    cache.invalidate(&100).await;
    cache.clear().await;
    let stats = cache.stats();
    assert_eq!(stats.l2.state, L2State::Down);
    assert_eq!(stats.l2.hits, 0);
}

#[tokio::test]
async fn without_redis_the_cache_is_l1_only() {
    let cache: TieredCache<i64, Item> = TieredCache::builder().build().await.unwrap();

    let first = cache.get_or_load(&1, || async { found(1) }).await.unwrap();
    let second = cache.get_or_load(&1, || async { found(1) }).await.unwrap();

    assert_eq!((first.source, second.source), (Source::Loader, Source::L1));
    assert_eq!(cache.l2_state(), L2State::Disabled);
    assert_eq!(cache.stats().l2.state, L2State::Disabled);
    assert!(cache.stats().l1.bytes > 0);
}

#[tokio::test]
async fn stats_serialize_with_lowercase_state() {
    let (cache, _prefix) = support::cache::<Item>().await;
    let _ = cache.get_or_load(&1, || async { found(1) }).await.unwrap();

    let json = serde_json::to_value(cache.stats()).unwrap();

    assert_eq!(json["l2"]["state"], "up");
    assert_eq!(json["loader"]["loads"], 1);
    assert_eq!(json["l1"]["entries"], 1);
}

#[test]
fn futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<TieredCache<i64, Item>>();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache: TieredCache<i64, Item> = runtime.block_on(TieredCache::builder().build()).unwrap();
    let keys = [1i64];
    assert_send(&TieredCache::<i64, Item>::builder().build());
    assert_send(&cache.get_or_load(&1, || async { found(1) }));
    assert_send(&cache.get_many_or_load(&keys, |k| async move { found_all(&k, &[]) }));
    assert_send(&cache.warm(vec![1], 10, |k| async move { found_all(&k, &[]) }));
    assert_send(&cache.set(&1, Item::new(1)));
    assert_send(&cache.invalidate(&1));
    assert_send(&cache.invalidate_many(&keys));
    assert_send(&cache.clear());
}
