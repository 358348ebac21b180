//! The operators' listener (`[ops]`): `/healthz`, `/readyz` and Prometheus `/metrics`,
//! checked against a running daemon: what it counts after real commands, and what readiness
//! waits for when NATS goes away.

use lanyard_tests::TestDaemon;
use serde_json::json;

/// A daemon with the ops listener on a free loopback port, and that port's base URL.
async fn start_ops() -> (TestDaemon, String) {
    let port = lanyard_tests::nats::free_port().unwrap();
    let t = TestDaemon::start_with(|config| {
        config.push_str(&format!("\n[ops]\nlisten = \"127.0.0.1:{port}\"\n"));
    })
    .await;
    (t, format!("http://127.0.0.1:{port}"))
}

async fn get(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, kind, response.text().await.unwrap())
}

/// The value of the sample `name{labels}` in an exposition, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_count_what_the_daemon_did() {
    let (t, ops) = start_ops().await;
    let (status, _, body) = get(&format!("{ops}/healthz")).await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _, body) = get(&format!("{ops}/readyz")).await;
    assert_eq!((status, body.trim()), (200, "ready"), "{body}");

    let done = t.full_login(json!({ "provider": "oidc" })).await;
    let user_id = done.ok()["user"]["id"].as_str().unwrap().to_owned();
    let refused = t
        .request("callback", json!({ "state": "forged", "code": "x" }))
        .await;
    assert_eq!(refused.code(), "invalid_state");
    t.request("jwks", json!({})).await.ok();

    let (status, kind, text) = get(&format!("{ops}/metrics")).await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let ok =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        ok(r#"lanyard_requests_total{command="login",code="ok"}"#),
        1.0
    );
    assert_eq!(
        ok(r#"lanyard_requests_total{command="callback",code="ok"}"#),
        1.0
    );
    assert_eq!(
        ok(r#"lanyard_requests_total{command="callback",code="invalid_state"}"#),
        1.0
    );
    assert_eq!(
        ok(r#"lanyard_requests_total{command="jwks",code="ok"}"#),
        1.0
    );
    assert_eq!(
        ok(r#"lanyard_request_duration_seconds_count{command="login"}"#),
        1.0
    );
    assert_eq!(ok(r#"lanyard_logins_started_total{provider="oidc"}"#), 1.0);
    assert_eq!(
        ok(r#"lanyard_logins_finished_total{provider="oidc",outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        ok(r#"lanyard_provider_circuit_state{provider="oidc"}"#),
        0.0
    );
    assert_eq!(ok(r#"lanyard_provider_up{provider="github"}"#), 2.0);
    assert!(ok("lanyard_events_published_total") >= 2.0, "{text}");
    // The instance's work at the provider: discovery once, then the callback; the plugin's
    // bounded calls.
    assert_eq!(
        ok(
            r#"lanyard_provider_operations_total{provider="oidc",operation="discovery",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        ok(
            r#"lanyard_provider_operations_total{provider="oidc",operation="callback",result="ok"}"#
        ),
        1.0
    );
    assert!(
        ok(
            r#"lanyard_provider_operation_duration_seconds_count{provider="oidc",operation="callback"}"#
        ) >= 1.0
    );
    assert!(
        ok(r#"lanyard_plugin_calls_total{kind="oidc",result="ok"}"#) >= 2.0,
        "{text}"
    );
    assert_eq!(ok("lanyard_events_dropped_total"), 0.0);
    assert!(text.trim_end().ends_with("# EOF"));
    // The store's operations: sled's durable flushes, or JetStream's writes.
    let store = if lanyard_tests::nats::jetstream_under_test() {
        r#"lanyard_store_operation_duration_seconds_count{store="jetstream",operation="write"}"#
    } else {
        r#"lanyard_store_operation_duration_seconds_count{store="sled",operation="flush"}"#
    };
    assert!(ok(store) >= 1.0, "{text}");
    // Labels never name a user or a session.
    assert!(!text.contains(&user_id), "{text}");
}

#[tokio::test]
async fn provider_labels_stay_bounded_whatever_callers_send() {
    let (t, ops) = start_ops().await;
    // A callback names any provider it likes, quotes and newlines included: the metrics
    // label a failed login by the login's own provider, unknown here, never by that.
    for i in 0..300 {
        let provider = format!("made-up-{i}\"}} 1\nlanyard_fake 1");
        let body = json!({ "state": "forged", "code": "x", "provider": provider });
        assert_eq!(t.request("callback", body).await.code(), "invalid_state");
    }
    let (_, _, text) = get(&format!("{ops}/metrics")).await;
    assert!(
        !text.contains("made-up") && !text.contains("lanyard_fake"),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"lanyard_logins_finished_total{provider="unknown",outcome="invalid_state"}"#
        ),
        Some(300.0),
        "{text}"
    );
    // An instance's own label is untouched by all that.
    t.full_login(json!({ "provider": "github" })).await.ok();
    let (_, _, text) = get(&format!("{ops}/metrics")).await;
    assert_eq!(
        sample(
            &text,
            r#"lanyard_logins_finished_total{provider="github",outcome="ok"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn readiness_waits_for_nats() {
    let (mut t, ops) = start_ops().await;
    t.nats.stop();
    // The client notices the connection is gone on its own schedule: wait for the probe to
    // say so (bounded), never for a fixed time.
    let deadline = std::time::Instant::now() + lanyard_tests::PATIENCE;
    loop {
        let (status, _, body) = get(&format!("{ops}/readyz")).await;
        if status == 503 {
            assert!(body.contains("nats: not connected"), "{body}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still ready: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Alive all the same: a liveness probe must not restart a daemon that waits for NATS.
    assert_eq!(get(&format!("{ops}/healthz")).await.0, 200);
}

/// The Grafana dashboard in docs/ parses, and every metric its queries name is one the
/// daemon exposes (a renamed metric would leave a panel silently empty).
#[tokio::test]
async fn the_grafana_dashboard_queries_metrics_that_exist() {
    let (t, ops) = start_ops().await;
    t.full_login(json!({ "provider": "oidc" })).await.ok();
    let (_, _, text) = get(&format!("{ops}/metrics")).await;
    let families: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .collect();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let source = include_str!("../../daemon/src/metrics.rs");
    let mut named = 0;
    for target in panels.iter().flat_map(|p| p["targets"].as_array().unwrap()) {
        let expr = target["expr"].as_str().unwrap();
        for word in expr.split(|c: char| !c.is_alphanumeric() && c != '_') {
            if !word.starts_with("lanyard_") {
                continue;
            }
            named += 1;
            // A sample name is its family's, with a type's suffix.
            let family = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word);
            // Exposed now, or registered (a family with no samples yet, such as the auth
            // callout's without a callout, is not in a scrape).
            let registered = source.contains(&format!("\"{}\"", &family["lanyard_".len()..]));
            assert!(
                families.contains(&family) || registered,
                "{word} (in {expr}) is not exposed: {families:?}"
            );
        }
    }
    assert!(named >= 10, "{named}");
}

/// On the JetStream store, a shared change (a key rotation) comes back through the change
/// feed, and its lag is measured.
#[tokio::test]
async fn the_feed_lag_is_measured_on_jetstream() {
    if !lanyard_tests::nats::jetstream_under_test() {
        return; // sled's feed is local: nothing lags.
    }
    let (t, ops) = start_ops().await;
    t.request("admin.keys.rotate", json!({})).await.ok();
    let deadline = std::time::Instant::now() + lanyard_tests::PATIENCE;
    loop {
        let (_, _, text) = get(&format!("{ops}/metrics")).await;
        if sample(&text, "lanyard_feed_lag_seconds_count").is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no lag measured:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
