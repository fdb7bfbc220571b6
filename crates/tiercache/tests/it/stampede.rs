//! Cross-instance stampede protection: three instances, twenty concurrent
//! misses of one cold key each, the loader counted across all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use tiercache::{Source, TieredCache};

use crate::support::{self, Item, StoreDown};

const INSTANCES: usize = 3;
const CALLERS: usize = 20;
/// The loader's time: every caller misses while the first load runs.
const LOAD_TIME: Duration = Duration::from_millis(100);

/// Runs the stampede on fresh instances; returns how many loads ran and
/// where the answers came from.
async fn stampede(lease: Option<Duration>) -> (usize, Vec<Source>) {
    support::raw_redis().await;
    let prefix = support::unique_prefix();
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        // Redis calls get time to answer on a loaded CI machine: a call
        // that times out makes a waiter load (Redis "could not tell"),
        // which is right but not what is counted here (1 s was not enough
        // once in a CI run with the cluster tests beside it).
        let cache: TieredCache<i64, Item> = support::builder(&prefix)
            .stampede_lease(lease)
            .l2_timeout(Duration::from_secs(5))
            .build()
            .await
            .unwrap();
        instances.push(cache);
    }
    let loads = Arc::new(AtomicUsize::new(0));
    let reads = instances.iter().flat_map(|cache| {
        let loads = &loads;
        (0..CALLERS).map(move |_| {
            let loads = Arc::clone(loads);
            async move {
                let lookup = cache
                    .get_or_load(&7, move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(LOAD_TIME).await;
                        Ok::<_, StoreDown>(Some(Item::new(7)))
                    })
                    .await
                    .unwrap();
                assert_eq!(lookup.value.as_deref(), Some(&Item::new(7)));
                lookup.source
            }
        })
    });
    let sources = join_all(reads).await;
    (loads.load(Ordering::SeqCst), sources)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_lease_one_instance_loads_for_all() {
    let (without, _) = stampede(None).await;
    // Longer than a loaded machine takes to load and store (100 ms + a SET).
    let (with, sources) = stampede(Some(Duration::from_secs(5))).await;

    eprintln!(
        "{INSTANCES} instances × {CALLERS} misses: {without} loads without the lease, {with} with it"
    );
    assert_eq!(with, 1, "loads with the lease");
    assert!(
        without > 1,
        "without the lease each instance loads ({without})"
    );
    let from_l2 = sources.iter().filter(|s| **s == Source::L2).count();
    assert_eq!(
        from_l2,
        (INSTANCES - 1) * CALLERS,
        "the waiters read the holder's value: {sources:?}"
    );
}

#[tokio::test]
async fn a_lease_whose_holder_fails_lets_the_others_load() {
    support::raw_redis().await;
    let prefix = support::unique_prefix();
    let build = || {
        support::builder::<Item>(&prefix)
            .stampede_lease(Some(Duration::from_secs(5)))
            .build()
    };
    let (holder, waiter) = (build().await.unwrap(), build().await.unwrap());

    let failing = holder.get_or_load(&8, || async {
        tokio::time::sleep(LOAD_TIME).await;
        Err::<Option<Item>, _>(StoreDown)
    });
    let waiting = async {
        tokio::time::sleep(LOAD_TIME / 4).await;
        let started = std::time::Instant::now();
        let lookup = waiter
            .get_or_load(&8, || async { Ok::<_, StoreDown>(Some(Item::new(8))) })
            .await
            .unwrap();
        (lookup.source, started.elapsed())
    };
    let (failed, (source, waited)) = tokio::join!(failing, waiting);

    assert!(failed.is_err());
    assert_eq!(source, Source::Loader);
    assert!(
        waited < Duration::from_secs(1),
        "the waiter stopped waiting once the holder gave the lease back ({waited:?})"
    );
}
