//! Integration tests of `tiercache` against real Redis servers.
//!
//! One binary (faster to link on a 2-core CI). Tests use the Redis at
//! `REDIS_URL` (default `redis://127.0.0.1:6379`) under their own key
//! prefix, or start private `redis-server` processes, so they run in
//! parallel and can be repeated.

#![allow(clippy::unwrap_used)]

mod bus;
mod cluster;
mod consistency;
mod events;
mod failover;
mod failsafe;
mod manager;
mod metrics;
mod options;
mod remote;
mod schedule;
mod spans;
mod stampede;
mod support;
mod unapplied;
mod write_behind;
