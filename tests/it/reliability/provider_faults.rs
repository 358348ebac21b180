//! Faults of plugins and providers: hangs, panics, garbage, slowness, failures that open the circuit, and a connect that hangs; each is cut off in time and others keep serving.

use std::time::Duration;

use bytes::Bytes;
use lanyard_tests::harness::{CLIENT_ID, CLIENT_SECRET};
use lanyard_tests::{patient_request, Approved, TestDaemon, PATIENCE};
use serde_json::{json, Value};

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
    let mut steady = Vec::new();
    for _ in 0..4 {
        steady.push(t.begin(login("steady")).await);
    }
    let mut brief = Vec::new();
    for _ in 0..3 {
        brief.push(t.begin(login("brief")).await);
    }
    t.idp.set(|k| k.token_status = Some(503));
    let callback = |login: Approved| {
        let t = &t;
        async move {
            t.request("callback", login.callback())
                .await
                .code()
                .to_owned()
        }
    };
    let before = t.idp.token_requests();
    for login in steady.drain(..3) {
        assert_eq!(callback(login).await, "provider_unavailable");
    }
    assert_eq!(
        t.idp.token_requests() - before,
        3,
        "three attempts reached the provider"
    );
    // Open: refused at once, the provider untouched; new logins are refused too.
    assert_eq!(callback(steady.remove(0)).await, "provider_unavailable");
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
    for login in brief {
        assert_eq!(callback(login).await, "provider_unavailable");
    }
    // After the open period the provider is back: one probe goes through and closes it.
    t.idp.set(|k| k.token_status = None);
    let deadline = std::time::Instant::now() + PATIENCE;
    while health(&t, "brief").await.1 != "half_open" {
        assert!(std::time::Instant::now() < deadline, "no probe ever due");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let probe = t.begin(login("brief")).await;
    assert_eq!(health(&t, "brief").await.1, "half_open");
    t.request("callback", probe.callback()).await.ok();
    t.full_login(login("brief")).await.ok();
    assert_eq!(health(&t, "brief").await, ("ok".into(), "closed".into(), 0));
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
    let patient = t.begin(json!({ "provider": "patient" })).await;
    let login = t.begin(json!({ "provider": "oidc" })).await;
    let tokens = t.idp.arrivals("/token");
    let gate = t.idp.hold("/token");
    let client = t.client.clone();
    let patient = tokio::spawn(async move {
        let body = Bytes::from(patient.callback().to_string());
        let reply = patient_request(&client, "lanyard.v1.callback", body)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&reply.payload).unwrap()
    });
    t.idp.await_arrivals("/token", tokens + 1).await;
    let reply = t.request("callback", login.callback()).await;
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
///
/// Long because the faults share one daemon and one fake provider, and the point is that they
/// happen at once.
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
    let login = t.begin(oidc()).await;
    let jwks = t
        .request("callback", login.callback())
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
    let login = t.begin(json!({ "provider": "patient" })).await;
    let client = t.client.clone();
    let slow = tokio::spawn(async move {
        let body = Bytes::from(login.callback().to_string());
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
    let login = t.begin(oidc()).await;
    let cut = t.request("callback", login.callback()).await;
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
