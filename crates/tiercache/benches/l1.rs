//! L1 hit cost: `LocalCache::get` (TTL check and counters included) against
//! a raw `quick_cache::sync::Cache::get` on the same keys and values, on 1
//! and 2 threads.
//!
//! Each thread performs `iters` gets over 10,000 resident keys in a
//! scrambled order. The threads are started once per benchmark and reused
//! for every sample (as a runtime reuses its workers), so samples measure
//! gets, not thread start-up. The time reported is wall time per get per thread, so
//! the 2-thread figure shows contention (equal to the 1-thread one when
//! there is none). Throughput is reported for all threads together.
//!
//! On a 2-vCPU virtual machine the 2-thread figures come in two modes, about
//! 40 ns and about 90 ns per get, for the raw cache and ours alike, and a
//! run stays in one mode for seconds (pinning each worker to its own core
//! did not change that). Compare the two only within one mode, e.g. over a
//! few runs of `cargo bench -p tiercache --bench l1 -- 2_thread`.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use testkit::bench::Workers;
use tiercache::LocalCache;

const KEYS: u64 = 10_000;
const VALUE_BYTES: usize = 256;

type Value = Arc<Vec<u8>>;

/// A fixed permutation of the keys, so gets hit every shard in turn
/// without the cost of a random number generator in the loop.
fn access_order() -> Vec<u64> {
    (0..KEYS).map(|i| (i * 7_919) % KEYS).collect()
}

/// Benchmarks `get` on `threads` long-lived threads as `name` in `group`;
/// each thread starts at its own offset in `order`.
fn bench_on_threads<G>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    threads: usize,
    order: &[u64],
    get: &G,
) where
    G: Fn(u64) -> bool + Sync,
{
    Workers::scoped(
        threads,
        |t| {
            let offset = t * order.len() / threads;
            move |iters| {
                let mut hits = 0u64;
                for i in 0..iters {
                    let index = (usize::try_from(i).unwrap() + offset) % order.len();
                    hits += u64::from(get(black_box(order[index])));
                }
                assert_eq!(hits, iters, "every get must hit");
            }
        },
        |workers| {
            group.bench_function(name, |b| b.iter_custom(|iters| workers.run(iters)));
        },
    );
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
        bench_on_threads(&mut group, "raw_quick_cache", threads, &order, &|k| {
            raw.get(&k).is_some()
        });
        bench_on_threads(&mut group, "tiercache_local", threads, &order, &|k| {
            ours.get(&k).is_some()
        });
        group.finish();
    }
}

criterion_group!(benches, l1_get);
criterion_main!(benches);
