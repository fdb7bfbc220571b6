//! The product catalog service: an HTTP API (axum) over a [`store::Store`]
//! (PostgreSQL or SQLite through sqlx).
//!
//! Dependencies point inward: [`http`] → [`service`] → [`store`] /
//! [`domain`]. [`app`] assembles them; [`cli`] is the command line.

pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod seed;
pub mod service;
pub mod store;
pub mod telemetry;

pub use cli::{Cli, run};
