//! Clearing a cache's keys from Redis: `SCAN MATCH` on every node that
//! holds keys, `UNLINK` per batch found, never `KEYS` or `FLUSHDB`.

use super::RemoteCache;

/// `SCAN … COUNT`: keys examined per round trip when clearing a prefix.
const SCAN_COUNT: usize = 500;

impl RemoteCache {
    /// Deletes every key starting with `prefix` but `keep`: `SCAN MATCH
    /// prefix* COUNT 500` on every node holding keys, `UNLINK` per batch
    /// found.
    ///
    /// Each round trip has its own timeout, so a large keyspace is cleared
    /// in many short calls. Returns the number of keys unlinked, or `None`
    /// if Redis failed part way (some keys may be left).
    pub(crate) async fn clear_prefix(&self, prefix: &str, keep: &str) -> Option<u64> {
        let pattern = format!("{}*", escape_glob(prefix));
        let nodes = self
            .inner
            .call(
                "cluster nodes",
                |conn| async move { conn.key_holders().await },
            )
            .await?;
        let mut unlinked = 0;
        for node in &nodes {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, mut keys): (u64, Vec<Vec<u8>>) = self
                    .inner
                    .call(
                        "SCAN",
                        |conn| async move { conn.query_node(node, scan).await },
                    )
                    .await?;
                keys.retain(|key| key != keep.as_bytes());
                if !keys.is_empty() {
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(&keys);
                    // UNLINK is split per slot by the cluster client, so the
                    // keys of one node's batch need not share a slot.
                    unlinked += self
                        .inner
                        .call(
                            "UNLINK",
                            |conn| async move { conn.query::<u64>(&unlink).await },
                        )
                        .await?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Some(unlinked)
    }
}

/// Escapes the glob metacharacters of `SCAN MATCH`, so a prefix is literal.
fn escape_glob(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(escape_glob("cache:"), "cache:");
        assert_eq!(escape_glob("a*b?c[d]e\\"), "a\\*b\\?c\\[d\\]e\\\\");
    }
}
