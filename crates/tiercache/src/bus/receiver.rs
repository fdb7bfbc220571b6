//! The receiver: keeps this instance's L1 in step with the change log.
//!
//! It owns one RESP3 connection ([`topology::listener`]) that is subscribed
//! to the channel and, when enabled, has client tracking on for the cache's
//! key prefix. On a cluster that connection goes to the primary serving the
//! channel's slot at connect time (`SSUBSCRIBE`), and tracking runs on one
//! more connection per primary, feeding the same queue; losing any of them
//! (a node killed, a slot moved away, three silent heartbeats for a hung
//! node) is losing the link, and the next connect asks the cluster again
//! where the slot lives. On it arrive, in order:
//!
//! - bus messages: applied when they continue the log position this
//!   instance has reached; otherwise the log is read from that position
//!   (a *catch-up*) and only the keys named since are dropped;
//! - tracking invalidations: Redis telling us a key under the prefix was
//!   written, deleted, expired or evicted by anyone (another service, a
//!   script, `redis-cli`); the key is dropped from L1. A flush of the
//!   database empties L1. While tracking is on a single server, the cache's
//!   own writes go over this same connection ([`RemoteCache::route_writes`]), so that
//!   `NOLOOP` keeps them from coming back as invalidations of the values
//!   this instance just put in its L1.
//!
//! Whenever the connection is (re)made, or stays silent for three heartbeat
//! intervals (half-dead), the receiver reconnects and catches up. L1 is
//! emptied only when the log no longer reaches back to the position
//! (trimmed, or lost with Redis's data), on a `clear` message, or on a flush.
//!
//! The tracking side (invalidation pushes, rechecks) is in `tracking`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{Cmd, FromRedisValue, PushInfo, PushKind, Value};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::log::{Entry, LogConfig, Lost, READ_BATCH, RawEntry, continuity};
use super::message::{Message, Op, Position, Step};
use super::publisher::now_ms;
use super::tracking::RECHECK_TICK;
use super::{L1Sink, Shared};
use crate::events::{ClearReason, InvalidationOrigin};
use crate::remote::topology::{self, ConnectSettings, RedisTopology};
use crate::remote::{RemoteCache, is_availability_failure};
use crate::stats::{BusState, BusTracking, duration_bucket};

/// Silence, in heartbeat intervals, after which the connection is presumed dead.
const SILENT_BEATS: u32 = 3;
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// Small, so that an instance is back in step soon after Redis is.
const MAX_RETRY: Duration = Duration::from_millis(250);

pub(super) struct Receiver {
    pub(super) shared: Arc<Shared>,
    pub(super) l2: RemoteCache,
    pub(super) log: LogConfig,
    pub(super) heartbeat: Duration,
    pub(super) sink: Arc<dyn L1Sink>,
    /// `{key_prefix}{namespace}:`: what every Redis key of this cache starts with.
    pub(super) key_prefix: String,
    /// Whether to turn client tracking on.
    pub(super) tracking: bool,
    /// How far the log has been applied; `None` before the first sync.
    pub(super) position: Option<Position>,
    /// Keys tracked changes found missing from L1, to look at again when due.
    pub(super) rechecks: VecDeque<(Instant, Vec<String>)>,
}

/// The receiver's connections and what arrives on them.
pub(super) struct Link {
    /// Subscribed to the channel; on a single server also tracking, and
    /// lent for the cache's writes.
    pub(super) conn: MultiplexedConnection,
    /// On a cluster: one tracking connection per primary, kept open.
    _trackers: Vec<MultiplexedConnection>,
    pushes: UnboundedReceiver<PushInfo>,
}

/// How a connection's life ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The connection closed.
    Closed,
    /// Nothing arrived, not even our own heartbeat, for the silence limit.
    Silent,
    /// A catch-up could not read the log.
    LogUnreadable,
}

/// Redis did not answer a log read; the caller reconnects and retries.
struct Unreadable;

impl Receiver {
    pub(super) async fn run(mut self) {
        let mut retry = FIRST_RETRY;
        loop {
            self.shared.set_state(BusState::Connecting);
            let mut link = match self.connect().await {
                Ok(link) => link,
                Err(error) => {
                    tracing::debug!(channel = %self.shared.channel, %error, "bus not subscribed");
                    self.shared.log.warn(|suppressed| {
                        tracing::warn!(channel = %self.shared.channel, %error, suppressed, "bus not subscribed; retrying");
                    });
                    // The cluster client may still route the channel's slot
                    // to a primary that hangs: have it read the slot map again.
                    self.l2.reroute();
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                    continue;
                }
            };
            self.shared
                .counters
                .subscriptions
                .fetch_add(1, Ordering::Relaxed);
            // Writes go where they are tracked with NOLOOP: a single
            // server's one connection (a cluster routes each key itself).
            if self.shared.tracking() == BusTracking::On && !self.l2.topology().is_cluster() {
                self.l2.route_writes(Some(link.conn.clone()));
            }
            if self.sync(&link).await.is_err() {
                self.l2.route_writes(None);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
            retry = FIRST_RETRY;
            self.shared.set_state(BusState::Subscribed);
            tracing::info!(channel = %self.shared.channel, "bus subscribed and in step with the change log");
            let ended = self.listen(&mut link).await;
            self.l2.route_writes(None);
            self.shared.set_state(BusState::Connecting);
            if ended == Ended::Silent {
                self.shared
                    .counters
                    .silences
                    .fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(channel = %self.shared.channel, reason = ?ended, "bus connection lost; reconnecting and catching up");
        }
    }

    /// Connects, subscribes and turns tracking on (on every primary of a
    /// cluster, each over a connection of its own feeding the same pushes).
    async fn connect(&self) -> Result<Link, String> {
        let settings = ConnectSettings {
            response_timeout: self.l2.timeout(),
            connect_timeout: self.l2.connect_timeout(),
        };
        let (sender, pushes) = unbounded_channel();
        let topology = self.l2.topology();
        let attempt = async {
            let mut conn = self.subscribe(settings, &sender).await?;
            let mut trackers = Vec::new();
            if self.tracking {
                let tracked = if topology.is_cluster() {
                    let primaries = self.l2.primaries().await.ok_or_else(|| {
                        redis::RedisError::from((redis::ErrorKind::Io, "cluster primaries unknown"))
                    })?;
                    let mut tracked = Ok(());
                    for node in &primaries {
                        let mut tracker =
                            topology::listener(topology, Some(node), settings, sender.clone())
                                .await?;
                        tracked = tracked.and(self.track(&mut tracker).await);
                        trackers.push(tracker);
                    }
                    tracked
                } else {
                    self.track(&mut conn).await
                };
                match tracked {
                    Ok(()) => self.shared.set_tracking(BusTracking::On),
                    // Lost on the way: try the whole connection again.
                    Err(error) if is_availability_failure(&error) => return Err(error),
                    Err(error) => {
                        self.shared.set_tracking(BusTracking::Unavailable);
                        self.shared.log.warn(|suppressed| {
                            tracing::warn!(%error, suppressed, "client tracking refused; writes made outside this library reach L1 only by its TTL");
                        });
                    }
                }
            }
            Ok::<_, redis::RedisError>(Link {
                conn,
                _trackers: trackers,
                pushes,
            })
        };
        match tokio::time::timeout(self.l2.connect_timeout(), attempt).await {
            Ok(Ok(link)) => Ok(link),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("connection attempt timed out".to_owned()),
        }
    }

    /// A connection subscribed to the channel: with `SUBSCRIBE` on a single
    /// server; on a cluster with `SSUBSCRIBE` on the primary that serves the
    /// channel's slot now, so that the bus depends on no node but that one,
    /// and follows the slot to its new primary after a failover.
    async fn subscribe(
        &self,
        settings: ConnectSettings,
        sender: &UnboundedSender<PushInfo>,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let topology = self.l2.topology();
        let channel = &self.shared.channel;
        if !topology.is_cluster() {
            let mut conn = topology::listener(topology, None, settings, sender.clone()).await?;
            conn.subscribe(channel).await?;
            return Ok(conn);
        }
        let primary = self.l2.slot_primary(channel).await.ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "the primary serving the bus channel's slot is unknown",
            ))
        })?;
        let mut conn =
            topology::listener(topology, Some(&primary), settings, sender.clone()).await?;
        let subscribed = redis::cmd("SSUBSCRIBE")
            .arg(channel)
            .query_async::<Value>(&mut conn)
            .await;
        match subscribed {
            Ok(_) => Ok(conn),
            Err(error) if is_availability_failure(&error) => Err(error),
            // Redis before 7.0 has no sharded pub/sub: say so (a classic
            // subscription would tie the bus to one node).
            Err(error) => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the Redis Cluster refused SSUBSCRIBE; the bus needs sharded pub/sub (Redis 7.0 or later)",
                error.to_string(),
            ))),
        }
    }

    /// Brings L1 in step with the log after a (re)connection.
    async fn sync(&mut self, link: &Link) -> Result<(), Unreadable> {
        match self.position.clone() {
            Some(position) => self.catch_up(link, position).await,
            None => {
                // The first time: whatever L1 holds was loaded before we
                // listened. Read the head first, so that no entry after it
                // can be hidden by the clear.
                let head = self.head(link).await?;
                self.sink.clear(ClearReason::FirstSubscription);
                self.position = Some(head.map(|entry| entry.position()).unwrap_or_default());
                Ok(())
            }
        }
    }

    /// Applies everything that arrives until the connection ends.
    async fn listen(&mut self, link: &mut Link) -> Ended {
        let silence = self.heartbeat * SILENT_BEATS;
        let mut last_heard = Instant::now();
        // One timer for the whole connection, not one per push: it checks
        // for silence every heartbeat and runs the rechecks that are due.
        let mut ticker = tokio::time::interval(self.heartbeat.min(RECHECK_TICK));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let push = tokio::select! {
                push = link.pushes.recv() => push,
                _ = ticker.tick() => {
                    if last_heard.elapsed() > silence {
                        return Ended::Silent;
                    }
                    self.run_due_rechecks().await;
                    continue;
                }
            };
            let Some(push) = push else {
                return Ended::Closed;
            };
            last_heard = Instant::now();
            match push.kind {
                PushKind::Disconnection => return Ended::Closed,
                // The server dropped the subscription (on a cluster: the
                // channel's slot moved to another primary).
                PushKind::Unsubscribe | PushKind::SUnsubscribe => return Ended::Closed,
                PushKind::Message | PushKind::SMessage => {
                    let Some(Value::BulkString(payload)) = push.data.get(1) else {
                        continue;
                    };
                    if self.on_message(link, payload).await.is_err() {
                        return Ended::LogUnreadable;
                    }
                }
                PushKind::Invalidate => self.on_invalidate(link, &push.data).await,
                _ => {}
            }
        }
    }

    async fn on_message(&mut self, link: &Link, payload: &[u8]) -> Result<(), Unreadable> {
        let message: Message = match serde_json::from_slice(payload) {
            Ok(message) => message,
            Err(error) => {
                self.shared.log.warn(|suppressed| {
                    tracing::warn!(channel = %self.shared.channel, %error, suppressed, "undecodable bus message ignored");
                });
                return Ok(());
            }
        };
        let own = message.from == self.shared.instance;
        if !own {
            self.record_received(&message);
        }
        let position = self.position.clone().unwrap_or_default();
        match position.step(&message) {
            Step::Apply(id) => {
                if !own {
                    self.apply(&message, InvalidationOrigin::Bus);
                }
                self.position = Some(Position {
                    epoch: message.epoch,
                    id,
                });
                Ok(())
            }
            Step::Skip => Ok(()),
            Step::CatchUp => {
                self.shared.counters.gaps.fetch_add(1, Ordering::Relaxed);
                self.catch_up(link, position).await
            }
        }
    }

    /// Reads the log from `position` and applies every entry since; clears
    /// L1 when the log no longer reaches back that far.
    async fn catch_up(&mut self, link: &Link, position: Position) -> Result<(), Unreadable> {
        let mut after = position.id;
        let mut first = true;
        loop {
            let raw: Vec<RawEntry> = self.query(link, self.log.after(after)).await?;
            let full = raw.len() >= READ_BATCH;
            let entries: Vec<Entry> = raw.into_iter().filter_map(Entry::decode).collect();
            if first {
                first = false;
                let head = if entries.is_empty() {
                    self.head(link).await?
                } else {
                    None
                };
                if let Err(lost) = continuity(&position, entries.first(), head.as_ref()) {
                    return self.start_over(link, lost).await;
                }
                self.shared.counters.replays.fetch_add(1, Ordering::Relaxed);
            }
            for entry in &entries {
                if let Some(message) = &entry.message
                    && message.from != self.shared.instance
                {
                    if message.op == Op::Keys {
                        self.shared
                            .counters
                            .keys_replayed
                            .fetch_add(message.keys.len() as u64, Ordering::Relaxed);
                    }
                    self.apply(message, InvalidationOrigin::Replay);
                }
                self.position = Some(entry.position());
                after = entry.id;
            }
            if !full {
                tracing::info!(channel = %self.shared.channel, "bus caught up from the change log");
                return Ok(());
            }
        }
    }

    /// The log cannot be replayed: empty L1 and continue from its head.
    async fn start_over(&mut self, link: &Link, lost: Lost) -> Result<(), Unreadable> {
        let head = self.head(link).await?;
        let (counter, reason) = match lost {
            Lost::Truncated => (
                &self.shared.counters.clear_truncated,
                ClearReason::LogTruncated,
            ),
            Lost::Restarted => (&self.shared.counters.clear_restarted, ClearReason::LogLost),
        };
        self.sink.clear(reason);
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(channel = %self.shared.channel, reason = ?lost, "change log does not reach back to this instance's position; L1 cleared");
        self.position = Some(head.map(|entry| entry.position()).unwrap_or_default());
        Ok(())
    }

    /// The log's last entry, if any.
    async fn head(&self, link: &Link) -> Result<Option<Entry>, Unreadable> {
        let raw: Vec<RawEntry> = self.query(link, self.log.head()).await?;
        Ok(raw.into_iter().next().and_then(Entry::decode))
    }

    /// A log read: on the receiver's own connection for a single server
    /// (it works whenever the subscription does, breaker or not), routed by
    /// the cluster client on a cluster (the log may live on another node).
    async fn query<T: FromRedisValue>(&self, link: &Link, cmd: Cmd) -> Result<T, Unreadable> {
        let read = match self.l2.topology() {
            RedisTopology::Single(_) => cmd.query_async(&mut link.conn.clone()).await.ok(),
            RedisTopology::Cluster(_) => self.l2.background_command("XRANGE bus log", cmd).await,
        };
        read.ok_or_else(|| {
            self.shared.log.warn(|suppressed| {
                tracing::warn!(channel = %self.shared.channel, suppressed, "bus change log unreadable; reconnecting");
            });
            Unreadable
        })
    }

    fn record_received(&self, message: &Message) {
        let counters = &self.shared.counters;
        counters.received.fetch_add(1, Ordering::Relaxed);
        if message.sent_ms > 0 {
            let lag = now_ms().saturating_sub(message.sent_ms);
            counters.lag_ms_sum.fetch_add(lag, Ordering::Relaxed);
            counters.lag_samples.fetch_add(1, Ordering::Relaxed);
            counters.lag_ms_max.fetch_max(lag, Ordering::Relaxed);
            counters.lag_buckets[duration_bucket(lag)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Applies another instance's message to L1 (`origin`: live or replayed).
    fn apply(&self, message: &Message, origin: InvalidationOrigin) {
        match message.op {
            Op::Keys => self.sink.remove(&message.keys, origin),
            Op::Tags => {
                let tags: Vec<(String, u64)> = message
                    .keys
                    .iter()
                    .cloned()
                    .zip(message.gens.iter().copied())
                    .collect();
                self.sink.tags(&tags);
            }
            Op::Clear => {
                self.sink.clear(ClearReason::RemoteClear);
                self.shared
                    .counters
                    .clear_remote
                    .fetch_add(1, Ordering::Relaxed);
            }
            Op::Heartbeat => {}
        }
    }
}
