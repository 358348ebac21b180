//! The callout when things fail: nats-server restarts (a new server id: connections come
//! back through the callout, and a session's end still reaches them), and one of two daemons
//! sharing the callout's queue group is killed (the other answers).

use lanyard_tests::ServeProcess;

use super::*;

/// Waits for the client to say it is connected again.
async fn reconnected(events: &mut tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>) {
    let wait = async {
        while let Some(event) = events.recv().await {
            if matches!(event, async_nats::Event::Connected) {
                return;
            }
        }
        panic!("the client's events ended");
    };
    tokio::time::timeout(lanyard_tests::PATIENCE, wait)
        .await
        .expect("the client reconnects");
}

#[tokio::test]
async fn connections_come_back_through_the_callout_after_nats_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = callout_daemon(dir.path()).await;
    let mut user = log_in_and_connect(&t, "restart@example.test").await;

    let conf = dir.path().join("callout.conf");
    t.nats.restart(&["-c", conf.to_str().unwrap()]).unwrap();
    disconnected(&mut user.events).await;
    // The client reconnects with the same token; the new server asks the daemon again.
    reconnected(&mut user.events).await;
    assert!(
        round_trip(&user.client, format!("app.{}.back", user.user_id)).await,
        "the reconnected session keeps its permissions"
    );
    // The new server has a new id: the note of the new connection names it, and a logout
    // reaches it.
    t.request(
        "session.revoke",
        json!({ "refresh_token": user.login["session"]["refresh_token"] }),
    )
    .await
    .ok();
    disconnected(&mut user.events).await;
}

/// Connects with `token`, as a client would: a refusal while the queue group changes is
/// tried again, a few times.
async fn connect_retrying(t: &TestDaemon, token: &str) -> async_nats::Client {
    let mut last = String::new();
    for _ in 0..5 {
        match connect(t, token).await {
            Ok((client, _)) => return client,
            Err(e) => last = e,
        }
    }
    panic!("no connection after 5 tries: {last}");
}

#[tokio::test]
async fn the_callout_keeps_answering_when_one_of_two_daemons_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = callout_daemon(dir.path()).await;
    // Sessions verify on every daemon only when they share the store (JetStream); on sled
    // each daemon has its own, and callers (from config) are what both know.
    let shared = lanyard_tests::nats::jetstream_under_test();
    let session = t.full_login(json!({ "provider": "oidc" })).await.ok()["session"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let tokens: Vec<&str> = match shared {
        true => vec![BILLING, &session],
        false => vec![BILLING],
    };

    let data = dir.path().join("second-data");
    std::fs::create_dir_all(&data).unwrap();
    let config = t.config.replace(
        &format!("data_dir = \"{}\"", t.data_dir.path().display()),
        &format!("data_dir = \"{}\"", data.display()),
    );
    assert_ne!(
        config, t.config,
        "the second daemon has its own data directory"
    );
    let mut second = ServeProcess::start(&config, dir.path(), "second");
    second.wait_serving().await;

    // The second daemon answers alone while the first is stopped.
    t.stop().await;
    for token in &tokens {
        connect_retrying(&t, token).await;
    }
    t.restart().await;

    // Killed while clients connect: every one of them gets in (a client whose request went
    // to the dying daemon is refused and tries again, as clients do).
    let mut clients = Vec::new();
    for i in 0..12 {
        if i == 4 {
            second.signal("KILL");
        }
        clients.push(connect_retrying(&t, tokens[i % tokens.len()]).await);
    }
    // And what got in works (the billing caller's clients: every other one).
    for client in clients.iter().step_by(tokens.len()) {
        assert!(round_trip(client, "billing.after-the-kill".into()).await);
    }
}
