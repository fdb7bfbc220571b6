//! Test support shared by the workspace's crates' tests and benchmarks; a
//! dev-dependency only, knowing nothing of either crate.
//!
//! - Bounded polling ([`eventually`], [`poll_until`], [`wait_for`]): the
//!   one way a test waits for something that happens in its own time.
//! - Private servers: a `redis-server` to hang, kill and restart
//!   ([`PrivateRedis`]) and a three-node Redis Cluster ([`PrivateCluster`]),
//!   each on free local ports and gone when dropped.
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

pub use cluster::PrivateCluster;
pub use fuzz::{corpus, corpus_input, fuzz_cases, fuzz_config, fuzz_input};
pub use poll::{POLL_INTERVAL, eventually, poll_until, wait_for};
pub use private_redis::{PrivateRedis, free_port};
