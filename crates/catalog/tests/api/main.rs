//! Integration tests of the catalog over real HTTP, against real PostgreSQL
//! and SQLite (one database per test).
#![allow(clippy::unwrap_used)]

mod batching;
mod cache;
mod cluster;
mod connections;
mod dashboard;
mod failsafe;
mod faults;
mod helpers;
mod listen;
mod metrics;
mod process;
mod products;
mod proxy;
mod soak;
mod store;
mod strategies;
