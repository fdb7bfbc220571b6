//! `tiercache`: a multi-level cache for Rust services.
//!
//! The library is being built in steps (see the repository's issues). The
//! design it grows into:
//!
//! - **L1**: an in-process, bounded (entries and bytes), TTL-aware cache;
//! - **L2**: Redis (single node or cluster) with a codec and a circuit breaker;
//! - **invalidation bus**: Redis pub/sub so that every instance's L1 stays fresh;
//! - **manager** (`TieredCache`): L1 → L2 → loader with single-flight,
//!   fail-safe stale answers, negative caching, write strategies and tags.
//!
//! It knows nothing of the product catalog that uses it.
