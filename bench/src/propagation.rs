//! The propagation scenario: two release daemons sharing the JetStream store (R3 buckets on a
//! three-node cluster), each on its own subjects. An admin change goes through daemon A; the
//! figure is the time from A's reply to daemon B serving the change, found by asking B in a
//! tight loop (so its resolution is one request's round trip). Its baseline is that round
//! trip: a NATS echo on the same cluster, measured in the same run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::Client;
use bytes::Bytes;
use lanyard_tests::FakeIdp;
use serde_json::{json, Value};

use crate::{call, daemon_config, spawn_daemon, summarize, wait_ready, Figures, Proc};

/// Changes of each kind timed.
const ROUNDS: usize = 100;

/// How long one change may take to reach B before the run fails.
const GIVE_UP: Duration = Duration::from_secs(30);

/// Runs the baseline and each kind of change: create, update, delete, key rotation.
///
/// Long because the four change kinds are measured in one loop over one cluster, so their figures
/// compare.
pub async fn propagation(
    bin_dir: &Path,
    idp: &FakeIdp,
    dir: &Path,
) -> anyhow::Result<Vec<Figures>> {
    let (cluster, key) = crate::cluster::start_cluster().await?;
    // A on node 1, B on node 2: the change crosses the cluster like between two machines.
    let mut daemons = Vec::new();
    for (node, prefix) in [(0, "pa"), (1, "pb")] {
        let config = crate::cluster::jetstream_config(
            &daemon_config(&cluster.node_url(node), idp, &dir.join(prefix), prefix, 1),
            &key,
        );
        daemons.push(spawn_daemon(bin_dir, dir, prefix, &config)?);
        let client = async_nats::connect(cluster.urls()).await?;
        wait_ready(
            &client,
            &format!("{prefix}.v1.jwks"),
            Duration::from_secs(60),
        )
        .await?;
    }
    let echo = Proc(
        Command::new(std::env::current_exe()?)
            .args(["echo", "--url", &cluster.node_url(0)])
            .stdout(Stdio::piped())
            .spawn()?,
    );
    // The admin asks A from node 1; B is watched from node 2, where B is.
    let admin = async_nats::connect(cluster.node_url(0)).await?;
    let watch = async_nats::connect(cluster.node_url(1)).await?;
    wait_ready(&watch, "bench.echo", Duration::from_secs(30)).await?;

    let mut rows = Vec::new();
    let mut round_trips = Vec::new();
    for _ in 0..ROUNDS * 10 {
        let t0 = Instant::now();
        watch
            .request("bench.echo", Bytes::from_static(b"{\"provider\":\"x\"}"))
            .await?;
        round_trips.push(t0.elapsed());
    }
    let mut baseline = summarize(
        "propagation baseline (one request's round trip)",
        &mut round_trips,
        1.0,
    );
    baseline.per_second = 0.0;
    baseline.note = "NATS echo from B's node; the resolution of the figures below".into();
    let base_p50 = baseline.p50_ms;
    rows.push(baseline);

    let instance = |id: &str, scope: &str| {
        json!({
            "id": id,
            "kind": "oidc",
            "client_id": crate::CLIENT_ID,
            "client_secret": crate::CLIENT_SECRET,
            "redirect_uris": ["http://localhost:3000/cb"],
            "issuer": idp.issuer(),
            "scopes": ["openid", scope],
        })
    };
    let mut created = Vec::new();
    let mut updated = Vec::new();
    let mut deleted = Vec::new();
    let mut rotated = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("prop-{round}");
        let body = instance(&id, "first");
        call(
            &admin,
            "pa.v1.admin.provider.create",
            body.to_string().into(),
            None,
        )
        .await?;
        created.push(until(|| serves(&watch, &id, Some("first"))).await?);

        let body = instance(&id, "second");
        call(
            &admin,
            "pa.v1.admin.provider.update",
            body.to_string().into(),
            None,
        )
        .await?;
        updated.push(until(|| serves(&watch, &id, Some("second"))).await?);

        let body = json!({ "id": id }).to_string();
        call(&admin, "pa.v1.admin.provider.delete", body.into(), None).await?;
        deleted.push(until(|| serves(&watch, &id, None)).await?);

        if round % 2 == 0 {
            let reply = call(
                &admin,
                "pa.v1.admin.keys.rotate",
                Bytes::from_static(b"{}"),
                None,
            )
            .await?;
            let kid = reply["kid"].as_str().context("no kid")?.to_owned();
            rotated.push(until(|| publishes(&watch, &kid)).await?);
        }
    }
    for (name, mut samples) in [
        (
            "propagation: provider create, A's reply → B serves",
            created,
        ),
        ("propagation: provider update", updated),
        ("propagation: provider delete", deleted),
        ("propagation: key rotation → B's JWKS", rotated),
    ] {
        let mut figures = summarize(name, &mut samples, 1.0);
        figures.per_second = 0.0;
        figures.note = format!(
            "p99 {:.1} ms = {:.1}× the round trip's p50",
            figures.p99_ms,
            figures.p99_ms / base_p50
        );
        eprintln!(
            "  {}: p50 {:.1} ms, {}",
            figures.scenario, figures.p50_ms, figures.note
        );
        rows.push(figures);
    }
    drop(echo);
    drop(daemons);
    Ok(rows)
}

/// Asks `check` until it holds; the time from the call to the first answer that held.
async fn until<F, Fut>(mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(started.elapsed() < GIVE_UP, "a change never reached B");
    }
}

/// Whether B serves instance `id` asking for `scope` (`None`: B no longer knows it).
async fn serves(client: &Client, id: &str, scope: Option<&str>) -> anyhow::Result<bool> {
    let body = json!({ "provider": id }).to_string();
    let reply = client.request("pb.v1.login", body.into()).await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    Ok(match scope {
        None => reply["error"]["code"] == "unknown_provider",
        Some(scope) => reply["authorization_url"]
            .as_str()
            .and_then(|url| url::Url::parse(url).ok())
            .is_some_and(|url| {
                url.query_pairs()
                    .any(|(k, v)| k == "scope" && v.split(' ').any(|s| s == scope))
            }),
    })
}

/// Whether B's JWKS holds key `kid`.
async fn publishes(client: &Client, kid: &str) -> anyhow::Result<bool> {
    let reply = client
        .request("pb.v1.jwks", Bytes::from_static(b"{}"))
        .await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    Ok(reply["keys"]
        .as_array()
        .is_some_and(|keys| keys.iter().any(|k| k["kid"] == kid)))
}
