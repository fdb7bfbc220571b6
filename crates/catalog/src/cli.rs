//! The `catalog` command line: `serve`, `seed`, `warm`, `migrate`, `stats`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;
use serde::Deserialize;

use tiercache::L2State;

use crate::app::{Application, build_caches};
use crate::config::{CacheConfig, DEFAULT_BIND_ADDR, DbConfig, LogFormat, ServeConfig};
use crate::service::{ProductService, WarmScope};
use crate::{seed, store};

/// Product catalog HTTP service on a multi-level cache.
#[derive(Debug, Parser)]
#[command(name = "catalog", version, about)]
pub struct Cli {
    /// Log format; the level comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_name = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Insert N generated products.
    Seed(SeedArgs),
    /// Apply the database migrations and exit.
    Migrate(MigrateArgs),
    /// Load products from the store into the shared Redis cache (L2).
    Warm(WarmArgs),
    /// Print a running instance's cache statistics (`GET /cache/stats`).
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ServeConfig,

    /// Seed N generated products first if the table is empty.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// How many products to insert.
    #[arg(value_name = "N")]
    pub count: u64,

    #[command(flatten)]
    pub db: DbConfig,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["all", "category", "ids"])))]
pub struct WarmArgs {
    /// Every product.
    #[arg(long)]
    pub all: bool,

    /// Every product of this category.
    #[arg(long, value_name = "CATEGORY")]
    pub category: Option<String>,

    /// These product ids, comma-separated.
    #[arg(long, value_name = "ID,...", value_delimiter = ',', value_parser = clap::value_parser!(i64).range(1..))]
    pub ids: Option<Vec<i64>>,

    #[command(flatten)]
    pub db: DbConfig,

    #[command(flatten)]
    pub cache: CacheConfig,
}

impl WarmArgs {
    fn scope(&self) -> WarmScope {
        match (&self.ids, &self.category) {
            (Some(ids), _) => WarmScope::Ids(ids.clone()),
            (None, Some(category)) => WarmScope::Category(category.trim().to_owned()),
            (None, None) => WarmScope::All,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Base URL of the running catalog instance.
    #[arg(long, value_name = "URL", default_value = format!("http://{DEFAULT_BIND_ADDR}"))]
    pub url: String,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbConfig,
}

/// Runs one command to completion.
///
/// # Errors
/// Whatever stopped the command, with context saying what it was doing.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let app = Application::build(args.config, args.seed).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Seed(args) => {
            let store = open_store(&args.db).await?;
            let inserted = seed::seed(store.as_ref(), args.count)
                .await
                .context("could not seed products")?;
            tracing::info!(inserted, "seeded products");
            Ok(())
        }
        Command::Warm(args) => {
            if args.cache.redis_url.is_none() {
                anyhow::bail!(
                    "REDIS_URL is required: warming from this process only helps a shared Redis cache"
                );
            }
            let store = open_store(&args.db).await?;
            // Nobody scrapes this command: its registry is never rendered.
            let caches =
                build_caches(&args.cache, &store, &crate::metrics::Metrics::start()).await?;
            if caches.products.l2_state() != L2State::Up {
                anyhow::bail!("Redis at REDIS_URL is not reachable; nothing was warmed");
            }
            let service =
                ProductService::new(Arc::clone(&store), caches, args.cache.write_strategy);
            let scope = args.scope();
            // The length is known for `--all` (and `--ids`); a category's is not.
            let total = match &scope {
                WarmScope::All => store.count().await.ok().and_then(|n| u64::try_from(n).ok()),
                WarmScope::Ids(ids) => Some(ids.len() as u64),
                WarmScope::Category(_) => None,
            };
            // Drawn only when stderr is a terminal (indicatif's default).
            let progress = match total {
                Some(total) => ProgressBar::new(total).with_style(
                    ProgressStyle::with_template(
                        "warming {bar:40} {pos}/{len} products ({per_sec})",
                    )
                    .expect("the progress template is valid"),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("warming {spinner} {pos} products ({per_sec})")
                        .expect("the progress template is valid"),
                ),
            };
            let warmed = service
                .warm(scope, |done| progress.set_position(done as u64))
                .await
                .context("could not warm the cache")?;
            progress.finish_and_clear();
            tracing::info!(warmed, "warmed the cache");
            Ok(())
        }
        Command::Migrate(args) => {
            open_store(&args.db).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Stats(args) => {
            let stats = fetch_stats(&args.url).await?;
            std::io::stdout()
                .lock()
                .write_all(stats_table(&stats).as_bytes())
                .context("could not write to stdout")
        }
    }
}

/// How long `catalog stats` waits for the instance.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of `GET /cache/stats` (SPEC §3 `CacheStats`) the table shows.
#[derive(Debug, Deserialize)]
struct StatsView {
    total_requests: u64,
    hit_rate: f64,
    avg_response_time_ms: f64,
    levels: LevelsView,
    write_behind: WriteBehindView,
}

#[derive(Debug, Deserialize)]
struct LevelsView {
    l1: L1View,
    l2: L2View,
}

#[derive(Debug, Deserialize)]
struct L1View {
    hits: u64,
    misses: u64,
    entries: u64,
    bytes: u64,
    evictions: u64,
}

#[derive(Debug, Deserialize)]
struct L2View {
    hits: u64,
    misses: u64,
    errors: u64,
    state: String,
}

#[derive(Debug, Deserialize)]
struct WriteBehindView {
    pending: u64,
    flushed: u64,
    failed: u64,
}

async fn fetch_stats(base: &str) -> anyhow::Result<StatsView> {
    let url = format!("{}/cache/stats", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(STATS_TIMEOUT)
        .build()
        .context("could not set up the HTTP client")?;
    client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("could not get {url}"))?
        .json()
        .await
        .with_context(|| format!("{url} did not answer with cache statistics"))
}

/// The statistics as a two-column table, one figure per line.
fn stats_table(stats: &StatsView) -> String {
    let (l1, l2, wb) = (&stats.levels.l1, &stats.levels.l2, &stats.write_behind);
    let rows: [(&str, String); 15] = [
        ("requests", stats.total_requests.to_string()),
        ("hit rate", format!("{:.1} %", stats.hit_rate * 100.0)),
        (
            "avg response",
            format!("{:.3} ms", stats.avg_response_time_ms),
        ),
        ("L1 hits", l1.hits.to_string()),
        ("L1 misses", l1.misses.to_string()),
        ("L1 entries", l1.entries.to_string()),
        ("L1 bytes", l1.bytes.to_string()),
        ("L1 evictions", l1.evictions.to_string()),
        ("L2 hits", l2.hits.to_string()),
        ("L2 misses", l2.misses.to_string()),
        ("L2 errors", l2.errors.to_string()),
        ("L2 state", l2.state.clone()),
        ("write-behind pending", wb.pending.to_string()),
        ("write-behind flushed", wb.flushed.to_string()),
        ("write-behind failed", wb.failed.to_string()),
    ];
    let label_width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|(_, value)| value.len()).max().unwrap_or(0);
    let mut table = String::new();
    for (label, value) in rows {
        // Writing into a String cannot fail.
        let _ = writeln!(table, "{label:<label_width$}  {value:>value_width$}");
    }
    table
}

async fn open_store(db: &DbConfig) -> anyhow::Result<Arc<dyn store::Store>> {
    let store: Arc<dyn store::Store> = Arc::from(
        store::connect(db.database_url.expose_secret(), &db.pool())
            .await
            .context("could not connect to the store at DATABASE_URL")?,
    );
    store
        .migrate()
        .await
        .context("could not migrate the store")?;
    Ok(store)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error.message = %err, "could not listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error.message = %err, "could not listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stats_table_aligns_every_figure() {
        let stats: StatsView = serde_json::from_value(serde_json::json!({
            "total_requests": 8, "cache_hits": 6, "cache_misses": 2, "hit_rate": 0.75,
            "avg_response_time_ms": 0.5,
            "levels": {"l1": {"hits": 5, "misses": 3, "entries": 2, "bytes": 1234, "evictions": 0},
                       "l2": {"hits": 1, "misses": 2, "errors": 0, "state": "up"}},
            "write_behind": {"pending": 0, "flushed": 0, "failed": 0}
        }))
        .unwrap();

        let table = stats_table(&stats);

        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 15);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
        assert!(
            lines[0].starts_with("requests") && lines[0].ends_with(" 8"),
            "{table}"
        );
        assert!(lines[1].ends_with("75.0 %"), "{table}");
        assert!(
            lines[6].starts_with("L1 bytes") && lines[6].ends_with(" 1234"),
            "{table}"
        );
        assert!(lines[11].ends_with(" up"), "{table}");
    }
}
