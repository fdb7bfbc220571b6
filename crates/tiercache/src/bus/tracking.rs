//! Client tracking, the receiver's second source: Redis's invalidation
//! pushes for keys under the cache's prefix, turned into L1 drops (judged
//! by version in a versioned cache, see the manager's sink), and the
//! rechecks of keys no L1 entry held when their change came.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::Value;
use redis::aio::MultiplexedConnection;

use super::receiver::{Link, Receiver};
use crate::events::ClearReason;
use crate::remote::topology::RedisTopology;

/// Longest wait before a due recheck runs.
pub(super) const RECHECK_TICK: Duration = Duration::from_millis(100);

impl Receiver {
    /// `CLIENT TRACKING ON BCAST PREFIX <key prefix> NOLOOP` on `conn`.
    pub(super) async fn track(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&self.key_prefix)
            .arg("NOLOOP")
            .query_async(conn)
            .await
    }

    /// Drops from L1 the keys Redis says were changed by someone.
    ///
    /// A versioned cache's writes are scripts, which `NOLOOP` does not
    /// recognise as this connection's own, so they come back too; the sink
    /// tells them apart by comparing its entry with what Redis now holds,
    /// read here on the same connection (after the write, in order).
    pub(super) async fn on_invalidate(&mut self, link: &Link, data: &[Value]) {
        let counters = &self.shared.counters;
        let keys: Vec<String> = match data.first() {
            Some(Value::Array(keys)) => keys
                .iter()
                .filter_map(|key| match key {
                    Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
                    Value::SimpleString(text) => Some(text.as_str()),
                    _ => None,
                })
                .filter(|key| key.starts_with(&self.key_prefix))
                .filter(|key| key[self.key_prefix.len()..] != *super::LOG_SUFFIX)
                .map(str::to_owned)
                .collect(),
            // `FLUSHDB`/`FLUSHALL`: every key is gone.
            Some(Value::Nil) | None => {
                self.sink.clear(ClearReason::RedisFlush);
                counters.clear_flush.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(_) => return,
        };
        if keys.is_empty() {
            return;
        }
        let names: Vec<String> = keys
            .iter()
            .map(|key| key[self.key_prefix.len()..].to_owned())
            .collect();
        counters
            .tracked_keys
            .fetch_add(names.len() as u64, Ordering::Relaxed);
        // Read (on this connection, so after the change) only what the sink
        // needs to judge now: usually nothing, for keys L1 does not hold.
        let wanted: Vec<usize> = (0..names.len())
            .filter(|&i| self.sink.wants_stored(&names[i]))
            .collect();
        let mut stored: Vec<Option<Vec<u8>>> = vec![None; names.len()];
        if !wanted.is_empty() {
            let mut mget = redis::cmd("MGET");
            for &i in &wanted {
                mget.arg(&keys[i]);
            }
            let read: Option<Vec<Option<Vec<u8>>>> = match self.l2.topology() {
                RedisTopology::Single(_) => mget.query_async(&mut link.conn.clone()).await.ok(),
                RedisTopology::Cluster(_) => {
                    let full: Vec<String> = wanted.iter().map(|&i| keys[i].clone()).collect();
                    self.l2.get_many(&full).await
                }
            };
            // Unread: judged without it (dropped).
            if let Some(values) = read.filter(|values| values.len() == wanted.len()) {
                for (&i, value) in wanted.iter().zip(values) {
                    stored[i] = value;
                }
            }
        }
        let changes: Vec<(String, Option<Vec<u8>>)> = names.into_iter().zip(stored).collect();
        let later = self.sink.changed(&changes);
        if !later.is_empty() {
            // A fill reads Redis within one L2 timeout: whatever one that
            // read the old value put in L1 is there by then.
            let due = Instant::now() + self.l2.timeout() * 2;
            self.rechecks.push_back((due, later));
        }
    }

    /// Rechecks the keys tracked changes found missing from L1, once due:
    /// those L1 holds by now are compared with what Redis holds.
    pub(super) async fn run_due_rechecks(&mut self) {
        let now = Instant::now();
        let mut held = Vec::new();
        while let Some((due, _)) = self.rechecks.front()
            && *due <= now
        {
            let Some((_, keys)) = self.rechecks.pop_front() else {
                break;
            };
            held.extend(keys.into_iter().filter(|key| self.sink.holds(key)));
        }
        if held.is_empty() {
            return;
        }
        let full: Vec<String> = held
            .iter()
            .map(|key| format!("{}{key}", self.key_prefix))
            .collect();
        let Some(values) = self.l2.get_many(&full).await else {
            // Redis unusable: nothing to compare with; the bus and the L1
            // TTL still bound what is served.
            return;
        };
        let changes: Vec<(String, Vec<u8>)> = held
            .into_iter()
            .zip(values)
            .filter_map(|(key, value)| Some((key, value?)))
            .collect();
        self.sink.recheck(&changes);
    }
}
