//! The provider token vault through NATS: sealed storage, caller rules, refresh once per
//! (user, provider) under a storm, refusals, and unlinking that revokes at the provider.

use std::time::Duration;

use async_nats::HeaderMap;
use lanyard_tests::harness::next_event;
use lanyard_tests::{Reply, TestDaemon, TestUser};
use serde_json::{json, Value};

const BILLING: &str = "billing-caller-token-0001";
const REPORTS: &str = "reports-caller-token-0002";

/// The standard daemon, with callers, and the `oidc` instance storing tokens for `billing`.
async fn vault_daemon() -> TestDaemon {
    TestDaemon::start_with(|c| {
        let at = c.find("[[providers]]").unwrap();
        c.insert_str(
            at,
            &format!(
                "[[callers]]\nname = \"billing\"\ntoken = \"{BILLING}\"\n\n\
                 [[callers]]\nname = \"reports\"\ntoken = \"{REPORTS}\"\n\n"
            ),
        );
        *c = c.replacen(
            "id = \"oidc\"\n",
            "id = \"oidc\"\nstore_tokens = true\ntoken_readers = [\"billing\"]\n",
            1,
        );
    })
    .await
}

async fn token_get(t: &TestDaemon, user_id: &Value, caller: Option<&str>) -> Reply {
    let mut headers = HeaderMap::new();
    if let Some(token) = caller {
        headers.insert("Lanyard-Caller-Token", token);
    }
    let body = json!({ "user_id": user_id, "provider": "oidc" }).to_string();
    t.request_with_headers("token.get", headers, body.into())
        .await
}

#[tokio::test]
async fn stored_tokens_are_sealed_and_given_only_to_allowed_callers() {
    let t = vault_daemon().await;
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = &login["user"]["id"];

    let reply = token_get(&t, user_id, Some(BILLING)).await;
    let access = reply.ok()["access_token"].as_str().unwrap().to_owned();
    assert!(access.starts_with("at-"), "{access}");
    assert!(reply.ok()["scopes"]
        .as_array()
        .unwrap()
        .contains(&json!("openid")));
    assert!(reply.ok()["expires_at"].as_str().unwrap().ends_with('Z'));

    assert_eq!(token_get(&t, user_id, None).await.code(), "forbidden");
    assert_eq!(
        token_get(&t, user_id, Some(REPORTS)).await.code(),
        "forbidden"
    );
    assert_eq!(
        token_get(&t, user_id, Some("not-a-caller-token"))
            .await
            .code(),
        "unauthorized"
    );
    let nobody = token_get(&t, &json!("usr_nobody"), Some(BILLING)).await;
    assert_eq!(nobody.code(), "not_found");

    // Neither the provider's access token nor its refresh token is on disk in plaintext.
    lanyard_tests::assert_not_on_disk(
        &t.state_dirs(),
        &[
            ("a provider access token", access.as_bytes()),
            ("a provider refresh token", b"rt-"),
        ],
    );
}

#[tokio::test]
async fn a_storm_of_requests_on_an_expired_token_refreshes_once() {
    let t = vault_daemon().await;
    let mut events = t.client.subscribe("lanyard.events.token.>").await.unwrap();
    t.client.flush().await.unwrap();
    t.idp.set(|k| k.expires_in = Some(0));
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = login["user"]["id"].clone();
    let stale = t.idp.token_requests();
    // From here the provider is slow and hands out long-lived tokens.
    t.idp.set(|k| {
        k.expires_in = Some(3600);
        k.delay = Duration::from_millis(200);
    });

    let replies =
        futures::future::join_all((0..100).map(|_| token_get(&t, &user_id, Some(BILLING)))).await;
    let tokens: std::collections::HashSet<String> = replies
        .iter()
        .map(|r| r.ok()["access_token"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        t.idp.refresh_requests(),
        1,
        "exactly one refresh at the provider"
    );
    assert_eq!(tokens.len(), 1, "everyone got the refreshed token");
    assert_eq!(t.idp.token_requests(), stale + 1);

    let (subject, event) = next_event(&mut events).await;
    assert_eq!(subject, "lanyard.events.token.refreshed");
    assert_eq!(event["user_id"], user_id);
    assert!(!event.to_string().contains("at-"), "no token in events");
}

#[tokio::test]
async fn a_refresh_without_a_new_refresh_token_keeps_the_old_one() {
    let t = vault_daemon().await;
    t.idp.set(|k| {
        k.expires_in = Some(0);
        k.keep_refresh_token = true;
    });
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = &login["user"]["id"];
    let first = token_get(&t, user_id, Some(BILLING)).await.ok().clone();
    let second = token_get(&t, user_id, Some(BILLING)).await.ok().clone();
    assert_eq!(t.idp.refresh_requests(), 2);
    assert_ne!(first["access_token"], second["access_token"]);
}

#[tokio::test]
async fn a_refused_refresh_needs_a_new_login() {
    let t = vault_daemon().await;
    let mut events = t.client.subscribe("lanyard.events.token.>").await.unwrap();
    t.client.flush().await.unwrap();
    t.idp.set(|k| {
        k.expires_in = Some(0);
        k.refuse_refresh = true;
    });
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = &login["user"]["id"];
    assert_eq!(
        token_get(&t, user_id, Some(BILLING)).await.code(),
        "reauth_required"
    );
    let (subject, _) = next_event(&mut events).await;
    assert_eq!(subject, "lanyard.events.token.refresh_failed");
    // Known refused: the provider is not asked again.
    assert_eq!(
        token_get(&t, user_id, Some(BILLING)).await.code(),
        "reauth_required"
    );
    assert_eq!(t.idp.refresh_requests(), 1);

    // A new login stores working tokens again.
    t.idp.set(|k| {
        k.expires_in = Some(3600);
        k.refuse_refresh = false;
    });
    t.full_login(json!({ "provider": "oidc" })).await.ok();
    token_get(&t, user_id, Some(BILLING)).await.ok();
}

#[tokio::test]
async fn unlinking_revokes_tokens_and_never_removes_the_last_identity() {
    let t = vault_daemon().await;
    let mut events = t
        .client
        .subscribe("lanyard.events.identity.unlinked")
        .await
        .unwrap();
    t.client.flush().await.unwrap();
    t.idp.set_user(TestUser::from_email("unlink@example.test"));
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = login["user"]["id"].clone();
    let access = token_get(&t, &user_id, Some(BILLING)).await.ok()["access_token"].clone();

    // The only identity cannot go.
    let last = t
        .request(
            "identity.unlink",
            json!({ "user_id": user_id, "provider": "oidc" }),
        )
        .await;
    assert_eq!(last.code(), "conflict");

    t.idp
        .set_user(TestUser::from_email("unlink-gh@example.test"));
    t.full_login(json!({ "provider": "github", "link_session": login["session"]["access_token"] }))
        .await
        .ok();
    let unlinked = t
        .request(
            "identity.unlink",
            json!({ "user_id": user_id, "provider": "oidc" }),
        )
        .await;
    assert_eq!(unlinked.ok()["tokens_revoked"], true);
    assert_eq!(unlinked.ok()["identity"]["provider"], "oidc");
    assert!(t
        .idp
        .revoked()
        .contains(&access.as_str().unwrap().to_owned()));
    let (_, event) = next_event(&mut events).await;
    assert_eq!(event["user_id"], user_id);

    assert_eq!(
        token_get(&t, &user_id, Some(BILLING)).await.code(),
        "not_found"
    );
    let user = t.request("user.get", json!({ "user_id": user_id })).await;
    let identities = user.ok()["user"]["identities"].as_array().unwrap().clone();
    assert_eq!(identities.len(), 1);
    assert_eq!(identities[0]["provider"], "github");
    let again = t
        .request(
            "identity.unlink",
            json!({ "user_id": user_id, "provider": "oidc" }),
        )
        .await;
    assert_eq!(again.code(), "not_found");
}
