//! A user's life after the first login, through NATS: refresh within and after the reuse
//! grace, every device's sessions (`session.list`, `session.revoke` by id,
//! `session.revoke_all`), and erasure (`admin.user.delete`).

use std::time::Duration;

use lanyard_tests::harness::next_event;
use lanyard_tests::{TestDaemon, TestUser};
use serde_json::{json, Value};

/// A daemon with a reuse grace of `grace` seconds, whose `oidc` instance stores the
/// provider's tokens.
async fn daemon(grace: u64) -> TestDaemon {
    TestDaemon::start_with(|c| {
        *c = c.replacen("id = \"oidc\"\n", "id = \"oidc\"\nstore_tokens = true\n", 1);
        c.push_str(&format!(
            "\n[sessions]\nrefresh_reuse_grace_secs = {grace}\n"
        ));
    })
    .await
}

/// A subscription to the events named `name` (`>`: all), in place before it returns.
async fn subscribe_events(t: &TestDaemon, name: &str) -> async_nats::Subscriber {
    let events = t
        .client
        .subscribe(format!("lanyard.events.{name}"))
        .await
        .unwrap();
    t.client.flush().await.unwrap();
    events
}

/// A login as `email` whose callback labels the client `client`.
async fn login_as(t: &TestDaemon, email: &str, client: &str) -> Value {
    t.idp.set_user(TestUser::from_email(email));
    let approved = t.begin(json!({ "provider": "oidc" })).await;
    t.request(
        "callback",
        approved.callback_with(json!({ "client": client })),
    )
    .await
    .ok()
    .clone()
}

/// The session id (`sid`) of a login's access token.
async fn sid(t: &TestDaemon, login: &Value) -> Value {
    let token = &login["session"]["access_token"];
    let claims = t.request("session.verify", json!({ "token": token })).await;
    claims.ok()["sid"].clone()
}

async fn refresh(t: &TestDaemon, token: &Value) -> lanyard_tests::Reply {
    t.request("session.refresh", json!({ "refresh_token": token }))
        .await
}

#[tokio::test]
async fn a_refresh_repeated_within_the_grace_gets_the_same_successor() {
    // Long enough that a busy machine stays within it.
    let t = daemon(300).await;
    let mut revoked = subscribe_events(&t, "session.revoked").await;
    let login = login_as(&t, "tabs@example.test", "tab").await;
    let first = &login["session"]["refresh_token"];
    // Two tabs refresh the same token at once, and a retry follows a lost reply.
    let (a, b) = tokio::join!(refresh(&t, first), refresh(&t, first));
    let retry = refresh(&t, first).await;
    let successor = &a.ok()["session"]["refresh_token"];
    assert_ne!(successor, first);
    for reply in [&b, &retry] {
        assert_eq!(&reply.ok()["session"]["refresh_token"], successor);
    }
    // Each answer carries a working access token of the same session.
    let sid = |reply: &lanyard_tests::Reply| reply.ok()["session"]["access_token"].clone();
    for token in [sid(&a), sid(&b), sid(&retry)] {
        let claims = t.request("session.verify", json!({ "token": token })).await;
        assert_eq!(claims.ok()["sub"], login["user"]["id"]);
    }
    // The successor rotates on, and nothing was revoked.
    let next = refresh(&t, successor).await;
    assert_ne!(&next.ok()["session"]["refresh_token"], successor);
    t.client.flush().await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(200), next_event(&mut revoked)).await;
    assert!(quiet.is_err(), "no session was revoked: {quiet:?}");
}

#[tokio::test]
async fn a_reuse_after_the_grace_revokes_the_session() {
    let t = daemon(1).await;
    let mut revoked = subscribe_events(&t, "session.revoked").await;
    let login = login_as(&t, "late@example.test", "tab").await;
    let first = &login["session"]["refresh_token"];
    let successor = refresh(&t, first).await.ok()["session"]["refresh_token"].clone();
    // Past the grace whatever the machine's speed: used at second s, presented at s + 2.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(refresh(&t, first).await.code(), "unauthorized");
    let (_, event) = next_event(&mut revoked).await;
    assert_eq!(event["reason"], "refresh_token_reused");
    assert_eq!(refresh(&t, &successor).await.code(), "unauthorized");
}

/// Long because it is one user's devices through their whole story: listed, one signed out
/// from another, then all of them, each step checked against the others.
#[tokio::test]
async fn every_device_is_listed_and_logged_out_one_by_one_or_everywhere() {
    let t = daemon(5).await;
    let mut revoked = subscribe_events(&t, "session.revoked").await;
    let laptop = login_as(&t, "devices@example.test", "Firefox on Linux").await;
    let phone = login_as(&t, "devices@example.test", "iOS app").await;
    let tablet = login_as(&t, "devices@example.test", "Safari on iPad").await;
    let someone = login_as(&t, "someone@example.test", "Chrome").await;
    let user_id = laptop["user"]["id"].clone();
    assert_eq!(phone["user"]["id"], user_id);
    refresh(&t, &phone["session"]["refresh_token"]).await.ok();

    let list = t
        .request("session.list", json!({ "user_id": user_id }))
        .await;
    let sessions = list.ok()["sessions"].as_array().unwrap().clone();
    let labels: Vec<_> = sessions.iter().map(|s| s["client"].clone()).collect();
    assert_eq!(
        labels,
        [
            json!("Firefox on Linux"),
            json!("iOS app"),
            json!("Safari on iPad")
        ]
    );
    for session in &sessions {
        assert_eq!(session["provider"], "oidc");
        assert!(
            session["created_at"].as_str().unwrap().ends_with('Z'),
            "{session}"
        );
        assert!(session["expires_at"].is_string(), "{session}");
    }
    assert!(sessions[0]["refreshed_at"].is_null());
    assert!(
        sessions[1]["refreshed_at"].is_string(),
        "the phone refreshed"
    );
    let (laptop_sid, phone_sid, tablet_sid) = (
        sid(&t, &laptop).await,
        sid(&t, &phone).await,
        sid(&t, &tablet).await,
    );
    assert_eq!(sessions[1]["session_id"], phone_sid);

    // Log the phone out from the laptop.
    let wrong_user = t
        .request(
            "session.revoke",
            json!({ "user_id": someone["user"]["id"], "session_id": phone_sid }),
        )
        .await;
    assert_eq!(wrong_user.code(), "not_found");
    let both = t
        .request(
            "session.revoke",
            json!({ "user_id": user_id, "session_id": phone_sid, "refresh_token": "x" }),
        )
        .await;
    assert_eq!(both.code(), "bad_request");
    let done = t
        .request(
            "session.revoke",
            json!({ "user_id": user_id, "session_id": phone_sid }),
        )
        .await;
    assert_eq!(done.ok(), &json!({}));
    let (_, event) = next_event(&mut revoked).await;
    assert_eq!(
        (&event["session_id"], &event["reason"]),
        (&phone_sid, &json!("revoked"))
    );
    let verify = t
        .request(
            "session.verify",
            json!({ "token": phone["session"]["access_token"] }),
        )
        .await;
    assert_eq!(verify.code(), "unauthorized");
    let again = t
        .request(
            "session.revoke",
            json!({ "user_id": user_id, "session_id": phone_sid }),
        )
        .await;
    assert_eq!(
        again.ok(),
        &json!({}),
        "revoking a revoked session is done already"
    );

    // Log out everywhere: the other two go, someone else's session stays.
    let all = t
        .request("session.revoke_all", json!({ "user_id": user_id }))
        .await;
    let gone = all.ok()["revoked"].as_array().unwrap().clone();
    assert_eq!(gone, [laptop_sid, tablet_sid]);
    for _ in 0..2 {
        let (_, event) = next_event(&mut revoked).await;
        assert_eq!(event["reason"], "logout_everywhere");
        assert_eq!(event["user_id"], user_id);
    }
    for login in [&laptop, &tablet] {
        assert_eq!(
            refresh(&t, &login["session"]["refresh_token"]).await.code(),
            "unauthorized"
        );
    }
    let list = t
        .request("session.list", json!({ "user_id": user_id }))
        .await;
    assert_eq!(list.ok()["sessions"], json!([]));
    let theirs = t
        .request(
            "session.verify",
            json!({ "token": someone["session"]["access_token"] }),
        )
        .await;
    assert_eq!(theirs.ok()["sub"], someone["user"]["id"]);
    let bad = t.request("session.list", json!({ "user_id": "" })).await;
    assert_eq!(bad.code(), "bad_request");
}

#[tokio::test]
async fn an_erased_user_is_gone_and_its_identity_makes_a_new_user() {
    let t = daemon(5).await;
    let mut events = subscribe_events(&t, ">").await;
    let login = login_as(&t, "forget-me@example.test", "laptop").await;
    let user_id = login["user"]["id"].clone();
    let (mut deleted, mut revoked) = (None, None);

    let reply = t
        .request("admin.user.delete", json!({ "user_id": user_id }))
        .await;
    let reply = reply.ok().clone();
    assert_eq!(reply["user_id"], user_id);
    assert_eq!(reply["identities"], 1);
    assert_eq!(reply["sessions_revoked"], 1);
    assert_eq!(reply["provider_tokens_revoked"], 1);
    assert!(
        !t.idp.revoked().is_empty(),
        "the provider's tokens were revoked there"
    );
    while deleted.is_none() || revoked.is_none() {
        let (subject, event) = next_event(&mut events).await;
        match subject.as_str() {
            "lanyard.events.user.deleted" => deleted = Some(event),
            "lanyard.events.session.revoked" => revoked = Some(event),
            _ => {}
        }
    }
    let deleted = deleted.unwrap();
    assert_eq!(deleted["user_id"], user_id);
    let fields: Vec<_> = deleted.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        fields,
        ["event_id", "occurred_at", "type", "user_id"],
        "ids only"
    );
    assert_eq!(revoked.unwrap()["reason"], "user_deleted");

    let get = t.request("user.get", json!({ "user_id": user_id })).await;
    assert_eq!(get.code(), "not_found");
    let verify = t
        .request(
            "session.verify",
            json!({ "token": login["session"]["access_token"] }),
        )
        .await;
    assert_eq!(verify.code(), "unauthorized");
    assert_eq!(
        refresh(&t, &login["session"]["refresh_token"]).await.code(),
        "unauthorized"
    );
    let again = t
        .request("admin.user.delete", json!({ "user_id": user_id }))
        .await;
    assert_eq!(again.code(), "not_found");

    // The same person logs in again: a new user, with the same username free for them.
    let back = login_as(&t, "forget-me@example.test", "laptop").await;
    assert_eq!(back["new_user"], true);
    assert_ne!(back["user"]["id"], user_id);
    assert_eq!(back["user"]["username"], login["user"]["username"]);
}

#[tokio::test]
async fn user_delete_is_an_admin_command() {
    let t = TestDaemon::start_with(|c| {
        c.push_str("\n[admin]\ntoken = \"an-admin-token-of-16+\"\n");
    })
    .await;
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let refused = t
        .request(
            "admin.user.delete",
            json!({ "user_id": login["user"]["id"] }),
        )
        .await;
    assert_eq!(refused.code(), "unauthorized");
    let user = t
        .request("user.get", json!({ "user_id": login["user"]["id"] }))
        .await;
    user.ok();
}

/// Long because it is one admin's session: find the user, look at it, disable it (every
/// path refused at once), enable it (every path back).
#[tokio::test]
async fn an_admin_finds_disables_and_enables_a_user() {
    let t = daemon(5).await;
    let mut failed = subscribe_events(&t, "login.failed").await;
    let ada = login_as(&t, "ada@example.test", "laptop").await;
    let bob = login_as(&t, "bob@example.test", "phone").await;
    let ada_id = ada["user"]["id"].clone();

    // Finding users: all of them, page by page; by email, username.
    let first = t.request("admin.user.list", json!({ "limit": 1 })).await;
    let first = first.ok().clone();
    assert_eq!(first["users"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"].clone();
    let rest = t
        .request("admin.user.list", json!({ "cursor": cursor, "limit": 10 }))
        .await;
    let rest = rest.ok().clone();
    assert_eq!(rest["next_cursor"], Value::Null);
    let mut ids: Vec<_> = [&first, &rest]
        .iter()
        .flat_map(|p| {
            p["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].clone())
        })
        .collect();
    ids.sort_by_key(|v| v.as_str().unwrap().to_owned());
    let mut expected = vec![ada_id.clone(), bob["user"]["id"].clone()];
    expected.sort_by_key(|v| v.as_str().unwrap().to_owned());
    assert_eq!(ids, expected);
    let by_email = t
        .request("admin.user.list", json!({ "email": "ADA@example.test" }))
        .await;
    assert_eq!(by_email.ok()["users"][0]["id"], ada_id);
    let by_provider = t
        .request("admin.user.list", json!({ "provider": "github" }))
        .await;
    assert_eq!(by_provider.ok()["users"], json!([]));
    for bad in [
        json!({ "limit": 0 }),
        json!({ "limit": 501 }),
        json!({ "page": 1 }),
    ] {
        let reply = t.request("admin.user.list", bad).await;
        assert_eq!(reply.code(), "bad_request");
    }

    // One user, whole: identities and sessions.
    let got = t
        .request("admin.user.get", json!({ "user_id": ada_id }))
        .await;
    let got = got.ok().clone();
    assert_eq!(got["user"]["identities"][0]["provider"], "oidc");
    assert_eq!(got["sessions"][0]["client"], "laptop");
    assert!(got["user"].get("disabled_at").is_none(), "{got}");

    // Disabled: at once, no verify, no refresh, no login.
    let disabled = t
        .request("admin.user.disable", json!({ "user_id": ada_id }))
        .await;
    assert!(disabled.ok()["user"]["disabled_at"].is_string());
    let verify = t
        .request(
            "session.verify",
            json!({ "token": ada["session"]["access_token"] }),
        )
        .await;
    assert_eq!(verify.code(), "unauthorized");
    assert_eq!(
        refresh(&t, &ada["session"]["refresh_token"]).await.code(),
        "unauthorized"
    );
    t.idp.set_user(TestUser::from_email("ada@example.test"));
    let approved = t.begin(json!({ "provider": "oidc" })).await;
    let refused = t.request("callback", approved.callback()).await;
    assert_eq!(refused.code(), "user_disabled");
    let (_, event) = next_event(&mut failed).await;
    assert_eq!(event["code"], "user_disabled");
    // Bob is untouched.
    let theirs = t
        .request(
            "session.verify",
            json!({ "token": bob["session"]["access_token"] }),
        )
        .await;
    theirs.ok();

    // Enabled: the session that had not expired works again, and logins do.
    let enabled = t
        .request("admin.user.enable", json!({ "user_id": ada_id }))
        .await;
    assert!(enabled.ok()["user"].get("disabled_at").is_none());
    let verify = t
        .request(
            "session.verify",
            json!({ "token": ada["session"]["access_token"] }),
        )
        .await;
    assert_eq!(verify.ok()["sub"], ada_id);
    let back = login_as(&t, "ada@example.test", "laptop").await;
    assert_eq!(back["user"]["id"], ada_id);
    let unknown = t
        .request("admin.user.disable", json!({ "user_id": "usr_nobody" }))
        .await;
    assert_eq!(unknown.code(), "not_found");
}

#[tokio::test]
async fn a_returning_login_refreshes_the_profile_and_says_what_changed() {
    let t = daemon(5).await;
    let mut updated = subscribe_events(&t, "user.updated").await;
    let first = login_as(&t, "changing@example.test", "laptop").await;
    let user_id = first["user"]["id"].clone();
    // The same profile again: no event.
    login_as(&t, "changing@example.test", "laptop").await;
    // A new name and a new verified address at the provider.
    let renamed = TestUser {
        name: "Changed Name".into(),
        email: "changed@example.test".into(),
        ..TestUser::from_email("changing@example.test")
    };
    t.idp.set_user(renamed);
    let approved = t.begin(json!({ "provider": "oidc" })).await;
    let back = t
        .request("callback", approved.callback())
        .await
        .ok()
        .clone();
    assert_eq!(back["user"]["id"], user_id);
    assert_eq!(back["user"]["name"], "Changed Name");
    assert_eq!(back["user"]["email"], "changed@example.test");
    let (_, event) = next_event(&mut updated).await;
    assert_eq!(event["user_id"], user_id);
    assert_eq!(event["provider"], "oidc");
    assert_eq!(
        event["changed"],
        json!(["name", "email", "identity.email"]),
        "{event}"
    );
    assert!(
        event.get("name").is_none(),
        "names fields, never values: {event}"
    );
    let user = t.request("user.get", json!({ "user_id": user_id })).await;
    assert_eq!(user.ok()["user"]["name"], "Changed Name");
    // Exactly one update event: the unchanged login published none.
    let quiet = tokio::time::timeout(Duration::from_millis(200), next_event(&mut updated)).await;
    assert!(quiet.is_err(), "{quiet:?}");
}
