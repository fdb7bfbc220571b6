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
//! `MGET` / one pipeline, and clearing uses `SCAN` + `UNLINK`. Single-key
//! reads are batched too: at most two run at a time, and the reads that
//! arrive meanwhile share the next `MGET` ([`Batcher`](building_blocks::Batcher)), so under load Redis
//! and this process pay per batch, not per read; a lone read is a `GET`.
//!
//! **Loader**: the closure the caller passes to each read.
//!
//! **Invalidation bus** (with L2 only): one Redis pub/sub channel per cache,
//! `{key_prefix}{namespace}:bus` (pub/sub ignores database numbers, so the
//! prefix is what separates caches), and beside it a **change log**, the
//! capped stream `{key_prefix}{namespace}:bus:log` (about 10,000 entries,
//! [`TieredCacheBuilder::change_log_len`]). `set`, `invalidate`,
//! `invalidate_many`, `warm` and `clear` publish after changing Redis; a
//! background task coalesces what is queued while a publish is in flight
//! into one small JSON message (keys only, at most 500 per message), so a
//! write burst is a few messages. Each message is appended to the log and
//! published by one script, which stamps it with its log entry and the one
//! before it. Keys travel as their `Display` strings and are parsed back
//! (`CacheKey: FromStr`) to be dropped from the receivers' L1; a key that
//! does not parse clears the receiver's whole L1. Each instance has one
//! dedicated RESP3 connection for the bus (to the first seed node on a
//! cluster, where classic `PUBLISH` reaches every node), ignores its own
//! messages, and publishes a heartbeat naming the log's head every
//! heartbeat interval (1 s by default). A receiver applies a message only
//! when it continues the log position it has reached; after anything else
//! (a lost message, a reconnection, a silence) it reads the log from that
//! position and drops exactly the keys named since.
//!
//! **Client tracking** (on by default, [`TieredCacheBuilder::client_tracking`]):
//! the bus connection also runs `CLIENT TRACKING ON BCAST PREFIX
//! {key_prefix}{namespace}: NOLOOP` (on a cluster, a connection to every
//! primary does, since tracking is per node), so a key of this cache
//! changed, deleted, expired or evicted in Redis by anyone (another
//! service, a script, `redis-cli`) leaves every instance's L1 too. On a
//! single server the cache's writes go over that connection, so `NOLOOP`
//! keeps plain writes from coming back; versioned writes (scripts, which
//! `NOLOOP` does not recognise, and every write on a cluster) are told
//! apart by version.
//!
//! What they cost: each bus message is one script call (`XREVRANGE` +
//! `XADD` + `PUBLISH`) instead of a `PUBLISH`, and the log holds up to
//! about [`TieredCacheBuilder::change_log_len`] entries of at most 500 keys;
//! tracking sends every instance one invalidation per changed key, and an
//! instance holding that key reads it back once. Measured on a catalog
//! service built on this crate (two instances, tracking on vs off): L1 hits
//! unchanged, writes about 4% slower, +10 µs CPU per write on each other
//! instance and +7 µs in Redis.
//! Counters are in [`BusStats`].
//!
//! # Guarantees
//!
//! - **A cache level never fails a request.** Redis errors, timeouts (100 ms
//!   per call by default), an open circuit breaker, or a value that does not
//!   decode (foreign codec, corruption) are misses: the read falls through to
//!   the loader. They are counted ([`CacheStats`]) and logged at most once
//!   every few seconds. The only error a read returns is the loader's own
//!   ([`LoadError`], typed by the loader's error), or its timeout.
//! - **Single-flight.** Concurrent misses of one key run one loader; the
//!   others wait for its result, errors included. Errors are never cached.
//! - **Negative caching.** A loader's "not found" is remembered for a short
//!   TTL in both levels (as an empty string in Redis, which no codec output
//!   can be), so repeated lookups of unknown keys do not reach the loader.
//! - **Bounded staleness.** Every stored TTL is the configured one shortened
//!   by a random jitter (default up to 10%), never lengthened. Without an
//!   explicit invalidation an instance serves a value at most its L1 TTL
//!   after it was loaded.
//! - **The writer never reads back an old version.** Once a write has
//!   returned, the instance that made it answers the new version (or a
//!   miss), even when its Redis step failed: it then skips Redis for those
//!   keys until the step is retried successfully.
//! - **Cross-instance invalidation.** Once a write has returned, the other
//!   instances drop their L1 copy about one Redis round trip later
//!   (milliseconds; within 1 s under load). Nothing a message carried is lost to
//!   a failed publish, a dropped or half-dead connection or a missed
//!   message: the publisher retries until Redis takes it (every 50–250 ms),
//!   and a receiver catches up from the change log as soon as it hears
//!   Redis again, dropping only the keys changed meanwhile. L1 is emptied
//!   only when the log cannot answer: it was trimmed past the receiver's
//!   position, or Redis lost it (a restart without persistence, a flush).
//!   While Redis cannot be reached, an instance serves what its L1 holds at
//!   most until its L1 TTL. `build` waits for the first subscription while
//!   Redis is up; [`TieredCache::wait_subscribed`] lets a service wait for
//!   it before reporting healthy.
//! - **Writes made outside the cache.** With client tracking on, a key
//!   changed in Redis by anyone leaves every instance's L1 about one round
//!   trip later. Changes made while an instance's bus connection is down
//!   are not in the change log unless the cache made them: those reach its
//!   L1 by its L1 TTL. In a versioned cache, an outside write is recognised
//!   by its version: one that keeps the version L1 holds goes unnoticed.
//! - **Race-free fills.** A load that started before an invalidation of its
//!   key (here or, through the bus, on another instance) never lands in L1
//!   (fill fences). In a [versioned](TieredCacheBuilder::versioned)
//!   cache, Redis writes go through a Lua script that refuses a version
//!   older than the stored one, and [`TieredCache::invalidate_version`]
//!   leaves a tombstone that refuses the old version for a while: a slow
//!   reader cannot put an old value back anywhere.
//! - **Fail-safe.** With [`TieredCacheBuilder::fail_safe_window`], an expired L1
//!   value stays as a fallback for a window and is answered
//!   ([`Source::Stale`]) when the loader fails, hits its hard timeout, or is
//!   slower than the soft timeout (the load then finishes in the background);
//!   the failing loader is not retried for a throttle time. Invalidated
//!   values are never fallbacks.
//! - **Eager refresh.** With [`TieredCacheBuilder::eager_refresh`], a hit
//!   late in an entry's life reloads it in the background, once per key.
//! - **Tags.** [`TieredCache::tag_generation`] / [`TieredCache::invalidate_tags`]:
//!   entries keyed by a tag's generation become unreachable on every
//!   instance when the tag is invalidated.
//!
//! # Failure modes
//!
//! | situation | behaviour |
//! |---|---|
//! | Redis unreachable at start | `build` succeeds, L2 is [`L2State::Down`], a background task reconnects with backoff |
//! | Redis dies | the first calls fail (misses); after 5 consecutive failures the breaker opens and Redis is skipped |
//! | a write's Redis step fails (invalidation, tombstone, write-through `SET`) | the write completes; this instance skips Redis for those keys and retries the step in the background (every 50–250 ms) until Redis takes it, then re-announces the keys on the bus; past 100,000 such keys, or after a `clear` Redis missed, it skips Redis for every key until it has removed all of the cache's keys from Redis |
//! | Redis comes back | a probe every cooldown (1 s) closes the breaker; redis-rs reconnects; L2 is `Up` again within seconds |
//! | Redis slow or hung | each call is cut at the timeout and counted as an error; a miss waits for Redis at most two timeouts: one reading (its wait for a batch in flight included) and one writing back what the loader returned (a third with write-behind, for the queued-value lookup); none once the breaker opens |
//! | value in Redis undecodable | miss, counted in `l2.decode_errors`, overwritten by the next fill |
//! | loader fails | with a fallback (fail-safe): [`Source::Stale`], loader throttled; else every coalesced caller gets the same [`LoadError::Loader`]; nothing is cached |
//! | loader slow | past the soft timeout: fallback answered, load finishes in the background; past the hard timeout: abandoned ([`LoadError::TimedOut`]) |
//! | value too big for L1 | not admitted to L1 (counted as an eviction), still stored in Redis |
//! | bus publish fails | counted in `bus.publish_errors`; the message goes back into the queue (coalescing with newer work; past 100,000 keys it becomes one `clear`) and is retried every 50–250 ms, past the breaker, until Redis takes it |
//! | bus connection drops, or is silent for 3 heartbeats | reconnected (every 50–250 ms while it fails), then the change log is replayed from the last applied entry: only the keys changed meanwhile leave L1 (`bus.replays`, `bus.keys_replayed`) |
//! | receiver away longer than the change log reaches | L1 cleared (`bus.l1_clears.log_truncated`) |
//! | Redis restarted without its data, or flushed | L1 cleared (`bus.l1_clears.log_lost`, `bus.l1_clears.redis_flush`) |
//! | key changed in Redis by someone else | dropped from every L1 by client tracking (`bus.tracked_keys`) |
//! | a cluster primary killed or hung | its slots' calls fail or time out (misses) until its replica takes over; a timed-out call makes the cache reconnect (at most twice a second) to read the slot map afresh, so a hung primary is routed around once replaced; the bus re-subscribes on the channel's new primary and catches up from the log |
//! | a URL naming the wrong topology | `build` fails with [`Error::Config`] (a cluster node given as one server, or a plain server as a cluster) |
//!
//! # Write-behind
//!
//! With [`TieredCacheBuilder::write_behind`] and a [versioned](TieredCacheBuilder::versioned)
//! cache, [`TieredCache::write_behind`] acknowledges a change once it is in
//! Redis: the new value (or a "deleted" marker) in the cache, and the change
//! in a durable queue (Redis Streams, read through a consumer group), in
//! one script on a single server. Every instance runs a flusher that writes
//! batches to the store through your [`Flush`], coalescing repeated changes
//! of a key to the newest, and acknowledges them only once the store has
//! them; the store must apply a change only over an older version, so that
//! replays are harmless. A crashed instance's unacknowledged changes are
//! taken over by another after a few seconds; a change the store rejects
//! for good goes to a dead-letter stream; until the store has a change,
//! reads that miss the cached value find it in a pending hash, never the
//! store's older row. [`TieredCache::drain_write_behind`] flushes the queue
//! for a graceful shutdown. On a Redis Cluster the queue is split into
//! partitions (hash-tagged, so each script stays in one slot), and each
//! write can wait for a replica before it is acknowledged
//! ([`TieredCacheBuilder::write_behind_replica_wait`]). Counters are in
//! [`WriteBehindStats`].
//!
//! # Events
//!
//! [`TieredCache::subscribe`] streams [`CacheEvent`]s: evictions,
//! invalidations applied (local, bus, change-log replay, client tracking),
//! L1 clears and why, L2 and bus state changes, stale answers and
//! write-behind flush results. Nothing is built or sent while nobody
//! subscribes.
//!
//! # Cargo features
//!
//! `redis` (default) adds L2, the bus, write-behind and the stampede lease;
//! `cluster` adds Redis Cluster URLs, `compression` LZ4 above
//! [`compression_threshold`](TieredCacheBuilder::compression_threshold),
//! `postcard` [`PostcardCodec`], and `metrics` records the cache's counters,
//! gauges and histograms through the [`metrics`](https://docs.rs/metrics)
//! facade. With `default-features = false` the cache is L1 only (single-flight
//! loads, fail-safe, negative caching, tags and warming work in process)
//! and redis is not in the dependency tree; its setters (`redis_url`,
//! `write_behind`, …) do not exist then.
//!
//! # Not yet
//!
//! The public types are `#[non_exhaustive]` where they will grow. Fail-safe keeps stale values in L1 only (Redis
//! copies live until their own TTL). On a cluster the cache's own writes do
//! not go over the client-tracking connections (one per primary), so
//! tracking reports them back; a versioned cache recognises its own
//! versions, but an unversioned one drops the key it just filled, and the
//! next read fills L1 from L2. On a cluster, client tracking covers the primaries found
//! when the bus connects: a primary added later (resharding) is tracked
//! from the next reconnection; a failover drops a tracking connection and
//! so reconnects them all.
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
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod batch;
mod breaker;
mod builder;
#[cfg(feature = "redis")]
mod bus;
mod clock;
mod codec;
mod error;
mod events;
mod fence;
mod flight;
mod load_error;
mod local;
mod manager;
#[cfg(feature = "redis")]
mod remote;
mod stats;
mod striped;
mod task;
#[cfg(feature = "metrics")]
pub mod telemetry;
mod timing;
#[cfg(feature = "redis")]
mod write_behind;

pub use builder::{TieredCacheBuilder, defaults};

/// Building blocks the cache is made of, public for services that need the
/// same beside it (the catalog batches its store reads with [`Batcher`],
/// guards its store with [`CircuitBreaker`] and counts requests per thread
/// with [`Striped`]). Not needed to use the cache.
///
/// [`Batcher`]: building_blocks::Batcher
/// [`CircuitBreaker`]: building_blocks::CircuitBreaker
/// [`Striped`]: building_blocks::Striped
pub mod building_blocks {
    pub use crate::batch::{Abandoned, Batcher};
    pub use crate::breaker::{CircuitBreaker, Permit};
    pub use crate::striped::Striped;
}
#[cfg(feature = "postcard")]
pub use codec::PostcardCodec;
pub use codec::{Codec, CodecError, JsonCodec};
pub use error::{Error, LoaderTimedOut};
pub use events::{
    CacheEvent, CacheEvents, ClearReason, EVENT_CAPACITY, InvalidationOrigin, StaleReason,
};
pub use load_error::LoadError;
pub use local::LocalCache;
pub use manager::{CacheKey, EntryOptions, Loaded, Lookup, Source, TieredCache};
#[cfg(feature = "redis")]
pub use remote::topology::RedisTopology;
pub use stats::{
    BusClears, BusState, BusStats, BusTracking, CacheStats, DURATION_BUCKETS_MS, L1Stats, L2State,
    L2Stats, LoaderStats, StaleStats, WriteBehindStats,
};
#[cfg(feature = "redis")]
pub use write_behind::{Change, Flush, FlushError, Queued};
