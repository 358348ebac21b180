//! `make bench`: Lanyard's benchmark. It starts its own nats-server, the fake identity
//! provider, a NATS echo responder (the baseline: the ceiling NATS request-reply sets on this
//! machine) and the release daemon as child processes, drives each scenario over NATS at a
//! fixed concurrency, samples the daemon's RSS and CPU from /proc, and prints one table plus
//! a JSON file. Every rate is also given as a ratio to the baseline measured in the same run,
//! so runs compare across noisy machines.

mod cluster;
mod crash;
mod flood;
mod propagation;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use lanyard_tests::{FakeIdp, NatsServer};
use serde::Serialize;
use serde_json::{json, Value};

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
    /// scale, flood, cluster, propagation);
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

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Env {
    nats: NatsServer,
    idp: FakeIdp,
    _daemon: Proc,
    /// The scale scenario's second daemon, on a seeded store.
    scale_daemon: std::sync::Mutex<Option<Proc>>,
    /// The subject prefix of the daemon under test.
    prefix: std::sync::RwLock<&'static str>,
    _echo: Proc,
    clients: Vec<Client>,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    clock_ticks: f64,
    pids: std::sync::Mutex<Pids>,
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

    let echo = Proc(
        Command::new(std::env::current_exe()?)
            .args(["echo", "--url", &nats.url()])
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let daemon = spawn_daemon(
        &bin_dir,
        dir.path(),
        "bench",
        &daemon_config(
            &nats.url(),
            &idp,
            &dir.path().join("data-bench"),
            "lanyard",
            1,
        ),
    )?;
    let mut clients = Vec::new();
    for _ in 0..NATS_CLIENTS {
        clients.push(async_nats::connect(nats.url()).await?);
    }
    let env = Arc::new(Env {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        clock_ticks: clock_ticks(),
        pids: std::sync::Mutex::new(Pids {
            daemon: daemon.0.id(),
            nats: nats.pid(),
            echo: echo.0.id(),
        }),
        nats,
        idp,
        _daemon: daemon,
        scale_daemon: std::sync::Mutex::new(None),
        prefix: std::sync::RwLock::new("lanyard"),
        bin_dir: bin_dir.clone(),
        _echo: echo,
        clients,
        dir,
    });
    wait_ready(&env.clients[0], "lanyard.v1.jwks", Duration::from_secs(30)).await?;
    wait_ready(&env.clients[0], "bench.echo", Duration::from_secs(30)).await?;

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
    if args.wants("refresh") {
        results.push(env.refresh_rate(args).await?);
    }
    if args.wants("scale") {
        results.extend(env.scale(args).await?);
    }
    if args.wants("cluster") {
        results.extend(
            cluster::cluster(
                &bin_dir,
                &env.idp,
                env.dir.path(),
                args.concurrency,
                args.seconds,
            )
            .await?,
        );
    }
    if args.wants("propagation") {
        results.extend(propagation::propagation(&bin_dir, &env.idp, env.dir.path()).await?);
    }
    if args.wants("flood") {
        results.extend(
            flood::flood(
                &bin_dir,
                &env.nats,
                env.dir.path(),
                args.flood_callbacks,
                args.flood_bound,
            )
            .await?,
        );
    }

    for figures in &mut results {
        if figures.ratio_to_baseline.is_none() && figures.per_second > 0.0 {
            figures.ratio_to_baseline = Some(figures.per_second / base_rate);
        }
    }
    print_table(&results);
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
    drop(env);
    Ok(())
}

const LOGIN_BODY: &str = r#"{"provider":"dev"}"#;

impl Env {
    fn pids(&self) -> Pids {
        *self.pids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn client(&self, worker: usize) -> &Client {
        &self.clients[worker % self.clients.len()]
    }

    /// Scenario 2: `login` alone.
    async fn login_rate(self: &Arc<Self>, name: &str, args: &Args) -> anyhow::Result<Figures> {
        self.rate(name, args, |env, w, _| async move {
            call(
                env.client(w),
                &env.subject("login"),
                LOGIN_BODY.into(),
                None,
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Scenario 3: login, the provider's redirect, callback; every other login a new user,
    /// the others spread over `returning` users `{prefix}-{k}@bench.test`.
    async fn full_login_rate(
        self: &Arc<Self>,
        name: &str,
        args: &Args,
        prefix: &'static str,
        returning: u64,
    ) -> anyhow::Result<Figures> {
        self.rate(name, args, move |env, w, i| async move {
            let email = if i % 2 == 0 {
                // A multiplicative hash spreads the workers' picks over the whole pool.
                let k = (i / 2 + w as u64 * 1_000_003).wrapping_mul(2_654_435_761) % returning;
                format!("{prefix}-{k}@bench.test")
            } else {
                format!("new-{returning}-{w}-{i}@bench.test")
            };
            env.full_login(w, &email).await
        })
        .await
    }

    /// Scenario 6: the same login and full-login load against a second daemon whose store
    /// already holds `--scale-users` users, each with an identity. Seeding goes through the
    /// store's bulk import, in a child process, before that daemon starts. The machine's
    /// speed drifts by tens of percent within minutes, so each measurement on the big store
    /// is paired with one on the empty store taken right before it, twice over.
    async fn scale(self: &Arc<Self>, args: &Args) -> anyhow::Result<Vec<Figures>> {
        let users = args.scale_users;
        let data = self.dir.path().join("data-scale");
        eprintln!("  seeding {users} users (this takes a while)...");
        let output = Command::new(std::env::current_exe()?)
            .args(["seed", "--users", &users.to_string(), "--dir"])
            .arg(&data)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "seeding failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let seed_seconds: f64 = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN);
        // Let the kernel write the seed's pages back before anything is measured.
        let _ = Command::new("sync").status();
        let config = daemon_config(&self.nats.url(), &self.idp, &data, "scale", 1);
        let daemon = spawn_daemon(&self.bin_dir, self.dir.path(), "scale", &config)?;
        let scale_pid = daemon.0.id();
        *self.scale_daemon.lock().unwrap_or_else(|e| e.into_inner()) = Some(daemon);
        wait_ready(&self.clients[0], "scale.v1.jwks", Duration::from_secs(60)).await?;
        let on_disk = dir_size(&data) as f64 / 1e6;
        let empty_pid = self.pids().daemon;

        let tag = format!("{}M users", users as f64 / 1e6);
        let mut out = Vec::new();
        for (kind, full) in [("login", false), ("full login", true)] {
            for round in 1..=2 {
                let mut pair = Vec::new();
                for (prefix, pid) in [("lanyard", empty_pid), ("scale", scale_pid)] {
                    self.use_daemon(prefix, pid);
                    let name = format!("{kind}, {tag}, round {round}");
                    pair.push(if full {
                        self.full_login_rate(&name, args, "seed", users).await?
                    } else {
                        self.login_rate(&name, args).await?
                    });
                }
                let mut big = pair.pop().context("two runs")?;
                let empty = pair.pop().context("two runs")?;
                big.note = format!(
                    "{:.2} of the empty store's {:.0}/s just before; CPU per request {:.2} of its",
                    big.per_second / empty.per_second,
                    empty.per_second,
                    big.daemon_cpu_us_per_request.unwrap_or(f64::NAN)
                        / empty.daemon_cpu_us_per_request.unwrap_or(f64::NAN)
                );
                out.push(big);
            }
        }
        self.use_daemon("lanyard", empty_pid);
        if let Some(first) = out.first_mut() {
            first.note.push_str(&format!(
                "; {users} users seeded in {seed_seconds:.0} s; store {on_disk:.0} MB on disk"
            ));
        }
        Ok(out)
    }

    /// Points the scenarios (subjects and CPU sampling) at another daemon.
    fn use_daemon(&self, prefix: &'static str, pid: u32) {
        *self.prefix.write().unwrap_or_else(|e| e.into_inner()) = prefix;
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).daemon = pid;
    }

    /// The subject of `command` on the daemon under test.
    fn subject(&self, command: &str) -> String {
        let prefix = *self.prefix.read().unwrap_or_else(|e| e.into_inner());
        format!("{prefix}.v1.{command}")
    }

    /// token.get that must refresh every time: each worker its own user, tokens that expire
    /// at once, so every call is a provider round trip plus a durable write.
    async fn refresh_rate(self: &Arc<Self>, args: &Args) -> anyhow::Result<Figures> {
        self.idp.set(|k| k.expires_in = Some(0));
        let mut users = Vec::new();
        for w in 0..args.concurrency {
            let email = format!("refresh-{w}@bench.test");
            self.full_login(w, &email).await?;
            users.push(self.user_id(w, &email).await?);
        }
        let users = Arc::new(users);
        let before = self.idp.refresh_requests();
        let mut refresh = self
            .rate("token.get (refresh every call)", args, move |env, w, _| {
                let users = users.clone();
                async move { env.token_get(w, &users[w]).await }
            })
            .await?;
        refresh.note = format!(
            "{} refreshes at the provider",
            self.idp.refresh_requests() - before
        );
        self.idp.set(|k| k.expires_in = None);
        Ok(refresh)
    }

    /// Runs `op` from `concurrency` workers for `seconds`, measuring each call.
    async fn rate<F, Fut>(
        self: &Arc<Self>,
        name: &str,
        args: &Args,
        op: F,
    ) -> anyhow::Result<Figures>
    where
        F: Fn(Arc<Env>, usize, u64) -> Fut + Send + Sync + Clone + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
    {
        let sampler = Sampler::start(self.pids(), self.clock_ticks);
        let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
        let errors = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
        let started = Instant::now();
        let workers = (0..args.concurrency).map(|w| {
            let op = op.clone();
            let env = self.clone();
            let errors = errors.clone();
            let first_error = first_error.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match op(env.clone(), w, i).await {
                        Ok(()) => latencies.push(t0.elapsed()),
                        Err(error) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| format!("{error:#}"));
                        }
                    }
                    i += 1;
                }
                latencies
            })
        });
        let mut latencies: Vec<Duration> = Vec::new();
        for worker in futures::future::join_all(workers).await {
            latencies.extend(worker?);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let sample = sampler.stop().await;
        let mut figures = summarize(name, &mut latencies, elapsed);
        figures.errors = errors.load(Ordering::Relaxed);
        sample.fill(&mut figures);
        if let Some(error) = first_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            figures.note = format!("first error: {error}");
        }
        eprintln!(
            "  {name}: {:.0}/s, {} errors",
            figures.per_second, figures.errors
        );
        Ok(figures)
    }

    /// login, the browser at the provider, callback.
    async fn full_login(&self, worker: usize, email: &str) -> anyhow::Result<()> {
        let query = self.begin(worker, email).await?;
        call(
            self.client(worker),
            &self.subject("callback"),
            json!({ "query": query }).to_string().into(),
            None,
        )
        .await?;
        Ok(())
    }

    /// login and the browser at the provider; returns the callback query.
    async fn begin(&self, worker: usize, email: &str) -> anyhow::Result<String> {
        let body = json!({ "provider": "dev", "login_hint": email }).to_string();
        let login = call(
            self.client(worker),
            &self.subject("login"),
            body.into(),
            None,
        )
        .await?;
        let url = login["authorization_url"]
            .as_str()
            .context("no authorization_url")?;
        browse(&self.http, url).await
    }

    async fn user_id(&self, worker: usize, email: &str) -> anyhow::Result<String> {
        // A returning login answers with the user.
        let query = self.begin(worker, email).await?;
        let reply = call(
            self.client(worker),
            &self.subject("callback"),
            json!({ "query": query }).to_string().into(),
            None,
        )
        .await?;
        Ok(reply["user"]["id"]
            .as_str()
            .context("no user id")?
            .to_owned())
    }

    async fn token_get(&self, worker: usize, user_id: &str) -> anyhow::Result<()> {
        let mut headers = HeaderMap::new();
        headers.insert(lanyard_proto::CALLER_TOKEN_HEADER, CALLER_TOKEN);
        let body = json!({ "user_id": user_id, "provider": "dev" }).to_string();
        call(
            self.client(worker),
            &self.subject("token.get"),
            body.into(),
            Some(headers),
        )
        .await?;
        Ok(())
    }

    /// Scenario 4: `in_flight` callbacks at once while the provider adds latency to every
    /// call. Without per-provider serialisation this takes about one provider round trip.
    async fn provider_latency(&self, args: &Args) -> anyhow::Result<Figures> {
        let n = args.in_flight;
        let queries = futures::future::join_all(
            (0..n).map(|i| async move { self.begin(i, &format!("latency-{i}@bench.test")).await }),
        )
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
        self.idp
            .set(|k| k.delay = Duration::from_millis(args.latency_ms));
        let sampler = Sampler::start(self.pids(), self.clock_ticks);
        let started = Instant::now();
        let calls = queries.iter().enumerate().map(|(i, query)| async move {
            let t0 = Instant::now();
            let result = call(
                self.client(i),
                &self.subject("callback"),
                json!({ "query": query }).to_string().into(),
                None,
            )
            .await;
            (result.is_ok(), t0.elapsed())
        });
        let outcomes = futures::future::join_all(calls).await;
        let wall = started.elapsed();
        self.idp.set(|k| k.delay = Duration::ZERO);
        let sample = sampler.stop().await;
        let mut latencies: Vec<Duration> = outcomes.iter().filter(|o| o.0).map(|o| o.1).collect();
        let mut figures = summarize(
            &format!("{n} callbacks in flight, provider +{} ms", args.latency_ms),
            &mut latencies,
            wall.as_secs_f64(),
        );
        figures.errors = outcomes.iter().filter(|o| !o.0).count() as u64;
        sample.fill(&mut figures);
        figures.ratio_to_baseline = Some(f64::NAN);
        figures.note = format!("wall time {:.3} s for all {n}", wall.as_secs_f64());
        eprintln!("  {}: {}", figures.scenario, figures.note);
        Ok(figures)
    }
}

/// Sends a request; an error envelope is an error.
async fn call(
    client: &Client,
    subject: &str,
    body: Bytes,
    headers: Option<HeaderMap>,
) -> anyhow::Result<Value> {
    let message = match headers {
        Some(headers) => {
            client
                .request_with_headers(subject.to_owned(), headers, body)
                .await?
        }
        None => client.request(subject.to_owned(), body).await?,
    };
    let reply: Value = serde_json::from_slice(&message.payload)?;
    if let Some(error) = reply.get("error") {
        bail!("{subject}: {error}");
    }
    Ok(reply)
}

/// The browser at the fake provider: follows the authorization URL to the provider's
/// redirect and returns the callback's query string.
async fn browse(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let response = http.get(url).send().await?;
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("the provider did not redirect")?;
    Ok(url::Url::parse(location)?
        .query()
        .unwrap_or_default()
        .to_owned())
}

async fn wait_ready(client: &Client, subject: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            client.request(subject.to_owned(), Bytes::from_static(b"{}")),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{subject} did not answer within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn daemon_config(
    nats_url: &str,
    idp: &FakeIdp,
    data: &Path,
    prefix: &str,
    providers: usize,
) -> String {
    let mut config = format!(
        r#"data_dir = "{data}"
[nats]
url = "{url}"
subject_prefix = "{prefix}"
queue_group = "{prefix}"

[[callers]]
name = "bench"
token = "{CALLER_TOKEN}"
"#,
        data = data.display(),
        url = nats_url,
    );
    for i in 0..providers {
        let id = if i == 0 {
            "dev".to_owned()
        } else {
            format!("dev-{i}")
        };
        config.push_str(&format!(
            r#"
[[providers]]
id = "{id}"
kind = "oidc"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uris = ["http://localhost:3000/cb"]
issuer = "{issuer}"
store_tokens = true
token_readers = ["bench"]
"#,
            issuer = idp.issuer()
        ));
    }
    config
}

fn spawn_daemon(bin_dir: &Path, dir: &Path, name: &str, config: &str) -> anyhow::Result<Proc> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(bin_dir.join("lanyard"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("LANYARD_LOG", "warn")
        .env_remove("LANYARD_CONFIG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start target/release/lanyard (run `make bench`, which builds it)")?;
    Ok(Proc(child))
}

/// Start-up to the first answered request, and resting RSS, with ten providers configured.
async fn idle(
    bin_dir: &Path,
    nats: &NatsServer,
    idp: &FakeIdp,
    dir: &Path,
) -> anyhow::Result<Figures> {
    let client = async_nats::connect(nats.url()).await?;
    let config = daemon_config(&nats.url(), idp, &dir.join("data-idle"), "idle", 10);
    let started = Instant::now();
    let daemon = spawn_daemon(bin_dir, dir, "idle", &config)?;
    wait_ready(&client, "idle.v1.jwks", Duration::from_secs(30)).await?;
    let ready = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_mb(daemon.0.id());
    drop(daemon);
    let figures = Figures {
        scenario: "idle, 10 providers".into(),
        seconds: ready.as_secs_f64(),
        daemon_peak_rss_mb: rss,
        note: format!(
            "start-up to first answered request {:.0} ms; RSS after 1 s idle",
            ready.as_secs_f64() * 1000.0
        ),
        ..Figures::default()
    };
    eprintln!("  {}: {}", figures.scenario, figures.note);
    Ok(figures)
}

fn summarize(name: &str, latencies: &mut [Duration], seconds: f64) -> Figures {
    latencies.sort_unstable();
    let pick = |q: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    Figures {
        scenario: name.to_owned(),
        requests: latencies.len() as u64,
        seconds,
        per_second: latencies.len() as f64 / seconds,
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        p999_ms: pick(0.999),
        ..Figures::default()
    }
}

/// Samples the daemon's RSS every 50 ms and its CPU time at both ends.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Option<f64>>,
    pids: Pids,
    before: [Option<u64>; 3],
    ticks: f64,
}

/// The processes whose CPU a scenario reports.
#[derive(Debug, Clone, Copy)]
struct Pids {
    daemon: u32,
    nats: u32,
    /// The echo responder, counted with the load generator.
    echo: u32,
}

impl Pids {
    /// Daemon, nats-server, load generator (this process and the echo responder) ticks.
    fn ticks(&self) -> [Option<u64>; 3] {
        let own = cpu_ticks(std::process::id());
        let echo = cpu_ticks(self.echo);
        [
            cpu_ticks(self.daemon),
            cpu_ticks(self.nats),
            own.zip(echo).map(|(a, b)| a + b),
        ]
    }
}

/// What a sampler saw: the daemon's peak RSS, and CPU seconds of the daemon, nats-server
/// and the load generator.
struct Sample {
    rss: Option<f64>,
    cpu: [Option<f64>; 3],
}

impl Sample {
    fn fill(&self, figures: &mut Figures) {
        figures.daemon_peak_rss_mb = self.rss;
        figures.daemon_cpu_seconds = self.cpu[0];
        figures.nats_cpu_seconds = self.cpu[1];
        figures.loadgen_cpu_seconds = self.cpu[2];
        if figures.requests > 0 {
            figures.daemon_cpu_us_per_request =
                self.cpu[0].map(|s| s * 1e6 / figures.requests as f64);
        }
    }
}

impl Sampler {
    fn start(pids: Pids, ticks: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let pid = pids.daemon;
        let task = tokio::spawn(async move {
            let mut peak: Option<f64> = None;
            while !flag.load(Ordering::Relaxed) {
                if let Some(rss) = rss_mb(pid) {
                    peak = Some(peak.map_or(rss, |p| p.max(rss)));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        });
        Self {
            stop,
            task,
            pids,
            before: pids.ticks(),
            ticks,
        }
    }

    async fn stop(self) -> Sample {
        let after = self.pids.ticks();
        self.stop.store(true, Ordering::Relaxed);
        let rss = self.task.await.ok().flatten();
        let mut cpu = [None; 3];
        for (i, slot) in cpu.iter_mut().enumerate() {
            if let (Some(b), Some(a)) = (self.before[i], after[i]) {
                *slot = Some(a.saturating_sub(b) as f64 / self.ticks);
            }
        }
        Sample { rss, cpu }
    }
}

/// The bytes of all files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_size(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn print_table(results: &[Figures]) {
    println!(
        "\n{:<40} {:>9} {:>7} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8}",
        "scenario",
        "requests",
        "errors",
        "per sec",
        "ratio",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "RSS MB",
        "CPU s",
        "µs/req",
        "others s"
    );
    for f in results {
        let opt = |v: Option<f64>| {
            v.filter(|v| v.is_finite())
                .map_or("-".to_owned(), |v| format!("{v:.2}"))
        };
        println!(
            "{:<40} {:>9} {:>7} {:>10.0} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7} {:>7} {:>8}",
            f.scenario,
            f.requests,
            f.errors,
            f.per_second,
            opt(f.ratio_to_baseline),
            f.p50_ms,
            f.p99_ms,
            f.p999_ms,
            opt(f.daemon_peak_rss_mb),
            opt(f.daemon_cpu_seconds),
            f.daemon_cpu_us_per_request
                .map_or("-".to_owned(), |v| format!("{v:.0}")),
            opt(f
                .nats_cpu_seconds
                .zip(f.loadgen_cpu_seconds)
                .map(|(a, b)| a + b)),
        );
        if !f.note.is_empty() {
            println!("    {}", f.note);
        }
    }
}
