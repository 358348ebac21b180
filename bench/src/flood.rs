//! The flood scenario: far more callbacks at once than the daemon will hold, each waiting on
//! a provider that takes 2 s to answer. Run twice in one process, with `max_in_flight` at
//! its bound and with the bound lifted, so the memory the bound saves is a ratio measured on
//! the same machine, in the same minute.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use lanyard_tests::{FakeIdp, NatsServer};
use serde_json::{json, Value};

use crate::{daemon_config, rss_mb, spawn_daemon, wait_ready, Figures, CLIENT_ID, CLIENT_SECRET};

/// How long the provider's token endpoint takes during the flood.
const PROVIDER_DELAY: Duration = Duration::from_secs(2);

/// Both rounds: the bound, then no bound.
pub async fn flood(
    bin_dir: &Path,
    nats: &NatsServer,
    dir: &Path,
    callbacks: usize,
    bound: usize,
) -> anyhow::Result<Vec<Figures>> {
    let idp = FakeIdp::start(CLIENT_ID, CLIENT_SECRET).await?;
    idp.set(|k| k.es256 = true);
    let mut rows = Vec::new();
    for (round, max_in_flight) in [bound, 1_000_000].into_iter().enumerate() {
        rows.push(round_of(bin_dir, nats, &idp, dir, round, callbacks, max_in_flight).await?);
    }
    Ok(rows)
}

/// Long because a round is one measured experiment (start, flood, count, stop) whose figures come
/// from the same variables.
async fn round_of(
    bin_dir: &Path,
    nats: &NatsServer,
    idp: &FakeIdp,
    dir: &Path,
    round: usize,
    callbacks: usize,
    max_in_flight: usize,
) -> anyhow::Result<Figures> {
    let prefix: &'static str = if round == 0 { "flood0" } else { "flood1" };
    let config = format!(
        "max_in_flight = {max_in_flight}\n{}",
        daemon_config(
            &nats.url(),
            idp,
            &dir.join(format!("data-{prefix}")),
            prefix,
            1
        )
    );
    let daemon = spawn_daemon(bin_dir, dir, prefix, &config)?;
    let pid = daemon.0.id();
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(60)))
        .connect(nats.url())
        .await?;
    wait_ready(
        &client,
        &format!("{prefix}.v1.jwks"),
        Duration::from_secs(30),
    )
    .await?;

    // States to call back with: real logins, so every callback reaches the provider.
    idp.set(|k| k.slow_paths.clear());
    let login = Bytes::from(json!({ "provider": "dev" }).to_string());
    let mut logins = Vec::with_capacity(callbacks);
    let mut pending = FuturesUnordered::new();
    for _ in 0..callbacks {
        pending.push(client.request(format!("{prefix}.v1.login"), login.clone()));
        if pending.len() >= 64 {
            logins.push(started_login(pending.next().await)?);
        }
    }
    while let Some(reply) = pending.next().await {
        logins.push(started_login(Some(reply))?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_mb(pid).unwrap_or_default();

    // The flood: every callback at once; the provider answers each after 2 s.
    idp.set(|k| k.slow_paths = [("/token".to_owned(), PROVIDER_DELAY)].into());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_mb(pid).unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let started = Instant::now();
    let mut flood: FuturesUnordered<_> = logins
        .into_iter()
        .map(|(state, binding)| {
            let body = json!({ "state": state, "code": "bogus", "binding": binding });
            let body = Bytes::from(body.to_string());
            let client = client.clone();
            async move {
                let sent = Instant::now();
                let reply = client.request(format!("{prefix}.v1.callback"), body).await;
                let code = match reply {
                    Ok(message) => serde_json::from_slice::<Value>(&message.payload)
                        .ok()
                        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| "ok".into()),
                    Err(_) => "no_answer".into(),
                };
                (code, sent.elapsed())
            }
        })
        .collect();
    let mut refused = Vec::new();
    let mut served = 0u64;
    let mut other = std::collections::BTreeMap::<String, u64>::new();
    while let Some((code, took)) = flood.next().await {
        match code.as_str() {
            "rate_limited" => refused.push(took),
            // A bogus code: the provider refuses it, after its 2 s.
            "provider_error" => served += 1,
            _ => *other.entry(code).or_default() += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.unwrap_or_default();
    idp.set(|k| k.slow_paths.clear());
    drop(daemon);

    refused.sort_unstable();
    let quantile = |q: usize| {
        refused
            .get((refused.len() * q / 100).min(refused.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let (p50, p99) = (quantile(50), quantile(99));
    let bound = if max_in_flight >= 1_000_000 {
        "no bound".to_owned()
    } else {
        format!("max_in_flight {max_in_flight}")
    };
    let figures = Figures {
        scenario: format!("flood: {callbacks} callbacks at once, {bound}"),
        requests: callbacks as u64,
        errors: other.values().sum(),
        seconds,
        p50_ms: p50,
        p99_ms: p99,
        daemon_peak_rss_mb: Some(peak),
        note: format!(
            "RSS {rss_before:.0} → peak {peak:.0} MB; {served} served by the 2 s provider, {} \
             refused rate_limited (p50 {p50:.0} ms, p99 {p99:.0} ms){}",
            refused.len(),
            if other.is_empty() {
                String::new()
            } else {
                format!("; other: {other:?}")
            }
        ),
        ..Figures::default()
    };
    eprintln!("  {}: {}", figures.scenario, figures.note);
    Ok(figures)
}

/// The `state` and `binding` of a login reply.
fn started_login(
    reply: Option<Result<async_nats::Message, async_nats::RequestError>>,
) -> anyhow::Result<(String, String)> {
    let message = reply.context("no reply")??;
    let body: Value = serde_json::from_slice(&message.payload)?;
    let field = |name: &str| {
        body[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("login failed: {body}"))
    };
    Ok((field("state")?, field("binding")?))
}
