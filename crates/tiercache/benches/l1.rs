//! L1 hit cost: `LocalCache::get` (TTL check and counters included) against
//! a raw `quick_cache::sync::Cache::get` on the same keys and values, on 1
//! and 2 threads.
//!
//! Each thread performs `iters` gets over 10,000 resident keys in a
//! scrambled order; the time reported is wall time per get per thread, so
//! the 2-thread figure shows contention (equal to the 1-thread one when
//! there is none). Throughput is reported for all threads together.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tiercache::LocalCache;

const KEYS: u64 = 10_000;
const VALUE_BYTES: usize = 256;

type Value = Arc<Vec<u8>>;

/// A fixed permutation of the keys, so gets hit every shard in turn
/// without the cost of a random number generator in the loop.
fn access_order() -> Vec<u64> {
    (0..KEYS).map(|i| (i * 7_919) % KEYS).collect()
}

/// Runs `get` on `threads` threads, `iters` times each, and returns the wall time.
fn run_threads<G>(threads: usize, iters: u64, order: &[u64], get: &G) -> Duration
where
    G: Fn(u64) -> bool + Sync,
{
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let offset = t * order.len() / threads.max(1);
                    barrier.wait();
                    let mut hits = 0u64;
                    for i in 0..iters {
                        let index = (usize::try_from(i).unwrap() + offset) % order.len();
                        hits += u64::from(get(black_box(order[index])));
                    }
                    assert_eq!(hits, iters, "every get must hit");
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for worker in workers {
            worker.join().unwrap();
        }
        start.elapsed()
    })
}

fn l1_get(c: &mut Criterion) {
    let order = access_order();
    let raw: quick_cache::sync::Cache<u64, Value> =
        quick_cache::sync::Cache::new(2 * KEYS as usize);
    let ours: LocalCache<u64, Value> = LocalCache::new(2 * KEYS, 1 << 30).unwrap();
    for key in 0..KEYS {
        let value = Arc::new(vec![u8::try_from(key % 251).unwrap(); VALUE_BYTES]);
        raw.insert(key, Arc::clone(&value));
        ours.insert(&key, value, VALUE_BYTES, Duration::from_secs(3_600));
    }

    for threads in [1usize, 2] {
        let mut group = c.benchmark_group(format!("l1_get/{threads}_thread"));
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function("raw_quick_cache", |b| {
            b.iter_custom(|iters| run_threads(threads, iters, &order, &|k| raw.get(&k).is_some()));
        });
        group.bench_function("tiercache_local", |b| {
            b.iter_custom(|iters| run_threads(threads, iters, &order, &|k| ours.get(&k).is_some()));
        });
        group.finish();
    }
}

criterion_group!(benches, l1_get);
criterion_main!(benches);
