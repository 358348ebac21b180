//! Lanyard's own sessions through NATS: verify, refresh with rotation and reuse detection,
//! revoke, user.get, and signing-key rotation.

use lanyard_tests::harness::next_event;
use lanyard_tests::{TestDaemon, TestUser};
use serde_json::{json, Value};

async fn logged_in(t: &TestDaemon) -> Value {
    t.full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone()
}

#[tokio::test]
async fn verify_returns_the_claims_of_a_valid_token() {
    let t = TestDaemon::start().await;
    let login = logged_in(&t).await;
    let token = login["session"]["access_token"].as_str().unwrap();
    let claims = t.request("session.verify", json!({ "token": token })).await;
    let claims = claims.ok();
    assert_eq!(claims["sub"], login["user"]["id"]);
    assert_eq!(claims["iss"], "lanyard");
    assert!(claims["sid"].as_str().unwrap().starts_with("ses_"));

    // A token whose signature does not match its body.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[2] = parts[2].chars().rev().collect();
    let forged = parts.join(".");
    let reply = t
        .request("session.verify", json!({ "token": forged }))
        .await;
    assert_eq!(reply.code(), "unauthorized");
    let reply = t
        .request("session.verify", json!({ "token": "nonsense" }))
        .await;
    assert_eq!(reply.code(), "unauthorized");
    let reply = t.request("session.verify", json!({ "tokn": token })).await;
    assert_eq!(reply.code(), "bad_request");
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_token_revokes_the_family() {
    let t = TestDaemon::start_with(|config| {
        config.push_str("\n[sessions]\nrefresh_reuse_grace_secs = 0\n");
    })
    .await;
    let mut events = t
        .client
        .subscribe("lanyard.events.session.revoked")
        .await
        .unwrap();
    t.client.flush().await.unwrap();
    let login = logged_in(&t).await;
    let first = login["session"]["refresh_token"].as_str().unwrap();

    let refreshed = t
        .request("session.refresh", json!({ "refresh_token": first }))
        .await
        .ok()
        .clone();
    // The session comes nested, as the callback's does, and (deprecated) at the top level.
    let session = &refreshed["session"];
    for field in ["access_token", "token_type", "expires_in", "refresh_token"] {
        assert!(!session[field].is_null(), "{refreshed}");
        assert_eq!(session[field], refreshed[field], "{refreshed}");
    }
    let second = session["refresh_token"].as_str().unwrap();
    assert_ne!(first, second);
    let access = session["access_token"].as_str().unwrap();
    let claims = t
        .request("session.verify", json!({ "token": access }))
        .await;
    assert_eq!(
        claims.ok()["sid"],
        t.request(
            "session.verify",
            json!({
                "token": login["session"]["access_token"]
            })
        )
        .await
        .ok()["sid"],
        "a refresh stays in its family"
    );

    // The first token comes back: someone else holds a copy. The family dies.
    let replay = t
        .request("session.refresh", json!({ "refresh_token": first }))
        .await;
    assert_eq!(replay.code(), "unauthorized");
    let (_, event) = next_event(&mut events).await;
    assert_eq!(event["reason"], "refresh_token_reused");
    assert_eq!(event["user_id"], login["user"]["id"]);

    let honest = t
        .request("session.refresh", json!({ "refresh_token": second }))
        .await;
    assert_eq!(honest.code(), "unauthorized");
    let verify = t
        .request("session.verify", json!({ "token": access }))
        .await;
    assert_eq!(verify.code(), "unauthorized");
}

#[tokio::test]
async fn revoke_logs_out_the_whole_session() {
    let t = TestDaemon::start().await;
    let login = logged_in(&t).await;
    let other = logged_in(&t).await;
    let refresh = login["session"]["refresh_token"].as_str().unwrap();
    let reply = t
        .request("session.revoke", json!({ "refresh_token": refresh }))
        .await;
    assert_eq!(reply.ok(), &json!({}));
    let verify = t
        .request(
            "session.verify",
            json!({ "token": login["session"]["access_token"] }),
        )
        .await;
    assert_eq!(verify.code(), "unauthorized");
    let again = t
        .request("session.refresh", json!({ "refresh_token": refresh }))
        .await;
    assert_eq!(again.code(), "unauthorized");
    // Other sessions of the same user are untouched; unknown tokens revoke quietly.
    t.request(
        "session.verify",
        json!({ "token": other["session"]["access_token"] }),
    )
    .await
    .ok();
    let unknown = t
        .request("session.revoke", json!({ "refresh_token": "lrt_unknown" }))
        .await;
    assert_eq!(unknown.ok(), &json!({}));
}

#[tokio::test]
async fn user_get_returns_the_user_and_identities() {
    let t = TestDaemon::start().await;
    t.idp.set_user(TestUser::from_email("grace@example.test"));
    let login = logged_in(&t).await;
    let token = login["session"]["access_token"].clone();
    t.idp
        .set_user(TestUser::from_email("grace-gh@example.test"));
    t.full_login(json!({ "provider": "github", "link_session": token }))
        .await
        .ok();
    let reply = t
        .request("user.get", json!({ "user_id": login["user"]["id"] }))
        .await;
    let user = &reply.ok()["user"];
    assert_eq!(user["id"], login["user"]["id"]);
    assert_eq!(user["email"], "grace@example.test");
    let mut providers: Vec<&str> = user["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["provider"].as_str().unwrap())
        .collect();
    providers.sort_unstable();
    assert_eq!(providers, ["github", "oidc"]);
    let missing = t
        .request("user.get", json!({ "user_id": "usr_nobody" }))
        .await;
    assert_eq!(missing.code(), "not_found");
}

#[tokio::test]
async fn rotated_keys_sign_new_tokens_and_old_tokens_still_verify() {
    let mut t = TestDaemon::start().await;
    let before = logged_in(&t).await;
    let old_token = before["session"]["access_token"].clone();
    let rotated = t.request("admin.keys.rotate", json!({})).await;
    let new_kid = rotated.ok()["kid"].as_str().unwrap().to_owned();

    let jwks = t.request("jwks", json!({})).await.ok().clone();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2, "the retired key stays published: {kids:?}");
    assert_eq!(kids[0], new_kid, "the signing key comes first");

    let after = logged_in(&t).await;
    let header =
        jsonwebtoken::decode_header(after["session"]["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
    t.request("session.verify", json!({ "token": old_token }))
        .await
        .ok();

    // Both keys survive a restart, sealed in the store.
    t.restart().await;
    t.request("session.verify", json!({ "token": old_token }))
        .await
        .ok();
    let jwks_after = t.request("jwks", json!({})).await.ok().clone();
    assert_eq!(jwks, jwks_after);
}

#[tokio::test]
async fn no_signing_key_or_refresh_token_in_plaintext_on_disk() {
    let t = TestDaemon::start().await;
    let login = logged_in(&t).await;
    let refresh = login["session"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // ring's Ed25519 PKCS#8 documents start with these bytes; base64 would start "MFMCAQEw".
    let der_prefix: &[u8] = &[
        0x30, 0x53, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70,
    ];
    let scanned = lanyard_tests::assert_not_on_disk(
        &t.state_dirs(),
        &[
            ("a raw private key", der_prefix),
            ("a base64 private key", b"MFMCAQEw"),
            ("a refresh token", refresh.as_bytes()),
        ],
    );
    assert!(scanned > 0);
}
