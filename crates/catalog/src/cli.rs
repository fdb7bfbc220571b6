//! The `catalog` command line: `serve`, `seed`, `warm`, `migrate`.

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use secrecy::ExposeSecret;

use tiercache::L2State;

use crate::app::{Application, build_caches};
use crate::config::{CacheConfig, DbConfig, LogFormat, ServeConfig};
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
            let caches = build_caches(&args.cache).await?;
            if caches.products.l2_state() != L2State::Up {
                anyhow::bail!("Redis at REDIS_URL is not reachable; nothing was warmed");
            }
            let warmed = ProductService::new(store, caches)
                .warm(args.scope())
                .await
                .context("could not warm the cache")?;
            tracing::info!(warmed, "warmed the cache");
            Ok(())
        }
        Command::Migrate(args) => {
            open_store(&args.db).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
    }
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
