//! [`Striped`]: counters split into per-thread, cache-line-sized stripes.
//!
//! Counters written on the hit path must not become a shared cache line that
//! every core writes on every hit: that line would bounce between cores and
//! cost more than the lookup itself. Each thread gets its own stripe, and
//! the stripes are summed when a snapshot is taken.
//!
//! Hand-written rather than built on a crate: crossbeam's `CachePadded`
//! gives padding, not ownership, so writers would still pay a locked
//! `fetch_add`; here a thread that owns its stripe increments with a plain
//! load and store. (`thread_local::ThreadLocal` could hold the stripes, one
//! per thread ever seen rather than a bounded set; not adopted without a
//! measurement of the hit path.)

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One stripe: a cache line's worth of counters.
///
/// 128-byte alignment covers adjacent-line prefetching on x86 and the 128-byte
/// lines of some ARM cores.
#[repr(align(128))]
#[derive(Debug)]
struct Stripe<const N: usize>([AtomicU64; N]);

impl<const N: usize> Stripe<N> {
    fn new() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// `N` counters, each split into per-thread stripes: counting on a hot path
/// without a cache line that every core writes.
///
/// The cache counts its own hits with this; it is public so that code
/// counting beside the cache on the same path (a service's request counters,
/// say) does not bring back the contention the cache avoids.
///
/// A thread whose process-wide slot number (see `thread_slot`) is below
/// the number of owned stripes is the only writer of that stripe, so it
/// increments with a plain load and store: no locked instruction on the hit
/// path, and no lost updates. Other threads share one stripe and use
/// `fetch_add`. Readers sum everything with relaxed loads.
#[derive(Debug)]
pub struct Striped<const N: usize> {
    owned: Box<[Stripe<N>]>,
    shared: Stripe<N>,
}

impl<const N: usize> Striped<N> {
    /// `N` counters at zero, with stripes for a few times the cores.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        // Runtime workers plus a few blocking and helper threads.
        let owned = (cores * 4).clamp(8, 64);
        Self {
            owned: (0..owned).map(|_| Stripe::new()).collect(),
            shared: Stripe::new(),
        }
    }

    /// Adds one to counter `counter`.
    #[inline]
    ///
    /// # Panics
    /// If `counter >= N`.
    pub fn incr(&self, counter: usize) {
        self.add(counter, 1);
    }

    /// Adds `n` to counter `counter`.
    #[inline]
    ///
    /// # Panics
    /// If `counter >= N`.
    pub fn add(&self, counter: usize, n: u64) {
        match thread_slot().and_then(|slot| self.owned.get(slot)) {
            Some(stripe) => {
                // Sole writer: a load/store pair cannot lose an update.
                let cell = &stripe.0[counter];
                cell.store(
                    cell.load(Ordering::Relaxed).wrapping_add(n),
                    Ordering::Relaxed,
                );
            }
            None => {
                self.shared.0[counter].fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The sum of counter `counter` over all stripes (a loose snapshot:
    /// concurrent increments may or may not be included).
    ///
    /// # Panics
    /// If `counter >= N`.
    pub fn sum(&self, counter: usize) -> u64 {
        self.owned
            .iter()
            .chain(std::iter::once(&self.shared))
            .map(|s| s.0[counter].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

impl<const N: usize> Default for Striped<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Slot numbers of exited threads, lowest handed out first so that live
/// threads keep to the low numbers that own stripes.
static FREE_SLOTS: Mutex<BinaryHeap<Reverse<usize>>> = Mutex::new(BinaryHeap::new());
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// A slot number held by one live thread at a time.
struct ThreadSlot(usize);

impl ThreadSlot {
    fn claim() -> Self {
        let reused = FREE_SLOTS.lock().unwrap_or_else(|e| e.into_inner()).pop();
        Self(reused.map_or_else(|| NEXT_SLOT.fetch_add(1, Ordering::Relaxed), |Reverse(s)| s))
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        // The mutex also orders this thread's last counter stores before the
        // next owner's first load of the same stripe.
        FREE_SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Reverse(self.0));
    }
}

thread_local! {
    static SLOT: ThreadSlot = ThreadSlot::claim();
}

/// This thread's slot number; `None` while its thread-locals are being torn down.
#[inline]
fn thread_slot() -> Option<usize> {
    SLOT.try_with(|slot| slot.0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn striped_counters_sum_increments_from_many_threads() {
        let counters = Arc::new(Striped::<2>::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counters = Arc::clone(&counters);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        counters.incr(0);
                    }
                    counters.add(1, 5);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counters.sum(0), 80_000);
        assert_eq!(counters.sum(1), 40);
    }

    #[test]
    fn threads_beyond_the_owned_stripes_share_one_exactly() {
        let counters = Arc::new(Striped::<1>::new());
        let threads = counters.owned.len() * 3;
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (counters, barrier) = (Arc::clone(&counters), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    // All alive at once, so slots cannot be recycled early.
                    barrier.wait();
                    for _ in 0..1_000 {
                        counters.incr(0);
                    }
                    barrier.wait();
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(counters.sum(0), 1_000 * threads as u64);
        assert!(counters.shared.0[0].load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn stripe_is_a_whole_cache_line() {
        assert_eq!(std::mem::align_of::<Stripe<2>>(), 128);
        assert_eq!(std::mem::size_of::<Stripe<10>>(), 128);
    }
}
