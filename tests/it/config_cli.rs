//! Configuration, the `lanyard` command line, and the plugin loader's refusals.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lanyard::config::Config;
use lanyard::providers::plugin::PluginSet;
use lanyard_tests::harness::{lanyard_bin, target_dir};
use lanyard_tests::TestDaemon;
use serde_json::{json, Value};

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn plugin_file(kind: &str) -> PathBuf {
    target_dir().join(format!(
        "{}lanyard_provider_{kind}.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    ))
}

/// Runs `lanyard serve` on a config text; returns the exit code and stderr.
fn serve_with(config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lanyard.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(lanyard_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .env_remove("LANYARD_CONFIG")
        .output()
        .expect("the lanyard binary runs (make test builds it)");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_example_config_parses_and_validates_against_the_plugins() {
    std::env::set_var("ACME_SSO_CLIENT_SECRET", "example");
    std::env::set_var("GITHUB_CLIENT_SECRET", "example");
    // config/providers.toml names one variable per example instance.
    for line in std::fs::read_to_string(config_dir().join("providers.toml"))
        .unwrap()
        .lines()
    {
        if let Some(var) = line
            .strip_prefix("client_secret_env = \"")
            .and_then(|l| l.split('"').next())
        {
            // Keys are keys: Apple's client secret is an EC private key.
            if var.ends_with("_KEY") {
                let pem =
                    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/keys/ec1.pem"))
                        .unwrap();
                std::env::set_var(var, pem);
            } else {
                std::env::set_var(var, "example");
            }
        }
    }
    let mut checked = 0;
    // Building instances calls their plugins through the daemon's bounded (async) path.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for entry in std::fs::read_dir(config_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let config = Config::load(Some(&path))
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        runtime
            .block_on(lanyard::prepare(&config))
            .unwrap_or_else(|e| panic!("{} does not validate: {e}", path.display()));
        checked += 1;
    }
    assert!(
        checked >= 2,
        "config/ holds the reference and the dev config"
    );
}

const NATS_NOWHERE: &str = "[nats]\nurl = \"nats://127.0.0.1:1\"\n";

/// Long because it is a table of bad configurations, each checked the same way; one case per test
/// would start the binary as many times for no more insight.
#[test]
fn bad_config_exits_64_naming_the_key_before_connecting() {
    // NATS points at a closed port: exit 64 (not 1) shows validation came first.
    let (code, stderr) = serve_with(&format!("data_dirr = \"/tmp/x\"\n{NATS_NOWHERE}"), &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("data_dirr"), "{stderr}");

    let provider = |extra: &str| {
        format!(
            "{NATS_NOWHERE}[[providers]]\nid = \"sso\"\nkind = \"oidc\"\nclient_id = \"c\"\n\
             redirect_uris = [\"https://app.test/cb\"]\n{extra}"
        )
    };
    let (code, stderr) = serve_with(
        &provider("issuer = \"https://sso.test\"\nissuerr = \"x\"\n"),
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("providers[0].issuerr"), "{stderr}");

    let (code, stderr) = serve_with(&provider(""), &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("providers[0].issuer"), "{stderr}");

    let (code, stderr) = serve_with(
        &provider("issuer = \"https://sso.test\"\nallowed_algs = [\"HS256\"]\n"),
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("allowed_algs"), "{stderr}");

    let (code, stderr) = serve_with(
        &provider("issuer = \"https://sso.test\"\ntoken_readers = [\"nobody\"]\n"),
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("providers[0].token_readers"), "{stderr}");

    let (code, stderr) = serve_with(
        &provider("issuer = \"https://sso.test\"\nclient_secret_env = \"LANYARD_TEST_UNSET\"\n"),
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("client_secret_env"), "{stderr}");

    let (code, stderr) = serve_with(
        &format!("{NATS_NOWHERE}[[providers]]\nid = \"x\"\nkind = \"nosuch\"\nclient_id = \"c\"\nredirect_uris = [\"https://a.test/cb\"]\n"),
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("providers[0].kind") && stderr.contains("nosuch"),
        "{stderr}"
    );

    let (code, stderr) = serve_with(
        &format!("{NATS_NOWHERE}[[providers]]\nid = \"apple\"\nkind = \"apple\"\nclient_id = \"c\"\nclient_secret = \"not a key\"\nredirect_uris = [\"https://a.test/cb\"]\nteam_id = \"ABCDE12345\"\nkey_id = \"KEY1234567\"\n"),
        &[],
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("providers[0].client_secret") && stderr.contains("EC P-256"),
        "{stderr}"
    );

    let (code, stderr) = serve_with(&format!("{NATS_NOWHERE}[sled]\ncache_mb = 0\n"), &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("sled.cache_mb"), "{stderr}");

    // Daemons sharing JetStream must share the master key: no per-directory dev key.
    let (code, stderr) = serve_with(&format!("store = \"jetstream\"\n{NATS_NOWHERE}"), &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("vault.master_key"), "{stderr}");
    // Every secret has one source at most (one rule for all of them: config::SecretSource).
    for (both, key) in [
        (
            "token = \"t\"\ntoken_file = \"/etc/hostname\"\n",
            "nats.token",
        ),
        (
            "[admin]\ntoken = \"0123456789abcdef\"\ntoken_file = \"/etc/hostname\"\n",
            "admin.token",
        ),
    ] {
        let (code, stderr) = serve_with(&format!("{NATS_NOWHERE}{both}"), &[]);
        assert_eq!(code, 64, "{both}: {stderr}");
        assert!(
            stderr.contains(&format!("`{key}`: set only one of")),
            "{stderr}"
        );
    }
    for bad in [
        "store = \"postgres\"\n",
        "[jetstream]\nreplicas = 7\n",
        "[jetstream]\nbucket_prefix = \"a.b\"\n",
        "[events]\nstream_name = \"a b\"\n",
    ] {
        let (code, stderr) = serve_with(&format!("{bad}{NATS_NOWHERE}"), &[]);
        assert_eq!(code, 64, "{bad}: {stderr}");
    }
}

/// The JetStream store refuses a nats-server older than 2.10 (Debian's 2.9, say) by name,
/// rather than failing on its first bucket.
#[tokio::test]
async fn the_jetstream_store_names_a_server_too_old_for_it() {
    let debian = std::path::Path::new("/usr/sbin/nats-server");
    let version = std::process::Command::new(debian).arg("--version").output();
    let Ok(version) = version else {
        eprintln!("no /usr/sbin/nats-server here; nothing to check");
        return;
    };
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    if !version.contains("v2.9.") {
        eprintln!("/usr/sbin/nats-server is {version}; the check needs a 2.9");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Started like every test's server: on a port it picks, ready once it reports it.
    let server = lanyard_tests::NatsServer::start_binary(
        debian,
        &["--jetstream", "--store_dir", dir.path().to_str().unwrap()],
    )
    .unwrap();
    let config = format!(
        "store = \"jetstream\"\ndata_dir = \"{}\"\n[vault]\nmaster_key = \"{}\"\n[nats]\nurl = \"{}\"\n",
        dir.path().join("data").display(),
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        server.url()
    );
    let result = lanyard::Daemon::start(lanyard::config::Config::from_toml(&config).unwrap()).await;
    drop(server);
    let error = result.unwrap_err();
    assert!(
        error.to_string().contains("nats-server 2.10 or newer"),
        "{error}"
    );
}

#[test]
fn environment_overrides_nested_keys() {
    let (code, stderr) = serve_with(NATS_NOWHERE, &[("LANYARD_NATS__SUBJECT_PREFIX", "a b")]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("nats.subject_prefix"), "{stderr}");
    let (code, stderr) = serve_with(NATS_NOWHERE, &[("LANYARD_PENDING_TTL_SECS", "0")]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("pending_ttl_secs"), "{stderr}");
}

#[test]
fn a_valid_config_gets_past_validation_and_fails_only_to_connect() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("data_dir = \"{}\"\n{NATS_NOWHERE}", dir.path().display());
    // The command's own variables are not mistaken for configuration keys.
    let own = [("LANYARD_LOG", "debug"), ("LANYARD_LOG_FORMAT", "json")];
    let (code, stderr) = serve_with(&config, &own);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
}

#[test]
fn plugin_inspect_prints_the_description() {
    let output = Command::new(lanyard_bin())
        .args(["plugin", "inspect"])
        .arg(plugin_file("github"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["kind"], "github");
    assert_eq!(out["abi_version"], 1);
    assert_eq!(out["description"]["protocol"], "oauth2");
    assert_eq!(out["description"]["group_scopes"], json!(["read:org"]));
    let fields: Vec<&str> = out["description"]["config_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["base_url", "api_url"]);
}

#[test]
fn every_catalogue_plugin_inspects_with_its_kind_and_version() {
    for kind in [
        "oidc",
        "github",
        "oauth2",
        "google",
        "gitlab",
        "discord",
        "slack",
        "bitbucket",
        "microsoft",
        "apple",
        "example",
    ] {
        let output = Command::new(lanyard_bin())
            .args(["plugin", "inspect"])
            .arg(plugin_file(kind))
            .output()
            .unwrap();
        assert!(output.status.success(), "{kind}: {output:?}");
        let out: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(out["kind"], kind);
        assert_eq!(out["description"]["kind"], kind);
        assert_eq!(out["abi_version"], 1);
        assert_eq!(out["plugin_version"], env!("CARGO_PKG_VERSION"));
        assert!(out["description"]["display_name"]
            .as_str()
            .is_some_and(|n| !n.is_empty()));
    }
}

#[test]
fn libraries_that_are_not_compatible_plugins_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &Path, name: &str| {
        let to = dir.path().join(format!("liblanyard_provider_{name}.so"));
        std::fs::copy(from, &to).unwrap();
        to
    };
    let future = copy(
        &target_dir().join("liblanyard_fixture_wrong_abi.so"),
        "future",
    );
    let short = copy(
        &target_dir().join("liblanyard_fixture_short_table.so"),
        "short",
    );
    let junk = dir.path().join("liblanyard_provider_junk.so");
    std::fs::write(&junk, "not a library").unwrap();
    copy(&plugin_file("oidc"), "oidc");
    let system_lib = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.exists());
    let foreign = system_lib.map(|p| copy(p, "foreign"));

    let set = PluginSet::scan(&[dir.path().to_path_buf()]);
    assert_eq!(
        set.kinds().collect::<Vec<_>>(),
        ["oidc"],
        "the good plugin still loads"
    );
    let errors = set.errors.join("\n");
    assert!(errors.contains(&future.display().to_string()), "{errors}");
    assert!(
        errors.contains("ABI version 99") && errors.contains("version 1"),
        "{errors}"
    );
    assert!(errors.contains(&junk.display().to_string()), "{errors}");
    assert!(
        errors.contains(&format!("{}: plugin table is 8 bytes", short.display())),
        "{errors}"
    );
    if let Some(foreign) = foreign {
        assert!(
            errors.contains(&format!(
                "{}: not a Lanyard provider plugin",
                foreign.display()
            )),
            "{errors}"
        );
    }

    let output = Command::new(lanyard_bin())
        .args(["plugin", "inspect"])
        .arg(&future)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ABI version 99"), "{stderr}");
}

#[tokio::test]
async fn events_command_prints_readable_lines() {
    let t = TestDaemon::start().await;
    let mut child = Command::new(lanyard_bin())
        .arg("events")
        .env("LANYARD_NATS__URL", t.nats.url())
        .env_remove("LANYARD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command says it listens only after its subscription is live.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("listening on lanyard.events.>"), "{line}");

    let reply = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = reply["user"]["id"].as_str().unwrap().to_owned();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .take(3)
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .unwrap()
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let logged_in = lines
        .iter()
        .find(|l| l.contains(" user.logged_in "))
        .unwrap_or_else(|| panic!("no user.logged_in line in {lines:?}"));
    assert!(
        logged_in.contains(&format!("user_id={user_id}")),
        "{logged_in}"
    );
    assert!(logged_in.contains("provider=oidc"), "{logged_in}");
}

/// `lanyard events --since 1h` replays what the events stream kept (the daemon runs with
/// `[events] stream = true`), oldest first.
#[tokio::test]
async fn events_since_replays_the_stream() {
    let store = tempfile::tempdir().unwrap();
    let nats = lanyard_tests::NatsServer::start_jetstream(&[
        "--jetstream",
        "--store_dir",
        store.path().to_str().unwrap(),
    ])
    .unwrap();
    let t = TestDaemon::start_on(nats, async_nats::ConnectOptions::new(), |c| {
        c.push_str("\n[events]\nstream = true\n");
    })
    .await;
    let reply = t
        .full_login(json!({ "provider": "oidc" }))
        .await
        .ok()
        .clone();
    let user_id = reply["user"]["id"].as_str().unwrap().to_owned();
    // Replayed after the fact: nobody was listening when these happened.
    let mut child = Command::new(lanyard_bin())
        .args(["events", "--since", "1h", "--json"])
        .env("LANYARD_NATS__URL", t.nats.url())
        .env_remove("LANYARD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::time::timeout(
        lanyard_tests::PATIENCE,
        tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .take(3)
                .collect::<Result<Vec<_>, _>>()
        }),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let lines = lines.expect("three events").unwrap().unwrap();
    let types: Vec<String> = lines
        .iter()
        .map(|l| {
            let event: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(event["user_id"], user_id.as_str(), "{l}");
            event["type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(types, ["user.created", "identity.linked", "user.logged_in"]);
}

/// Logs written to a file or a collector: no colour escape codes (stderr is not a
/// terminal), and with `--log-format json` one JSON object per line with the documented
/// fields (docs/operations.md).
#[test]
fn logs_off_a_terminal_are_plain_text_or_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = \"{}\"\n[nats]\nurl = \"nats://127.0.0.1:1\"\n",
        dir.path().display()
    );
    let (code, text) = serve_with(&config, &[("LANYARD_LOG", "info")]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("loaded provider plugin"), "{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in {text}");

    let (_, json) = serve_with(
        &config,
        &[("LANYARD_LOG", "info"), ("LANYARD_LOG_FORMAT", "json")],
    );
    let lines: Vec<serde_json::Value> = json
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(!lines.is_empty(), "{json}");
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["target"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    assert!(!json.contains('\u{1b}'));
}
