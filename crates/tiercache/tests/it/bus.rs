//! The invalidation bus between instances sharing one Redis: propagation of
//! every kind of write, own messages ignored, gaps, lost subscriptions,
//! half-dead subscriptions and coalescing of bursts.
//!
//! Each test runs two caches in one process under its own key prefix (so
//! its own channel), or on a private `redis-server` when it kills or pauses
//! connections.

use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use tiercache::{BusState, Source, TieredCache};

use crate::support::{self, Item, PrivateRedis, StoreDown, eventually, found, found_all};

/// The SPEC bound on propagation to another instance.
const PROPAGATION: Duration = Duration::from_secs(1);

type Cache = TieredCache<i64, Item>;

/// Two instances of one cache on the shared Redis under a fresh prefix.
async fn two_instances() -> (Cache, Cache) {
    support::raw_redis().await;
    let prefix = support::unique_prefix();
    let a = support::builder(&prefix).build().await.unwrap();
    let b = support::builder(&prefix).build().await.unwrap();
    assert_eq!(a.bus_state(), BusState::Subscribed);
    assert_eq!(b.bus_state(), BusState::Subscribed);
    (a, b)
}

/// Loads `id` into `cache` (and Redis) and checks that L1 now has it.
async fn cache_in_l1(cache: &Cache, id: i64) {
    cache
        .get_or_load(&id, || async move { found(id) })
        .await
        .unwrap();
    let again = cache
        .get_or_load(&id, || async move { found(id) })
        .await
        .unwrap();
    assert_eq!(again.source, Source::L1);
}

/// Waits until `cache` answers `id` with a value named `name` (its old L1
/// copy is gone), loading `name` when the levels miss.
async fn eventually_named(cache: &Cache, id: i64, name: &str) {
    eventually(
        PROPAGATION,
        "the other instance to drop its L1 copy",
        || async {
            let fresh = Item::with_name(id, name.to_owned());
            let lookup = cache
                .get_or_load(&id, || async { Ok::<_, StoreDown>(Some(fresh)) })
                .await
                .unwrap();
            lookup.value.as_deref().map(|item| item.name.as_str()) == Some(name)
        },
    )
    .await;
}

/// Asserts that `cache` heard nothing that made it clear its L1 beyond the
/// first subscription.
fn assert_no_bus_clears(cache: &Cache) {
    let clears = cache.stats().bus.l1_clears;
    assert_eq!(
        (clears.resubscribe, clears.gap, clears.remote_clear),
        (1, 0, 0),
        "{clears:?}"
    );
}

#[tokio::test]
async fn invalidate_on_one_instance_drops_the_key_from_the_others_l1() {
    let (a, b) = two_instances().await;
    cache_in_l1(&a, 1).await;
    cache_in_l1(&a, 2).await;
    cache_in_l1(&b, 1).await;

    a.invalidate(&1).await;

    eventually_named(&b, 1, "new").await;
    let own = a.get_or_load(&2, || async { found(2) }).await.unwrap();
    assert_eq!(own.source, Source::L1, "A's own message cleared its L1");
    assert_no_bus_clears(&a);
    assert!(a.stats().bus.published >= 1);
    let received = b.stats().bus;
    assert!(
        received.received >= 1 && received.lag_samples >= 1,
        "{received:?}"
    );
}

#[tokio::test]
async fn invalidate_many_on_one_instance_drops_every_key_from_the_others_l1() {
    let (a, b) = two_instances().await;
    for id in 1..=3 {
        cache_in_l1(&a, id).await;
        cache_in_l1(&b, id).await;
    }
    cache_in_l1(&b, 4).await;

    a.invalidate_many(&[1, 2, 3]).await;

    for id in 1..=3 {
        eventually_named(&b, id, "new").await;
    }
    let untouched = b.get_or_load(&4, || async { found(4) }).await.unwrap();
    assert_eq!(untouched.source, Source::L1, "an unnamed key was dropped");
    assert_no_bus_clears(&b);
}

#[tokio::test]
async fn set_on_one_instance_replaces_the_others_l1_copy() {
    let (a, b) = two_instances().await;
    cache_in_l1(&a, 1).await;
    cache_in_l1(&b, 1).await;

    a.set(&1, Item::with_name(1, "updated".to_owned())).await;

    // B's old copy goes; its next read finds A's value in Redis.
    eventually(PROPAGATION, "B to read the updated value", || async {
        let lookup = b.get_or_load(&1, || async { found(1) }).await.unwrap();
        lookup.value.as_deref().map(|item| item.name.as_str()) == Some("updated")
    })
    .await;
    let own = a.get_or_load(&1, || async { found(1) }).await.unwrap();
    assert_eq!(own.source, Source::L1);
    assert_no_bus_clears(&a);
}

#[tokio::test]
async fn clear_on_one_instance_empties_the_others_l1() {
    let (a, b) = two_instances().await;
    cache_in_l1(&b, 1).await;
    cache_in_l1(&b, 2).await;

    a.clear().await;

    eventually(PROPAGATION, "B to apply the remote clear", || async {
        b.stats().bus.l1_clears.remote_clear == 1
    })
    .await;
    assert_eq!(b.stats().l1.entries, 0);
    assert_no_bus_clears(&a);
}

async fn publish_raw(redis: &mut MultiplexedConnection, channel: &str, message: &str) {
    let receivers: u64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message)
        .query_async(redis)
        .await
        .unwrap();
    assert!(receivers >= 1, "nobody listens on {channel}");
}

#[tokio::test]
async fn a_sequence_gap_from_a_known_sender_clears_l1() {
    let mut redis = support::raw_redis().await;
    let prefix = support::unique_prefix();
    let b: Cache = support::builder(&prefix).build().await.unwrap();
    let channel = b.bus_channel().unwrap().to_owned();
    assert_eq!(channel, format!("{prefix}item:bus"));
    cache_in_l1(&b, 1).await;

    publish_raw(
        &mut redis,
        &channel,
        r#"{"from":"fake","seq":1,"op":"heartbeat"}"#,
    )
    .await;
    publish_raw(
        &mut redis,
        &channel,
        r#"{"from":"fake","seq":3,"op":"heartbeat"}"#,
    )
    .await;

    eventually(PROPAGATION, "B to detect the gap", || async {
        b.stats().bus.gaps == 1
    })
    .await;
    let after = b.get_or_load(&1, || async { found(1) }).await.unwrap();
    assert_eq!(after.source, Source::L2, "L1 was not cleared by the gap");
    let bus = b.stats().bus;
    assert_eq!((bus.received, bus.l1_clears.gap), (2, 1), "{bus:?}");
}

#[tokio::test]
async fn a_killed_subscription_is_restored_and_clears_l1() {
    let server = PrivateRedis::start().await;
    let mut admin = server.raw().await;
    let build = || async {
        TieredCache::<i64, Item>::builder()
            .namespace("item")
            .redis_url(server.url())
            .build()
            .await
            .unwrap()
    };
    let (a, b) = (build().await, build().await);
    assert_eq!(b.bus_state(), BusState::Subscribed);
    cache_in_l1(&b, 1).await;

    // Only our two caches use this server, so every pub/sub client is theirs.
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 2, "killed {killed}");

    eventually(Duration::from_secs(10), "B to resubscribe", || async {
        b.stats().bus.l1_clears.resubscribe >= 2 && b.bus_state() == BusState::Subscribed
    })
    .await;
    let after = b.get_or_load(&1, || async { found(1) }).await.unwrap();
    assert_ne!(after.source, Source::L1, "L1 survived the resubscription");
    // And invalidations flow again.
    eventually(Duration::from_secs(10), "A to resubscribe", || async {
        a.bus_state() == BusState::Subscribed
    })
    .await;
    cache_in_l1(&b, 5).await;
    a.invalidate(&5).await;
    eventually_named(&b, 5, "new").await;

    // Dropping the last handles stops the bus tasks and their connections.
    drop((a, b));
    eventually(
        Duration::from_secs(10),
        "the bus connections to close",
        || {
            let mut admin = admin.clone();
            async move {
                let clients: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                clients.trim().is_empty()
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_silent_subscription_is_presumed_dead_and_clears_l1() {
    let server = PrivateRedis::start().await;
    let mut admin = server.raw().await;
    let b: Cache = TieredCache::builder()
        .namespace("item")
        .redis_url(server.url())
        .heartbeat_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    cache_in_l1(&b, 1).await;

    // PUBLISH is a write: pausing writes silences the heartbeats while the
    // subscription itself stays connected.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2_000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();

    eventually(
        Duration::from_secs(10),
        "B to notice the silence",
        || async { b.stats().bus.l1_clears.heartbeat_timeout >= 1 },
    )
    .await;
    assert_eq!(b.stats().l1.entries, 0);
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(b.wait_subscribed(Duration::from_secs(10)).await);
}

#[tokio::test]
async fn a_burst_of_invalidations_is_coalesced_into_few_messages() {
    let (a, b) = two_instances().await;
    let keys: Vec<i64> = (0..1_000).collect();
    a.get_many_or_load(&keys, |ks| async move { found_all(&ks, &[]) })
        .await
        .unwrap();
    b.get_many_or_load(&keys, |ks| async move { found_all(&ks, &[]) })
        .await
        .unwrap();
    assert_eq!(b.stats().l1.entries, 1_000);
    let published_before = a.stats().bus.published;

    join_all(keys.iter().map(|key| a.invalidate(key))).await;

    eventually(PROPAGATION, "B to drop all 1,000 keys", || async {
        b.stats().l1.entries == 0
    })
    .await;
    let messages = a.stats().bus.published - published_before;
    assert!(
        messages < 100,
        "{messages} messages for 1,000 invalidations"
    );
    assert_eq!(b.stats().bus.gaps, 0);
}

#[tokio::test]
async fn without_redis_or_with_the_bus_off_there_is_no_bus() {
    let local: Cache = TieredCache::builder().build().await.unwrap();
    assert_eq!(local.bus_state(), BusState::Disabled);
    assert!(local.wait_subscribed(Duration::from_millis(1)).await);
    assert_eq!(local.bus_channel(), None);

    support::raw_redis().await;
    let off: Cache = support::builder(&support::unique_prefix())
        .bus(false)
        .build()
        .await
        .unwrap();
    assert_eq!(off.bus_state(), BusState::Disabled);
    assert_eq!(off.stats().bus.published, 0);
}
