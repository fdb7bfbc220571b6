//! Write-behind against a real Redis, with an in-memory "store" whose
//! failures the tests control.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use testkit::{PrivateCluster, wait_for};
use tiercache::{CacheEvent, Change, Flush, FlushError, Queued, Source, TieredCache};

use crate::events::expect_event;
use crate::support::{self, Redis, StoreDown};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    id: i64,
    version: u64,
    text: String,
}

fn doc(id: i64, version: u64) -> Doc {
    Doc {
        id,
        version,
        text: format!("{id} at {version}"),
    }
}

/// The store: key → (version, value or deleted), applied only over older
/// versions, like the catalog's SQL.
#[derive(Debug, Default)]
struct MemStore {
    rows: Mutex<HashMap<i64, (u64, Option<Doc>)>>,
    batches: AtomicUsize,
    /// Every (key, version) applied, to find duplicates.
    applied: Mutex<Vec<(i64, u64)>>,
    down: AtomicBool,
    /// Keys whose changes the store rejects for good.
    poison: Vec<i64>,
    /// Time each batch takes.
    delay: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("rejected")]
struct Rejected;

#[derive(Clone)]
struct Flusher(Arc<MemStore>);

impl Flush<i64, Doc> for Flusher {
    fn flush<'a>(&'a self, batch: &'a [Queued<i64, Doc>]) -> BoxFuture<'a, Result<(), FlushError>> {
        Box::pin(async move {
            let store = &self.0;
            tokio::time::sleep(store.delay).await;
            if store.down.load(Ordering::SeqCst) {
                return Err(FlushError::Unavailable(Box::new(StoreDown)));
            }
            if batch.iter().any(|q| store.poison.contains(&q.key)) {
                return Err(FlushError::Rejected(Box::new(Rejected)));
            }
            store.batches.fetch_add(1, Ordering::SeqCst);
            let mut rows = store.rows.lock().unwrap();
            for queued in batch {
                let row = rows.entry(queued.key).or_insert((0, None));
                if row.0 < queued.version {
                    let value = match &queued.change {
                        Change::Put(doc) => Some(doc.clone()),
                        Change::Delete => None,
                    };
                    *row = (queued.version, value);
                    store
                        .applied
                        .lock()
                        .unwrap()
                        .push((queued.key, queued.version));
                }
            }
            Ok(())
        })
    }
}

async fn cache(redis: &Redis, prefix: &str, store: &Arc<MemStore>) -> TieredCache<i64, Doc> {
    support::builder(prefix)
        .redis_url(redis.url())
        .versioned("version", |d: &Doc| d.version)
        .write_behind(Flusher(Arc::clone(store)), Duration::from_millis(20))
        .build()
        .await
        .unwrap()
}

fn row(store: &MemStore, key: i64) -> Option<(u64, Option<Doc>)> {
    store.rows.lock().unwrap().get(&key).cloned()
}

async fn rapid_updates_of_one_key_coalesce_into_few_store_writes(redis: &Redis) {
    let prefix = support::unique_prefix();
    let store = Arc::new(MemStore {
        delay: Duration::from_millis(50),
        ..MemStore::default()
    });
    let cache = cache(redis, &prefix, &store).await;

    for version in 1..=100 {
        cache
            .write_behind(&1, version, Change::Put(doc(1, version)))
            .await
            .unwrap();
    }
    let hit = cache
        .get_or_load(&1, || async { Err::<Option<Doc>, _>(StoreDown) })
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(5),
        "version 100 reaches the store",
        || async { row(&store, 1).is_some_and(|(v, _)| v == 100) },
    )
    .await;
    wait_for(Duration::from_secs(5), "the queue is empty", || async {
        cache.stats().write_behind.flushed == 100
    })
    .await;

    assert_eq!(hit.value.unwrap().version, 100);
    // On a cluster the writes are not made on the tracking connections, so
    // client tracking echoes them back; an echo of an earlier version can
    // fence the newest one out of L1, and the read then comes from L2.
    let cached = if redis.is_cluster() {
        vec![Source::L1, Source::L2]
    } else {
        vec![Source::L1]
    };
    assert!(cached.contains(&hit.source), "{:?}", hit.source);
    let batches = store.batches.load(Ordering::SeqCst);
    assert!(batches < 10, "{batches} store writes for 100 rapid updates");
    let stats = cache.stats().write_behind;
    assert_eq!(stats.coalesced as usize, 100 - batches, "{stats:?}");
}

async fn a_version_that_is_not_newer_is_a_conflict_and_changes_nothing(redis: &Redis) {
    let prefix = support::unique_prefix();
    let store = Arc::new(MemStore::default());
    let cache = cache(redis, &prefix, &store).await;

    cache
        .write_behind(&1, 2, Change::Put(doc(1, 2)))
        .await
        .unwrap();
    let same = cache.write_behind(&1, 2, Change::Put(doc(1, 2))).await;
    let older = cache.write_behind(&1, 1, Change::Put(doc(1, 1))).await;

    assert!(same.unwrap_err().is_conflict());
    assert!(older.unwrap_err().is_conflict());
    wait_for(Duration::from_secs(5), "version 2 is stored", || async {
        row(&store, 1).is_some_and(|(v, _)| v == 2)
    })
    .await;
}

async fn a_queued_delete_reads_as_absent_everywhere_before_it_is_flushed(redis: &Redis) {
    let prefix = support::unique_prefix();
    let store = Arc::new(MemStore::default());
    store.down.store(true, Ordering::SeqCst);
    let writer = cache(redis, &prefix, &store).await;
    let reader: TieredCache<i64, Doc> = support::builder(&prefix)
        .redis_url(redis.url())
        .versioned("version", |d: &Doc| d.version)
        .build()
        .await
        .unwrap();

    writer.write_behind(&5, 3, Change::Delete).await.unwrap();
    let here = writer
        .get_or_load(&5, || async { Ok::<_, StoreDown>(Some(doc(5, 2))) })
        .await
        .unwrap();
    let there = reader
        .get_or_load(&5, || async { Ok::<_, StoreDown>(Some(doc(5, 2))) })
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(5),
        "a flush failed on the store being down",
        || async { writer.stats().write_behind.failed >= 1 },
    )
    .await;
    store.down.store(false, Ordering::SeqCst);
    wait_for(
        Duration::from_secs(10),
        "the delete reaches the store",
        || async { row(&store, 5) == Some((3, None)) },
    )
    .await;

    assert_eq!((here.value, here.source), (None, Source::L1));
    assert_eq!((there.value, there.source), (None, Source::L2));
}

async fn a_poison_change_is_dead_lettered_while_the_rest_flush(redis: &Redis) {
    let prefix = support::unique_prefix();
    let store = Arc::new(MemStore {
        poison: vec![13],
        delay: Duration::from_millis(30),
        ..MemStore::default()
    });
    let cache = cache(redis, &prefix, &store).await;

    for key in [11, 12, 13, 14] {
        cache
            .write_behind(&key, 1, Change::Put(doc(key, 1)))
            .await
            .unwrap();
    }
    wait_for(
        Duration::from_secs(5),
        "the good changes are stored",
        || async { [11, 12, 14].iter().all(|&k| row(&store, k).is_some()) },
    )
    .await;
    wait_for(Duration::from_secs(5), "the queue is empty", || async {
        cache.stats().write_behind.flushed == 4
    })
    .await;
    let dead = redis.dead_letters(&format!("{prefix}item")).await;

    assert_eq!(row(&store, 13), None);
    assert_eq!(cache.stats().write_behind.dead_lettered, 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let text = format!("{dead:?}");
    assert!(text.contains("rejected"), "{text}");
}

async fn changes_left_by_a_crashed_instance_are_flushed_by_another(redis: &Redis) {
    let prefix = support::unique_prefix();
    let broken = Arc::new(MemStore::default());
    broken.down.store(true, Ordering::SeqCst);
    let crashed = cache(redis, &prefix, &broken).await;
    for key in 1..=5 {
        crashed
            .write_behind(&key, 1, Change::Put(doc(key, 1)))
            .await
            .unwrap();
    }
    // The crashed instance read them (they are pending under its name).
    wait_for(
        Duration::from_secs(5),
        "the first flush was tried",
        || async { crashed.stats().write_behind.failed >= 1 },
    )
    .await;
    drop(crashed);

    let store = Arc::new(MemStore::default());
    let survivor = cache(redis, &prefix, &store).await;
    wait_for(
        Duration::from_secs(10),
        "the survivor flushed and acknowledged them",
        // The rows reach the store before the flusher counts them (it
        // counts after acknowledging): wait for both.
        || async {
            (1..=5).all(|k| row(&store, k).is_some()) && survivor.stats().write_behind.flushed >= 5
        },
    )
    .await;

    assert_eq!(survivor.stats().write_behind.flushed, 5);
}

async fn two_instances_flushing_one_queue_lose_and_repeat_nothing(redis: &Redis) {
    let prefix = support::unique_prefix();
    let store = Arc::new(MemStore::default());
    let a = cache(redis, &prefix, &store).await;
    let b = cache(redis, &prefix, &store).await;

    for version in 1..=20u64 {
        for key in 1..=10i64 {
            let writer = if (key + i64::try_from(version).unwrap()) % 2 == 0 {
                &a
            } else {
                &b
            };
            writer
                .write_behind(&key, version, Change::Put(doc(key, version)))
                .await
                .unwrap();
        }
    }
    wait_for(
        Duration::from_secs(10),
        "every key at version 20",
        || async { (1..=10).all(|k| row(&store, k).is_some_and(|(v, _)| v == 20)) },
    )
    .await;
    wait_for(Duration::from_secs(10), "both queues drained", || async {
        a.stats().write_behind.flushed + b.stats().write_behind.flushed == 200
    })
    .await;

    let applied = store.applied.lock().unwrap().clone();
    let mut distinct = applied.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), applied.len(), "a change was applied twice");
    for key in 1..=10 {
        assert_eq!(row(&store, key).unwrap().1, Some(doc(key, 20)));
    }
}

#[tokio::test]
async fn write_behind_without_redis_is_refused_at_build() {
    let error = TieredCache::<i64, Doc>::builder()
        .versioned("version", |d: &Doc| d.version)
        .write_behind(Flusher(Arc::default()), Duration::from_millis(20))
        .build()
        .await
        .unwrap_err();

    assert!(error.is_config());
    assert!(error.to_string().contains("needs Redis"), "{error}");
}

async fn a_queued_value_survives_a_cache_clear_until_the_store_has_it(redis: &Redis) {
    let prefix = support::unique_prefix();
    let store = Arc::new(MemStore::default());
    store.down.store(true, Ordering::SeqCst);
    let cache = cache(redis, &prefix, &store).await;

    cache
        .write_behind(&1, 2, Change::Put(doc(1, 2)))
        .await
        .unwrap();
    cache.clear().await;
    let after_clear = cache
        .get_or_load(&1, || async { Ok::<_, StoreDown>(Some(doc(1, 1))) })
        .await
        .unwrap();
    let stale_write = cache.write_behind(&1, 2, Change::Put(doc(1, 2))).await;
    store.down.store(false, Ordering::SeqCst);
    wait_for(
        Duration::from_secs(10),
        "version 2 reaches the store",
        || async { row(&store, 1).is_some_and(|(v, _)| v == 2) },
    )
    .await;

    assert_eq!(
        after_clear.source,
        Source::L2,
        "answered from the queue, not the store"
    );
    assert_eq!(after_clear.value.unwrap().version, 2);
    assert!(
        stale_write.unwrap_err().is_conflict(),
        "version 2 is queued already"
    );
}

/// What graceful shutdown does: drain writes every queued change (of every
/// partition, on a cluster) to the store before it returns.
async fn drain_flushes_every_queued_change(redis: &Redis) {
    let prefix = support::unique_prefix();
    let store = Arc::new(MemStore::default());
    store.down.store(true, Ordering::SeqCst);
    let cache = cache(redis, &prefix, &store).await;
    for key in 1..=40 {
        cache
            .write_behind(&key, 1, Change::Put(doc(key, 1)))
            .await
            .unwrap();
    }
    store.down.store(false, Ordering::SeqCst);

    let drained = cache.drain_write_behind(Duration::from_secs(10)).await;

    assert!(drained, "the queue was not empty within the limit");
    for key in 1..=40 {
        assert_eq!(row(&store, key), Some((1, Some(doc(key, 1)))), "key {key}");
    }
}

// Every scenario on the shared single server, each in its own test.

#[tokio::test]
async fn flush_results_are_cache_events() {
    let redis = Redis::single().await;
    let store = Arc::new(MemStore {
        poison: vec![9],
        ..MemStore::default()
    });
    let cache = cache(&redis, &support::unique_prefix(), &store).await;
    let mut events = cache.subscribe();
    cache
        .write_behind(&1, 1, Change::Put(doc(1, 1)))
        .await
        .unwrap();
    expect_event(&mut events, "the flush", |e| {
        matches!(e, CacheEvent::WriteBehindFlushed { changes: 1 })
    })
    .await;

    store.down.store(true, Ordering::SeqCst);
    cache
        .write_behind(&2, 1, Change::Put(doc(2, 1)))
        .await
        .unwrap();
    expect_event(&mut events, "the failed flush", |e| {
        matches!(e, CacheEvent::WriteBehindFailed { changes: 1 })
    })
    .await;
    store.down.store(false, Ordering::SeqCst);

    cache
        .write_behind(&9, 1, Change::Put(doc(9, 1)))
        .await
        .unwrap();
    let dead = CacheEvent::WriteBehindDeadLettered {
        key: "9".to_owned(),
    };
    expect_event(&mut events, "the dead letter", |e| *e == dead).await;
}

#[tokio::test]
async fn rapid_updates_of_one_key_coalesce_into_few_store_writes_on_one_server() {
    rapid_updates_of_one_key_coalesce_into_few_store_writes(&Redis::single().await).await;
}

#[tokio::test]
async fn a_version_that_is_not_newer_is_a_conflict_and_changes_nothing_on_one_server() {
    a_version_that_is_not_newer_is_a_conflict_and_changes_nothing(&Redis::single().await).await;
}

#[tokio::test]
async fn a_queued_delete_reads_as_absent_everywhere_before_it_is_flushed_on_one_server() {
    a_queued_delete_reads_as_absent_everywhere_before_it_is_flushed(&Redis::single().await).await;
}

#[tokio::test]
async fn a_poison_change_is_dead_lettered_while_the_rest_flush_on_one_server() {
    a_poison_change_is_dead_lettered_while_the_rest_flush(&Redis::single().await).await;
}

#[tokio::test]
async fn changes_left_by_a_crashed_instance_are_flushed_by_another_on_one_server() {
    changes_left_by_a_crashed_instance_are_flushed_by_another(&Redis::single().await).await;
}

#[tokio::test]
async fn drain_flushes_every_queued_change_on_one_server() {
    drain_flushes_every_queued_change(&Redis::single().await).await;
}

#[tokio::test]
async fn two_instances_flushing_one_queue_lose_and_repeat_nothing_on_one_server() {
    two_instances_flushing_one_queue_lose_and_repeat_nothing(&Redis::single().await).await;
}

#[tokio::test]
async fn a_queued_value_survives_a_cache_clear_until_the_store_has_it_on_one_server() {
    a_queued_value_survives_a_cache_clear_until_the_store_has_it(&Redis::single().await).await;
}

/// Every scenario on one private cluster (3 primaries + 3 replicas), where
/// the queue is partitioned by hash tag and a write is three steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_holds_on_a_cluster() {
    let cluster = PrivateCluster::start().await;
    let redis = Redis::cluster(&cluster);
    rapid_updates_of_one_key_coalesce_into_few_store_writes(&redis).await;
    a_version_that_is_not_newer_is_a_conflict_and_changes_nothing(&redis).await;
    a_queued_delete_reads_as_absent_everywhere_before_it_is_flushed(&redis).await;
    a_poison_change_is_dead_lettered_while_the_rest_flush(&redis).await;
    changes_left_by_a_crashed_instance_are_flushed_by_another(&redis).await;
    two_instances_flushing_one_queue_lose_and_repeat_nothing(&redis).await;
    drain_flushes_every_queued_change(&redis).await;
    a_queued_value_survives_a_cache_clear_until_the_store_has_it(&redis).await;
}

/// A burst of changes on a cluster, a primary that holds part of the queue
/// killed in the middle of it, then the writer gone (a crash: its read
/// entries stay pending under its name): every change acknowledged reaches
/// the store, at its version, through another instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_a_primary_failover_and_the_writers_crash() {
    let mut cluster = PrivateCluster::start().await;
    let redis = Redis::cluster(&cluster);
    let prefix = support::unique_prefix();
    let down = Arc::new(MemStore::default());
    down.down.store(true, Ordering::SeqCst);
    let writer = cache(&redis, &prefix, &down).await;
    // The primary of the queue's first partition (named as in
    // `write_behind::partition`).
    let victim = cluster
        .primary_for_key(&format!("{{{prefix}item#wb.0}}"))
        .await;

    let mut acknowledged: HashMap<i64, u64> = HashMap::new();
    for version in 1..=4u64 {
        for key in 1..=40i64 {
            if (version, key) == (3, 20) {
                cluster.kill(victim);
            }
            let write = writer
                .write_behind(&key, version, Change::Put(doc(key, version)))
                .await;
            if write.is_ok() {
                acknowledged.insert(key, version);
            }
        }
    }
    cluster.wait_failed_over(Duration::from_secs(20)).await;
    // After the failover every key takes one more change.
    for key in 1..=40i64 {
        wait_for(
            Duration::from_secs(10),
            &format!("key {key} takes version 5 after the failover"),
            // A conflict: an attempt whose answer was lost queued it.
            || async {
                let write = writer.write_behind(&key, 5, Change::Put(doc(key, 5))).await;
                write.is_ok() || write.is_err_and(|e| e.is_conflict())
            },
        )
        .await;
        acknowledged.insert(key, 5);
    }
    drop(writer);

    let store = Arc::new(MemStore::default());
    let _survivor = cache(&redis, &prefix, &store).await;
    wait_for(
        Duration::from_secs(20),
        "every acknowledged change in the store",
        || async {
            acknowledged
                .iter()
                .all(|(&key, &version)| row(&store, key).is_some_and(|(v, _)| v == version))
        },
    )
    .await;
    for (key, version) in acknowledged {
        assert_eq!(row(&store, key), Some((version, Some(doc(key, version)))));
    }
}
