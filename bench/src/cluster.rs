//! The cluster scenario: two release daemons in one queue group on a three-node nats-server
//! cluster, sharing the JetStream store with R3 buckets. Its baseline is a NATS echo on the
//! same cluster (requests crossing routes like the daemons' do), measured in the same run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use lanyard_tests::cluster::NatsCluster;
use lanyard_tests::FakeIdp;
use serde_json::json;

use crate::{
    browse, call, daemon_config, rss_mb, spawn_daemon, summarize, wait_ready, Figures, Proc,
};

/// Runs the echo baseline, logins and full logins on the cluster.
///
/// Long because it sets up the cluster, both daemons and the baseline, and measures against that
/// one setup.
pub async fn cluster(
    bin_dir: &Path,
    idp: &FakeIdp,
    dir: &Path,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<Vec<Figures>> {
    let (cluster, key) = start_cluster().await?;
    let mut daemons = Vec::new();
    for d in 0..2 {
        let name = format!("cluster{d}");
        let config = jetstream_config(
            &daemon_config(&cluster.url(), idp, &dir.join(&name), "cluster", 1),
            &key,
        );
        daemons.push(spawn_daemon(bin_dir, dir, &name, &config)?);
        if d == 0 {
            // The first creates the buckets; the second finds them.
            let client = async_nats::connect(cluster.urls()).await?;
            wait_ready(&client, "cluster.v1.jwks", Duration::from_secs(60)).await?;
        }
    }
    // Load from the nodes the echo responder is not on, so every request crosses a route.
    let echo = Proc(
        Command::new(std::env::current_exe()?)
            .args(["echo", "--url", &cluster.node_url(0)])
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let clients = vec![
        async_nats::connect(cluster.node_url(1)).await?,
        async_nats::connect(cluster.node_url(2)).await?,
    ];
    wait_ready(&clients[0], "bench.echo", Duration::from_secs(30)).await?;
    wait_ready(&clients[0], "cluster.v1.jwks", Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids: Vec<u32> = daemons.iter().map(|d| d.0.id()).collect();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    let mut rows = Vec::new();
    let baseline = drive(
        "cluster baseline (NATS echo, 3 nodes)",
        &clients,
        concurrency,
        seconds,
        &[],
        |client, _, _| async move {
            client
                .request("bench.echo", Bytes::from_static(b"{\"provider\":\"dev\"}"))
                .await?;
            Ok(())
        },
    )
    .await?;
    let base = baseline.per_second;
    rows.push(baseline);
    let login = drive(
        "cluster: login, 2 daemons, R3",
        &clients,
        concurrency,
        seconds,
        &pids,
        |client, _, _| async move {
            let body = Bytes::from_static(b"{\"provider\":\"dev\"}");
            call(&client, "cluster.v1.login", body, None).await?;
            Ok(())
        },
    )
    .await?;
    rows.push(login);
    let full = drive(
        "cluster: full login, 2 daemons, R3",
        &clients,
        concurrency,
        seconds,
        &pids,
        move |client, w, i| {
            let http = http.clone();
            async move {
                let email = format!("cluster-{w}-{i}@bench.test");
                let body = json!({ "provider": "dev", "login_hint": email }).to_string();
                let login = call(&client, "cluster.v1.login", body.into(), None).await?;
                let url = login["authorization_url"]
                    .as_str()
                    .context("no authorization_url")?;
                let query = browse(&http, url).await?;
                let body = json!({ "query": query, "binding": login["binding"] }).to_string();
                call(&client, "cluster.v1.callback", body.into(), None).await?;
                Ok(())
            }
        },
    )
    .await?;
    rows.push(full);
    for row in &mut rows[1..] {
        row.ratio_to_baseline = Some(row.per_second / base);
    }
    drop(echo);
    drop(daemons);
    Ok(rows)
}

/// A three-node cluster, and a master key for daemons to share on it.
pub async fn start_cluster() -> anyhow::Result<(NatsCluster, String)> {
    let cluster = NatsCluster::start(3)
        .await
        .context("cannot start the NATS cluster (run through `make bench`)")?;
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| anyhow::anyhow!("no random bytes"))?;
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
    Ok((cluster, key))
}

/// A daemon's config for the JetStream store with R3 buckets on the cluster.
pub fn jetstream_config(base: &str, key: &str) -> String {
    format!(
        "store = \"jetstream\"\n{base}\n[vault]\nmaster_key = \"{key}\"\n\n[jetstream]\nreplicas = 3\n"
    )
}

/// `concurrency` workers, spread over the clients, run `op` for `seconds`; the daemons'
/// peak RSS is sampled meanwhile.
async fn drive<F, Fut>(
    name: &str,
    clients: &[async_nats::Client],
    concurrency: usize,
    seconds: f64,
    pids: &[u32],
    op: F,
) -> anyhow::Result<Figures>
where
    F: Fn(async_nats::Client, usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|w| {
        let (op, errors) = (op.clone(), errors.clone());
        let client = clients[w % clients.len()].clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match op(client.clone(), w, i).await {
                    Ok(()) => latencies.push(t0.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
            latencies
        })
    });
    let pids = pids.to_vec();
    let sampler = tokio::spawn(async move {
        let mut peak = 0.0f64;
        while Instant::now() < deadline {
            let total: f64 = pids.iter().filter_map(|p| rss_mb(*p)).sum();
            peak = peak.max(total);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });
    let mut latencies = Vec::new();
    for worker in futures::future::join_all(workers).await {
        latencies.extend(worker?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut figures = summarize(name, &mut latencies, seconds);
    figures.errors = errors.load(Ordering::Relaxed);
    let peak = sampler.await.unwrap_or_default();
    if peak > 0.0 {
        figures.daemon_peak_rss_mb = Some(peak);
        figures.note = format!("RSS is both daemons' together; {} errors", figures.errors);
    }
    eprintln!(
        "  {}: {:.0}/s, {} errors",
        figures.scenario, figures.per_second, figures.errors
    );
    Ok(figures)
}
