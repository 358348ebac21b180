//! The admin command line (`lanyard provider|keys|status|user|session`) against a real
//! daemon: tables for people, `--json` for scripts, and the exit codes scripts rely on (0
//! done, 1 refused with the code printed, 2 usage, 64 bad config, 69 unreachable).

use std::process::Command;

use lanyard_tests::harness::lanyard_bin;
use lanyard_tests::TestDaemon;
use serde_json::{json, Value};

const TOKEN: &str = "0123456789abcdef-admin-cli";

/// A daemon with an admin token, and a config file for the CLI that reaches it.
async fn start() -> (TestDaemon, tempfile::TempDir) {
    let t = TestDaemon::start_with(|c| {
        let at = c.find("[[providers]]").unwrap();
        c.insert_str(at, &format!("[admin]\ntoken = \"{TOKEN}\"\n\n"));
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write_config(&dir, &t.nats.url(), TOKEN);
    (t, dir)
}

fn write_config(dir: &tempfile::TempDir, url: &str, token: &str) {
    let config = format!(
        "data_dir = \"{}\"\n[nats]\nurl = \"{url}\"\n[admin]\ntoken = \"{token}\"\n",
        dir.path().join("unused").display()
    );
    std::fs::write(dir.path().join("cli.toml"), config).unwrap();
}

/// Runs `lanyard ARGS --config DIR/cli.toml`: exit code, stdout, stderr. In a blocking
/// thread, so the daemon (in this process) keeps serving meanwhile.
async fn cli(dir: &tempfile::TempDir, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(lanyard_bin());
    command
        .args(args)
        .arg("--config")
        .arg(dir.path().join("cli.toml"))
        .env_remove("LANYARD_CONFIG");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn providers_are_listed_created_patched_and_deleted() {
    let (t, dir) = start().await;
    let (code, out, err) = cli(&dir, &["provider", "list"]).await;
    assert_eq!(code, 0, "{err}");
    let header = out.lines().next().unwrap();
    assert!(header.starts_with("ID") && header.contains("KIND"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("github ") && l.contains("config")),
        "{out}"
    );

    let file = dir.path().join("acme.toml");
    std::fs::write(
        &file,
        format!(
            "[[providers]]\nid = \"acme\"\nkind = \"oidc\"\nclient_id = \"c\"\n\
             client_secret = \"s3cret-not-printed\"\nredirect_uris = [\"https://a.test/cb\"]\n\
             issuer = \"{}\"\n",
            t.idp.issuer()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = cli(&dir, &["provider", "create", "--file", file]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("acme") && !out.contains("s3cret-not-printed"),
        "{out}"
    );

    let patch = dir.path().join("patch.json");
    std::fs::write(&patch, r#"{"scopes": ["openid", "email"]}"#).unwrap();
    let patch = patch.to_str().unwrap();
    let (code, out, err) = cli(
        &dir,
        &["provider", "patch", "acme", "--file", patch, "--json"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let reply: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(reply["provider"]["scopes"], json!(["openid", "email"]));
    assert_eq!(reply["provider"]["version"], 2);

    assert_eq!(cli(&dir, &["provider", "delete", "acme"]).await.0, 0);
    let (code, _, err) = cli(&dir, &["provider", "get", "acme"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not_found"), "{err}");
    // The config file's instances cannot be changed at runtime: refused, with its code.
    let (code, _, err) = cli(&dir, &["provider", "delete", "github"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("refused: conflict"), "{err}");
}

#[tokio::test]
async fn status_keys_users_and_sessions() {
    let (t, dir) = start().await;
    let (code, out, err) = cli(&dir, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PROVIDER") && out.contains("oidc"), "{out}");
    let (code, out, _) = cli(&dir, &["keys", "rotate", "--json"]).await;
    assert_eq!(code, 0);
    let rotated: Value = serde_json::from_str(out.trim()).unwrap();
    assert!(rotated["kid"].is_string());

    let done = t.full_login(json!({ "provider": "oidc" })).await;
    let done = done.ok().clone();
    let user_id = done["user"]["id"].as_str().unwrap();
    let (code, out, err) = cli(&dir, &["user", "get", user_id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ada@example.test") && out.contains("PROVIDER"),
        "{out}"
    );
    let session = done["session"]["access_token"].clone();
    let sessions = t
        .request("session.list", json!({ "user_id": user_id }))
        .await;
    let session_id = sessions.ok()["sessions"][0]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, _, err) = cli(
        &dir,
        &[
            "session",
            "revoke",
            "--user",
            user_id,
            "--session",
            &session_id,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let verify = t
        .request("session.verify", json!({ "token": session }))
        .await;
    assert_eq!(verify.code(), "unauthorized");
}

#[tokio::test]
async fn exit_codes_tell_scripts_what_happened() {
    let (t, dir) = start().await;
    // A wrong admin token: refused, code printed.
    let wrong = tempfile::tempdir().unwrap();
    write_config(&wrong, &t.nats.url(), "not-the-admin-token");
    let (code, _, err) = cli(&wrong, &["status"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("refused: unauthorized"), "{err}");
    // Usage: clap's 2.
    assert_eq!(cli(&dir, &["provider", "get"]).await.0, 2);
    assert_eq!(cli(&dir, &["provider", "create"]).await.0, 2);
    // A file that cannot be read is usage too.
    assert_eq!(
        cli(&dir, &["provider", "create", "--file", "/nonexistent.toml"])
            .await
            .0,
        2
    );
    // NATS unreachable: 69.
    let away = tempfile::tempdir().unwrap();
    write_config(&away, "nats://127.0.0.1:1", TOKEN);
    let (code, _, err) = cli(&away, &["status"]).await;
    assert_eq!(code, 69, "{err}");
    // A bad config: 64.
    std::fs::write(dir.path().join("cli.toml"), "not toml at all [").unwrap();
    assert_eq!(cli(&dir, &["status"]).await.0, 64);
}
