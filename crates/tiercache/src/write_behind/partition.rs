//! How the queue is split: one partition on a single server, several on a
//! cluster, each a stream, a pending hash and a dead-letter stream that
//! share one hash slot.
//!
//! A Lua script may only touch keys of one slot on a cluster, and every
//! script of the queue (enqueue, settle, group creation) touches a
//! partition's stream and pending hash together; so each partition's keys
//! carry one hash tag, `{<base>#wb.<n>}`, and different partitions land on
//! different slots, so on different primaries as the cluster grows. A key
//! always goes to the same partition ([`Partitions::of`]), so its changes
//! stay in order and its newest queued version is in one pending hash.
//! Product keys themselves carry no tag and spread over every slot.

/// Partitions of a queue on a cluster: enough to spread the queue's load
/// over the primaries of a usual cluster, few enough that an idle flusher's
/// reads (one per partition per interval) stay cheap.
pub(crate) const CLUSTER_PARTITIONS: usize = 8;

/// One partition's Redis keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Partition {
    /// The stream of queued changes.
    pub(crate) stream: String,
    /// Key → stored form of its newest change not yet in the store.
    pub(crate) pending: String,
    /// Changes the store rejected for good.
    pub(crate) dead: String,
}

/// The partitions of one queue.
#[derive(Debug, Clone)]
pub(crate) struct Partitions(Vec<Partition>);

impl Partitions {
    /// The queue of the cache whose keys start with `base` (the key prefix
    /// and namespace, without the final `:`): on a single server one
    /// partition, `{base}#wb` (outside the cache's keyspace, so that a
    /// cache clear never deletes changes the store does not have yet); on
    /// a cluster [`CLUSTER_PARTITIONS`] tagged ones.
    pub(crate) fn new(base: &str, cluster: bool) -> Self {
        if !cluster {
            let stream = format!("{base}#wb");
            return Self(vec![Partition {
                pending: format!("{stream}:pending"),
                dead: format!("{stream}:dead"),
                stream,
            }]);
        }
        Self(
            (0..CLUSTER_PARTITIONS)
                .map(|n| {
                    let tag = format!("{{{base}#wb.{n}}}");
                    Partition {
                        pending: format!("{tag}:pending"),
                        dead: format!("{tag}:dead"),
                        stream: tag,
                    }
                })
                .collect(),
        )
    }

    /// Every partition.
    pub(crate) fn all(&self) -> &[Partition] {
        &self.0
    }

    /// The index of the partition `key` (its `Display` string) belongs to:
    /// FNV-1a, so that every instance and every version agrees.
    pub(crate) fn of(&self, key: &str) -> usize {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        usize::try_from(hash % self.0.len() as u64).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::{Route, SlotAddr};

    use super::*;

    #[test]
    fn a_single_server_keeps_one_untagged_partition() {
        let partitions = Partitions::new("app:items", false);
        assert_eq!(
            partitions.all(),
            [Partition {
                stream: "app:items#wb".into(),
                pending: "app:items#wb:pending".into(),
                dead: "app:items#wb:dead".into(),
            }]
        );
        assert_eq!(partitions.of("42"), 0);
    }

    #[test]
    fn each_cluster_partition_keeps_its_keys_in_one_slot_and_partitions_spread() {
        let partitions = Partitions::new("app:items", true);
        let slot = |key: &str| Route::with_key(key, SlotAddr::Master);
        let mut slots = std::collections::HashSet::new();
        for partition in partitions.all() {
            assert_eq!(slot(&partition.stream), slot(&partition.pending));
            assert_eq!(slot(&partition.stream), slot(&partition.dead));
            slots.insert(slot(&partition.stream));
        }
        assert_eq!(slots.len(), CLUSTER_PARTITIONS, "one slot per partition");
        let mut used = [0_usize; CLUSTER_PARTITIONS];
        for key in 0..8_000 {
            let index = partitions.of(&key.to_string());
            assert_eq!(index, partitions.of(&key.to_string()), "stable");
            used[index] += 1;
        }
        assert!(used.iter().all(|&n| n > 500), "keys spread: {used:?}");
    }
}
