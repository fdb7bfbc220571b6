//! Writes that meet a failing Redis (SPEC §8): the write is acknowledged,
//! the writer never answers the old version again, the invalidation is
//! retried until Redis takes it, and then every instance answers the
//! store's version within a second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use testkit::{PrivateRedis, wait_for};
use tiercache::TieredCache;

use crate::support::{self, Doc, VersionStore, read_version};

const IDS: std::ops::RangeInclusive<i64> = 1..=20;

async fn instance(server: &PrivateRedis, prefix: &str) -> TieredCache<i64, Doc> {
    support::builder(prefix)
        .redis_url(server.url())
        .versioned("version", |doc: &Doc| doc.version)
        .l2_timeout(Duration::from_millis(100))
        .build()
        .await
        .unwrap()
}

/// A private Redis, a fresh prefix, instances A and B on them, and a store
/// at version 1 of every id, which A has read (so Redis holds version 1).
async fn primed() -> (
    PrivateRedis,
    String,
    TieredCache<i64, Doc>,
    TieredCache<i64, Doc>,
    VersionStore,
) {
    let server = PrivateRedis::start().await;
    let prefix = support::unique_prefix();
    let a = instance(&server, &prefix).await;
    let b = instance(&server, &prefix).await;
    let store = VersionStore::default();
    for id in IDS {
        assert_eq!(read_version(&a, &store, id).await, 1);
    }
    (server, prefix, a, b, store)
}

/// Whether `cache` answers the store's version of every id.
async fn converged(cache: &TieredCache<i64, Doc>, store: &VersionStore) -> bool {
    for id in IDS {
        if read_version(cache, store, id).await != store.version(id) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_redis_hang_are_never_read_back_old() {
    let (server, prefix, a, b, store) = primed().await;
    for id in IDS {
        assert_eq!(read_version(&b, &store, id).await, 1);
    }

    server.pause();
    let mut acknowledged = HashMap::new();
    for id in IDS {
        let version = store.bump(id);
        a.invalidate_version(&id, version).await;
        acknowledged.insert(id, version);
        // The writer answers what it acknowledged, and so it does below.
        assert_eq!(read_version(&a, &store, id).await, version);
    }
    for id in IDS {
        assert_eq!(
            read_version(&a, &store, id).await,
            acknowledged[&id],
            "during the hang"
        );
    }
    server.resume();
    let resumed = Instant::now();

    // Right after Redis answers again, before the repair ran, Redis still
    // holds version 1: A, its L1 emptied (by TTL or eviction, say), must
    // not take it.
    a.clear_local();
    for id in IDS {
        assert_eq!(
            read_version(&a, &store, id).await,
            acknowledged[&id],
            "after the hang"
        );
    }
    wait_for(
        Duration::from_secs(1),
        "A and B to answer the store's versions",
        || async { converged(&a, &store).await && converged(&b, &store).await },
    )
    .await;
    let repaired = resumed.elapsed();
    // Redis itself holds no old version any more: a third instance agrees.
    let c = instance(&server, &prefix).await;
    assert!(converged(&c, &store).await, "converged after {repaired:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_during_a_redis_hang_is_repaired_once_it_answers() {
    // B reads nothing before the end: it reads through Redis, which held
    // version 1 of every id.
    let (server, _prefix, a, b, store) = primed().await;

    server.pause();
    for id in IDS {
        let version = store.bump(id);
        a.set(&id, Doc { id, version }).await;
        assert_eq!(
            read_version(&a, &store, id).await,
            version,
            "the writer's L1 has it"
        );
    }
    server.resume();

    wait_for(
        Duration::from_secs(1),
        "Redis to stop answering version 1",
        || async { converged(&b, &store).await },
    )
    .await;
    assert!(converged(&a, &store).await);
}

/// Redis up and readable but refusing writes (`min-replicas-to-write` with
/// no replica): the breaker stays closed and reads of Redis go on, so only
/// the writer's distrust of the keys it could not invalidate keeps the old
/// version out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_redis_refuses_is_not_read_back_from_it() {
    let (server, _prefix, a, b, store) = primed().await;
    let mut raw = server.raw().await;
    let refuse_writes = |replicas: u32| {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("SET").arg("min-replicas-to-write").arg(replicas);
        cmd
    };
    let _: () = refuse_writes(1).query_async(&mut raw).await.unwrap();

    for id in IDS {
        let version = store.bump(id);
        a.invalidate_version(&id, version).await;
    }
    // L1 emptied (TTL, eviction): Redis still answers version 1.
    a.clear_local();
    for id in IDS {
        assert_eq!(
            read_version(&a, &store, id).await,
            store.version(id),
            "id {id}"
        );
    }

    let _: () = refuse_writes(0).query_async(&mut raw).await.unwrap();
    wait_for(
        Duration::from_secs(1),
        "B to read the store's versions through Redis",
        || async { converged(&b, &store).await },
    )
    .await;
}
