//! Device logins across daemons: a wait on one daemon sees the outcome of a login another
//! polls for, and when the polling daemon stops, a wait elsewhere takes the polling over.

use serde_json::{json, Value};

use super::{once_only, request, TwoDaemons};
use lanyard_tests::TestUser;

/// Waits on `prefix`'s daemon until the device login is no longer pending.
async fn wait_on(client: &async_nats::Client, prefix: &str, handle: &Value) -> Value {
    let deadline = std::time::Instant::now() + lanyard_tests::PATIENCE;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the login never ended"
        );
        let reply = request(
            client,
            format!("{prefix}.v1.device.wait"),
            json!({ "handle": handle, "timeout_secs": 20 }),
        )
        .await;
        if reply["status"] != "pending" {
            return reply;
        }
    }
}

#[tokio::test]
async fn a_device_login_is_waited_for_on_any_daemon_and_outlives_its_poller() {
    let Some(_turn) = once_only().await else {
        return;
    };
    let TwoDaemons {
        cluster,
        idp,
        a,
        b,
        _dir,
    } = TwoDaemons::start().await;
    let client = async_nats::connect(cluster.node_url(2)).await.unwrap();

    // Started (and polled for) on a; b's wait sees it end.
    let started = request(
        &client,
        "a.v1.device.start".into(),
        json!({ "provider": "oidc" }),
    )
    .await;
    let pending = request(
        &client,
        "b.v1.device.wait".into(),
        json!({ "handle": started["handle"], "timeout_secs": 0 }),
    )
    .await;
    assert_eq!(pending["status"], "pending", "{pending}");
    let code = started["user_code"].as_str().unwrap();
    assert!(idp.approve_device(code, TestUser::from_email("tv@example.test")));
    let done = wait_on(&client, "b", &started["handle"]).await;
    assert_eq!(done["user"]["email"], "tv@example.test", "{done}");

    // Started on a, which then stops: b's wait takes the polling over and finishes it.
    let started = request(
        &client,
        "a.v1.device.start".into(),
        json!({ "provider": "oidc" }),
    )
    .await;
    a.shutdown().await;
    let code = started["user_code"].as_str().unwrap();
    assert!(idp.approve_device(code, TestUser::from_email("kiosk@example.test")));
    let done = wait_on(&client, "b", &started["handle"]).await;
    assert_eq!(done["user"]["email"], "kiosk@example.test", "{done}");
    // One poller at a time: never a poll sooner than the interval (two pollers would make
    // them).
    assert_eq!(idp.device_counts().too_early, 0);
    b.shutdown().await;
}
