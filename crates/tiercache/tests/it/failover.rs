//! The bus on a real cluster (3 primaries + 3 replicas) through the failure
//! of the primary that serves its channel: killed (`kill -9`: connections
//! reset at once) or hung (`SIGSTOP`: connections stay open, nothing
//! answers). That node is also the first seed of both instances, the node
//! a classic subscription would have depended on.

use std::time::{Duration, Instant};

use testkit::{PrivateCluster, wait_for};
use tiercache::{BusState, Source, TieredCache};

use crate::support::{self, Item, found};

/// The SPEC bound on propagation to another instance.
const PROPAGATION: Duration = Duration::from_secs(1);
/// How long the cluster has to replace a failed primary (node timeout 1 s).
const FAILOVER_LIMIT: Duration = Duration::from_secs(20);
/// How long, once the cluster is whole, the bus has to carry writes again.
const RECOVERY_LIMIT: Duration = Duration::from_secs(5);

type Cache = TieredCache<i64, Item>;

/// How the channel's primary fails.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Killed,
    Hung,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_follows_its_channel_when_its_primary_is_killed() {
    the_bus_survives(Failure::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_follows_its_channel_when_its_primary_hangs() {
    the_bus_survives(Failure::Hung).await;
}

async fn the_bus_survives(failure: Failure) {
    let mut cluster = PrivateCluster::start().await;
    let prefix = support::unique_prefix();
    // What `channel_and_log` names the channel of namespace "item".
    let channel = format!("{{{prefix}item:bus}}");
    let primary = cluster.primary_for_key(&channel).await;
    let url = cluster.cluster_url_from(primary);
    let build = || {
        support::builder::<Item>(&prefix)
            .redis_url(url.clone())
            .heartbeat_interval(Duration::from_millis(200))
            // Tracking would drop the key on its own: test the bus alone.
            .client_tracking(false)
            .build()
    };
    let (writer, reader) = (build().await.unwrap(), build().await.unwrap());
    for cache in [&writer, &reader] {
        assert_eq!(cache.bus_state(), BusState::Subscribed);
    }
    assert_carries_writes(&writer, &reader, 1).await;

    match failure {
        Failure::Killed => cluster.kill(primary),
        Failure::Hung => cluster.pause(primary),
    }
    let failed = Instant::now();
    cluster.wait_failed_over(FAILOVER_LIMIT).await;
    let whole = Instant::now();
    wait_for(
        RECOVERY_LIMIT,
        "both buses subscribed again after the failover",
        || async {
            [&writer, &reader]
                .iter()
                .all(|cache| cache.bus_state() == BusState::Subscribed)
        },
    )
    .await;
    eprintln!(
        "{failure:?}: cluster whole {:?} after the failure, bus back {:?} after that",
        whole - failed,
        whole.elapsed()
    );
    for key in 2..=6 {
        assert_carries_writes(&writer, &reader, key).await;
    }
    let stats = reader.stats().bus;
    assert!(
        stats.subscriptions >= 2,
        "the reader subscribed again: {stats:?}"
    );

    if let Failure::Hung = failure {
        // The old primary comes back as a replica; nothing moves.
        cluster.resume(primary);
        cluster.wait_failed_over(FAILOVER_LIMIT).await;
        assert_carries_writes(&writer, &reader, 7).await;
    }
}

/// `reader` holds `key` in L1; `writer` invalidates it; `reader` drops it
/// within the propagation bound.
async fn assert_carries_writes(writer: &Cache, reader: &Cache, key: i64) {
    for _ in 0..2 {
        let _ = reader
            .get_or_load(&key, || async move { found(key) })
            .await
            .unwrap();
    }
    let cached = reader
        .get_or_load(&key, || async move { found(key) })
        .await
        .unwrap();
    assert_eq!(cached.source, Source::L1, "key {key} cached");
    writer.invalidate(&key).await;
    wait_for(
        PROPAGATION,
        &format!("the reader to drop key {key}"),
        || async {
            let lookup = reader
                .get_or_load(&key, || async move { found(key) })
                .await
                .unwrap();
            lookup.source != Source::L1
        },
    )
    .await;
}
