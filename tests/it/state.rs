//! The sealed `state`: a login start writes nothing, the state carries what the callback
//! needs (so a daemon that never saw the login finishes it, across a master-key rotation too),
//! it stays under 512 characters for every accepted login, a changed one is refused, and
//! `return_to` is a relative path unless allow-listed. A state is spent by its first callback
//! (of any number at once), bound to its provider and redirect URI, and expires. Logins
//! pending in the previous version's format still complete.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use lanyard::config::Config;
use lanyard::sessions::now;
use lanyard::store::{new_state, PendingLogin};
use lanyard_tests::harness::{CLIENT_ID, CLIENT_SECRET};
use lanyard_tests::{TestDaemon, TestUser};
use serde_json::{json, Value};

fn oidc_login() -> Value {
    json!({ "provider": "oidc", "return_to": "/dashboard" })
}

fn oidc() -> serde_json::Value {
    json!({ "provider": "oidc" })
}

/// The longest login the protocol accepts: a 64-character provider id, a `return_to` of 192
/// bytes (in one-byte and in two-byte characters) and a `link_session`. Its state is under 512
/// characters and completes the login; one byte more of `return_to` is `bad_request`.
#[tokio::test]
async fn the_longest_login_has_a_state_under_512_characters() {
    let id = format!("{:x<64}", "a-provider-id-as-long-as-config-allows-");
    assert_eq!(id.len(), 64);
    let t = TestDaemon::start_plus(|issuer| {
        format!(
            "\n[[providers]]\nid = \"{id}\"\nkind = \"oidc\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret = \"{CLIENT_SECRET}\"\nissuer = \"{issuer}\"\n\
             redirect_uris = [\"http://app.test/callback/long\", \
             \"https://app.test/a/rather/long/path/for/a/callback/that/a/service/might/use/{id}\"]\n"
        )
    })
    .await;
    let first = t.full_login(oidc()).await.ok().clone();
    let session = first["session"]["access_token"].clone();
    let redirect_uri =
        format!("https://app.test/a/rather/long/path/for/a/callback/that/a/service/might/use/{id}");

    let ascii = format!("/{}", "r".repeat(191));
    let two_byte = format!("/{}a", "é".repeat(95));
    for return_to in [&ascii, &two_byte] {
        assert_eq!(return_to.len(), 192);
        t.idp.set_user(TestUser::from_email(&format!(
            "linked-{}@example.test",
            return_to.chars().count()
        )));
        let login = t
            .begin(json!({
                "provider": id,
                "redirect_uri": redirect_uri,
                "return_to": return_to,
                "link_session": session,
            }))
            .await;
        let state = login.reply["state"].as_str().unwrap();
        assert!(
            state.len() < 512,
            "state of {} characters for return_to {return_to:?}",
            state.len()
        );
        assert_eq!(login.param("state"), state);
        let reply = t
            .request(
                "callback",
                login.callback_with(json!({ "redirect_uri": redirect_uri })),
            )
            .await;
        let body = reply.ok();
        assert_eq!(body["return_to"], return_to.as_str());
        assert_eq!(body["user"]["id"], first["user"]["id"], "linked");
        assert_eq!(body["identity"]["provider"], id.as_str());
    }

    for too_long in [
        format!("/{}", "r".repeat(192)),
        format!("/{}", "é".repeat(96)),
    ] {
        assert_eq!(too_long.len(), 193);
        let reply = t
            .request("login", json!({ "provider": id, "return_to": too_long }))
            .await;
        assert_eq!(reply.code(), "bad_request", "{too_long}");
    }
}

/// Without `allowed_return_to`, `return_to` is a path on the service's own site: absolute
/// URLs and the forms browsers read as another host (`//host`, `/\host`) are `bad_request`.
/// An allow-list admits the absolute URLs it names.
#[tokio::test]
async fn return_to_is_a_relative_path_unless_allow_listed() {
    let t = TestDaemon::start().await;
    for off_site in [
        "https://evil.test/",
        "http://app.test/callback",
        "//evil.test",
        "//evil.test/account",
        "/\\evil.test",
        "\\\\evil.test",
        "evil.test/account",
        "javascript:alert(1)",
    ] {
        let reply = t
            .request(
                "login",
                json!({ "provider": "oidc", "return_to": off_site }),
            )
            .await;
        assert_eq!(reply.code(), "bad_request", "{off_site}");
    }
    for on_site in ["/account?x=1", "/", "/a/b#c"] {
        let reply = t
            .full_login(json!({ "provider": "oidc", "return_to": on_site }))
            .await;
        assert_eq!(reply.ok()["return_to"], on_site);
    }

    let t = TestDaemon::start_with(|config| {
        *config = config.replacen(
            "allowed_algs = [\"RS256\", \"ES256\"]",
            "allowed_algs = [\"RS256\", \"ES256\"]\nallowed_return_to = [\"https://app.test/\"]",
            1,
        );
    })
    .await;
    let reply = t
        .full_login(json!({ "provider": "oidc", "return_to": "https://app.test/account?x=1" }))
        .await;
    assert_eq!(reply.ok()["return_to"], "https://app.test/account?x=1");
    let reply = t
        .request(
            "login",
            json!({ "provider": "oidc", "return_to": "https://evil.test/" }),
        )
        .await;
    assert_eq!(reply.code(), "bad_request");
}

/// A state changed on the way (one character in the middle, cut short, or lengthened) is
/// `invalid_state`, and nothing reaches the provider's token endpoint.
#[tokio::test]
async fn a_changed_state_is_invalid_state() {
    let t = TestDaemon::start().await;
    let login = t.begin(oidc()).await;
    let state = login.param("state");
    let middle = state.len() / 2;
    let flipped = {
        let mut chars: Vec<char> = state.chars().collect();
        chars[middle] = if chars[middle] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    let tokens = t.idp.token_requests();
    for changed in [
        flipped,
        state[..state.len() - 1].to_owned(),
        format!("{state}A"),
        state[..middle].to_owned(),
    ] {
        let reply = t
            .request(
                "callback",
                json!({
                    "state": changed,
                    "code": login.param("code"),
                    "binding": login.binding(),
                }),
            )
            .await;
        assert_eq!(reply.code(), "invalid_state", "{changed}");
    }
    assert_eq!(t.idp.token_requests(), tokens);
}

/// A daemon that never saw the login start (its own, empty store; the same master key)
/// finishes it: the state carries everything, nothing of the login was stored. Once only.
#[tokio::test]
async fn a_daemon_with_an_empty_store_finishes_a_login_another_started() {
    if lanyard_tests::nats::jetstream_under_test() {
        return; // JetStream is one store for every daemon; the cluster tests cover that.
    }
    let mut t = TestDaemon::start().await;
    let login = t
        .begin(json!({ "provider": "oidc", "return_to": "/elsewhere" }))
        .await;
    t.stop().await;
    let key = t.data_dir.path().join(lanyard::crypto::DEV_KEY_FILE);
    let empty = tempfile::tempdir().unwrap();
    t.config = format!(
        "{}\n[vault]\nmaster_key_file = \"{}\"\n",
        t.config.replace(
            &t.data_dir.path().display().to_string(),
            &empty.path().display().to_string()
        ),
        key.display()
    );
    t.restart().await;
    let reply = t.request("callback", login.callback()).await;
    assert_eq!(reply.ok()["return_to"], "/elsewhere");
    assert_eq!(reply.ok()["new_user"], true, "a store that knew nobody");
    let replay = t.request("callback", login.callback()).await;
    assert_eq!(replay.code(), "invalid_state");
}

/// A login started before the master key rotated (the daemon restarted with a new key and
/// the old one in `previous_key_files`) completes after it; logins started after it too.
#[tokio::test]
async fn a_login_started_before_a_master_key_rotation_completes_after_it() {
    let mut t = TestDaemon::start().await;
    let login = t.begin(oidc()).await;
    t.stop().await;
    let keys = tempfile::tempdir().unwrap();
    let old = keys.path().join("old.key");
    let (base, vault) = match t.config.split_once("\n[vault]\n") {
        Some((base, vault)) => (base.to_owned(), Some(vault.to_owned())),
        None => (t.config.clone(), None),
    };
    let old_key = match vault {
        // The JetStream pass configures the key inline.
        Some(vault) => vault
            .lines()
            .find_map(|l| l.strip_prefix("master_key = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap()
            .to_owned(),
        None => {
            std::fs::read_to_string(t.data_dir.path().join(lanyard::crypto::DEV_KEY_FILE)).unwrap()
        }
    };
    std::fs::write(&old, old_key.trim()).unwrap();
    let mut new_key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut new_key).unwrap();
    let new_key = base64::engine::general_purpose::STANDARD.encode(new_key);
    t.config = format!(
        "{base}\n[vault]\nmaster_key = \"{new_key}\"\nprevious_key_files = [\"{}\"]\n",
        old.display()
    );
    t.restart().await;
    t.request("callback", login.callback()).await.ok();
    let replay = t.request("callback", login.callback()).await;
    assert_eq!(replay.code(), "invalid_state");
    let after = t.full_login(oidc()).await.ok().clone();
    assert_eq!(after["new_user"], false);
}

/// Logins the previous version started (a 54-character state, its record in the store's
/// pending logins) still complete after the upgrade, without a binding (they never had
/// one), once, until they expire. An old-format state the store never had is refused.
#[tokio::test]
async fn a_login_pending_in_the_previous_format_completes_until_it_expires() {
    let mut t = TestDaemon::start().await;
    let now = now();
    let verifier = random_text(32);
    let nonce = random_text(16);
    let pending = |expires_at: i64, return_to: &str| PendingLogin {
        provider: "oidc".into(),
        generation: "config".into(),
        redirect_uri: "http://app.test/callback".into(),
        pkce_verifier: Some(verifier.clone()),
        nonce: Some(nonce.clone()),
        scopes: vec!["openid".into(), "email".into(), "profile".into()],
        fetch_groups: false,
        return_to: Some(return_to.into()),
        link_user: None,
        created_at: now,
        expires_at,
        // The previous version wrote no binding.
        binding_hash: None,
    };
    let live = new_state(now + 600, random_bytes());
    let expired = new_state(now - 1, random_bytes());
    assert_eq!(live.len(), 54, "the previous version's state");
    put_pending(
        &mut t,
        &[
            (&live, pending(now + 600, "/legacy")),
            (&expired, pending(now - 1, "/expired")),
        ],
    )
    .await;

    // The browser at the provider with the authorization URL the previous version handed out.
    let authorize = |state: &str| {
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ));
        let mut url = url::Url::parse(&format!("{}/authorize", t.idp.issuer())).unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", CLIENT_ID)
            .append_pair("redirect_uri", "http://app.test/callback")
            .append_pair("scope", "openid email profile")
            .append_pair("state", state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("nonce", &nonce);
        url.to_string()
    };
    let query = t.idp.approve(&authorize(&live)).await.unwrap();
    let reply = t.request("callback", json!({ "query": query })).await;
    let body = reply.ok();
    assert_eq!(body["return_to"], "/legacy");
    assert_eq!(body["user"]["email"], "ada@example.test");
    let replay = t.request("callback", json!({ "query": query })).await;
    assert_eq!(replay.code(), "invalid_state");

    let tokens = t.idp.token_requests();
    let query = t.idp.approve(&authorize(&expired)).await.unwrap();
    let reply = t.request("callback", json!({ "query": query })).await;
    assert_eq!(reply.code(), "invalid_state", "expired");
    let unknown = new_state(now + 600, random_bytes());
    let reply = t
        .request("callback", json!({ "state": unknown, "code": "code-1" }))
        .await;
    assert_eq!(reply.code(), "invalid_state", "never pending");
    assert_eq!(t.idp.token_requests(), tokens);
}

/// Writes pending logins as the previous version did, into the daemon's store (stopped
/// meanwhile: sled allows one process at a time).
async fn put_pending(t: &mut TestDaemon, logins: &[(&String, PendingLogin)]) {
    t.stop().await;
    let config = Config::from_toml(&t.config).unwrap();
    let store = lanyard::open_store_kind(&config, config.store, &t.client)
        .await
        .unwrap();
    for (state, pending) in logins {
        store.put_pending(state, pending).await.unwrap();
    }
    drop(store);
    t.restart().await;
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    bytes
}

fn random_text(n: usize) -> String {
    URL_SAFE_NO_PAD.encode(&random_bytes::<64>()[..n])
}

/// During a rolling upgrade, `stored_login_states = true` starts logins as the previous version
/// did (a 54-character state, the login stored), so that version's daemons can finish them
/// too; this version finishes them once, and only from the browser that started them.
#[tokio::test]
async fn a_login_stored_for_a_rolling_upgrade_finishes_once_and_bound() {
    let t = TestDaemon::start_with(|config| {
        *config = format!("stored_login_states = true\n{config}");
    })
    .await;
    let login = || json!({ "provider": "oidc", "return_to": "/after" });

    let approved = t.begin(login()).await;
    assert_eq!(
        approved.param("state").len(),
        54,
        "the previous version's format, which its daemons read"
    );
    let reply = t.request("callback", approved.callback()).await;
    assert_eq!(reply.ok()["return_to"], "/after");
    let replay = t.request("callback", approved.callback()).await;
    assert_eq!(replay.code(), "invalid_state");

    let planted = t.begin(login()).await;
    let other = t.begin(login()).await;
    let tokens = t.idp.token_requests();
    for body in [
        json!({ "query": planted.query }),
        planted.callback_with(json!({ "binding": other.binding() })),
    ] {
        let refused = t.request("callback", body).await;
        assert_eq!(refused.code(), "invalid_state");
    }
    let spent = t.request("callback", planted.callback()).await;
    assert_eq!(spent.code(), "invalid_state", "the refusal took the login");
    assert_eq!(t.idp.token_requests(), tokens, "none reached the provider");
    t.request("callback", other.callback()).await.ok();
}

#[tokio::test]
async fn state_is_single_use_and_bound_to_its_provider() {
    let t = TestDaemon::start().await;
    let login = t.begin(oidc_login()).await;
    t.request("callback", login.callback()).await.ok();
    let replay = t.request("callback", login.callback()).await;
    assert_eq!(replay.code(), "invalid_state");

    let login = t.begin(oidc_login()).await;
    let other = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "github" })),
        )
        .await;
    assert_eq!(other.code(), "invalid_state");
    // The mismatch consumed the state: it cannot be retried with the right provider.
    let retry = t
        .request(
            "callback",
            login.callback_with(json!({ "provider": "oidc" })),
        )
        .await;
    assert_eq!(retry.code(), "invalid_state");

    let forged = t
        .request("callback", json!({ "state": "forged", "code": "x" }))
        .await;
    assert_eq!(forged.code(), "invalid_state");
}

/// A state issued for one redirect URI (one service's login) and brought back to another is
/// `invalid_state` when the caller says where the callback arrived, and it is spent.
#[tokio::test]
async fn state_is_bound_to_its_redirect_uri() {
    let t = TestDaemon::start().await;
    let login = |uri: &str| json!({ "provider": "oidc", "redirect_uri": uri });
    let started = t.begin(login("http://app.test/callback")).await;
    let elsewhere = t
        .request(
            "callback",
            started.callback_with(json!({ "redirect_uri": "http://app.test/other" })),
        )
        .await;
    assert_eq!(elsewhere.code(), "invalid_state");
    let retry = t
        .request(
            "callback",
            started.callback_with(json!({ "redirect_uri": "http://app.test/callback" })),
        )
        .await;
    assert_eq!(
        retry.code(),
        "invalid_state",
        "the mismatch spent the state"
    );
    let started = t.begin(login("http://app.test/other")).await;
    t.request(
        "callback",
        started.callback_with(json!({ "redirect_uri": "http://app.test/other" })),
    )
    .await
    .ok();
}

#[tokio::test]
async fn expired_state_is_refused() {
    let t = TestDaemon::start_with(|c| c.insert_str(0, "pending_ttl_secs = 1\n")).await;
    let login = t.begin(oidc_login()).await;
    // Let the one-second TTL pass; this waits on the clock, not on another task.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reply = t.request("callback", login.callback()).await;
    assert_eq!(reply.code(), "invalid_state");
}

/// Single use is the callback's: of concurrent callbacks with one state (and its binding),
/// one takes the state before its code exchange, so one reaches the provider's token
/// endpoint and succeeds; the others are `invalid_state`.
#[tokio::test]
async fn concurrent_callbacks_for_one_state_succeed_once() {
    let t = TestDaemon::start().await;
    let login = t.begin(oidc_login()).await;
    let tokens = t.idp.token_requests();
    let replies =
        futures::future::join_all((0..50).map(|_| t.request("callback", login.callback()))).await;
    assert_eq!(
        t.idp.token_requests() - tokens,
        1,
        "one callback reached the provider"
    );
    let ok = replies
        .iter()
        .filter(|r| r.body.get("error").is_none())
        .count();
    let invalid = replies
        .iter()
        .filter(|r| r.body["error"]["code"] == "invalid_state")
        .count();
    assert_eq!((ok, invalid), (1, 49));
}
