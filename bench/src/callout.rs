//! The auth callout scenario: NATS connections admitted through Lanyard's callout with a
//! session's access token, against connections of a user the server knows itself (a
//! password, bypassing the callout), on the same server in the same run; `connect`, a round
//! trip to prove the connection is usable, close. The daemon's CPU per decision comes from
//! its CPU time over the callout round.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lanyard_tests::{FakeIdp, NatsServer};
use serde_json::json;

use crate::report::summarize;
use crate::system::{browse, call, clock_ticks, cpu_ticks};
use crate::{daemon_config, spawn_daemon, wait_ready, Figures};

/// Access tokens minted per session for the first-sight round (16 sessions).
const FRESH_PER_SESSION: usize = 400;

/// The first-sight round ran out of tokens: its workers stop.
#[derive(Debug)]
struct Exhausted;

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no fresh token left")
    }
}

impl std::error::Error for Exhausted {}

/// The static user's password (the bench's own server; no secret).
const STATIC_PASSWORD: &str = "bench-static-password";

/// A server with xkey-encrypted callout requests (as production runs), then one without:
/// the static user, the same token again, a new token each, on each.
pub async fn callout(
    bin_dir: &Path,
    idp: &FakeIdp,
    dir: &Path,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Vec<Figures>> {
    let mut rows = Vec::new();
    for encrypted in [true, false] {
        let round = Round {
            concurrency,
            seconds,
            encrypted,
        };
        rows.extend(one_server(bin_dir, idp, dir, round).await?);
    }
    Ok(rows)
}

#[derive(Debug, Clone, Copy)]
struct Round {
    concurrency: usize,
    seconds: f64,
    encrypted: bool,
}

/// Long because its three rounds share one server, one daemon and the tokens made for them.
async fn one_server(
    bin_dir: &Path,
    idp: &FakeIdp,
    dir: &Path,
    round: Round,
) -> anyhow::Result<Vec<Figures>> {
    let Round {
        concurrency,
        seconds,
        encrypted,
    } = round;
    let (mode, name) = match encrypted {
        true => ("xkey", "callout-xkey"),
        false => ("plain", "callout-plain"),
    };
    let issuer = nkeys::KeyPair::new_account();
    let xkey = encrypted.then(nkeys::XKey::new);
    let conf = dir.join(format!("{name}-server.conf"));
    std::fs::write(&conf, server_conf(&issuer, xkey.as_ref()))?;
    let nats = NatsServer::start_jetstream(&["-c", conf.to_str().context("a UTF-8 path")?])?;
    let config = format!(
        "{}\n[nats_auth]\nenabled = true\nissuer_seed = \"{}\"\n{}\
         account = \"APP\"\n[nats_auth.permissions]\npublish = [\"app.{{user_id}}.>\"]\n\
         subscribe = [\"app.{{user_id}}.>\", \"_INBOX.{{user_id}}.>\"]\n",
        daemon_config(
            &nats.url(),
            idp,
            &dir.join(format!("data-{name}")),
            "callout",
            1
        )
        .replace(
            "[nats]\n",
            "[nats]\nuser = \"lanyard\"\npassword = \"lanyard\"\n"
        ),
        issuer.seed()?,
        match &xkey {
            Some(key) => format!("xkey_seed = \"{}\"\n", key.seed()?),
            None => String::new(),
        },
    );
    let daemon = spawn_daemon(bin_dir, dir, name, &config)?;
    let own =
        async_nats::ConnectOptions::with_user_and_password("lanyard".into(), "lanyard".into())
            .connect(nats.url())
            .await?;
    wait_ready(&own, "callout.v1.jwks", Duration::from_secs(30)).await?;
    let (user_id, token, _) = session(&own).await?;
    let fresh = Arc::new(fresh_tokens(&own, 16, FRESH_PER_SESSION).await?);

    let url = nats.url();
    let static_user = {
        let url = url.clone();
        move || {
            let url = url.clone();
            async move {
                let options = async_nats::ConnectOptions::with_user_and_password(
                    "static".into(),
                    STATIC_PASSWORD.into(),
                );
                anyhow::Ok(options.connect(url).await?)
            }
        }
    };
    let subject = format!("app.{user_id}.bench");
    let mut rows = vec![
        connect_round(
            &format!("NATS connect, static password ({mode} server)"),
            concurrency,
            seconds,
            "static.bench",
            static_user,
            None,
            nats.pid(),
        )
        .await?,
    ];
    let through_callout = {
        let url = url.clone();
        move || {
            let (url, token) = (url.clone(), token.clone());
            async move {
                let options = async_nats::ConnectOptions::with_token(token);
                anyhow::Ok(options.connect(url).await?)
            }
        }
    };
    let mut callout = connect_round(
        &format!("NATS connect, callout {mode}, same token"),
        concurrency,
        seconds,
        &subject,
        through_callout,
        Some(daemon.0.id()),
        nats.pid(),
    )
    .await?;
    let next = Arc::new(AtomicUsize::new(0));
    let first_sight = {
        let url = url.clone();
        move || {
            let url = url.clone();
            let token = fresh.get(next.fetch_add(1, Ordering::Relaxed)).cloned();
            async move {
                let token = token.ok_or(Exhausted)?;
                let options = async_nats::ConnectOptions::with_token(token);
                anyhow::Ok(options.connect(url).await?)
            }
        }
    };
    let mut fresh_round = connect_round(
        &format!("NATS connect, callout {mode}, new token each"),
        concurrency,
        seconds,
        &subject,
        first_sight,
        Some(daemon.0.id()),
        nats.pid(),
    )
    .await?;
    let base = rows[0].per_second;
    for row in [&mut callout, &mut fresh_round] {
        row.ratio_to_baseline = Some(row.per_second / base);
        row.note = format!(
            "ratio to the static-password connect above (target ≥ 0.5); {}",
            row.note
        );
    }
    rows.push(callout);
    rows.push(fresh_round);
    Ok(rows)
}

/// A login through the daemon; its user id, access token and refresh token.
async fn session(client: &async_nats::Client) -> anyhow::Result<(String, String, String)> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = call(
        client,
        "callout.v1.login",
        json!({ "provider": "dev", "login_hint": "callout@bench.test" })
            .to_string()
            .into(),
        None,
    )
    .await?;
    let query = browse(
        &http,
        login["authorization_url"].as_str().context("no URL")?,
    )
    .await?;
    let body = json!({ "query": query, "binding": login["binding"] });
    let reply = call(client, "callout.v1.callback", body.to_string().into(), None).await?;
    let field = |name: &str| -> anyhow::Result<String> {
        Ok(reply["session"][name]
            .as_str()
            .context("no session")?
            .to_owned())
    };
    Ok((
        reply["user"]["id"].as_str().context("no user")?.to_owned(),
        field("access_token")?,
        field("refresh_token")?,
    ))
}

/// `families` sessions of the same user, each refreshed `steps` times: that many access
/// tokens, none of them seen by the callout yet.
async fn fresh_tokens(
    client: &async_nats::Client,
    families: usize,
    steps: usize,
) -> anyhow::Result<Vec<String>> {
    let chains = (0..families).map(|_| async {
        let (_, access, mut refresh) = session(client).await?;
        let mut tokens = vec![access];
        for _ in 0..steps {
            let body = json!({ "refresh_token": refresh }).to_string();
            let reply = call(client, "callout.v1.session.refresh", body.into(), None).await?;
            let session = &reply["session"];
            tokens.push(
                session["access_token"]
                    .as_str()
                    .context("no token")?
                    .to_owned(),
            );
            refresh = session["refresh_token"]
                .as_str()
                .context("no token")?
                .to_owned();
        }
        anyhow::Ok(tokens)
    });
    let chains = futures::future::try_join_all(chains).await?;
    Ok(chains.into_iter().flatten().collect())
}

/// `concurrency` loops of connect, round trip on `subject`, close, for `seconds`.
///
/// Long because the loop, its latencies and the daemon's CPU sampling around it are one
/// measurement.
async fn connect_round<F, Fut>(
    name: &str,
    concurrency: usize,
    seconds: f64,
    subject: &str,
    connect: F,
    daemon: Option<u32>,
    nats: u32,
) -> anyhow::Result<Figures>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<async_nats::Client>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = daemon.and_then(cpu_ticks);
    let others_before = [cpu_ticks(nats), cpu_ticks(std::process::id())];
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (stop, errors, connect) = (stop.clone(), errors.clone(), connect.clone());
        let subject = subject.to_owned();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                match once(&connect, &subject).await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(e) if e.is::<Exhausted>() => break,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    // Until the time is up, or (the first-sight round) the tokens are.
    let timer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        stop.store(true, Ordering::Relaxed);
    });
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await?);
    }
    timer.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let mut figures = summarize(name, &mut latencies, elapsed);
    figures.errors = errors.load(Ordering::Relaxed);
    let others_after = [cpu_ticks(nats), cpu_ticks(std::process::id())];
    let seconds_of = |i: usize| {
        let (before, after) = (others_before[i]?, others_after[i]?);
        Some(after.saturating_sub(before) as f64 / clock_ticks())
    };
    figures.nats_cpu_seconds = seconds_of(0);
    figures.loadgen_cpu_seconds = seconds_of(1);
    if let (Some(before), Some(after)) = (cpu_before, daemon.and_then(cpu_ticks)) {
        let cpu = after.saturating_sub(before) as f64 / clock_ticks();
        figures.daemon_cpu_seconds = Some(cpu);
        let decisions = figures.requests + figures.errors;
        if decisions > 0 {
            figures.daemon_cpu_us_per_request = Some(cpu * 1e6 / decisions as f64);
        }
    }
    let per_connection = |cpu: Option<f64>| {
        cpu.map_or(0.0, |c| {
            c * 1e6 / (figures.requests + figures.errors).max(1) as f64
        })
    };
    figures.note = format!(
        "{concurrency} connecting at once; connect + round trip + close; nats-server {:.0} µs \
         CPU per connection",
        per_connection(figures.nats_cpu_seconds)
    );
    Ok(figures)
}

/// One connection: made, used once, closed.
async fn once<F, Fut>(connect: &F, subject: &str) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<async_nats::Client>>,
{
    let client = connect().await?;
    client.flush().await?;
    let mut inbox = client.subscribe(subject.to_owned()).await?;
    client.publish(subject.to_owned(), "x".into()).await?;
    futures::StreamExt::next(&mut inbox)
        .await
        .context("the round trip came back empty")?;
    client.drain().await?;
    Ok(())
}

/// A server whose clients are asked about through the callout, but Lanyard's own user and
/// the static user.
fn server_conf(issuer: &nkeys::KeyPair, xkey: Option<&nkeys::XKey>) -> String {
    format!(
        r#"accounts {{
  AUTH {{ users: [ {{ user: lanyard, password: "lanyard" }} ] }}
  APP {{ users: [ {{ user: static, password: "{STATIC_PASSWORD}" }} ] }}
}}
authorization {{
  auth_callout {{
    issuer: {issuer}
    {xkey}
    auth_users: [ lanyard, static ]
    account: AUTH
  }}
}}
"#,
        issuer = issuer.public_key(),
        xkey = xkey
            .map(|k| format!("xkey: {}", k.public_key()))
            .unwrap_or_default(),
    )
}
