//! Device-flow logins (RFC 8628): `device.start` shows a code, Lanyard polls the provider and
//! finishes the login as a callback would, `device.wait` gets the outcome. Against the fake
//! provider's device endpoints, which answer `slow_down` to a poll that comes too soon.

use lanyard_tests::harness::next_event;
use lanyard_tests::{TestDaemon, TestUser};
use serde_json::{json, Value};

/// The standard instances, with the device flow allowed on `oidc` and `github`.
async fn start() -> TestDaemon {
    TestDaemon::start_with(allow_device_flow).await
}

fn allow_device_flow(config: &mut String) {
    for id in ["oidc", "github"] {
        *config = config.replace(
            &format!("[[providers]]\nid = \"{id}\"\n"),
            &format!("[[providers]]\nid = \"{id}\"\ndevice_flow = true\n"),
        );
    }
}

async fn wait_done(t: &TestDaemon, handle: &Value) -> lanyard_tests::harness::Reply {
    t.wait_ended("device.wait", handle).await
}

#[tokio::test]
async fn a_device_login_finishes_like_a_callback() {
    let t = start().await;
    let mut events = t.client.subscribe("lanyard.events.>").await.unwrap();
    let started = t
        .request(
            "device.start",
            json!({ "provider": "oidc", "client": "TV in the lobby" }),
        )
        .await;
    let started = started.ok().clone();
    let code = started["user_code"].as_str().unwrap();
    assert!(started["verification_uri"]
        .as_str()
        .unwrap()
        .ends_with("/device"));
    assert!(started["verification_uri_complete"]
        .as_str()
        .unwrap()
        .contains(code));
    assert_eq!(started["interval"], 1);
    // Nobody approved yet: a wait that runs out says so.
    let handle = &started["handle"];
    let pending = t
        .request(
            "device.wait",
            json!({ "handle": handle, "timeout_secs": 0 }),
        )
        .await;
    assert_eq!(pending.ok()["status"], "pending");

    assert!(t
        .idp
        .approve_device(code, TestUser::from_email("grace@example.test")));
    let done = wait_done(&t, handle).await;
    let done = done.ok();
    assert_eq!(done["status"], "done");
    assert_eq!(done["user"]["email"], "grace@example.test");
    assert_eq!(done["new_user"], true);
    let token = &done["session"]["access_token"];
    t.request("session.verify", json!({ "token": token }))
        .await
        .ok();
    let sessions = t
        .request("session.list", json!({ "user_id": done["user"]["id"] }))
        .await;
    assert_eq!(
        sessions.ok()["sessions"][0]["client"],
        "TV in the lobby",
        "{}",
        sessions.body
    );
    // The same events as a callback's.
    let mut seen = Vec::new();
    while !seen.contains(&"lanyard.events.user.logged_in".to_owned()) {
        seen.push(next_event(&mut events).await.0);
    }
    assert!(
        seen.contains(&"lanyard.events.user.created".to_owned()),
        "{seen:?}"
    );
    // A wait after the end gets the outcome again (an app whose wait was cut off).
    let again = t.request("device.wait", json!({ "handle": handle })).await;
    assert_eq!(again.ok()["session"]["access_token"], *token);
    assert_eq!(t.idp.device_counts().too_early, 0);
    // Neither the device code nor the session's tokens are stored in the clear.
    let refresh = done["session"]["refresh_token"].as_str().unwrap();
    let handle = handle.as_str().unwrap();
    let device_codes = t.idp.device_codes();
    assert_eq!(device_codes.len(), 1);
    lanyard_tests::assert_not_on_disk(
        &t.state_dirs(),
        &[
            ("the refresh token", refresh.as_bytes()),
            ("the handle", handle.as_bytes()),
            ("the device code", device_codes[0].as_bytes()),
        ],
    );
}

#[tokio::test]
async fn a_github_device_login_reads_errors_answered_with_200() {
    // GitHub answers `authorization_pending` with 200 OK; polling goes on all the same.
    let t = start().await;
    let started = t
        .request("device.start", json!({ "provider": "github" }))
        .await;
    let started = started.ok().clone();
    // Lanyard polls on its own; the provider's "pending" came with 200 OK.
    t.idp.await_arrivals("/login/oauth/access_token", 1).await;
    let pending = t
        .request(
            "device.wait",
            json!({ "handle": started["handle"], "timeout_secs": 0 }),
        )
        .await;
    assert_eq!(pending.ok()["status"], "pending");
    let code = started["user_code"].as_str().unwrap();
    assert!(t
        .idp
        .approve_device(code, TestUser::from_email("linus@example.test")));
    let done = wait_done(&t, &started["handle"]).await;
    assert_eq!(done.ok()["identity"]["provider"], "github", "{}", done.body);
}

#[tokio::test]
async fn a_refusal_at_the_provider_is_access_denied() {
    let t = start().await;
    let mut events = t
        .client
        .subscribe("lanyard.events.login.failed")
        .await
        .unwrap();
    let started = t
        .request("device.start", json!({ "provider": "oidc" }))
        .await;
    let started = started.ok().clone();
    assert!(t.idp.deny_device(started["user_code"].as_str().unwrap()));
    let refused = wait_done(&t, &started["handle"]).await;
    assert_eq!(refused.code(), "access_denied");
    let (_, event) = next_event(&mut events).await;
    assert_eq!(event["code"], "access_denied");
    assert_eq!(event["provider"], "oidc");
}

#[tokio::test]
async fn an_expired_device_code_is_login_expired() {
    let t = start().await;
    t.idp.set(|k| k.device_expires_in = Some(2));
    let started = t
        .request("device.start", json!({ "provider": "oidc" }))
        .await;
    let started = started.ok().clone();
    let expired = wait_done(&t, &started["handle"]).await;
    assert_eq!(expired.code(), "login_expired", "{}", expired.body);
    assert_eq!(expired.status_header.as_deref(), Some("410"));
    // Approving afterwards changes nothing: the login is over.
    let code = started["user_code"].as_str().unwrap();
    t.idp
        .approve_device(code, TestUser::from_email("late@example.test"));
    let again = t
        .request("device.wait", json!({ "handle": started["handle"] }))
        .await;
    assert_eq!(again.code(), "login_expired");
}

#[tokio::test]
async fn slow_down_makes_polling_wait_longer() {
    let t = start().await;
    // The first poll is told to slow down: the next must come 5 s later than the interval
    // said, or the fake counts it as too early (and answers slow_down again).
    t.idp.set(|k| k.device_slow_down_once = true);
    let started = t
        .request("device.start", json!({ "provider": "oidc" }))
        .await;
    let started = started.ok().clone();
    t.idp.await_arrivals("/token", 1).await;
    assert!(t.idp.approve_device(
        started["user_code"].as_str().unwrap(),
        TestUser::from_email("patient@example.test")
    ));
    wait_done(&t, &started["handle"]).await.ok();
    let counts = t.idp.device_counts();
    assert_eq!(counts.too_early, 0, "{counts:?}");
    assert_eq!(
        counts.polls, 2,
        "slowed down once, then approved: {counts:?}"
    );
}

#[tokio::test]
async fn a_daemon_restarted_meanwhile_goes_on_polling_when_waited_for() {
    let mut t = start().await;
    let started = t
        .request("device.start", json!({ "provider": "oidc" }))
        .await;
    let started = started.ok().clone();
    t.restart().await;
    assert!(t.idp.approve_device(
        started["user_code"].as_str().unwrap(),
        TestUser::from_email("restart@example.test")
    ));
    // Nobody polls until a wait asks: it finds the login pending with nobody on it.
    let done = wait_done(&t, &started["handle"]).await;
    assert_eq!(done.ok()["user"]["email"], "restart@example.test");
}

#[tokio::test]
async fn device_requests_are_refused_with_their_codes() {
    let t = start().await;
    // `panicky` is not allowed the device flow; a provider nobody configured is unknown.
    let not_allowed = t
        .request("device.start", json!({ "provider": "panicky" }))
        .await;
    assert_eq!(not_allowed.code(), "bad_request");
    assert!(
        not_allowed.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("device_flow"),
        "{}",
        not_allowed.body
    );
    let unknown = t
        .request("device.start", json!({ "provider": "nope" }))
        .await;
    assert_eq!(unknown.code(), "unknown_provider");
    for body in [
        json!({ "provider": "oidc", "scopes": ["a b"] }),
        json!({ "provider": "oidc", "client": "x".repeat(65) }),
        json!({ "provider": "oidc", "colour": "blue" }),
        json!({ "provider": "oidc", "link_session": "not-a-token" }),
    ] {
        let refused = t.request("device.start", body.clone()).await;
        assert!(
            ["bad_request", "unauthorized"].contains(&refused.code()),
            "{body}: {}",
            refused.body
        );
    }
    let unknown = t
        .request("device.wait", json!({ "handle": "no-such-handle" }))
        .await;
    assert_eq!(unknown.code(), "not_found");
    assert_eq!(
        t.request("device.wait", json!({})).await.code(),
        "bad_request"
    );
}

#[tokio::test]
async fn an_instance_without_a_device_endpoint_says_so() {
    // The oauth2 plugin offers the device flow only when configured with an endpoint.
    let t = TestDaemon::start_plus(|issuer| {
        format!(
            "\n[[providers]]\nid = \"plain\"\nkind = \"oauth2\"\ndevice_flow = true\n\
             client_id = \"{}\"\nclient_secret = \"{}\"\n\
             redirect_uris = [\"http://app.test/cb\"]\nauthorization_url = \"{issuer}/oauth/authorize\"\n\
             token_url = \"{issuer}/oauth/token\"\nuserinfo_url = \"{issuer}/userinfo\"\n\
             subject_pointer = \"/sub\"\n",
            lanyard_tests::harness::CLIENT_ID,
            lanyard_tests::harness::CLIENT_SECRET
        )
    })
    .await;
    let refused = t
        .request("device.start", json!({ "provider": "plain" }))
        .await;
    assert_eq!(refused.code(), "bad_request");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no device authorization endpoint"),
        "{}",
        refused.body
    );
}
