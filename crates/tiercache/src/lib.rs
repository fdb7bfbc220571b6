//! `tiercache`: a multi-level cache for Rust services.
//!
//! A [`TieredCache<K, V>`](TieredCache) answers a lookup from the first level
//! that has the key and fills the levels above it on the way back:
//!
//! ```text
//!  get_or_load(key, loader)
//!    │
//!    ├─ L1  in-process (LocalCache on quick_cache)    ~30 ns, per instance
//!    ├─ L2  Redis, single node or cluster (optional)   ~1 RTT, shared
//!    └─ loader  the caller's source of truth (database, service…)
//! ```
//!
//! It is generic over the key (any [`CacheKey`]: `Display + Eq + Hash`, e.g.
//! `i64`) and the value (`Serialize + DeserializeOwned + Send + Sync`), and
//! knows nothing about what it caches.
//!
//! # Levels
//!
//! **L1** ([`LocalCache`]) is a sharded S3-FIFO cache bounded by entry count
//! *and* bytes (see [`LocalCache`] for how one weight enforces both), with a
//! per-entry TTL checked on read against a coarse millisecond
//! clock. A hit is one shard read lock, one TTL comparison, one increment of
//! a per-thread counter stripe and one `Arc` clone: no allocation, no
//! decoding, no `await`. Values are shared as `Arc<V>`, never deep-cloned.
//!
//! **L2** is Redis through redis-rs: one multiplexed connection
//! (`ConnectionManager`, TCP_NODELAY on) or a cluster connection. Values are
//! encoded by a [`Codec`] — [`JsonCodec`] by default (plain JSON any client
//! can read), [`PostcardCodec`] for compact binary — optionally
//! LZ4-compressed above a size threshold. Keys are
//! `{key_prefix}{namespace}:{key}`, every key has a TTL, batches use one
//! `MGET` / one pipeline, and clearing uses `SCAN` + `UNLINK`.
//!
//! **Loader**: the closure the caller passes to each read.
//!
//! # Guarantees
//!
//! - **A cache level never fails a request.** Redis errors, timeouts (100 ms
//!   per call by default), an open circuit breaker, or a value that does not
//!   decode (foreign codec, corruption) are misses: the read falls through to
//!   the loader. They are counted ([`CacheStats`]) and logged at most once
//!   every few seconds. The only error a read returns is the loader's own
//!   ([`Error::Loader`]).
//! - **Single-flight.** Concurrent misses of one key run one loader; the
//!   others wait for its result, errors included. Errors are never cached.
//! - **Negative caching.** A loader's "not found" is remembered for a short
//!   TTL in both levels (as an empty string in Redis, which no codec output
//!   can be), so repeated lookups of unknown keys do not reach the loader.
//! - **Bounded staleness.** Every stored TTL is the configured one shortened
//!   by a random jitter (default up to 10%), never lengthened. Without an
//!   explicit invalidation an instance serves a value at most its L1 TTL
//!   after it was loaded.
//!
//! # Failure modes
//!
//! | situation | behaviour |
//! |---|---|
//! | Redis unreachable at start | `build` succeeds, L2 is [`L2State::Down`], a background task reconnects with backoff |
//! | Redis dies | the first calls fail (misses); after 5 consecutive failures the breaker opens and Redis is skipped |
//! | Redis comes back | a probe every cooldown (1 s) closes the breaker; redis-rs reconnects; L2 is `Up` again within seconds |
//! | Redis slow | each call is cut at the timeout and counted as an error |
//! | value in Redis undecodable | miss, counted in `l2.decode_errors`, overwritten by the next fill |
//! | loader fails | every coalesced caller gets the same [`Error::Loader`]; nothing is cached |
//! | value too big for L1 | not admitted to L1 (counted as an eviction), still stored in Redis |
//!
//! # Not yet
//!
//! Cross-instance invalidation (pub/sub bus), version-checked Redis writes,
//! fail-safe stale answers, tags and write-behind are later steps; the
//! public types are `#[non_exhaustive]` where they will grow.
//!
//! # Example
//!
//! ```no_run
//! use tiercache::TieredCache;
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("store unavailable")]
//! struct StoreError;
//!
//! # async fn example() -> Result<(), tiercache::Error> {
//! let cache: TieredCache<i64, String> = TieredCache::builder()
//!     .namespace("product")
//!     .redis_url("redis://127.0.0.1:6379")
//!     .build()
//!     .await?;
//!
//! let lookup = cache
//!     .get_or_load(&7, || async { Ok::<_, StoreError>(Some("widget".to_owned())) })
//!     .await?;
//! println!("{:?} from {:?}", lookup.value, lookup.source);
//! println!("{:?}", cache.stats());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod builder;
mod clock;
mod error;
mod flight;
mod local;
mod manager;
mod remote;
mod stats;

pub use builder::{
    DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURE_THRESHOLD, DEFAULT_KEY_PREFIX,
    DEFAULT_L1_MAX_BYTES, DEFAULT_L1_MAX_ENTRIES, DEFAULT_L1_TTL, DEFAULT_L2_CONNECT_TIMEOUT,
    DEFAULT_L2_TIMEOUT, DEFAULT_L2_TTL, DEFAULT_NAMESPACE, DEFAULT_NEGATIVE_TTL,
    DEFAULT_TTL_JITTER, TieredCacheBuilder,
};
pub use error::Error;
pub use local::LocalCache;
pub use manager::{CacheKey, Lookup, Source, TieredCache};
pub use remote::codec::{Codec, CodecError, JsonCodec, PostcardCodec};
pub use remote::topology::RedisTopology;
pub use stats::{CacheStats, L1Stats, L2State, L2Stats, LoaderStats, Striped};
