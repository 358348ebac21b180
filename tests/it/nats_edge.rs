//! The NATS edge against real servers: authentication options from config, and service that
//! survives a NATS restart.

use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use lanyard::config::Config;
use lanyard_tests::{NatsServer, TestDaemon, PATIENCE};
use serde_json::json;

/// Replaces the `[nats]` table's url line with one carrying extra keys.
fn with_nats_keys(config: &mut String, keys: &str) {
    let at = config.find("[nats]\n").unwrap() + "[nats]\n".len();
    config.insert_str(at, keys);
}

#[tokio::test]
async fn user_and_password_from_a_file() {
    let nats = NatsServer::start_with(&["--user", "lanyard", "--pass", "s3cret"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let keys = format!(
        "user = \"lanyard\"\npassword_file = \"{}\"\n",
        password.display()
    );
    let client = ConnectOptions::with_user_and_password("lanyard".into(), "s3cret".into());
    let t = TestDaemon::start_on(nats, client, |c| with_nats_keys(c, &keys)).await;
    t.full_login(json!({ "provider": "oidc" })).await.ok();

    // The same config with a wrong password does not start.
    let mut wrong = t
        .config
        .replace(&password.display().to_string(), "/nonexistent");
    assert!(Config::from_toml(&wrong).is_ok());
    assert!(
        lanyard::prepare(&Config::from_toml(&wrong).unwrap())
            .await
            .is_err(),
        "missing file"
    );
    wrong = t.config.replace("user = \"lanyard\"", "user = \"mallory\"");
    let data = tempfile::tempdir().unwrap();
    wrong = wrong.replace(
        &t.data_dir.path().display().to_string(),
        &data.path().display().to_string(),
    );
    let error = lanyard::Daemon::start(Config::from_toml(&wrong).unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.exit_code(), 1);
    assert!(
        error.to_string().contains("cannot connect to NATS"),
        "{error}"
    );
}

#[tokio::test]
async fn token_auth() {
    let nats = NatsServer::start_with(&["--auth", "t0ken"]).unwrap();
    let client = ConnectOptions::with_token("t0ken".into());
    let t = TestDaemon::start_on(nats, client, |c| with_nats_keys(c, "token = \"t0ken\"\n")).await;
    t.full_login(json!({ "provider": "oidc" })).await.ok();
}

#[tokio::test]
async fn nkey_auth_with_a_seed_file() {
    let daemon_key = nkeys::KeyPair::new_user();
    let client_key = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let server_conf = dir.path().join("nats.conf");
    std::fs::write(
        &server_conf,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }}, {{ nkey: \"{}\" }} ] }}\n",
            daemon_key.public_key(),
            client_key.public_key()
        ),
    )
    .unwrap();
    let seed_file = dir.path().join("lanyard.nk");
    std::fs::write(&seed_file, daemon_key.seed().unwrap()).unwrap();
    let nats = NatsServer::start_with(&["-c", server_conf.to_str().unwrap()]).unwrap();
    let client = ConnectOptions::with_nkey(client_key.seed().unwrap());
    let keys = format!("nkey_seed_file = \"{}\"\n", seed_file.display());
    let t = TestDaemon::start_on(nats, client, |c| with_nats_keys(c, &keys)).await;
    t.full_login(json!({ "provider": "oidc" })).await.ok();
}

#[tokio::test]
async fn serves_again_after_nats_restarts() {
    let mut t = TestDaemon::start().await;
    t.full_login(json!({ "provider": "oidc" })).await.ok();
    t.nats.restart(&[]).unwrap();
    // Both the daemon and the test client reconnect on their own; wait until a request gets
    // through, then check a whole login works on the restored subscriptions.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            t.client.request(
                "lanyard.v1.login",
                json!({ "provider": "oidc" }).to_string().into(),
            ),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.full_login(json!({ "provider": "oidc" })).await.ok();
}

#[tokio::test]
async fn events_produced_while_nats_is_down_go_out_after_it_returns() {
    outage(false).await;
}

/// The same outage with `[events] stream = true`: the daemon publishes through JetStream,
/// retries what goes unacknowledged, and the stream keeps every event exactly once.
#[tokio::test]
async fn the_events_stream_keeps_each_event_once_across_an_outage() {
    let events = outage(true).await;
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let all = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all, "an event stored twice: {events:?}");
    assert!(all >= 6, "two logins' events: {events:?}");
}

/// A login completes while nats-server is down; after it returns, the login's events are in
/// the `LANYARD_EVENTS` stream. With `stream`, the daemon creates the stream and publishes
/// through JetStream; without, the test creates it and the daemon publishes plain messages
/// (which the stream captures). Returns every event in the stream.
async fn outage(stream: bool) -> Vec<serde_json::Value> {
    // JetStream keeps the events in a stream on disk across the restart, so the test reads
    // them afterwards: no subscriber has to be back before the daemon publishes.
    let store = tempfile::tempdir().unwrap();
    let args = ["--jetstream", "--store_dir", store.path().to_str().unwrap()];
    let nats = if stream {
        NatsServer::start_jetstream(&args).unwrap()
    } else {
        NatsServer::start_with(&args).unwrap()
    };
    let mut t = TestDaemon::start_on(nats, ConnectOptions::new(), |c| {
        // A login can only complete during an outage if its store is not on NATS: this test
        // runs on sled in both passes (on the JetStream store the login would wait for the
        // reconnect, and so would its events).
        *c = c.replace("store = \"jetstream\"\n", "");
        if stream {
            c.push_str("\n[events]\nstream = true\n");
        }
    })
    .await;
    if !stream {
        let created = t
            .client
            .request(
                "$JS.API.STREAM.CREATE.LANYARD_EVENTS",
                json!({ "name": "LANYARD_EVENTS", "subjects": ["lanyard.events.>"], "storage": "file" })
                    .to_string()
                    .into(),
            )
            .await
            .unwrap();
        let created: serde_json::Value = serde_json::from_slice(&created.payload).unwrap();
        assert!(created.get("error").is_none(), "{created}");
    }
    // A first login warms discovery and the JWKS, so the next callback only waits on the
    // token endpoint.
    t.full_login(json!({ "provider": "oidc" })).await.ok();

    // With the stream, the outage lasts longer than its 5 s acknowledgement wait: the publish
    // is retried, and the stream must drop the duplicate. A machine too busy to finish the
    // login within the outage tested nothing; then the outage is repeated, longer.
    let mut length = Duration::from_secs(if stream { 7 } else { 4 });
    for attempt in 1..=3 {
        if one_outage(&mut t, &args, attempt, length).await {
            // The login's data was durable all along, and nothing was dropped; with the
            // stream, every event is acknowledged soon after the reconnect.
            let deadline = Instant::now() + PATIENCE;
            loop {
                let status = t.request("admin.status", json!({})).await;
                let counts = status.ok()["events"].clone();
                assert_eq!(counts["dropped"], 0, "{counts}");
                if counts["queued"] == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "events still queued: {counts}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return stream_events(&t.client).await;
        }
        length *= 2;
    }
    panic!("no login completed during an outage, however long");
}

/// One outage with a callback in flight: NATS stops while the daemon waits on the provider's
/// token endpoint, and the provider answers only then, so the login completes, and emits its
/// events, after NATS went away. NATS comes back after `length`. Returns whether the login
/// completed before that (else nothing was tested), having checked its events reached the
/// stream.
async fn one_outage(t: &mut TestDaemon, args: &[&str], attempt: u32, length: Duration) -> bool {
    use lanyard::sessions::{now, rfc3339};
    use lanyard_tests::idp::TestUser;
    let user = TestUser::from_email(&format!("outage-{attempt}@example.com"));
    let subject = user.sub.clone();
    t.idp.set_user(user);
    let login = t.begin(json!({ "provider": "oidc" })).await;
    let tokens = t.idp.arrivals("/token");
    let gate = t.idp.hold("/token");
    let client = t.client.clone();
    let in_flight = tokio::spawn(async move {
        let _ = client
            .request("lanyard.v1.callback", login.callback().to_string().into())
            .await;
    });
    t.idp.await_arrivals("/token", tokens + 1).await;
    let down = now();
    t.nats.stop();
    gate.open();
    tokio::time::sleep(length).await;
    let up = now();
    t.nats.restart(args).unwrap();
    in_flight.abort();

    // The daemon reconnects and publishes what it held; the stream has it.
    let deadline = Instant::now() + PATIENCE;
    let logged_in = loop {
        let events = stream_events(&t.client).await;
        let found = events
            .iter()
            .find(|e| e["type"] == "user.logged_in" && e["subject"] == subject.as_str());
        if let Some(event) = found {
            break event.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the outage's events never reached the stream: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // RFC 3339 UTC times of one format compare as strings.
    let occurred = logged_in["occurred_at"].as_str().unwrap();
    let (down, up) = (rfc3339(down), rfc3339(up + 1));
    assert!(
        down.as_str() <= occurred,
        "the provider answered after NATS stopped ({down}), yet the login completed at {occurred}"
    );
    let events = stream_events(&t.client).await;
    let user_id = logged_in["user_id"].as_str().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "user.created" && e["user_id"] == user_id),
        "user.created of the outage's login: {events:?}"
    );
    t.request("user.get", json!({ "user_id": user_id }))
        .await
        .ok();
    if occurred > up.as_str() {
        eprintln!(
            "the login completed at {occurred}, after the outage ({down}..{up}); once more, longer"
        );
        return false;
    }
    true
}

/// Every event in the `LANYARD_EVENTS` stream, oldest first.
async fn stream_events(client: &async_nats::Client) -> Vec<serde_json::Value> {
    use base64::Engine;
    let request = |subject: String, body: serde_json::Value| async move {
        let reply = client
            .request(subject, body.to_string().into())
            .await
            .ok()?;
        serde_json::from_slice::<serde_json::Value>(&reply.payload).ok()
    };
    let Some(info) = request("$JS.API.STREAM.INFO.LANYARD_EVENTS".into(), json!({})).await else {
        return Vec::new();
    };
    let last = info["state"]["last_seq"].as_u64().unwrap_or(0);
    let mut events = Vec::new();
    for seq in 1..=last {
        let Some(got) = request(
            "$JS.API.STREAM.MSG.GET.LANYARD_EVENTS".into(),
            json!({ "seq": seq }),
        )
        .await
        else {
            continue;
        };
        if let Some(data) = got["message"]["data"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            let subject = got["message"]["subject"].as_str().unwrap();
            lanyard_tests::harness::assert_proto_event(subject, &bytes);
            events.push(serde_json::from_slice(&bytes).unwrap());
        }
    }
    events
}

/// Writes a private CA, a server certificate for 127.0.0.1 and a client certificate.
fn tls_files(dir: &std::path::Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, sans) in [
        ("server", vec!["127.0.0.1".to_owned()]),
        ("client", vec!["lanyard".to_owned()]),
    ] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

#[tokio::test]
async fn mutual_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    tls_files(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let nats = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &path("server.pem"),
        "--tlskey",
        &path("server-key.pem"),
        "--tlsverify",
        "--tlscacert",
        &path("ca.pem"),
    ])
    .unwrap();
    let client = ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(dir.path().join("ca.pem"))
        .add_client_certificate(
            dir.path().join("client.pem"),
            dir.path().join("client-key.pem"),
        );
    let tls = format!(
        "[nats.tls]\nrequired = true\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n",
        path("ca.pem"),
        path("client.pem"),
        path("client-key.pem")
    );
    let t = TestDaemon::start_on(nats, client, |c| {
        let at = c.find("[[providers]]").unwrap();
        c.insert_str(at, &tls);
    })
    .await;
    t.full_login(json!({ "provider": "oidc" })).await.ok();
}

#[tokio::test]
async fn creds_file_in_operator_mode() {
    use nats_jwt::{KeyPair, Token};
    let operator = KeyPair::new_operator();
    let account = KeyPair::new_account();
    let account_jwt = Token::new_account(account.public_key())
        .name("LANYARD")
        .sign(&operator);
    let creds = |name: &str| {
        let user = KeyPair::new_user();
        let jwt = Token::new_user(account.public_key(), user.public_key())
            .name(name)
            .sign(&account);
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let server_conf = dir.path().join("nats.conf");
    std::fs::write(
        &server_conf,
        format!(
            "trusted_keys: [\"{}\"]\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{account_jwt}\"\n}}\n",
            operator.public_key(),
            account.public_key()
        ),
    )
    .unwrap();
    let daemon_creds = dir.path().join("lanyard.creds");
    std::fs::write(&daemon_creds, creds("lanyard")).unwrap();
    let client_creds = dir.path().join("client.creds");
    std::fs::write(&client_creds, creds("client")).unwrap();
    // Operator mode on its own: JetStream would need the account's JWT to grant it.
    let nats = NatsServer::start_plain(&["-c", server_conf.to_str().unwrap()]).unwrap();
    let client = ConnectOptions::with_credentials_file(&client_creds)
        .await
        .unwrap();
    let keys = format!("creds_file = \"{}\"\n", daemon_creds.display());
    let t = TestDaemon::start_on(nats, client, |c| {
        *c = c.replace("store = \"jetstream\"", "");
        with_nats_keys(c, &keys);
    })
    .await;
    t.full_login(json!({ "provider": "oidc" })).await.ok();
}
