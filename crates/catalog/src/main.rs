//! The `catalog` binary: parses the command line (`catalog --help` lists
//! it), sets up logging, and runs the command on a tokio runtime
//! ([`catalog::run`]).

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: request handling allocates
/// small buffers on one worker thread and frees them on another, and
/// glibc's malloc/free took about 9 % of the L2-hit profile. With mimalloc
/// (here and in `examples/floor.rs`), L2-hit throughput in `bench/load.sh`
/// went from about 50k to 68k requests/s (back-to-back runs, commit
/// 5e0a8f4).
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
