#![allow(clippy::unwrap_used)]
//! Faults survived: graceful stop, overload. (RELIABILITY.md lists what each test proves.)

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lanyard_tests::TestDaemon;
use serde_json::{json, Value};

/// SIGTERM's path (`Daemon::shutdown`) stops taking requests but lets a callback already
/// taken finish: its caller hears success, and the login is on disk for the next daemon.
#[tokio::test]
async fn a_callback_in_flight_at_shutdown_is_answered_and_durable() {
    let mut t = TestDaemon::start().await;
    let (_, query) = t.begin(json!({ "provider": "oidc" })).await;
    t.idp.set(|k| k.delay = Duration::from_millis(500));
    let client = t.client.clone();
    let in_flight = tokio::spawn(async move {
        client
            .request(
                "lanyard.v1.callback",
                Bytes::from(json!({ "query": query }).to_string()),
            )
            .await
    });
    // The callback is now waiting on the slow provider.
    tokio::time::sleep(Duration::from_millis(150)).await;
    t.restart().await;
    let reply = in_flight.await.unwrap().expect("the caller got an answer");
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(body.get("error").is_none(), "answered with success: {body}");
    t.idp.set(|k| k.delay = Duration::ZERO);
    let user = t
        .request("user.get", json!({ "user_id": body["user"]["id"] }))
        .await;
    assert_eq!(user.ok()["user"]["id"], body["user"]["id"], "durable");
}

/// Beyond `max_in_flight` the daemon answers `rate_limited` at once instead of queueing, and
/// serves normally again when the load passes.
#[tokio::test]
async fn beyond_max_in_flight_requests_are_refused_fast() {
    let t = TestDaemon::start_with(|config| {
        *config = config.replacen("data_dir", "max_in_flight = 4\ndata_dir", 1);
    })
    .await;
    // Eight callbacks that each wait on a slow provider hold every slot.
    let mut queries = Vec::new();
    for _ in 0..8 {
        queries.push(t.begin(json!({ "provider": "oidc" })).await.1);
    }
    t.idp.set(|k| k.delay = Duration::from_millis(600));
    let started = std::time::Instant::now();
    let calls = queries.into_iter().map(|query| {
        let client = t.client.clone();
        async move {
            let reply = client
                .request(
                    "lanyard.v1.callback",
                    Bytes::from(json!({ "query": query }).to_string()),
                )
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&reply.payload).unwrap();
            (body, started.elapsed())
        }
    });
    let outcomes: Vec<(Value, Duration)> = futures::stream::iter(calls)
        .buffer_unordered(8)
        .collect()
        .await;
    let limited: Vec<&(Value, Duration)> = outcomes
        .iter()
        .filter(|(b, _)| b["error"]["code"] == "rate_limited")
        .collect();
    let served = outcomes
        .iter()
        .filter(|(b, _)| b.get("error").is_none())
        .count();
    assert_eq!((served, limited.len()), (4, 4), "{outcomes:?}");
    for (_, took) in &limited {
        assert!(
            *took < Duration::from_millis(500),
            "refused at once, not queued: {took:?}"
        );
    }
    t.idp.set(|k| k.delay = Duration::ZERO);
    let reply = t.request("login", json!({ "provider": "oidc" })).await;
    reply.ok();
}

/// A plugin that hangs: the call is bounded by `plugin_timeout_ms` and answered
/// `provider_unavailable`; the instance is restarted and serves its next login, and other
/// instances never notice.
#[tokio::test]
async fn a_hanging_plugin_is_cut_off_and_others_keep_serving() {
    let t = TestDaemon::start_with(|config| {
        *config = config.replacen(
            "redirect_uris = [\"http://app.test/callback/panicky\"]",
            "redirect_uris = [\"http://app.test/callback/panicky\"]\nplugin_timeout_ms = 300",
            1,
        );
    })
    .await;
    let started = std::time::Instant::now();
    let hung = t
        .full_login(json!({ "provider": "panicky", "login_hint": "hang@example.test" }))
        .await;
    assert_eq!(hung.code(), "provider_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the timeout, not the plugin: {:?}",
        started.elapsed()
    );
    // Meanwhile and after, the same instance and the others serve.
    t.full_login(json!({ "provider": "panicky", "login_hint": "calm@example.test" }))
        .await
        .ok();
    t.full_login(json!({ "provider": "oidc" })).await.ok();
}

/// A provider that keeps failing opens its instance's circuit: after `circuit_failures`
/// failures the daemon answers `provider_unavailable` without calling the provider at all,
/// and after `circuit_open_secs` one request probes it and closes the circuit.
#[tokio::test]
async fn repeated_provider_failures_open_the_circuit_and_a_probe_closes_it() {
    let t = TestDaemon::start_with(|config| {
        *config = config.replacen(
            "allowed_algs = [\"RS256\", \"ES256\"]",
            "allowed_algs = [\"RS256\", \"ES256\"]\ncircuit_failures = 3\ncircuit_open_secs = 1",
            1,
        );
    })
    .await;
    let mut queries = Vec::new();
    for _ in 0..5 {
        queries.push(t.begin(json!({ "provider": "oidc" })).await.1);
    }
    t.idp.set(|k| k.token_status = Some(503));
    let callback = |query: String| {
        let t = &t;
        async move {
            t.request("callback", json!({ "query": query }))
                .await
                .code()
                .to_owned()
        }
    };
    let before = t.idp.token_requests();
    for query in queries.drain(..3) {
        assert_eq!(callback(query).await, "provider_unavailable");
    }
    assert_eq!(
        t.idp.token_requests() - before,
        3,
        "three attempts reached the provider"
    );
    // Open: refused at once, the provider untouched; new logins are refused too.
    assert_eq!(callback(queries.remove(0)).await, "provider_unavailable");
    assert_eq!(
        t.idp.token_requests() - before,
        3,
        "the open circuit did not call it"
    );
    assert_eq!(
        t.request("login", json!({ "provider": "oidc" }))
            .await
            .code(),
        "provider_unavailable"
    );
    // Other instances are not affected.
    t.request("login", json!({ "provider": "github" }))
        .await
        .ok();

    // After the open period the provider is back: one probe goes through and closes it.
    t.idp.set(|k| k.token_status = None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, query) = t.begin(json!({ "provider": "oidc" })).await;
    t.request("callback", json!({ "query": query })).await.ok();
    t.full_login(json!({ "provider": "oidc" })).await.ok();
}

/// Code injection: an attacker's code (issued for the attacker's login, so bound to the
/// attacker's PKCE verifier) replayed with the victim's state. The daemon sends the victim's
/// verifier, the provider refuses the exchange, and no session comes of it.
#[tokio::test]
async fn a_code_from_another_login_is_refused() {
    let t = TestDaemon::start().await;
    let (_, attacker) = t
        .begin(json!({ "provider": "oidc", "login_hint": "mallory@example.test" }))
        .await;
    let (_, victim) = t
        .begin(json!({ "provider": "oidc", "login_hint": "victim@example.test" }))
        .await;
    let param = |query: &str, name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let reply = t
        .request(
            "callback",
            json!({ "state": param(&victim, "state"), "code": param(&attacker, "code") }),
        )
        .await;
    assert_eq!(reply.code(), "provider_error", "{}", reply.body);
    // The victim's state is spent; the attacker's own code cannot be used with it either.
    let again = t
        .request(
            "callback",
            json!({ "state": param(&victim, "state"), "code": param(&victim, "code") }),
        )
        .await;
    assert_eq!(again.code(), "invalid_state");
}
