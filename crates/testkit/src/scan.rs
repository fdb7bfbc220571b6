//! Listing keys the way a test may: `SCAN` (never `KEYS`), one node at a
//! time, as a cluster has no command that lists every node's keys.

use redis::aio::MultiplexedConnection;

/// Every key matching `pattern` on the server (or cluster node) behind
/// `conn`, sorted.
///
/// # Panics
/// When Redis refuses the `SCAN`.
pub async fn scan_keys(conn: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(conn)
            .await
            .expect("Redis answers SCAN");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    keys
}
