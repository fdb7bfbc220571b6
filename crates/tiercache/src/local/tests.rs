//! Unit tests of [`LocalCache`](super::LocalCache): bounds, byte accounting, expiry.

use super::*;

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn get_after_insert_hits_and_counts() {
    let cache = LocalCache::new(100, 1 << 20).unwrap();
    cache.insert(&1u64, Arc::new("a"), 10, MINUTE);
    assert_eq!(cache.get(&1).as_deref(), Some(&"a"));
    assert_eq!(cache.get(&2), None);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
}

#[test]
fn bytes_follow_insert_replace_remove_and_clear() {
    let cache = LocalCache::new(100, 1 << 20).unwrap();
    cache.insert(&1u64, (), 100, MINUTE);
    cache.insert(&2u64, (), 50, MINUTE);
    assert_eq!(cache.stats().bytes, 150);
    cache.insert(&1u64, (), 30, MINUTE);
    assert_eq!(cache.stats().bytes, 80);
    assert!(cache.remove(&2));
    assert!(!cache.remove(&2));
    assert_eq!(cache.stats().bytes, 30);
    cache.clear();
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.bytes), (0, 0));
    // The slab keeps the two slots for reuse.
    assert_eq!(stats.ghost_bytes, 2 * SLOT_BYTES);
}

#[test]
fn entry_bound_holds_for_tiny_values() {
    let cache = LocalCache::new(64, 1 << 30).unwrap();
    for i in 0..10_000u64 {
        cache.insert(&i, (), 1, MINUTE);
    }
    let stats = cache.stats();
    assert!(stats.entries <= 64, "{stats:?}");
    assert!(stats.evictions >= 10_000 - 64, "{stats:?}");
    assert_eq!(stats.bytes, stats.entries);
}

#[test]
fn byte_bound_holds_for_large_values() {
    let cache = LocalCache::new(1_000_000, 64 * 1024).unwrap();
    for i in 0..1_000u64 {
        cache.insert(&i, (), 1_000, MINUTE);
    }
    let stats = cache.stats();
    assert!(stats.bytes <= 64 * 1024, "{stats:?}");
    assert!(stats.entries > 0, "{stats:?}");
    assert_eq!(stats.bytes, stats.entries * 1_000);
}

#[test]
fn value_larger_than_a_shard_is_rejected_and_counted() {
    let cache = LocalCache::new(1_000, 10_000).unwrap();
    cache.insert(&1u64, (), 1_000_000, MINUTE);
    assert_eq!(cache.get(&1), None);
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.bytes, stats.evictions), (0, 0, 1));
}

#[test]
fn a_few_entries_under_the_default_byte_bound_are_all_held() {
    // The default byte bound over a handful of entries: the unit is
    // many megabytes, and each entry still fits.
    for max_entries in 1..=5u64 {
        let cache = LocalCache::new(max_entries, 64 << 20).unwrap();
        for i in 0..max_entries {
            cache.insert(&i, (), 300, MINUTE);
        }
        let stats = cache.stats();
        assert_eq!(
            (stats.entries, stats.evictions),
            (max_entries, 0),
            "{max_entries}"
        );
        assert!((0..max_entries).all(|i| cache.peek(&i).is_some()));
    }
}

mod bounds {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    /// Byte bounds from a few bytes to 128 MiB.
    fn max_bytes() -> impl Strategy<Value = u64> {
        prop_oneof![1u64..1_000, 1_000u64..1 << 20, 1u64 << 20..1 << 27]
    }

    /// The bytes held, summed over the entries still present.
    fn held_bytes(cache: &LocalCache<u64, ()>, keys: u64) -> u64 {
        (0..keys)
            .filter_map(|i| cache.cache.peek(&i))
            .map(|slot| slot.bytes())
            .sum()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn neither_bound_is_ever_exceeded(
            max_entries in 1u64..3_000,
            max_bytes in max_bytes(),
            sizes in vec(0usize..100_000, 1..3_000),
        ) {
            let cache = LocalCache::new(max_entries, max_bytes).unwrap();
            for (i, size) in (0u64..).zip(&sizes) {
                cache.insert(&i, (), *size, MINUTE);
                let stats = cache.stats();
                prop_assert!(stats.entries <= max_entries, "{stats:?}");
                prop_assert!(stats.bytes <= max_bytes, "{stats:?}");
            }
            let keys = u64::try_from(sizes.len()).unwrap();
            prop_assert_eq!(cache.stats().bytes, held_bytes(&cache, keys));
        }

        #[test]
        fn a_one_shard_cache_holds_every_small_entry_up_to_its_bound(
            max_entries in 1u64..256,
            max_bytes in max_bytes(),
            fill in 0.0f64..=1.0,
        ) {
            let cache = LocalCache::new(max_entries, max_bytes).unwrap();
            // Entries of at most their share of the bytes.
            let share = max_bytes / max_entries;
            let keys = (max_entries as f64 * fill).ceil() as u64;
            for i in 0..keys {
                cache.insert(&i, (), usize::try_from(i % (share + 1)).unwrap(), MINUTE);
            }
            prop_assert_eq!(cache.stats().entries, keys);
            prop_assert_eq!(cache.stats().evictions, 0);
        }

        #[test]
        fn a_one_shard_cache_holds_large_entries_up_to_its_byte_bound(
            max_bytes in 1_000u64..1 << 20,
            parts in 2u64..64,
        ) {
            // More entry slots than entries: the entries' bytes (the bound
            // less the ghosts' share) bind, exactly (one entry alone may
            // take at most 97 % of them, see "Shards").
            let cache = LocalCache::new(200, max_bytes).unwrap();
            let entry_bytes = crate::local::layout::Layout::new(200, max_bytes).unwrap().entry_bytes;
            let size = entry_bytes / parts;
            for i in 0..parts {
                cache.insert(&i, (), usize::try_from(size).unwrap(), MINUTE);
            }
            prop_assert_eq!(cache.stats().entries, parts);
            prop_assert_eq!(cache.stats().bytes, parts * size);
        }

        #[test]
        fn a_sharded_cache_holds_most_of_its_bound(
            max_entries in 256u64..20_000,
            bytes_per_entry in 300u64..4_096,
        ) {
            let cache = LocalCache::new(max_entries, max_entries * bytes_per_entry).unwrap();
            for i in 0..max_entries {
                cache.insert(&i, (), 300, MINUTE);
            }
            let entries = cache.stats().entries;
            prop_assert!(entries * 100 >= max_entries * 85, "{entries} of {max_entries}");
        }

        #[test]
        fn a_value_is_stored_exactly_when_a_shard_can_take_it(
            max_entries in 1u64..20_000,
            max_bytes in max_bytes(),
            share in 0.0f64..2.0,
        ) {
            let cache = LocalCache::new(max_entries, max_bytes).unwrap();
            let (weigh, max_weight) = (cache.shared.weigh, cache.shared.max_weight);
            // The largest size a shard admits, then a share of it.
            let largest = max_weight / weigh.per_byte;
            let size = ((largest as f64 * share) as u64).min(u64::from(u32::MAX));
            cache.insert(&1, (), usize::try_from(size).unwrap(), MINUTE);
            prop_assert_eq!(cache.peek(&1).is_some(), weigh.weight(size) <= max_weight, "size {}", size);
            prop_assert!(max_weight >= weigh.unit, "every small entry fits");
        }
    }
}

#[test]
fn expired_entry_is_a_miss_and_is_removed() {
    let cache = LocalCache::new(100, 1 << 20).unwrap();
    cache.insert(&1u64, (), 10, Duration::from_millis(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cache.peek(&1).is_some() {
        assert!(std::time::Instant::now() < deadline, "entry never expired");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.stats().entries, 0);
    assert_eq!(cache.stats().bytes, 0);
}

#[test]
fn probe_tells_fresh_due_degraded_and_stale_entries_apart() {
    let cache = LocalCache::new(100, 1 << 20).unwrap();
    let life = |fresh, refresh_after, degraded| Lifetime {
        fresh,
        stale: MINUTE,
        refresh_after,
        degraded,
    };
    let _ = cache.insert_with(&1u64, 'a', 10, life(MINUTE, None, false));
    let _ = cache.insert_with(&2u64, 'b', 10, life(MINUTE, Some(Duration::ZERO), false));
    let _ = cache.insert_with(&3u64, 'c', 10, life(MINUTE, None, true));
    let _ = cache.insert_with(&4u64, 'd', 10, life(Duration::from_millis(1), None, false));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cache.peek(&4).is_some() {
        assert!(std::time::Instant::now() < deadline, "entry never expired");
        std::thread::sleep(Duration::from_millis(2));
    }

    assert_eq!(
        cache.probe(&1),
        Probe::Fresh {
            value: 'a',
            refresh: false
        }
    );
    assert_eq!(
        cache.probe(&2),
        Probe::Fresh {
            value: 'b',
            refresh: true
        }
    );
    assert_eq!(cache.probe(&3), Probe::Degraded('c'));
    assert_eq!(
        cache.probe(&4),
        Probe::Stale {
            value: 'd',
            bytes: 10
        }
    );
    assert_eq!(cache.probe(&5), Probe::Missing);
    assert_eq!(cache.get(&3), None, "a degraded entry is no hit");
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.entries), (2, 4));
}

#[test]
fn zero_ttl_stores_nothing() {
    let cache = LocalCache::new(100, 1 << 20).unwrap();
    cache.insert(&1u64, (), 10, MINUTE);
    cache.insert(&1u64, (), 10, Duration::ZERO);
    assert_eq!(cache.peek(&1), None);
    assert_eq!(cache.stats().bytes, 0);
}

#[test]
fn zero_or_uncombinable_bounds_are_rejected() {
    assert!(LocalCache::<u64, ()>::new(0, 10).is_err());
    assert!(LocalCache::<u64, ()>::new(10, 0).is_err());
    assert!(LocalCache::<u64, ()>::new(u64::MAX, u64::MAX - 1).is_err());
    assert!(LocalCache::<u64, ()>::new(10_000_000, 1 << 40).is_ok());
}

#[test]
fn concurrent_inserts_keep_bytes_exact() {
    let cache = LocalCache::new(1_000, 1 << 30).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    cache.insert(
                        &(i % 3_000),
                        (),
                        usize::try_from(t + i % 7).unwrap(),
                        MINUTE,
                    );
                    if i % 5 == 0 {
                        cache.remove(&(i % 3_000));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = cache.stats();
    let mut sum = 0;
    for i in 0..3_000u64 {
        if cache.cache.peek(&i).is_some() {
            sum += cache.cache.peek(&i).map_or(0, |s| s.bytes());
        }
    }
    assert_eq!(stats.bytes, sum);
}

#[test]
fn ghosts_take_at_most_their_share_of_the_byte_bound() {
    for (entries, bytes) in [
        (10_000, 64 << 20),
        (1_100_000, 256 << 20),
        (1_000, 10_000),
        (1, 1),
    ] {
        let layout = super::layout::Layout::new(entries, bytes).unwrap();
        let ghost_bytes = layout.slots() as f64 * layout.ghost_allocation * SLOT_BYTES as f64;
        assert!(
            ghost_bytes <= 0.03 * bytes as f64 + 1e-6,
            "{entries} {bytes}"
        );
        assert!((0.0..=0.5).contains(&layout.ghost_allocation));
        // Entries and ghosts together stay within the bound.
        let shard_slots = layout.slots() / layout.shards;
        let ghosts = super::layout::max_ghosts(layout.shards, shard_slots, layout.ghost_allocation);
        assert!(
            layout.entry_bytes + ghosts * SLOT_BYTES <= bytes,
            "{entries} {bytes}: {layout:?}"
        );
        assert!(
            layout.entry_bytes as f64 >= 0.97 * bytes as f64,
            "{layout:?}"
        );
    }
    // A byte bound with room for them keeps quick_cache's default.
    let roomy = super::layout::Layout::new(10_000, 64 << 20).unwrap();
    assert!((roomy.ghost_allocation - 0.5).abs() < f64::EPSILON);
}

#[test]
fn slab_slot_bytes_is_what_quick_cache_takes_per_slot() {
    fn check<K: Eq + Hash + Clone, T: Clone>(keys: impl Iterator<Item = K>, value: T) {
        let cache = LocalCache::new(10_000, 1 << 30).unwrap();
        let mut inserted = 0;
        for key in keys {
            cache.insert(&key, value.clone(), 1, MINUTE);
            inserted += 1;
        }
        assert_eq!(cache.len(), inserted as u64);
        assert_eq!(
            cache.cache.memory_used().entries,
            inserted * super::layout::slab_slot_bytes::<K, Slot<T>>(),
            "{}",
            std::any::type_name::<(K, T)>()
        );
    }
    check(0..1_000u64, Arc::new(0u8));
    check(0..1_000i64, Some(Arc::new(0u8)));
    check((0..1_000).map(|i: u32| i.to_string()), Arc::new(0u8));
    check(0..1_000u32, ());
    check(0..1_000u16, [0u64; 3]);
}

#[test]
fn ghost_bytes_count_the_slots_that_hold_no_entry() {
    // One shard (under 256 entries), so that freed slots are reused in order.
    let cache = LocalCache::new(200, 1 << 30).unwrap();
    for i in 0..100u64 {
        cache.insert(&i, (), 1, MINUTE);
    }
    assert_eq!(cache.stats().ghost_bytes, 0);
    for i in 0..40u64 {
        assert!(cache.remove(&i));
    }
    assert_eq!(cache.stats().ghost_bytes, 40 * SLOT_BYTES);
    for i in 100..130u64 {
        cache.insert(&i, (), 1, MINUTE);
    }
    assert_eq!(cache.stats().ghost_bytes, 10 * SLOT_BYTES);

    // Evictions leave ghosts, which stay within their share of the bound.
    let max_bytes = 4 << 20;
    let cache = LocalCache::new(100_000, max_bytes).unwrap();
    for i in 0..20_000u64 {
        cache.insert(&i, (), 1_000 + SLOT_BYTES as usize, MINUTE);
    }
    let stats = cache.stats();
    assert!(stats.evictions > 10_000, "{stats:?}");
    assert!(stats.ghost_bytes > 0, "{stats:?}");
    assert!(stats.bytes + stats.ghost_bytes <= max_bytes, "{stats:?}");
}
