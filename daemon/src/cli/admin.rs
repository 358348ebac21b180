//! The admin command line: `lanyard provider …`, `keys rotate`, `status`, `user get`,
//! `session revoke`. Each is one NATS request to a running daemon, with the config file's
//! connection, subject prefix and admin token. Output is a table for people, or the reply's
//! JSON with `--json`. Exit codes scripts can trust: 0 done, 1 refused (the error code is
//! printed), 2 usage (clap's), 64 a config that does not load, 69 NATS or the daemon out of
//! reach, 75 no answer in time (the outcome is unknown), 76 an answer that is not JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lanyard::config::Config;
use lanyard_proto::{Command, ADMIN_TOKEN_HEADER};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

/// EX_UNAVAILABLE (sysexits.h): NATS, or a daemon to answer, is not there.
pub(crate) const UNREACHABLE: u8 = 69;

/// EX_TEMPFAIL: the request went out and no answer came in time: it may have been done.
const UNKNOWN_OUTCOME: u8 = 75;

/// EX_PROTOCOL: the answer is not Lanyard's.
const BAD_REPLY: u8 = 76;

/// How long one request waits for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What an admin command asks, and how its answer is shown.
#[derive(Debug)]
pub(crate) enum Ask {
    ProviderList,
    ProviderGet(String),
    ProviderCreate(PathBuf),
    ProviderUpdate(PathBuf),
    ProviderPatch(String, PathBuf),
    ProviderDelete(String),
    KeysRotate,
    Status,
    UserGet(String),
    SessionRevoke { user_id: String, session_id: String },
}

/// Runs one admin command; the process's exit code.
pub(crate) async fn run(config: Option<PathBuf>, json: bool, ask: Ask) -> u8 {
    let config = match Config::load(config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return 64;
        }
    };
    let (command, body) = match request(&ask) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return 2;
        }
    };
    let client = match lanyard::edge::connect(&config.nats).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("lanyard: {error}");
            return UNREACHABLE;
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    if command.is_admin() {
        match config.admin.resolve_token() {
            Ok(Some(token)) => headers.insert(ADMIN_TOKEN_HEADER, token.expose_secret()),
            Ok(None) => {}
            Err(error) => {
                eprintln!("lanyard: {error}");
                return 64;
            }
        }
    }
    let subject = command.subject(&config.nats.subject_prefix);
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(body.to_string().into())
        .timeout(Some(REQUEST_TIMEOUT));
    let reply = match client.send_request(subject.clone(), request).await {
        Ok(reply) => reply,
        Err(error) if error.kind() == async_nats::RequestErrorKind::TimedOut => {
            eprintln!(
                "lanyard: no answer on {subject} within {} s: it may or may not have been \
                 done; check before trying again",
                REQUEST_TIMEOUT.as_secs()
            );
            return UNKNOWN_OUTCOME;
        }
        Err(error) => {
            eprintln!("lanyard: no answer on {subject}: {error} (is a daemon running?)");
            return UNREACHABLE;
        }
    };
    let Ok(reply) = serde_json::from_slice::<Value>(&reply.payload) else {
        eprintln!("lanyard: the answer on {subject} is not JSON");
        return BAD_REPLY;
    };
    if let Some(error) = reply.get("error") {
        let code = error["code"].as_str().unwrap_or("unknown");
        let message = error["message"].as_str().unwrap_or_default();
        if json {
            println!("{reply}");
        }
        eprintln!("lanyard: refused: {code}: {message}");
        return 1;
    }
    if json {
        println!("{reply}");
    } else {
        print!("{}", render(&ask, &reply));
    }
    0
}

/// The command and body `ask` sends; an error for a file that cannot be read.
fn request(ask: &Ask) -> Result<(Command, Value), String> {
    Ok(match ask {
        Ask::ProviderList => (Command::ProviderList, json!({})),
        Ask::ProviderGet(id) => (Command::ProviderGet, json!({ "id": id })),
        Ask::ProviderCreate(file) => (Command::ProviderCreate, instance_file(file)?),
        Ask::ProviderUpdate(file) => (Command::ProviderUpdate, instance_file(file)?),
        Ask::ProviderPatch(id, file) => {
            let mut patch = instance_file(file)?;
            patch["id"] = json!(id);
            (Command::ProviderPatch, patch)
        }
        Ask::ProviderDelete(id) => (Command::ProviderDelete, json!({ "id": id })),
        Ask::KeysRotate => (Command::AdminKeysRotate, json!({})),
        Ask::Status => (Command::AdminStatus, json!({})),
        Ask::UserGet(id) => (Command::AdminUserGet, json!({ "user_id": id })),
        Ask::SessionRevoke {
            user_id,
            session_id,
        } => (
            Command::SessionRevoke,
            json!({ "user_id": user_id, "session_id": session_id }),
        ),
    })
}

/// A provider instance from a file: JSON (`.json`), or TOML in the shape of a
/// `[[providers]]` table (the table itself, or a file with one `[[providers]]` entry).
pub(crate) fn instance_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        let table: toml::Table = text
            .parse()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::to_value(table).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let value = match value.get("providers").and_then(Value::as_array) {
        Some(list) if list.len() == 1 => list[0].clone(),
        Some(_) => {
            return Err(format!(
                "{}: one [[providers]] entry, please",
                path.display()
            ))
        }
        None => value,
    };
    if !value.is_object() {
        return Err(format!("{}: not a table of keys", path.display()));
    }
    Ok(value)
}

/// A reply for people.
fn render(ask: &Ask, reply: &Value) -> String {
    match ask {
        Ask::ProviderList => {
            let rows = reply["providers"]
                .as_array()
                .map(|list| list.iter().map(provider_row).collect())
                .unwrap_or_default();
            table(&["ID", "KIND", "SOURCE", "VERSION", "UPDATED"], rows)
        }
        Ask::ProviderGet(_)
        | Ask::ProviderCreate(_)
        | Ask::ProviderUpdate(_)
        | Ask::ProviderPatch(..) => keys(&reply["provider"]),
        Ask::ProviderDelete(id) => format!("deleted provider {id}\n"),
        Ask::KeysRotate => format!("signing key rotated: new kid {}\n", text(&reply["kid"])),
        Ask::Status => status(reply),
        Ask::UserGet(_) => user(&reply["user"]),
        Ask::SessionRevoke { session_id, .. } => format!("revoked session {session_id}\n"),
    }
}

fn provider_row(p: &Value) -> Vec<String> {
    ["id", "kind", "source", "version", "updated_at"]
        .iter()
        .map(|k| text(&p[k]))
        .collect()
}

fn status(reply: &Value) -> String {
    let mut out = format!(
        "version {}  up {} s  requests {}/{}  shared changes {}\nevents published {}  queued {}  dropped {}\n\n",
        text(&reply["version"]),
        text(&reply["uptime_secs"]),
        text(&reply["requests_in_flight"]),
        text(&reply["max_in_flight"]),
        text(&reply["shared_changes"]),
        text(&reply["events"]["published"]),
        text(&reply["events"]["queued"]),
        text(&reply["events"]["dropped"]),
    );
    let rows = reply["providers"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| {
                    [
                        "id",
                        "kind",
                        "status",
                        "circuit",
                        "consecutive_failures",
                        "error",
                    ]
                    .iter()
                    .map(|k| text(&p[k]))
                    .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&table(
        &["PROVIDER", "KIND", "STATUS", "CIRCUIT", "FAILURES", "ERROR"],
        rows,
    ));
    out
}

fn user(user: &Value) -> String {
    let mut out = keys(&json!({
        "id": user["id"], "username": user["username"], "email": user["email"],
        "name": user["name"], "created_at": user["created_at"],
        "disabled_at": user["disabled_at"],
    }));
    let rows = user["identities"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| {
                    ["provider", "subject", "email"]
                        .iter()
                        .map(|k| text(&i[k]))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    out.push('\n');
    out.push_str(&table(&["PROVIDER", "SUBJECT", "EMAIL"], rows));
    out
}

/// An object's keys and values, a line each, keys aligned.
fn keys(object: &Value) -> String {
    let Some(map) = object.as_object() else {
        return format!("{object}\n");
    };
    let width = map.keys().map(String::len).max().unwrap_or(0);
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k:width$}  {}\n", text(v)))
        .collect()
}

/// A value as a table cell: strings bare (control characters, which a user's name could
/// carry into the operator's terminal, as `?`), null as `-`, the rest as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_its_columns() {
        let out = table(
            &["ID", "KIND"],
            vec![
                vec!["github".into(), "github".into()],
                vec!["a".into(), "oidc".into()],
            ],
        );
        assert_eq!(out, "ID      KIND\ngithub  github\na       oidc\n");
    }

    #[test]
    fn an_instance_file_is_a_table_or_one_providers_entry() {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("bare.toml");
        std::fs::write(&bare, "id = \"x\"\nkind = \"oidc\"\n").unwrap();
        assert_eq!(instance_file(&bare).unwrap()["id"], "x");
        let wrapped = dir.path().join("wrapped.toml");
        std::fs::write(&wrapped, "[[providers]]\nid = \"y\"\nkind = \"oidc\"\n").unwrap();
        assert_eq!(instance_file(&wrapped).unwrap()["id"], "y");
        let two = dir.path().join("two.toml");
        std::fs::write(
            &two,
            "[[providers]]\nid = \"a\"\n[[providers]]\nid = \"b\"\n",
        )
        .unwrap();
        assert!(instance_file(&two).is_err());
        let json = dir.path().join("p.json");
        std::fs::write(&json, r#"{"id": "z", "kind": "github"}"#).unwrap();
        assert_eq!(instance_file(&json).unwrap()["kind"], "github");
    }
}
