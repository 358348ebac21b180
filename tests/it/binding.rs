//! A login is bound to the browser that started it: the `login` reply's `binding` comes back
//! with the callback (the service keeps it in an HttpOnly cookie), and a callback without it,
//! or with another one, is `invalid_state` and spends the state. This is what refuses login
//! CSRF (RFC 6749 §10.12, RFC 9700 §4.7).

use lanyard_tests::harness::{next_event, CLIENT_ID, CLIENT_SECRET};
use lanyard_tests::{NatsServer, ServeProcess, TestDaemon, TestUser};
use serde_json::json;

/// A binding of the right shape that no login handed out.
const FORGED_BINDING: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// The attack: the attacker starts a login, signs in at the provider with their own account
/// and stops before the redirect, then gets the victim's browser to open that callback link.
/// The victim's browser brings either the binding of a login it started itself or none at
/// all; both are refused before any code reaches the provider, the attacker's state is spent
/// (the attacker cannot finish it from their own browser either), and no account is made or
/// signed in for it: the victim's own login, finished afterwards, is the first user created.
#[tokio::test]
async fn a_callback_link_planted_in_another_browser_is_refused() {
    let t = TestDaemon::start().await;
    let mut created = t
        .client
        .subscribe("lanyard.events.user.created")
        .await
        .unwrap();
    t.client.flush().await.unwrap();
    let mallory = json!({ "provider": "oidc", "login_hint": "mallory@example.test" });
    let victim = t
        .begin(json!({ "provider": "oidc", "login_hint": "victim@example.test" }))
        .await;
    let tokens = t.idp.token_requests();

    for victims_cookie in [Some(victim.binding()), None] {
        let attacker = t.begin(mallory.clone()).await;
        // What the victim's browser sends to the service's callback URL, and the service on
        // to Lanyard: the attacker's query, and whatever binding cookie the browser has.
        let mut planted = json!({ "query": attacker.query });
        if let Some(binding) = victims_cookie {
            planted["binding"] = json!(binding);
        }
        let reply = t.request("callback", planted).await;
        assert_eq!(reply.code(), "invalid_state", "cookie {victims_cookie:?}");
        let own = t.request("callback", attacker.callback()).await;
        assert_eq!(
            own.code(),
            "invalid_state",
            "the refused callback spent the attacker's state"
        );
    }
    assert_eq!(
        t.idp.token_requests(),
        tokens,
        "no refused callback reached the provider's token endpoint"
    );

    // The victim's own login is untouched by all this, and is the only account made.
    let own = t.request("callback", victim.callback()).await;
    assert_eq!(own.ok()["user"]["email"], "victim@example.test");
    let (_, event) = next_event(&mut created).await;
    assert_eq!(event["user_id"], own.ok()["user"]["id"]);
}

/// A callback without the binding, or with a different one, is `invalid_state`, and the state
/// is spent: the right binding afterwards does not revive it.
#[tokio::test]
async fn a_missing_or_different_binding_is_invalid_state_and_spends_the_state() {
    let t = TestDaemon::start().await;
    let login = || json!({ "provider": "oidc" });

    let missing = t.begin(login()).await;
    let reply = t
        .request("callback", json!({ "query": missing.query }))
        .await;
    assert_eq!(reply.code(), "invalid_state");
    let retry = t.request("callback", missing.callback()).await;
    assert_eq!(
        retry.code(),
        "invalid_state",
        "the missing binding spent it"
    );

    for different in [FORGED_BINDING, "", "x"] {
        let approved = t.begin(login()).await;
        let reply = t
            .request(
                "callback",
                approved.callback_with(json!({ "binding": different })),
            )
            .await;
        assert_eq!(reply.code(), "invalid_state", "binding {different:?}");
        let retry = t.request("callback", approved.callback()).await;
        assert_eq!(
            retry.code(),
            "invalid_state",
            "binding {different:?} spent it"
        );
    }

    // The binding is the login's own: one login's binding does not open another's state.
    let first = t.begin(login()).await;
    let second = t.begin(login()).await;
    assert_ne!(first.binding(), second.binding());
    let crossed = first.callback_with(json!({ "binding": second.binding() }));
    assert_eq!(t.request("callback", crossed).await.code(), "invalid_state");
    t.request("callback", second.callback()).await.ok();
}

/// `require_binding = false`, for a migration period: that instance accepts a callback
/// without a binding (from the config file and from an admin's create alike), still refuses a
/// wrong one, and the daemon warns at start-up, naming the instance.
#[tokio::test]
async fn an_instance_may_accept_callbacks_without_a_binding_for_a_migration() {
    let t = TestDaemon::start_plus(|issuer| lenient_instance("lenient", issuer)).await;
    t.request(
        "admin.provider.create",
        json!({
            "id": "lenient-admin",
            "kind": "oidc",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": ["http://app.test/callback/lenient-admin"],
            "issuer": t.idp.issuer(),
            "require_binding": false,
        }),
    )
    .await
    .ok();
    for (n, id) in ["lenient", "lenient-admin"].into_iter().enumerate() {
        t.idp.set_user(TestUser::from_email(&format!(
            "old-service-{n}@example.test"
        )));
        let login = t.begin(json!({ "provider": id })).await;
        let reply = t
            .request("callback", json!({ "query": login.query, "provider": id }))
            .await;
        assert_eq!(reply.ok()["identity"]["provider"], id);
        // A service that does send the binding is served as before.
        t.full_login(json!({ "provider": id })).await.ok();

        let login = t.begin(json!({ "provider": id })).await;
        let wrong = login.callback_with(json!({ "binding": FORGED_BINDING }));
        assert_eq!(
            t.request("callback", wrong).await.code(),
            "invalid_state",
            "{id}: a wrong binding is still refused"
        );
        assert_eq!(
            t.request("callback", login.callback()).await.code(),
            "invalid_state",
            "{id}: and it spent the state"
        );
    }
    // The other instances still require it.
    let strict = t.begin(json!({ "provider": "oidc" })).await;
    let reply = t
        .request("callback", json!({ "query": strict.query }))
        .await;
    assert_eq!(reply.code(), "invalid_state");

    // The warning, read from a daemon process's log.
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = \"{data}\"\n\n[nats]\nurl = \"{url}\"\n{lenient}",
        data = dir.path().join("data").display(),
        url = nats.url(),
        lenient = lenient_instance("lenient-process", &t.idp.issuer()),
    );
    let mut daemon = ServeProcess::start(&config, dir.path(), "lenient");
    daemon.wait_serving().await;
    let log = daemon.log_text();
    assert!(
        log.lines().any(|line| line.contains("lenient-process")
            && line.contains("require_binding = false")
            && line.contains("WARN")),
        "a start-up warning names the instance: {log}"
    );
}

/// A config-file instance `id` at the fake provider that does not require the binding.
fn lenient_instance(id: &str, issuer: &str) -> String {
    format!(
        "\n[[providers]]\nid = \"{id}\"\nkind = \"oidc\"\nclient_id = \"{CLIENT_ID}\"\n\
         client_secret = \"{CLIENT_SECRET}\"\nredirect_uris = [\"http://app.test/callback/{id}\"]\n\
         issuer = \"{issuer}\"\nrequire_binding = false\n"
    )
}

/// The binding is only ever in the login reply: the daemon keeps no binding it handed out,
/// of logins finished or not, in its store.
#[tokio::test]
async fn no_binding_is_kept_in_the_store() {
    let t = TestDaemon::start().await;
    let mut bindings: Vec<String> = Vec::new();
    for _ in 0..3 {
        let login = t.begin(json!({ "provider": "oidc" })).await;
        bindings.push(login.binding().to_owned());
        t.request("callback", login.callback()).await.ok();
    }
    let unfinished = t.begin(json!({ "provider": "oidc" })).await;
    bindings.push(unfinished.binding().to_owned());
    let secrets: Vec<(&str, &[u8])> = bindings
        .iter()
        .map(|b| ("a login's binding", b.as_bytes()))
        .collect();
    let scanned = lanyard_tests::assert_not_on_disk(&t.state_dirs(), &secrets);
    assert!(scanned > 0);
}
