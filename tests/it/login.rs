//! The login path end to end, through NATS: a real nats-server, the daemon, a real sled
//! directory, and the fake identity provider with really signed tokens.

use lanyard_tests::harness::next_event;
use lanyard_tests::{Tamper, TestDaemon, TestUser};
use serde_json::{json, Value};

fn oidc_login() -> Value {
    json!({ "provider": "oidc", "return_to": "/dashboard" })
}

#[tokio::test]
async fn oidc_login_creates_a_user_with_a_verifiable_session() {
    let t = TestDaemon::start().await;
    let approved = t.begin(oidc_login()).await;
    let login = &approved.reply;
    let url = url::Url::parse(login["authorization_url"].as_str().unwrap()).unwrap();
    let params: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(params["code_challenge_method"], "S256");
    assert!(params["code_challenge"].len() >= 43);
    assert!(!params["nonce"].is_empty());
    assert_eq!(params["redirect_uri"], "http://app.test/callback");
    assert_eq!(params["state"], login["state"].as_str().unwrap());
    assert!(params["scope"].split(' ').any(|s| s == "openid"));
    assert_eq!(
        approved.binding().len(),
        43,
        "a fresh 256-bit secret, base64url"
    );

    let reply = t.request("callback", approved.callback()).await;
    let body = reply.ok();
    assert_eq!(body["new_user"], true);
    assert_eq!(body["return_to"], "/dashboard");
    assert!(body["user"]["id"].as_str().unwrap().starts_with("usr_"));
    assert_eq!(body["user"]["username"], "ada");
    assert_eq!(body["user"]["email"], "ada@example.test");
    assert_eq!(body["user"]["email_verified"], true);
    assert_eq!(body["identity"]["provider"], "oidc");
    assert_eq!(body["identity"]["subject"], "sub-ada");
    assert_eq!(body["session"]["token_type"], "Bearer");
    assert!(body["session"]["refresh_token"]
        .as_str()
        .unwrap()
        .starts_with("lrt_"));

    // The session token verifies against the published JWKS.
    let jwks = t.request("jwks", json!({})).await.ok().clone();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["lanyard"]);
    validation.set_issuer(&["lanyard"]);
    let token = body["session"]["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.kid.as_deref(), jwk.common.key_id.as_deref());
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], body["user"]["id"]);
    for claim in ["exp", "iat", "jti"] {
        assert!(claims.get(claim).is_some(), "missing {claim}");
    }
}

#[tokio::test]
async fn es256_id_tokens_and_state_code_callbacks_work() {
    let t = TestDaemon::start().await;
    t.idp.set(|k| k.es256 = true);
    let login = t.begin(oidc_login()).await;
    let reply = t
        .request(
            "callback",
            json!({
                "state": login.reply["state"],
                "code": login.param("code"),
                "iss": login.param("iss"),
                "binding": login.binding(),
            }),
        )
        .await;
    assert_eq!(reply.ok()["identity"]["subject"], "sub-ada");
}

#[tokio::test]
async fn second_login_returns_the_same_user() {
    let t = TestDaemon::start().await;
    let first = t.full_login(oidc_login()).await.ok().clone();
    let second = t.full_login(oidc_login()).await.ok().clone();
    assert_eq!(second["new_user"], false);
    assert_eq!(first["user"]["id"], second["user"]["id"]);
    assert_ne!(
        first["session"]["refresh_token"],
        second["session"]["refresh_token"]
    );
}

#[tokio::test]
async fn email_only_in_userinfo_is_fetched() {
    let t = TestDaemon::start().await;
    let mut user = TestUser::from_email("grace@example.test");
    user.email_only_in_userinfo = true;
    t.idp.set_user(user);
    let reply = t.full_login(oidc_login()).await;
    assert_eq!(reply.ok()["user"]["email"], "grace@example.test");
    assert_eq!(reply.ok()["user"]["email_verified"], true);
}

#[tokio::test]
async fn github_login_with_groups() {
    let t = TestDaemon::start().await;
    let login = t
        .begin(json!({ "provider": "github", "fetch_groups": true, "login_hint": "octo.cat@example.test" }))
        .await;
    let url = url::Url::parse(login.reply["authorization_url"].as_str().unwrap()).unwrap();
    let scope = url
        .query_pairs()
        .find(|(k, _)| k == "scope")
        .unwrap()
        .1
        .into_owned();
    assert!(
        scope.split(' ').any(|s| s == "read:org"),
        "group scope added: {scope}"
    );
    assert!(url.query_pairs().any(|(k, _)| k == "code_challenge"));
    let reply = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "github" })),
        )
        .await;
    let body = reply.ok();
    assert_eq!(body["identity"]["provider"], "github");
    assert_eq!(body["user"]["email"], "octo.cat@example.test");
    assert_eq!(body["user"]["email_verified"], true);
    assert_eq!(body["user"]["username"], "octo.cat");
    assert_eq!(body["identity"]["groups"], json!(["acme", "acme/platform"]));
    let subject = body["identity"]["subject"].as_str().unwrap();
    assert!(
        subject.parse::<u64>().is_ok(),
        "GitHub subject is the numeric id"
    );
}

#[tokio::test]
async fn unverified_github_email_is_not_used() {
    let t = TestDaemon::start().await;
    let mut user = TestUser::from_email("unverified@example.test");
    user.email_verified = false;
    t.idp.set_user(user);
    let reply = t.full_login(json!({ "provider": "github" })).await;
    let body = reply.ok();
    assert_eq!(body["user"]["email"], Value::Null);
    assert_eq!(body["user"]["email_verified"], false);
    assert_eq!(
        body["identity"]["groups"],
        json!([]),
        "no groups unless asked"
    );
}

#[tokio::test]
async fn callback_iss_must_match_the_issuer() {
    let t = TestDaemon::start().await;
    let login = t.begin(oidc_login()).await;
    let reply = t
        .request(
            "callback",
            json!({
                "state": login.reply["state"],
                "code": login.param("code"),
                "iss": "https://evil.test",
                "binding": login.binding(),
            }),
        )
        .await;
    assert_eq!(reply.code(), "invalid_state");
}

#[tokio::test]
async fn provider_refusal_is_access_denied_and_emits_login_failed() {
    let t = TestDaemon::start().await;
    let mut events = t
        .client
        .subscribe("lanyard.events.login.failed")
        .await
        .unwrap();
    t.client.flush().await.unwrap();
    t.idp.set(|k| k.deny = true);
    let reply = t.full_login(oidc_login()).await;
    assert_eq!(reply.code(), "access_denied");
    let (_, event) = next_event(&mut events).await;
    assert_eq!(event["code"], "access_denied");
    assert_eq!(
        event["provider"], "oidc",
        "the provider is known from the state"
    );
    assert!(event["event_id"].as_str().unwrap().starts_with("evt_"));
}

#[tokio::test]
async fn bad_id_tokens_are_refused() {
    let t = TestDaemon::start().await;
    for tamper in [
        Tamper::WrongNonce,
        Tamper::WrongAudience,
        Tamper::WrongIssuer,
        Tamper::Expired,
        Tamper::FutureIat,
        Tamper::AlgNone,
        Tamper::UnknownKey,
        Tamper::WrongAtHash,
        Tamper::KeyConfusion,
        Tamper::NoKid,
        Tamper::ExtraAudienceNoAzp,
        Tamper::NoNonce,
    ] {
        t.idp.set(|k| k.tamper = tamper);
        let reply = t.full_login(oidc_login()).await;
        assert_eq!(reply.code(), "invalid_id_token", "{tamper:?}");
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("nonce") && !message.contains("aud"),
            "{message}"
        );
    }
    t.idp.set(|k| k.tamper = Tamper::None);
    t.full_login(oidc_login()).await.ok();
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_on_first_sight() {
    let t = TestDaemon::start().await;
    t.full_login(oidc_login()).await.ok();
    // The provider rotates right after the daemon cached its JWKS: the new `kid` makes the
    // daemon refetch once instead of refusing the token.
    t.idp.set(|k| k.rotated = true);
    t.full_login(oidc_login()).await.ok();
    // A key that is never published is still refused, refetch or not.
    t.idp.set(|k| {
        k.rotated = false;
        k.tamper = Tamper::UnknownKey;
    });
    assert_eq!(t.full_login(oidc_login()).await.code(), "invalid_id_token");
}

#[tokio::test]
async fn provider_failures_map_to_their_codes() {
    let t = TestDaemon::start().await;
    t.idp.set(|k| k.token_status = Some(503));
    assert_eq!(
        t.full_login(oidc_login()).await.code(),
        "provider_unavailable"
    );
    t.idp.set(|k| k.token_status = Some(400));
    assert_eq!(t.full_login(oidc_login()).await.code(), "provider_error");
}

#[tokio::test]
async fn malformed_requests_get_documented_codes() {
    let t = TestDaemon::start().await;
    let raw = |s: &'static str| bytes::Bytes::from_static(s.as_bytes());
    assert_eq!(
        t.request_raw("login", raw("{not json")).await.code(),
        "bad_request"
    );
    assert_eq!(
        t.request_raw("login", raw("[\"oidc\"]")).await.code(),
        "bad_request"
    );
    let unknown = t
        .request("login", json!({ "provider": "oidc", "providr": "x" }))
        .await;
    assert_eq!(unknown.code(), "bad_request");
    assert!(unknown.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("providr"));
    let big = "x".repeat(200 * 1024);
    let oversized = t
        .request("login", json!({ "provider": "oidc", "return_to": big }))
        .await;
    assert_eq!(oversized.code(), "payload_too_large");
    assert_eq!(
        t.request("login", json!({ "provider": "nope" }))
            .await
            .code(),
        "unknown_provider"
    );
    let redirect = t
        .request(
            "login",
            json!({ "provider": "oidc", "redirect_uri": "https://evil.test/cb" }),
        )
        .await;
    assert_eq!(redirect.code(), "bad_request");
    let allowed = t
        .request(
            "login",
            json!({ "provider": "oidc", "redirect_uri": "http://app.test/other" }),
        )
        .await;
    allowed.ok();
    assert_eq!(
        t.request("callback", json!({ "code": "x" })).await.code(),
        "bad_request"
    );
    assert_eq!(
        t.request("callback", json!({ "state": "s" })).await.code(),
        "bad_request"
    );
}

#[tokio::test]
async fn email_owned_by_another_user_is_account_exists_unless_trusted() {
    let t = TestDaemon::start().await;
    t.idp.set_user(TestUser::from_email("shared@example.test"));
    t.full_login(oidc_login()).await.ok();
    // The same email at GitHub is a different identity: refused by default.
    let reply = t.full_login(json!({ "provider": "github" })).await;
    assert_eq!(reply.code(), "account_exists");

    let t = TestDaemon::start_with(|c| {
        *c = c.replace(
            "id = \"github\"\n",
            "id = \"github\"\ntrust_email_verified = true\n",
        )
    })
    .await;
    t.idp.set_user(TestUser::from_email("shared@example.test"));
    let first = t.full_login(oidc_login()).await.ok().clone();
    let linked = t
        .full_login(json!({ "provider": "github" }))
        .await
        .ok()
        .clone();
    assert_eq!(linked["user"]["id"], first["user"]["id"]);
    assert_eq!(linked["new_user"], false);
}

#[tokio::test]
async fn link_session_links_a_new_identity_to_the_signed_in_user() {
    let t = TestDaemon::start().await;
    t.idp.set_user(TestUser::from_email("linker@example.test"));
    let first = t.full_login(oidc_login()).await.ok().clone();
    // A different email at GitHub: linking is on purpose, not by email.
    t.idp
        .set_user(TestUser::from_email("linker-gh@example.test"));
    let token = first["session"]["access_token"].clone();
    let linked = t
        .full_login(json!({ "provider": "github", "link_session": token }))
        .await
        .ok()
        .clone();
    assert_eq!(linked["user"]["id"], first["user"]["id"]);
    assert_eq!(linked["new_user"], false);
    assert_eq!(linked["identity"]["provider"], "github");

    let forged = t
        .request(
            "login",
            json!({ "provider": "github", "link_session": "eyJhbGciOi.x.y" }),
        )
        .await;
    assert_eq!(forged.code(), "unauthorized");
}

#[tokio::test]
async fn client_secrets_from_a_file_or_the_environment() {
    // The fake provider checks the client secret, so a secret read wrongly (say, with the
    // file's trailing newline) fails the token exchange.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("oidc-secret");
    std::fs::write(&file, "test-secret\n").unwrap();
    // Not `LANYARD_`-prefixed: the daemons other tests spawn inherit this process's environment
    // and would read it as configuration.
    std::env::set_var("TEST_GITHUB_SECRET_FOR_LANYARD", "test-secret");
    let t = TestDaemon::start_with(|c| {
        let from_file = format!("client_secret_file = \"{}\"", file.display());
        *c = c
            .replacen("client_secret = \"test-secret\"", &from_file, 1)
            .replacen(
                "client_secret = \"test-secret\"",
                "client_secret_env = \"TEST_GITHUB_SECRET_FOR_LANYARD\"",
                1,
            );
    })
    .await;
    assert!(t.config.contains("client_secret_file") && t.config.contains("client_secret_env"));
    t.full_login(oidc_login()).await.ok();
    t.idp
        .set_user(TestUser::from_email("secret-gh@example.test"));
    t.full_login(json!({ "provider": "github" })).await.ok();
}

#[tokio::test]
async fn usernames_are_made_unique() {
    let t = TestDaemon::start().await;
    t.idp.set_user(TestUser::from_email("sam@one.test"));
    let a = t.full_login(oidc_login()).await.ok().clone();
    t.idp.set_user(TestUser::from_email("sam@two.test"));
    let b = t
        .full_login(json!({ "provider": "github" }))
        .await
        .ok()
        .clone();
    assert_eq!(a["user"]["username"], "sam");
    assert_eq!(b["user"]["username"], "sam-2");
}

#[tokio::test]
async fn events_follow_a_successful_login() {
    let t = TestDaemon::start().await;
    let mut events = t.client.subscribe("lanyard.events.>").await.unwrap();
    t.client.flush().await.unwrap();
    let reply = t.full_login(oidc_login()).await.ok().clone();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let (subject, body) = next_event(&mut events).await;
        assert_eq!(body["user_id"], reply["user"]["id"]);
        assert_eq!(body["provider"], "oidc");
        assert!(body["occurred_at"].as_str().unwrap().ends_with('Z'));
        let text = body.to_string();
        assert!(
            !text.contains("lrt_") && !text.contains("eyJ"),
            "no tokens in events"
        );
        seen.push(subject);
    }
    assert_eq!(
        seen,
        [
            "lanyard.events.user.created",
            "lanyard.events.identity.linked",
            "lanyard.events.user.logged_in"
        ]
    );
}

#[tokio::test]
async fn a_panicking_plugin_answers_internal_and_keeps_serving() {
    let t = TestDaemon::start().await;
    let panic = t
        .full_login(json!({ "provider": "panicky", "login_hint": "panic@example.test" }))
        .await;
    assert_eq!(panic.code(), "internal");
    // The same provider serves the next login, and so do the others.
    t.full_login(json!({ "provider": "panicky", "login_hint": "calm@example.test" }))
        .await
        .ok();
    t.full_login(oidc_login()).await.ok();
}

#[tokio::test]
async fn a_plugin_cannot_send_the_access_token_elsewhere() {
    let t = TestDaemon::start().await;
    let reply = t
        .full_login(json!({ "provider": "panicky", "login_hint": "exfil@example.test" }))
        .await;
    assert_eq!(reply.code(), "internal");
}

#[tokio::test]
async fn provider_calls_in_flight_do_not_serialise_a_provider() {
    let t = TestDaemon::start().await;
    let mut logins = Vec::new();
    for _ in 0..8 {
        logins.push(t.begin(oidc_login()).await);
    }
    // The token endpoint answers none of the eight until all eight are waiting on it, so
    // they only succeed if the provider's actor lets them run concurrently.
    t.idp.rendezvous(8);
    let replies = futures::future::join_all(
        logins
            .iter()
            .map(|login| t.request("callback", login.callback())),
    )
    .await;
    for reply in &replies {
        reply.ok();
    }
}

#[tokio::test]
async fn users_and_signing_key_survive_a_restart() {
    let mut t = TestDaemon::start().await;
    let first = t.full_login(oidc_login()).await.ok().clone();
    let jwks_before = t.request("jwks", json!({})).await.ok().clone();
    t.restart().await;
    let jwks_after = t.request("jwks", json!({})).await.ok().clone();
    assert_eq!(jwks_before, jwks_after);
    let again = t.full_login(oidc_login()).await.ok().clone();
    assert_eq!(again["new_user"], false);
    assert_eq!(again["user"]["id"], first["user"]["id"]);
}

#[tokio::test]
async fn service_api_answers_ping() {
    let t = TestDaemon::start().await;
    let reply = t
        .client
        .request("$SRV.PING.lanyard", bytes::Bytes::new())
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["name"], "lanyard");
}

#[tokio::test]
async fn service_info_says_what_each_subject_does() {
    let t = TestDaemon::start().await;
    let reply = t
        .client
        .request("$SRV.INFO.lanyard", bytes::Bytes::new())
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&reply.payload).unwrap();
    let endpoints = info["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 27, "{info}");
    let login = endpoints
        .iter()
        .find(|e| e["subject"] == "lanyard.v1.login")
        .unwrap();
    assert_eq!(login["metadata"]["request"], "lanyard_proto::LoginRequest");
    assert_eq!(login["metadata"]["reply"], "lanyard_proto::LoginReply");
    for endpoint in endpoints {
        let description = endpoint["metadata"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(!description.is_empty(), "{endpoint}");
    }
}
