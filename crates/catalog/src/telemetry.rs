//! Logging: `RUST_LOG` picks levels (default `info`), `LOG_FORMAT` the shape.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// `RUST_LOG`'s value when it is unset or empty.
const DEFAULT_DIRECTIVES: &str = "info";

/// Installs the global subscriber; call once, first thing in `main`.
/// An invalid `RUST_LOG` logs a warning and leaves the default level.
pub fn init(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").unwrap_or_default();
    let (filter, invalid) = match LogFilter::parse(&directives) {
        Ok(filter) => (filter, None),
        Err(err) => (
            LogFilter::parse(DEFAULT_DIRECTIVES).expect("the default directives are valid"),
            Some(err),
        ),
    };
    let (targets, env) = match filter {
        LogFilter::Targets(targets) => (Some(targets), None),
        LogFilter::Env(env) => (None, Some(env)),
    };
    let registry = tracing_subscriber::registry().with(targets).with(env);
    // Colour only for a person at a terminal, never into files or pipes.
    let layer = tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Pretty => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).init(),
    }
    if let Some(err) = invalid {
        tracing::warn!(%err, "RUST_LOG is not a valid filter; logging at {DEFAULT_DIRECTIVES}");
    }
}

/// The filter `RUST_LOG` asks for.
///
/// Lists of `target=level` (the usual case) become a [`Targets`] filter,
/// which keeps no state per span. [`EnvFilter`] is used only for directives
/// that filter on spans or fields (`target[span{field=value}]=level`), which
/// need it: it takes a process-wide lock on every span enter, exit and
/// close, and with the request span enabled (the default `info`) that is
/// a shared write on every request's hit path (`benches/router.rs`).
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "built once, at start")]
enum LogFilter {
    Targets(Targets),
    Env(EnvFilter),
}

impl LogFilter {
    fn parse(directives: &str) -> Result<Self, String> {
        let directives = match directives.trim() {
            "" => DEFAULT_DIRECTIVES,
            given => given,
        };
        // `Targets` would read `target[span]` as a target name; span and
        // field filters start with `[`.
        if directives.contains('[') {
            EnvFilter::try_new(directives)
                .map(Self::Env)
                .map_err(|err| err.to_string())
        } else {
            directives
                .parse()
                .map(Self::Targets)
                .map_err(|err| err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_and_level_lists_need_no_span_bookkeeping() {
        for directives in ["", "info", "warn,catalog=debug", "tiercache=trace"] {
            assert!(
                matches!(LogFilter::parse(directives), Ok(LogFilter::Targets(_))),
                "{directives:?}"
            );
        }
    }

    #[test]
    fn span_and_field_filters_get_an_env_filter() {
        for directives in ["info,[request]=debug", "[request{request_id=abc}]=trace"] {
            assert!(
                matches!(LogFilter::parse(directives), Ok(LogFilter::Env(_))),
                "{directives:?}"
            );
        }
    }

    #[test]
    fn invalid_directives_are_an_error() {
        for directives in ["catalog=loud", "a=b=c", "[request{=debug"] {
            assert!(LogFilter::parse(directives).is_err(), "{directives:?}");
        }
    }
}
