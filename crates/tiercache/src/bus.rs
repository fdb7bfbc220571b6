//! The invalidation bus: tells the other instances sharing a Redis to drop
//! keys from their L1.
//!
//! Owns the two background tasks of one cache (publisher and receiver), the
//! instance id, the sequence numbers and the bus counters. It knows nothing
//! about key or value types: keys travel as their `Display` strings and the
//! manager hands in an [`L1Sink`] that maps them back.
//!
//! # Channel and messages
//!
//! One Redis pub/sub channel per cache, `{key_prefix}{namespace}:bus`.
//! Pub/sub ignores database numbers, so two caches with the same prefix and
//! namespace on different DBs of one server share a channel (harmless: the
//! worst case is extra L1 drops). Messages are small JSON objects, keys
//! only, never values:
//!
//! ```text
//! {"from":"<instance>","seq":7,"sent_ms":1764020000000,"op":"keys","keys":["1","2"]}
//! {"from":"<instance>","seq":8,"sent_ms":1764020000000,"op":"tags","keys":["tools"],"gens":[1764020000123]}
//! {"from":"<instance>","seq":8,"sent_ms":1764020000000,"op":"clear"}
//! {"from":"<instance>","seq":9,"sent_ms":1764020000000,"op":"heartbeat"}
//! ```
//!
//! # Invariants
//!
//! - Every publish *attempt* takes the next sequence number, so a message
//!   lost anywhere (a failed `PUBLISH`, a dropped subscription) shows up at
//!   every receiver that already knows the sender as a gap, and a gap
//!   clears that receiver's L1.
//! - The receiver subscribes *before* it clears L1 and reports `Subscribed`,
//!   so no message published after the clear can be missed silently.
//! - Own messages are received and ignored; they still prove the
//!   subscription alive. Silence for three heartbeat intervals means a
//!   half-dead connection: L1 is cleared and the connection rebuilt.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::remote::topology::{self, RedisTopology};
use crate::remote::{AbortOnDrop, LogLimiter, RemoteCache};
use crate::stats::{BusClears, BusState, BusStats, DURATION_BUCKETS_MS, duration_bucket};

/// Most keys in one message; a larger batch becomes several messages.
pub(crate) const MAX_KEYS_PER_MESSAGE: usize = 500;
/// Silence, in heartbeat intervals, after which a subscription is presumed dead.
const SILENT_BEATS: u32 = 3;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// What the receiver does to this instance's L1.
pub(crate) trait L1Sink: Send + Sync + 'static {
    /// Drops these keys (their `Display` strings) from L1.
    fn remove(&self, keys: &[String]);
    /// Raises these tags' generations (tag, generation) to at least the given ones.
    fn tags(&self, tags: &[(String, u64)]);
    /// Empties L1 (and forgets tag generations: they are read again from Redis).
    fn clear(&self);
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
    counters: Counters,
    log: LogLimiter,
}

/// Work accumulated for the publisher since its last round.
#[derive(Debug, Default)]
struct Pending {
    keys: HashSet<String>,
    /// Tag → highest generation queued.
    tags: HashMap<String, u64>,
    clear: bool,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    gaps: AtomicU64,
    publish_errors: AtomicU64,
    clear_gap: AtomicU64,
    clear_resubscribe: AtomicU64,
    clear_heartbeat: AtomicU64,
    clear_remote: AtomicU64,
    lag_ms_sum: AtomicU64,
    lag_samples: AtomicU64,
    lag_ms_max: AtomicU64,
    lag_buckets: [AtomicU64; DURATION_BUCKETS_MS.len() + 1],
}

/// One bus message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Message {
    from: String,
    seq: u64,
    /// The publisher's wall clock, in ms since the Unix epoch.
    #[serde(default)]
    sent_ms: u64,
    op: Op,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<String>,
    /// For `tags`: the generation of each tag in `keys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    gens: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Keys,
    Tags,
    Clear,
    Heartbeat,
}

/// Settings of one bus.
#[derive(Debug, Clone)]
pub(crate) struct BusConfig {
    /// The pub/sub channel.
    pub(crate) channel: String,
    pub(crate) heartbeat_interval: Duration,
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
            counters: Counters::default(),
            log: LogLimiter::default(),
        });
        let receiver = tokio::spawn(receive(
            Arc::clone(&shared),
            l2.topology().clone(),
            l2.connect_timeout(),
            config.heartbeat_interval,
            sink,
        ));
        let publisher = tokio::spawn(publish(Arc::clone(&shared), l2, config.heartbeat_interval));
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
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !pending.clear {
                pending.keys.extend(keys);
            }
        }
        self.shared.wake.notify_one();
    }

    /// Queues new tag generations for the next message; never waits for Redis.
    pub(crate) fn publish_tags(&self, tags: impl IntoIterator<Item = (String, u64)>) {
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !pending.clear {
                for (tag, generation) in tags {
                    let queued = pending.tags.entry(tag).or_default();
                    *queued = (*queued).max(generation);
                }
            }
        }
        self.shared.wake.notify_one();
    }

    /// Queues a "clear everything" message; never waits for Redis.
    pub(crate) fn publish_clear(&self) {
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // A clear subsumes every key queued before it.
            pending.clear = true;
            pending.keys.clear();
            pending.tags.clear();
        }
        self.shared.wake.notify_one();
    }

    /// Whether the receiver is subscribed right now.
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
            published: get(&c.published),
            received: get(&c.received),
            gaps: get(&c.gaps),
            publish_errors: get(&c.publish_errors),
            l1_clears: BusClears {
                gap: get(&c.clear_gap),
                resubscribe: get(&c.clear_resubscribe),
                heartbeat_timeout: get(&c.clear_heartbeat),
                remote_clear: get(&c.clear_remote),
            },
            lag_ms_sum: get(&c.lag_ms_sum),
            lag_samples: get(&c.lag_samples),
            lag_ms_max: get(&c.lag_ms_max),
            lag_buckets: c.lag_buckets.each_ref().map(get),
        }
    }
}

impl Shared {
    /// Everything queued since the last call, as the messages to send.
    fn take_messages(&self) -> Vec<(Op, Vec<String>, Vec<u64>)> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.clear {
            return vec![(Op::Clear, Vec::new(), Vec::new())];
        }
        let keys: Vec<String> = pending.keys.into_iter().collect();
        let tags: Vec<(String, u64)> = pending.tags.into_iter().collect();
        let key_messages = keys
            .chunks(MAX_KEYS_PER_MESSAGE)
            .map(|chunk| (Op::Keys, chunk.to_vec(), Vec::new()));
        let tag_messages = tags.chunks(MAX_KEYS_PER_MESSAGE).map(|chunk| {
            let (names, gens) = chunk.iter().cloned().unzip();
            (Op::Tags, names, gens)
        });
        key_messages.chain(tag_messages).collect()
    }

    fn set_state(&self, state: BusState) {
        self.state.send_replace(state);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The publisher: drains the queue into as few messages as possible.
///
/// Whatever is queued while a `PUBLISH` is in flight goes out in the next
/// message, so a burst of writes costs a handful of messages, not one per
/// key. A heartbeat goes out every interval in which nothing else did.
async fn publish(shared: Arc<Shared>, l2: RemoteCache, heartbeat: Duration) {
    let mut seq = 0u64;
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let beat = tokio::select! {
            () = shared.wake.notified() => false,
            _ = ticker.tick() => true,
        };
        let mut messages = shared.take_messages();
        if beat && messages.is_empty() {
            messages.push((Op::Heartbeat, Vec::new(), Vec::new()));
        }
        for (op, keys, gens) in messages {
            seq += 1;
            let message = Message {
                from: shared.instance.clone(),
                seq,
                sent_ms: now_ms(),
                op,
                keys,
                gens,
            };
            let payload = serde_json::to_vec(&message)
                .expect("a message of strings and integers always serializes");
            if l2.publish(&shared.channel, &payload).await {
                shared.counters.published.fetch_add(1, Ordering::Relaxed);
            } else {
                shared
                    .counters
                    .publish_errors
                    .fetch_add(1, Ordering::Relaxed);
                shared.log.warn(|suppressed| {
                    tracing::warn!(channel = %shared.channel, suppressed, "bus publish failed; other instances detect the gap or expire by L1 TTL");
                });
            }
        }
    }
}

/// How a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The connection closed.
    Closed,
    /// Nothing arrived, not even our own heartbeat, for the silence limit.
    Silent,
}

/// Feeds every payload of `stream` to `on`, until it ends or stays silent
/// for `silence`.
async fn listen<S>(mut stream: S, silence: Duration, mut on: impl FnMut(&[u8])) -> Ended
where
    S: Stream<Item = Vec<u8>> + Unpin,
{
    loop {
        match tokio::time::timeout(silence, stream.next()).await {
            Err(_) => return Ended::Silent,
            Ok(None) => return Ended::Closed,
            Ok(Some(payload)) => on(&payload),
        }
    }
}

/// The receiver: (re)subscribes, clears L1 each time, applies messages.
async fn receive(
    shared: Arc<Shared>,
    topology: RedisTopology,
    connect_timeout: Duration,
    heartbeat: Duration,
    sink: Arc<dyn L1Sink>,
) {
    let mut retry = FIRST_RETRY;
    loop {
        shared.set_state(BusState::Connecting);
        let attempt = async {
            let mut pubsub = topology::pubsub(&topology).await?;
            pubsub.subscribe(&shared.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(connect_timeout, attempt).await {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "subscription attempt timed out".to_owned(),
                };
                shared.log.warn(|suppressed| {
                    tracing::warn!(channel = %shared.channel, %error, suppressed, "bus not subscribed; retrying");
                });
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
        };
        retry = FIRST_RETRY;
        // Messages may have been missed while unsubscribed; sequence
        // numbers seen before say nothing about the new subscription.
        sink.clear();
        shared
            .counters
            .clear_resubscribe
            .fetch_add(1, Ordering::Relaxed);
        shared.set_state(BusState::Subscribed);
        tracing::info!(channel = %shared.channel, "bus subscribed; L1 cleared");
        let mut senders = Senders::new(shared.instance.clone());
        let stream = pubsub
            .into_on_message()
            .map(|msg| msg.get_payload_bytes().to_vec());
        let silence = heartbeat * SILENT_BEATS;
        let ended = listen(stream, silence, |payload| {
            apply(&shared, &mut senders, sink.as_ref(), payload);
        })
        .await;
        shared.set_state(BusState::Connecting);
        if ended == Ended::Silent {
            sink.clear();
            shared
                .counters
                .clear_heartbeat
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(channel = %shared.channel, reason = ?ended, "bus subscription lost; resubscribing");
    }
}

/// Applies one received payload to L1 and the counters.
fn apply(shared: &Shared, senders: &mut Senders, sink: &dyn L1Sink, payload: &[u8]) {
    let message: Message = match serde_json::from_slice(payload) {
        Ok(message) => message,
        Err(error) => {
            shared.log.warn(|suppressed| {
                tracing::warn!(channel = %shared.channel, %error, suppressed, "undecodable bus message ignored");
            });
            return;
        }
    };
    let counters = &shared.counters;
    let verdict = senders.check(&message);
    if verdict == Verdict::Own {
        return;
    }
    counters.received.fetch_add(1, Ordering::Relaxed);
    if message.sent_ms > 0 {
        let lag = now_ms().saturating_sub(message.sent_ms);
        counters.lag_ms_sum.fetch_add(lag, Ordering::Relaxed);
        counters.lag_samples.fetch_add(1, Ordering::Relaxed);
        counters.lag_ms_max.fetch_max(lag, Ordering::Relaxed);
        counters.lag_buckets[duration_bucket(lag)].fetch_add(1, Ordering::Relaxed);
    }
    if verdict == Verdict::Gap {
        // Everything the missed messages named is dropped with the rest.
        sink.clear();
        counters.gaps.fetch_add(1, Ordering::Relaxed);
        counters.clear_gap.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(channel = %shared.channel, from = %message.from, "bus gap; L1 cleared");
        return;
    }
    match message.op {
        Op::Keys => sink.remove(&message.keys),
        Op::Tags => {
            let tags: Vec<(String, u64)> = message.keys.into_iter().zip(message.gens).collect();
            sink.tags(&tags);
        }
        Op::Clear => {
            sink.clear();
            counters.clear_remote.fetch_add(1, Ordering::Relaxed);
        }
        Op::Heartbeat => {}
    }
}

/// What a message means given the senders seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Ours: ignore.
    Own,
    /// The next in sequence, or the first from this sender.
    InOrder,
    /// Messages from this sender were missed (or repeated).
    Gap,
}

/// The last sequence number of every other sender on this subscription.
#[derive(Debug)]
struct Senders {
    me: String,
    last: HashMap<String, u64>,
}

impl Senders {
    fn new(me: String) -> Self {
        Self {
            me,
            last: HashMap::new(),
        }
    }

    fn check(&mut self, message: &Message) -> Verdict {
        if message.from == self.me {
            return Verdict::Own;
        }
        match self.last.insert(message.from.clone(), message.seq) {
            Some(last) if message.seq != last.wrapping_add(1) => Verdict::Gap,
            _ => Verdict::InOrder,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(from: &str, seq: u64) -> Message {
        Message {
            from: from.to_owned(),
            seq,
            sent_ms: 0,
            op: Op::Heartbeat,
            keys: Vec::new(),
            gens: Vec::new(),
        }
    }

    #[test]
    fn messages_are_small_json_with_keys_only_when_present() {
        let keys = Message {
            from: "ab".into(),
            seq: 3,
            sent_ms: 10,
            op: Op::Keys,
            keys: vec!["1".into(), "2".into()],
            gens: Vec::new(),
        };
        assert_eq!(
            serde_json::to_string(&keys).unwrap(),
            r#"{"from":"ab","seq":3,"sent_ms":10,"op":"keys","keys":["1","2"]}"#
        );
        let clear = Message {
            op: Op::Clear,
            ..message("ab", 4)
        };
        assert_eq!(
            serde_json::to_string(&clear).unwrap(),
            r#"{"from":"ab","seq":4,"sent_ms":0,"op":"clear"}"#
        );
        let tags = Message {
            op: Op::Tags,
            keys: vec!["tools".into()],
            gens: vec![7],
            ..message("ab", 5)
        };
        assert_eq!(
            serde_json::to_string(&tags).unwrap(),
            r#"{"from":"ab","seq":5,"sent_ms":0,"op":"tags","keys":["tools"],"gens":[7]}"#
        );
        let parsed: Message =
            serde_json::from_str(r#"{"from":"x","seq":1,"op":"heartbeat"}"#).unwrap();
        assert_eq!(parsed, message("x", 1));
    }

    #[test]
    fn sequence_gaps_are_detected_per_sender_and_own_messages_ignored() {
        let mut senders = Senders::new("me".into());
        assert_eq!(senders.check(&message("me", 9)), Verdict::Own);
        assert_eq!(senders.check(&message("a", 5)), Verdict::InOrder);
        assert_eq!(senders.check(&message("a", 6)), Verdict::InOrder);
        assert_eq!(senders.check(&message("b", 1)), Verdict::InOrder);
        assert_eq!(senders.check(&message("a", 8)), Verdict::Gap);
        assert_eq!(senders.check(&message("a", 9)), Verdict::InOrder);
        assert_eq!(senders.check(&message("a", 9)), Verdict::Gap);
        assert_eq!(senders.check(&message("b", 2)), Verdict::InOrder);
    }

    fn channel_stream() -> (
        tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
        impl Stream<Item = Vec<u8>> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        (tx, Box::pin(stream))
    }

    #[tokio::test]
    async fn silence_longer_than_the_limit_ends_a_subscription() {
        let (tx, stream) = channel_stream();
        for _ in 0..5 {
            tx.send(b"beat".to_vec()).unwrap();
        }
        let mut heard = 0;
        // The sender stays alive, so only the silence can end this.
        let ended = listen(stream, Duration::from_millis(50), |_| heard += 1).await;
        assert_eq!((ended, heard), (Ended::Silent, 5));
        drop(tx);
    }

    #[tokio::test]
    async fn a_closed_stream_ends_a_subscription() {
        let (tx, stream) = channel_stream();
        tx.send(b"one".to_vec()).unwrap();
        drop(tx);
        let mut heard = 0;
        let ended = listen(stream, Duration::from_secs(3600), |_| heard += 1).await;
        assert_eq!((ended, heard), (Ended::Closed, 1));
    }

    #[test]
    fn queued_keys_coalesce_and_split_at_the_cap() {
        let shared = Shared {
            instance: "me".into(),
            channel: "c".into(),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            state: watch::Sender::new(BusState::Connecting),
            counters: Counters::default(),
            log: LogLimiter::default(),
        };
        {
            let mut pending = shared.pending.lock().unwrap();
            pending.keys.extend((0..1_200).map(|k| k.to_string()));
            pending.keys.insert("1".into());
        }
        let messages = shared.take_messages();
        let sizes: Vec<usize> = messages.iter().map(|(_, keys, _)| keys.len()).collect();
        assert_eq!(sizes, vec![500, 500, 200]);
        assert!(shared.take_messages().is_empty());
        {
            let mut pending = shared.pending.lock().unwrap();
            pending.tags.insert("a".into(), 3);
        }
        assert_eq!(
            shared.take_messages(),
            vec![(Op::Tags, vec!["a".to_owned()], vec![3])]
        );
        shared.pending.lock().unwrap().clear = true;
        assert_eq!(
            shared.take_messages(),
            vec![(Op::Clear, Vec::new(), Vec::new())]
        );
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(testkit::fuzz_config())]

            /// Whatever arrives on the channel decodes to a message or is
            /// refused; a message from another sender is in order exactly
            /// when its sequence follows the last one seen from it.
            #[test]
            fn payloads_decode_or_are_refused(
                payloads in prop::collection::vec(testkit::corpus_input(env!("CARGO_MANIFEST_DIR"), "bus"), 1..8),
            ) {
                let mut senders = Senders::new("me".to_owned());
                let mut last: HashMap<String, u64> = HashMap::new();
                for payload in &payloads {
                    let Ok(message) = serde_json::from_slice::<Message>(payload) else {
                        continue;
                    };
                    let expected = if message.from == "me" {
                        Verdict::Own
                    } else {
                        match last.insert(message.from.clone(), message.seq) {
                            Some(seen) if message.seq != seen.wrapping_add(1) => Verdict::Gap,
                            _ => Verdict::InOrder,
                        }
                    };
                    prop_assert_eq!(senders.check(&message), expected);
                    // What `apply` does with a tags message: pairs, extra keys
                    // or generations dropped.
                    let pairs = message.keys.iter().zip(&message.gens).count();
                    prop_assert_eq!(pairs, message.keys.len().min(message.gens.len()));
                }
            }
        }
    }
}
