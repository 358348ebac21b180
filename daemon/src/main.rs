//! The `lanyard` command: `serve` runs the daemon, `events` tails its events, `plugin
//! inspect` shows what a provider plugin says about itself.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use lanyard::config::Config;
use lanyard::providers::plugin::Plugin;
use lanyard::Daemon;
use tracing_subscriber::EnvFilter;

// glibc's allocator showed as ~12% of the daemon's CPU under load (malloc, free,
// malloc_consolidate across threads); mimalloc is built for many small, short-lived
// allocations on several threads. See PERFORMANCE.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "lanyard",
    version,
    about = "OAuth2 / OpenID Connect logins over NATS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// The TOML configuration file.
        #[arg(long, env = "LANYARD_CONFIG")]
        config: Option<PathBuf>,
        /// Log as JSON lines instead of text.
        #[arg(long, env = "LANYARD_LOG_FORMAT", default_value = "text")]
        log_format: LogFormat,
    },
    /// Print Lanyard's events (`{prefix}.events.>`) as they happen.
    Events {
        /// Read the NATS connection and subject prefix from this config file.
        #[arg(long, env = "LANYARD_CONFIG")]
        config: Option<PathBuf>,
        /// Print each event as its JSON body.
        #[arg(long)]
        json: bool,
        /// Replay what the events stream kept since this long ago (`90s`, `30m`, `1h`,
        /// `7d`), then go on with new events. Needs `[events] stream = true`.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
    },
    /// Store tools.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Provider plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy every user, identity, provider token, session, admin-created provider and
    /// signing key from one store to another (an empty one), with the config's settings for
    /// both: sled in `data_dir`, JetStream through `[nats]` and `[jetstream]`. Stop the
    /// daemons first; logins in progress are not copied. Sealed values stay sealed: keep the
    /// same master key.
    Copy {
        #[arg(long, env = "LANYARD_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        from: StoreArg,
        #[arg(long)]
        to: StoreArg,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreArg {
    Sled,
    Jetstream,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Load a plugin file and print its kind, versions and description.
    Inspect { path: PathBuf },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lanyard: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve { config, log_format } => serve(config, log_format).await,
            Command::Events {
                config,
                json,
                since,
            } => events(config, json, since).await,
            Command::Plugin {
                command: PluginCommand::Inspect { path },
            } => inspect(&path),
            Command::Store {
                command: StoreCommand::Copy { config, from, to },
            } => copy_store(config, from, to).await,
        }
    });
    // A plugin call that never returned holds a blocking thread; do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}

/// Targets whose verbose levels print message contents (async-nats logs every message,
/// headers and payload included, at trace): capped whatever the filter asks, so no log
/// level shows a token.
const NEVER_VERBOSE: &[&str] = &["async_nats=debug"];

fn init_logs(format: LogFormat) {
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
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: Option<PathBuf>, log_format: LogFormat) -> u8 {
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
const STOP_MARGIN_SECS: u64 = 10;

async fn shutdown_signal() {
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

async fn events(config: Option<PathBuf>, json: bool, since: Option<std::time::Duration>) -> u8 {
    let config = match Config::load(config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return 64;
        }
    };
    let client = match lanyard::edge::connect(&config.nats).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return 1;
        }
    };
    let print = |name: &str, body: &[u8]| {
        let body = String::from_utf8_lossy(body);
        if json {
            println!("{body}");
        } else {
            println!("{}", render_event(name, &body));
        }
    };
    if let Some(since) = since {
        let replay = lanyard::edge::replay_events(
            &client,
            &config.nats.subject_prefix,
            &config.events,
            since,
        )
        .await;
        let mut replay = match replay {
            Ok(replay) => Box::pin(replay),
            Err(error) => {
                eprintln!("lanyard: {error}");
                return 1;
            }
        };
        eprintln!(
            "lanyard: replaying stream {} from {} ago, then following (Ctrl-C to stop)",
            config.events.stream_name,
            humantime::format_duration(since)
        );
        while let Some((name, body)) = replay.next().await {
            print(&name, &body);
        }
        return 0;
    }
    let prefix = &config.nats.subject_prefix;
    let all = lanyard_proto::all_events_subject(prefix);
    let mut events = match client.subscribe(all.clone()).await {
        Ok(events) => events,
        Err(error) => {
            eprintln!("lanyard: cannot subscribe: {error}");
            return 1;
        }
    };
    if let Err(error) = lanyard::edge::round_trip(&client).await {
        eprintln!("lanyard: {error}");
        return 1;
    }
    eprintln!("lanyard: listening on {all} (Ctrl-C to stop)");
    while let Some(message) = events.next().await {
        let name = lanyard_proto::event_name(prefix, message.subject.as_str()).unwrap_or_default();
        print(name, &message.payload);
    }
    0
}

/// `2026-11-22T06:00:00Z user.logged_in user_id=usr_... provider=github ...`
fn render_event(name: &str, body: &str) -> String {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str::<serde_json::Value>(body)
    else {
        return format!("{name} {body}");
    };
    let at = fields
        .get("occurred_at")
        .and_then(|v| v.as_str())
        .unwrap_or("-");
    let rest: Vec<String> = fields
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "occurred_at" | "type" | "event_id"))
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!("{at} {name} {}", rest.join(" "))
}

/// `lanyard store copy`: exit 0 when copied, 64 for a bad config or arguments, 1 when a
/// store cannot be opened or the target is not empty.
async fn copy_store(config: Option<PathBuf>, from: StoreArg, to: StoreArg) -> u8 {
    use lanyard::config::StoreKind;
    if from == to {
        eprintln!("lanyard: --from and --to name the same store");
        return 64;
    }
    let config = match Config::load(config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return 64;
        }
    };
    let kind = |arg| match arg {
        StoreArg::Sled => StoreKind::Sled,
        StoreArg::Jetstream => StoreKind::Jetstream,
    };
    let client = match lanyard::edge::connect(&config.nats).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return 1;
        }
    };
    let started = std::time::Instant::now();
    let open = |arg| lanyard::open_store_kind(&config, kind(arg), &client);
    let source = match open(from).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!(
                "lanyard: cannot open the source ({error}); is a daemon still running on it?"
            );
            return 1;
        }
    };
    let snapshot = match source.export().await {
        Ok(snapshot) => snapshot,
        Err(error) => {
            eprintln!("lanyard: cannot read the source: {error}");
            return 1;
        }
    };
    drop(source);
    let target = match open(to).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("lanyard: cannot open the target: {error}");
            return 1;
        }
    };
    if let Err(error) = target.import(&snapshot).await {
        eprintln!("lanyard: cannot write the target: {error}");
        return 1;
    }
    if let Err(error) = target.flush().await {
        eprintln!("lanyard: cannot flush the target: {error}");
        return 1;
    }
    println!(
        "copied {} from {from:?} to {to:?} in {:.1} s",
        snapshot.counts(),
        started.elapsed().as_secs_f64()
    );
    0
}

fn inspect(path: &std::path::Path) -> u8 {
    match Plugin::load(path) {
        Ok(plugin) => {
            let out = serde_json::json!({
                "path": plugin.path(),
                "kind": plugin.kind(),
                "plugin_version": plugin.version(),
                "abi_version": plugin.abi_version(),
                "description": plugin.description(),
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            0
        }
        Err(error) => {
            eprintln!("lanyard: {error}");
            1
        }
    }
}
