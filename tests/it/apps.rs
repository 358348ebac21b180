//! Logins for apps without a web server. Native apps (RFC 8252): a loopback redirect URI in
//! the allow-list matches the same URI on any port (the app listens where it can) and
//! nothing else; a private-use scheme is allowed as written.

use lanyard_tests::harness::{CLIENT_ID, CLIENT_SECRET};
use lanyard_tests::TestDaemon;
use serde_json::json;

/// An instance for native apps: a loopback redirect and a private-use scheme.
fn native_instance(issuer: &str) -> String {
    format!(
        "\n[[providers]]\nid = \"native\"\nkind = \"oidc\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret = \"{CLIENT_SECRET}\"\n\
         redirect_uris = [\"http://127.0.0.1/callback\", \"http://[::1]/callback\", \
         \"com.example.app:/callback\"]\nissuer = \"{issuer}\"\n"
    )
}

#[tokio::test]
async fn a_native_app_logs_in_through_a_loopback_port_of_its_own() {
    let t = TestDaemon::start_plus(native_instance).await;
    for uri in [
        "http://127.0.0.1:49152/callback",
        "http://[::1]:3000/callback",
        "http://127.0.0.1/callback",
    ] {
        let login = t
            .begin(json!({ "provider": "native", "redirect_uri": uri }))
            .await;
        let url = login.reply["authorization_url"].as_str().unwrap();
        let sent = url::Url::parse(url).unwrap();
        let sent = sent
            .query_pairs()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.into_owned());
        assert_eq!(
            sent.as_deref(),
            Some(uri),
            "the provider is sent the app's own URI"
        );
        // The app says where the browser came back to (only it knows its port).
        let done = t
            .request(
                "callback",
                login.callback_with(json!({ "redirect_uri": uri })),
            )
            .await;
        done.ok();
    }
}

#[tokio::test]
async fn a_loopback_redirect_with_another_path_or_host_is_refused() {
    let t = TestDaemon::start_plus(native_instance).await;
    for uri in [
        "http://127.0.0.1:49152/other",
        "http://localhost:49152/callback",
        "https://127.0.0.1:49152/callback",
        "com.example.evil:/callback",
    ] {
        let refused = t
            .request(
                "login",
                json!({ "provider": "native", "redirect_uri": uri }),
            )
            .await;
        assert_eq!(refused.code(), "bad_request", "{uri}");
    }
    // A callback that names another port than its login's, or none (a loopback login's
    // port is only the app's to say): invalid_state, and the state is spent.
    let login = t
        .begin(json!({ "provider": "native", "redirect_uri": "http://127.0.0.1:49152/callback" }))
        .await;
    let other_port =
        login.callback_with(json!({ "redirect_uri": "http://127.0.0.1:49153/callback" }));
    assert_eq!(
        t.request("callback", other_port).await.code(),
        "invalid_state"
    );
    let login = t
        .begin(json!({ "provider": "native", "redirect_uri": "http://127.0.0.1:49152/callback" }))
        .await;
    assert_eq!(
        t.request("callback", login.callback()).await.code(),
        "invalid_state"
    );
}

#[tokio::test]
async fn a_private_use_scheme_in_the_allow_list_logs_in() {
    let t = TestDaemon::start_plus(native_instance).await;
    let uri = "com.example.app:/callback";
    let login = t
        .begin(json!({ "provider": "native", "redirect_uri": uri }))
        .await;
    // The code is bound to its PKCE verifier: the app's login is PKCE S256 like every other.
    let url = login.reply["authorization_url"].as_str().unwrap();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    t.request(
        "callback",
        login.callback_with(json!({ "redirect_uri": uri })),
    )
    .await
    .ok();
    // Without naming it, the configured URI the state names is found all the same.
    let login = t
        .begin(json!({ "provider": "native", "redirect_uri": uri }))
        .await;
    t.request("callback", login.callback()).await.ok();
}
