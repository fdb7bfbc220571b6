//! The publisher: drains what the cache queued into as few messages as
//! possible, appends each to the change log and publishes it (one script),
//! and retries what Redis did not take.
//!
//! Whatever is queued while a publish is in flight goes out in the next
//! message, so a burst of writes costs a handful of messages, not one per
//! key. A heartbeat goes out every interval in which nothing else did.
//! A message Redis did not take goes back into the queue (coalescing with
//! what came since) and is retried with backoff: other instances learn of
//! every change once Redis answers, through the channel or the log.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Shared;
use super::log::LogConfig;
use super::message::{Message, Op};
use crate::remote::RemoteCache;

const FIRST_RETRY: Duration = Duration::from_millis(50);
/// Small, so that a change made during an outage reaches the others soon
/// after Redis answers again.
const MAX_RETRY: Duration = Duration::from_millis(250);

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) async fn publish(
    shared: Arc<Shared>,
    l2: RemoteCache,
    log: LogConfig,
    heartbeat: Duration,
) {
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = FIRST_RETRY;
    loop {
        let beat = tokio::select! {
            () = shared.wake.notified() => false,
            _ = ticker.tick() => true,
        };
        let mut messages = shared.take_messages();
        if beat && messages.is_empty() {
            messages.push(Message::body(
                &shared.instance,
                0,
                Op::Heartbeat,
                Vec::new(),
                Vec::new(),
            ));
        }
        let mut failed = None;
        for (i, message) in messages.iter_mut().enumerate() {
            message.sent_ms = now_ms();
            let cmd = log.publish(&shared.channel, message);
            // Past the breaker: this task paces its own retries, and its
            // first success after an outage closes the breaker.
            if l2
                .background_command::<String>("EVAL bus publish", cmd)
                .await
                .is_some()
            {
                shared.counters.published.fetch_add(1, Ordering::Relaxed);
            } else {
                failed = Some(i);
                break;
            }
        }
        let Some(first_unsent) = failed else {
            retry = FIRST_RETRY;
            continue;
        };
        shared
            .counters
            .publish_errors
            .fetch_add(1, Ordering::Relaxed);
        shared.log.warn(|suppressed| {
            tracing::warn!(channel = %shared.channel, suppressed, "bus publish failed; retrying");
        });
        shared.requeue(messages.drain(first_unsent..));
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
        // Resume at once with what was put back.
        shared.wake.notify_one();
    }
}
