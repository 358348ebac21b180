//! Claims services can authorise on: what `[sessions.claims]` and an instance's `claims` put
//! in the access token, read again from the store at every refresh, within a bounded size.

use base64::Engine;
use lanyard_tests::{TestDaemon, TestUser};
use serde_json::{json, Value};

/// Email and username for every session; the GitHub instance adds its `acme` groups and an
/// `admin` role for the platform team.
async fn daemon() -> TestDaemon {
    TestDaemon::start_with(|c| {
        *c = c.replacen(
            "id = \"github\"\n",
            "id = \"github\"\nclaims = { username = true, groups = true, \
             group_prefixes = [\"acme\"], max_groups = 100, \
             roles = { admin = [\"acme/platform\"], billing = [\"acme/billing\"] } }\n",
            1,
        );
        c.push_str("\n[sessions.claims]\nemail = true\nemail_verified = true\nusername = true\n");
    })
    .await
}

/// The payload of a JWT, as any service decoding it locally sees it.
fn payload(token: &Value) -> Value {
    let token = token.as_str().unwrap();
    let body = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn github_login(t: &TestDaemon, user: TestUser) -> Value {
    t.idp.set_user(user);
    let approved = t
        .begin(json!({ "provider": "github", "fetch_groups": true }))
        .await;
    t.request("callback", approved.callback())
        .await
        .ok()
        .clone()
}

#[tokio::test]
async fn the_token_carries_the_configured_claims_and_a_refresh_reads_them_again() {
    let t = daemon().await;
    let ada = TestUser::from_email("ada@example.test");
    let first = github_login(&t, ada.clone()).await;
    let token = &first["session"]["access_token"];
    let claims = payload(token);
    // The instance's claims replace the global ones: no email here.
    assert_eq!(claims["username"], first["user"]["username"]);
    assert_eq!(claims["groups"], json!(["acme", "acme/platform"]));
    assert_eq!(claims["roles"], json!(["admin"]));
    assert!(claims.get("email").is_none(), "{claims}");
    assert!(claims.get("groups_truncated").is_none(), "{claims}");
    // session.verify returns the same.
    let verified = t.request("session.verify", json!({ "token": token })).await;
    assert_eq!(verified.ok()["groups"], claims["groups"]);
    assert_eq!(verified.ok()["roles"], claims["roles"]);

    // Another login changes the identity's groups (left the platform team, joined billing):
    // the first device's next refresh carries them.
    let moved = TestUser {
        teams: vec![("acme".into(), "billing".into())],
        orgs: vec!["acme".into(), "beta".into()],
        ..ada
    };
    github_login(&t, moved).await;
    let refreshed = t
        .request(
            "session.refresh",
            json!({ "refresh_token": first["session"]["refresh_token"] }),
        )
        .await;
    let claims = payload(&refreshed.ok()["session"]["access_token"]);
    assert_eq!(
        claims["groups"],
        json!(["acme", "acme/billing"]),
        "{claims}"
    );
    assert_eq!(claims["roles"], json!(["billing"]));

    // An instance without its own claims gets the global ones.
    t.idp.set_user(TestUser::from_email("grace@example.test"));
    let oidc = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let claims = payload(&oidc["session"]["access_token"]);
    assert_eq!(claims["email"], "grace@example.test");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["username"], oidc["user"]["username"]);
    assert!(claims.get("groups").is_none(), "{claims}");
}

#[tokio::test]
async fn a_user_in_hundreds_of_groups_gets_a_bounded_token() {
    let t = daemon().await;
    let many = TestUser {
        orgs: (0..300)
            .map(|i| format!("acme-{i:03}-{}", "x".repeat(50)))
            .collect(),
        teams: vec![("acme".into(), "platform".into())],
        ..TestUser::from_email("joiner@example.test")
    };
    let login = github_login(&t, many).await;
    let groups = login["identity"]["groups"].as_array().unwrap().len();
    assert!(groups > 300, "the identity keeps every group ({groups})");
    let token = login["session"]["access_token"].as_str().unwrap();
    let claims = payload(&login["session"]["access_token"]);
    let carried = claims["groups"].as_array().unwrap();
    assert_eq!(claims["groups_truncated"], true);
    assert!(
        carried.len() < 100,
        "3 KiB of names: {} groups",
        carried.len()
    );
    assert_eq!(claims["roles"], json!(["admin"]), "roles see every group");
    // The largest token the suite makes (reported, and bounded well under the 8 KiB many
    // HTTP servers allow a header).
    eprintln!(
        "largest access token: {} bytes, {} of {groups} groups",
        token.len(),
        carried.len()
    );
    assert!(token.len() < 6 * 1024, "{} bytes", token.len());
}
