//! The multi-threaded harness of the benchmarks: worker threads that live
//! for a whole benchmark and run a batch of iterations on request, all
//! released at once, so that a sample measures the work (and the
//! contention between threads) and not thread start-up. Each worker keeps
//! one thread identity, as a runtime's worker threads do.
//!
//! With criterion, `b.iter_custom(|iters| workers.run(iters))`:
//!
//! ```
//! use testkit::bench::Workers;
//!
//! let keys: Vec<u64> = (0..10_000).collect();
//! let threads = 2;
//! let took = Workers::scoped(
//!     threads,
//!     |worker| {
//!         let keys = &keys;
//!         // Each worker its own stretch of the keys.
//!         let mut next = worker * keys.len() / threads;
//!         move |iters| {
//!             for _ in 0..iters {
//!                 next = (next + 1) % keys.len();
//!                 std::hint::black_box(keys[next]);
//!             }
//!         }
//!     },
//!     |workers| workers.run(1_000),
//! );
//! assert!(took.as_secs() < 60);
//! ```

use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// Worker threads started by [`Workers::scoped`].
#[derive(Debug)]
pub struct Workers {
    starts: Vec<mpsc::Sender<u64>>,
    done: mpsc::Receiver<()>,
    barrier: Arc<Barrier>,
}

impl Workers {
    /// Starts `threads` workers, runs `body` with them, and stops them.
    ///
    /// Worker `i` calls `make(i)` once, on its own thread (so what it builds,
    /// a runtime say, belongs to that thread), and then the closure it
    /// returned once per [`run`](Self::run), with the iterations asked for.
    /// The threads are scoped: `make` and the closures may borrow what the
    /// caller holds.
    pub fn scoped<M, W, R>(threads: usize, make: M, body: impl FnOnce(&Self) -> R) -> R
    where
        M: Fn(usize) -> W + Sync,
        W: FnMut(u64),
    {
        let make = &make;
        thread::scope(|scope| {
            let barrier = Arc::new(Barrier::new(threads + 1));
            let (done_tx, done) = mpsc::channel();
            let starts = (0..threads)
                .map(|worker| {
                    let (start_tx, start) = mpsc::channel::<u64>();
                    let (barrier, done_tx) = (Arc::clone(&barrier), done_tx.clone());
                    scope.spawn(move || {
                        let mut work = make(worker);
                        for iters in start {
                            barrier.wait();
                            work(iters);
                            if done_tx.send(()).is_err() {
                                break;
                            }
                        }
                    });
                    start_tx
                })
                .collect();
            let workers = Self {
                starts,
                done,
                barrier,
            };
            // Dropping the workers (their senders) ends the threads' loops,
            // and the scope joins them.
            body(&workers)
        })
    }

    /// Has every worker run `iters` iterations at once; returns the wall
    /// time from their common start until the last one finished.
    ///
    /// # Panics
    /// When a worker thread is gone (it panicked).
    pub fn run(&self, iters: u64) -> Duration {
        for start in &self.starts {
            start.send(iters).expect("a worker thread is running");
        }
        self.barrier.wait();
        let started = Instant::now();
        for _ in &self.starts {
            self.done.recv().expect("a worker thread finished its run");
        }
        started.elapsed()
    }
}
