//! `GET /metrics`: every SPEC family is there with HELP and TYPE, the
//! numbers agree with `/cache/stats` and with the traffic sent, the
//! request-duration series stay bounded by the routes, and `promtool check
//! metrics` accepts the body.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::Value;
use testkit::{shared_redis, unique_prefix};

use crate::helpers::{Backend, TestApp, both_stores, use_redis};

both_stores!(
    metrics_agree_with_the_traffic_and_cache_stats,
    request_duration_series_do_not_grow_with_distinct_ids,
);

/// Every family SPEC §3 names, with its Prometheus type.
const CONTRACT: [(&str, &str); 11] = [
    ("cache_hits_total", "counter"),
    ("cache_misses_total", "counter"),
    ("request_duration_seconds", "histogram"),
    ("cache_size_bytes", "gauge"),
    ("cache_entries", "gauge"),
    ("cache_evictions_total", "counter"),
    ("cache_l2_errors_total", "counter"),
    ("cache_invalidations_total", "counter"),
    ("cache_loader_coalesced_total", "counter"),
    ("write_behind_pending", "gauge"),
    ("db_query_duration_seconds", "histogram"),
];

/// The families of the consistency and fail-safe machinery (our additions).
const ADDED: [(&str, &str); 22] = [
    ("cache_ghost_bytes", "gauge"),
    ("cache_bus_gaps_total", "counter"),
    ("cache_bus_replays_total", "counter"),
    ("cache_bus_keys_replayed_total", "counter"),
    ("cache_bus_tracked_keys_total", "counter"),
    ("cache_l1_clears_total", "counter"),
    ("cache_stale_answers_total", "counter"),
    ("cache_loader_timeouts_total", "counter"),
    ("cache_eager_refreshes_total", "counter"),
    ("cache_eager_refresh_errors_total", "counter"),
    ("cache_l2_guard_rejections_total", "counter"),
    ("cache_fenced_fills_total", "counter"),
    ("cache_invalidation_lag_seconds", "histogram"),
    ("write_behind_flushed_total", "counter"),
    ("write_behind_failures_total", "counter"),
    ("write_behind_dead_letters_total", "counter"),
    ("write_behind_unreplicated_total", "counter"),
    ("write_behind_batches_total", "counter"),
    ("write_behind_last_batch_size", "gauge"),
    ("write_behind_flush_duration_seconds", "histogram"),
    ("db_batched_reads_total", "counter"),
    ("db_read_batches_total", "counter"),
];

/// A scrape: the body and its samples by series (`name{labels}` → value).
struct Scrape {
    body: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    async fn of(app: &TestApp) -> Self {
        let response = app.get("/metrics").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let body = response.text().await.unwrap();
        let samples = body
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse().unwrap())
            })
            .collect();
        Self { body, samples }
    }

    /// The value of `series`, which must be present.
    fn value(&self, series: &str) -> u64 {
        let value = self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.body));
        *value as u64
    }

    /// How many series (not samples) `family` has.
    fn series_count(&self, family: &str) -> usize {
        let count_suffix = format!("{family}_count");
        self.samples
            .keys()
            .filter(|series| series.starts_with(&count_suffix))
            .count()
    }
}

/// Pipes `body` through `promtool check metrics`; a missing promtool fails
/// the test (it must never pass unchecked).
fn promtool_check(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "promtool is needed to check the exposition format and could not be run ({err}); \
                 install it with: apt-get install -y prometheus"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- body ---\n{body}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

async fn metrics_agree_with_the_traffic_and_cache_stats(backend: Backend) {
    shared_redis().await;
    let prefix = unique_prefix();
    let a = TestApp::spawn_with(backend, |c| use_redis(c, &prefix)).await;
    // Before the peer exists: nothing can have been received from it yet.
    let before = Scrape::of(&a).await;
    let b = a.spawn_peer(|c| use_redis(c, &prefix)).await;
    let id = a.create_product_id("Metered", "tools", 4.0).await;

    let reads = [
        a.get(&format!("/products/{id}")).await,
        a.get(&format!("/products/{id}")).await,
        b.get(&format!("/products/{id}")).await,
        b.get(&format!("/products/{id}")).await,
        a.get("/products/987654321").await,
        a.get("/no/such/route").await,
    ];
    let on_a = Scrape::of(&a).await;
    let on_b = Scrape::of(&b).await;
    let stats_a: Value = a.get_json("/cache/stats").await;
    let stats_b: Value = b.get_json("/cache/stats").await;

    let x_cache: Vec<&str> = reads[..4]
        .iter()
        .map(|r| r.headers()["x-cache"].to_str().unwrap())
        .collect();
    assert_eq!(x_cache, ["MISS", "HIT-L1", "HIT-L2", "HIT-L1"]);
    assert_eq!(reads[4].status(), StatusCode::NOT_FOUND);
    assert_eq!(reads[5].status(), StatusCode::NOT_FOUND);
    for scrape in [&before, &on_a] {
        for (family, kind) in CONTRACT.into_iter().chain(ADDED) {
            assert!(
                scrape.body.contains(&format!("# HELP {family} ")),
                "no HELP for {family}:\n{}",
                scrape.body
            );
            assert!(
                scrape.body.contains(&format!("# TYPE {family} {kind}\n")),
                "no TYPE {kind} for {family}:\n{}",
                scrape.body
            );
        }
    }
    // Every contract series exists from start, at zero.
    for series in [
        r#"cache_hits_total{cache_type="l1"}"#,
        r#"cache_hits_total{cache_type="l2"}"#,
        r#"cache_misses_total{cache_type="l1"}"#,
        r#"cache_misses_total{cache_type="l2"}"#,
        "cache_evictions_total",
        "cache_l2_errors_total",
        r#"cache_invalidations_total{direction="received"}"#,
        "cache_loader_coalesced_total",
        "write_behind_pending",
        r#"db_query_duration_seconds_count{op="get"}"#,
        r#"request_duration_seconds_count{endpoint="/products/{id}"}"#,
        "db_batched_reads_total",
        "db_read_batches_total",
    ] {
        assert_eq!(before.value(series), 0, "{series} at start");
    }
    for (scrape, stats) in [(&on_a, &stats_a), (&on_b, &stats_b)] {
        let level = |path: &str| stats.pointer(path).unwrap().as_u64().unwrap();
        let l1 = r#"{cache_type="l1"}"#;
        let l2 = r#"{cache_type="l2"}"#;
        assert_eq!(
            scrape.value(&format!("cache_hits_total{l1}")),
            level("/levels/l1/hits")
        );
        assert_eq!(
            scrape.value(&format!("cache_misses_total{l1}")),
            level("/levels/l1/misses")
        );
        assert_eq!(
            scrape.value(&format!("cache_hits_total{l2}")),
            level("/levels/l2/hits")
        );
        assert_eq!(
            scrape.value(&format!("cache_misses_total{l2}")),
            level("/levels/l2/misses")
        );
        assert_eq!(
            scrape.value(&format!("cache_entries{l1}")),
            level("/levels/l1/entries")
        );
        assert_eq!(
            scrape.value(&format!("cache_size_bytes{l1}")),
            level("/levels/l1/bytes")
        );
        assert_eq!(
            scrape.value(&format!("cache_ghost_bytes{l1}")),
            level("/levels/l1/ghost_bytes")
        );
        assert_eq!(
            scrape.value("cache_evictions_total"),
            level("/levels/l1/evictions")
        );
        assert_eq!(
            scrape.value("cache_l2_errors_total"),
            level("/levels/l2/errors")
        );
        assert_eq!(scrape.value(r#"cache_l2_state{state="up"}"#), 1);
        assert_eq!(scrape.value(r#"cache_l2_state{state="down"}"#), 0);
        // Exactly one bus state is current, and with Redis it is not `disabled`.
        let bus_states: u64 = ["subscribed", "connecting", "disabled"]
            .iter()
            .map(|state| scrape.value(&format!(r#"cache_bus_state{{state="{state}"}}"#)))
            .sum();
        assert_eq!(bus_states, 1);
        assert_eq!(scrape.value(r#"cache_bus_state{state="disabled"}"#), 0);
        assert_eq!(scrape.value("write_behind_pending"), 0);
    }
    // The id's first read and the absent id loaded from a's store; the
    // create was one insert; b's L2 hit never reached its store.
    assert_eq!(on_a.value(r#"cache_hits_total{cache_type="l1"}"#), 1);
    assert_eq!(on_b.value(r#"cache_hits_total{cache_type="l2"}"#), 1);
    assert_eq!(
        on_a.value(r#"db_query_duration_seconds_count{op="get"}"#),
        2
    );
    assert_eq!(
        on_a.value(r#"db_query_duration_seconds_count{op="create"}"#),
        1
    );
    assert_eq!(
        on_b.value(r#"db_query_duration_seconds_count{op="get"}"#),
        0
    );
    assert_eq!(on_a.value(r#"cache_loader_loads_total"#), 2);
    // One at a time, each read was a batch of its own.
    assert_eq!(on_a.value("db_batched_reads_total"), 2);
    assert_eq!(on_a.value("db_read_batches_total"), 2);
    assert!(on_a.value(r#"cache_invalidations_total{direction="published"}"#) >= 1);
    // Requests are labelled by route template; the unknown route by one
    // fixed label.
    assert_eq!(
        on_a.value(r#"request_duration_seconds_count{endpoint="/products/{id}"}"#),
        3
    );
    assert_eq!(
        on_a.value(r#"request_duration_seconds_count{endpoint="/products"}"#),
        1
    );
    assert_eq!(
        on_a.value(r#"request_duration_seconds_count{endpoint="unmatched"}"#),
        1
    );
    assert_eq!(
        on_a.value(r#"request_duration_seconds_count{endpoint="/metrics"}"#),
        1,
        "the first scrape is counted once it has finished"
    );
    assert!(!on_a.body.contains("987654321"), "{}", on_a.body);
    promtool_check(&before.body);
    promtool_check(&on_a.body);
    promtool_check(&on_b.body);
}

async fn request_duration_series_do_not_grow_with_distinct_ids(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app.create_product_id("Only", "tools", 1.0).await;
    let before = Scrape::of(&app).await;

    for n in 0..500 {
        let response = app.get(&format!("/products/{}", id + n)).await;
        let expected = if n == 0 {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(response.status(), expected);
        let response = app.get(&format!("/unknown/{n}")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    let after = Scrape::of(&app).await;

    let family = "request_duration_seconds";
    assert_eq!(after.series_count(family), before.series_count(family));
    assert_eq!(
        after.value(r#"request_duration_seconds_count{endpoint="/products/{id}"}"#),
        500
    );
    assert_eq!(
        after.value(r#"request_duration_seconds_count{endpoint="unmatched"}"#),
        500
    );
    promtool_check(&after.body);
}
