//! Lanyard as the NATS auth callout, against a real nats-server (the pinned 2.10+ one)
//! configured for it: a user logs in, connects to NATS with its session, and may publish and
//! subscribe inside its own subjects only; a bad token is refused.

use std::time::Duration;

use async_nats::ConnectOptions;
use futures::StreamExt;
use lanyard_tests::harness::next_event;
use lanyard_tests::{NatsServer, TestDaemon, TestUser};
use serde_json::json;

/// A server whose clients are authorised by the callout, but the daemon's own user (in the
/// AUTH account); users land in the APP account.
fn server(issuer: &nkeys::KeyPair, dir: &std::path::Path) -> NatsServer {
    let jetstream = if lanyard_tests::nats::jetstream_under_test() {
        "jetstream: enabled"
    } else {
        ""
    };
    let conf = format!(
        r#"
accounts {{
  AUTH {{ users: [ {{ user: lanyard, password: "lanyard-password" }} ], {jetstream} }}
  APP {{ }}
}}
authorization {{
  auth_callout {{
    issuer: {issuer}
    auth_users: [ lanyard ]
    account: AUTH
  }}
}}
"#,
        issuer = issuer.public_key()
    );
    let path = dir.join("callout.conf");
    std::fs::write(&path, conf).unwrap();
    NatsServer::start_jetstream(&["-c", path.to_str().unwrap()]).unwrap()
}

async fn callout_daemon(dir: &std::path::Path) -> TestDaemon {
    let issuer = nkeys::KeyPair::new_account();
    let nats = server(&issuer, dir);
    let own = ConnectOptions::with_user_and_password("lanyard".into(), "lanyard-password".into());
    let seed = issuer.seed().unwrap();
    TestDaemon::start_on(nats, own, move |c| {
        let at = c.find("[nats]\n").unwrap() + "[nats]\n".len();
        c.insert_str(at, "user = \"lanyard\"\npassword = \"lanyard-password\"\n");
        c.push_str(&format!(
            "\n[nats_auth]\nenabled = true\nissuer_seed = \"{seed}\"\naccount = \"APP\"\n\
             [nats_auth.permissions]\npublish = [\"app.{{user_id}}.>\"]\n\
             subscribe = [\"app.{{user_id}}.>\", \"_INBOX.>\"]\n"
        ));
    })
    .await
}

#[tokio::test]
async fn a_session_connects_to_nats_inside_its_own_subjects_only() {
    let dir = tempfile::tempdir().unwrap();
    let t = callout_daemon(dir.path()).await;
    let mut decisions = t.client.subscribe("lanyard.events.nats.>").await.unwrap();
    t.client.flush().await.unwrap();
    t.idp.set_user(TestUser::from_email("nats@example.test"));
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = login["user"]["id"].as_str().unwrap().to_owned();
    let token = login["session"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The server's complaints to the user's connection (a refused publish is one).
    let (complaints, mut complained) = tokio::sync::mpsc::unbounded_channel();
    let user = ConnectOptions::with_token(token)
        .event_callback(move |event| {
            let complaints = complaints.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = complaints.send(error.to_string());
                }
            }
        })
        .connect(t.nats.url())
        .await
        .expect("the callout admits the session");
    let (subject, event) = next_event(&mut decisions).await;
    assert_eq!(subject, "lanyard.events.nats.authorized");
    assert_eq!(event["user_id"], user_id.as_str());

    // Its own subjects: a round trip through the server.
    let own = format!("app.{user_id}.inbox");
    let mut inbox = user.subscribe(own.clone()).await.unwrap();
    user.publish(own.clone(), "hello".into()).await.unwrap();
    let got = tokio::time::timeout(lanyard_tests::PATIENCE, inbox.next())
        .await
        .expect("the message comes back")
        .unwrap();
    assert_eq!(&got.payload[..], b"hello");

    // Another user's subjects: the server refuses, and says so.
    user.publish("app.usr_someone_else.inbox", "x".into())
        .await
        .unwrap();
    user.flush().await.unwrap();
    let complaint = tokio::time::timeout(lanyard_tests::PATIENCE, complained.recv())
        .await
        .expect("the server complains")
        .unwrap();
    assert!(
        complaint.to_lowercase().contains("permissions violation"),
        "{complaint}"
    );

    // A bad token: the connection is refused, and the refusal published.
    let refused = ConnectOptions::with_token("not-a-session".into())
        .connection_timeout(Duration::from_secs(5))
        .connect(t.nats.url())
        .await;
    assert!(refused.is_err(), "a bad token connected");
    let (subject, event) = next_event(&mut decisions).await;
    assert_eq!(subject, "lanyard.events.nats.refused");
    assert_eq!(event["code"], "unauthorized");
}
