//! `lanyard serve`: logs, the daemon, and a stop on the first signal (a second one exits at once).

use std::path::PathBuf;

use lanyard::config::Config;
use lanyard::Daemon;
use tracing_subscriber::EnvFilter;

use crate::LogFormat;

/// Targets whose verbose levels print message contents (async-nats logs every message,
/// headers and payload included, at trace): capped whatever the filter asks, so no log
/// level shows a token.
pub(crate) const NEVER_VERBOSE: &[&str] = &["async_nats=debug"];

pub(crate) fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let mut filter = EnvFilter::try_from_env("LANYARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // A cap only where the filter would go further: added to a quieter filter, the directive
    // would make those targets more verbose instead.
    if filter.max_level_hint() == Some(tracing::level_filters::LevelFilter::TRACE) {
        for directive in NEVER_VERBOSE {
            if let Ok(directive) = directive.parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours for people at a terminal, plain text for files and log collectors.
        .with_ansi(colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether logs carry colour escape codes: only at a terminal, and not when `NO_COLOR` is
/// set to anything but the empty string (no-color.org).
fn colours(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

pub(crate) async fn serve(config: Option<PathBuf>, log_format: LogFormat) -> u8 {
    init_logs(log_format);
    let config = match Config::load(config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return 64;
        }
    };
    let grace_secs = config.shutdown_grace_secs;
    let daemon = match Daemon::start(config).await {
        Ok(daemon) => daemon,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return error.exit_code() as u8;
        }
    };
    shutdown_signal().await;
    tracing::info!(grace_secs, "shutting down");
    // Every step of the stop is bounded; this is the backstop, and a second signal ends the
    // process at once.
    let limit = std::time::Duration::from_secs(grace_secs + STOP_MARGIN_SECS);
    tokio::select! {
        stopped = tokio::time::timeout(limit, daemon.shutdown()) => match stopped {
            Ok(()) => {
                tracing::info!("stopped");
                0
            }
            Err(_) => {
                tracing::error!("the stop overran {} s; exiting anyway", limit.as_secs());
                1
            }
        },
        () = shutdown_signal() => {
            tracing::warn!("a second signal: exiting without finishing the stop");
            1
        }
    }
}

/// Beyond the shutdown grace period, how long a stop may take (events, last flush) before
/// the process exits regardless.
pub(crate) const STOP_MARGIN_SECS: u64 = 10;

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::colours;

    #[test]
    fn colours_only_at_a_terminal_without_no_color() {
        let set = std::ffi::OsStr::new("1");
        let empty = std::ffi::OsStr::new("");
        assert!(colours(true, None));
        assert!(colours(true, Some(empty)));
        assert!(!colours(true, Some(set)));
        assert!(!colours(false, None));
    }
}
