//! The cache without Redis: what a crate built with
//! `default-features = false` offers (CI runs this file in that build, and
//! in the full one). No server needed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tiercache::{BusState, EntryOptions, L2State, Loaded, Source, TieredCache};

#[derive(Debug, thiserror::Error)]
#[error("store down")]
struct StoreDown;

async fn cache() -> TieredCache<u64, String> {
    TieredCache::builder()
        .namespace("l1only")
        .l1_max_entries(1_000)
        .build()
        .await
        .expect("an L1-only cache needs no server")
}

#[tokio::test]
async fn reads_fill_l1_and_hits_skip_the_loader() {
    let cache = cache().await;
    let loads = Arc::new(AtomicUsize::new(0));
    for expected in [Source::Loader, Source::L1, Source::L1] {
        let counter = Arc::clone(&loads);
        let lookup = cache
            .get_or_load(&1, move || async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, StoreDown>(Some("one".to_owned()))
            })
            .await
            .unwrap();
        assert_eq!(lookup.source, expected);
        assert_eq!(lookup.value.as_deref().map(String::as_str), Some("one"));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!(stats.l1.entries, 1);
    assert_eq!(stats.loader.loads, 1);
    assert_eq!(stats.l2.state, L2State::Disabled);
    assert_eq!(cache.l2_state(), L2State::Disabled);
    assert_eq!(cache.bus_state(), BusState::Disabled);
    assert_eq!(cache.bus_channel(), None);
    assert!(cache.wait_subscribed(Duration::from_millis(1)).await);
}

#[tokio::test]
async fn absent_keys_are_remembered_and_writes_replace_them() {
    let cache = cache().await;
    let absent = cache
        .get_or_load(&2, || async { Ok::<_, StoreDown>(None) })
        .await
        .unwrap();
    assert_eq!((absent.value, absent.source), (None, Source::Loader));
    let again = cache
        .get_or_load(&2, || async { Err::<Option<String>, _>(StoreDown) })
        .await
        .unwrap();
    assert_eq!((again.value, again.source), (None, Source::L1));
    assert_eq!(cache.stats().negative_hits, 1);

    cache.set(&2, "two".to_owned()).await;
    let written = cache
        .get_or_load(&2, || async { Err::<Option<String>, _>(StoreDown) })
        .await
        .unwrap();
    assert_eq!(written.value.as_deref().map(String::as_str), Some("two"));

    cache.invalidate(&2).await;
    let error = cache
        .get_or_load(&2, || async { Err::<Option<String>, _>(StoreDown) })
        .await
        .unwrap_err();
    assert!(error.is_loader());
}

#[tokio::test]
async fn concurrent_misses_share_one_load() {
    let cache = cache().await;
    let loads = Arc::new(AtomicUsize::new(0));
    let reads = (0..20).map(|_| {
        let cache = cache.clone();
        let loads = Arc::clone(&loads);
        tokio::spawn(async move {
            cache
                .get_or_load(&3, move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, StoreDown>(Some("three".to_owned()))
                })
                .await
                .unwrap()
        })
    });
    for read in futures_util::future::join_all(reads).await {
        assert_eq!(
            read.unwrap().value.as_deref().map(String::as_str),
            Some("three")
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tags_warming_and_clearing_work_in_process() {
    let cache = cache().await;
    let before = cache.tag_generation("tools").await;
    cache.invalidate_tags(&["tools"]).await;
    assert!(cache.tag_generation("tools").await > before);

    let warmed = cache
        .warm((10..20).collect(), 4, |ids| async move {
            Ok::<_, StoreDown>(
                ids.into_iter()
                    .map(|id| (id, format!("item {id}")))
                    .collect::<HashMap<_, _>>(),
            )
        })
        .await
        .unwrap();
    assert_eq!(warmed, 10);
    let many = cache
        .get_many_or_load(&[10, 19, 20], |missing| async move {
            assert_eq!(missing, vec![20], "only the cold key is loaded");
            Ok::<_, StoreDown>(HashMap::new())
        })
        .await
        .unwrap();
    let many: HashMap<u64, _> = many.into_iter().collect();
    assert_eq!(
        many[&19].value.as_deref().map(String::as_str),
        Some("item 19")
    );
    assert_eq!(many[&19].source, Source::L1);
    assert_eq!(many[&20].value, None);

    cache.clear().await;
    assert_eq!(cache.stats().l1.entries, 0);
}

#[tokio::test]
async fn loaders_and_calls_choose_how_long_entries_live() {
    let cache = cache().await;
    let short = cache
        .get_or_load_with(&4, &EntryOptions::new(), || async {
            Ok::<_, StoreDown>(Loaded::found("four".to_owned()).ttl(Duration::from_millis(50)))
        })
        .await
        .unwrap();
    assert_eq!(short.source, Source::Loader);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reloaded = cache
        .get_or_load(&4, || async {
            Ok::<_, StoreDown>(Some("four again".to_owned()))
        })
        .await
        .unwrap();
    assert_eq!(
        reloaded.source,
        Source::Loader,
        "the loader's 50 ms TTL ran out"
    );

    for options in [
        EntryOptions::new().skip_l1(),
        EntryOptions::new().ttl(Duration::ZERO),
    ] {
        cache.invalidate(&5).await;
        for _ in 0..2 {
            let lookup = cache
                .get_or_load_with(&5, &options, || async {
                    Ok::<_, StoreDown>(Loaded::found("five".to_owned()))
                })
                .await
                .unwrap();
            assert_eq!(
                lookup.source,
                Source::Loader,
                "{options:?} kept it out of L1"
            );
        }
    }
    let once = cache
        .get_or_load_with(&6, &EntryOptions::new(), || async {
            Ok::<_, StoreDown>(Loaded::found("six".to_owned()).uncached())
        })
        .await
        .unwrap();
    assert_eq!(once.value.as_deref().map(String::as_str), Some("six"));
    assert_eq!(cache.stats().l1.entries, 1, "only key 4 is cached");
}
