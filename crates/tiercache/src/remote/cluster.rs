//! The Redis Cluster half of [`Conn`](super::topology::Conn) (feature
//! `cluster`): connecting through the seeds that answer, and the calls that
//! address nodes rather than keys (every primary, a slot's primary, one
//! node by address).

use std::time::Duration;

use futures_util::future::join_all;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, RedisResult, Value};

use super::topology::{ConnectSettings, Node, misconfigured, tcp_settings, unexpected};

/// Connects to the cluster named by `nodes` (seed URLs).
pub(super) async fn connect(
    nodes: &[String],
    settings: ConnectSettings,
) -> RedisResult<ClusterConnection> {
    let seeds = answering_seeds(nodes, settings).await;
    let client = redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .tcp_settings(tcp_settings())
        .connection_timeout(node_connect_timeout(settings))
        .response_timeout(settings.response_timeout)
        .retries(3)
        .build()?;
    match client.get_async_connection().await {
        Ok(conn) => Ok(conn),
        Err(error) if error.to_string().contains("cluster support disabled") => Err(misconfigured(
            "REDIS_URL names a Redis Cluster, but its nodes are not in cluster mode: name one server (redis://host:port)",
        )),
        Err(error) => Err(error),
    }
}

/// Every primary, as `host:port`.
pub(super) async fn primaries(conn: &ClusterConnection) -> RedisResult<Vec<Node>> {
    let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
    // Without a response policy the cluster client answers with a map from
    // each node's address to its reply.
    let reply = conn
        .clone()
        .route_command(redis::cmd("PING"), routing)
        .await?;
    let Value::Map(replies) = reply else {
        return Err(unexpected("PING to all primaries did not answer per node"));
    };
    replies
        .into_iter()
        .map(|(address, _)| {
            let address = String::from_redis_value(address)?;
            let (host, port) = address
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
                .ok_or_else(|| unexpected("cluster node address is not host:port"))?;
            Ok(Node::Address { host, port })
        })
        .collect()
}

/// See [`Conn::slot_primary`](super::topology::Conn::slot_primary).
pub(super) async fn slot_primary(conn: &ClusterConnection, key: &str) -> RedisResult<Node> {
    let route = || {
        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
            key,
            SlotAddr::Master,
        )))
    };
    let mut keyslot = redis::cmd("CLUSTER");
    keyslot.arg("KEYSLOT").arg(key);
    let slot = u16::from_redis_value(conn.clone().route_command(keyslot, route()).await?)?;
    let mut slots = redis::cmd("CLUSTER");
    slots.arg("SLOTS");
    let reply = conn.clone().route_command(slots, route()).await?;
    primary_of(&reply, slot)
        .ok_or_else(|| unexpected("CLUSTER SLOTS names no primary for the slot"))
}

/// Sends `cmd` to the node at `host:port`.
pub(super) async fn query_node<T: FromRedisValue>(
    conn: &ClusterConnection,
    host: &str,
    port: u16,
    cmd: Cmd,
) -> RedisResult<T> {
    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
        host: host.to_owned(),
        port,
    });
    let value = conn.clone().route_command(cmd, routing).await?;
    Ok(T::from_redis_value(value)?)
}

/// How long redis-rs may take to connect to one cluster node: a few
/// response timeouts, within the connect timeout. It connects to every
/// node of the slot map before a new cluster connection is ready, a hung
/// node (its port open, nothing answered) taking all of this; with the
/// whole connect timeout a reconnection during a hung primary's failover
/// would never finish in time. A node slower than this to accept a
/// connection would time out requests anyway.
fn node_connect_timeout(settings: ConnectSettings) -> Duration {
    (settings.response_timeout * 5).min(settings.connect_timeout)
}

/// The seeds that answer a `PING` within the response timeout, in their
/// order; all of them when none does (then redis-rs's own timeouts apply).
///
/// redis-rs connects to every seed before it reads the slot map, and a hung
/// seed (its port open, nothing answered) holds that up for the whole
/// connect timeout; leaving it out makes a reconnection during a hung
/// primary's failover fast. The slot map then names every node anyway.
async fn answering_seeds(nodes: &[String], settings: ConnectSettings) -> Vec<String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.response_timeout))
        .set_response_timeout(Some(settings.response_timeout));
    let pings = nodes.iter().map(|node| {
        let config = config.clone();
        async move {
            let client = redis::Client::open(node.as_str()).ok()?;
            let attempt = async {
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            let answered = tokio::time::timeout(settings.response_timeout * 2, attempt).await;
            matches!(answered, Ok(Ok(_))).then(|| node.clone())
        }
    });
    let answering: Vec<String> = join_all(pings).await.into_iter().flatten().collect();
    if answering.is_empty() {
        nodes.to_vec()
    } else {
        answering
    }
}

/// The primary serving `slot` in a `CLUSTER SLOTS` reply: entries of
/// `[first, last, [host, port, id…], replicas…]`.
fn primary_of(reply: &Value, slot: u16) -> Option<Node> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let Value::Array(fields) = range else {
            return None;
        };
        let first = u16::from_redis_value_ref(fields.first()?).ok()?;
        let last = u16::from_redis_value_ref(fields.get(1)?).ok()?;
        if !(first..=last).contains(&slot) {
            return None;
        }
        let Value::Array(primary) = fields.get(2)? else {
            return None;
        };
        let host = String::from_redis_value_ref(primary.first()?).ok()?;
        let port = u16::from_redis_value_ref(primary.get(1)?).ok()?;
        (!host.is_empty()).then_some(Node::Address { host, port })
    })
}
