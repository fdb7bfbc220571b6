//! The invalidation bus: tells the other instances sharing a Redis to drop
//! keys from their L1, and lets an instance that missed messages drop
//! exactly what changed meanwhile.
//!
//! Owns the two background tasks of one cache ([`publisher`] and
//! [`receiver`]), the instance id, the queue of work to publish and the
//! bus counters. It knows nothing about key or value types: keys travel as
//! their `Display` strings and the manager hands in an [`L1Sink`] that maps
//! them back.
//!
//! # Channel, log and messages
//!
//! One Redis pub/sub channel per cache, `{key_prefix}{namespace}:bus`, and
//! one change log beside it, the capped stream `{key_prefix}{namespace}:bus:log`
//! (see [`log`]). On a cluster the channel is a sharded one (`SPUBLISH`,
//! `SSUBSCRIBE`) and both names carry one hash tag (see
//! [`channel_and_log`]): classic pub/sub would tie every receiver to the
//! node it subscribed on, while a shard channel lives with the log on the
//! primary of its slot, and the receiver follows that slot through
//! failovers. Every message but heartbeats is appended to the log and
//! published in one script, which adds where it sits in the log. Messages
//! are small JSON objects, keys only, never values:
//!
//! ```text
//! {"id":"1764020000000-0","prev":"1764019999000-3","epoch":"9f…","from":"<instance>","sent_ms":1764020000000,"op":"keys","keys":["1","2"]}
//! {"id":"…","prev":"…","epoch":"…","from":"<instance>","sent_ms":…,"op":"tags","keys":["tools"],"gens":[1764020000123]}
//! {"id":"…","prev":"…","epoch":"…","from":"<instance>","sent_ms":…,"op":"clear"}
//! {"id":"<head>","prev":"<head>","epoch":"…","from":"<instance>","sent_ms":…,"op":"heartbeat"}
//! ```
//!
//! Pub/sub ignores database numbers, so two caches with the same prefix and
//! namespace on different DBs of one server share a channel (harmless: the
//! worst case is extra catch-ups).
//!
//! # Invariants
//!
//! - A receiver applies a message only when it continues the log position it
//!   has reached (`prev` is that position); anything else (a message lost
//!   on the way, a reconnection, a silence of three heartbeats, a heartbeat
//!   naming a later head) makes it read the log from its position and drop
//!   exactly the keys named since. L1 is emptied only when the log no
//!   longer reaches back that far ([`log::Lost`]), on a `clear`, or when
//!   Redis reports a flush.
//! - The receiver subscribes *before* it reads the log, so nothing published
//!   after the read can be missed.
//! - A message Redis did not take is queued again and retried: no change
//!   is lost to an outage, it arrives once Redis answers.
//! - With client tracking on (the default), a key of this
//!   cache changed in Redis by anyone is dropped from L1 too.

pub(crate) mod log;
mod message;
mod publisher;
mod receiver;
mod tracking;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::events::{CacheEvent, ClearReason, Events, InvalidationOrigin};
use crate::remote::RemoteCache;
use crate::stats::{BusClears, BusState, BusStats, BusTracking, DURATION_BUCKETS_MS};
use crate::task::{AbortOnDrop, LogLimiter};
use log::LogConfig;
use message::{Message, Op};
use receiver::Receiver;

/// Most keys in one message; a larger batch becomes several messages.
pub(crate) const MAX_KEYS_PER_MESSAGE: usize = 500;
/// Most keys queued for publishing; past it (a long outage with many
/// writes) the queue becomes one `clear`.
const MAX_QUEUED_KEYS: usize = 100_000;
/// What follows the key prefix in the change log's key.
pub(crate) const LOG_SUFFIX: &str = "bus:log";

/// The bus's channel and change-log key for the cache whose keys start
/// with `key_prefix`.
///
/// On a single server: `{key_prefix}bus` and `{key_prefix}bus:log`. On a
/// cluster (`sharded`) both carry the channel's name as their hash tag,
/// `{{key_prefix}bus}` and `{{key_prefix}bus}:log`: the publish script
/// appends to the log and `SPUBLISH`es in one call, which a cluster allows
/// only within one slot, and the sharded channel then lives on the node
/// that holds the log. (The channel is a prefix of the log key and ends
/// with the tag's `}`, so both hash alike whatever braces the prefix holds.)
pub(crate) fn channel_and_log(key_prefix: &str, sharded: bool) -> (String, String) {
    let channel = if sharded {
        format!("{{{key_prefix}bus}}")
    } else {
        format!("{key_prefix}bus")
    };
    let log = if sharded {
        format!("{channel}:log")
    } else {
        format!("{key_prefix}{LOG_SUFFIX}")
    };
    (channel, log)
}

/// What the receiver does to this instance's L1.
pub(crate) trait L1Sink: Send + Sync + 'static {
    /// Drops these keys (their `Display` strings) from L1; a string that is
    /// not a key of this cache empties L1 (we cannot tell what it named).
    /// `origin`: a live message, or the change log replayed.
    fn remove(&self, keys: &[String], origin: InvalidationOrigin);
    /// Whether [`changed`](Self::changed) wants what Redis now holds at
    /// `key` (a versioned cache holding the key in L1 or writing it), to
    /// tell this instance's own writes from others'. A key it does not
    /// want is judged without a read, or later by [`recheck`](Self::recheck).
    fn wants_stored(&self, key: &str) -> bool;
    /// Keys client tracking reported as changed in Redis, each with what
    /// Redis holds now when [`wants_stored`](Self::wants_stored) said so
    /// (else, or when it could not be read, `None`): drops them from L1
    /// unless the change is this instance's own write. Strings that are
    /// not keys of this cache are ignored (tracking reports every key under
    /// the prefix). Returns the keys to [`recheck`](Self::recheck) once the
    /// fills running now are over.
    fn changed(&self, changes: &[(String, Option<Vec<u8>>)]) -> Vec<String>;
    /// Whether L1 holds `key` now (a recheck then needs what Redis holds).
    fn holds(&self, key: &str) -> bool;
    /// Drops each key whose L1 entry is older than what Redis holds.
    fn recheck(&self, changes: &[(String, Vec<u8>)]);
    /// Raises these tags' generations (tag, generation) to at least the given ones.
    fn tags(&self, tags: &[(String, u64)]);
    /// Empties L1 (and forgets tag generations: they are read again from Redis).
    fn clear(&self, reason: ClearReason);
}

/// The bus of one cache; dropping it stops both tasks.
#[derive(Debug)]
pub(crate) struct Bus {
    shared: Arc<Shared>,
    _publisher: AbortOnDrop,
    _receiver: AbortOnDrop,
}

#[derive(Debug)]
struct Shared {
    instance: String,
    channel: String,
    pending: Mutex<Pending>,
    wake: Notify,
    state: watch::Sender<BusState>,
    tracking: watch::Sender<BusTracking>,
    counters: Counters,
    log: LogLimiter,
    events: Events,
}

/// Work accumulated for the publisher since its last round.
#[derive(Debug, Default)]
struct Pending {
    keys: HashSet<String>,
    /// Tag → highest generation queued.
    tags: HashMap<String, u64>,
    clear: bool,
}

impl Pending {
    fn add_keys(&mut self, keys: impl IntoIterator<Item = String>) {
        if self.clear {
            return;
        }
        self.keys.extend(keys);
        if self.keys.len() > MAX_QUEUED_KEYS {
            self.set_clear();
        }
    }

    fn add_tags(&mut self, tags: impl IntoIterator<Item = (String, u64)>) {
        if self.clear {
            return;
        }
        for (tag, generation) in tags {
            let queued = self.tags.entry(tag).or_default();
            *queued = (*queued).max(generation);
        }
    }

    /// A clear subsumes every key and tag queued before it.
    fn set_clear(&mut self) {
        self.clear = true;
        self.keys.clear();
        self.tags.clear();
    }
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    gaps: AtomicU64,
    publish_errors: AtomicU64,
    subscriptions: AtomicU64,
    silences: AtomicU64,
    replays: AtomicU64,
    keys_replayed: AtomicU64,
    tracked_keys: AtomicU64,
    clear_truncated: AtomicU64,
    clear_restarted: AtomicU64,
    clear_remote: AtomicU64,
    clear_flush: AtomicU64,
    lag_ms_sum: AtomicU64,
    lag_samples: AtomicU64,
    lag_ms_max: AtomicU64,
    lag_buckets: [AtomicU64; DURATION_BUCKETS_MS.len() + 1],
}

/// Settings of one bus.
#[derive(Debug, Clone)]
pub(crate) struct BusConfig {
    /// The pub/sub channel.
    pub(crate) channel: String,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) log: LogConfig,
    /// `{key_prefix}{namespace}:`.
    pub(crate) key_prefix: String,
    /// Whether to ask Redis for client tracking of `key_prefix`.
    pub(crate) tracking: bool,
    /// Where state changes are announced.
    pub(crate) events: Events,
}

impl Bus {
    /// Starts the publisher and the receiver. Returns at once; the receiver
    /// connects in the background (see [`wait_subscribed`](Self::wait_subscribed)).
    pub(crate) fn start(l2: RemoteCache, config: BusConfig, sink: Arc<dyn L1Sink>) -> Self {
        let shared = Arc::new(Shared {
            instance: format!("{:016x}", rand::random::<u64>()),
            channel: config.channel,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            state: watch::Sender::new(BusState::Connecting),
            tracking: watch::Sender::new(BusTracking::Off),
            counters: Counters::default(),
            log: LogLimiter::default(),
            events: config.events,
        });
        let receiver = Receiver {
            shared: Arc::clone(&shared),
            l2: l2.clone(),
            log: config.log.clone(),
            heartbeat: config.heartbeat_interval,
            sink,
            key_prefix: config.key_prefix,
            tracking: config.tracking,
            position: None,
            rechecks: std::collections::VecDeque::new(),
        };
        let receiver = tokio::spawn(receiver.run());
        let publisher = tokio::spawn(publisher::publish(
            Arc::clone(&shared),
            l2,
            config.log,
            config.heartbeat_interval,
        ));
        Self {
            shared,
            _publisher: AbortOnDrop(publisher),
            _receiver: AbortOnDrop(receiver),
        }
    }

    /// The channel this bus uses.
    pub(crate) fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// Queues `keys` for the next message; never waits for Redis.
    pub(crate) fn publish_keys(&self, keys: impl IntoIterator<Item = String>) {
        self.shared.pending().add_keys(keys);
        self.shared.wake.notify_one();
    }

    /// Queues new tag generations for the next message; never waits for Redis.
    pub(crate) fn publish_tags(&self, tags: impl IntoIterator<Item = (String, u64)>) {
        self.shared.pending().add_tags(tags);
        self.shared.wake.notify_one();
    }

    /// Queues a "clear everything" message; never waits for Redis.
    pub(crate) fn publish_clear(&self) {
        self.shared.pending().set_clear();
        self.shared.wake.notify_one();
    }

    /// Whether the receiver is subscribed and in step right now.
    pub(crate) fn state(&self) -> BusState {
        *self.shared.state.borrow()
    }

    /// Waits until subscribed, at most `limit`; returns whether it is.
    pub(crate) async fn wait_subscribed(&self, limit: Duration) -> bool {
        let mut state = self.shared.state.subscribe();
        let subscribed = state.wait_for(|s| *s == BusState::Subscribed);
        matches!(tokio::time::timeout(limit, subscribed).await, Ok(Ok(_)))
    }

    /// A snapshot of the bus counters.
    pub(crate) fn stats(&self) -> BusStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BusStats {
            state: self.state(),
            tracking: self.shared.tracking(),
            published: get(&c.published),
            received: get(&c.received),
            gaps: get(&c.gaps),
            publish_errors: get(&c.publish_errors),
            subscriptions: get(&c.subscriptions),
            silences: get(&c.silences),
            replays: get(&c.replays),
            keys_replayed: get(&c.keys_replayed),
            tracked_keys: get(&c.tracked_keys),
            l1_clears: BusClears {
                log_truncated: get(&c.clear_truncated),
                log_lost: get(&c.clear_restarted),
                remote_clear: get(&c.clear_remote),
                redis_flush: get(&c.clear_flush),
            },
            lag_ms_sum: get(&c.lag_ms_sum),
            lag_samples: get(&c.lag_samples),
            lag_ms_max: get(&c.lag_ms_max),
            lag_buckets: c.lag_buckets.each_ref().map(get),
        }
    }
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything queued since the last call, as the message bodies to send
    /// (`sent_ms` is set when each goes out).
    fn take_messages(&self) -> Vec<Message> {
        let pending = std::mem::take(&mut *self.pending());
        let body = |op, keys, gens| Message::body(&self.instance, 0, op, keys, gens);
        if pending.clear {
            return vec![body(Op::Clear, Vec::new(), Vec::new())];
        }
        let keys: Vec<String> = pending.keys.into_iter().collect();
        let tags: Vec<(String, u64)> = pending.tags.into_iter().collect();
        let key_messages = keys
            .chunks(MAX_KEYS_PER_MESSAGE)
            .map(|chunk| body(Op::Keys, chunk.to_vec(), Vec::new()));
        let tag_messages = tags.chunks(MAX_KEYS_PER_MESSAGE).map(|chunk| {
            let (names, gens) = chunk.iter().cloned().unzip();
            body(Op::Tags, names, gens)
        });
        key_messages.chain(tag_messages).collect()
    }

    /// Puts messages Redis did not take back into the queue.
    fn requeue(&self, messages: impl IntoIterator<Item = Message>) {
        let mut pending = self.pending();
        for message in messages {
            match message.op {
                Op::Keys => pending.add_keys(message.keys),
                Op::Tags => pending.add_tags(message.keys.into_iter().zip(message.gens)),
                Op::Clear => pending.set_clear(),
                Op::Heartbeat => {}
            }
        }
    }

    fn set_state(&self, state: BusState) {
        if self.state.send_replace(state) != state {
            self.events.emit(|| CacheEvent::BusStateChanged { state });
        }
    }

    fn tracking(&self) -> BusTracking {
        *self.tracking.borrow()
    }

    fn set_tracking(&self, tracking: BusTracking) {
        self.tracking.send_replace(tracking);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            instance: "me".into(),
            channel: "c".into(),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            state: watch::Sender::new(BusState::Connecting),
            tracking: watch::Sender::new(BusTracking::Off),
            counters: Counters::default(),
            log: LogLimiter::default(),
            events: Events::new(),
        }
    }

    fn shape(messages: &[Message]) -> Vec<(Op, usize)> {
        messages.iter().map(|m| (m.op, m.keys.len())).collect()
    }

    #[test]
    fn a_cluster_bus_keeps_its_channel_and_log_in_one_slot() {
        assert_eq!(
            channel_and_log("app:items:", false),
            ("app:items:bus".to_owned(), "app:items:bus:log".to_owned())
        );
        let (channel, log) = channel_and_log("app:items:", true);
        assert_eq!(
            (channel.as_str(), log.as_str()),
            ("{app:items:bus}", "{app:items:bus}:log")
        );
        for prefix in ["{app}:items:", "a}b{c:", "x{}:"] {
            let (channel, log) = channel_and_log(prefix, true);
            assert_eq!(
                redis::cluster_routing::Route::with_key(
                    &channel,
                    redis::cluster_routing::SlotAddr::Master
                ),
                redis::cluster_routing::Route::with_key(
                    &log,
                    redis::cluster_routing::SlotAddr::Master
                ),
                "{prefix}"
            );
        }
    }

    #[test]
    fn queued_keys_coalesce_and_split_at_the_cap() {
        let shared = shared();
        shared.pending().add_keys((0..1_200).map(|k| k.to_string()));
        shared.pending().add_keys(["1".to_owned()]);
        let messages = shared.take_messages();
        assert_eq!(
            shape(&messages),
            vec![(Op::Keys, 500), (Op::Keys, 500), (Op::Keys, 200)]
        );
        assert!(shared.take_messages().is_empty());
        shared
            .pending()
            .add_tags([("a".to_owned(), 3), ("a".to_owned(), 2)]);
        let tags = shared.take_messages();
        assert_eq!(
            (tags[0].op, &tags[0].keys, &tags[0].gens),
            (Op::Tags, &vec!["a".to_owned()], &vec![3])
        );
        shared.pending().set_clear();
        shared.pending().add_keys(["2".to_owned()]);
        assert_eq!(shape(&shared.take_messages()), vec![(Op::Clear, 0)]);
    }

    #[test]
    fn unsent_messages_go_back_into_the_queue_and_merge_with_new_work() {
        let shared = shared();
        shared.pending().add_keys(["1".to_owned(), "2".to_owned()]);
        shared.pending().add_tags([("t".to_owned(), 5)]);
        let unsent = shared.take_messages();
        shared.pending().add_keys(["2".to_owned(), "3".to_owned()]);
        shared.requeue(unsent);
        let mut keys: Vec<String> = shared
            .take_messages()
            .into_iter()
            .flat_map(|m| m.keys)
            .collect();
        keys.sort();
        assert_eq!(keys, ["1", "2", "3", "t"]);
    }

    #[test]
    fn a_queue_past_its_bound_becomes_one_clear() {
        let shared = shared();
        shared
            .pending()
            .add_keys((0..=MAX_QUEUED_KEYS).map(|k| k.to_string()));
        assert_eq!(shape(&shared.take_messages()), vec![(Op::Clear, 0)]);
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::message::{Message, Position, Step};

        proptest! {
            #![proptest_config(testkit::fuzz_config())]

            /// Whatever arrives on the channel decodes to a message or is
            /// refused, and a decoded message never moves a position
            /// backwards: it applies only right after it, is skipped when
            /// already applied, or asks for a catch-up.
            #[test]
            fn payloads_decode_or_are_refused(
                payloads in prop::collection::vec(testkit::corpus_input(env!("CARGO_MANIFEST_DIR"), "bus"), 1..8),
            ) {
                let mut position = Position::default();
                for payload in &payloads {
                    let Ok(message) = serde_json::from_slice::<Message>(payload) else {
                        continue;
                    };
                    if let Step::Apply(id) = position.step(&message) {
                        prop_assert!(id >= position.id || position.epoch != message.epoch);
                        position = Position { epoch: message.epoch.clone(), id };
                    }
                }
            }
        }
    }
}
