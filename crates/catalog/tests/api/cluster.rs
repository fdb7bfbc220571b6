//! Issue 17's promises on a Redis Cluster (three primaries, each with a
//! replica, [`PrivateCluster`]): a primary killed under read load fails no
//! request and slows none past 2 s, and its slots are used as L2 again
//! once its replica took over; the bus carries writes again after a
//! failover; `DELETE /cache` empties every primary; changes made in
//! PostgreSQL reach every instance as on a single Redis; and write-behind
//! writes acknowledged by a `catalog serve` process survive its `kill -9`
//! together with the loss of a primary holding part of the queue.
//!
//! Each test starts its own cluster and runs on a fresh PostgreSQL database
//! under a fresh key prefix; the shared Redis is never touched.

use std::collections::{BTreeMap, HashMap};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use catalog::config::{ServeConfig, WriteStrategy};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use testkit::{PrivateCluster, eventually, free_port, unique_prefix};
use tokio::task::JoinHandle;

use crate::helpers::{
    Backend, Row, TOKEN, TestApp, TestDb, pg_rows, pg_rows_within, pg_server_addr,
    product_eventually, read_product, scrape, use_redis, write_behind_stats, x_cache,
};
use crate::process::{create, exit_within, signal, wait_until_healthy, write_behind_server};
use crate::proxy::Proxy;

/// Issue 17: no request slower than this while a primary fails over.
const REQUEST_BOUND: Duration = Duration::from_secs(2);
/// A request of the load slower than this is given up (and is a failure):
/// far past [`REQUEST_BOUND`], so that a hang shows as one.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cluster has to fail over a killed primary (node timeout
/// 1 s; it takes two to three).
const FAILOVER_LIMIT: Duration = Duration::from_secs(10);
/// How long the load goes on once the cluster is whole again.
const LOAD_AFTER_FAILOVER: Duration = Duration::from_secs(3);
/// SPEC §4 (as in `listen.rs`): a change made outside the API is seen
/// within a second.
const WITHIN: Duration = Duration::from_secs(1);
/// Bound of the waits that set a test up.
const SETTLE: Duration = Duration::from_secs(5);
/// Products created for the load test.
const PRODUCTS: usize = 50;
/// Concurrent readers of the load on each instance.
const READERS_PER_INSTANCE: usize = 2;

/// The Redis key of product `id` under `prefix` (the product cache's
/// namespace is `product`).
fn product_key(prefix: &str, id: i64) -> String {
    format!("{prefix}product:{id}")
}

/// Points `config` at the cluster at `url` (a `redis+cluster://` URL)
/// under `prefix`.
fn use_cluster(config: &mut ServeConfig, url: &str, prefix: &str) {
    use_redis(config, prefix);
    config.cache.redis_url = Some(url.to_owned().into());
}

/// Two instances on one fresh PostgreSQL database, on the cluster at `url`
/// under `prefix`, each configured further by `tweak`.
async fn spawn_pair(
    url: &str,
    prefix: &str,
    tweak: impl Fn(&mut ServeConfig),
) -> (Arc<TestApp>, Arc<TestApp>) {
    let configure = |c: &mut ServeConfig| {
        use_cluster(c, url, prefix);
        tweak(c);
    };
    let a = TestApp::spawn_with(Backend::Postgres, configure).await;
    let b = a.spawn_peer(configure).await;
    (Arc::new(a), Arc::new(b))
}

/// The keys under `prefix` that node `index` holds, but the bus's change
/// logs (`…:bus:log`), which a clear keeps and writes to. `SCAN`, as a
/// cluster has no command that lists every node's keys.
async fn keys_on(cluster: &PrivateCluster, index: usize, prefix: &str) -> Vec<String> {
    let mut node = cluster.node(index).await;
    let mut keys = testkit::scan_keys(&mut node, &format!("{prefix}*")).await;
    keys.retain(|key| !key.ends_with(":bus:log"));
    keys
}

/// One request of the read load.
#[derive(Debug)]
struct Sample {
    sent: Instant,
    took: Duration,
    id: i64,
    /// `X-Cache` of a 200, or what went wrong instead.
    outcome: Result<String, String>,
}

/// Readers looping `GET /products/{id}` over the products on every
/// instance, each from another product on, until stopped; every request
/// is kept, timed from before it is sent to its whole body read.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    readers: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn spawn(apps: &[&Arc<TestApp>], ids: &[i64]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let mut readers = Vec::new();
        let spread = apps.len() * READERS_PER_INSTANCE;
        for (n, app) in apps
            .iter()
            .flat_map(|app| std::iter::repeat_n(*app, READERS_PER_INSTANCE))
            .enumerate()
        {
            let (app, ids) = (Arc::clone(app), ids.to_vec());
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            readers.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut next = n * ids.len() / spread;
                while !stop.load(Ordering::Relaxed) {
                    let id = ids[next % ids.len()];
                    next += 1;
                    let started = Instant::now();
                    let outcome = get_product(&app, id).await;
                    samples.push(Sample {
                        sent: started,
                        took: started.elapsed(),
                        id,
                        outcome,
                    });
                    sent.fetch_add(1, Ordering::Relaxed);
                    // Reads keep going, without taking every CPU cycle from
                    // the instances (which run on this runtime).
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                samples
            }));
        }
        Self {
            stop,
            sent,
            readers,
        }
    }

    /// Requests sent so far.
    fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the readers; every request they made, in no order.
    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for reader in self.readers {
            samples.extend(reader.await.expect("a reader does not panic"));
        }
        samples
    }
}

/// `GET /products/{id}`, body read: `X-Cache` of a 200, else what failed.
async fn get_product(app: &TestApp, id: i64) -> Result<String, String> {
    let response = app
        .request(Method::GET, &format!("/products/{id}"))
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("not answered: {e}"))?;
    let status = response.status();
    let source = x_cache(&response);
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("{status}, body not read: {e}"))?;
    if status == StatusCode::OK {
        Ok(source)
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}

/// How many of `samples` answered each `X-Cache` (or failed).
fn sources(samples: &[&Sample]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for sample in samples {
        let source = match &sample.outcome {
            Ok(source) => source.clone(),
            Err(_) => "failed".to_owned(),
        };
        *counts.entry(source).or_insert(0) += 1;
    }
    counts
}

/// Two instances under a read load of 50 products; the primary serving
/// some of their keys is killed (SIGKILL) and its replica takes over. No
/// request fails, none takes 2 s or more (issue 17), and once the cluster
/// is whole again both instances read the failed-over products from L2.
///
/// Each instance's L1 admits no product (its one byte is less than any
/// product weighs), so that every read of the load goes to L2 and meets
/// the dead primary (as a large catalog's L1 misses would), and a read
/// after the failover says whether L2 answered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_read_load_fails_no_request() {
    let mut cluster = PrivateCluster::start().await;
    let prefix = unique_prefix();
    let (a, b) = spawn_pair(&cluster.cluster_url(), &prefix, |c| {
        c.cache.l1_max_bytes = 1;
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..PRODUCTS {
        ids.push(
            a.create_product_id(&format!("Load {i}"), "tools", 1.0)
                .await,
        );
    }
    let victim = cluster.primary_for_key(&product_key(&prefix, ids[0])).await;
    let mut on_victim = Vec::new();
    for &id in &ids {
        if cluster.primary_for_key(&product_key(&prefix, id)).await == victim {
            on_victim.push(id);
        }
    }
    let load = Load::spawn(&[&a, &b], &ids);
    // Every product read at least once, so in L2 (on the victim for its
    // share): the readers start a quarter of the products apart.
    let warmed = eventually(SETTLE, async || load.sent() >= 3 * PRODUCTS).await;
    assert!(
        warmed,
        "the load made only {} reads in {SETTLE:?}",
        load.sent()
    );
    let held = keys_on(&cluster, victim, &prefix).await;
    assert!(
        on_victim
            .iter()
            .all(|id| held.contains(&product_key(&prefix, *id))),
        "the victim (node {victim}) does not hold the keys of products {on_victim:?}: {held:?}"
    );

    cluster.kill(victim);
    let killed = Instant::now();
    cluster.wait_failed_over(FAILOVER_LIMIT).await;
    let failed_over = Instant::now();
    // The load's span past the failover: a duration, not a condition.
    tokio::time::sleep(LOAD_AFTER_FAILOVER).await;
    let samples = load.stop().await;
    let successor = cluster.primary_for_key(&product_key(&prefix, ids[0])).await;
    let mut after = Vec::new();
    for app in [&a, &b] {
        for &id in &on_victim {
            let (status, source, _) = read_product(app, id).await;
            after.push((id, status.as_u16(), source));
        }
    }

    let failed: Vec<String> = samples
        .iter()
        .filter_map(|s| {
            let failure = s.outcome.as_ref().err()?;
            let at = s.sent.saturating_duration_since(killed);
            Some(format!(
                "product {} sent {at:?} after the kill: {failure}",
                s.id
            ))
        })
        .collect();
    let slowest = samples.iter().max_by_key(|s| s.took).expect("the load ran");
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= killed && s.sent < failed_over)
        .collect();
    let summary = format!(
        "{} requests, {} failed; failover {:?} after the kill; slowest {:?} (product {}, sent \
         {:?} after the kill); answers before the kill {:?}, during the failover {:?}, after it {:?}",
        samples.len(),
        failed.len(),
        failed_over - killed,
        slowest.took,
        slowest.id,
        slowest.sent.saturating_duration_since(killed),
        sources(
            &samples
                .iter()
                .filter(|s| s.sent < killed)
                .collect::<Vec<_>>()
        ),
        sources(&during),
        sources(
            &samples
                .iter()
                .filter(|s| s.sent >= failed_over)
                .collect::<Vec<_>>()
        ),
    );
    eprintln!("{summary}");
    assert_ne!(successor, victim);
    assert!(
        !during.is_empty(),
        "no request was sent during the failover"
    );
    assert!(
        failed.is_empty(),
        "{} requests failed, the first ones: {:?}; {summary}",
        failed.len(),
        &failed[..failed.len().min(20)]
    );
    assert!(
        slowest.took < REQUEST_BOUND,
        "a request took {:?} (bound {REQUEST_BOUND:?}); {summary}",
        slowest.took
    );
    let not_from_l2: Vec<&(i64, u16, String)> = after
        .iter()
        .filter(|(_, status, source)| (*status, source.as_str()) != (200, "HIT-L2"))
        .collect();
    assert!(
        not_from_l2.is_empty(),
        "{LOAD_AFTER_FAILOVER:?} after the failover, failed-over products were not read \
         from L2 (product, status, X-Cache): {not_from_l2:?}"
    );
}

/// Products read until their keys are on all three primaries; `DELETE
/// /cache` leaves none of the cache's keys on any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cache_removes_keys_on_every_master() {
    let cluster = PrivateCluster::start().await;
    let prefix = unique_prefix();
    let url = cluster.cluster_url();
    let app = TestApp::spawn_with(Backend::Postgres, |c| use_cluster(c, &url, &prefix)).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            app.create_product_id(&format!("Clear {i}"), "tools", 1.0)
                .await,
        );
    }
    for &id in &ids {
        assert_eq!(read_product(&app, id).await.0, StatusCode::OK);
    }
    let primaries = cluster.primaries().await;
    let mut before = Vec::new();
    for &index in &primaries {
        before.push(keys_on(&cluster, index, &prefix).await.len());
    }

    let cleared = app.delete("/cache").await;
    let mut left = Vec::new();
    for &index in &primaries {
        left.push((index, keys_on(&cluster, index, &prefix).await));
    }
    let anonymous = app.request(Method::DELETE, "/cache").send().await.unwrap();

    assert_eq!(primaries.len(), 3);
    assert!(
        before.iter().all(|&n| n > 0),
        "keys per primary before the clear: {before:?}"
    );
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert!(
        left.iter().all(|(_, keys)| keys.is_empty()),
        "keys left per primary (node, keys): {left:?}"
    );
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

/// Concurrent write-behind PATCHes of one product on a cluster all
/// succeed, each as the next version. A writer that lost the race for the
/// next version reads the product again until the winner's value is in
/// Redis, which on a cluster comes only after the winner's `WAIT` for a
/// replica; with 15 ms of retries, some of these writers ran out and got a
/// 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_write_behind_patches_of_one_product_on_a_cluster_all_succeed() {
    const WRITERS: i32 = 24;
    let cluster = PrivateCluster::start().await;
    let prefix = unique_prefix();
    let app = TestApp::spawn_with(Backend::Postgres, |c| {
        use_cluster(c, &cluster.cluster_url(), &prefix);
        c.cache.write_strategy = WriteStrategy::WriteBehind;
    })
    .await;
    let id = app.create_product_id("Contended", "tools", 1.0).await;

    let answers = join_all((1..=WRITERS).map(|n| {
        let app = &app;
        async move {
            let body = json!({"price": 1.0 + f64::from(n)});
            let response = app
                .send_json(Method::PATCH, &format!("/products/{id}"), &body)
                .await;
            let status = response.status();
            (status, response.text().await.unwrap_or_default())
        }
    }))
    .await;

    let failed: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status != StatusCode::OK)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {WRITERS} PATCHes failed: {failed:?}",
        failed.len()
    );
    let product = app.get_json(&format!("/products/{id}")).await;
    assert_eq!(product["version"], 1 + i64::from(WRITERS), "{product}");
}

/// A product cached in both instances' L1, then changed with plain SQL:
/// both answer the new version within a second (the change listener
/// invalidates through the cluster's L2 and bus).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_changes_reach_both_instances_on_a_cluster() {
    let cluster = PrivateCluster::start().await;
    let prefix = unique_prefix();
    let (a, b) = spawn_pair(&cluster.cluster_url(), &prefix, |_| {}).await;
    let id = a.create_product_id("Listened", "tools", 1.0).await;
    for app in [&a, &b] {
        // A read that races the bus message of the create is rightly kept
        // out of L1; read until the product is held.
        let held = product_eventually(app, id, SETTLE, |_, source, _| source == "HIT-L1").await;
        assert!(held, "never cached in L1");
    }
    let mut conn = PgConnection::connect(&a.db.url()).await.unwrap();

    sqlx::query("UPDATE products SET price = 42.50, version = version + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    let changed = Instant::now();
    let fresh = |status: StatusCode, _: &str, body: &Value| {
        status == StatusCode::OK && body["price"] == json!(42.5) && body["version"] == 2
    };
    let on_a = product_eventually(&a, id, WITHIN, fresh).await;
    let on_b = product_eventually(&b, id, WITHIN.saturating_sub(changed.elapsed()), fresh).await;

    assert!(on_a, "A kept serving the old version");
    assert!(on_b, "B kept serving the old version");
}

/// Two instances hold a product in L1; a primary is killed and its replica
/// takes over; then the product is written on A. B answers the new version
/// within [`SETTLE`]: its bus reconnected to the cluster as it now is and
/// heard the write (the bound is generous; without the bus B would answer
/// the old version until its L1 TTL, 300 s).
///
/// The killed primary serves the bus's shard channel; `first_seed_killed`
/// also makes it the first seed of both instances' `REDIS_URL` (where a
/// classic subscription would have tied the bus).
async fn a_write_after_a_failover_reaches_the_other_instance(first_seed_killed: bool) {
    let mut cluster = PrivateCluster::start().await;
    let prefix = unique_prefix();
    // The primary of the bus's shard channel (what tiercache's
    // `channel_and_log` names it), so that the bus has to follow it.
    let victim = cluster
        .primary_for_key(&format!("{{{prefix}product:bus}}"))
        .await;
    let first_seed = if first_seed_killed {
        victim
    } else {
        cluster.replicas().await[0]
    };
    let (a, b) = spawn_pair(&cluster.cluster_url_from(first_seed), &prefix, |_| {}).await;
    let id = a.create_product_id("Bus", "tools", 1.0).await;
    for app in [&a, &b] {
        let held = product_eventually(app, id, SETTLE, |_, source, _| source == "HIT-L1").await;
        assert!(held, "never cached in L1");
    }
    cluster.kill(victim);
    cluster.wait_failed_over(FAILOVER_LIMIT).await;

    let patched = a
        .send_json(
            Method::PATCH,
            &format!("/products/{id}"),
            &json!({"price": 2.5}),
        )
        .await;
    let written = Instant::now();
    let fresh = |_: StatusCode, _: &str, body: &Value| body["price"] == json!(2.5);
    let b_fresh = product_eventually(&b, id, SETTLE, fresh).await;
    let metrics = scrape(&b).await;
    let mut bus: Vec<(&String, &u64)> = metrics
        .iter()
        .filter(|(series, _)| series.starts_with("cache_bus_"))
        .collect();
    bus.sort();

    assert_eq!(patched.status(), StatusCode::OK);
    assert!(
        b_fresh,
        "B still answered the old version {:?} after the write on A (first seed killed: \
         {first_seed_killed}); B's bus: {bus:?}",
        written.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_failover_reaches_the_other_instance_through_a_surviving_seed() {
    a_write_after_a_failover_reaches_the_other_instance(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_failover_reaches_the_other_instance_when_the_first_seed_died() {
    a_write_after_a_failover_reaches_the_other_instance(true).await;
}

/// Products the write-behind crash test writes.
const CRASH_PRODUCTS: usize = 24;
/// Updates each of them gets in the burst, one after the other.
const CRASH_WRITES_PER_PRODUCT: usize = 8;
/// Issue: once the instance is restarted, every acknowledged write is in
/// the store within this long.
const RECOVERY: Duration = Duration::from_secs(20);

/// One write of the burst: the product, what was sent, and the answer.
#[derive(Debug)]
struct Acknowledgement {
    id: i64,
    method: Method,
    status: StatusCode,
    body: Value,
    /// When the answer came, before the crash.
    at: Instant,
}

/// A `catalog serve` child, SIGKILLed when dropped (a failed assertion must
/// not leave it running).
struct Instance(Option<Child>);

impl Instance {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the instance has not been taken")
    }

    fn take(&mut self) -> Child {
        self.0.take().expect("the instance has not been taken")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The queue partitions of the product cache under `prefix` (tiercache's
/// `write_behind::partition`: `{<prefix>product#wb.<n>}`, 8 on a cluster).
fn queue_partitions(prefix: &str) -> Vec<String> {
    (0..8)
        .map(|n| format!("{{{prefix}product#wb.{n}}}"))
        .collect()
}

/// The changes queued in `streams` as node `index` holds them: (product,
/// version) of each entry, in no particular order.
async fn queued_on(cluster: &PrivateCluster, index: usize, streams: &[String]) -> Vec<(i64, i64)> {
    let mut node = cluster.node(index).await;
    let mut queued = Vec::new();
    for stream in streams {
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut node)
            .await
            .unwrap();
        for (_, fields) in entries {
            queued.push((fields["k"].parse().unwrap(), fields["v"].parse().unwrap()));
        }
    }
    queued
}

/// Issue: "write-behind: a burst of updates, the instance `kill -9`ed and
/// a master killed, instance restarted: every acknowledged write is in the
/// store, at its acknowledged version, within 20 s".
///
/// A `catalog serve` process (write-behind, the library's default replica
/// wait) on the cluster, its PostgreSQL reached through a proxy that is cut
/// once the products exist, so that every write of the burst (PATCHes and
/// PUTs, products in parallel, each product's writes in turn) stays queued.
/// Then the process is SIGKILLed and the primary holding queue partition 0
/// (and whichever others it holds) is killed; once its replica took over,
/// the store comes back and the process is started again on the same
/// database and `REDIS_URL`. Every product's row must reach the last
/// version acknowledged for it, with that write's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_write_behind_writes_survive_an_instance_crash_and_a_primary_failover() {
    let mut cluster = PrivateCluster::start().await;
    let prefix = unique_prefix();
    let redis_url = cluster.cluster_url();
    let db = TestDb::create(Backend::Postgres).await;
    let proxy = Proxy::start(pg_server_addr().await).await;
    let database_url = db.url_via(proxy.addr());
    let port = free_port();
    let mut first = Instance(Some(write_behind_server(
        &database_url,
        &redis_url,
        &prefix,
        port,
    )));
    wait_until_healthy(port, first.child()).await;
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut ids = Vec::new();
    for i in 0..CRASH_PRODUCTS {
        ids.push(
            create(&client, &base, &format!("Crash {i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let partitions = queue_partitions(&prefix);
    let victim = cluster.primary_for_key(&partitions[0]).await;
    let mut on_victim = Vec::new();
    for partition in &partitions {
        if cluster.primary_for_key(partition).await == victim {
            on_victim.push(partition.clone());
        }
    }
    proxy.cut();

    let burst = join_all(ids.iter().map(|&id| {
        let (client, base) = (&client, &base);
        async move {
            let mut answers = Vec::new();
            for n in 0..CRASH_WRITES_PER_PRODUCT {
                let cents = 100 * id + 1 + i64::try_from(n).unwrap();
                let price = cents as f64 / 100.0;
                let (method, body) = if n % 3 == 2 {
                    let name = format!("Crash {id} put {n}");
                    (
                        Method::PUT,
                        json!({"name": name, "price": price, "category": "tools"}),
                    )
                } else {
                    (Method::PATCH, json!({"price": price}))
                };
                let response = client
                    .request(method.clone(), format!("{base}/products/{id}"))
                    .bearer_auth(TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body = response.json().await.unwrap_or(Value::Null);
                answers.push(Acknowledgement {
                    id,
                    method,
                    status,
                    body,
                    at: Instant::now(),
                });
            }
            answers
        }
    }))
    .await;
    let writes: Vec<Acknowledgement> = burst.into_iter().flatten().collect();
    let stats_before_crash = write_behind_stats(&client, &base).await;
    let queued_on_victim = queued_on(&cluster, victim, &on_victim).await;
    let mut sql = db.sql().await;
    let rows_before_crash = pg_rows(&mut sql, &ids).await;

    // `Child::kill` is SIGKILL: no drain, no goodbye.
    let mut crashed = first.take();
    crashed.kill().unwrap();
    crashed.wait().unwrap();
    cluster.kill(victim);
    let killed = Instant::now();
    cluster.wait_failed_over(FAILOVER_LIMIT).await;
    let failed_over = killed.elapsed();
    proxy.restore();
    let port = free_port();
    let restarted_at = Instant::now();
    let mut second = Instance(Some(write_behind_server(
        &database_url,
        &redis_url,
        &prefix,
        port,
    )));
    wait_until_healthy(port, second.child()).await;
    let healthy = restarted_at.elapsed();
    let mut expected: HashMap<i64, Option<Row>> = HashMap::new();
    let mut acknowledged_at: HashMap<i64, Duration> = HashMap::new();
    for write in writes.iter().filter(|w| w.status.is_success()) {
        // Each product's writes ran in turn: its last acknowledged write is
        // its newest version.
        expected.insert(write.id, Some(Row::of(&write.body)));
        acknowledged_at.insert(write.id, killed.saturating_duration_since(write.at));
    }
    let rows = pg_rows_within(
        &mut sql,
        &expected,
        RECOVERY.saturating_sub(restarted_at.elapsed()),
    )
    .await;
    let recovered = restarted_at.elapsed();
    let stats_after = write_behind_stats(&client, &format!("http://127.0.0.1:{port}")).await;
    let second = second.take();
    signal(&second, "TERM");
    let stopped = exit_within(second, Duration::from_secs(30)).await;

    let refused: Vec<String> = writes
        .iter()
        .filter(|w| !w.status.is_success())
        .map(|w| format!("{} {}: {} {}", w.method, w.id, w.status, w.body))
        .collect();
    let mut lost: Vec<String> = expected
        .iter()
        .filter(|(id, row)| rows.get(id) != Some(row))
        .map(|(id, row)| {
            let queued: Vec<i64> = queued_on_victim
                .iter()
                .filter(|(k, _)| k == id)
                .map(|(_, v)| *v)
                .collect();
            format!(
                "product {id}: acknowledged {row:?} {:?} before the kill, PostgreSQL holds {:?}; \
                 versions queued on the killed primary: {queued:?}",
                acknowledged_at[id],
                rows.get(id)
            )
        })
        .collect();
    lost.sort();
    let summary = format!(
        "{} writes; killed node {victim} holding partitions {on_victim:?} with {} queued changes; \
         failover {failed_over:?} after the kill; restarted instance healthy after {healthy:?}, \
         rows checked after {recovered:?}; stats before the crash {stats_before_crash}, after \
         the restart {stats_after}",
        writes.len(),
        queued_on_victim.len(),
    );
    eprintln!("{summary}");
    assert!(refused.is_empty(), "writes not acknowledged: {refused:?}");
    assert_eq!(expected.len(), CRASH_PRODUCTS);
    assert!(
        expected
            .values()
            .flatten()
            .all(|row| row.version == 1 + CRASH_WRITES_PER_PRODUCT as i64),
        "{expected:?}"
    );
    assert!(
        rows_before_crash
            .values()
            .flatten()
            .all(|row| row.version == 1),
        "writes reached the store before the crash: {rows_before_crash:?}"
    );
    assert!(
        !queued_on_victim.is_empty(),
        "the killed primary held none of the queued changes; {summary}"
    );
    assert_eq!(
        stats_before_crash["unreplicated"], 0,
        "writes were acknowledged without a replica; {summary}"
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes missing {RECOVERY:?} after the restart: {lost:#?}; {summary}"
    );
    let stopped = stopped.expect("the restarted instance stops on SIGTERM");
    assert!(stopped.status.success(), "{:?}", stopped.status);
}
