//! The invalidation bus between instances sharing one Redis: propagation of
//! every kind of write, own messages ignored, missed messages replayed from
//! the change log (lost connections, half-dead connections, gaps), full
//! clears only when the log cannot answer, writes made outside the library
//! (client tracking), and coalescing of bursts.
//!
//! Each test runs two caches in one process under its own key prefix (so
//! its own channel), or on a private `redis-server` when it kills or pauses
//! connections.

use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use testkit::{PrivateCluster, PrivateRedis, wait_for};
use tiercache::{BusClears, BusState, BusTracking, Source, TieredCache};

use crate::support::{self, Doc, Item, Redis, StoreDown, found, found_all};

/// The SPEC bound on propagation to another instance.
const PROPAGATION: Duration = Duration::from_secs(1);

type Cache = TieredCache<i64, Item>;

/// Two instances of one cache on `redis` under a fresh prefix.
async fn two_instances(redis: &Redis) -> (Cache, Cache) {
    let prefix = support::unique_prefix();
    let a = support::builder(&prefix)
        .redis_url(redis.url())
        .build()
        .await
        .unwrap();
    let b = support::builder(&prefix)
        .redis_url(redis.url())
        .build()
        .await
        .unwrap();
    assert_eq!(a.bus_state(), BusState::Subscribed);
    assert_eq!(b.bus_state(), BusState::Subscribed);
    (a, b)
}

/// An instance of the cache on a private server (default prefix).
async fn on_server(server: &PrivateRedis) -> Cache {
    TieredCache::builder()
        .namespace("item")
        .redis_url(server.url())
        .build()
        .await
        .unwrap()
}

/// Loads `id` into `cache` (and Redis) and waits until L1 has it. (On a
/// cluster client tracking reports the fill's own `SET` back, as writes do
/// not go over the tracking connections there, and an unversioned cache
/// drops the key for it: the next read then fills L1 from L2.)
async fn cache_in_l1(cache: &Cache, id: i64) {
    wait_for(PROPAGATION, &format!("L1 to hold key {id}"), || async {
        let lookup = cache
            .get_or_load(&id, || async move { found(id) })
            .await
            .unwrap();
        lookup.source == Source::L1
    })
    .await;
}

/// Waits until `cache` answers `id` with a value named `name` (its old L1
/// copy is gone), loading `name` when the levels miss.
async fn eventually_named(cache: &Cache, id: i64, name: &str) {
    wait_for(
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

/// Asserts that `cache` heard nothing that made it clear its L1.
fn assert_no_bus_clears(cache: &Cache) {
    let clears = cache.stats().bus.l1_clears;
    assert_eq!(clears, BusClears::default());
}

/// Whether `cache` answers `id` from its L1.
async fn in_l1(cache: &Cache, id: i64) -> bool {
    let lookup = cache
        .get_or_load(&id, || async move { found(id) })
        .await
        .unwrap();
    lookup.source == Source::L1
}

async fn invalidate_on_one_instance_drops_the_key_from_the_others_l1(redis: &Redis) {
    let (a, b) = two_instances(redis).await;
    cache_in_l1(&a, 1).await;
    cache_in_l1(&a, 2).await;
    cache_in_l1(&b, 1).await;

    a.invalidate(&1).await;

    eventually_named(&b, 1, "new").await;
    let own = a.get_or_load(&2, || async { found(2) }).await.unwrap();
    assert_eq!(own.source, Source::L1, "A's own message cleared its L1");
    assert_no_bus_clears(&a);
    assert!(a.stats().bus.published >= 1);
    // Client tracking may have dropped the key before the bus message came.
    wait_for(PROPAGATION, "B to receive A's message", || async {
        let received = b.stats().bus;
        received.received >= 1 && received.lag_samples >= 1
    })
    .await;
}

async fn invalidate_many_on_one_instance_drops_every_key_from_the_others_l1(redis: &Redis) {
    let (a, b) = two_instances(redis).await;
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

async fn set_on_one_instance_replaces_the_others_l1_copy(redis: &Redis) {
    let (a, b) = two_instances(redis).await;
    cache_in_l1(&a, 1).await;
    cache_in_l1(&b, 1).await;

    a.set(&1, Item::with_name(1, "updated".to_owned())).await;

    // B's old copy goes; its next read finds A's value in Redis.
    wait_for(PROPAGATION, "B to read the updated value", || async {
        let lookup = b.get_or_load(&1, || async { found(1) }).await.unwrap();
        lookup.value.as_deref().map(|item| item.name.as_str()) == Some("updated")
    })
    .await;
    let own = a.get_or_load(&1, || async { found(1) }).await.unwrap();
    assert_eq!(own.value.unwrap().name, "updated");
    // On a cluster tracking reports A's own SET back (see `cache_in_l1`).
    if !redis.is_cluster() {
        assert_eq!(own.source, Source::L1);
    }
    assert_no_bus_clears(&a);
}

async fn clear_on_one_instance_empties_the_others_l1(redis: &Redis) {
    let (a, b) = two_instances(redis).await;
    cache_in_l1(&b, 1).await;
    cache_in_l1(&b, 2).await;

    a.clear().await;

    wait_for(PROPAGATION, "B to apply the remote clear", || async {
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

/// Appends an entry naming `keys` to the change log the way the publish
/// script does, without publishing it (a message lost on the way), and
/// returns its id and epoch.
async fn append_unpublished(
    redis: &mut MultiplexedConnection,
    log: &str,
    keys: &[&str],
) -> (String, String) {
    let head: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
        .arg(log)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(redis)
        .await
        .unwrap();
    let (prev, epoch) = match head.first() {
        Some((id, fields)) => (id.clone(), fields[1].clone()),
        None => ("0-0".to_owned(), "test-epoch".to_owned()),
    };
    let body = serde_json::json!({"from": "elsewhere", "op": "keys", "keys": keys}).to_string();
    let id: String = redis::cmd("XADD")
        .arg(log)
        .arg("*")
        .arg("e")
        .arg(&epoch)
        .arg("p")
        .arg(&prev)
        .arg("m")
        .arg(body)
        .query_async(redis)
        .await
        .unwrap();
    (id, epoch)
}

#[tokio::test]
async fn a_message_lost_on_the_way_is_replayed_from_the_log() {
    let mut redis = support::raw_redis().await;
    let prefix = support::unique_prefix();
    let b: Cache = support::builder(&prefix).build().await.unwrap();
    let channel = b.bus_channel().unwrap().to_owned();
    assert_eq!(channel, format!("{prefix}item:bus"));
    cache_in_l1(&b, 1).await;
    cache_in_l1(&b, 2).await;
    let mut events = b.subscribe();

    let (head, epoch) = append_unpublished(&mut redis, &format!("{channel}:log"), &["1"]).await;
    // A heartbeat naming a head B has not applied reveals the loss.
    let heartbeat = serde_json::json!({
        "id": head, "prev": head, "epoch": epoch, "from": "elsewhere", "op": "heartbeat"
    });
    publish_raw(&mut redis, &channel, &heartbeat.to_string()).await;

    wait_for(PROPAGATION, "B to replay the lost entry", || async {
        b.stats().bus.keys_replayed == 1
    })
    .await;
    assert!(!in_l1(&b, 1).await, "the replayed key is still in L1");
    assert!(in_l1(&b, 2).await, "a key the log did not name left L1");
    let bus = b.stats().bus;
    assert_eq!((bus.gaps, bus.replays), (1, 1), "{bus:?}");
    assert_no_bus_clears(&b);
    let replayed = tiercache::CacheEvent::Invalidated {
        key: "1".to_owned(),
        origin: tiercache::InvalidationOrigin::Replay,
    };
    crate::events::expect_event(&mut events, "the replayed invalidation", |e| *e == replayed).await;
}

#[tokio::test]
async fn a_log_trimmed_past_the_position_clears_l1() {
    let mut redis = support::raw_redis().await;
    let prefix = support::unique_prefix();
    let a: Cache = support::builder(&prefix).build().await.unwrap();
    let b: Cache = support::builder(&prefix)
        .change_log_len(1)
        .build()
        .await
        .unwrap();
    let log = format!("{}:log", b.bus_channel().unwrap());
    a.invalidate(&100).await;
    wait_for(PROPAGATION, "B to apply A's message", || async {
        b.stats().bus.received >= 1
    })
    .await;
    cache_in_l1(&b, 1).await;

    // Two entries B never heard of, the first of which is trimmed away.
    append_unpublished(&mut redis, &log, &["7"]).await;
    let (head, epoch) = append_unpublished(&mut redis, &log, &["8"]).await;
    let _: u64 = redis::cmd("XTRIM")
        .arg(&log)
        .arg("MAXLEN")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let heartbeat = serde_json::json!({
        "id": head, "prev": head, "epoch": epoch, "from": "elsewhere", "op": "heartbeat"
    });
    publish_raw(&mut redis, b.bus_channel().unwrap(), &heartbeat.to_string()).await;

    wait_for(PROPAGATION, "B to clear its L1", || async {
        b.stats().bus.l1_clears.log_truncated == 1
    })
    .await;
    assert!(!in_l1(&b, 1).await);
}

#[tokio::test]
async fn a_killed_connection_is_restored_and_replays_instead_of_clearing() {
    let server = PrivateRedis::start().await;
    let mut admin = server.raw().await;
    let (a, b) = (on_server(&server).await, on_server(&server).await);
    assert_eq!(b.bus_state(), BusState::Subscribed);
    for id in 1..=30 {
        cache_in_l1(&b, id).await;
    }

    // Every client connection, data and bus, of both instances.
    for kind in ["pubsub", "normal"] {
        let _: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut admin)
            .await
            .unwrap();
    }
    // A changes one of them while B may still be reconnecting.
    a.invalidate(&7).await;

    wait_for(Duration::from_secs(10), "B to reconnect", || async {
        b.stats().bus.subscriptions >= 2 && b.bus_state() == BusState::Subscribed
    })
    .await;
    eventually_named(&b, 7, "new").await;
    for id in (1..=30).filter(|&id| id != 7) {
        assert!(in_l1(&b, id).await, "{id} left B's L1");
    }
    assert_no_bus_clears(&b);

    // Dropping the last handles stops the bus tasks and their connections.
    drop((a, b));
    wait_for(
        Duration::from_secs(10),
        "the bus connections to close",
        || {
            let mut admin = admin.clone();
            async move {
                let clients: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut admin)
                    .await
                    .unwrap();
                // Only the admin connection is left.
                clients.trim().lines().count() == 1
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_silent_connection_is_presumed_dead_rebuilt_and_keeps_l1() {
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

    // The publish script writes: pausing writes silences the heartbeats
    // while the connection itself stays up.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2_000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();

    wait_for(
        Duration::from_secs(10),
        "B to notice the silence",
        || async { b.stats().bus.silences >= 1 },
    )
    .await;
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(b.wait_subscribed(Duration::from_secs(10)).await);
    assert!(in_l1(&b, 1).await, "nothing changed, yet L1 was emptied");
    assert_no_bus_clears(&b);
}

#[tokio::test]
async fn a_redis_that_lost_its_data_clears_every_l1() {
    let mut server = PrivateRedis::start().await;
    let (a, b) = (on_server(&server).await, on_server(&server).await);
    a.invalidate(&100).await;
    wait_for(PROPAGATION, "B to apply A's message", || async {
        b.stats().bus.received >= 1
    })
    .await;
    cache_in_l1(&b, 1).await;

    server.restart().await;

    wait_for(
        Duration::from_secs(10),
        "B to notice the lost log",
        || async { b.stats().bus.l1_clears.log_lost >= 1 && b.bus_state() == BusState::Subscribed },
    )
    .await;
    assert!(!in_l1(&b, 1).await);
    drop(a);
}

async fn writes_made_in_redis_by_others_leave_every_l1(redis: &Redis) {
    let (a, b) = two_instances(redis).await;
    for cache in [&a, &b] {
        assert_eq!(cache.stats().bus.tracking, BusTracking::On);
        cache_in_l1(cache, 1).await;
        cache_in_l1(cache, 2).await;
    }

    let outside = serde_json::to_string(&Item::with_name(1, "outside".to_owned())).unwrap();
    redis
        .run::<()>(redis::cmd("SET").arg(a.redis_key(&1)).arg(&outside))
        .await;
    redis
        .run::<u64>(redis::cmd("DEL").arg(a.redis_key(&2)))
        .await;

    for cache in [&a, &b] {
        wait_for(PROPAGATION, "the outside SET to reach L1", || async {
            let lookup = cache.get_or_load(&1, || async { found(1) }).await.unwrap();
            lookup.value.as_deref().map(|item| item.name.as_str()) == Some("outside")
        })
        .await;
        eventually_named(cache, 2, "reloaded").await;
        assert!(cache.stats().bus.tracked_keys >= 2);
        assert_no_bus_clears(cache);
    }
}

async fn a_versioned_cache_keeps_its_own_writes_and_drops_outside_ones(redis: &Redis) {
    let prefix = support::unique_prefix();
    let build = || {
        support::builder::<Doc>(&prefix)
            .redis_url(redis.url())
            .versioned("version", |doc: &Doc| doc.version)
            .build()
    };
    let (a, b) = (build().await.unwrap(), build().await.unwrap());
    let read = |cache: &TieredCache<i64, Doc>| {
        let cache = cache.clone();
        async move {
            let lookup = cache
                .get_or_load(&1, || async {
                    Ok::<_, StoreDown>(Some(Doc { id: 1, version: 0 }))
                })
                .await
                .unwrap();
            (lookup.source, lookup.value.unwrap().version)
        }
    };

    // A versioned write is a script, which NOLOOP does not tell from
    // others' writes: Redis reports it back, and A keeps its copy because
    // it is the version Redis holds.
    a.set(&1, Doc { id: 1, version: 2 }).await;
    wait_for(PROPAGATION, "Redis to report A's own write", || async {
        a.stats().bus.tracked_keys >= 1
    })
    .await;
    assert_eq!(read(&a).await, (Source::L1, 2));
    // B, once A's bus message has dropped whatever it had, holds it too.
    wait_for(PROPAGATION, "B to hold version 2 in L1", || async {
        read(&b).await == (Source::L1, 2)
    })
    .await;

    let outside = serde_json::json!({"id": 1, "version": 3}).to_string();
    redis
        .run::<()>(redis::cmd("SET").arg(a.redis_key(&1)).arg(&outside))
        .await;

    for cache in [&a, &b] {
        wait_for(PROPAGATION, "the outside write to reach L1", || async {
            read(cache).await == (Source::L1, 3)
        })
        .await;
    }
}

#[tokio::test]
async fn client_tracking_can_be_turned_off() {
    support::raw_redis().await;
    let off: Cache = support::builder(&support::unique_prefix())
        .client_tracking(false)
        .build()
        .await
        .unwrap();
    assert_eq!(off.stats().bus.tracking, BusTracking::Off);
}

async fn a_burst_of_invalidations_is_coalesced_into_few_messages(redis: &Redis) {
    let (a, b) = two_instances(redis).await;
    let keys: Vec<i64> = (0..1_000).collect();
    a.get_many_or_load(&keys, |ks| async move { found_all(&ks, &[]) })
        .await
        .unwrap();
    // A's writes to Redis may land after B's read (on a loaded machine, or
    // a cluster's several connections): Redis then rightly tells B to drop
    // what it read. Read again until B holds all 1,000.
    wait_for(PROPAGATION, "B to hold all 1,000 keys", || async {
        b.get_many_or_load(&keys, |ks| async move { found_all(&ks, &[]) })
            .await
            .unwrap();
        b.stats().l1.entries == 1_000
    })
    .await;
    let published_before = a.stats().bus.published;

    join_all(keys.iter().map(|key| a.invalidate(key))).await;

    wait_for(PROPAGATION, "B to drop all 1,000 keys", || async {
        b.stats().l1.entries == 0
    })
    .await;
    let messages = a.stats().bus.published - published_before;
    assert!(
        messages < 100,
        "{messages} messages for 1,000 invalidations"
    );
    assert_eq!(b.stats().bus.gaps, 0);
    assert_no_bus_clears(&b);
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

// The scenarios that hold on any Redis: on the shared single server, each
// in its own test, and all on one private cluster (3 primaries + 3
// replicas), where the bus is a sharded channel and tracking runs on every
// primary.

#[tokio::test]
async fn invalidate_on_one_instance_drops_the_key_from_the_others_l1_on_one_server() {
    invalidate_on_one_instance_drops_the_key_from_the_others_l1(&Redis::single().await).await;
}

#[tokio::test]
async fn invalidate_many_on_one_instance_drops_every_key_from_the_others_l1_on_one_server() {
    invalidate_many_on_one_instance_drops_every_key_from_the_others_l1(&Redis::single().await)
        .await;
}

#[tokio::test]
async fn set_on_one_instance_replaces_the_others_l1_copy_on_one_server() {
    set_on_one_instance_replaces_the_others_l1_copy(&Redis::single().await).await;
}

#[tokio::test]
async fn clear_on_one_instance_empties_the_others_l1_on_one_server() {
    clear_on_one_instance_empties_the_others_l1(&Redis::single().await).await;
}

#[tokio::test]
async fn writes_made_in_redis_by_others_leave_every_l1_on_one_server() {
    writes_made_in_redis_by_others_leave_every_l1(&Redis::single().await).await;
}

#[tokio::test]
async fn a_versioned_cache_keeps_its_own_writes_and_drops_outside_ones_on_one_server() {
    a_versioned_cache_keeps_its_own_writes_and_drops_outside_ones(&Redis::single().await).await;
}

#[tokio::test]
async fn a_burst_of_invalidations_is_coalesced_into_few_messages_on_one_server() {
    a_burst_of_invalidations_is_coalesced_into_few_messages(&Redis::single().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_holds_on_a_cluster() {
    let cluster = PrivateCluster::start().await;
    let redis = Redis::cluster(&cluster);
    invalidate_on_one_instance_drops_the_key_from_the_others_l1(&redis).await;
    invalidate_many_on_one_instance_drops_every_key_from_the_others_l1(&redis).await;
    set_on_one_instance_replaces_the_others_l1_copy(&redis).await;
    clear_on_one_instance_empties_the_others_l1(&redis).await;
    writes_made_in_redis_by_others_leave_every_l1(&redis).await;
    a_versioned_cache_keeps_its_own_writes_and_drops_outside_ones(&redis).await;
    a_burst_of_invalidations_is_coalesced_into_few_messages(&redis).await;
}
