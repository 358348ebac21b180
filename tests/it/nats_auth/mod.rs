//! Lanyard as the NATS auth callout, against a real nats-server (the pinned 2.10+ one)
//! configured for it: a user logs in, connects to NATS with its session, and may publish and
//! subscribe inside its own subjects only; a bad token is refused. `survival`: the callout
//! through a nats-server restart and a daemon killed.

mod browser;
mod init;
mod operator;
mod survival;

use std::time::Duration;

use async_nats::ConnectOptions;
use futures::StreamExt;
use lanyard_tests::harness::next_event;
use lanyard_tests::{NatsServer, TestDaemon, TestUser};
use serde_json::json;

/// A server whose clients are authorised by the callout, but the daemon's own user (in the
/// AUTH account); users land in the APP account.
fn server(
    issuer: &nkeys::KeyPair,
    xkey: Option<&nkeys::XKey>,
    dir: &std::path::Path,
) -> NatsServer {
    server_with(issuer, xkey, dir, "")
}

/// [`server`] with `extra` appended to its config.
fn server_with(
    issuer: &nkeys::KeyPair,
    xkey: Option<&nkeys::XKey>,
    dir: &std::path::Path,
    extra: &str,
) -> NatsServer {
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
  SYS {{ users: [ {{ user: sys, password: "sys-password" }} ] }}
}}
system_account: SYS
authorization {{
  auth_callout {{
    issuer: {issuer}
    auth_users: [ lanyard, sys ]
    account: AUTH
    {xkey}
  }}
}}
{extra}
"#,
        issuer = issuer.public_key(),
        xkey = xkey
            .map(|k| format!("xkey: {}", k.public_key()))
            .unwrap_or_default(),
    );
    let path = dir.join("callout.conf");
    std::fs::write(&path, conf).unwrap();
    NatsServer::start_jetstream(&["-c", path.to_str().unwrap()]).unwrap()
}

const BILLING: &str = "billing-caller-token-0001";
const REPORTS: &str = "reports-caller-token-0002";

/// A daemon answering a callout server's requests; encrypted with an xkey when `encrypted`.
async fn callout_daemon(dir: &std::path::Path) -> TestDaemon {
    daemon_with(dir, false, "").await
}

/// `more` goes into `[nats_auth]`.
async fn daemon_with(dir: &std::path::Path, encrypted: bool, more: &str) -> TestDaemon {
    let issuer = nkeys::KeyPair::new_account();
    let xkey = encrypted.then(nkeys::XKey::new);
    let nats = server(&issuer, xkey.as_ref(), dir);
    daemon_on(nats, &issuer, xkey.as_ref(), more).await
}

/// A daemon on `nats`, signing with `issuer`; `more` goes into `[nats_auth]`.
async fn daemon_on(
    nats: NatsServer,
    issuer: &nkeys::KeyPair,
    xkey: Option<&nkeys::XKey>,
    more: &str,
) -> TestDaemon {
    let more = more.to_owned();
    let xkey_seed = xkey
        .map(|k| format!("xkey_seed = \"{}\"\n", k.seed().unwrap()))
        .unwrap_or_default();
    let own = ConnectOptions::with_user_and_password("lanyard".into(), "lanyard-password".into());
    let seed = issuer.seed().unwrap();
    TestDaemon::start_on(nats, own, move |c| {
        let at = c.find("[nats]\n").unwrap() + "[nats]\n".len();
        c.insert_str(at, "user = \"lanyard\"\npassword = \"lanyard-password\"\n");
        let at = c.find("[[providers]]").unwrap();
        c.insert_str(
            at,
            &format!(
                "[[callers]]\nname = \"billing\"\ntoken = \"{BILLING}\"\n\
                 nats_permissions = {{ publish = [\"billing.>\"], \
                 subscribe = [\"billing.>\", \"_INBOX.billing.>\"] }}\n\n\
                 [[callers]]\nname = \"reports\"\ntoken = \"{REPORTS}\"\n\n"
            ),
        );
        c.push_str(&format!(
            "\n[nats_auth]\nenabled = true\nissuer_seed = \"{seed}\"\naccount = \"APP\"\n{xkey_seed}{more}\
             [nats_auth.permissions]\npublish = [\"app.{{user_id}}.>\"]\n\
             subscribe = [\"app.{{user_id}}.>\", \"_INBOX.{{user_id}}.>\"]\n\
             [nats_auth.system]\nuser = \"sys\"\npassword = \"sys-password\"\n"
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

    let (user, mut complained) = connect(&t, &token)
        .await
        .expect("the callout admits the session");
    let (subject, event) = next_event(&mut decisions).await;
    assert_eq!(subject, "lanyard.events.nats.authorized");
    assert_eq!(event["user_id"], user_id.as_str());

    // Its own subjects: a round trip through the server. Another user's: refused.
    assert!(round_trip(&user, format!("app.{user_id}.inbox")).await);
    refused_publish(&user, &mut complained, "app.usr_someone_else.inbox").await;

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

/// A connection with `token` and its server's complaints, or why it was refused.
async fn connect(
    t: &TestDaemon,
    token: &str,
) -> Result<
    (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ),
    String,
> {
    let (client, mut events) = connect_watched(t, token).await?;
    let (complaints, complained) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let async_nats::Event::ServerError(error) = event {
                let _ = complaints.send(error.to_string());
            }
        }
    });
    Ok((client, complained))
}

/// A connection with `token` and everything its client reports (disconnects included).
async fn connect_watched(
    t: &TestDaemon,
    token: &str,
) -> Result<
    (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
    ),
    String,
> {
    let (events, watched) = tokio::sync::mpsc::unbounded_channel();
    ConnectOptions::with_token(token.to_owned())
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event);
            }
        })
        .connect(t.nats.url())
        .await
        .map(|client| (client, watched))
        .map_err(|e| e.to_string())
}

/// Waits for the client to say the server dropped it.
async fn disconnected(events: &mut tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>) {
    let wait = async {
        while let Some(event) = events.recv().await {
            if matches!(event, async_nats::Event::Disconnected) {
                return;
            }
        }
        panic!("the client's events ended");
    };
    tokio::time::timeout(lanyard_tests::PATIENCE, wait)
        .await
        .expect("the connection is ended");
}

/// Whether a message to the client's own subject comes back.
async fn round_trip(client: &async_nats::Client, subject: String) -> bool {
    let Ok(mut inbox) = client.subscribe(subject.clone()).await else {
        return false;
    };
    if client.publish(subject, "ping".into()).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(lanyard_tests::PATIENCE, inbox.next()).await,
        Ok(Some(_))
    )
}

/// Publishes to `subject` and waits for the server to refuse it.
async fn refused_publish(
    client: &async_nats::Client,
    complained: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    subject: &str,
) {
    client
        .publish(subject.to_owned(), "x".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let complaint = tokio::time::timeout(lanyard_tests::PATIENCE, complained.recv())
        .await
        .expect("the server complains")
        .unwrap();
    assert!(
        complaint.to_lowercase().contains("permissions violation"),
        "{complaint}"
    );
}

/// A user logged in (a fresh address each time: a new user), connected with its session.
struct Connected {
    user_id: String,
    login: serde_json::Value,
    client: async_nats::Client,
    events: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
}

async fn log_in_and_connect(t: &TestDaemon, email: &str) -> Connected {
    t.idp.set_user(TestUser::from_email(email));
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = login["user"]["id"].as_str().unwrap().to_owned();
    let access = login["session"]["access_token"].as_str().unwrap();
    let (client, events) = connect_watched(t, access)
        .await
        .expect("the session connects");
    assert!(
        round_trip(&client, format!("app.{user_id}.ping")).await,
        "the session's connection works before its session ends"
    );
    Connected {
        user_id,
        login,
        client,
        events,
    }
}

#[tokio::test]
async fn ending_a_session_ends_its_nats_connections() {
    let dir = tempfile::tempdir().unwrap();
    let t = callout_daemon(dir.path()).await;
    // A caller's connection, which no session's end touches.
    let (billing, _) = connect(&t, BILLING).await.expect("billing connects");

    // A logout; the client's own reconnect with the ended session is refused.
    let mut a = log_in_and_connect(&t, "kick-logout@example.test").await;
    let mut decisions = t
        .client
        .subscribe("lanyard.events.nats.refused")
        .await
        .unwrap();
    t.client.flush().await.unwrap();
    t.request(
        "session.revoke",
        json!({ "refresh_token": a.login["session"]["refresh_token"] }),
    )
    .await
    .ok();
    disconnected(&mut a.events).await;
    let (_, refused) = next_event(&mut decisions).await;
    assert_eq!(refused["code"], "unauthorized");
    drop(decisions);

    // Logging out everywhere ends the connections of each of the user's sessions.
    let mut b = log_in_and_connect(&t, "kick-everywhere@example.test").await;
    let access = t.full_login(json!({ "provider": "oidc" })).await.ok()["session"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_second, mut second_events) = connect_watched(&t, &access).await.unwrap();
    t.request("session.revoke_all", json!({ "user_id": b.user_id }))
        .await
        .ok();
    disconnected(&mut b.events).await;
    disconnected(&mut second_events).await;

    // An admin disabling the user, and one erasing it.
    let mut c = log_in_and_connect(&t, "kick-disabled@example.test").await;
    t.request("admin.user.disable", json!({ "user_id": c.user_id }))
        .await
        .ok();
    disconnected(&mut c.events).await;
    let mut d = log_in_and_connect(&t, "kick-erased@example.test").await;
    t.request("admin.user.delete", json!({ "user_id": d.user_id }))
        .await
        .ok();
    disconnected(&mut d.events).await;

    // Nothing else was ended.
    assert!(round_trip(&billing, "billing.still-here".into()).await);
    drop((a.client, b.client, c.client, d.client));
}

#[tokio::test]
async fn callers_connect_with_their_tokens_and_ended_sessions_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let t = callout_daemon(dir.path()).await;
    let mut decisions = t.client.subscribe("lanyard.events.nats.>").await.unwrap();
    t.client.flush().await.unwrap();

    // A caller with NATS permissions: its own subjects, nothing else.
    let (billing, mut complained) = connect(&t, BILLING).await.expect("billing connects");
    let (_, event) = next_event(&mut decisions).await;
    assert_eq!(event["caller"], "billing");
    assert!(round_trip(&billing, "billing.invoices".into()).await);
    refused_publish(&billing, &mut complained, "app.anything").await;

    // A caller without NATS permissions is not a NATS user.
    assert!(connect(&t, REPORTS).await.is_err(), "reports connected");
    let (_, event) = next_event(&mut decisions).await;
    assert_eq!(event["type"], "nats.refused");

    // A forged token, a session that was logged out, and one whose user is disabled, do
    // not connect.
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let access = login["session"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Its claims changed under the same signature (another user's id): wrongly signed.
    let forged = {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let parts: Vec<&str> = access.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("usr_someone_else");
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{}.{body}.{}", parts[0], parts[2])
    };
    assert!(
        connect(&t, &forged).await.is_err(),
        "a forged token connected"
    );
    let (_, event) = next_event(&mut decisions).await;
    assert_eq!(event["code"], "unauthorized");
    connect(&t, &access).await.expect("a live session connects");
    let (_, event) = next_event(&mut decisions).await;
    assert_eq!(event["type"], "nats.authorized");
    t.request(
        "session.revoke",
        json!({ "refresh_token": login["session"]["refresh_token"] }),
    )
    .await
    .ok();
    assert!(
        connect(&t, &access).await.is_err(),
        "a revoked session connected"
    );
    let (_, event) = next_event(&mut decisions).await;
    assert_eq!(event["code"], "unauthorized");

    t.idp
        .set_user(TestUser::from_email("disabled-nats@example.test"));
    let other = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    t.request(
        "admin.user.disable",
        json!({ "user_id": other["user"]["id"] }),
    )
    .await
    .ok();
    let token = other["session"]["access_token"].as_str().unwrap();
    assert!(
        connect(&t, token).await.is_err(),
        "a disabled user connected"
    );
}

#[tokio::test]
async fn an_encrypted_callout_admits_and_refuses_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let t = daemon_with(dir.path(), true, "").await;
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let access = login["session"]["access_token"].as_str().unwrap();
    let (user, _) = connect(&t, access).await.expect("the session connects");
    user.flush().await.unwrap();
    assert!(
        connect(&t, "not-a-session").await.is_err(),
        "a bad token connected"
    );
    assert!(connect(&t, BILLING).await.is_ok(), "the caller connects");
}

#[tokio::test]
async fn connections_beyond_the_rate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = daemon_with(dir.path(), false, "max_connects_per_sec = 1\n").await;
    let mut decisions = t.client.subscribe("lanyard.events.nats.>").await.unwrap();
    t.client.flush().await.unwrap();
    // Twenty at once against one a second: most are refused (only a machine so slow that
    // they spread over twenty seconds could admit them all).
    let attempts = (0..20).map(|_| connect(&t, BILLING));
    let results = futures::future::join_all(attempts).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert!((1..20).contains(&admitted), "{admitted} of 20 admitted");
    let refused = loop {
        let (_, event) = next_event(&mut decisions).await;
        if event["type"] == "nats.refused" {
            break event;
        }
    };
    assert_eq!(refused["code"], "rate_limited");
}
