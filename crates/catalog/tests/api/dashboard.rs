//! `GET /dashboard` in a real browser: headless Chromium loads the page from
//! a running app, and the figures it shows must be the ones `/cache/stats`
//! gives, with charts drawn from at least two intervals, and p50/p99 the
//! ones the `/cache/latency` snapshots it read give. Also `/cache/latency`
//! itself.
//!
//! Chromium is required, not optional: without it the test fails and says
//! how to install it. It runs under virtual time (`--virtual-time-budget`),
//! so the page's one-second polling costs milliseconds of wall time, and
//! Chromium's own budget, not a sleep here, decides when the DOM is read.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use reqwest::StatusCode;
use serde_json::Value;
use testkit::unique_prefix;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, TestApp, both_stores, use_redis, wait_exit};

both_stores!(latency_counts_add_up_to_the_reads);

const INSTALL: &str =
    "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium";

/// Virtual milliseconds the page runs before Chromium dumps or shoots it:
/// about five polls of `/cache/stats`.
const VIRTUAL_TIME_MS: u32 = 5_000;

/// A guard against a hung browser, far above the second or two a run takes.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(120);

/// Headless Chromium with a fresh profile directory, removed on drop.
#[derive(Debug)]
struct Chromium {
    program: PathBuf,
    workdir: PathBuf,
}

impl Chromium {
    fn find() -> Self {
        let program = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("chromium"))
            .find(|path| path.is_file())
            .unwrap_or_else(|| {
                panic!("chromium is not installed; the dashboard test needs it: {INSTALL}")
            });
        let workdir =
            std::env::temp_dir().join(format!("catalog-dashboard-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&workdir).unwrap();
        Self { program, workdir }
    }

    /// Runs Chromium on `url` with `extra` flags; returns its stdout.
    async fn run(&self, url: &str, extra: &[String]) -> String {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let stdout_path = self.workdir.join(format!("{name}.out"));
        let stderr_path = self.workdir.join(format!("{name}.err"));
        let mut command = Command::new(&self.program);
        command
            .args([
                "--headless=new",
                // Root (as in CI) cannot use Chromium's sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
            ])
            .arg(format!(
                "--user-data-dir={}",
                self.workdir.join(&name).display()
            ))
            .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).unwrap())
            .stderr(File::create(&stderr_path).unwrap());
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("chromium does not start ({err}); {INSTALL}"));
        let status = wait_exit(&mut child, CHROMIUM_LIMIT)
            .await
            .unwrap_or_else(|| panic!("chromium did not finish within {CHROMIUM_LIMIT:?}"));
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        assert!(status.success(), "chromium failed ({status}): {stderr}");
        std::fs::read_to_string(&stdout_path).unwrap()
    }

    /// The page's DOM after its scripts ran for [`VIRTUAL_TIME_MS`].
    async fn dump_dom(&self, url: &str) -> String {
        self.run(url, &["--dump-dom".to_owned()]).await
    }

    /// A 1280×900 screenshot of the page at `path`.
    async fn screenshot(&self, url: &str, path: &Path) {
        self.run(
            url,
            &[
                format!("--screenshot={}", path.display()),
                "--window-size=1280,900".to_owned(),
            ],
        )
        .await;
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// The workspace's target directory, where the screenshot is kept for
/// people to look at.
fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

/// The dumped DOM, up to the page's script (whose source holds markup
/// templates that are not part of the document).
#[derive(Debug)]
struct Page(String);

impl Page {
    fn parse(dom: &str) -> Self {
        let end = dom.find("<script").expect("the page has its script");
        Self(dom[..end].to_owned())
    }

    /// The opening tag holding `marker`, and the text right after it.
    fn element(&self, marker: &str) -> (&str, &str) {
        let at = self
            .0
            .find(marker)
            .unwrap_or_else(|| panic!("no element with {marker}"));
        let start = self.0[..at].rfind('<').unwrap();
        let end = at + self.0[at..].find('>').unwrap();
        let text_end = end + self.0[end..].find("</").unwrap();
        (&self.0[start..=end], &self.0[end + 1..text_end])
    }

    fn attribute<'a>(tag: &'a str, name: &str) -> &'a str {
        let key = format!(" {name}=\"");
        let start = tag
            .find(&key)
            .unwrap_or_else(|| panic!("{tag} has no {name}"))
            + key.len();
        &tag[start..start + tag[start..].find('"').unwrap()]
    }

    /// `data-value` and text of the figure `data-testid="{id}"`.
    fn figure(&self, id: &str) -> (f64, &str) {
        let (tag, text) = self.element(&format!("data-testid=\"{id}\""));
        let value = Self::attribute(tag, "data-value")
            .parse()
            .unwrap_or_else(|err| panic!("{id}: data-value is not a number ({err}): {tag}"));
        (value, text)
    }

    /// Whether the figure `data-testid="{id}"` shows a dash and no value.
    fn is_blank(&self, id: &str) -> bool {
        let (tag, text) = self.element(&format!("data-testid=\"{id}\""));
        text == "–" && !tag.contains(" data-value=")
    }

    /// The reads a percentile figure was computed from (`data-reads`).
    fn reads(&self, id: &str) -> u64 {
        let (tag, _) = self.element(&format!("data-testid=\"{id}\""));
        Self::attribute(tag, "data-reads").parse().unwrap()
    }

    fn points(&self) -> usize {
        let (tag, _) = self.element("<body");
        Self::attribute(tag, "data-points").parse().unwrap()
    }

    /// Points in the first line of chart `name`.
    fn chart_points(&self, name: &str) -> usize {
        let at = self
            .0
            .find(&format!("data-chart=\"{name}\""))
            .unwrap_or_else(|| panic!("no chart {name}"));
        let path = &self.0[at + self.0[at..].find("<path").unwrap()..];
        let tag = &path[..=path.find('>').unwrap()];
        Self::attribute(tag, "d").matches(',').count()
    }
}

async fn stats(app: &TestApp) -> Value {
    let response = app.get("/cache/stats").await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{value} is not a number"))
}

fn numbers(value: &Value) -> Vec<f64> {
    value.as_array().unwrap().iter().map(number).collect()
}

fn counts(latency: &Value) -> Vec<u64> {
    let counts = latency["counts"].as_array().unwrap();
    counts.iter().map(|c| c.as_u64().unwrap()).collect()
}

/// The upper bound (ms) of the bucket where the cumulative share of `counts`
/// reaches `pct` %, as the page's tooltip describes it (infinite for the
/// overflow bucket); `None` without reads.
fn percentile(bounds: &[f64], counts: &[u64], pct: u64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    let rank = (total * pct).div_ceil(100);
    let mut seen = 0;
    (total > 0).then(|| {
        counts
            .iter()
            .position(|&count| {
                seen += count;
                seen >= rank
            })
            .and_then(|i| bounds.get(i).copied())
            .unwrap_or(f64::INFINITY)
    })
}

fn level_hit_rate(level: &Value) -> f64 {
    let hits = number(&level["hits"]);
    let total = hits + number(&level["misses"]);
    if total > 0.0 { hits / total } else { 0.0 }
}

#[tokio::test]
async fn the_dashboard_is_an_html_page_listed_in_openapi() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let response = app.get("/dashboard").await;
    let openapi: Value = app.get_json("/openapi.json").await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("<meta name=\"viewport\""), "{body}");
    assert!(
        body.contains("[\"cache/stats\", \"cache/latency\"]"),
        "{body}"
    );
    assert!(
        openapi["paths"]["/dashboard"]["get"]["responses"]["200"]["content"]["text/html"]
            .is_object(),
        "{openapi}"
    );
}

#[tokio::test]
async fn the_dashboard_shows_the_cache_stats_in_a_browser() {
    // Arrange: an app on PostgreSQL and Redis, with hits, misses and an
    // unknown id behind it.
    let chromium = Chromium::find();
    let prefix = unique_prefix();
    let app = TestApp::spawn_with(Backend::Postgres, |config| use_redis(config, &prefix)).await;
    let mut ids = Vec::new();
    for (name, price) in [("Anvil", 12.5), ("Bucket", 3.0), ("Chisel", 7.25)] {
        ids.push(app.create_product(name, "tools", price).await["id"].clone());
    }
    let url = app.url("/dashboard");

    // Act: a screenshot while reads go on (so its charts have lines), then,
    // with reads stopped, the DOM.
    let stop = CancellationToken::new();
    let traffic = tokio::spawn({
        let (client, stop) = (app.client.clone(), stop.clone());
        let paths: Vec<String> = ids
            .iter()
            .map(|id| app.url(&format!("/products/{id}")))
            .chain([app.url("/products/999999")])
            .collect();
        async move {
            let mut reads = 0_u64;
            for path in paths.iter().cycle() {
                if stop.is_cancelled() {
                    break;
                }
                client.get(path).send().await.unwrap();
                reads += 1;
            }
            reads
        }
    });
    let screenshot = target_dir().join("dashboard.png");
    chromium.screenshot(&url, &screenshot).await;
    stop.cancel();
    let reads = traffic.await.unwrap();
    let before = stats(&app).await;
    let dom = chromium.dump_dom(&url).await;
    let after = stats(&app).await;

    // Assert
    assert!(reads > 0);
    // Only what reads move: background Redis calls (the bus heartbeat) may
    // count an L2 error on a loaded machine without any read.
    let reads_of = |stats: &Value| {
        [
            &stats["total_requests"],
            &stats["cache_hits"],
            &stats["levels"]["l1"]["hits"],
            &stats["levels"]["l1"]["misses"],
            &stats["levels"]["l2"]["hits"],
            &stats["levels"]["l2"]["misses"],
        ]
        .map(Clone::clone)
    };
    assert_eq!(
        reads_of(&before),
        reads_of(&after),
        "nothing read products while the page was read"
    );
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{}", screenshot.display());

    let page = Page::parse(&dom);
    assert!(page.points() >= 2, "charts drew {} points", page.points());
    assert_eq!(page.chart_points("rps"), page.points());
    assert_eq!(page.figure("request-rate").0, 0.0, "no reads: 0 per second");

    let l1 = &after["levels"]["l1"];
    let l2 = &after["levels"]["l2"];
    for (id, expected) in [
        ("total-requests", &after["total_requests"]),
        ("l1-entries", &l1["entries"]),
        ("l1-evictions", &l1["evictions"]),
        ("l2-errors", &l2["errors"]),
        ("write-behind-pending", &after["write_behind"]["pending"]),
    ] {
        let (value, text) = page.figure(id);
        assert_eq!(value, number(expected), "{id}");
        assert_eq!(text, expected.to_string(), "{id}");
    }
    for (id, expected) in [
        ("hit-rate", number(&after["hit_rate"])),
        ("avg-latency", number(&after["avg_response_time_ms"])),
        ("l1-bytes", number(&l1["bytes"])),
        ("l1-hit-rate", level_hit_rate(l1)),
        ("l2-hit-rate", level_hit_rate(l2)),
    ] {
        // serde_json's default float parsing may be one ulp off the
        // browser's correctly rounded one.
        let shown = page.figure(id).0;
        assert!(
            (shown - expected).abs() <= 1e-12 * expected.abs(),
            "{id}: shown {shown}, /cache/stats {expected}"
        );
    }
    assert_eq!(number(&after["total_requests"]), reads as f64);
    assert!(number(&after["cache_hits"]) > 0.0 && number(&after["cache_misses"]) > 0.0);

    let (tag, state) = page.element("data-testid=\"l2-state\"");
    assert_eq!(state, "up");
    assert_eq!(Page::attribute(tag, "data-state"), "up");
    let (_, connection) = page.element("data-testid=\"connection\"");
    assert_eq!(connection, "live");

    // The reads stopped before the page loaded: no interval it saw had any,
    // so there is no percentile and their chart is all gaps.
    for id in ["p50-latency", "p99-latency"] {
        assert!(page.is_blank(id), "{id}: {:?}", page.element(id));
        assert_eq!(page.reads(id), 0, "{id}");
    }
    assert_eq!(page.chart_points("percentiles"), 0);
}

async fn latency_counts_add_up_to_the_reads(backend: Backend) {
    // Arrange: hits, a miss and an unknown id.
    let app = TestApp::spawn(backend).await;
    let id = app.create_product("Anvil", "tools", 12.5).await["id"].clone();
    let empty = app.get("/cache/latency").await;
    assert_eq!(empty.status(), StatusCode::OK);
    let empty: Value = empty.json().await.unwrap();
    for path in [
        format!("/products/{id}"),
        format!("/products/{id}"),
        format!("/products/{id}"),
        "/products/999999".to_owned(),
    ] {
        app.get(&path).await;
    }

    // Act
    let latency: Value = app.get_json("/cache/latency").await;
    let stats = stats(&app).await;
    let openapi: Value = app.get_json("/openapi.json").await;

    // Assert
    let bounds = numbers(&latency["bounds_ms"]);
    assert_eq!(bounds.len(), 22, "{latency}");
    assert_eq!((bounds[0], bounds[21]), (0.001, 10_000.0), "{latency}");
    assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]), "{latency}");
    assert_eq!(latency["bounds_ms"], empty["bounds_ms"]);
    assert_eq!(counts(&empty), vec![0; 23]);
    let counts = counts(&latency);
    assert_eq!(counts.len(), bounds.len() + 1, "{latency}");
    assert_eq!(counts.iter().sum::<u64>(), 4, "{latency}");
    assert_eq!(stats["total_requests"], 4);
    assert!(
        openapi["paths"]["/cache/latency"]["get"]["responses"]["200"].is_object(),
        "{openapi}"
    );
}

/// Reads per burst: the first; each later one reads one more, so that the
/// size of an interval tells which one it was.
const FIRST_BURST: u64 = 10;

/// What the page reaches in the relay test: the app, and every
/// `/cache/latency` answer relayed to the page, in order.
#[derive(Debug)]
struct Relay {
    app_url: String,
    client: reqwest::Client,
    /// Product paths a burst cycles through: hits and an unknown id.
    products: Vec<String>,
    latency: Mutex<Vec<Value>>,
}

impl Relay {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.app_url))
            .send()
            .await
            .unwrap()
    }

    /// `path` from the app, which must answer 200.
    async fn fetch(&self, path: &str) -> reqwest::Response {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response
    }
}

async fn relay_page(State(relay): State<Arc<Relay>>) -> Html<String> {
    Html(relay.fetch("/dashboard").await.text().await.unwrap())
}

async fn relay_stats(State(relay): State<Arc<Relay>>) -> Json<Value> {
    Json(relay.fetch("/cache/stats").await.json().await.unwrap())
}

/// A burst of reads, then the app's `/cache/latency`: between two of the
/// page's polls, only the burst before the second one reads products.
async fn relay_latency(State(relay): State<Arc<Relay>>) -> Json<Value> {
    let served = relay.latency.lock().unwrap().len() as u64;
    for path in relay
        .products
        .iter()
        .cycle()
        .take((FIRST_BURST + served) as usize)
    {
        let status = relay.get(path).await.status();
        assert!(
            [StatusCode::OK, StatusCode::NOT_FOUND].contains(&status),
            "{path}: {status}"
        );
    }
    let latency: Value = relay.fetch("/cache/latency").await.json().await.unwrap();
    relay.latency.lock().unwrap().push(latency.clone());
    Json(latency)
}

#[tokio::test]
async fn the_dashboard_shows_p50_and_p99_of_the_last_interval() {
    // Arrange: the page served through a relay that reads products, in
    // bursts of distinct sizes, just before each `/cache/latency` it passes
    // on, so that the test knows the exact snapshots every interval is
    // computed from.
    let chromium = Chromium::find();
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut products = Vec::new();
    for (name, price) in [("Anvil", 12.5), ("Bucket", 3.0), ("Chisel", 7.25)] {
        let id = app.create_product(name, "tools", price).await["id"].clone();
        products.push(format!("/products/{id}"));
    }
    products.push("/products/999999".to_owned());
    let relay = Arc::new(Relay {
        app_url: app.url(""),
        client: app.client.clone(),
        products,
        latency: Mutex::new(Vec::new()),
    });
    let router = axum::Router::new()
        .route("/dashboard", get(relay_page))
        .route("/cache/stats", get(relay_stats))
        .route("/cache/latency", get(relay_latency))
        .with_state(Arc::clone(&relay));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/dashboard", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    // Act
    let dom = chromium.dump_dom(&url).await;
    server.abort();

    // Assert: p50 and p99 are those of one of the last two intervals
    // (Chromium may stop while the page waits for the last answer), found
    // by its number of reads.
    let page = Page::parse(&dom);
    let snapshots = relay.latency.lock().unwrap().clone();
    assert!(page.points() >= 2, "charts drew {} points", page.points());
    assert_eq!(page.chart_points("percentiles"), page.points());
    let bounds = numbers(&snapshots[0]["bounds_ms"]);
    let intervals: Vec<Vec<u64>> = snapshots
        .windows(2)
        .map(|pair| {
            let (before, after) = (counts(&pair[0]), counts(&pair[1]));
            after.iter().zip(&before).map(|(a, b)| a - b).collect()
        })
        .collect();
    for (id, pct) in [("p50-latency", 50), ("p99-latency", 99)] {
        let reads = page.reads(id);
        let interval = intervals
            .iter()
            .rev()
            .take(2)
            .find(|counts| counts.iter().sum::<u64>() == reads)
            .unwrap_or_else(|| panic!("{id}: no recent interval of {reads} reads: {intervals:?}"));
        let expected = percentile(&bounds, interval, pct).unwrap();
        let (shown, text) = page.figure(id);
        assert_eq!(shown, expected, "{id} over {interval:?}");
        assert!(
            text.starts_with('≤') || text.starts_with('>'),
            "{id}: {text}"
        );
    }
}
