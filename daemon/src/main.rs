//! The `lanyard` command: `serve` runs the daemon, `events` tails its events, `store copy`
//! copies one store into another, `plugin inspect` shows what a provider plugin says about
//! itself, `nats-auth init` makes the auth callout's keys and configs. Each lives in `cli/`; this file parses the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

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
    /// Lanyard as the NATS auth callout.
    NatsAuth {
        #[command(subcommand)]
        command: NatsAuthCommand,
    },
}

#[derive(Debug, Subcommand)]
enum NatsAuthCommand {
    /// Make the issuer account key, the curve key and passwords for Lanyard's two NATS users,
    /// and write them with the nats-server config (config mode) and Lanyard's matching
    /// section into DIR. Replaces nothing.
    Init {
        /// Where to write (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The account the admitted users are placed in.
        #[arg(long, default_value = "APP")]
        account: String,
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
    /// After upgrading every daemon past the sealed login state: delete the store's pending
    /// logins of the previous version (sled drops them on its own once they expired; a
    /// shared JetStream store keeps its bucket until you say no daemon of that version runs).
    /// Refused while any of them may still finish.
    ForgetPending {
        #[arg(long, env = "LANYARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// After upgrading every daemon to the version with `session.list`: index the session
    /// families by user again, so that those a daemon of the previous version started during
    /// the rollout are listed, revoked by `session.revoke_all` and erased with their user.
    /// Safe while daemons run (sled: stop its daemon first); idempotent.
    Reindex {
        #[arg(long, env = "LANYARD_CONFIG")]
        config: Option<PathBuf>,
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
            Command::Serve { config, log_format } => cli::serve::serve(config, log_format).await,
            Command::Events {
                config,
                json,
                since,
            } => cli::events::events(config, json, since).await,
            Command::Plugin {
                command: PluginCommand::Inspect { path },
            } => cli::plugin::inspect(&path),
            Command::Store {
                command: StoreCommand::Copy { config, from, to },
            } => cli::store::copy_store(config, from, to).await,
            Command::Store {
                command: StoreCommand::ForgetPending { config },
            } => cli::store::forget_pending(config).await,
            Command::Store {
                command: StoreCommand::Reindex { config },
            } => cli::store::reindex(config).await,
            Command::NatsAuth {
                command: NatsAuthCommand::Init { dir, account },
            } => cli::nats_auth::init(&dir, &account),
        }
    });
    // A plugin call that never returned holds a blocking thread; do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}
