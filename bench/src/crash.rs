//! `lanyard-bench crash`: kill -9 under load. Drives logins over NATS against a release
//! daemon, kills it with SIGKILL at random moments, restarts it on the same store, and
//! checks that every callback answered with success still has its user and identity, its
//! session, and its stored provider tokens. Prints counts and writes
//! `target/bench/crash.json`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::{Client, HeaderMap};
use lanyard_tests::{FakeIdp, NatsServer};
use serde_json::{json, Value};

use super::{
    call, daemon_config, spawn_daemon, wait_ready, CALLER_TOKEN, CLIENT_ID, CLIENT_SECRET,
};

/// What a successful callback promised.
#[derive(Debug, Clone)]
struct Answered {
    user_id: String,
    access_token: String,
}

/// Long because it is the kill loop and its final check over one daemon's data directory, sharing
/// the record of what was answered.
pub async fn crash(kills: usize, workers: usize, out: PathBuf) -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("the bench binary has a directory")?
        .to_path_buf();
    let nats = NatsServer::start()?;
    let idp = FakeIdp::start(CLIENT_ID, CLIENT_SECRET).await?;
    idp.set(|k| k.es256 = true);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data-crash");
    let config = daemon_config(&nats.url(), &idp, &data, "lanyard", 1);
    let client = async_nats::connect(nats.url()).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut rng = seed();

    let mut unchecked: Vec<Answered> = Vec::new();
    let mut all: Vec<Answered> = Vec::new();
    let (mut verified, mut lost, mut refused_after_restart) = (0usize, 0usize, Vec::new());
    let mut restarts = Vec::new();
    let mut daemon = spawn_daemon(&bin_dir, dir.path(), "crash", &config)?;
    wait_ready(&client, "lanyard.v1.jwks", Duration::from_secs(30)).await?;
    for round in 0..kills {
        // Load for a random 0.3-1.5 s, then SIGKILL mid-flight.
        let answered = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                let (client, http, answered, stop) =
                    (client.clone(), http.clone(), answered.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let email = format!("crash-{round}-{w}-{i}@bench.test");
                        if let Ok(done) = full_login(&client, &http, &email).await {
                            answered
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(done);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + next(&mut rng) % 1200)).await;
        daemon.0.kill()?; // SIGKILL
        let _ = daemon.0.wait();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        unchecked.extend(answered.lock().unwrap_or_else(|e| e.into_inner()).drain(..));

        let started = Instant::now();
        daemon = spawn_daemon(&bin_dir, dir.path(), "crash", &config)?;
        if let Err(error) = wait_ready(&client, "lanyard.v1.jwks", Duration::from_secs(30)).await {
            let log = std::fs::read_to_string(dir.path().join("crash.log")).unwrap_or_default();
            anyhow::bail!(
                "the daemon did not come back after kill {}: {error}\n{log}",
                round + 1
            );
        }
        restarts.push(started.elapsed());
        let outcomes = checks(&client, &unchecked).await;
        for (answered, outcome) in unchecked.drain(..).zip(outcomes) {
            match outcome {
                Ok(()) => verified += 1,
                Err(error) => {
                    lost += 1;
                    refused_after_restart.push(format!("{}: {error:#}", answered.user_id));
                }
            }
            all.push(answered);
        }
        eprintln!(
            "  kill {}: {} answered logins so far, {lost} lost, restart {:.0} ms",
            round + 1,
            all.len(),
            restarts.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        );
    }
    // At the end, every answered login once more, after all the kills.
    let final_lost = checks(&client, &all)
        .await
        .iter()
        .filter(|o| o.is_err())
        .count();
    drop(daemon);
    let mean_restart_ms = restarts.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0
        / restarts.len().max(1) as f64;
    let max_restart_ms = restarts
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    let report = json!({
        "command": "make crash",
        "kills": kills,
        "workers": workers,
        "answered_logins": all.len(),
        "verified_after_the_next_kill": verified,
        "lost_after_the_next_kill": lost,
        "lost_at_the_end": final_lost,
        "store_reopened": restarts.len(),
        "restart_ms_mean": mean_restart_ms,
        "restart_ms_max": max_restart_ms,
        "failures": refused_after_restart,
    });
    println!(
        "\n{kills} kills: {} answered logins, {verified} verified after the next kill, {lost} lost; \
         {final_lost} lost at the end; store reopened {} times (restart mean {mean_restart_ms:.0} ms, max {max_restart_ms:.0} ms)",
        all.len(),
        restarts.len()
    );
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("results: {}", out.display());
    anyhow::ensure!(lost == 0 && final_lost == 0, "answered logins were lost");
    Ok(())
}

/// login, the provider's redirect, callback; the callback's promises when it succeeded.
async fn full_login(
    client: &Client,
    http: &reqwest::Client,
    email: &str,
) -> anyhow::Result<Answered> {
    let body = json!({ "provider": "dev", "login_hint": email }).to_string();
    let login = call(client, "lanyard.v1.login", body.into(), None).await?;
    let url = login["authorization_url"]
        .as_str()
        .context("no authorization_url")?;
    let query = crate::browse(http, url).await?;
    let reply = call(
        client,
        "lanyard.v1.callback",
        json!({ "query": query, "binding": login["binding"] })
            .to_string()
            .into(),
        None,
    )
    .await?;
    Ok(Answered {
        user_id: reply["user"]["id"].as_str().context("no user")?.to_owned(),
        access_token: reply["session"]["access_token"]
            .as_str()
            .context("no session")?
            .to_owned(),
    })
}

/// [`check`] for many logins, 32 at a time; outcomes in order.
async fn checks(client: &Client, answered: &[Answered]) -> Vec<anyhow::Result<()>> {
    use futures::StreamExt;
    futures::stream::iter(answered.iter().map(|a| check(client, a)))
        .buffered(32)
        .collect()
        .await
}

/// The user and identity, the session, and the stored provider tokens of a login.
async fn check(client: &Client, answered: &Answered) -> anyhow::Result<()> {
    let user = call(
        client,
        "lanyard.v1.user.get",
        json!({ "user_id": answered.user_id }).to_string().into(),
        None,
    )
    .await
    .context("user.get")?;
    let has_identity = user["user"]["identities"]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|i| i["provider"] == "dev"));
    anyhow::ensure!(has_identity, "no identity: {user}");
    call(
        client,
        "lanyard.v1.session.verify",
        json!({ "token": answered.access_token }).to_string().into(),
        None,
    )
    .await
    .context("session.verify")?;
    let mut headers = HeaderMap::new();
    headers.insert(lanyard_proto::CALLER_TOKEN_HEADER, CALLER_TOKEN);
    let tokens: Value = call(
        client,
        "lanyard.v1.token.get",
        json!({ "user_id": answered.user_id, "provider": "dev" })
            .to_string()
            .into(),
        Some(headers),
    )
    .await
    .context("token.get")?;
    anyhow::ensure!(
        tokens["access_token"].is_string(),
        "no provider token: {tokens}"
    );
    Ok(())
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
        | 1
}

/// xorshift64: random kill moments without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
