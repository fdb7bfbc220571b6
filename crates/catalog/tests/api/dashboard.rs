//! `GET /dashboard` in a real browser: headless Chromium loads the page from
//! a running app, and the figures it shows must be the ones `/cache/stats`
//! gives, with charts drawn from at least two intervals.
//!
//! Chromium is required, not optional: without it the test fails and says
//! how to install it. It runs under virtual time (`--virtual-time-budget`),
//! so the page's one-second polling costs milliseconds of wall time, and
//! Chromium's own budget, not a sleep here, decides when the DOM is read.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, TestApp, test_prefix, use_redis};

const INSTALL: &str =
    "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium";

/// Virtual milliseconds the page runs before Chromium dumps or shoots it:
/// about five polls of `/cache/stats`.
const VIRTUAL_TIME_MS: u32 = 5_000;

/// A guard against a hung browser, far above the second or two a run takes.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(120);

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
        // Blocking waits run off the runtime: the app under test is served
        // by this same runtime.
        let status = tokio::task::spawn_blocking(move || {
            let mut child = command
                .spawn()
                .unwrap_or_else(|err| panic!("chromium does not start ({err}); {INSTALL}"));
            let deadline = Instant::now() + CHROMIUM_DEADLINE;
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("chromium did not finish within {CHROMIUM_DEADLINE:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .unwrap();
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

fn level_hit_rate(level: &Value) -> f64 {
    let hits = number(&level["hits"]);
    let total = hits + number(&level["misses"]);
    if total > 0.0 { hits / total } else { 0.0 }
}

#[tokio::test]
async fn the_dashboard_is_an_html_page_listed_in_openapi() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let response = app.get("/dashboard").await;
    let openapi: Value = app.get("/openapi.json").await.json().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("<meta name=\"viewport\""), "{body}");
    assert!(body.contains("fetch(\"cache/stats\""), "{body}");
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
    let prefix = test_prefix();
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
    assert_eq!(
        before, after,
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
}
