//! Faults survived: graceful stop, overload. (RELIABILITY.md lists what each test proves.)

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lanyard_tests::harness::{CLIENT_ID, CLIENT_SECRET};
use lanyard_tests::{patient_request, TestDaemon, PATIENCE};
use serde_json::{json, Value};

/// The `oidc` instance's `allowed_algs` line, and the same with an HTTP timeout (two minutes)
/// that no request held at the provider while a test looks reaches.
const PATIENT_ALGS: (&str, &str) = (
    "allowed_algs = [\"RS256\", \"ES256\"]",
    "allowed_algs = [\"RS256\", \"ES256\"]\nhttp_timeout_ms = 120000",
);

/// SIGTERM's path (`Daemon::shutdown`) stops taking requests but lets a callback already
/// taken finish: its caller hears success, and the login is on disk for the next daemon.
#[tokio::test]
async fn a_callback_in_flight_at_shutdown_is_answered_and_durable() {
    // A grace period no loaded machine runs out of, and a provider timeout the held token
    // request does not reach: the callback is answered, with success, within both.
    let mut t = TestDaemon::start_with(|config| {
        *config = config.replacen("data_dir", "shutdown_grace_secs = 60\ndata_dir", 1);
        *config = config.replacen(PATIENT_ALGS.0, PATIENT_ALGS.1, 1);
    })
    .await;
    let (_, query) = t.begin(json!({ "provider": "oidc" })).await;
    let tokens = t.idp.arrivals("/token");
    let gate = t.idp.hold("/token");
    let client = t.client.clone();
    let in_flight = tokio::spawn(async move {
        patient_request(
            &client,
            "lanyard.v1.callback",
            Bytes::from(json!({ "query": query }).to_string()),
        )
        .await
    });
    // The daemon has taken the callback: its token request waits at the provider.
    t.idp.await_arrivals("/token", tokens + 1).await;
    // The provider answers only once the daemon has stopped taking requests, so the callback
    // is in flight when the shutdown begins, however slow the machine.
    let opener = tokio::spawn(open_once_stopped(t.client.clone(), gate));
    t.restart().await;
    opener.await.unwrap();
    let reply = in_flight.await.unwrap().expect("the caller got an answer");
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(body.get("error").is_none(), "answered with success: {body}");
    let user = t
        .request("user.get", json!({ "user_id": body["user"]["id"] }))
        .await;
    assert_eq!(user.ok()["user"]["id"], body["user"]["id"], "durable");
}

/// Opens `gate` once no daemon answers: the server says nobody is subscribed any more. A
/// probe that reached the daemon as it left may go unanswered; it only means asking again,
/// so it waits briefly.
async fn open_once_stopped(client: async_nats::Client, gate: lanyard_tests::Gate) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let probe = async_nats::Request::new()
            .payload(Bytes::from("{}"))
            .timeout(Some(Duration::from_millis(500)));
        let probe = client.send_request("lanyard.v1.jwks", probe).await;
        if probe.is_err_and(|e| e.kind() == async_nats::RequestErrorKind::NoResponders) {
            gate.open();
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never stopped taking requests"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Beyond `max_in_flight` the daemon answers `rate_limited` at once instead of queueing, and
/// serves normally again when the load passes.
#[tokio::test]
async fn beyond_max_in_flight_requests_are_refused_fast() {
    let t = TestDaemon::start_with(|config| {
        *config = config.replacen("data_dir", "max_in_flight = 4\ndata_dir", 1);
        // The held token requests must outlast however long the test takes to look.
        *config = config.replacen(PATIENT_ALGS.0, PATIENT_ALGS.1, 1);
    })
    .await;
    let mut queries = Vec::new();
    for _ in 0..8 {
        queries.push(t.begin(json!({ "provider": "oidc" })).await.1);
    }
    // Eight callbacks; the provider answers no token request until the test says so, so the
    // four that get a slot hold it for as long as the test looks.
    let gate = t.idp.hold("/token");
    let mut calls: futures::stream::FuturesUnordered<_> = queries
        .into_iter()
        .map(|query| {
            let client = t.client.clone();
            async move {
                let body = Bytes::from(json!({ "query": query }).to_string());
                let reply = patient_request(&client, "lanyard.v1.callback", body)
                    .await
                    .expect("every callback is answered");
                serde_json::from_slice::<Value>(&reply.payload).unwrap()
            }
        })
        .collect();
    // The other four are answered while every slot is still taken: refused, not queued (a
    // queued one would wait for a slot, and no slot frees before the gate opens).
    let mut refused = Vec::new();
    while refused.len() < 4 {
        refused.push(calls.next().await.unwrap());
    }
    assert!(
        refused.iter().all(|b| b["error"]["code"] == "rate_limited"),
        "{refused:?}"
    );
    gate.open();
    let served: Vec<Value> = calls.collect().await;
    assert!(
        served.len() == 4 && served.iter().all(|b| b.get("error").is_none()),
        "{served:?}"
    );
    let reply = t.request("login", json!({ "provider": "oidc" })).await;
    reply.ok();
}

/// A plugin that hangs: the call is bounded by `plugin_timeout_ms` and answered
/// `provider_unavailable`; the instance is restarted and serves its next login, and other
/// instances never notice. An instance with a longer `plugin_timeout_ms` waits the same hang
/// out: the bound is the instance's own.
#[tokio::test]
async fn a_hanging_plugin_is_cut_off_and_others_keep_serving() {
    let t = TestDaemon::start_with(|config| {
        // Short against the fixture's 3 s hang, long against a plugin call on a busy machine.
        *config = config.replacen(
            "redirect_uris = [\"http://app.test/callback/panicky\"]",
            "redirect_uris = [\"http://app.test/callback/panicky\"]\nplugin_timeout_ms = 1000",
            1,
        );
        let issuer = config
            .lines()
            .find_map(|l| l.strip_prefix("issuer = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap()
            .to_owned();
        config.push_str(&format!(
            "\n[[providers]]\nid = \"patient\"\nkind = \"panicky\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret = \"{CLIENT_SECRET}\"\nredirect_uris = [\"http://app.test/callback/patient\"]\n\
             issuer = \"{issuer}\"\nplugin_timeout_ms = 60000\n"
        ));
    })
    .await;
    let hang = |provider: &str, user: &str| json!({ "provider": provider, "login_hint": user });
    let started = std::time::Instant::now();
    // The plugin returns a good profile after its hang: only a cut-off call fails.
    let hung = t.full_login(hang("panicky", "hang@example.test")).await;
    assert_eq!(hung.code(), "provider_unavailable");
    // The stuck call shows in the instance's health until its thread comes back, 3 s after it
    // started (after `started`). A reply that arrived later than that says nothing.
    let panicky = health(&t, "panicky").await;
    if started.elapsed() < Duration::from_secs(3) {
        assert_eq!(panicky, ("degraded".into(), "closed".into(), 1));
    } else {
        eprintln!("the health reply came after the plugin's hang: its stuck call went unchecked");
    }
    assert_eq!(health(&t, "oidc").await.0, "ok");
    // Meanwhile and after, the same instance and the others serve.
    t.full_login(hang("panicky", "calm@example.test"))
        .await
        .ok();
    t.full_login(json!({ "provider": "oidc" })).await.ok();
    let patient = t.full_login(hang("patient", "hang-patient@example.test"));
    let healthy_again = async {
        let deadline = std::time::Instant::now() + PATIENCE;
        while health(&t, "panicky").await.0 != "ok" {
            assert!(std::time::Instant::now() < deadline, "never healthy again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (patient, ()) = tokio::join!(patient, healthy_again);
    patient.ok();
}

/// An instance's `status`, `circuit` and `stuck_plugin_calls` in `admin.status`.
async fn health(t: &TestDaemon, id: &str) -> (String, String, u64) {
    let status = t.request("admin.status", json!({})).await;
    let providers = status.ok()["providers"].as_array().unwrap().clone();
    let instance = providers
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{id} in {providers:?}"));
    (
        instance["status"].as_str().unwrap().to_owned(),
        instance["circuit"].as_str().unwrap().to_owned(),
        instance["stuck_plugin_calls"].as_u64().unwrap(),
    )
}

/// A provider that keeps failing opens its instance's circuit: after `circuit_failures`
/// failures the daemon answers `provider_unavailable` without calling the provider at all,
/// and after `circuit_open_secs` one request probes it and closes the circuit. Two instances
/// of the same provider show the two halves: `steady`'s circuit stays open longer than the
/// test looks at it, `brief`'s only a second, then the test waits for its probe to be due.
#[tokio::test]
async fn repeated_provider_failures_open_the_circuit_and_a_probe_closes_it() {
    let instance = |id: &str, open_secs: u64, issuer: &str| {
        format!(
            "\n[[providers]]\nid = \"{id}\"\nkind = \"oidc\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret = \"{CLIENT_SECRET}\"\nredirect_uris = [\"http://app.test/callback/{id}\"]\n\
             issuer = \"{issuer}\"\nallowed_algs = [\"RS256\", \"ES256\"]\n\
             circuit_failures = 3\ncircuit_open_secs = {open_secs}\n"
        )
    };
    let t = TestDaemon::start_plus(|issuer| {
        instance("steady", 3600, issuer) + &instance("brief", 1, issuer)
    })
    .await;
    let login = |id: &str| json!({ "provider": id });
    let mut queries = Vec::new();
    for _ in 0..4 {
        queries.push(t.begin(login("steady")).await.1);
    }
    let mut brief = Vec::new();
    for _ in 0..3 {
        brief.push(t.begin(login("brief")).await.1);
    }
    t.idp.set(|k| k.token_status = Some(503));
    let callback = |query: String| {
        let t = &t;
        async move {
            t.request("callback", json!({ "query": query }))
                .await
                .code()
                .to_owned()
        }
    };
    let before = t.idp.token_requests();
    for query in queries.drain(..3) {
        assert_eq!(callback(query).await, "provider_unavailable");
    }
    assert_eq!(
        t.idp.token_requests() - before,
        3,
        "three attempts reached the provider"
    );
    // Open: refused at once, the provider untouched; new logins are refused too.
    assert_eq!(callback(queries.remove(0)).await, "provider_unavailable");
    assert_eq!(
        t.idp.token_requests() - before,
        3,
        "the open circuit did not call it"
    );
    assert_eq!(
        t.request("login", login("steady")).await.code(),
        "provider_unavailable"
    );
    // Other instances are not affected.
    t.request("login", json!({ "provider": "github" }))
        .await
        .ok();
    assert_eq!(
        health(&t, "steady").await,
        ("unavailable".into(), "open".into(), 0)
    );
    assert_eq!(health(&t, "github").await.0, "ok");

    // `brief` fails as often, and its circuit opens for a second.
    for query in brief {
        assert_eq!(callback(query).await, "provider_unavailable");
    }
    // After the open period the provider is back: one probe goes through and closes it.
    t.idp.set(|k| k.token_status = None);
    let deadline = std::time::Instant::now() + PATIENCE;
    while health(&t, "brief").await.1 != "half_open" {
        assert!(std::time::Instant::now() < deadline, "no probe ever due");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, query) = t.begin(login("brief")).await;
    assert_eq!(health(&t, "brief").await.1, "half_open");
    t.request("callback", json!({ "query": query })).await.ok();
    t.full_login(login("brief")).await.ok();
    assert_eq!(health(&t, "brief").await, ("ok".into(), "closed".into(), 0));
}

/// Code injection: an attacker's code (issued for the attacker's login, so bound to the
/// attacker's PKCE verifier) replayed with the victim's state. The daemon sends the victim's
/// verifier, the provider refuses the exchange, and no session comes of it.
#[tokio::test]
async fn a_code_from_another_login_is_refused() {
    let t = TestDaemon::start().await;
    let (_, attacker) = t
        .begin(json!({ "provider": "oidc", "login_hint": "mallory@example.test" }))
        .await;
    let (_, victim) = t
        .begin(json!({ "provider": "oidc", "login_hint": "victim@example.test" }))
        .await;
    let param = |query: &str, name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let reply = t
        .request(
            "callback",
            json!({ "state": param(&victim, "state"), "code": param(&attacker, "code") }),
        )
        .await;
    assert_eq!(reply.code(), "provider_error", "{}", reply.body);
    // The victim's state is spent; the attacker's own code cannot be used with it either.
    let again = t
        .request(
            "callback",
            json!({ "state": param(&victim, "state"), "code": param(&victim, "code") }),
        )
        .await;
    assert_eq!(again.code(), "invalid_state");
}

/// After logins, a token read, a session refresh and a token refresh, with every log level
/// on: no client secret, provider token, session token or master key appears in the log,
/// nor in plaintext anywhere in the data directory.
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
        let done = request("lanyard.v1.callback", json!({ "query": query }), None).await;
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

/// Per-provider and per-caller rate limits: beyond them `rate_limited`, at once; other
/// providers and callers are not affected.
#[tokio::test]
async fn provider_and_caller_rate_limits() {
    let t = TestDaemon::start_with(|config| {
        *config = config.replacen(
            "allowed_algs = [\"RS256\", \"ES256\"]",
            "allowed_algs = [\"RS256\", \"ES256\"]\nrate_limit_per_sec = 2",
            1,
        );
        config.push_str(
            "\n[[callers]]\nname = \"chatty\"\ntoken = \"chatty-token-0123456789\"\nrate_limit_per_sec = 3\n\n[[callers]]\nname = \"calm\"\ntoken = \"calm-token-0123456789\"\n",
        );
    })
    .await;
    until_limited(2, || t.request("login", json!({ "provider": "oidc" }))).await;
    t.request("login", json!({ "provider": "github" }))
        .await
        .ok();

    let as_caller = |token: &'static str| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Lanyard-Caller-Token", token);
        headers
    };
    until_limited(3, || {
        t.request_with_headers(
            "jwks",
            as_caller("chatty-token-0123456789"),
            Bytes::from("{}"),
        )
    })
    .await;
    for _ in 0..8 {
        t.request_with_headers(
            "jwks",
            as_caller("calm-token-0123456789"),
            Bytes::from("{}"),
        )
        .await
        .ok();
    }
}

/// Sends `request`s, ten at a time, until one is answered `rate_limited`, under a limit of
/// `per_sec` a second (bursts up to as many) that nothing has used yet: the burst gets
/// through, and never more than the limit allows in the time taken so far. How long that is
/// depends on the machine, so the bound grows with it; a limit that is not applied soon lets
/// more through than any time taken allows.
async fn until_limited<F>(per_sec: u64, request: impl Fn() -> F)
where
    F: std::future::Future<Output = lanyard_tests::Reply>,
{
    let started = std::time::Instant::now();
    let mut codes: Vec<String> = Vec::new();
    while !codes.iter().any(|c| c == "rate_limited") {
        assert!(
            started.elapsed() < PATIENCE,
            "never rate_limited: {codes:?}"
        );
        let batch = futures::future::join_all((0..10).map(|_| request())).await;
        codes.extend(batch.iter().map(|reply| {
            reply.body["error"]["code"]
                .as_str()
                .unwrap_or("ok")
                .to_owned()
        }));
        let ok = codes.iter().filter(|c| *c == "ok").count() as u64;
        let allowed = per_sec + per_sec * started.elapsed().as_secs().saturating_add(1);
        assert!(
            (per_sec..=allowed).contains(&ok),
            "{ok} got through, {per_sec} to {allowed} allowed: {codes:?}"
        );
    }
    assert!(
        codes.iter().all(|c| c == "ok" || c == "rate_limited"),
        "{codes:?}"
    );
}

/// An instance's own HTTP timeout bounds a slow provider: `provider_unavailable` while the
/// provider still has not answered. The provider answers nobody until the test lets it, and
/// an instance of the same provider with a long timeout, whose callback started first, is
/// still waiting then: the bound is the instance's own, not the daemon's default.
#[tokio::test]
async fn a_slow_provider_is_cut_off_by_the_instances_timeout() {
    let t = TestDaemon::start_with(|config| {
        *config = config.replacen(
            "allowed_algs = [\"RS256\", \"ES256\"]",
            "allowed_algs = [\"RS256\", \"ES256\"]\nhttp_timeout_ms = 3000",
            1,
        );
        let issuer = config
            .lines()
            .find_map(|l| l.strip_prefix("issuer = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap()
            .to_owned();
        config.push_str(&format!(
            "\n[[providers]]\nid = \"patient\"\nkind = \"oidc\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret = \"{CLIENT_SECRET}\"\nredirect_uris = [\"http://app.test/callback/patient\"]\n\
             issuer = \"{issuer}\"\nallowed_algs = [\"RS256\", \"ES256\"]\nhttp_timeout_ms = 120000\n"
        ));
    })
    .await;
    t.idp
        .set_user(lanyard_tests::TestUser::from_email("patient@example.test"));
    let (_, patient) = t.begin(json!({ "provider": "patient" })).await;
    let (_, query) = t.begin(json!({ "provider": "oidc" })).await;
    let tokens = t.idp.arrivals("/token");
    let gate = t.idp.hold("/token");
    let client = t.client.clone();
    let patient = tokio::spawn(async move {
        let body = Bytes::from(json!({ "query": patient }).to_string());
        let reply = patient_request(&client, "lanyard.v1.callback", body)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&reply.payload).unwrap()
    });
    t.idp.await_arrivals("/token", tokens + 1).await;
    let reply = t.request("callback", json!({ "query": query })).await;
    assert_eq!(reply.code(), "provider_unavailable");
    // Had both instances had the same bound, the patient one, started first, would have
    // been cut off first.
    gate.open();
    let patient = patient.await.unwrap();
    assert!(patient.get("error").is_none(), "{patient}");
}

/// Provider faults, each answered with its documented code within the instance's time:
/// garbage where JSON belongs (discovery, token, JWKS, a profile API) and a JWKS that does not
/// answer. One instance's slow provider does not slow another's logins.
#[tokio::test]
async fn provider_faults_get_their_codes_in_time_and_do_not_slow_others() {
    let t = TestDaemon::start_with(|config| {
        *config = config.replacen(
            "allowed_algs = [\"RS256\", \"ES256\"]",
            "allowed_algs = [\"RS256\", \"ES256\"]\nhttp_timeout_ms = 3000",
            1,
        );
        let issuer = config
            .lines()
            .find_map(|l| l.strip_prefix("issuer = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap()
            .to_owned();
        // The slow provider's instance in the second half: it waits as long as it takes.
        config.push_str(&format!(
            "\n[[providers]]\nid = \"patient\"\nkind = \"oidc\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret = \"{CLIENT_SECRET}\"\nredirect_uris = [\"http://app.test/callback/patient\"]\n\
             issuer = \"{issuer}\"\nallowed_algs = [\"RS256\", \"ES256\"]\nhttp_timeout_ms = 120000\n"
        ));
    })
    .await;
    let oidc = || json!({ "provider": "oidc" });
    let garbage = |path: &str| {
        let path = path.to_owned();
        t.idp.set(move |k| k.garbage_paths = [path].into());
    };
    // Discovery (the first login needs it).
    garbage("/.well-known/openid-configuration");
    let discovery = t.request("login", oidc()).await.code().to_owned();
    garbage("/jwks");
    let (_, query) = t.begin(oidc()).await;
    let jwks = t
        .request("callback", json!({ "query": query }))
        .await
        .code()
        .to_owned();
    garbage("/token");
    let token = t.full_login(oidc()).await.code().to_owned();
    garbage("/api/user");
    let profile = t
        .full_login(json!({ "provider": "github" }))
        .await
        .code()
        .to_owned();
    t.idp.set(|k| k.garbage_paths.clear());
    assert_eq!(
        [discovery, jwks, token, profile],
        ["provider_error"; 4].map(String::from)
    );

    // A JWKS that answers nobody until the test lets it. Neither instance has it cached (the
    // garbage one was refused; `patient` never asked), so each callback fetches it.
    let jwks = t.idp.arrivals("/jwks");
    let gate = t.idp.hold("/jwks");
    t.idp
        .set_user(lanyard_tests::TestUser::from_email("patient@example.test"));
    let (_, query) = t.begin(json!({ "provider": "patient" })).await;
    let client = t.client.clone();
    let slow = tokio::spawn(async move {
        let body = Bytes::from(json!({ "query": query }).to_string());
        let reply = patient_request(&client, "lanyard.v1.callback", body)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&reply.payload).unwrap()
    });
    t.idp.await_arrivals("/jwks", jwks + 1).await;
    // Meanwhile another instance logs in, and is done while the slow one still waits (it
    // cannot be done before the gate opens).
    t.idp
        .set_user(lanyard_tests::TestUser::from_email("other@example.test"));
    t.full_login(json!({ "provider": "github" })).await.ok();
    assert!(
        !slow.is_finished(),
        "the other instance's login finished first"
    );
    // The instance with a 3 s timeout does not wait for the JWKS: it is answered while the
    // JWKS still has not.
    let (_, query) = t.begin(oidc()).await;
    let cut = t.request("callback", json!({ "query": query })).await;
    assert_eq!(cut.code(), "provider_unavailable");
    gate.open();
    let slow = slow.await.unwrap();
    assert!(slow.get("error").is_none(), "{slow}");
    // Back to normal, the instance serves (another user: the one above now exists).
    t.idp
        .set_user(lanyard_tests::TestUser::from_email("after@example.test"));
    t.full_login(oidc()).await.ok();
}

/// A plugin that returns garbage: an email that is not one is `provider_error`; a huge name
/// is cut, a `javascript:` picture and over-long or surplus groups are dropped, and the
/// instance serves on.
#[tokio::test]
async fn a_plugin_returning_garbage_is_bounded_or_refused() {
    let t = TestDaemon::start().await;
    let login = |hint: &str| json!({ "provider": "panicky", "login_hint": hint });
    let bad = t.full_login(login("bademail@example.test")).await;
    assert_eq!(bad.code(), "provider_error");
    let junk = t.full_login(login("junk@example.test")).await;
    let body = junk.ok();
    let name = body["user"]["name"].as_str().unwrap();
    assert!(name.len() <= 256 && name.starts_with("NNN"), "{name}");
    assert!(body["user"]["picture"].is_null(), "{}", body["user"]);
    let groups = body["identity"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 10_000);
    assert!(groups.iter().all(|g| g.as_str().unwrap().len() <= 1024));
    let user = t
        .request("user.get", json!({ "user_id": body["user"]["id"] }))
        .await;
    assert_eq!(user.ok()["user"]["name"], name);
    t.full_login(login("calm@example.test")).await.ok();
}

/// A provider whose host accepts no connections (its listen queue is full, so the SYN goes
/// unanswered): the instance's `http_connect_timeout_ms` cuts the connect off. Another
/// instance of that provider, whose login was sent first, waits for the connect as long as
/// the system lets it (reqwest's 30 s TCP user timeout): the first answer is the cut-off
/// one's. (Had neither instance its own connect timeout, the one asked first would answer
/// first.)
#[tokio::test]
async fn a_connect_that_hangs_is_cut_off_by_the_connect_timeout() {
    // A listener that never accepts, its queue filled: further connects hang in SYN_SENT.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(200), connect).await {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    let blackhole = |id: &str, connect_ms: u64| {
        format!(
            r#"
[[providers]]
id = "{id}"
kind = "oidc"
client_id = "c"
client_secret = "s"
redirect_uris = ["http://app.test/callback/{id}"]
issuer = "http://{addr}"
http_connect_timeout_ms = {connect_ms}
http_timeout_ms = 600000
"#
        )
    };
    let t =
        TestDaemon::start_plus(|_| blackhole("blackhole", 300) + &blackhole("patient", 600_000))
            .await;
    let login = |id: &str| {
        let body = Bytes::from(json!({ "provider": id }).to_string());
        Box::pin(patient_request(&t.client, "lanyard.v1.login", body))
    };
    // `select` polls its first future first: the patient login is sent, and taken, first.
    let first = futures::future::select(login("patient"), login("blackhole")).await;
    let futures::future::Either::Right((reply, _patient)) = first else {
        panic!("the login without a connect timeout of its own was answered first");
    };
    let reply = reply.expect("answered");
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["error"]["code"], "provider_unavailable", "{body}");
    drop(listener);
}

/// A `lanyard serve` process with its log in a file, for tests of signals.
struct ServeProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl ServeProcess {
    fn start(config: &str, dir: &std::path::Path, name: &str) -> Self {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = std::process::Command::new(lanyard_tests::harness::lanyard_bin())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_remove("LANYARD_CONFIG")
            .env("LANYARD_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the lanyard binary runs (make test builds it)");
        Self { child, log }
    }

    /// Waits until the daemon logs that it serves.
    async fn wait_serving(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.log_text().contains("lanyard is serving") {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the daemon exited: {}",
                self.log_text()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "not serving: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// Waits for the process to exit; the bound only catches a stop that never ends (the
    /// bug this guards against hung for good), it is no timing requirement.
    async fn wait_exit(&mut self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return self.log_text();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not stop: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM and Ctrl-C (SIGINT) end a daemon process whatever NATS is doing: up, already
/// gone (the client reconnecting), or going away during the stop with a callback in flight.
/// Events that cannot be published are counted in the log, and the login that produced
/// them is durable: the next daemon on the same store knows its user.
#[tokio::test]
async fn a_signal_stops_the_daemon_whatever_nats_is_doing() {
    use lanyard_tests::{harness, FakeIdp, NatsServer, TestUser};
    // On the JetStream store NATS is the store too; this is about the connection.
    if lanyard_tests::nats::jetstream_under_test() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let idp = FakeIdp::start(harness::CLIENT_ID, harness::CLIENT_SECRET)
        .await
        .unwrap();
    let mut nats = NatsServer::start().unwrap();
    let config = format!(
        r#"data_dir = "{data}"
shutdown_grace_secs = 20

[nats]
url = "{url}"

[[providers]]
id = "oidc"
kind = "oidc"
client_id = "{id}"
client_secret = "{secret}"
redirect_uris = ["http://app.test/callback"]
issuer = "{issuer}"
allowed_algs = ["RS256", "ES256"]
"#,
        data = dir.path().join("data").display(),
        url = nats.url(),
        id = harness::CLIENT_ID,
        secret = harness::CLIENT_SECRET,
        issuer = idp.issuer(),
    );
    let connect = |url: String| async move {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .request_timeout(Some(PATIENCE))
            .connect(url)
            .await
            .unwrap()
    };
    // A callback that is in the daemon's hands: its token request reached the provider,
    // which holds it until the returned gate opens (a fixed delay would only make it likely
    // that the callback is still in flight at the next step). (The task is only aborted at
    // the end: its answer, if any, is not what these steps look at.)
    let in_flight = |client: async_nats::Client, idp: &FakeIdp, query: String| {
        let idp = idp.clone();
        async move {
            let tokens_before = idp.arrivals("/token");
            let gate = idp.hold("/token");
            let callback = tokio::spawn(async move {
                let body = json!({ "query": query }).to_string();
                let _ = client.request("lanyard.v1.callback", body.into()).await;
            });
            idp.await_arrivals("/token", tokens_before + 1).await;
            (callback, gate)
        }
    };
    let begin = |client: async_nats::Client, idp: &FakeIdp| {
        let idp = idp.clone();
        async move {
            let reply = client
                .request(
                    "lanyard.v1.login",
                    json!({"provider": "oidc"}).to_string().into(),
                )
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&reply.payload).unwrap();
            idp.approve(body["authorization_url"].as_str().unwrap())
                .await
                .unwrap()
        }
    };

    // NATS up, Ctrl-C.
    let mut daemon = ServeProcess::start(&config, dir.path(), "up");
    daemon.wait_serving().await;
    daemon.signal("INT");
    let log = daemon.wait_exit().await;
    assert!(log.contains("stopped"), "{log}");

    // NATS gone with a login's events still to publish: a callback in flight when NATS
    // stops completes (the provider answers its token request once the daemon knows NATS is
    // gone, so the events wait in its queue), then SIGTERM.
    let mut daemon = ServeProcess::start(&config, dir.path(), "down");
    daemon.wait_serving().await;
    let client = connect(nats.url()).await;
    idp.set_user(TestUser::from_email("stopping@example.com"));
    let query = begin(client.clone(), &idp).await;
    let (callback, gate) = in_flight(client.clone(), &idp, query).await;
    // The stop lets the callback finish within the grace period; its events cannot go out.
    nats.stop();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !daemon.log_text().contains("disconnected") {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never noticed: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.open();
    daemon.signal("TERM");
    let log = daemon.wait_exit().await;
    callback.abort();
    assert!(
        log.contains("events could not all be published") && log.contains("lost=3"),
        "the three events of the login are counted as lost: {log}"
    );

    // NATS back: a daemon on the same store knows the user that login created.
    nats.restart(&[]).unwrap();
    let mut daemon = ServeProcess::start(&config, dir.path(), "after");
    daemon.wait_serving().await;
    let client = connect(nats.url()).await;
    let query = begin(client.clone(), &idp).await;
    let reply = client
        .request(
            "lanyard.v1.callback",
            json!({"query": query}).to_string().into(),
        )
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["new_user"], false, "the login was durable: {body}");

    // NATS going away during the stop, with a callback in flight.
    let query = begin(client.clone(), &idp).await;
    let (callback, gate) = in_flight(client, &idp, query).await;
    daemon.signal("TERM");
    nats.stop();
    gate.open();
    daemon.wait_exit().await;
    callback.abort();
}
