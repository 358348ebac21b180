//! Stopping: a callback in flight at shutdown is answered and durable; a signal stops the daemon whatever NATS is doing.

use std::time::Duration;

use bytes::Bytes;
use lanyard_tests::{patient_request, ServeProcess, TestDaemon, PATIENCE};
use serde_json::{json, Value};

use super::PATIENT_ALGS;

/// SIGTERM's path (`Daemon::shutdown`) stops taking requests but lets a callback already
/// taken finish: its caller hears success, and the login is on disk for the next daemon.
#[tokio::test]
async fn a_callback_in_flight_at_shutdown_is_answered_and_durable() {
    // A grace period no loaded machine runs out of, and a provider timeout the held token
    // request does not reach: the callback is answered, with success, within both.
    let mut t = TestDaemon::start_with(|config| {
        *config = config.replacen("data_dir", "shutdown_grace_secs = 60\ndata_dir", 1);
        *config = config.replacen(PATIENT_ALGS.0, PATIENT_ALGS.1, 1);
    })
    .await;
    let login = t.begin(json!({ "provider": "oidc" })).await;
    let tokens = t.idp.arrivals("/token");
    let gate = t.idp.hold("/token");
    let client = t.client.clone();
    let in_flight = tokio::spawn(async move {
        patient_request(
            &client,
            "lanyard.v1.callback",
            Bytes::from(login.callback().to_string()),
        )
        .await
    });
    // The daemon has taken the callback: its token request waits at the provider.
    t.idp.await_arrivals("/token", tokens + 1).await;
    // The provider answers only once the daemon has stopped taking requests, so the callback
    // is in flight when the shutdown begins, however slow the machine.
    let opener = tokio::spawn(open_once_stopped(t.client.clone(), gate));
    t.restart().await;
    opener.await.unwrap();
    let reply = in_flight.await.unwrap().expect("the caller got an answer");
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(body.get("error").is_none(), "answered with success: {body}");
    let user = t
        .request("user.get", json!({ "user_id": body["user"]["id"] }))
        .await;
    assert_eq!(user.ok()["user"]["id"], body["user"]["id"], "durable");
}

/// Opens `gate` once no daemon answers: the server says nobody is subscribed any more. A
/// probe that reached the daemon as it left may go unanswered; it only means asking again,
/// so it waits briefly.
async fn open_once_stopped(client: async_nats::Client, gate: lanyard_tests::Gate) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let probe = async_nats::Request::new()
            .payload(Bytes::from("{}"))
            .timeout(Some(Duration::from_millis(500)));
        let probe = client.send_request("lanyard.v1.jwks", probe).await;
        if probe.is_err_and(|e| e.kind() == async_nats::RequestErrorKind::NoResponders) {
            gate.open();
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never stopped taking requests"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGTERM and Ctrl-C (SIGINT) end a daemon process whatever NATS is doing: up, already
/// gone (the client reconnecting), or going away during the stop with a callback in flight.
/// Events that cannot be published are counted in the log, and the login that produced
/// them is durable: the next daemon on the same store knows its user.
///
/// Long because its three cases (NATS up, down, back) share one daemon process and its
/// configuration, and read best in order.
#[tokio::test]
async fn a_signal_stops_the_daemon_whatever_nats_is_doing() {
    use lanyard_tests::{harness, FakeIdp, NatsServer, TestUser};
    // On the JetStream store NATS is the store too; this is about the connection.
    if lanyard_tests::nats::jetstream_under_test() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let idp = FakeIdp::start(harness::CLIENT_ID, harness::CLIENT_SECRET)
        .await
        .unwrap();
    let mut nats = NatsServer::start().unwrap();
    let config = format!(
        r#"data_dir = "{data}"
shutdown_grace_secs = 20

[nats]
url = "{url}"

[[providers]]
id = "oidc"
kind = "oidc"
client_id = "{id}"
client_secret = "{secret}"
redirect_uris = ["http://app.test/callback"]
issuer = "{issuer}"
allowed_algs = ["RS256", "ES256"]
"#,
        data = dir.path().join("data").display(),
        url = nats.url(),
        id = harness::CLIENT_ID,
        secret = harness::CLIENT_SECRET,
        issuer = idp.issuer(),
    );
    let connect = |url: String| async move {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .request_timeout(Some(PATIENCE))
            .connect(url)
            .await
            .unwrap()
    };
    // A callback that is in the daemon's hands: its token request reached the provider,
    // which holds it until the returned gate opens (a fixed delay would only make it likely
    // that the callback is still in flight at the next step). (The task is only aborted at
    // the end: its answer, if any, is not what these steps look at.)
    let in_flight = |client: async_nats::Client, idp: &FakeIdp, callback: Value| {
        let idp = idp.clone();
        async move {
            let tokens_before = idp.arrivals("/token");
            let gate = idp.hold("/token");
            let callback = tokio::spawn(async move {
                let body = callback.to_string();
                let _ = client.request("lanyard.v1.callback", body.into()).await;
            });
            idp.await_arrivals("/token", tokens_before + 1).await;
            (callback, gate)
        }
    };
    // A login approved at the provider; returns the callback request that completes it.
    let begin = |client: async_nats::Client, idp: &FakeIdp| {
        let idp = idp.clone();
        async move {
            let reply = client
                .request(
                    "lanyard.v1.login",
                    json!({"provider": "oidc"}).to_string().into(),
                )
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&reply.payload).unwrap();
            let query = idp
                .approve(body["authorization_url"].as_str().unwrap())
                .await
                .unwrap();
            json!({ "query": query, "binding": body["binding"] })
        }
    };

    // NATS up, Ctrl-C.
    let mut daemon = ServeProcess::start(&config, dir.path(), "up");
    daemon.wait_serving().await;
    daemon.signal("INT");
    let log = daemon.wait_exit().await;
    assert!(log.contains("stopped"), "{log}");

    // NATS gone with a login's events still to publish: a callback in flight when NATS
    // stops completes (the provider answers its token request once the daemon knows NATS is
    // gone, so the events wait in its queue), then SIGTERM.
    let mut daemon = ServeProcess::start(&config, dir.path(), "down");
    daemon.wait_serving().await;
    let client = connect(nats.url()).await;
    idp.set_user(TestUser::from_email("stopping@example.com"));
    let login = begin(client.clone(), &idp).await;
    let (callback, gate) = in_flight(client.clone(), &idp, login).await;
    // The stop lets the callback finish within the grace period; its events cannot go out.
    nats.stop();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !daemon.log_text().contains("disconnected") {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never noticed: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.open();
    daemon.signal("TERM");
    let log = daemon.wait_exit().await;
    callback.abort();
    assert!(
        log.contains("events could not all be published") && log.contains("lost=3"),
        "the three events of the login are counted as lost: {log}"
    );

    // NATS back: a daemon on the same store knows the user that login created.
    nats.restart(&[]).unwrap();
    let mut daemon = ServeProcess::start(&config, dir.path(), "after");
    daemon.wait_serving().await;
    let client = connect(nats.url()).await;
    let login = begin(client.clone(), &idp).await;
    let reply = client
        .request("lanyard.v1.callback", login.to_string().into())
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["new_user"], false, "the login was durable: {body}");

    // NATS going away during the stop, with a callback in flight.
    let login = begin(client.clone(), &idp).await;
    let (callback, gate) = in_flight(client, &idp, login).await;
    daemon.signal("TERM");
    nats.stop();
    gate.open();
    daemon.wait_exit().await;
    callback.abort();
}
