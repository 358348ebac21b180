//! The `lanyard` command: `serve` runs the daemon, `events` tails its events, `store copy`
//! copies one store into another, `plugin inspect` shows what a provider plugin says about
//! itself, `nats-auth init` makes the auth callout's keys and configs, and `provider`,
//! `keys`, `status`, `user` and `session` are admin commands to a running daemon. Each lives
//! in `cli/`; this file parses the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::admin::Ask;

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
    /// Provider instances of a running daemon (admin commands over NATS).
    Provider {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: ProviderCommand,
    },
    /// The session signing keys of a running daemon.
    Keys {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// A running daemon's health: providers, events, limits (`admin.status`).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Users of a running daemon.
    User {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Sessions of a running daemon.
    Session {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: SessionCommand,
    },
}

/// How an admin command reaches the daemon, and how it prints.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The config file whose [nats] connection, subject prefix and [admin] token to use.
    #[arg(long, env = "LANYARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Print the reply's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ProviderCommand {
    /// Every instance (config file and runtime), secrets masked.
    List,
    /// One instance.
    Get { id: String },
    /// A new runtime instance from FILE: a [[providers]] table in TOML, or JSON.
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    /// Replace a runtime instance with FILE's.
    Update {
        #[arg(long)]
        file: PathBuf,
    },
    /// Change some keys of instance ID: FILE holds them (a key set to null in JSON is
    /// removed).
    Patch {
        id: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Delete a runtime instance.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Sign new session tokens with a new key (the old one verifies until its tokens expire).
    Rotate,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// A user with their identities.
    Get { user_id: String },
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// End one session of a user (as `session.revoke` with its ids).
    Revoke {
        #[arg(long)]
        user: String,
        #[arg(long)]
        session: String,
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
            Command::Provider { admin, command } => {
                let ask = match command {
                    ProviderCommand::List => Ask::ProviderList,
                    ProviderCommand::Get { id } => Ask::ProviderGet(id),
                    ProviderCommand::Create { file } => Ask::ProviderCreate(file),
                    ProviderCommand::Update { file } => Ask::ProviderUpdate(file),
                    ProviderCommand::Patch { id, file } => Ask::ProviderPatch(id, file),
                    ProviderCommand::Delete { id } => Ask::ProviderDelete(id),
                };
                cli::admin::run(admin.config, admin.json, ask).await
            }
            Command::Keys {
                admin,
                command: KeysCommand::Rotate,
            } => cli::admin::run(admin.config, admin.json, Ask::KeysRotate).await,
            Command::Status { admin } => {
                cli::admin::run(admin.config, admin.json, Ask::Status).await
            }
            Command::User {
                admin,
                command: UserCommand::Get { user_id },
            } => cli::admin::run(admin.config, admin.json, Ask::UserGet(user_id)).await,
            Command::Session {
                admin,
                command: SessionCommand::Revoke { user, session },
            } => {
                let ask = Ask::SessionRevoke {
                    user_id: user,
                    session_id: session,
                };
                cli::admin::run(admin.config, admin.json, ask).await
            }
        }
    });
    // A plugin call that never returned holds a blocking thread; do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}
