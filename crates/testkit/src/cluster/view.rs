//! What the running nodes of a [`PrivateCluster`] say of it: each node's
//! role, which primary serves each slot in its view, and so which nodes
//! are primaries, which serve a key, and what keeps the cluster from being
//! whole. Only running nodes (not killed, not paused) are asked, each
//! within a bound, so a question never hangs on a dead node.

use std::time::Duration;

use super::PrivateCluster;

/// Bound on one node's answers, so that a node that does not answer is a
/// failed check, not a hung test.
const QUERY_LIMIT: Duration = Duration::from_secs(1);
/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16_384;

/// What one running node says of itself and of the cluster.
#[derive(Debug)]
struct Report {
    index: usize,
    /// `cluster_state:ok` in `CLUSTER INFO`.
    state_ok: bool,
    /// `role:master` in `INFO replication`.
    primary: bool,
    /// `master_link_status:up` in `INFO replication` (replicas only).
    link_up: bool,
    /// The port of the primary serving each slot as this node sees it
    /// (`None`: no primary).
    owners: Vec<Option<u16>>,
}

impl PrivateCluster {
    /// The nodes that are primaries now: running, saying `role:master`,
    /// and serving at least one slot in their own view. Three, except
    /// while a failover is under way.
    pub async fn primaries(&self) -> Vec<usize> {
        self.reports()
            .await
            .into_iter()
            .filter(|report| report.primary && report.owners.contains(&Some(self.port(report))))
            .map(|report| report.index)
            .collect()
    }

    /// The nodes that are replicas in step with their primary now: running,
    /// saying `role:slave` and `master_link_status:up`.
    pub async fn replicas(&self) -> Vec<usize> {
        self.reports()
            .await
            .into_iter()
            .filter(|report| !report.primary && report.link_up)
            .map(|report| report.index)
            .collect()
    }

    /// The node serving `key`'s hash slot as its primary now (by its own
    /// view): the node to kill to make that key's primary fail.
    ///
    /// # Panics
    /// When no running node answers `CLUSTER KEYSLOT`, or no running
    /// primary (or more than one) claims the slot: a failover is under
    /// way; wait with [`wait_failed_over`](Self::wait_failed_over) first.
    pub async fn primary_for_key(&self, key: &str) -> usize {
        let slot = self.key_slot(key).await;
        let claimants: Vec<usize> = self
            .reports()
            .await
            .into_iter()
            .filter(|report| report.primary && report.owners[slot] == Some(self.port(report)))
            .map(|report| report.index)
            .collect();
        match claimants[..] {
            [index] => index,
            [] => panic!("no running primary serves slot {slot} (key {key:?})"),
            _ => panic!("nodes {claimants:?} all claim slot {slot} (key {key:?})"),
        }
    }

    /// What keeps the cluster from being whole now (nothing: it is).
    pub(super) async fn problems(&self, replicas_in_sync: bool) -> Vec<String> {
        let running = self.running();
        let reports = self.reports().await;
        let mut problems: Vec<String> = running
            .iter()
            .filter(|index| !reports.iter().any(|r| r.index == **index))
            .map(|index| format!("node {index} did not answer within {QUERY_LIMIT:?}"))
            .collect();
        let primaries: Vec<u16> = reports
            .iter()
            .filter(|r| r.primary)
            .map(|r| self.port(r))
            .collect();
        for report in &reports {
            let index = report.index;
            if !report.state_ok {
                problems.push(format!("node {index}: cluster_state is not ok"));
            }
            if replicas_in_sync && !report.primary && !report.link_up {
                problems.push(format!("node {index}: replica whose master link is not up"));
            }
            let unserved = report
                .owners
                .iter()
                .filter(|owner| !owner.is_some_and(|port| primaries.contains(&port)))
                .count();
            if unserved > 0 {
                problems.push(format!(
                    "node {index}: {unserved} slots not served by a running primary"
                ));
            }
        }
        if let Some((first, rest)) = reports.split_first() {
            for report in rest.iter().filter(|r| r.owners != first.owners) {
                problems.push(format!(
                    "nodes {} and {} disagree on which primaries serve which slots",
                    first.index, report.index
                ));
            }
        }
        problems
    }

    /// The reports of the running nodes that answered.
    async fn reports(&self) -> Vec<Report> {
        let mut reports = Vec::new();
        for index in self.running() {
            if let Some(report) = self.report(index).await {
                reports.push(report);
            }
        }
        reports
    }

    /// What node `index` says, if it answers within [`QUERY_LIMIT`].
    async fn report(&self, index: usize) -> Option<Report> {
        let ask = async {
            let mut conn = self.connect(index).await.ok()?;
            let (info, nodes, replication): (String, String, String) = redis::pipe()
                .cmd("CLUSTER")
                .arg("INFO")
                .cmd("CLUSTER")
                .arg("NODES")
                .cmd("INFO")
                .arg("replication")
                .query_async(&mut conn)
                .await
                .ok()?;
            Some(Report {
                index,
                state_ok: info.lines().any(|line| line.trim() == "cluster_state:ok"),
                primary: replication.lines().any(|line| line.trim() == "role:master"),
                link_up: replication
                    .lines()
                    .any(|line| line.trim() == "master_link_status:up"),
                owners: slot_owners(&nodes),
            })
        };
        tokio::time::timeout(QUERY_LIMIT, ask).await.ok().flatten()
    }

    /// `CLUSTER KEYSLOT key`, asked of the first running node that answers.
    async fn key_slot(&self, key: &str) -> usize {
        for index in self.running() {
            let ask = async {
                let mut conn = self.connect(index).await.ok()?;
                redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(key)
                    .query_async::<usize>(&mut conn)
                    .await
                    .ok()
            };
            if let Ok(Some(slot)) = tokio::time::timeout(QUERY_LIMIT, ask).await {
                return slot;
            }
        }
        panic!("no running cluster node answered CLUSTER KEYSLOT {key:?}");
    }

    fn port(&self, report: &Report) -> u16 {
        self.ports[report.index]
    }
}

/// The port of the primary serving each slot in a `CLUSTER NODES` answer
/// (`None`: no primary serves it). A primary flagged failing keeps its
/// slots here: whether it runs is for the caller to judge.
fn slot_owners(nodes: &str) -> Vec<Option<u16>> {
    let mut owners = vec![None; SLOTS];
    for line in nodes.lines() {
        // <id> <ip:port@cport[,hostname]> <flags> <primary> <ping-sent>
        // <pong-recv> <config-epoch> <link-state> <slot>…
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        if !flags.split(',').any(|flag| flag == "master") {
            continue;
        }
        let port = address
            .split(['@', ','])
            .next()
            .and_then(|addr| addr.rsplit_once(':'))
            .and_then(|(_, port)| port.parse::<u16>().ok());
        let Some(port) = port else {
            continue;
        };
        // `[slot->-id]`, `[slot-<-id]`: a slot on its way in or out, still
        // served by its owner's range.
        for range in fields.iter().skip(8).filter(|r| !r.starts_with('[')) {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(first), Ok(last)) = (first.parse::<usize>(), last.parse::<usize>()) {
                for owner in owners.iter_mut().take(last + 1).skip(first) {
                    *owner = Some(port);
                }
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_owners_are_read_from_primaries_only() {
        let nodes = "\
a1 127.0.0.1:20001@30001 myself,master - 0 0 1 connected 0-5460 [5461->-b2]
b2 127.0.0.1:20002@30002,host master - 0 1700000000000 2 connected 5461-10922 16383
c3 127.0.0.1:20003@30003 master,fail - 1 1700000000000 3 disconnected 10923-16382
d4 127.0.0.1:20004@30004 slave a1 0 1700000000000 1 connected
";

        let owners = slot_owners(nodes);

        assert_eq!(owners.len(), SLOTS);
        assert_eq!(owners[0], Some(20001));
        assert_eq!(owners[5460], Some(20001));
        assert_eq!(owners[5461], Some(20002));
        assert_eq!(owners[10923], Some(20003));
        assert_eq!(owners[16382], Some(20003));
        assert_eq!(owners[16383], Some(20002));
        assert!(!owners.contains(&Some(20004)));
        assert_eq!(slot_owners("")[42], None);
    }
}
