//! The NATS edge against real servers: authentication options from config, and service that
//! survives a NATS restart.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a failure is the test failing.

use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use lanyard::config::Config;
use lanyard_tests::{NatsServer, TestDaemon};
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
        lanyard::prepare(&Config::from_toml(&wrong).unwrap()).is_err(),
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
    let deadline = Instant::now() + Duration::from_secs(30);
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
    let nats = NatsServer::start_with(&["-c", server_conf.to_str().unwrap()]).unwrap();
    let client = ConnectOptions::with_credentials_file(&client_creds)
        .await
        .unwrap();
    let keys = format!("creds_file = \"{}\"\n", daemon_creds.display());
    let t = TestDaemon::start_on(nats, client, |c| with_nats_keys(c, &keys)).await;
    t.full_login(json!({ "provider": "oidc" })).await.ok();
}
