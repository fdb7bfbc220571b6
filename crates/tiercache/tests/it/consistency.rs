//! Race-free fills: version-guarded Redis writes, fenced L1 fills, and tag
//! generations, each with the interleaving forced (a loader held on a
//! barrier while a writer acts).

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use testkit::wait_for;
use tiercache::{Source, TieredCache, TieredCacheBuilder};
use tokio::sync::Barrier;

use crate::support::{self, StoreDown};

/// A value with a version, like a catalog product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    id: i64,
    version: u64,
}

fn doc(version: u64) -> Result<Option<Doc>, StoreDown> {
    Ok(Some(Doc { id: 1, version }))
}

fn versioned(prefix: &str) -> TieredCacheBuilder<i64, Doc> {
    support::builder(prefix).versioned("version", |d: &Doc| d.version)
}

/// Starts a read of key 1 whose loader returns version 1, and holds that
/// loader after its "store read" until `release` is passed.
fn slow_reader(
    cache: &TieredCache<i64, Doc>,
    loaded: &Arc<Barrier>,
    release: &Arc<Barrier>,
) -> tokio::task::JoinHandle<Result<tiercache::Lookup<Doc>, tiercache::LoadError<StoreDown>>> {
    let cache = cache.clone();
    let (loaded, release) = (Arc::clone(loaded), Arc::clone(release));
    tokio::spawn(async move {
        cache
            .get_or_load(&1, move || async move {
                loaded.wait().await;
                release.wait().await;
                doc(1)
            })
            .await
    })
}

#[tokio::test]
async fn a_slow_reader_cannot_put_an_old_version_back_after_a_write() {
    support::raw_redis().await;
    let prefix = support::unique_prefix();
    let reader = versioned(&prefix).build().await.unwrap();
    let writer = versioned(&prefix).build().await.unwrap();
    let (loaded, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));

    let slow = slow_reader(&reader, &loaded, &release);
    loaded.wait().await;
    // The store now holds version 2; the writer invalidates as the catalog does.
    writer.invalidate_version(&1, 2).await;
    release.wait().await;
    let slow = slow.await.unwrap().unwrap();
    let after = reader.get_or_load(&1, || async { doc(2) }).await.unwrap();
    let mut redis = support::raw_redis().await;
    let stored: Vec<u8> = redis.get(format!("{prefix}item:1")).await.unwrap();

    assert_eq!(
        slow.value.unwrap().version,
        1,
        "the slow reader answers what it read"
    );
    assert_eq!(
        after.source,
        Source::Loader,
        "version 1 was kept out of L1 and L2"
    );
    assert_eq!(after.value.unwrap().version, 2);
    assert_eq!(stored, br#"{"id":1,"version":2}"#);
    assert_eq!(reader.stats().l2.guard_rejections, 1);
}

#[tokio::test]
async fn a_slow_reader_cannot_replace_a_newer_value_another_reader_stored() {
    support::raw_redis().await;
    let prefix = support::unique_prefix();
    let slow_cache = versioned(&prefix).build().await.unwrap();
    let fast_cache = versioned(&prefix).build().await.unwrap();
    let (loaded, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));

    let slow = slow_reader(&slow_cache, &loaded, &release);
    loaded.wait().await;
    fast_cache.invalidate_version(&1, 2).await;
    let fast = fast_cache
        .get_or_load(&1, || async { doc(2) })
        .await
        .unwrap();
    release.wait().await;
    let _ = slow.await.unwrap().unwrap();
    slow_cache.clear_local();
    let from_l2 = slow_cache
        .get_or_load(&1, || async { Err::<Option<Doc>, _>(StoreDown) })
        .await
        .unwrap();

    assert_eq!(fast.source, Source::Loader);
    assert_eq!(from_l2.source, Source::L2);
    assert_eq!(from_l2.value.unwrap().version, 2);
    assert_eq!(slow_cache.stats().l2.guard_rejections, 1);
}

#[tokio::test]
async fn an_l1_fill_that_started_before_an_invalidation_is_dropped() {
    // L1 only: the fence alone must keep the old value out.
    let cache: TieredCache<i64, Doc> = TieredCache::builder().build().await.unwrap();
    let (loaded, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));

    let slow = slow_reader(&cache, &loaded, &release);
    loaded.wait().await;
    cache.invalidate(&1).await;
    release.wait().await;
    let _ = slow.await.unwrap().unwrap();
    let after = cache.get_or_load(&1, || async { doc(2) }).await.unwrap();

    assert_eq!(after.source, Source::Loader);
    assert_eq!(after.value.unwrap().version, 2);
    assert_eq!(cache.stats().fenced_fills, 1);
}

#[tokio::test]
async fn an_invalidation_from_another_instance_fences_a_running_fill() {
    support::raw_redis().await;
    let prefix = support::unique_prefix();
    // Unversioned, so that only the bus-driven fence can keep version 1 out
    // of the reader's L1 (its L2 write of version 1 goes through); client
    // tracking off, so that the bus message is the only invalidation.
    let build = || support::builder(&prefix).client_tracking(false).build();
    let reader: TieredCache<i64, Doc> = build().await.unwrap();
    let writer: TieredCache<i64, Doc> = build().await.unwrap();
    let (loaded, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    // Key 2 in the reader's L1 shows when the writer's message has arrived.
    let _ = reader.get_or_load(&2, || async { doc(1) }).await.unwrap();

    let slow = slow_reader(&reader, &loaded, &release);
    loaded.wait().await;
    writer.invalidate_many(&[1, 2]).await;
    wait_for(
        Duration::from_secs(2),
        "the reader applied the invalidation",
        || async {
            let probe = reader.get_or_load(&2, || async { Ok::<Option<Doc>, StoreDown>(None) });
            probe.await.unwrap().source != Source::L1
        },
    )
    .await;
    release.wait().await;
    let _ = slow.await.unwrap().unwrap();

    assert_eq!(reader.stats().fenced_fills, 1);
    reader.invalidate(&1).await;
}

#[tokio::test]
async fn tag_generations_move_on_every_instance_and_never_come_back() {
    support::raw_redis().await;
    let prefix = support::unique_prefix();
    let a: TieredCache<i64, Doc> = support::builder(&prefix).build().await.unwrap();
    let b: TieredCache<i64, Doc> = support::builder(&prefix).build().await.unwrap();

    let initial = (
        a.tag_generation("tools").await,
        b.tag_generation("tools").await,
    );
    a.invalidate_tags(&["tools"]).await;
    let moved = a.tag_generation("tools").await;
    wait_for(
        Duration::from_secs(1),
        "B learns the new generation",
        || async { b.tag_generation("tools").await == moved },
    )
    .await;
    let other_tag = b.tag_generation("garden").await;
    a.clear().await;
    a.invalidate_tags(&["tools"]).await;
    let after_clear = a.tag_generation("tools").await;

    assert_eq!(initial, (0, 0));
    assert!(moved > 0);
    assert_eq!(other_tag, 0);
    assert!(
        after_clear > moved,
        "{after_clear} <= {moved}: a generation came back"
    );
}
