//! Changes made outside the service (PostgreSQL only): `psql -c "UPDATE
//! products …"`, scripts, other programs. A [`ChangeListener`] turns them
//! into [`Invalidation`]s within a round trip and hands each to an
//! [`InvalidationSink`] (the service, which applies it exactly as it
//! applies its own writes); this module does the database side only.
//!
//! A trigger on `products` (migration `0002_products_notify.sql`) sends one
//! `pg_notify` on [`CHANNEL`] per changed row, at commit. The listener
//! task `LISTEN`s on its own connection (not one of the store's pool, so it
//! never competes with requests) and, per notification, yields the product
//! with its new version and the categories whose pages it was on. Every
//! instance listens, so each change is invalidated once per instance;
//! invalidation is idempotent, which makes that harmless.
//!
//! Contract with the trigger: the store's connections are named
//! [`APPLICATION_NAME`](crate::store::APPLICATION_NAME) and the trigger stays silent for those sessions,
//! because an API write invalidates through the cache already and would
//! otherwise be invalidated a second time. Anything else that connects with
//! `application_name=catalog` (including `catalog seed`, which uses the
//! store) is therefore invisible to this listener: its changes show only
//! when cached copies expire. The listener's own connection is named
//! [`LISTENER_APPLICATION_NAME`], which makes it easy to find in
//! `pg_stat_activity`.
//!
//! Notifications are not queued for a session that is not connected: those
//! sent while the listener is reconnecting are lost. So after every
//! reconnection (not after the first connection) the listener yields
//! [`Invalidation::All`], counted in [`ListenerStats::reconnects`]. sqlx's
//! [`PgListener::recv`] would reconnect silently, with no chance to say so;
//! this task uses [`PgListener::try_recv`], which reports the lost
//! connection as `Ok(None)`, and reconnects itself with capped exponential
//! backoff.
//!
//! A payload that cannot be read is [`Invalidation::All`] as well:
//! something changed, and without an id the only safe answer is to forget
//! everything (payloads come from our trigger, so this means someone else
//! `NOTIFY`s on our channel; the warning says so).
//!
//! Limits: PostgreSQL holds undelivered notifications in a queue of 8 GB;
//! if this listener falls that far behind, transactions that change products
//! fail at commit. The sink is awaited before the next notification is
//! read, and one invalidation costs one Redis round trip, so a bulk
//! `UPDATE` of millions of rows is better followed by `DELETE /cache`.
//!
//! SQLite has no notifications between processes: direct writes to a SQLite
//! file are not seen by the service until the cached copies expire
//! (`L1_TTL_SECS`, `L2_TTL_SECS`).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::future::Future;

use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::{PoolSettings, StoreError};

/// The channel the trigger notifies on (`pg_notify('catalog_products', …)`).
pub const CHANNEL: &str = "catalog_products";

/// The `application_name` of the listener's connection: distinct from
/// [`APPLICATION_NAME`](crate::store::APPLICATION_NAME) so that `pg_stat_activity` tells it apart from the
/// store's pool.
pub const LISTENER_APPLICATION_NAME: &str = "catalog-listener";

/// First wait after a failed reconnection attempt; doubles up to
/// [`RECONNECT_MAX_DELAY`].
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);

/// What the listener has done, readable while it runs (cheap clones share
/// the same counters).
#[derive(Debug, Clone)]
pub struct ListenerStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    listening: AtomicBool,
    notifications: AtomicU64,
    reconnects: AtomicU64,
}

impl ListenerStats {
    /// Whether the listener's `LISTEN` is in place right now; `false` while
    /// it reconnects and after it stopped.
    pub fn is_listening(&self) -> bool {
        self.0.listening.load(Ordering::Relaxed)
    }

    /// Notifications received since start.
    pub fn notifications(&self) -> u64 {
        self.0.notifications.load(Ordering::Relaxed)
    }

    /// Successful reconnections since start; after each one the sink was
    /// told that everything is stale.
    pub fn reconnects(&self) -> u64 {
        self.0.reconnects.load(Ordering::Relaxed)
    }

    fn set_listening(&self, listening: bool) {
        self.0.listening.store(listening, Ordering::Relaxed);
    }
}

/// The running listener task. Dropping this stops the task; [`stop`]
/// also waits for it to finish.
///
/// [`stop`]: ChangeListener::stop
#[derive(Debug)]
pub struct ChangeListener {
    stats: ListenerStats,
    /// Cancels the task when the handle goes away without [`Self::stop`].
    stop: DropGuard,
    task: JoinHandle<()>,
}

impl ChangeListener {
    /// Connects to `url` as [`LISTENER_APPLICATION_NAME`], `LISTEN`s on
    /// [`CHANNEL`] and spawns the task that hands `sink` an invalidation for
    /// every notification (and [`Invalidation::All`] after every
    /// reconnection). Returns once the first `LISTEN` is in place, so that
    /// no change committed after this returns is missed.
    ///
    /// # Errors
    /// The database cannot be reached within `settings.acquire_timeout`, or
    /// refuses the `LISTEN`.
    pub async fn spawn(
        url: &str,
        settings: &PoolSettings,
        sink: impl InvalidationSink,
    ) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name(LISTENER_APPLICATION_NAME);
        // A pool of one: sqlx's listener takes its connections from a pool,
        // which also gives us connection timeouts and a graceful close.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options);
        let listener = listen(&pool).await?;
        let stats = ListenerStats(Arc::default());
        stats.set_listening(true);
        tracing::info!(
            channel = CHANNEL,
            "listening for product changes in PostgreSQL"
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            Task {
                pool,
                sink,
                stats: stats.clone(),
                stop: stop.clone(),
            }
            .run(listener),
        );
        Ok(Self {
            stats,
            stop: stop.drop_guard(),
            task,
        })
    }

    /// The listener's counters.
    pub fn stats(&self) -> ListenerStats {
        self.stats.clone()
    }

    /// Stops listening, closes the connection and waits for the task.
    pub async fn stop(self) {
        let Self { stop, task, .. } = self;
        drop(stop);
        if let Err(error) = task.await {
            tracing::error!(error.cause_chain = ?error, error.message = %error, "the change listener task failed");
        }
    }
}

/// A fresh listener from `pool`, subscribed to [`CHANNEL`].
async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection must come back to `Task::run` as `Ok(None)` so that
    // it reconnects (and invalidates everything) itself, rather than sqlx reconnecting
    // silently inside `try_recv`.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// What the caches must forget after a change made outside the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// One product: copies older than `version` (all of them when it is
    /// unknown) are stale, and so are the pages of `categories`.
    Product {
        id: i64,
        version: Option<u64>,
        categories: Vec<String>,
    },
    /// Which products changed is unknown (TRUNCATE, a payload that is not
    /// ours, or notifications lost while reconnecting): everything.
    All,
}

/// Where a [`ChangeListener`] hands its invalidations, one at a time, in
/// the order the changes committed.
pub trait InvalidationSink: Send + Sync + 'static {
    /// Forgets what `invalidation` says is stale.
    fn invalidate(&self, invalidation: Invalidation) -> impl Future<Output = ()> + Send;
}

/// The trigger's payload.
#[derive(Debug, Deserialize)]
struct Change {
    op: String,
    id: Option<i64>,
    version: Option<i64>,
    category: Option<String>,
    old_category: Option<String>,
}

impl Invalidation {
    /// What a notification's payload says changed.
    fn parse(payload: &str) -> Self {
        match serde_json::from_str::<Change>(payload) {
            Ok(Change {
                op,
                id: Some(id),
                version,
                category,
                old_category,
            }) => {
                tracing::debug!(op, id, version, "product changed outside the service");
                // After a delete the deleted version itself is stale too.
                let version = version.and_then(|v| u64::try_from(v).ok()).map(|v| {
                    if op == "DELETE" {
                        v.saturating_add(1)
                    } else {
                        v
                    }
                });
                let mut categories: Vec<String> =
                    category.into_iter().chain(old_category).collect();
                categories.dedup();
                Self::Product {
                    id,
                    version,
                    categories,
                }
            }
            Ok(Change { op, id: None, .. }) => {
                tracing::info!(op, "products changed outside the service, ids unknown");
                Self::All
            }
            Err(error) => {
                tracing::warn!(
                    channel = CHANNEL,
                    payload,
                    error.message = %error,
                    "a notification on the product channel is not ours; clearing the cache"
                );
                Self::All
            }
        }
    }
}

/// The listener loop's state; the loop itself is [`Task::run`].
struct Task<S> {
    pool: PgPool,
    sink: S,
    stats: ListenerStats,
    stop: CancellationToken,
}

/// What one wait for a notification ended with.
enum Received {
    Payload(String),
    Lost(Option<sqlx::Error>),
    Stopped,
}

impl<S: InvalidationSink> Task<S> {
    async fn run(self, mut listener: PgListener) {
        loop {
            let received = tokio::select! {
                () = self.stop.cancelled() => Received::Stopped,
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => Received::Payload(notification.payload().to_owned()),
                    Ok(None) => Received::Lost(None),
                    Err(error) => Received::Lost(Some(error)),
                },
            };
            match received {
                Received::Payload(payload) => {
                    self.stats.0.notifications.fetch_add(1, Ordering::Relaxed);
                    self.sink.invalidate(Invalidation::parse(&payload)).await;
                }
                Received::Lost(error) => {
                    self.stats.set_listening(false);
                    match &error {
                        Some(error) => tracing::warn!(
                            error.cause_chain = ?error,
                            error.message = %error,
                            "lost the PostgreSQL change listener; reconnecting"
                        ),
                        None => tracing::warn!(
                            "lost the PostgreSQL change listener connection; reconnecting"
                        ),
                    }
                    // The pool holds one connection: the old listener must
                    // give it back before a new one can connect.
                    drop(listener);
                    listener = match self.reconnect().await {
                        Some(listener) => listener,
                        None => break,
                    };
                    self.stats.set_listening(true);
                    self.stats.0.reconnects.fetch_add(1, Ordering::Relaxed);
                    // After the LISTEN, so that a change is either notified
                    // or committed before the clear (and then reloaded).
                    self.sink.invalidate(Invalidation::All).await;
                    tracing::info!(
                        "listening for product changes again; cache cleared, since changes \
                         made while disconnected were not notified"
                    );
                }
                Received::Stopped => {
                    drop(listener);
                    break;
                }
            }
        }
        self.stats.set_listening(false);
        self.pool.close().await;
    }

    /// A new listener, retrying with capped exponential backoff; `None` once
    /// stopped.
    async fn reconnect(&self) -> Option<PgListener> {
        let mut delay = RECONNECT_MIN_DELAY;
        loop {
            match self.stop.run_until_cancelled(listen(&self.pool)).await? {
                Ok(listener) => return Some(listener),
                Err(error) => tracing::debug!(
                    error.message = %error,
                    retry_in = ?delay,
                    "could not reconnect the change listener"
                ),
            }
            self.stop
                .run_until_cancelled(tokio::time::sleep(delay))
                .await?;
            delay = (delay * 2).min(RECONNECT_MAX_DELAY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_change_invalidates_that_product_and_its_categories() {
        assert_eq!(
            Invalidation::parse(
                r#"{"op":"UPDATE","id":7,"version":3,"category":"a","old_category":"b"}"#
            ),
            Invalidation::Product {
                id: 7,
                version: Some(3),
                categories: vec!["a".into(), "b".into()],
            }
        );
        assert_eq!(
            Invalidation::parse(r#"{"op":"DELETE","id":9,"version":1,"category":"a"}"#),
            Invalidation::Product {
                id: 9,
                version: Some(2),
                categories: vec!["a".into()],
            }
        );
        assert_eq!(
            Invalidation::parse(r#"{"op":"INSERT","id":3}"#),
            Invalidation::Product {
                id: 3,
                version: None,
                categories: Vec::new(),
            }
        );
    }

    #[test]
    fn a_truncate_or_a_foreign_payload_invalidates_everything() {
        assert_eq!(
            Invalidation::parse(r#"{"op":"TRUNCATE"}"#),
            Invalidation::All
        );
        assert_eq!(Invalidation::parse("hello"), Invalidation::All);
        assert_eq!(
            Invalidation::parse(r#"{"op":"UPDATE","id":"x"}"#),
            Invalidation::All
        );
    }

    mod fuzz {
        use proptest::prelude::*;
        use serde_json::Value;

        use super::*;

        proptest! {
            #![proptest_config(testkit::fuzz_config())]

            /// Any notification is one product (when it is a change with an
            /// id) or "everything": never a panic, never nothing.
            #[test]
            fn any_notification_invalidates_one_product_or_everything(
                payload in testkit::corpus_input(env!("CARGO_MANIFEST_DIR"), "change"),
            ) {
                let text = String::from_utf8_lossy(&payload);
                let parsed = Invalidation::parse(&text);
                let change: Option<Value> = serde_json::from_str(&text).ok();
                if change.is_none() && serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok() {
                    // JSON a `Value` cannot hold (a number beyond f64's
                    // range, in a field the parser skips): no oracle.
                    return Ok(());
                }
                let id = change.as_ref().and_then(|c| c.get("id")).and_then(Value::as_i64);
                match parsed {
                    Invalidation::Product { id: got, version, .. } => {
                        prop_assert_eq!(Some(got), id);
                        let change = change.unwrap();
                        let stored = change.get("version").and_then(Value::as_i64)
                            .and_then(|v| u64::try_from(v).ok());
                        let expected = if change["op"] == "DELETE" {
                            stored.map(|v| v.saturating_add(1))
                        } else {
                            stored
                        };
                        prop_assert_eq!(version, expected);
                    }
                    Invalidation::All => {}
                }
            }
        }
    }
}
