//! Overload: beyond `max_in_flight` requests are refused fast; provider and caller rate limits.

use bytes::Bytes;
use futures::StreamExt;
use lanyard_tests::{patient_request, TestDaemon, PATIENCE};
use serde_json::{json, Value};

use super::PATIENT_ALGS;

/// Beyond `max_in_flight` the daemon answers `rate_limited` at once instead of queueing, and
/// serves normally again when the load passes.
#[tokio::test]
async fn beyond_max_in_flight_requests_are_refused_fast() {
    let t = TestDaemon::start_with(|config| {
        *config = config.replacen("data_dir", "max_in_flight = 4\ndata_dir", 1);
        // The held token requests must outlast however long the test takes to look.
        *config = config.replacen(PATIENT_ALGS.0, PATIENT_ALGS.1, 1);
    })
    .await;
    let mut logins = Vec::new();
    for _ in 0..8 {
        logins.push(t.begin(json!({ "provider": "oidc" })).await);
    }
    // Eight callbacks; the provider answers no token request until the test says so, so the
    // four that get a slot hold it for as long as the test looks.
    let gate = t.idp.hold("/token");
    let mut calls: futures::stream::FuturesUnordered<_> = logins
        .into_iter()
        .map(|login| {
            let client = t.client.clone();
            async move {
                let body = Bytes::from(login.callback().to_string());
                let reply = patient_request(&client, "lanyard.v1.callback", body)
                    .await
                    .expect("every callback is answered");
                serde_json::from_slice::<Value>(&reply.payload).unwrap()
            }
        })
        .collect();
    // The other four are answered while every slot is still taken: refused, not queued (a
    // queued one would wait for a slot, and no slot frees before the gate opens).
    let mut refused = Vec::new();
    while refused.len() < 4 {
        refused.push(calls.next().await.unwrap());
    }
    assert!(
        refused.iter().all(|b| b["error"]["code"] == "rate_limited"),
        "{refused:?}"
    );
    gate.open();
    let served: Vec<Value> = calls.collect().await;
    assert!(
        served.len() == 4 && served.iter().all(|b| b.get("error").is_none()),
        "{served:?}"
    );
    let reply = t.request("login", json!({ "provider": "oidc" })).await;
    reply.ok();
}

/// Per-provider and per-caller rate limits: beyond them `rate_limited`, at once; other
/// providers and callers are not affected.
#[tokio::test]
async fn provider_and_caller_rate_limits() {
    let t = TestDaemon::start_with(|config| {
        *config = config.replacen(
            "allowed_algs = [\"RS256\", \"ES256\"]",
            "allowed_algs = [\"RS256\", \"ES256\"]\nrate_limit_per_sec = 2",
            1,
        );
        config.push_str(
            "\n[[callers]]\nname = \"chatty\"\ntoken = \"chatty-token-0123456789\"\nrate_limit_per_sec = 3\n\n[[callers]]\nname = \"calm\"\ntoken = \"calm-token-0123456789\"\n",
        );
    })
    .await;
    until_limited(2, || t.request("login", json!({ "provider": "oidc" }))).await;
    t.request("login", json!({ "provider": "github" }))
        .await
        .ok();

    let as_caller = |token: &'static str| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Lanyard-Caller-Token", token);
        headers
    };
    until_limited(3, || {
        t.request_with_headers(
            "jwks",
            as_caller("chatty-token-0123456789"),
            Bytes::from("{}"),
        )
    })
    .await;
    for _ in 0..8 {
        t.request_with_headers(
            "jwks",
            as_caller("calm-token-0123456789"),
            Bytes::from("{}"),
        )
        .await
        .ok();
    }
}

/// Sends `request`s, ten at a time, until one is answered `rate_limited`, under a limit of
/// `per_sec` a second (bursts up to as many) that nothing has used yet: the burst gets
/// through, and never more than the limit allows in the time taken so far. How long that is
/// depends on the machine, so the bound grows with it; a limit that is not applied soon lets
/// more through than any time taken allows.
async fn until_limited<F>(per_sec: u64, request: impl Fn() -> F)
where
    F: std::future::Future<Output = lanyard_tests::Reply>,
{
    let started = std::time::Instant::now();
    let mut codes: Vec<String> = Vec::new();
    while !codes.iter().any(|c| c == "rate_limited") {
        assert!(
            started.elapsed() < PATIENCE,
            "never rate_limited: {codes:?}"
        );
        let batch = futures::future::join_all((0..10).map(|_| request())).await;
        codes.extend(batch.iter().map(|reply| {
            reply.body["error"]["code"]
                .as_str()
                .unwrap_or("ok")
                .to_owned()
        }));
        let ok = codes.iter().filter(|c| *c == "ok").count() as u64;
        let allowed = per_sec + per_sec * started.elapsed().as_secs().saturating_add(1);
        assert!(
            (per_sec..=allowed).contains(&ok),
            "{ok} got through, {per_sec} to {allowed} allowed: {codes:?}"
        );
    }
    assert!(
        codes.iter().all(|c| c == "ok" || c == "rate_limited"),
        "{codes:?}"
    );
}
