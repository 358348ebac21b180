//! `lanyard nats-auth init`: the keys, the server config and Lanyard's section it writes
//! work as written. A nats-server started on its config and a daemon on its section admit a
//! session (through the encrypted callout), and end its connection at logout (through the
//! system user).

use lanyard_tests::harness::lanyard_bin;

use super::*;

fn init(dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(lanyard_bin())
        .args(["nats-auth", "init", "--dir"])
        .arg(dir)
        .output()
        .expect("the lanyard binary runs (make test builds it)")
}

#[tokio::test]
async fn the_files_nats_auth_init_writes_run_a_server_and_a_daemon() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let made = init(&keys);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    for secret in [
        "callout-issuer.seed",
        "callout-xkey.seed",
        "nats-lanyard-password",
        "nats-sys-password",
        "nats-auth-server.conf",
    ] {
        let mode = std::fs::metadata(keys.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }
    let printed = [&made.stdout[..], &made.stderr[..]].concat();
    let printed = String::from_utf8_lossy(&printed);
    for secret in [
        "callout-issuer.seed",
        "callout-xkey.seed",
        "nats-lanyard-password",
        "nats-sys-password",
    ] {
        let value = std::fs::read_to_string(keys.join(secret)).unwrap();
        assert!(!printed.contains(value.trim()), "{secret} was printed");
    }
    let password = std::fs::read_to_string(keys.join("nats-lanyard-password")).unwrap();
    let again = init(&keys);
    assert!(!again.status.success(), "a second init replaced the keys");

    let conf = keys.join("nats-auth-server.conf");
    let nats = NatsServer::start_jetstream(&["-c", conf.to_str().unwrap()]).unwrap();
    let section = std::fs::read_to_string(keys.join("lanyard-nats-auth.toml")).unwrap();
    let own = ConnectOptions::with_user_and_password("lanyard".into(), password);
    let t = TestDaemon::start_on(nats, own, move |c| merge(c, &section)).await;

    let mut user = log_in_and_connect(&t, "init@example.test").await;
    t.request(
        "session.revoke",
        json!({ "refresh_token": user.login["session"]["refresh_token"] }),
    )
    .await
    .ok();
    disconnected(&mut user.events).await;
}

/// `section`'s `[nats]` keys go into the config's `[nats]` table; the rest is appended.
fn merge(config: &mut String, section: &str) {
    let (nats, rest) = section
        .split_once("[nats]\n")
        .and_then(|(_, after)| after.split_once("\n\n"))
        .expect("the section starts with its [nats] keys");
    let at = config.find("[nats]\n").unwrap() + "[nats]\n".len();
    config.insert_str(at, &format!("{nats}\n"));
    config.push_str(&format!("\n{rest}"));
}
