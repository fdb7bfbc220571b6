//! Issue 15's promises, seen over HTTP: the tests that make Redis fail
//! under two instances sharing it, and check what clients are answered.
//!
//! - A write whose Redis step fails (Redis hung, or killed and restarted
//!   empty) is still acknowledged, the writing instance never answers an
//!   older version afterwards, and once Redis answers again every instance
//!   answers what the store holds within 1 s.
//! - An instance that missed bus messages (its connections dropped) replays
//!   the change log: only the products changed meanwhile leave its L1.
//! - A product key set or deleted in Redis by anyone else leaves every
//!   instance's L1 within 1 s (client tracking).
//!
//! Each test runs two instances, A and B, on one fresh PostgreSQL database,
//! with a private `redis-server` ([`PrivateRedis`]) under a fresh prefix,
//! and 30 products created on A. The shared Redis is never touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use catalog::config::ServeConfig;
use futures_util::future::join_all;
use redis::AsyncCommands;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{PrivateRedis, eventually, poll_until, unique_prefix};
use tokio::task::JoinHandle;

use crate::helpers::{Backend, TestApp, pg_rows, read_product, sample, scrape, use_redis};

/// Issue 15: how soon every instance answers the current version once
/// Redis answers again, and how soon a change made in Redis leaves L1.
const WITHIN: Duration = Duration::from_secs(1);
/// How long past [`WITHIN`] convergence is still watched, so that a
/// failure says how long it did take.
const MEASURED_UP_TO: Duration = Duration::from_secs(5);
/// Bound of the waits that set a test up (L1 filled, bus back in step).
const SETTLE: Duration = Duration::from_secs(5);
/// Longer than any test: nothing leaves L1 by age.
const L1_TTL: Duration = Duration::from_secs(10);
/// Products created on A.
const PRODUCTS: usize = 30;
/// PATCH writes on A in a fault test, spread over the products.
const WRITES: usize = 40;
/// Writes acknowledged before Redis fails.
const WRITES_BEFORE_FAULT: usize = 8;
/// Writes acknowledged before a killed Redis is restarted (the rest go on
/// while it restarts and after).
const WRITES_BEFORE_RESTART: usize = 30;
/// Time between writes while Redis is killed and restarted.
const WRITE_PACE: Duration = Duration::from_millis(5);
/// Least time Redis stays dead before it is restarted.
const DEAD_FOR: Duration = Duration::from_millis(300);
/// A read of the background reader slower than this counts as failed.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// Two instances on one database and one private Redis, and the products
/// created on A.
struct Pair {
    a: Arc<TestApp>,
    b: Arc<TestApp>,
    prefix: String,
    ids: Vec<i64>,
    /// Each product's JSON as A answered its creation.
    created: HashMap<i64, Value>,
    /// Declared last: dropped (killed) after the instances.
    redis: PrivateRedis,
}

impl Pair {
    async fn start() -> Self {
        let redis = PrivateRedis::start().await;
        let prefix = unique_prefix();
        let url = redis.url();
        let configure = |c: &mut ServeConfig| {
            use_redis(c, &prefix);
            c.cache.redis_url = Some(url.clone().into());
            c.cache.l1_ttl = L1_TTL;
        };
        let a = TestApp::spawn_with(Backend::Postgres, configure).await;
        let b = a.spawn_peer(configure).await;
        let mut ids = Vec::new();
        let mut created = HashMap::new();
        for i in 0..PRODUCTS {
            let product = a.create_product(&format!("Fault {i}"), "tools", 1.0).await;
            let id = product["id"].as_i64().unwrap();
            ids.push(id);
            created.insert(id, product);
        }
        Self {
            a: Arc::new(a),
            b: Arc::new(b),
            prefix,
            ids,
            created,
            redis,
        }
    }

    /// Each product's version at its creation.
    fn created_versions(&self) -> HashMap<i64, i64> {
        self.created
            .iter()
            .map(|(id, product)| (*id, product["version"].as_i64().unwrap()))
            .collect()
    }

    /// Each product's version in PostgreSQL, read with SQL.
    async fn pg_versions(&self) -> HashMap<i64, i64> {
        let mut conn = self.a.db.sql().await;
        pg_rows(&mut conn, &self.ids)
            .await
            .into_iter()
            .map(|(id, row)| {
                let row = row.unwrap_or_else(|| panic!("product {id} is not in PostgreSQL"));
                (id, row.version)
            })
            .collect()
    }
}

/// One answer to `GET /products/{id}`.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    /// `X-Cache` (empty when absent).
    source: String,
    body: Value,
}

impl Answer {
    fn version(&self) -> Option<i64> {
        self.body["version"].as_i64()
    }

    /// `200 v3 HIT-L1`, `503 MISS`: for assertion messages.
    fn summary(&self) -> String {
        match self.version() {
            Some(version) => format!("{} v{version} {}", self.status.as_u16(), self.source),
            None => format!("{} {}", self.status.as_u16(), self.source),
        }
    }
}

async fn read(app: &TestApp, id: i64) -> Answer {
    let (status, source, body) = read_product(app, id).await;
    Answer {
        status,
        source,
        body,
    }
}

/// Reads every id on `app` at once.
async fn read_all(app: &TestApp, ids: &[i64]) -> Vec<(i64, Answer)> {
    join_all(
        ids.iter()
            .map(|id| async move { (*id, read(app, *id).await) }),
    )
    .await
}

/// `PATCH /products/{id}` with a new price; returns the version the write
/// acknowledged.
async fn patch_price(app: &TestApp, id: i64, price: f64) -> i64 {
    let response = app
        .authed(Method::PATCH, &format!("/products/{id}"))
        .json(&json!({ "price": price }))
        .send()
        .await
        .expect("PATCH is sent");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(
        status,
        StatusCode::OK,
        "PATCH of product {id} was not acknowledged: {body}"
    );
    body["version"]
        .as_i64()
        .unwrap_or_else(|| panic!("PATCH of product {id} answered no version: {body}"))
}

/// The product and the new price of write number `i` (0-based): the writes
/// go round the products, so the first ones are written twice.
fn write(ids: &[i64], i: usize) -> (i64, f64) {
    (ids[i % ids.len()], f64::from(200 + i as u32) / 100.0)
}

/// Reads each of `ids` on `app` until it is answered from L1 (a bus message
/// of A's creation may reach B while B loads the product, and then B rightly
/// keeps it out of L1); asserts they all got there.
async fn fill_l1(app: &TestApp, name: &str, ids: &[i64]) {
    let started = Instant::now();
    let mut missing = Vec::new();
    for id in ids {
        let limit = SETTLE.saturating_sub(started.elapsed());
        let in_l1 = poll_until(
            limit,
            async || read(app, *id).await,
            |a| a.source == "HIT-L1",
        );
        if let Err(last) = in_l1.await {
            missing.push(format!("{id}: {}", last.summary()));
        }
    }
    assert!(
        missing.is_empty(),
        "{name} did not answer these products from L1 within {SETTLE:?}: {missing:?}"
    );
}

/// Reads every product on A once; the answers older than the version A
/// acknowledged (or not 200), as `product 7: 200 v2 HIT-L1, acknowledged v3`.
async fn older_on_a(pair: &Pair, acked: &HashMap<i64, i64>) -> Vec<String> {
    read_all(&pair.a, &pair.ids)
        .await
        .into_iter()
        .filter(|(id, answer)| {
            answer.status != StatusCode::OK || answer.version() < Some(acked[id])
        })
        .map(|(id, answer)| {
            format!(
                "product {id}: {}, acknowledged v{}",
                answer.summary(),
                acked[&id]
            )
        })
        .collect()
}

/// Reads every product on B in a loop until stopped, and keeps only the
/// failures: every read must be a 200.
struct Reader {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(usize, Vec<String>)>,
}

impl Reader {
    fn spawn(app: &Arc<TestApp>, ids: &[i64]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (app, ids, stop) = (Arc::clone(app), ids.to_vec(), Arc::clone(&stop));
            async move {
                let started = Instant::now();
                let (mut reads, mut failures) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    for id in &ids {
                        let sent = app
                            .request(Method::GET, &format!("/products/{id}"))
                            .timeout(READ_LIMIT)
                            .send()
                            .await;
                        reads += 1;
                        let at = started.elapsed();
                        match sent {
                            Ok(response) if response.status() == StatusCode::OK => {}
                            Ok(response) => failures
                                .push(format!("product {id} at {at:?}: {}", response.status())),
                            Err(error) => failures.push(format!("product {id} at {at:?}: {error}")),
                        }
                        // Reads keep going, without taking every CPU cycle
                        // from the instances.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                (reads, failures)
            }
        });
        Self { stop, task }
    }

    /// Stops the reads; how many were made, and the failures.
    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the reader does not panic")
    }
}

/// How both instances came back in step with PostgreSQL after a fault.
#[derive(Debug)]
struct Convergence {
    /// `since` + [`WITHIN`]: when every answer must be right.
    due: Instant,
    /// The end of the first round in which every product answered its
    /// PostgreSQL version on both instances (unset: not within
    /// [`MEASURED_UP_TO`] past `due`).
    at: Option<Instant>,
    /// The wrong answers of the last round that ended by `due` (of the
    /// first round if none did), as `B: product 7: 200 v2 HIT-L1,
    /// PostgreSQL v3`.
    wrong_when_due: Vec<String>,
    /// A's answers older than the version A acknowledged.
    older_on_a: Vec<String>,
}

/// Reads all products on both instances, round after round, until every
/// answer is the version `expected` (PostgreSQL's) or [`MEASURED_UP_TO`]
/// past `since` + [`WITHIN`]; also collects A's answers older than `acked`.
async fn converge(
    pair: &Pair,
    expected: &HashMap<i64, i64>,
    acked: &HashMap<i64, i64>,
    since: Instant,
) -> Convergence {
    let due = since + WITHIN;
    let mut wrong_when_due = None;
    let mut older = Vec::new();
    let mut at = None;
    // `at` says whether every answer got right, and when.
    let _ = eventually(
        (WITHIN + MEASURED_UP_TO).saturating_sub(since.elapsed()),
        async || {
            let (on_a, on_b) =
                tokio::join!(read_all(&pair.a, &pair.ids), read_all(&pair.b, &pair.ids));
            let ended = Instant::now();
            let mut wrong = Vec::new();
            for (name, answers) in [("A", &on_a), ("B", &on_b)] {
                for (id, answer) in answers {
                    if answer.status != StatusCode::OK || answer.version() != Some(expected[id]) {
                        wrong.push(format!(
                            "{name}: product {id}: {}, PostgreSQL v{}",
                            answer.summary(),
                            expected[id]
                        ));
                    }
                }
            }
            for (id, answer) in &on_a {
                if answer.status != StatusCode::OK || answer.version() < Some(acked[id]) {
                    older.push(format!(
                        "product {id} {:?} after: {}, acknowledged v{}",
                        ended - since,
                        answer.summary(),
                        acked[id]
                    ));
                }
            }
            let done = wrong.is_empty();
            if ended <= due || wrong_when_due.is_none() {
                wrong_when_due = Some(wrong);
            }
            if done {
                at = Some(ended);
            }
            done
        },
    )
    .await;
    Convergence {
        due,
        at,
        wrong_when_due: wrong_when_due.unwrap_or_default(),
        older_on_a: older,
    }
}

impl Convergence {
    /// Asserts both instances answered PostgreSQL's versions by `due`;
    /// `since` says what it counts from.
    fn assert_within(&self, since: &str) {
        let took = match self.at {
            Some(at) => format!(
                "all were right {:?} after {since}",
                at - (self.due - WITHIN)
            ),
            None => format!("some were still wrong {MEASURED_UP_TO:?} past the deadline"),
        };
        assert!(
            self.at.is_some_and(|at| at <= self.due),
            "not every product answered its PostgreSQL version on both instances within \
             {WITHIN:?} of {since}; {took}; wrong in the last round by the deadline \
             ({} answers): {:?}",
            self.wrong_when_due.len(),
            self.wrong_when_due
        );
    }
}

/// Redis hung (SIGSTOP) in the middle of 40 writes on A: every write is
/// acknowledged, A never answers a version older than one it acknowledged
/// while Redis is still hung, every read on B succeeds, and within 1 s of
/// Redis answering again both instances answer PostgreSQL's version of
/// every product (the failed invalidations were retried and announced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_during_writes() {
    let pair = Pair::start().await;
    let reader = Reader::spawn(&pair.b, &pair.ids);
    let mut acked = pair.created_versions();

    let mut paused_at = None;
    for i in 0..WRITES {
        if i == WRITES_BEFORE_FAULT {
            pair.redis.pause();
            paused_at = Some(Instant::now());
        }
        let (id, price) = write(&pair.ids, i);
        acked.insert(id, patch_price(&pair.a, id, price).await);
    }
    let writes_took = paused_at.unwrap().elapsed();
    let mut older = older_on_a(&pair, &acked).await;
    older.extend(older_on_a(&pair, &acked).await);
    let expected = pair.pg_versions().await;
    pair.redis.resume();
    let back = pair.redis.answering().await;
    let convergence = converge(&pair, &expected, &acked, back).await;
    let (reads, failures) = reader.stop().await;

    assert!(
        older.is_empty(),
        "with Redis still hung after the last write ({writes_took:?} of writes while hung), \
         A answered older versions than it acknowledged: {older:?}"
    );
    assert_eq!(expected, acked, "PostgreSQL holds what A acknowledged");
    assert!(
        convergence.older_on_a.is_empty(),
        "after Redis came back, A answered older versions than it acknowledged: {:?}",
        convergence.older_on_a
    );
    convergence.assert_within("Redis answering PING after SIGCONT");
    assert!(
        failures.is_empty(),
        "reads on B failed ({} of {reads}): {failures:?}",
        failures.len()
    );
    assert!(reads >= PRODUCTS, "B's reader made only {reads} reads");
}

/// Redis killed (SIGKILL) in the middle of 40 paced writes on A and, a few
/// hundred ms (22 writes) later, restarted empty while the writes go on: every write is
/// acknowledged, A never answers a version older than one it acknowledged
/// after the last write, every read on B succeeds, and both instances
/// answer PostgreSQL's version of every product within 1 s of the later of
/// Redis answering again and the last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_during_writes() {
    let mut pair = Pair::start().await;
    let reader = Reader::spawn(&pair.b, &pair.ids);
    let mut acked = pair.created_versions();
    let done = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (a, ids, done) = (Arc::clone(&pair.a), pair.ids.clone(), Arc::clone(&done));
        async move {
            let mut acks = Vec::new();
            for i in 0..WRITES {
                let (id, price) = write(&ids, i);
                acks.push((id, patch_price(&a, id, price).await));
                done.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(WRITE_PACE).await;
            }
            (acks, Instant::now())
        }
    });

    let writes_done = |count: usize, not_before: Instant| {
        let done = Arc::clone(&done);
        async move {
            // The count returned says whether it got there.
            let _ = eventually(SETTLE, async || {
                done.load(Ordering::SeqCst) >= count && Instant::now() >= not_before
            })
            .await;
            done.load(Ordering::SeqCst)
        }
    };
    let before_kill = writes_done(WRITES_BEFORE_FAULT, Instant::now()).await;
    pair.redis.kill();
    let killed = Instant::now();
    let before_restart = writes_done(WRITES_BEFORE_RESTART, killed + DEAD_FOR).await;
    let dead_for = killed.elapsed();
    let back = pair.redis.restart().await;
    let (acks, last_write) = writer.await.expect("every write is acknowledged");
    for (id, version) in acks {
        acked.insert(id, version);
    }
    let older = older_on_a(&pair, &acked).await;
    let expected = pair.pg_versions().await;
    let since = back.max(last_write);
    let convergence = converge(&pair, &expected, &acked, since).await;
    let (reads, failures) = reader.stop().await;

    assert!(
        before_kill >= WRITES_BEFORE_FAULT,
        "only {before_kill} writes were acknowledged within {SETTLE:?}"
    );
    assert!(
        (WRITES_BEFORE_RESTART..WRITES).contains(&before_restart),
        "{before_restart} writes were acknowledged when Redis was restarted \
         ({dead_for:?} after it was killed)"
    );
    assert!(
        older.is_empty(),
        "right after the last write, A answered older versions than it acknowledged: {older:?}"
    );
    assert_eq!(expected, acked, "PostgreSQL holds what A acknowledged");
    assert!(
        convergence.older_on_a.is_empty(),
        "A answered older versions than it acknowledged: {:?}",
        convergence.older_on_a
    );
    let since = if last_write > back {
        format!(
            "the last write ({:?} after Redis answered PING again)",
            last_write - back
        )
    } else {
        format!(
            "Redis answering PING again ({:?} after the last write)",
            back - last_write
        )
    };
    convergence.assert_within(&since);
    assert!(
        failures.is_empty(),
        "reads on B failed ({} of {reads}): {failures:?}",
        failures.len()
    );
    assert!(reads >= PRODUCTS, "B's reader made only {reads} reads");
}

/// `CLIENT KILL TYPE {kind} SKIPME yes`: how many connections Redis closed.
async fn client_kill(raw: &mut redis::aio::MultiplexedConnection, kind: &str) -> i64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg(kind)
        .arg("SKIPME")
        .arg("yes")
        .query_async(raw)
        .await
        .unwrap()
}

/// Every connection of both instances dropped by Redis (a network blip),
/// and one product written on A right after: B answers its new version
/// within 1 s, and keeps answering the 29 others from L1 (its bus replayed
/// the change log instead of emptying L1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_blip_keeps_unchanged_products_in_l1() {
    let pair = Pair::start().await;
    fill_l1(&pair.b, "B", &pair.ids).await;
    let replays_before = sample(&scrape(&pair.b).await, "cache_bus_replays_total");
    let (changed, unchanged) = (pair.ids[0], &pair.ids[1..]);

    let mut raw = pair.redis.raw().await;
    let pubsub = client_kill(&mut raw, "pubsub").await;
    let normal = client_kill(&mut raw, "normal").await;
    let version = patch_price(&pair.a, changed, 9.5).await;
    let written = Instant::now();
    let is_new = |answer: &Answer| answer.version() == Some(version);
    let read_changed = async || read(&pair.b, changed).await;
    let seen = poll_until(
        WITHIN.saturating_sub(written.elapsed()),
        read_changed,
        is_new,
    )
    .await;
    // Past the promise, only to say how late B was.
    let late = match &seen {
        Ok(_) => String::new(),
        Err(_) => {
            let limit = (WITHIN + MEASURED_UP_TO).saturating_sub(written.elapsed());
            match poll_until(limit, read_changed, is_new).await {
                Ok(_) => format!("B answered it {:?} after the write", written.elapsed()),
                Err(last) => format!(
                    "B still answered {} {:?} after the write",
                    last.summary(),
                    written.elapsed()
                ),
            }
        }
    };
    // The 29 are read once B's bus is back in step (subscribed again and
    // its catch-up done), not before it could have emptied L1.
    // Not asserted here: what it waits for is asserted at the end.
    let _ = eventually(SETTLE, async || {
        let metrics = scrape(&pair.b).await;
        sample(&metrics, "cache_bus_replays_total") > replays_before
            && sample(&metrics, r#"cache_bus_state{state="subscribed"}"#) == 1
    })
    .await;
    let not_from_l1: Vec<String> = read_all(&pair.b, unchanged)
        .await
        .into_iter()
        .filter(|(_, answer)| answer.source != "HIT-L1")
        .map(|(id, answer)| format!("product {id}: {}", answer.summary()))
        .collect();
    let metrics = scrape(&pair.b).await;

    assert!(
        pubsub + normal >= 2,
        "Redis closed only {pubsub} pub/sub and {normal} normal connections"
    );
    if let Err(last) = &seen {
        let mut counters: Vec<(&String, &u64)> = metrics
            .iter()
            .filter(|(series, _)| series.starts_with("cache_bus_"))
            .collect();
        counters.sort();
        panic!(
            "B still answered product {changed} as {} {WITHIN:?} after A acknowledged v{version}; \
             {late}; B's bus counters afterwards: {counters:?}",
            last.summary()
        );
    }
    assert!(
        not_from_l1.is_empty(),
        "after the blip, B answered {} of the {} unchanged products from elsewhere than L1: \
         {not_from_l1:?}",
        not_from_l1.len(),
        unchanged.len()
    );
    let mut clears: Vec<(&String, &u64)> = metrics
        .iter()
        .filter(|(series, _)| series.starts_with("cache_l1_clears_total"))
        .collect();
    clears.sort();
    assert!(!clears.is_empty(), "B exports no cache_l1_clears_total");
    assert!(
        clears.iter().all(|(_, count)| **count == 0),
        "B's bus emptied its L1: {clears:?}"
    );
    let replays = sample(&metrics, "cache_bus_replays_total");
    assert!(
        replays >= 1 && replays > replays_before,
        "B's bus did not replay the change log after the blip \
         (cache_bus_replays_total {replays_before} before, {replays} after)"
    );
}

/// A product key set (with a newer version) and another deleted in Redis
/// by a plain client: within 1 s both instances answer the first as Redis
/// now holds it, and neither answers the second from L1 any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_changed_directly_in_redis_leave_every_l1() {
    let pair = Pair::start().await;
    let (p1, p2) = (pair.ids[0], pair.ids[1]);
    fill_l1(&pair.a, "A", &[p1, p2]).await;
    fill_l1(&pair.b, "B", &[p1, p2]).await;
    let mut raw = pair.redis.raw().await;
    let (key1, key2) = (
        format!("{}product:{p1}", pair.prefix),
        format!("{}product:{p2}", pair.prefix),
    );
    let stored: Option<String> = raw.get(&key1).await.unwrap();
    let stored = stored.unwrap_or_else(|| panic!("{key1} is not in Redis after reads"));
    let mut outside: Value = serde_json::from_str(&stored).unwrap();
    let version = outside["version"].as_i64().unwrap() + 1;
    outside["name"] = json!("changed outside");
    outside["version"] = json!(version);

    let _: () = raw.set(&key1, outside.to_string()).await.unwrap();
    let deleted: i64 = raw.del(&key2).await.unwrap();
    let changed_at = Instant::now();
    // Per instance: the first answer of p1 with the outside name and of p2
    // not from L1 (each with when it came), and the last answer of each.
    let mut firsts: HashMap<(&str, i64), (Answer, Duration)> = HashMap::new();
    let mut last: HashMap<(&str, i64), Answer> = HashMap::new();
    let apps = [("A", &pair.a), ("B", &pair.b)];
    // Whether all were seen is asserted below, from `firsts`.
    let _ = eventually(WITHIN.saturating_sub(changed_at.elapsed()), async || {
        let pending: Vec<(&str, &Arc<TestApp>, i64)> = apps
            .iter()
            .flat_map(|(name, app)| [(*name, *app, p1), (*name, *app, p2)])
            .filter(|(name, _, id)| !firsts.contains_key(&(*name, *id)))
            .collect();
        let answers = join_all(
            pending
                .iter()
                .map(|(name, app, id)| async move { (*name, *id, read(app, *id).await) }),
        )
        .await;
        let at = changed_at.elapsed();
        for (name, id, answer) in answers {
            let done = if id == p1 {
                answer.body["name"] == "changed outside"
            } else {
                answer.source != "HIT-L1"
            };
            if done {
                firsts.insert((name, id), (answer.clone(), at));
            }
            last.insert((name, id), answer);
        }
        firsts.len() == 2 * apps.len()
    })
    .await;

    assert_eq!(deleted, 1, "{key2} was not in Redis");
    for (name, _) in apps {
        let first = |id| {
            firsts.get(&(name, id)).unwrap_or_else(|| {
                panic!(
                    "{name} still answered product {id} as {} {WITHIN:?} after it was {} in Redis",
                    last[&(name, id)].summary(),
                    if id == p1 { "set" } else { "deleted" }
                )
            })
        };
        let (answer, at) = first(p1);
        assert!(
            ["HIT-L2", "HIT-L1"].contains(&answer.source.as_str())
                && answer.version() == Some(version),
            "{name} answered product {p1} as set in Redis, {at:?} after, but as {} \
             (expected v{version} from Redis)",
            answer.summary()
        );
        let (answer, at) = first(p2);
        assert!(
            answer.status == StatusCode::OK && ["MISS", "HIT-L2"].contains(&answer.source.as_str()),
            "{name} answered product {p2} {at:?} after its deletion from Redis as {}",
            answer.summary()
        );
        assert_eq!(
            answer.body, pair.created[&p2],
            "{name} answered product {p2} after its deletion from Redis not as the store holds it"
        );
    }
}
