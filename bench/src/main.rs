//! `make bench`: Lanyard's benchmark. It starts its own nats-server, the fake identity
//! provider, a NATS echo responder (the baseline: the ceiling NATS request-reply sets on this
//! machine) and the release daemon as child processes, drives each scenario over NATS at a
//! fixed concurrency, samples the daemon's RSS and CPU from /proc, and prints one table plus
//! a JSON file. Every rate is also given as a ratio to the baseline measured in the same run,
//! so runs compare across noisy machines.

mod callout;
mod cluster;
mod crash;
mod flood;
mod propagation;
mod report;
mod scenarios;
mod system;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use lanyard_tests::{FakeIdp, NatsServer};
use serde::Serialize;
use serde_json::json;

use report::{print_table, summarize};
use scenarios::{Env, LOGIN_BODY};
use system::{browse, call, daemon_config, idle, rss_mb, spawn_daemon, wait_ready, Proc};

const CLIENT_ID: &str = "lanyard-bench";

const CLIENT_SECRET: &str = "bench-secret";

const CALLER_TOKEN: &str = "bench-caller-token-0000";

const NATS_CLIENTS: usize = 4;

#[derive(Debug, Parser)]
#[command(about = "Lanyard's benchmark (run through `make bench`)")]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Requests in flight at once in the rate scenarios.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds each rate scenario runs.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Logins in flight at once in the provider-latency scenario.
    #[arg(long, default_value_t = 1000)]
    in_flight: usize,
    /// Added provider latency in that scenario, in milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Users and identities in the store for the scale scenario.
    #[arg(long, default_value_t = 1_000_000)]
    scale_users: u64,
    /// Callbacks sent at once in the flood scenario.
    #[arg(long, default_value_t = 8000)]
    flood_callbacks: usize,
    /// The daemon's `max_in_flight` in the flood scenario's bounded round.
    #[arg(long, default_value_t = 512)]
    flood_bound: usize,
    /// Run only these scenarios (comma-separated: idle, login, full, latency, token, refresh,
    /// session, scale, flood, cluster, propagation, callout, probes);
    /// the baseline always runs. All of them when absent.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
}

impl Args {
    fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|s| s == scenario))
    }
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// The baseline responder: answers every request on `bench.echo` with its payload.
    Echo {
        #[arg(long)]
        url: String,
    },
    /// Fills a store in `dir` with `users` users, each with an identity, through the store's
    /// bulk import (the path a store copy takes).
    Seed {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        users: u64,
    },
    /// kill -9 under load: SIGKILL the daemon at random moments during logins, restart it,
    /// and check every answered login survived (`make crash`).
    Crash {
        #[arg(long, default_value_t = 20)]
        kills: usize,
        #[arg(long, default_value_t = 16)]
        workers: usize,
        #[arg(long, default_value = "target/bench/crash.json")]
        out: PathBuf,
    },
}

/// One scenario's figures.
#[derive(Debug, Clone, Default, Serialize)]
struct Figures {
    scenario: String,
    requests: u64,
    errors: u64,
    seconds: f64,
    per_second: f64,
    /// `per_second` divided by the baseline's, from this run.
    ratio_to_baseline: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    daemon_peak_rss_mb: Option<f64>,
    daemon_cpu_seconds: Option<f64>,
    /// Daemon CPU per request, in microseconds.
    daemon_cpu_us_per_request: Option<f64>,
    /// CPU the rest of the machine's participants used meanwhile: nats-server, and this
    /// process (load generator and fake provider) plus the echo responder.
    nats_cpu_seconds: Option<f64>,
    loadgen_cpu_seconds: Option<f64>,
    note: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match &args.command {
        Some(Sub::Echo { url }) => runtime.block_on(echo(url)),
        Some(Sub::Seed { dir, users }) => runtime.block_on(seed(dir, *users)),
        Some(Sub::Crash {
            kills,
            workers,
            out,
        }) => runtime.block_on(crash::crash(*kills, *workers, out.clone())),
        None => runtime.block_on(bench(&args)),
    }
}

async fn echo(url: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await?;
    let mut requests = client.queue_subscribe("bench.echo", "echo".into()).await?;
    client.flush().await?;
    println!("ready");
    while let Some(message) = requests.next().await {
        if let Some(reply) = message.reply {
            client.publish(reply, message.payload).await?;
        }
    }
    Ok(())
}

async fn seed(dir: &Path, users: u64) -> anyhow::Result<()> {
    use lanyard::store::{IdentityRecord, SledStore, UserRecord};
    // A large cache while loading: pages stay in memory instead of being read back.
    let store = SledStore::open_with(dir, 1 << 30)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let started = Instant::now();
    let mut first = 0;
    while first < users {
        let last = (first + 10_000).min(users);
        let chunk: Vec<_> = (first..last)
            .map(|i| {
                let local = seed_local(i);
                let email = format!("{local}@bench.test");
                let user = UserRecord {
                    id: format!("usr_seed{i:010}"),
                    username: local.clone(),
                    email: Some(email.clone()),
                    email_verified: true,
                    name: Some(format!("Test {local}")),
                    picture: None,
                    created_at: now,
                    disabled_at: None,
                };
                let identity = IdentityRecord {
                    provider: "dev".into(),
                    subject: format!("sub-{local}"),
                    user_id: user.id.clone(),
                    email: Some(email),
                    email_verified: true,
                    groups: Vec::new(),
                    created_at: now,
                    updated_at: now,
                };
                (user, vec![identity])
            })
            .collect();
        store.import_users(&chunk).await?;
        first = last;
    }
    println!("{users} {:.3}", started.elapsed().as_secs_f64());
    Ok(())
}

/// The local part of seeded user `i`'s email; the fake provider derives the same subject.
fn seed_local(i: u64) -> String {
    format!("seed-{i}")
}

async fn bench(args: &Args) -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("the bench binary has a directory")?
        .to_path_buf();
    let nats = NatsServer::start()?;
    let idp = FakeIdp::start(CLIENT_ID, CLIENT_SECRET).await?;
    // ES256 signing costs the fake provider ~20x less CPU than RS256, so it is not the
    // bottleneck; the daemon verifies either kind.
    idp.set(|k| k.es256 = true);
    let dir = tempfile::tempdir()?;
    let mut results: Vec<Figures> = Vec::new();

    // Idle: ten providers loaded, time to the first answered request, resting RSS.
    if args.wants("idle") {
        results.push(idle(&bin_dir, &nats, &idp, dir.path()).await?);
    }

    let env = Env::start(bin_dir.clone(), nats, idp, dir).await?;

    let baseline = env
        .rate("baseline (NATS echo)", args, |env, _, _| async move {
            let reply = env.clients[0]
                .request("bench.echo", Bytes::from_static(LOGIN_BODY.as_bytes()))
                .await?;
            anyhow::ensure!(reply.payload.len() == LOGIN_BODY.len(), "echo mangled");
            Ok(())
        })
        .await?;
    let base_rate = baseline.per_second;
    results.push(baseline);

    run_scenarios(&env, args, &bin_dir, &mut results).await?;
    write_report(args, &mut results, base_rate)?;
    drop(env);
    Ok(())
}

/// Every scenario after the baseline that `args` asks for, in the table's order.
async fn run_scenarios(
    env: &Arc<Env>,
    args: &Args,
    bin_dir: &Path,
    results: &mut Vec<Figures>,
) -> anyhow::Result<()> {
    if args.wants("login") {
        results.push(env.login_rate("login", args).await?);
    }
    if args.wants("full") {
        results.push(
            env.full_login_rate("full login (50% new users)", args, "returning", 100)
                .await?,
        );
    }
    if args.wants("latency") {
        results.push(env.provider_latency(args).await?);
    }
    if args.wants("token") {
        // token.get: one user's stored token, read by many callers (the cache-hit path).
        env.full_login(0, "tokens@bench.test").await?;
        let tokens_user = Arc::new(env.user_id(0, "tokens@bench.test").await?);
        results.push(
            env.rate("token.get (stored, fresh)", args, move |env, w, _| {
                let user = tokens_user.clone();
                async move { env.token_get(w, &user).await }
            })
            .await?,
        );
    }
    if args.wants("probes") {
        // The readiness probe: in-memory reads only, so it should stay well under a
        // millisecond whatever the providers and the store are doing.
        for path in ["healthz", "readyz"] {
            let url = Arc::new(format!("{}/{path}", env.ops));
            results.push(
                env.rate(&format!("/{path} (ops HTTP)"), args, move |env, _, _| {
                    let url = url.clone();
                    async move {
                        let reply = env.http.get(url.as_str()).send().await?;
                        anyhow::ensure!(reply.status() == 200, "{url}: {}", reply.status());
                        reply.bytes().await?;
                        Ok(())
                    }
                })
                .await?,
            );
        }
    }
    if args.wants("refresh") {
        results.push(env.refresh_rate(args).await?);
    }
    if args.wants("session") {
        results.extend(env.session_rates(args).await?);
    }
    if args.wants("scale") {
        results.extend(env.scale(args).await?);
    }
    if args.wants("cluster") {
        results.extend(
            cluster::cluster(
                bin_dir,
                &env.idp,
                env.dir.path(),
                args.concurrency,
                args.seconds,
            )
            .await?,
        );
    }
    if args.wants("propagation") {
        results.extend(propagation::propagation(bin_dir, &env.idp, env.dir.path()).await?);
    }
    if args.wants("callout") {
        results.extend(
            callout::callout(
                bin_dir,
                &env.idp,
                env.dir.path(),
                args.concurrency.min(16),
                args.seconds,
            )
            .await?,
        );
    }
    if args.wants("flood") {
        results.extend(
            flood::flood(
                bin_dir,
                &env.nats,
                env.dir.path(),
                args.flood_callbacks,
                args.flood_bound,
            )
            .await?,
        );
    }

    Ok(())
}

/// Fills in each rate's ratio to the baseline, prints the table and writes the JSON report.
fn write_report(args: &Args, results: &mut [Figures], base_rate: f64) -> anyhow::Result<()> {
    for figures in results.iter_mut() {
        if figures.ratio_to_baseline.is_none() && figures.per_second > 0.0 {
            figures.ratio_to_baseline = Some(figures.per_second / base_rate);
        }
    }
    print_table(results);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let report = json!({
        "command": "make bench",
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "concurrency": args.concurrency,
        "seconds_per_scenario": args.seconds,
        "scenarios": results,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("\nresults: {}", args.out.display());
    Ok(())
}
