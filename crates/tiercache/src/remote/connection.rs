//! How one Redis call runs: on which connection (the shared one, or the
//! connection the bus lent for writes), under the circuit breaker and the
//! timeout, with failures told apart (Redis unavailable, or Redis refusing
//! the command), counted and logged; and the supervisor that connects,
//! probes and rebuilds in the background.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use redis::RedisError;
use tokio::sync::Notify;
use tracing::Instrument;

use super::RemoteConfig;
use super::topology::{Conn, ConnectSettings};
use crate::breaker::{CircuitBreaker, Permit};
use crate::events::CacheEvent;
use crate::stats::L2State;
use crate::task::LogLimiter;

/// Failed probes after which the supervisor rebuilds the connection.
const REBUILD_AFTER: u32 = 3;
/// Least time between two rebuilds of a cluster connection for stale
/// routes (see [`Inner::reroute`]).
const REROUTE_GAP: Duration = Duration::from_millis(500);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// The state every handle of one L2 shares.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) config: RemoteConfig,
    /// `None` until the first connection succeeds.
    pub(super) conn: RwLock<Option<Conn>>,
    /// Where writes go when set: the bus receiver's connection (see
    /// [`RemoteCache::route_writes`]).
    pub(super) writer: RwLock<Option<Lent>>,
    /// Numbers the connections lent, so that a failed write takes back only
    /// the one it used.
    pub(super) lends: AtomicU64,
    pub(super) breaker: CircuitBreaker,
    /// Tells the supervisor that a cluster call timed out (see
    /// [`reroute`](Self::reroute)).
    pub(super) reroute: Arc<Notify>,
    pub(super) errors: AtomicU64,
    pub(super) log: LogLimiter,
    /// The state last announced (see [`note_state`](Self::note_state)).
    pub(super) up: AtomicBool,
}

/// The bus receiver's connection, lent for writes.
#[derive(Debug, Clone)]
pub(super) struct Lent {
    pub(super) number: u64,
    pub(super) conn: Conn,
}

/// How a connection attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Attempt {
    Connected,
    /// Redis unreachable (or too slow): retried.
    Failed,
    /// The URL's topology is not the server's (a cluster node named as one
    /// server, or the reverse): refused at start, as retrying cannot help.
    Misconfigured(String),
}

/// A failed call: whether it failed for want of Redis (rather than Redis
/// refusing the command).
struct Unavailable(bool);

/// Whether `error` says Redis is unavailable (as opposed to Redis having
/// answered and rejected this particular command).
pub(crate) fn is_availability_failure(error: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match error.kind() {
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ),
        // Redis answered: with an error code redis-rs has no name for
        // (WRONGTYPE, OOM, NOAUTH…), or with a reply of an unexpected type.
        ErrorKind::Extension | ErrorKind::Parse | ErrorKind::UnexpectedReturnType => false,
        // I/O, cluster routing, authentication, client-side failures of the
        // connection: when in doubt, protect the caller from waiting.
        _ => true,
    }
}

impl Inner {
    pub(super) fn current_conn(&self) -> Option<Conn> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn connect_settings(&self) -> ConnectSettings {
        ConnectSettings {
            response_timeout: self.config.timeout,
            connect_timeout: self.config.connect_timeout,
        }
    }

    /// One bounded connection attempt; on success installs the connection
    /// and closes the breaker.
    pub(super) async fn try_establish(&self) -> Attempt {
        let attempt = Conn::establish(&self.config.topology, self.connect_settings());
        let error = match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(Ok(conn)) => {
                *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                self.breaker.on_success();
                self.note_state();
                tracing::info!(redis = %self.config.topology, "L2 connected");
                return Attempt::Connected;
            }
            Ok(Err(e)) if e.kind() == redis::ErrorKind::InvalidClientConfig => {
                let error = e.to_string();
                tracing::error!(redis = %self.config.topology, %error, "L2 misconfigured");
                return Attempt::Misconfigured(error);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connection attempt timed out".to_owned(),
        };
        self.log.warn(|suppressed| {
            tracing::warn!(redis = %self.config.topology, %error, suppressed, "L2 unavailable; serving without it");
        });
        Attempt::Failed
    }

    /// Runs one Redis call under the breaker and the timeout.
    pub(super) async fn call<T, F, Fut>(&self, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if self.breaker.permit() == Permit::Refused {
            return None;
        }
        let conn = self.current_conn()?;
        self.run(what, conn, f).await
    }

    /// Like [`call`](Self::call), over the connection writes go to.
    pub(super) async fn call_write<T, F, Fut>(&self, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if self.breaker.permit() == Permit::Refused {
            return None;
        }
        self.on_writer(what, f).await
    }

    /// Runs one call on the connection writes go to: the lent one, else the
    /// shared one. A lent connection that failed for want of Redis (closed,
    /// timed out) is taken back, so that the writes after it use the shared
    /// connection until the bus lends a new one.
    pub(super) async fn on_writer<T, F, Fut>(&self, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let lent = self
            .writer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(lent) = lent else {
            let conn = self.current_conn()?;
            return self.run(what, conn, f).await;
        };
        match self.attempt(what, lent.conn, f).await {
            Ok(value) => Some(value),
            Err(Unavailable(unavailable)) => {
                if unavailable {
                    let mut writer = self.writer.write().unwrap_or_else(|e| e.into_inner());
                    if writer
                        .as_ref()
                        .is_some_and(|held| held.number == lent.number)
                    {
                        *writer = None;
                    }
                }
                None
            }
        }
    }

    /// Runs one Redis call on `conn` under the timeout, the breaker having
    /// allowed it.
    async fn run<T, F, Fut>(&self, what: &'static str, conn: Conn, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.attempt(what, conn, f).await.ok()
    }

    /// [`run`](Self::run), telling a failure for want of Redis from a refusal.
    async fn attempt<T, F, Fut>(
        &self,
        what: &'static str,
        conn: Conn,
        f: F,
    ) -> Result<T, Unavailable>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        // A debug span per Redis call (`RUST_LOG=tiercache=debug`); with
        // debug off it costs one level check.
        let call = tokio::time::timeout(self.config.timeout, f(conn)).instrument(
            tracing::debug_span!("redis", cache = %self.config.name, level = "l2", command = what),
        );
        let started = self.config.timing.start();
        let outcome = call.await;
        self.config.timing.record(started);
        let (failure, unavailable) = match outcome {
            Ok(Ok(value)) => {
                self.record_success();
                return Ok(value);
            }
            Ok(Err(error)) => {
                let unavailable = is_availability_failure(&error);
                if unavailable {
                    self.record_failure();
                } else {
                    self.record_success();
                }
                (error.to_string(), unavailable)
            }
            Err(_) => {
                self.record_failure();
                self.reroute();
                (format!("timed out after {:?}", self.config.timeout), true)
            }
        };
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.log.warn(|suppressed| {
            tracing::warn!(command = what, error = %failure, suppressed, "L2 call failed; treated as a miss");
        });
        Err(Unavailable(unavailable))
    }

    /// After a call timed out on a cluster: asks the supervisor for a new
    /// connection. redis-rs's cluster client refreshes its slot map on
    /// `MOVED` or a dropped connection, never on a timeout; so after a hung
    /// primary (its connections open, nothing answered) was replaced by its
    /// replica, the client would keep sending that primary's slots to it
    /// and time out until it came back. A new connection reads the slot map
    /// afresh (from seeds that answer: see `cluster::answering_seeds`).
    pub(super) fn reroute(&self) {
        if self.config.topology.is_cluster() {
            self.reroute.notify_one();
        }
    }

    /// Announces the L2 state when it moved since it was last announced;
    /// called where it can move (a connection, the breaker opening or
    /// closing).
    pub(super) fn note_state(&self) {
        let up = self.current_conn().is_some() && self.breaker.is_closed();
        if self.up.swap(up, Ordering::Relaxed) != up {
            let state = if up { L2State::Up } else { L2State::Down };
            self.config
                .events
                .emit(|| CacheEvent::L2StateChanged { state });
        }
    }

    fn record_success(&self) {
        if self.breaker.on_success() {
            self.note_state();
            tracing::info!(redis = %self.config.topology, "L2 is back; circuit breaker closed");
        }
    }

    fn record_failure(&self) {
        if self.breaker.on_failure() {
            self.note_state();
            tracing::warn!(
                redis = %self.config.topology,
                cooldown = ?self.config.breaker.cooldown,
                "L2 failing; circuit breaker open, skipping Redis until a probe succeeds"
            );
        }
    }

    /// Sends a `PING` if the breaker wants a probe now; `None` if it does not.
    async fn probe(&self) -> Option<bool> {
        if self.breaker.permit() == Permit::Refused {
            return None;
        }
        let ping = redis::cmd("PING");
        let conn = self.current_conn()?;
        let answered = self
            .run("PING", conn, |conn| async move {
                conn.query::<String>(&ping).await
            })
            .await;
        Some(answered.is_some())
    }
}

/// Background care of one L2: first connection, probes, rebuilds (also of
/// a cluster connection whose routes went stale, at most every
/// [`REROUTE_GAP`]).
///
/// Holds only a `Weak`, so it never keeps a dropped cache alive; it also
/// exits when upgrading fails.
pub(super) async fn supervise(inner: Weak<Inner>, reroute: Arc<Notify>) {
    let mut retry = FIRST_RETRY;
    let mut failed_probes = 0u32;
    let mut stale_routes = false;
    let mut rerouted = Instant::now();
    loop {
        let pause = {
            let Some(inner) = inner.upgrade() else { return };
            if stale_routes && inner.current_conn().is_some() {
                let since = rerouted.elapsed();
                if since >= REROUTE_GAP {
                    stale_routes = false;
                    rerouted = Instant::now();
                    tracing::info!(redis = %inner.config.topology, "an L2 call timed out on the cluster; reconnecting to read its slot map afresh");
                    let _ = inner.try_establish().await;
                    inner.config.breaker.cooldown
                } else {
                    REROUTE_GAP - since
                }
            } else if inner.current_conn().is_none() || failed_probes >= REBUILD_AFTER {
                if inner.try_establish().await == Attempt::Connected {
                    failed_probes = 0;
                    retry = FIRST_RETRY;
                    inner.config.breaker.cooldown
                } else {
                    inner.breaker.trip();
                    inner.note_state();
                    let pause = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    pause
                }
            } else {
                if !inner.breaker.is_closed() {
                    match inner.probe().await {
                        Some(true) => failed_probes = 0,
                        Some(false) => failed_probes += 1,
                        None => {}
                    }
                }
                inner.config.breaker.cooldown
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = reroute.notified() => stale_routes = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_commands_do_not_count_as_unavailability() {
        let unexpected = RedisError::from((redis::ErrorKind::UnexpectedReturnType, "x"));
        assert!(!is_availability_failure(&unexpected));
        let wrong_type = redis::make_extension_error("WRONGTYPE".into(), None);
        assert!(!is_availability_failure(&wrong_type));
        let loading = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
            "loading",
        ));
        assert!(is_availability_failure(&loading));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_availability_failure(&io));
    }
}
