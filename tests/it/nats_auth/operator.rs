//! The callout in operator mode: accounts are JWTs an operator signed; the callout account's
//! JWT names Lanyard's user and the accounts it may place users in; a client presents a
//! sentinel user of the callout account (no permissions of its own) with its session as the
//! token, and Lanyard's answer places it in the application account with a user JWT that
//! account's signing key signed. A logout ends the connection through the system account.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use super::*;

/// A NATS JWT of `claims`, signed by `key` (its `iss`).
fn jwt(key: &nkeys::KeyPair, mut claims: Value) -> String {
    claims["iss"] = json!(key.public_key());
    claims["iat"] = json!(1_700_000_000);
    claims["jti"] = json!(nkeys::KeyPair::new_user().public_key());
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// An account's JWT, with `more` merged into its `nats`.
fn account(operator: &nkeys::KeyPair, key: &nkeys::KeyPair, name: &str, more: Value) -> String {
    let mut nats = json!({
        "limits": { "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1 },
        "type": "account", "version": 2,
    });
    for (k, v) in more.as_object().unwrap() {
        nats[k] = v.clone();
    }
    jwt(
        operator,
        json!({ "sub": key.public_key(), "name": name, "nats": nats }),
    )
}

/// A credentials file of a new user of `account` (signed by its key), with `nats` claims.
fn creds(dir: &std::path::Path, name: &str, account: &nkeys::KeyPair, nats: Value) -> String {
    let user = nkeys::KeyPair::new_user();
    let mut claims = json!({ "sub": user.public_key(), "name": name, "nats": {
        "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2 } });
    for (k, v) in nats.as_object().unwrap() {
        claims["nats"][k] = v.clone();
    }
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        jwt(account, claims),
        user.seed().unwrap()
    );
    let path = dir.join(format!("{name}.creds"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn operator_mode_places_a_session_in_its_account_with_a_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let operator = nkeys::KeyPair::new_operator();
    let (auth, app, sys) = (
        nkeys::KeyPair::new_account(),
        nkeys::KeyPair::new_account(),
        nkeys::KeyPair::new_account(),
    );
    // The application account signs users with a signing key, which Lanyard holds.
    let app_signing = nkeys::KeyPair::new_account();
    let lanyard_user = nkeys::KeyPair::new_user();
    let sys_creds = creds(dir.path(), "sys", &sys, json!({}));
    let lanyard_creds = {
        let claims = json!({ "sub": lanyard_user.public_key(), "name": "lanyard", "nats": {
            "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2 } });
        let text = format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            jwt(&auth, claims),
            lanyard_user.seed().unwrap()
        );
        let path = dir.path().join("lanyard.creds");
        std::fs::write(&path, text).unwrap();
        path
    };
    // Clients present this user: no permissions, a bearer JWT anyone may hold.
    let sentinel = creds(
        dir.path(),
        "sentinel",
        &auth,
        json!({ "bearer_token": true, "pub": { "deny": [">"] }, "sub": { "deny": [">"] } }),
    );
    let auth_jwt = account(
        &operator,
        &auth,
        "AUTH",
        json!({ "authorization": {
        "auth_users": [lanyard_user.public_key()],
        "allowed_accounts": [app.public_key()],
    } }),
    );
    let app_jwt = account(
        &operator,
        &app,
        "APP",
        json!({
        "signing_keys": [app_signing.public_key()] }),
    );
    let sys_jwt = account(&operator, &sys, "SYS", json!({}));
    let conf = dir.path().join("operator.conf");
    std::fs::write(
        &conf,
        format!(
            "trusted_keys: [\"{}\"]\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: \"{auth_jwt}\"\n  {}: \"{app_jwt}\"\n  {}: \"{sys_jwt}\"\n}}\n",
            operator.public_key(),
            sys.public_key(),
            auth.public_key(),
            app.public_key(),
            sys.public_key(),
        ),
    )
    .unwrap();
    // The pinned server (2.10+, for the callout), without JetStream: the accounts' JWTs
    // would have to grant it. The daemon uses sled here, whatever the suite's store.
    let binary = lanyard_tests::nats::jetstream_binary();
    let nats = NatsServer::start_binary(&binary, &["-c", conf.to_str().unwrap()]).unwrap();
    let own = ConnectOptions::with_credentials_file(&lanyard_creds)
        .await
        .unwrap();
    let (auth_seed, app_key, signing_seed) = (
        auth.seed().unwrap(),
        app.public_key(),
        app_signing.seed().unwrap(),
    );
    let lanyard_creds = lanyard_creds.display().to_string();
    let t = TestDaemon::start_on(nats, own, move |c| {
        *c = c.replace("store = \"jetstream\"", "");
        let at = c.find("[nats]\n").unwrap() + "[nats]\n".len();
        c.insert_str(at, &format!("creds_file = \"{lanyard_creds}\"\n"));
        c.push_str(&format!(
            "\n[nats_auth]\nenabled = true\nmode = \"operator\"\nissuer_seed = \"{auth_seed}\"\n\
             account = \"{app_key}\"\nuser_signing_seed = \"{signing_seed}\"\n\
             [nats_auth.permissions]\npublish = [\"app.{{user_id}}.>\"]\n\
             subscribe = [\"app.{{user_id}}.>\", \"_INBOX.{{user_id}}.>\"]\n\
             [nats_auth.system]\ncreds_file = \"{sys_creds}\"\n"
        ));
    })
    .await;

    let login = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = login["user"]["id"].as_str().unwrap();
    let access = login["session"]["access_token"].as_str().unwrap();
    let connect = |token: &str| {
        let (events, watched) = tokio::sync::mpsc::unbounded_channel();
        let options = ConnectOptions::with_credentials_file(sentinel.clone());
        let token = token.to_owned();
        let url = t.nats.url();
        async move {
            let client = options
                .await
                .unwrap()
                .token(token)
                .connection_timeout(Duration::from_secs(5))
                .event_callback(move |event| {
                    let events = events.clone();
                    async move {
                        let _ = events.send(event);
                    }
                })
                .connect(url)
                .await;
            client.map(|c| (c, watched))
        }
    };
    let (client, mut events) = connect(access).await.expect("the session connects");
    let worked = round_trip(&client, format!("app.{user_id}.operator")).await;
    if !worked {
        while let Ok(event) = events.try_recv() {
            eprintln!("EVENT {event}");
        }
    }
    assert!(worked, "its own subjects, in the application account");
    // Another user's subjects: refused.
    client
        .publish("app.usr_someone_else.operator", "x".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let complaint = async {
        while let Some(event) = events.recv().await {
            if let async_nats::Event::ServerError(error) = event {
                return error.to_string();
            }
        }
        panic!("the client's events ended");
    };
    let complaint = tokio::time::timeout(lanyard_tests::PATIENCE, complaint)
        .await
        .expect("the server complains");
    assert!(complaint.contains("Permissions Violation"), "{complaint}");
    assert!(
        connect("not-a-session").await.is_err(),
        "a bad token connected"
    );

    t.request(
        "session.revoke",
        json!({ "refresh_token": login["session"]["refresh_token"] }),
    )
    .await
    .ok();
    disconnected(&mut events).await;
}
