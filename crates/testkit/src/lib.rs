//! Test support shared by the workspace's crates' tests and benchmarks; a
//! dev-dependency only, knowing nothing of either crate.
//!
//! - Bounded polling ([`eventually`], [`poll_until`], [`wait_for`]): the
//!   one way a test waits for something that happens in its own time.
//! - The shared Redis ([`shared_redis`], [`redis_url`]) and a key prefix
//!   per test on it ([`unique_prefix`]); logs shown with `TEST_LOG=1`
//!   ([`init_test_log`]); the keys of one node ([`scan_keys`]).
//! - Private servers: a `redis-server` to hang, kill and restart
//!   ([`PrivateRedis`]) and a six-node Redis Cluster, three primaries and
//!   their replicas, whose nodes can be killed, hung and restarted to fail
//!   over ([`PrivateCluster`]), each on free local ports and gone when
//!   dropped.
//! - The benchmarks' worker threads ([`bench::Workers`]).
//! - Fuzz inputs from committed corpora, for proptest properties that stand
//!   in for `cargo fuzz` ([`fuzz_config`], [`corpus_input`], [`fuzz_input`]).
//!
//! What a test needs that is missing (a program, a service) makes it fail
//! saying what and how to get it, never skip.

pub mod bench;
mod cluster;
mod fuzz;
mod poll;
mod private_redis;
mod scan;
mod shared;

pub use cluster::PrivateCluster;
pub use fuzz::{corpus, corpus_input, fuzz_cases, fuzz_config, fuzz_input};
pub use poll::{POLL_INTERVAL, eventually, poll_until, wait_for};
pub use private_redis::{PrivateRedis, free_port};
pub use scan::scan_keys;
pub use shared::{START_SHARED_REDIS, init_test_log, redis_url, shared_redis, unique_prefix};
