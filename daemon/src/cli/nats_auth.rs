//! `lanyard nats-auth init`: makes what Lanyard as the NATS auth callout needs (the issuer
//! account key, the curve key, passwords for Lanyard's two NATS users) and writes the
//! server's config and Lanyard's matching section beside them, for config mode
//! (docs/nats-auth.md).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;

/// What `init` writes into its directory.
const ISSUER_SEED: &str = "callout-issuer.seed";
const XKEY_SEED: &str = "callout-xkey.seed";
const LANYARD_PASSWORD: &str = "nats-lanyard-password";
const SYSTEM_PASSWORD: &str = "nats-sys-password";
const SERVER_CONF: &str = "nats-auth-server.conf";
const LANYARD_TOML: &str = "lanyard-nats-auth.toml";

pub(crate) fn init(dir: &Path, account: &str) -> u8 {
    match write_all(dir, account) {
        Ok(dir) => {
            println!(
                "Wrote to {dir}:\n  {ISSUER_SEED}, {XKEY_SEED}, {LANYARD_PASSWORD}, \
                 {SYSTEM_PASSWORD}: secrets, mode 0600, for Lanyard\n  \
                 {SERVER_CONF}: the nats-server config (holds the passwords: mode 0600)\n  \
                 {LANYARD_TOML}: Lanyard's [nats] user and [nats_auth], to merge into its config\n\
                 Next: nats-server -c {dir}/{SERVER_CONF} (or include it), then lanyard serve.",
                dir = dir.display()
            );
            0
        }
        Err(error) => {
            eprintln!("lanyard: {error}");
            1
        }
    }
}

/// Makes the keys and writes every file; refuses to replace any that exists.
fn write_all(dir: &Path, account: &str) -> Result<PathBuf, String> {
    let valid_account = !account.is_empty()
        && account
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid_account {
        return Err(format!(
            "--account {account:?}: letters, digits, '_' and '-'"
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    for name in [
        ISSUER_SEED,
        XKEY_SEED,
        LANYARD_PASSWORD,
        SYSTEM_PASSWORD,
        SERVER_CONF,
        LANYARD_TOML,
    ] {
        if dir.join(name).exists() {
            return Err(format!(
                "{} exists; not replacing it",
                dir.join(name).display()
            ));
        }
    }
    let issuer = nkeys::KeyPair::new_account();
    let xkey = nkeys::XKey::new();
    let seed = issuer.seed().map_err(|e| e.to_string())?;
    let xkey_seed = xkey.seed().map_err(|e| e.to_string())?;
    let (lanyard_password, system_password) = (password()?, password()?);
    let secret = |name: &str, text: &str| write_file(&dir.join(name), text, 0o600);
    secret(ISSUER_SEED, &seed)?;
    secret(XKEY_SEED, &xkey_seed)?;
    secret(LANYARD_PASSWORD, &lanyard_password)?;
    secret(SYSTEM_PASSWORD, &system_password)?;
    let server = server_conf(
        &issuer.public_key(),
        &xkey.public_key(),
        account,
        &lanyard_password,
        &system_password,
    );
    secret(SERVER_CONF, &server)?;
    write_file(&dir.join(LANYARD_TOML), &lanyard_toml(&dir, account), 0o644)?;
    Ok(dir)
}

/// 32 random bytes, base64url: a password for a NATS user.
fn password() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "no randomness from the system".to_owned())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The server's side, config mode: Lanyard's user in `AUTH` (bypassing the callout), its
/// system user in `SYS`, everyone else asked about and placed in `account`.
fn server_conf(
    issuer: &str,
    xkey: &str,
    account: &str,
    lanyard_password: &str,
    system_password: &str,
) -> String {
    format!(
        r#"# nats-server with Lanyard as its auth callout (made by `lanyard nats-auth init`).
# It holds the passwords of Lanyard's two users: readable by the server only.
accounts {{
  # Lanyard's own connection; its JetStream store, when it uses one, lives here.
  AUTH {{ users: [ {{ user: lanyard, password: "{lanyard_password}" }} ], jetstream: enabled }}
  # Where the people and services Lanyard admits are placed.
  {account} {{ }}
  # Lanyard ends the connections of ended sessions through this user.
  SYS {{ users: [ {{ user: lanyard-sys, password: "{system_password}" }} ] }}
}}
system_account: SYS
authorization {{
  auth_callout {{
    issuer: {issuer}
    xkey: {xkey}
    auth_users: [ lanyard, lanyard-sys ]
    account: AUTH
  }}
}}
# For browsers: a WebSocket listener taking the session from a cookie.
# websocket {{ port: 8443, tls {{ cert_file: "…", key_file: "…" }}, token_cookie: "lanyard_session" }}
"#
    )
}

/// Lanyard's side, naming the files beside it.
fn lanyard_toml(dir: &Path, account: &str) -> String {
    let at = |name: &str| dir.join(name).display().to_string();
    format!(
        r#"# Lanyard as the NATS auth callout (made by `lanyard nats-auth init`): merge these
# into Lanyard's config (the [nats] keys into its [nats] table).
[nats]
user = "lanyard"
password_file = "{lanyard_password}"

[nats_auth]
enabled = true
issuer_seed_file = "{issuer}"
xkey_seed_file = "{xkey}"
account = "{account}"

# What a session's connection may do ({{user_id}}, {{session_id}}, {{username}}).
[nats_auth.permissions]
publish = ["app.{{user_id}}.>"]
# Each client's request inboxes under its own prefix (the client's inbox prefix set to
# _INBOX.<its user id>): an `_INBOX.>` would let every user read every other's replies.
subscribe = ["app.{{user_id}}.>", "_INBOX.{{user_id}}.>"]

[nats_auth.system]
user = "lanyard-sys"
password_file = "{system_password}"
"#,
        lanyard_password = at(LANYARD_PASSWORD),
        issuer = at(ISSUER_SEED),
        xkey = at(XKEY_SEED),
        system_password = at(SYSTEM_PASSWORD),
    )
}
