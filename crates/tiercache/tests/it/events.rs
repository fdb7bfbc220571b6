//! Cache events (`TieredCache::subscribe`): each kind is seen by a
//! subscriber when it happens, on real Redis servers (the shared one, or a
//! private one to kill).

use std::time::Duration;

use redis::AsyncCommands;
use testkit::PrivateRedis;
use tiercache::{
    BusState, CacheEvent, CacheEvents, ClearReason, InvalidationOrigin, L2State, Source,
    StaleReason, TieredCache,
};

use crate::support::{Item, StoreDown, builder, raw_redis, unique_prefix};

type Cache = TieredCache<i64, Item>;

/// Reads events until one matches `wanted` (within 10 s), skipping others;
/// panics naming `what` when none does.
pub(crate) async fn expect_event(
    events: &mut CacheEvents,
    what: &str,
    wanted: impl Fn(&CacheEvent) -> bool,
) -> CacheEvent {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.recv().await {
            if wanted(&event) {
                return Some(event);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the cache closed before {what}"),
        Err(_) => panic!("no event for {what} within 10 s"),
    }
}

/// Reads events until each of `wanted` was seen, in any order (within
/// 10 s); panics naming `what` and the missing ones otherwise.
async fn expect_all(events: &mut CacheEvents, what: &str, mut wanted: Vec<CacheEvent>) {
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while !wanted.is_empty() {
            let Some(event) = events.recv().await else {
                return;
            };
            wanted.retain(|w| *w != event);
        }
    })
    .await;
    assert!(
        seen.is_ok() && wanted.is_empty(),
        "{what}: never saw {wanted:?}"
    );
}

async fn load(cache: &Cache, key: i64) -> tiercache::Lookup<Item> {
    cache
        .get_or_load(&key, move || async move {
            Ok::<_, StoreDown>(Some(Item::new(key)))
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn invalidations_say_where_they_came_from() {
    raw_redis().await;
    let prefix = unique_prefix();
    let a: Cache = builder(&prefix).build().await.unwrap();
    let b: Cache = builder(&prefix).build().await.unwrap();
    let mut a_events = a.subscribe();
    let mut b_events = b.subscribe();
    assert_eq!(load(&b, 1).await.source, Source::Loader);

    a.invalidate(&1).await;
    let local = CacheEvent::Invalidated {
        key: "1".to_owned(),
        origin: InvalidationOrigin::Local,
    };
    assert_eq!(
        expect_event(&mut a_events, "a's own invalidation", |e| *e == local).await,
        local
    );
    let bus = CacheEvent::Invalidated {
        key: "1".to_owned(),
        origin: InvalidationOrigin::Bus,
    };
    expect_event(&mut b_events, "the bus's invalidation on b", |e| *e == bus).await;

    // A write made in Redis by someone else reaches b through tracking.
    assert_eq!(load(&b, 2).await.source, Source::Loader);
    let mut redis = raw_redis().await;
    let () = redis
        .set(
            b.redis_key(&2),
            r#"{"id":2,"name":"outside","price":1.0,"tags":[]}"#,
        )
        .await
        .unwrap();
    let tracked = CacheEvent::Invalidated {
        key: "2".to_owned(),
        origin: InvalidationOrigin::Tracking,
    };
    expect_event(&mut b_events, "the tracking invalidation on b", |e| {
        *e == tracked
    })
    .await;

    a.clear().await;
    let requested = CacheEvent::Cleared {
        reason: ClearReason::Requested,
    };
    expect_event(&mut a_events, "a's clear", |e| *e == requested).await;
    let remote = CacheEvent::Cleared {
        reason: ClearReason::RemoteClear,
    };
    expect_event(&mut b_events, "a's clear reaching b", |e| *e == remote).await;
}

#[tokio::test]
async fn a_full_l1_reports_what_it_evicts() {
    let cache: Cache = TieredCache::builder()
        .l1_max_entries(16)
        .build()
        .await
        .unwrap();
    let mut events = cache.subscribe();
    for key in 0..200 {
        let _ = load(&cache, key).await;
    }
    let event = expect_event(&mut events, "an eviction", |e| {
        matches!(e, CacheEvent::Evicted { .. })
    })
    .await;
    let CacheEvent::Evicted { key } = event else {
        unreachable!("matched above")
    };
    assert!(
        key.parse::<i64>().is_ok_and(|k| (0..200).contains(&k)),
        "evicted {key:?}"
    );
}

#[tokio::test]
async fn stale_answers_say_why() {
    let cache: Cache = crate::failsafe::l1_only(Duration::from_millis(50))
        .fail_safe_window(Some(Duration::from_secs(60)))
        .build()
        .await
        .unwrap();
    let mut events = cache.subscribe();
    assert_eq!(load(&cache, 1).await.source, Source::Loader);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stale = cache
        .get_or_load(&1, || async { Err::<Option<Item>, _>(StoreDown) })
        .await
        .unwrap();
    assert_eq!(stale.source, Source::Stale);
    let wanted = CacheEvent::StaleAnswer {
        key: "1".to_owned(),
        reason: StaleReason::LoaderError,
    };
    expect_event(&mut events, "the stale answer", |e| *e == wanted).await;
    let throttled = cache
        .get_or_load(&1, || async { Err::<Option<Item>, _>(StoreDown) })
        .await
        .unwrap();
    assert_eq!(throttled.source, Source::Stale);
    let wanted = CacheEvent::StaleAnswer {
        key: "1".to_owned(),
        reason: StaleReason::Throttled,
    };
    expect_event(&mut events, "the throttled answer", |e| *e == wanted).await;
}

#[tokio::test]
async fn redis_dying_and_coming_back_changes_the_l2_and_bus_states() {
    let mut redis = PrivateRedis::start().await;
    let cache: Cache = builder(&unique_prefix())
        .redis_url(redis.url())
        .l2_timeout(Duration::from_millis(200))
        .breaker_cooldown(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    assert_eq!(cache.l2_state(), L2State::Up);
    assert_eq!(cache.bus_state(), BusState::Subscribed);
    let mut events = cache.subscribe();

    redis.kill();
    // Reads fail over to the loader and open the breaker.
    for key in 0..20 {
        let _ = load(&cache, key).await;
    }
    expect_all(
        &mut events,
        "Redis killed",
        vec![
            CacheEvent::L2StateChanged {
                state: L2State::Down,
            },
            CacheEvent::BusStateChanged {
                state: BusState::Connecting,
            },
        ],
    )
    .await;

    redis.restart().await;
    expect_all(
        &mut events,
        "Redis back",
        vec![
            CacheEvent::L2StateChanged { state: L2State::Up },
            CacheEvent::BusStateChanged {
                state: BusState::Subscribed,
            },
        ],
    )
    .await;
}
