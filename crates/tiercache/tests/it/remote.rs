//! The Redis level against real servers: codecs on the wire, foreign and
//! corrupt values, and Redis dying and coming back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use testkit::{PrivateRedis, wait_for};
use tiercache::{Codec, JsonCodec, L2State, PostcardCodec, Source, TieredCache};

use crate::support::{self, Item, found};

/// Writes through one instance and reads through another (so the read is
/// an L2 hit), for every codec with and without compression.
#[tokio::test]
async fn every_codec_round_trips_through_redis() {
    let mut redis = support::raw_redis().await;
    let big = Item::with_name(1, "compressible ".repeat(500));
    let small = Item::new(2);

    async fn round_trip<C: Codec<Item> + Copy>(
        codec: C,
        threshold: Option<usize>,
        values: &[&Item],
    ) -> Vec<(Vec<u8>, Source)> {
        let prefix = support::unique_prefix();
        let build = || {
            support::builder::<Item>(&prefix)
                .codec(codec)
                .compression_threshold(threshold)
                .build()
        };
        let (writer, reader) = (build().await.unwrap(), build().await.unwrap());
        let mut redis = support::raw_redis().await;
        let mut seen = Vec::new();
        for value in values {
            writer.set(&value.id, (*value).clone()).await;
            let lookup = reader
                .get_or_load(&value.id, || async { found(-1) })
                .await
                .unwrap();
            assert_eq!(
                lookup.value.as_deref(),
                Some(*value),
                "{codec:?} {threshold:?}"
            );
            let stored: Vec<u8> = redis.get(writer.redis_key(&value.id)).await.unwrap();
            seen.push((stored, lookup.source));
        }
        seen
    }

    let values = [&big, &small];
    let json = round_trip(JsonCodec, None, &values).await;
    let json_lz4 = round_trip(JsonCodec, Some(256), &values).await;
    let postcard = round_trip(PostcardCodec, None, &values).await;
    let postcard_lz4 = round_trip(PostcardCodec, Some(256), &values).await;

    for (stored, source) in json
        .iter()
        .chain(&json_lz4)
        .chain(&postcard)
        .chain(&postcard_lz4)
    {
        assert_eq!(*source, Source::L2);
        assert!(!stored.is_empty());
    }
    assert_eq!(
        json[0].0,
        serde_json::to_vec(&big).unwrap(),
        "JSON is stored as is"
    );
    assert_eq!(json_lz4[0].0[0], 0x02, "large values are compressed");
    assert_eq!(json_lz4[1].0[0], b'{', "small values are not");
    assert_eq!(postcard[0].0[0], 0x01);
    assert_eq!(postcard_lz4[0].0[0], 0x02);
    assert!(postcard_lz4[0].0.len() < postcard[0].0.len() / 4);
    let _: () = redis::cmd("PING").query_async(&mut redis).await.unwrap();
}

#[tokio::test]
async fn foreign_or_corrupt_values_in_redis_are_misses() {
    let (cache, _prefix) = support::cache::<Item>().await;
    let mut redis = support::raw_redis().await;
    let postcard = PostcardCodec.encode(&Item::new(4)).unwrap();
    let garbage: Vec<(i64, Vec<u8>)> = vec![
        (1, b"not json at all".to_vec()),
        (2, br#"{"id":2,"name":"missing fields"}"#.to_vec()),
        (3, b"[1,2,3]".to_vec()),
        (4, postcard),
        (5, vec![0x02, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3]),
        (6, vec![0x02, 10, 0, 0, 0, 0xff, 0xff]),
        (7, vec![0xff, 0xfe, 0x00]),
    ];
    for (id, bytes) in &garbage {
        let _: () = redis.set(cache.redis_key(id), bytes).await.unwrap();
    }

    for (id, _) in &garbage {
        let lookup = cache
            .get_or_load(id, || {
                let id = *id;
                async move { found(id) }
            })
            .await
            .unwrap();
        assert_eq!(lookup.source, Source::Loader, "key {id}");
        assert_eq!(lookup.value.as_deref(), Some(&Item::new(*id)));
    }

    let stats = cache.stats();
    assert_eq!(stats.l2.decode_errors, 7);
    assert_eq!(stats.l2.errors, 0);
    // The loader's value replaced the garbage.
    let fixed: String = redis.get(cache.redis_key(&1)).await.unwrap();
    assert_eq!(fixed, serde_json::to_string(&Item::new(1)).unwrap());
}

#[tokio::test]
async fn a_value_of_the_wrong_type_in_redis_is_a_miss() {
    let mut redis = support::raw_redis().await;
    let cache: TieredCache<i64, Item> = support::builder(&support::unique_prefix())
        .breaker_failure_threshold(1)
        .build()
        .await
        .unwrap();
    let key = cache.redis_key(&1);
    let _: () = redis.rpush(&key, "a list, not a string").await.unwrap();

    let lookup = cache.get_or_load(&1, || async { found(1) }).await.unwrap();

    assert_eq!(lookup.source, Source::Loader);
    assert_eq!(
        cache.l2_state(),
        L2State::Up,
        "a rejected command does not trip the breaker"
    );
    assert!(cache.stats().l2.errors >= 1);
}

/// Reads of many keys at once, each an L1 miss: the two that find a lane
/// free go out as plain `GET`s and the rest queue behind them and share
/// `MGET`s; every read still gets its own value. Counted on a private
/// server, whose command statistics no other test touches.
#[tokio::test]
async fn concurrent_l2_reads_share_mget_round_trips() {
    let server = PrivateRedis::start().await;
    let prefix = support::unique_prefix();
    let build = || {
        support::builder::<Item>(&prefix)
            .redis_url(server.url())
            .build()
    };
    let writer: TieredCache<i64, Item> = build().await.unwrap();
    let ids: Vec<i64> = (1..=200).collect();
    for id in &ids {
        writer.set(id, Item::new(*id)).await;
    }
    let reader: TieredCache<i64, Item> = build().await.unwrap();
    let mut raw = server.raw().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut raw)
        .await
        .unwrap();

    // Polled together on this one-thread runtime, so all 200 are queued
    // before the first Redis call returns.
    let lookups = futures_util::future::join_all(
        ids.iter()
            .map(|id| reader.get_or_load(id, || async { Ok::<_, support::StoreDown>(None) })),
    )
    .await;

    for (id, lookup) in ids.iter().zip(lookups) {
        let lookup = lookup.unwrap();
        assert_eq!(lookup.source, Source::L2, "{id}");
        assert_eq!(lookup.value.as_deref(), Some(&Item::new(*id)));
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .unwrap();
    let calls = |command: &str| -> u64 {
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    };
    let (gets, mgets) = (calls("get"), calls("mget"));
    assert!(mgets >= 1, "no MGET in {info}");
    assert!(
        gets + mgets <= 6,
        "200 reads took {gets} GETs and {mgets} MGETs"
    );
}

/// With Redis hung (SIGSTOP), a read that misses L1 waits for it at most
/// two L2 timeouts: one reading (however many reads are queued for a
/// lane) and one writing back what the loader returned. The breaker is
/// kept closed, so every read really waits on Redis.
#[tokio::test]
async fn a_hung_redis_delays_a_read_by_at_most_two_timeouts() {
    const TIMEOUT: Duration = Duration::from_millis(200);
    let server = PrivateRedis::start().await;
    let cache: TieredCache<i64, Item> = support::builder(&support::unique_prefix())
        .redis_url(server.url())
        .l2_timeout(TIMEOUT)
        .breaker_failure_threshold(u32::MAX)
        .build()
        .await
        .unwrap();
    server.pause();

    // A thousand misses at once: ten batches of 100 for two lanes.
    let reads = (1..=1_000).map(|id| {
        let cache = &cache;
        async move {
            let started = Instant::now();
            let lookup = cache
                .get_or_load(&id, || async move { found(id) })
                .await
                .unwrap();
            assert_eq!(lookup.source, Source::Loader);
            started.elapsed()
        }
    });
    let slowest = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .max()
        .unwrap();
    server.resume();

    assert!(
        slowest < 2 * TIMEOUT + Duration::from_millis(250),
        "a read waited {slowest:?}"
    );
}

/// Gets run in a loop while the server is killed and restarted on the same
/// port; none may fail, and L2 must serve hits again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_test_fails_no_request() {
    let mut server = PrivateRedis::start().await;
    let prefix = support::unique_prefix();
    let build = || {
        support::builder::<Item>(&prefix)
            .redis_url(server.url())
            .breaker_failure_threshold(3)
            .breaker_cooldown(Duration::from_millis(200))
            .build()
    };
    let (writer, reader): (TieredCache<i64, Item>, TieredCache<i64, Item>) =
        (build().await.unwrap(), build().await.unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let l2_hits = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, l2_hits, requests) = (stop.clone(), l2_hits.clone(), requests.clone());
        tokio::spawn(async move {
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                // A fresh key each time, written by one instance and read by
                // the other, so a read can only be an L2 hit or a load.
                writer.set(&id, Item::new(id)).await;
                let lookup = reader.get_or_load(&id, || async move { found(id) }).await;
                let lookup = lookup.expect("a get failed while Redis was failing");
                assert_eq!(lookup.value.as_deref(), Some(&Item::new(id)));
                if lookup.source == Source::L2 {
                    l2_hits.fetch_add(1, Ordering::Relaxed);
                }
                requests.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            reader
        })
    };
    let hits_above = |floor: u64| {
        let l2_hits = l2_hits.clone();
        move || {
            let hits = l2_hits.load(Ordering::Relaxed);
            async move { hits > floor }
        }
    };

    wait_for(
        Duration::from_secs(10),
        "L2 hits before the kill",
        hits_above(0),
    )
    .await;
    server.kill();
    let killed_at = requests.load(Ordering::Relaxed);
    wait_for(
        Duration::from_secs(10),
        "requests served while Redis is dead",
        || {
            let served = requests.load(Ordering::Relaxed);
            async move { served > killed_at + 50 }
        },
    )
    .await;
    server.restart().await;
    let hits_before_restart = l2_hits.load(Ordering::Relaxed);
    wait_for(
        Duration::from_secs(10),
        "L2 hits after the restart",
        hits_above(hits_before_restart + 5),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let reader = traffic.await.expect("no get failed");

    let stats = reader.stats();
    assert_eq!(stats.l2.state, L2State::Up);
    assert!(stats.l2.errors > 0 || stats.l2.misses > 0, "{stats:?}");
}

#[tokio::test]
async fn l2_state_goes_down_when_redis_dies_and_up_when_it_returns() {
    let mut server = PrivateRedis::start().await;
    let cache: TieredCache<i64, Item> = support::builder(&support::unique_prefix())
        .redis_url(server.url())
        .breaker_failure_threshold(1)
        .breaker_cooldown(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    assert_eq!(cache.l2_state(), L2State::Up);

    server.kill();
    let mut id = 0;
    wait_for(Duration::from_secs(10), "L2 to be reported down", || {
        id += 1;
        let cache = cache.clone();
        let key = id;
        async move {
            let _ = cache
                .get_or_load(&key, || async move { found(key) })
                .await
                .unwrap();
            cache.l2_state() == L2State::Down
        }
    })
    .await;
    server.restart().await;
    // No traffic: the supervisor's probes alone must bring it back.
    wait_for(Duration::from_secs(10), "L2 to be reported up", || {
        let state = cache.l2_state();
        async move { state == L2State::Up }
    })
    .await;
}

#[tokio::test]
async fn redis_that_starts_late_is_picked_up() {
    let port = testkit::free_port();
    let cache: TieredCache<i64, Item> = support::builder(&support::unique_prefix())
        .redis_url(format!("redis://127.0.0.1:{port}"))
        .build()
        .await
        .unwrap();
    assert_eq!(cache.l2_state(), L2State::Down);

    let server = PrivateRedis::start_on(port).await;
    wait_for(Duration::from_secs(10), "L2 to connect", || {
        let state = cache.l2_state();
        async move { state == L2State::Up }
    })
    .await;
    let _ = cache.get_or_load(&1, || async { found(1) }).await.unwrap();
    let mut redis = server.raw().await;
    let stored: bool = redis.exists(cache.redis_key(&1)).await.unwrap();
    assert!(stored);
}
