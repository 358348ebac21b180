//! `lanyard store copy`: a sled store copied into JetStream and back serves the same users,
//! sessions, provider tokens and signing keys; a target that is not empty is refused.

use std::path::Path;
use std::process::Command;

use lanyard_tests::harness::lanyard_bin;
use lanyard_tests::{NatsServer, TestDaemon};
use serde_json::{json, Value};

/// Runs `lanyard store copy` with the data directory and NATS from the environment.
fn copy(from: &str, to: &str, data_dir: &Path, nats: &str) -> (bool, String) {
    let (code, text) = lanyard_store(&["copy", "--from", from, "--to", to], data_dir, Some(nats));
    (code == Some(0), text)
}

/// Runs `lanyard store <args>` with the data directory (and NATS) from the environment;
/// its exit code and its output, both streams.
fn lanyard_store(args: &[&str], data_dir: &Path, nats: Option<&str>) -> (Option<i32>, String) {
    let mut command = Command::new(lanyard_bin());
    command
        .arg("store")
        .args(args)
        .env("LANYARD_DATA_DIR", data_dir)
        .env_remove("LANYARD_CONFIG");
    if let Some(nats) = nats {
        command.env("LANYARD_NATS__URL", nats);
    }
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The copied store serves the user with its identity, verifies the old access token (the
/// signing key came along) and hands out the same provider token (still sealed under the
/// same key).
async fn assert_same_state(
    t: &TestDaemon,
    user_id: &Value,
    session: &Value,
    provider_token: &Value,
) {
    let user = t.request("user.get", json!({ "user_id": user_id })).await;
    assert_eq!(user.ok()["user"]["identities"][0]["provider"], "oidc");
    let claims = t
        .request(
            "session.verify",
            json!({ "token": session["access_token"] }),
        )
        .await;
    assert_eq!(claims.ok()["sub"], *user_id);
    let again = t
        .request(
            "token.get",
            json!({ "user_id": user_id, "provider": "oidc" }),
        )
        .await;
    assert_eq!(again.ok()["access_token"], *provider_token);
}

/// Long because it is one copy round trip (sled, JetStream, sled) and checks the same state at each
/// end.
#[tokio::test]
async fn a_sled_store_copied_to_jetstream_and_back_serves_the_same_state() {
    if lanyard_tests::nats::jetstream_under_test() {
        return; // It starts on sled by design; the second pass adds nothing.
    }
    let js_dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_jetstream(&[
        "--jetstream",
        "--store_dir",
        js_dir.path().to_str().unwrap(),
    ])
    .unwrap();
    let mut t = TestDaemon::start_on(nats, async_nats::ConnectOptions::new(), |c| {
        *c = c.replacen(
            "id = \"oidc\"\n",
            "id = \"oidc\"\nstore_tokens = true\ntoken_readers = [\"*\"]\n",
            1,
        );
    })
    .await;
    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = login["user"]["id"].clone();
    let session = login["session"].clone();
    let token_get = json!({ "user_id": user_id, "provider": "oidc" });
    let provider_token = t.request("token.get", token_get).await.ok()["access_token"].clone();
    t.stop().await;

    // sled → JetStream, then a daemon on JetStream with the same (dev) master key.
    let data = t.data_dir.path().to_path_buf();
    let (ok, out) = copy("sled", "jetstream", &data, &t.nats.url());
    assert!(ok, "{out}");
    assert!(
        out.contains("copied 1 users, 1 identities, 1 provider tokens"),
        "{out}"
    );
    let sled_config = t.config.clone();
    let key_file = data.join("master.key");
    t.config = format!(
        "store = \"jetstream\"\n{sled_config}\n[vault]\nmaster_key_file = \"{}\"\n{STRICT}",
        key_file.display()
    );
    t.restart().await;
    assert_same_state(&t, &user_id, &session, &provider_token).await;
    // The session family came along: its refresh token rotates once.
    let refreshed = t
        .request(
            "session.refresh",
            json!({ "refresh_token": session["refresh_token"] }),
        )
        .await;
    refreshed.ok();
    t.stop().await;

    // A target that is not empty is refused: the original sled store still has its users.
    let (ok, out) = copy("jetstream", "sled", &data, &t.nats.url());
    assert!(!ok && out.contains("not empty"), "{out}");

    // JetStream → a fresh sled directory.
    let back = tempfile::tempdir().unwrap();
    let (ok, out) = copy("jetstream", "sled", back.path(), &t.nats.url());
    assert!(ok, "{out}");
    t.config = format!(
        "{}\n[vault]\nmaster_key_file = \"{}\"\n{STRICT}",
        sled_config.replace(
            &data.display().to_string(),
            &back.path().display().to_string()
        ),
        key_file.display()
    );
    t.restart().await;
    assert_same_state(&t, &user_id, &session, &provider_token).await;
    // The refresh token used on JetStream is spent here too.
    let replay = t
        .request(
            "session.refresh",
            json!({ "refresh_token": session["refresh_token"] }),
        )
        .await;
    assert_eq!(replay.code(), "unauthorized");
}

/// No reuse grace: a refresh token presented again is refused at once.
const STRICT: &str = "[sessions]\nrefresh_reuse_grace_secs = 0\n";

/// `lanyard store forget-pending` deletes the previous version's pending logins only once
/// none of them can finish: refused (exit 1) while one is unexpired, done (exit 0) after.
#[tokio::test]
async fn forget_pending_waits_for_the_previous_versions_logins() {
    use lanyard::store::{new_state, PendingLogin, SledStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let state = new_state(4_000_000_000, [3; 32]);
    {
        let store = SledStore::open(dir.path()).unwrap();
        let pending = PendingLogin {
            provider: "oidc".into(),
            generation: "config".into(),
            redirect_uri: "http://app.test/callback".into(),
            pkce_verifier: None,
            nonce: None,
            scopes: Vec::new(),
            fetch_groups: false,
            return_to: None,
            link_user: None,
            created_at: 0,
            expires_at: 4_000_000_000,
            binding_hash: None,
        };
        store.put_pending(&state, &pending).await.unwrap();
    }
    let forget = || lanyard_store(&["forget-pending"], dir.path(), None);
    let (code, text) = forget();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("may still finish"), "{text}");
    {
        let store = SledStore::open(dir.path()).unwrap();
        assert!(store.take_pending(&state).await.unwrap().is_some(), "kept");
        store.flush().await.unwrap();
    }
    let (code, text) = forget();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no pending login"), "{text}");
}

/// `lanyard store reindex` indexes session families the previous version made (a family
/// record without the index entry): `session.list`'s and erasure's way to them.
#[tokio::test]
async fn reindex_lists_families_the_previous_version_made() {
    use lanyard::store::{FamilyRecord, SledStore, Snapshot, Store, UserRecord};
    let dir = tempfile::tempdir().unwrap();
    let user = UserRecord {
        id: "usr_old".into(),
        username: "old".into(),
        email: None,
        email_verified: false,
        name: None,
        picture: None,
        created_at: 0,
        disabled_at: None,
    };
    let family = FamilyRecord {
        user_id: "usr_old".into(),
        created_at: 0,
        revoked_at: None,
        provider: None,
        subject: None,
        client: None,
        refreshed_at: None,
        expires_at: None,
        first: None,
    };
    {
        let store = SledStore::open(dir.path()).unwrap();
        // An import indexes what it writes; a family the previous version wrote directly is
        // what the reindex is for: remove its entry as that version would not have made it.
        store
            .import(&Snapshot {
                users: vec![(user, vec![])],
                families: vec![("ses_old".into(), family)],
                ..Snapshot::default()
            })
            .await
            .unwrap();
    }
    {
        let db = sled::open(dir.path()).unwrap();
        let index = db.open_tree("user_sessions").unwrap();
        assert!(index.remove(b"usr_old\0ses_old").unwrap().is_some());
        db.flush().unwrap();
    }
    {
        let store = SledStore::open(dir.path()).unwrap();
        assert!(store.user_families("usr_old").await.unwrap().is_empty());
    }
    let (code, text) = lanyard_store(&["reindex"], dir.path(), None);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("indexed 1 session families"), "{text}");
    let store = SledStore::open(dir.path()).unwrap();
    let families = store.user_families("usr_old").await.unwrap();
    assert_eq!(families.len(), 1);
}
