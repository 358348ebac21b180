//! Hostile input: a code from another login, `return_to` off-site, and no secret in the logs or the store's files.

use std::time::Duration;

use lanyard_tests::harness::{CLIENT_ID, CLIENT_SECRET};
use lanyard_tests::{TestDaemon, PATIENCE};
use serde_json::{json, Value};

/// Code injection: an attacker's code (issued for the attacker's login, so bound to the
/// attacker's PKCE verifier) replayed with the victim's state. The daemon sends the victim's
/// verifier, the provider refuses the exchange, and no session comes of it.
#[tokio::test]
async fn a_code_from_another_login_is_refused() {
    let t = TestDaemon::start().await;
    let attacker = t
        .begin(json!({ "provider": "oidc", "login_hint": "mallory@example.test" }))
        .await;
    let victim = t
        .begin(json!({ "provider": "oidc", "login_hint": "victim@example.test" }))
        .await;
    // The victim's own browser, binding and all, brings the attacker's code.
    let with_code = |code: String| json!({ "state": victim.param("state"), "code": code, "binding": victim.binding() });
    let reply = t
        .request("callback", with_code(attacker.param("code")))
        .await;
    assert_eq!(reply.code(), "provider_error", "{}", reply.body);
    // The victim's state is spent; the victim's own code cannot be used with it either.
    let again = t.request("callback", with_code(victim.param("code"))).await;
    assert_eq!(again.code(), "invalid_state");
}

/// After logins, a token read, a session refresh and a token refresh, with every log level
/// on: no client secret, provider token, session token or master key appears in the log,
/// nor in plaintext anywhere in the data directory.
///
/// Long because it is one run of a daemon at trace level: every secret it scans for is created by a
/// step above the scan, in the same process run.
#[tokio::test]
async fn no_secret_in_the_logs_at_any_level_or_in_the_store_files() {
    use lanyard_tests::harness::lanyard_bin;
    let nats = lanyard_tests::NatsServer::start().unwrap();
    let idp = lanyard_tests::FakeIdp::start(CLIENT_ID, CLIENT_SECRET)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let caller_token = "caller-token-that-must-not-leak-123";
    let config = format!(
        r#"data_dir = "{data}"
[nats]
url = "{nats}"
[[callers]]
name = "svc"
token = "{caller_token}"
[[providers]]
id = "oidc"
kind = "oidc"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uris = ["http://app.test/callback"]
issuer = "{issuer}"
store_tokens = true
token_readers = ["svc"]
"#,
        data = data.display(),
        nats = nats.url(),
        issuer = idp.issuer()
    );
    let config_path = dir.path().join("lanyard.toml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.path().join("lanyard.log");
    let mut daemon = std::process::Command::new(lanyard_bin())
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("LANYARD_LOG", "trace")
        .env_remove("LANYARD_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let request = |subject: &'static str, body: Value, headers: Option<async_nats::HeaderMap>| {
        let client = client.clone();
        async move {
            // The daemon is a process of its own: until it serves, nobody answers. Its start
            // may take a while on a busy machine; a request it took is answered, not retried.
            let deadline = std::time::Instant::now() + PATIENCE;
            loop {
                let mut request = async_nats::Request::new()
                    .payload(body.to_string().into())
                    .timeout(Some(PATIENCE));
                if let Some(h) = &headers {
                    request = request.headers(h.clone());
                }
                match client.send_request(subject, request).await {
                    Ok(reply) => return serde_json::from_slice::<Value>(&reply.payload).unwrap(),
                    Err(e)
                        if e.kind() == async_nats::RequestErrorKind::NoResponders
                            && std::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{subject} was not answered: {e}"),
                }
            }
        }
    };
    let mut secrets: Vec<String> = vec![CLIENT_SECRET.into(), caller_token.into()];
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Lanyard-Caller-Token", caller_token);
    for _ in 0..2 {
        let login = request("lanyard.v1.login", json!({ "provider": "oidc" }), None).await;
        let query = idp
            .approve(login["authorization_url"].as_str().unwrap())
            .await
            .unwrap();
        secrets.push(login["binding"].as_str().unwrap_or_default().into());
        let callback = json!({ "query": query, "binding": login["binding"] });
        let done = request("lanyard.v1.callback", callback, None).await;
        assert!(done.get("error").is_none(), "{done}");
        let user_id = done["user"]["id"].clone();
        let session = &done["session"];
        secrets.push(session["access_token"].as_str().unwrap().into());
        secrets.push(session["refresh_token"].as_str().unwrap().into());
        let refreshed = request(
            "lanyard.v1.session.refresh",
            json!({ "refresh_token": session["refresh_token"] }),
            None,
        )
        .await;
        secrets.push(
            refreshed["session"]["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .into(),
        );
        idp.set(|k| k.expires_in = Some(0));
        let token = request(
            "lanyard.v1.token.get",
            json!({ "user_id": user_id, "provider": "oidc" }),
            Some(headers.clone()),
        )
        .await;
        assert!(token["access_token"].is_string(), "{token}");
        idp.set(|k| k.expires_in = None);
    }
    secrets.extend(idp.issued_tokens());
    let master_key = std::fs::read(data.join("master.key")).unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();

    let log = std::fs::read(&log_path).unwrap();
    assert!(
        log.len() > 10_000,
        "trace logging was on: {} bytes",
        log.len()
    );
    let contains = lanyard_tests::holds;
    secrets.retain(|s| s.len() >= 8);
    assert!(secrets.len() >= 10, "{secrets:?}");
    let on_disk: Vec<(&str, &[u8])> = secrets.iter().map(|s| (s.as_str(), s.as_bytes())).collect();
    lanyard_tests::assert_not_on_disk(std::slice::from_ref(&data), &on_disk);
    for secret in &secrets {
        if contains(&log, secret.as_bytes()) {
            let text = String::from_utf8_lossy(&log);
            let line = text
                .lines()
                .find(|l| l.contains(secret.as_str()))
                .unwrap_or_default();
            panic!("`{secret}` is in the log: {}", &line[..line.len().min(600)]);
        }
    }
    let key_text = String::from_utf8_lossy(&master_key).trim().to_owned();
    assert!(
        !contains(&log, key_text.as_bytes()),
        "the master key is in the log"
    );
}

/// With `allowed_return_to`, a login whose `return_to` points off-site is refused before
/// anything is stored; on-site destinations go through to the callback's reply.
#[tokio::test]
async fn return_to_off_site_is_refused_when_an_allow_list_is_set() {
    let t = TestDaemon::start_with(|config| {
        *config = config.replacen(
            "allowed_algs = [\"RS256\", \"ES256\"]",
            "allowed_algs = [\"RS256\", \"ES256\"]\nallowed_return_to = [\"https://app.test/\"]",
            1,
        );
    })
    .await;
    for off_site in [
        "https://evil.test/",
        "//evil.test/x",
        "https://app.test.evil.test/",
    ] {
        let reply = t
            .request(
                "login",
                json!({ "provider": "oidc", "return_to": off_site }),
            )
            .await;
        assert_eq!(reply.code(), "bad_request", "{off_site}");
    }
    let reply = t
        .full_login(json!({ "provider": "oidc", "return_to": "https://app.test/account" }))
        .await;
    assert_eq!(reply.ok()["return_to"], "https://app.test/account");
}
