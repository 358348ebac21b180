#![allow(clippy::unwrap_used)]
//! The provider catalogue end to end: each plugin logs a user in through NATS against the
//! fake provider configured to behave like the real one (its endpoints, claim shapes and
//! quirks).

use lanyard_tests::harness::{CLIENT_ID, CLIENT_SECRET};
use lanyard_tests::TestDaemon;
use serde_json::json;

/// A provider instance of `kind` with the test client's credentials and `settings` (TOML).
fn instance(id: &str, kind: &str, settings: &str) -> String {
    format!(
        r#"
[[providers]]
id = "{id}"
kind = "{kind}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uris = ["http://app.test/callback/{id}"]
{settings}
"#
    )
}

#[tokio::test]
async fn generic_oauth2_logs_in_from_config_alone() {
    let t = TestDaemon::start_plus(|base| {
        instance(
            "acme",
            "oauth2",
            &format!(
                r#"scopes = ["profile", "email"]
authorization_url = "{base}/authorize"
token_url = "{base}/token"
userinfo_url = "{base}/acme/v1/me"
token_auth = "body"
subject_pointer = "/data/id"
email_pointer = "/data/email"
email_verified_pointer = "/data/email_confirmed"
name_pointer = "/data/display_name"
username_pointer = "/data/handle"
groups_pointer = "/data/teams"
group_name_pointer = "/slug"
"#
            ),
        )
    })
    .await;
    t.idp.set(|k| {
        k.routes.insert(
            "/acme/v1/me".into(),
            json!({"data": {
                "id": 4242,
                "email": "zoe@acme.test",
                "email_confirmed": true,
                "display_name": "Zoë",
                "handle": "zoe",
                "teams": [{"slug": "platform"}],
            }}),
        );
    });
    let (login, query) = t.begin(json!({ "provider": "acme" })).await;
    let url = url::Url::parse(login["authorization_url"].as_str().unwrap()).unwrap();
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(param("scope").as_deref(), Some("profile email"));
    assert_eq!(param("code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param("nonce"), None, "no nonce for plain OAuth2");
    let body = t
        .request("callback", json!({ "query": query, "provider": "acme" }))
        .await
        .ok()
        .clone();
    assert_eq!(body["identity"]["provider"], "acme");
    assert_eq!(body["identity"]["subject"], "4242");
    assert_eq!(body["identity"]["groups"], json!(["platform"]));
    assert_eq!(body["user"]["email"], "zoe@acme.test");
    assert_eq!(body["user"]["email_verified"], true);
    assert_eq!(body["user"]["name"], "Zoë");
}
