//! Provider administration over NATS: instances added, changed and removed at runtime,
//! secrets masked and sealed, the config file winning on a clash, and the fences around the
//! admin subjects.

use std::path::Path;

use async_nats::{ConnectOptions, HeaderMap};
use lanyard_tests::harness::{next_event, CLIENT_ID, CLIENT_SECRET};
use lanyard_tests::{NatsServer, TestDaemon, TestUser, PATIENCE};
use serde_json::{json, Value};

fn new_provider(t: &TestDaemon, id: &str) -> Value {
    json!({
        "id": id,
        "kind": "oidc",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": ["https://app.test/cb/runtime"],
        "issuer": t.idp.issuer(),
    })
}

#[tokio::test]
async fn a_created_provider_serves_at_once_and_survives_a_restart() {
    let mut t = TestDaemon::start().await;
    let mut events = t
        .client
        .subscribe("lanyard.events.provider.>")
        .await
        .unwrap();
    t.client.flush().await.unwrap();

    let created = t
        .request("admin.provider.create", new_provider(&t, "runtime"))
        .await;
    let provider = &created.ok()["provider"];
    assert_eq!(provider["client_secret"], "********");
    assert_eq!(provider["source"], "admin");
    assert_eq!(provider["version"], 1);
    assert!(!created.body.to_string().contains(CLIENT_SECRET));
    let (subject, event) = next_event(&mut events).await;
    assert_eq!(subject, "lanyard.events.provider.created");
    assert!(!event.to_string().contains(CLIENT_SECRET));

    // The fake provider checks the client secret: a login proves the sealed secret opens.
    t.idp.set_user(TestUser::from_email("runtime@example.test"));
    t.full_login(json!({ "provider": "runtime" })).await.ok();

    t.restart().await;
    t.full_login(json!({ "provider": "runtime" })).await.ok();
    let listed = t.request("admin.provider.list", json!({})).await;
    let ids: Vec<(&str, &str)> = listed.ok()["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ids,
        [
            ("github", "config"),
            ("oidc", "config"),
            ("panicky", "config"),
            ("runtime", "admin")
        ]
    );
    lanyard_tests::assert_not_on_disk(
        &t.state_dirs(),
        &[("the client secret in plaintext", CLIENT_SECRET.as_bytes())],
    );
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let t = TestDaemon::start().await;
    let mut body = new_provider(&t, "broken");
    body.as_object_mut().unwrap().remove("client_id");
    let reply = t.request("admin.provider.create", body).await;
    assert_eq!(reply.code(), "bad_request");
    assert!(reply.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("client_id"));

    let mut body = new_provider(&t, "broken");
    body["issuerr"] = json!("x");
    let reply = t.request("admin.provider.create", body).await;
    assert_eq!(reply.code(), "bad_request");
    assert!(reply.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("provider.issuerr"));

    let mut body = new_provider(&t, "broken");
    body["kind"] = json!("nosuch");
    let reply = t.request("admin.provider.create", body).await;
    assert!(reply.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("provider.kind"));

    let mut body = new_provider(&t, "broken");
    body["redirect_uris"] = json!(["not a url"]);
    let reply = t.request("admin.provider.create", body).await;
    assert!(reply.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("redirect_uris"));

    let mut body = new_provider(&t, "broken");
    body["client_secret_file"] = json!("/etc/shadow");
    body.as_object_mut().unwrap().remove("client_secret");
    let reply = t.request("admin.provider.create", body).await;
    assert_eq!(reply.code(), "bad_request");

    // Nothing half-created.
    let reply = t
        .request("admin.provider.get", json!({ "id": "broken" }))
        .await;
    assert_eq!(reply.code(), "not_found");
}

#[tokio::test]
async fn the_config_file_wins_on_a_clash_and_ids_are_unique() {
    let t = TestDaemon::start().await;
    let clash = t
        .request("admin.provider.create", new_provider(&t, "oidc"))
        .await;
    assert_eq!(clash.code(), "conflict");
    let update = t
        .request("admin.provider.update", new_provider(&t, "oidc"))
        .await;
    assert_eq!(update.code(), "conflict");
    let delete = t
        .request("admin.provider.delete", json!({ "id": "github" }))
        .await;
    assert_eq!(delete.code(), "conflict");
    let get = t
        .request("admin.provider.get", json!({ "id": "oidc" }))
        .await;
    assert_eq!(get.ok()["provider"]["source"], "config");
    assert_eq!(get.ok()["provider"]["client_secret"], "********");

    t.request("admin.provider.create", new_provider(&t, "twice"))
        .await
        .ok();
    let again = t
        .request("admin.provider.create", new_provider(&t, "twice"))
        .await;
    assert_eq!(again.code(), "conflict");
}

#[tokio::test]
async fn update_and_patch_change_a_running_provider() {
    let t = TestDaemon::start().await;
    t.request("admin.provider.create", new_provider(&t, "live"))
        .await
        .ok();
    let redirect = "https://app.test/cb/updated";
    let before = t
        .request(
            "login",
            json!({ "provider": "live", "redirect_uri": redirect }),
        )
        .await;
    assert_eq!(before.code(), "bad_request");

    // An update without client_secret keeps the stored one.
    let mut body = new_provider(&t, "live");
    body.as_object_mut().unwrap().remove("client_secret");
    body["redirect_uris"] = json!([redirect]);
    let updated = t.request("admin.provider.update", body).await;
    assert_eq!(updated.ok()["provider"]["version"], 2);
    assert_eq!(updated.ok()["provider"]["client_secret"], "********");
    t.full_login(json!({ "provider": "live", "redirect_uri": redirect }))
        .await
        .ok();

    let patched = t
        .request(
            "admin.provider.patch",
            json!({ "id": "live", "scopes": ["openid", "email"], "clock_skew_secs": 30 }),
        )
        .await;
    let provider = &patched.ok()["provider"];
    assert_eq!(provider["version"], 3);
    assert_eq!(provider["scopes"], json!(["openid", "email"]));
    assert_eq!(provider["redirect_uris"], json!([redirect]));
    let login = t.request("login", json!({ "provider": "live" })).await;
    let url = login.ok()["authorization_url"].as_str().unwrap().to_owned();
    assert!(
        url.contains("scope=openid+email&") || url.ends_with("scope=openid+email"),
        "{url}"
    );

    // `null` removes a key; removing a required one is refused and changes nothing.
    let removed = t
        .request(
            "admin.provider.patch",
            json!({ "id": "live", "scopes": null }),
        )
        .await;
    assert!(removed.ok()["provider"].get("scopes").is_none());
    let refused = t
        .request(
            "admin.provider.patch",
            json!({ "id": "live", "issuer": null }),
        )
        .await;
    assert_eq!(refused.code(), "bad_request");
    let get = t
        .request("admin.provider.get", json!({ "id": "live" }))
        .await;
    assert_eq!(get.ok()["provider"]["version"], 4);
}

/// An instance changed while one of its callbacks waits on the provider: the new actor takes
/// new requests at once, and the one it replaces finishes the callback (fetching the
/// issuer's keys it still needs) before it stops.
#[tokio::test]
async fn a_callback_in_flight_finishes_when_its_instance_changes() {
    let t = TestDaemon::start().await;
    t.request("admin.provider.create", new_provider(&t, "changing"))
        .await
        .ok();
    let login = t.begin(json!({ "provider": "changing" })).await;
    let tokens = t.idp.arrivals("/token");
    let gate = t.idp.hold("/token");
    let client = t.client.clone();
    let callback = tokio::spawn(async move {
        let body = login.callback().to_string();
        lanyard_tests::patient_request(&client, "lanyard.v1.callback", body.into()).await
    });
    t.idp.await_arrivals("/token", tokens + 1).await;
    let patched = t
        .request(
            "admin.provider.patch",
            json!({ "id": "changing", "clock_skew_secs": 30 }),
        )
        .await;
    assert_eq!(patched.ok()["provider"]["clock_skew_secs"], 30);
    gate.open();
    let reply = callback.await.unwrap().unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(body.get("error").is_none(), "the login finished: {body}");
    t.full_login(json!({ "provider": "changing" })).await.ok();
}

/// A stored instance that cannot be built when a daemon starts (its plugin refuses to be
/// configured, as one that overran on a busy machine would fail) does not hold the daemon
/// up: the others serve, it shows as unavailable with its error, and it serves once a retry
/// builds it.
#[tokio::test]
async fn a_stored_instance_that_fails_to_build_is_tried_again() {
    let mut t = TestDaemon::start().await;
    let flags = tempfile::tempdir().unwrap();
    let flag = flags.path().join("refuse");
    let body = json!({
        "id": "flaky",
        "kind": "panicky",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": ["https://app.test/cb/flaky"],
        "issuer": t.idp.issuer(),
        "configure_fails_while": flag.display().to_string(),
    });
    t.request("admin.provider.create", body).await.ok();
    std::fs::write(&flag, "").unwrap();
    t.restart().await;

    let login = t.request("login", json!({ "provider": "flaky" })).await;
    assert_eq!(login.code(), "provider_unavailable", "{:?}", login.body);
    let status = t.request("admin.status", json!({})).await;
    let flaky = status.ok()["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "flaky")
        .cloned()
        .unwrap();
    assert_eq!(flaky["status"], "unavailable", "{flaky}");
    assert!(
        flaky["error"].as_str().unwrap().contains("refuses"),
        "{flaky}"
    );
    t.full_login(json!({ "provider": "oidc" })).await.ok();

    std::fs::remove_file(&flag).unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let login = t.request("login", json!({ "provider": "flaky" })).await;
        if login.body.get("error").is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never built: {:?}",
            login.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn deleting_a_provider_fails_its_pending_logins_even_if_recreated() {
    let t = TestDaemon::start().await;
    let mut events = t
        .client
        .subscribe("lanyard.events.provider.>")
        .await
        .unwrap();
    t.client.flush().await.unwrap();
    t.request("admin.provider.create", new_provider(&t, "doomed"))
        .await
        .ok();
    t.request(
        "admin.provider.patch",
        json!({ "id": "doomed", "clock_skew_secs": 5 }),
    )
    .await
    .ok();
    let pending = t.begin(json!({ "provider": "doomed" })).await;
    let deleted = t
        .request("admin.provider.delete", json!({ "id": "doomed" }))
        .await;
    assert_eq!(deleted.ok(), &json!({}));
    let login = t.request("login", json!({ "provider": "doomed" })).await;
    assert_eq!(login.code(), "unknown_provider");

    t.request("admin.provider.create", new_provider(&t, "doomed"))
        .await
        .ok();
    let callback = t.request("callback", pending.callback()).await;
    assert_eq!(callback.code(), "invalid_state");
    // The new instance itself works.
    t.full_login(json!({ "provider": "doomed" })).await.ok();
    let missing = t
        .request("admin.provider.delete", json!({ "id": "nobody" }))
        .await;
    assert_eq!(missing.code(), "not_found");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (subject, body) = next_event(&mut events).await;
        assert_eq!(body["provider"], "doomed");
        seen.push((subject, body["version"].as_u64().unwrap()));
    }
    let expected: Vec<(String, u64)> = [
        ("lanyard.events.provider.created", 1),
        ("lanyard.events.provider.updated", 2),
        ("lanyard.events.provider.deleted", 2),
        ("lanyard.events.provider.created", 1),
    ]
    .iter()
    .map(|(s, v)| (s.to_string(), *v))
    .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn an_admin_token_guards_admin_commands_only() {
    let token = "0123456789abcdef-admin";
    let t = TestDaemon::start_with(|c| {
        let at = c.find("[[providers]]").unwrap();
        c.insert_str(at, &format!("[admin]\ntoken = \"{token}\"\n\n"));
    })
    .await;
    let list = t.request("admin.provider.list", json!({})).await;
    assert_eq!(list.code(), "unauthorized");
    let status = t.request("admin.status", json!({})).await;
    assert_eq!(status.code(), "unauthorized");
    let with = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("Lanyard-Admin-Token", value);
        headers
    };
    let wrong = t
        .client
        .request_with_headers("lanyard.v1.admin.provider.list", with("nope"), "{}".into())
        .await
        .unwrap();
    let wrong: Value = serde_json::from_slice(&wrong.payload).unwrap();
    assert_eq!(wrong["error"]["code"], "unauthorized");
    let right = t
        .client
        .request_with_headers("lanyard.v1.admin.provider.list", with(token), "{}".into())
        .await
        .unwrap();
    let right: Value = serde_json::from_slice(&right.payload).unwrap();
    assert!(right["providers"].is_array(), "{right}");
    // Services need no admin token.
    t.full_login(json!({ "provider": "oidc" })).await.ok();
}

#[tokio::test]
async fn the_example_nats_permissions_keep_services_out_of_admin() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/nats-server.conf");
    let nats = NatsServer::start_with(&["-c", conf.to_str().unwrap()]).unwrap();
    // The server's complaints to the service (a refused publish is one).
    let (complaints, mut complained) = tokio::sync::mpsc::unbounded_channel();
    let service =
        ConnectOptions::with_user_and_password("service".into(), "change-me-service".into())
            .event_callback(move |event| {
                let complaints = complaints.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        let _ = complaints.send(error.to_string());
                    }
                }
            });
    let t = TestDaemon::start_on(nats, service, |c| {
        let at = c.find("[nats]\n").unwrap() + "[nats]\n".len();
        c.insert_str(at, "user = \"lanyard\"\npassword = \"change-me-lanyard\"\n");
    })
    .await;
    // The service logs users in...
    t.full_login(json!({ "provider": "oidc" })).await.ok();
    // ...but its admin request never reaches the daemon: the server refuses to pass it on
    // (and says so), so no answer can come, however long one waits.
    let admin = "lanyard.v1.admin.provider.list";
    let mut denied = Box::pin(t.client.request(admin, "{}".into()));
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            tokio::select! {
                complaint = complained.recv() => {
                    let complaint = complaint.expect("the client is open");
                    if complaint.to_lowercase().contains("permissions violation")
                        && complaint.contains(admin)
                    {
                        return Ok(complaint);
                    }
                }
                reply = &mut denied => return Err(reply),
            }
        }
    })
    .await
    .expect("the server refused the publish");
    assert!(
        refused.is_ok(),
        "a service's admin request was answered: {refused:?}"
    );

    let operator =
        ConnectOptions::with_user_and_password("operator".into(), "change-me-operator".into())
            .connect(t.nats.url())
            .await
            .unwrap();
    let listed = operator
        .request("lanyard.v1.admin.provider.list", "{}".into())
        .await
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.payload).unwrap();
    assert!(listed["providers"].is_array(), "{listed}");
}

/// With the example permissions and `[events] stream = true`, an operator replays events
/// with `lanyard events --since`; a service cannot read the stream.
#[tokio::test]
async fn the_example_nats_permissions_let_operators_replay_events() {
    use std::io::BufRead;
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/nats-server.conf");
    let store = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_jetstream(&[
        "-c",
        conf.to_str().unwrap(),
        "--jetstream",
        "--store_dir",
        store.path().to_str().unwrap(),
    ])
    .unwrap();
    let service =
        ConnectOptions::with_user_and_password("service".into(), "change-me-service".into());
    let t = TestDaemon::start_on(nats, service, |c| {
        let at = c.find("[nats]\n").unwrap() + "[nats]\n".len();
        c.insert_str(at, "user = \"lanyard\"\npassword = \"change-me-lanyard\"\n");
        c.push_str("\n[events]\nstream = true\n");
    })
    .await;
    t.full_login(json!({ "provider": "oidc" })).await.ok();

    let replay = |user: &str, password: &str| {
        let mut child = std::process::Command::new(lanyard_tests::harness::lanyard_bin())
            .args(["events", "--since", "1h", "--json"])
            .env("LANYARD_NATS__URL", t.nats.url())
            .env("LANYARD_NATS__USER", user)
            .env("LANYARD_NATS__PASSWORD", password)
            .env_remove("LANYARD_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        (child, stdout)
    };
    let (mut operator, stdout) = replay("operator", "change-me-operator");
    let first = tokio::time::timeout(
        PATIENCE,
        tokio::task::spawn_blocking(move || std::io::BufReader::new(stdout).lines().next()),
    )
    .await;
    let _ = operator.kill();
    let _ = operator.wait();
    let first = first.expect("a replayed event").unwrap().unwrap().unwrap();
    assert!(first.contains("user.created"), "{first}");

    // The service's permissions do not reach the stream: the command fails.
    let (mut service, _) = replay("service", "change-me-service");
    let status = tokio::task::spawn_blocking(move || service.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success(), "a service replayed the stream");
}
