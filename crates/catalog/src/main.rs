//! `catalog`: see `catalog --help`.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: request handling allocates
/// and frees small buffers across worker threads, where glibc's malloc
/// showed up in profiles (see the closing notes of the cache issue).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `.env` first, so that its values reach clap's `env` fallbacks.
    dotenvy::dotenv().ok();
    let cli = catalog::Cli::parse();
    catalog::telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(catalog::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
