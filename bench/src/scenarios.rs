//! The scenarios run against one daemon: each drives requests over NATS at a fixed concurrency and reports its figures.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::{Client, HeaderMap};
use lanyard_tests::{FakeIdp, NatsServer};
use serde_json::{json, Value};

use crate::report::summarize;
use crate::system::{
    browse, call, call_unparsed, clock_ticks, daemon_config, dir_size, spawn_daemon, wait_ready,
    Pids, Proc, Sampler,
};
use crate::{Args, Figures, CALLER_TOKEN, NATS_CLIENTS};

pub(crate) struct Env {
    pub(crate) nats: NatsServer,
    pub(crate) idp: FakeIdp,
    pub(crate) _daemon: Proc,
    /// The scale scenario's second daemon, on a seeded store.
    pub(crate) scale_daemon: std::sync::Mutex<Option<Proc>>,
    /// The subject prefix of the daemon under test.
    pub(crate) prefix: std::sync::RwLock<&'static str>,
    pub(crate) _echo: Proc,
    pub(crate) clients: Vec<Client>,
    pub(crate) http: reqwest::Client,
    /// The daemon's ops listener (`http://127.0.0.1:PORT`): probes and metrics.
    pub(crate) ops: String,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) bin_dir: PathBuf,
    pub(crate) clock_ticks: f64,
    pub(crate) pids: std::sync::Mutex<Pids>,
}

impl Env {
    /// Starts the echo responder and the daemon under test on `nats`, connects the clients,
    /// and waits until both answer.
    pub(crate) async fn start(
        bin_dir: PathBuf,
        nats: NatsServer,
        idp: FakeIdp,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Arc<Self>> {
        let echo = Proc(
            Command::new(std::env::current_exe()?)
                .args(["echo", "--url", &nats.url()])
                .stdout(Stdio::piped())
                .spawn()?,
        );
        let ops_port = lanyard_tests::nats::free_port()?;
        let mut config = daemon_config(
            &nats.url(),
            &idp,
            &dir.path().join("data-bench"),
            "lanyard",
            1,
        );
        config.push_str(&format!("\n[ops]\nlisten = \"127.0.0.1:{ops_port}\"\n"));
        let daemon = spawn_daemon(&bin_dir, dir.path(), "bench", &config)?;
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
            bin_dir,
            ops: format!("http://127.0.0.1:{ops_port}"),
            _echo: echo,
            clients,
            dir,
        });
        wait_ready(&env.clients[0], "lanyard.v1.jwks", Duration::from_secs(30)).await?;
        wait_ready(&env.clients[0], "bench.echo", Duration::from_secs(30)).await?;
        Ok(env)
    }
}

pub(crate) const LOGIN_BODY: &str = r#"{"provider":"dev"}"#;

impl Env {
    pub(crate) fn pids(&self) -> Pids {
        *self.pids.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn client(&self, worker: usize) -> &Client {
        &self.clients[worker % self.clients.len()]
    }

    /// Scenario 2: `login` alone.
    pub(crate) async fn login_rate(
        self: &Arc<Self>,
        name: &str,
        args: &Args,
    ) -> anyhow::Result<Figures> {
        self.rate(name, args, |env, w, _| async move {
            call_unparsed(env.client(w), &env.subject("login"), LOGIN_BODY.into()).await
        })
        .await
    }

    /// Scenario 3: login, the provider's redirect, callback; every other login a new user,
    /// the others spread over `returning` users `{prefix}-{k}@bench.test`.
    pub(crate) async fn full_login_rate(
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
    pub(crate) async fn scale(self: &Arc<Self>, args: &Args) -> anyhow::Result<Vec<Figures>> {
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
    pub(crate) fn use_daemon(&self, prefix: &'static str, pid: u32) {
        *self.prefix.write().unwrap_or_else(|e| e.into_inner()) = prefix;
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).daemon = pid;
    }

    /// The subject of `command` on the daemon under test.
    pub(crate) fn subject(&self, command: &str) -> String {
        let prefix = *self.prefix.read().unwrap_or_else(|e| e.into_inner());
        format!("{prefix}.v1.{command}")
    }

    /// token.get that must refresh every time: each worker its own user, tokens that expire
    /// at once, so every call is a provider round trip plus a durable write.
    pub(crate) async fn refresh_rate(self: &Arc<Self>, args: &Args) -> anyhow::Result<Figures> {
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
    pub(crate) async fn rate<F, Fut>(
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
    pub(crate) async fn full_login(&self, worker: usize, email: &str) -> anyhow::Result<()> {
        let callback = self.begin(worker, email).await?;
        call(
            self.client(worker),
            &self.subject("callback"),
            callback.to_string().into(),
            None,
        )
        .await?;
        Ok(())
    }

    /// login and the browser at the provider; returns the callback request, with the
    /// binding the service would have kept in the browser's cookie.
    pub(crate) async fn begin(&self, worker: usize, email: &str) -> anyhow::Result<Value> {
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
        let query = browse(&self.http, url).await?;
        Ok(json!({ "query": query, "binding": login["binding"] }))
    }

    pub(crate) async fn user_id(&self, worker: usize, email: &str) -> anyhow::Result<String> {
        // A returning login answers with the user.
        let callback = self.begin(worker, email).await?;
        let reply = call(
            self.client(worker),
            &self.subject("callback"),
            callback.to_string().into(),
            None,
        )
        .await?;
        Ok(reply["user"]["id"]
            .as_str()
            .context("no user id")?
            .to_owned())
    }

    pub(crate) async fn token_get(&self, worker: usize, user_id: &str) -> anyhow::Result<()> {
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

    /// Lanyard's own sessions: `session.verify` of each worker's access token (what a
    /// service may do on every request: a signature, then the family and the user from the
    /// store), and `session.refresh` chains, each worker rotating its own refresh token (a
    /// durable rotation each).
    pub(crate) async fn session_rates(
        self: &Arc<Self>,
        args: &Args,
    ) -> anyhow::Result<Vec<Figures>> {
        let mut access = Vec::new();
        let mut refresh = Vec::new();
        for w in 0..args.concurrency {
            let callback = self.begin(w, &format!("session-{w}@bench.test")).await?;
            let reply = call(
                self.client(w),
                &self.subject("callback"),
                callback.to_string().into(),
                None,
            )
            .await?;
            let token = |field: &str| reply["session"][field].as_str().map(str::to_owned);
            access.push(token("access_token").context("no access token")?);
            refresh.push(std::sync::Mutex::new(
                token("refresh_token").context("no refresh token")?,
            ));
        }
        let access = Arc::new(access);
        let verify = self
            .rate("session.verify", args, move |env, w, _| {
                let access = access.clone();
                async move {
                    let body = json!({ "token": access[w] }).to_string();
                    call_unparsed(env.client(w), &env.subject("session.verify"), body.into()).await
                }
            })
            .await?;
        let refresh = Arc::new(refresh);
        let rotate = self
            .rate("session.refresh (rotation)", args, move |env, w, _| {
                let refresh = refresh.clone();
                async move {
                    let token = refresh[w].lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let body = json!({ "refresh_token": token }).to_string();
                    let reply = call(
                        env.client(w),
                        &env.subject("session.refresh"),
                        body.into(),
                        None,
                    )
                    .await?;
                    let next = reply["session"]["refresh_token"]
                        .as_str()
                        .context("no refresh token")?;
                    *refresh[w].lock().unwrap_or_else(|e| e.into_inner()) = next.to_owned();
                    Ok(())
                }
            })
            .await?;
        Ok(vec![verify, rotate])
    }

    /// Scenario 4: `in_flight` callbacks at once while the provider adds latency to every
    /// call. Without per-provider serialisation this takes about one provider round trip.
    pub(crate) async fn provider_latency(&self, args: &Args) -> anyhow::Result<Figures> {
        let n = args.in_flight;
        let callbacks = futures::future::join_all(
            (0..n).map(|i| async move { self.begin(i, &format!("latency-{i}@bench.test")).await }),
        )
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
        self.idp
            .set(|k| k.delay = Duration::from_millis(args.latency_ms));
        let sampler = Sampler::start(self.pids(), self.clock_ticks);
        let started = Instant::now();
        let calls = callbacks
            .iter()
            .enumerate()
            .map(|(i, callback)| async move {
                let t0 = Instant::now();
                let result = call(
                    self.client(i),
                    &self.subject("callback"),
                    callback.to_string().into(),
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
