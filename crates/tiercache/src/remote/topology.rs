//! Where Redis is ([`RedisTopology`]) and the live connection to it (`Conn`).
//!
//! Both topologies share one command path (`Conn::query`); they differ only
//! in how a batch of SETs is sent and how keys are enumerated, because of
//! what redis-rs 1.8's cluster client does with multi-key traffic:
//!
//! - `MGET`, `UNLINK`, `DEL`, `EXISTS` and `MSET` are split per hash slot,
//!   sent to the owning nodes in parallel and reassembled in key order
//!   (`cluster_routing::multi_shard`, response policy `CombineArrays` /
//!   `Aggregate(Sum)`), so one logical `MGET` works across slots.
//! - A pipeline is routed whole to the node of its first keyed command;
//!   commands for another slot make it fail with `CrossSlot`
//!   (`cluster_async::routing::route_for_pipeline`). So on a cluster a batch
//!   of SETs is sent as concurrent single commands on the multiplexed
//!   connection instead (the same number of round trips in flight).
//! - `SCAN` has no routing of its own (it would reach one random node), so
//!   on a cluster each primary is scanned by address.
//!
//! Keys carry no hash tag on purpose: one tag per namespace would put a whole
//! namespace on one node. Every operation above is slot-agnostic instead.
//! Only what one script must touch together shares a tag: the bus's
//! channel and change log (`bus::channel_and_log`), and each write-behind
//! queue partition (`write_behind::partition`).

use std::fmt;
use std::time::Duration;

#[cfg(feature = "cluster")]
use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
#[cfg(feature = "cluster")]
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, FromRedisValue, IntoConnectionInfo, RedisResult,
};

#[cfg(feature = "cluster")]
use super::cluster;
use crate::error::Error;

/// Where the Redis level lives.
///
/// Build one with [`RedisTopology::parse`] from a Redis URL, or directly. `Debug` hides passwords.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisTopology {
    /// One Redis server, e.g. `redis://127.0.0.1:6379/0`.
    Single(String),
    /// A Redis Cluster, given by one or more seed nodes
    /// (`redis://host:port` each); the rest are discovered.
    Cluster(Vec<String>),
}

impl RedisTopology {
    /// Parses a Redis URL.
    ///
    /// - `redis://…`, `rediss://…`, `redis+unix://…`, `unix://…` → one server;
    /// - `redis+cluster://h1:p1[,h2:p2…]` → a cluster with those seed nodes;
    /// - a comma-separated list of URLs (`redis://a:1,redis://b:2`) → a cluster.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a URL does not parse. The message never
    /// contains the password.
    ///
    /// # Example
    ///
    /// ```
    /// use tiercache::RedisTopology;
    ///
    /// assert_eq!(
    ///     RedisTopology::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")?,
    ///     RedisTopology::Cluster(vec!["redis://10.0.0.1:7000".into(), "redis://10.0.0.2:7000".into()]),
    /// );
    /// # Ok::<(), tiercache::Error>(())
    /// ```
    pub fn parse(url: &str) -> Result<Self, Error> {
        let url = url.trim();
        let (scheme, rest, cluster) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            ("redis://", rest, true)
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            ("rediss://", rest, true)
        } else {
            ("redis://", url, url.contains(','))
        };
        if !cluster {
            check_url(url)?;
            return Ok(Self::Single(url.to_owned()));
        }
        let nodes = rest
            .split(',')
            .map(str::trim)
            .map(|node| {
                if node.contains("://") {
                    node.to_owned()
                } else {
                    format!("{scheme}{node}")
                }
            })
            .collect::<Vec<_>>();
        if nodes.iter().any(|n| n.ends_with("://")) {
            return Err(Error::config(format!(
                "Redis cluster URL has an empty node: {}",
                redact(url)
            )));
        }
        for node in &nodes {
            check_url(node)?;
        }
        Ok(Self::Cluster(nodes))
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(url) => f.debug_tuple("Single").field(&redact(url)).finish(),
            Self::Cluster(nodes) => f
                .debug_tuple("Cluster")
                .field(&nodes.iter().map(|n| redact(n)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

impl fmt::Display for RedisTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(url) => f.write_str(&redact(url)),
            Self::Cluster(nodes) => {
                f.write_str("cluster[")?;
                for (i, node) in nodes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(&redact(node))?;
                }
                f.write_str("]")
            }
        }
    }
}

fn check_url(url: &str) -> Result<(), Error> {
    url.into_connection_info()
        .map(drop)
        .map_err(|e| Error::config(format!("bad Redis URL {}: {e}", redact(url))))
}

/// The URL with any user:password part replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

/// Timeouts used when (re)connecting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectSettings {
    /// Bound on each command.
    pub(crate) response_timeout: Duration,
    /// Bound on each connection attempt.
    pub(crate) connect_timeout: Duration,
}

/// A live, multiplexed connection; cloning it is cheap and shares it.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(ClusterConnection),
    /// The bus receiver's connection to a single server, lent for writes
    /// (see `RemoteCache::route_writes`); it does not reconnect by itself.
    Listener(MultiplexedConnection),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single(_) => f.write_str("Conn::Single"),
            #[cfg(feature = "cluster")]
            Self::Cluster(_) => f.write_str("Conn::Cluster"),
            Self::Listener(_) => f.write_str("Conn::Listener"),
        }
    }
}

pub(super) fn tcp_settings() -> TcpSettings {
    // redis 1.x leaves Nagle on (DEPS.md P6), which delays small writes.
    TcpSettings::default().set_nodelay(true)
}

impl Conn {
    /// Connects once; fails fast when Redis is unreachable.
    pub(crate) async fn establish(
        topology: &RedisTopology,
        settings: ConnectSettings,
    ) -> RedisResult<Self> {
        match topology {
            RedisTopology::Single(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()?
                    .set_tcp_settings(tcp_settings());
                let client = redis::Client::open(info)?;
                // ConnectionManager retries its first connect with backoff;
                // one plain attempt first keeps start-up fast when Redis is
                // down (the supervisor paces retries instead).
                let probe = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_response_timeout(Some(settings.connect_timeout));
                let mut probe = client
                    .get_multiplexed_async_connection_with_config(&probe)
                    .await?;
                // A cluster node answers a single-server client for its own
                // slots only (`MOVED` for the rest): refuse it. (A server
                // that does not allow `INFO` is taken as it is.)
                let info: RedisResult<String> = redis::cmd("INFO")
                    .arg("cluster")
                    .query_async(&mut probe)
                    .await;
                if info.is_ok_and(|info| info.contains("cluster_enabled:1")) {
                    return Err(misconfigured(
                        "REDIS_URL names one server, but it is a Redis Cluster node: name the cluster (redis+cluster://host:port,…)",
                    ));
                }
                drop(probe);
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_response_timeout(Some(settings.response_timeout))
                    .set_number_of_retries(3)
                    .set_min_delay(Duration::from_millis(100))
                    .set_max_delay(Duration::from_secs(1));
                let manager = ConnectionManager::new_with_config(client, config).await?;
                Ok(Self::Single(manager))
            }
            #[cfg(feature = "cluster")]
            RedisTopology::Cluster(nodes) => {
                cluster::connect(nodes, settings).await.map(Self::Cluster)
            }
            #[cfg(not(feature = "cluster"))]
            RedisTopology::Cluster(_) => Err(misconfigured(
                "REDIS_URL names a Redis Cluster, but tiercache was built without its `cluster` feature",
            )),
        }
    }

    /// Sends one command.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Self::Single(conn) => cmd.query_async(&mut conn.clone()).await,
            #[cfg(feature = "cluster")]
            Self::Cluster(conn) => cmd.query_async(&mut conn.clone()).await,
            Self::Listener(conn) => cmd.query_async(&mut conn.clone()).await,
        }
    }

    /// Sends `pipe` in one round trip (on a cluster, to the node of its
    /// first keyed command; see the module docs).
    pub(crate) async fn query_pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> RedisResult<T> {
        match self {
            Self::Single(conn) => pipe.query_async(&mut conn.clone()).await,
            #[cfg(feature = "cluster")]
            Self::Cluster(conn) => pipe.query_async(&mut conn.clone()).await,
            Self::Listener(conn) => pipe.query_async(&mut conn.clone()).await,
        }
    }

    /// Sends `cmds` (each a keyed command) in as few round trips as the
    /// topology allows; replies in command order.
    pub(crate) async fn exec_batch<T: FromRedisValue>(
        &self,
        cmds: Vec<Cmd>,
    ) -> RedisResult<Vec<T>> {
        match self {
            Self::Single(conn) => Self::pipeline(cmds).query_async(&mut conn.clone()).await,
            Self::Listener(conn) => Self::pipeline(cmds).query_async(&mut conn.clone()).await,
            #[cfg(feature = "cluster")]
            Self::Cluster(conn) => {
                let sends = cmds.iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<T>(&mut conn).await }
                });
                join_all(sends).await.into_iter().collect()
            }
        }
    }

    fn pipeline(cmds: Vec<Cmd>) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for cmd in cmds {
            pipe.add_command(cmd);
        }
        pipe
    }

    /// The nodes that each hold a share of the keys: the server itself, or
    /// every cluster primary (as `host:port`).
    pub(crate) async fn key_holders(&self) -> RedisResult<Vec<Node>> {
        match self {
            Self::Single(_) | Self::Listener(_) => Ok(vec![Node::Only]),
            #[cfg(feature = "cluster")]
            Self::Cluster(conn) => cluster::primaries(conn).await,
        }
    }

    /// The primary that serves `key`'s hash slot now, as the cluster sees
    /// it (the server itself on a single node).
    ///
    /// Asks `CLUSTER SLOTS` of the node the cluster client routes the slot
    /// to: after a failover that node is either the new primary, or an old
    /// one that knows its successor; a dead one fails the call (and makes
    /// the client refresh its slot map), and the caller retries.
    #[cfg_attr(not(feature = "cluster"), expect(unused_variables))]
    pub(crate) async fn slot_primary(&self, key: &str) -> RedisResult<Node> {
        match self {
            #[cfg(feature = "cluster")]
            Self::Cluster(conn) => cluster::slot_primary(conn, key).await,
            _ => Ok(Node::Only),
        }
    }

    /// Sends `cmd` to one node of [`key_holders`](Self::key_holders).
    pub(crate) async fn query_node<T: FromRedisValue>(
        &self,
        node: &Node,
        cmd: Cmd,
    ) -> RedisResult<T> {
        match (self, node) {
            #[cfg(feature = "cluster")]
            (Self::Cluster(conn), Node::Address { host, port }) => {
                cluster::query_node(conn, host, *port, cmd).await
            }
            (_, Node::Only | Node::Address { .. }) => self.query(&cmd).await,
        }
    }
}

/// A dedicated RESP3 connection for the bus receiver: to the server, or
/// with `node` to that cluster node (the primary of the bus channel's slot,
/// or a primary to track: client tracking is per node), with the first
/// seed's credentials and TLS settings. Pub/sub messages and client-tracking
/// invalidations arrive on `pushes`, followed by a `Disconnection` push
/// when the connection is lost; it never reconnects by itself.
pub(crate) async fn listener(
    topology: &RedisTopology,
    node: Option<&Node>,
    settings: ConnectSettings,
    pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
) -> RedisResult<MultiplexedConnection> {
    let url = match topology {
        RedisTopology::Single(url) => url.as_str(),
        RedisTopology::Cluster(nodes) => nodes
            .first()
            .map(String::as_str)
            .ok_or_else(|| unexpected("cluster topology without nodes"))?,
    };
    // The seed's credentials and TLS settings, at the node's address.
    let mut info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
    if let Some(Node::Address { host, port }) = node {
        let addr = match info.addr().clone() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure,
                tls_params,
            },
            _ => ConnectionAddr::Tcp(host.clone(), *port),
        };
        info = info.set_addr(addr);
    }
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(resp3);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout))
        .set_push_sender(pushes);
    redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// One node to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// The single server.
    Only,
    /// A cluster primary.
    #[cfg_attr(not(feature = "cluster"), expect(dead_code))]
    Address { host: String, port: u16 },
}

/// A connection refused for a reason retrying cannot fix: the URL's
/// topology is not the server's.
pub(super) fn misconfigured(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, what))
}

pub(super) fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_url_is_a_single_node() {
        assert_eq!(
            RedisTopology::parse(" redis://127.0.0.1:6379/2 ").unwrap(),
            RedisTopology::Single("redis://127.0.0.1:6379/2".into())
        );
    }

    #[test]
    fn cluster_scheme_and_lists_are_clusters() {
        let expected =
            RedisTopology::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()]);
        assert_eq!(
            RedisTopology::parse("redis+cluster://a:7000,b:7001").unwrap(),
            expected
        );
        assert_eq!(
            RedisTopology::parse("redis://a:7000, redis://b:7001").unwrap(),
            expected
        );
        assert_eq!(
            RedisTopology::parse("redis+cluster://a:7000").unwrap(),
            RedisTopology::Cluster(vec!["redis://a:7000".into()])
        );
        assert!(expected.is_cluster());
    }

    #[test]
    fn bad_urls_are_config_errors_without_passwords() {
        for url in ["http://x", "redis+cluster://a:1,", "not a url"] {
            assert!(RedisTopology::parse(url).unwrap_err().is_config(), "{url}");
        }
        let error = RedisTopology::parse("redis://user:s3cret@host:notaport").unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }

    #[test]
    fn debug_and_display_hide_passwords() {
        let topology = RedisTopology::parse("redis://:s3cret@localhost:6379").unwrap();
        assert!(!format!("{topology:?}").contains("s3cret"));
        assert_eq!(topology.to_string(), "redis://***@localhost:6379");
        assert_eq!(redact("redis://localhost"), "redis://localhost");
    }
}
