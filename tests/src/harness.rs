//! Runs a Lanyard daemon in-process against a real nats-server and the fake identity provider,
//! and talks to it the way a service would: NATS requests with JSON bodies.

use bytes::Bytes;
use lanyard::config::Config;
use lanyard::Daemon;
use serde_json::{json, Value};

use crate::{FakeIdp, NatsServer};

/// The client id and secret the fake provider expects.
pub const CLIENT_ID: &str = "lanyard-test";
pub const CLIENT_SECRET: &str = "test-secret";

/// A daemon under test with its own NATS server, identity provider and data directory.
#[derive(Debug)]
pub struct TestDaemon {
    pub nats: NatsServer,
    pub idp: FakeIdp,
    pub client: async_nats::Client,
    pub data_dir: tempfile::TempDir,
    pub config: String,
    daemon: Option<Daemon>,
}

/// A reply: its JSON body and the NATS micro error headers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub body: Value,
    pub error_header: Option<String>,
    pub status_header: Option<String>,
}

impl Reply {
    /// The body of a successful reply; panics with the error otherwise.
    pub fn ok(&self) -> &Value {
        assert!(
            self.body.get("error").is_none() && self.error_header.is_none(),
            "expected success, got {}",
            self.body
        );
        &self.body
    }

    /// The error code, checked to agree between body and header.
    pub fn code(&self) -> &str {
        let code = self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error, got {}", self.body));
        assert_eq!(
            self.error_header.as_deref(),
            Some(code),
            "header and body codes differ"
        );
        assert!(
            self.status_header.is_some(),
            "Nats-Service-Error-Code is missing"
        );
        code
    }
}

impl TestDaemon {
    /// Starts everything with the standard providers (`oidc`, `github`, `panicky`).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with the standard config, after `edit` had a chance to change it.
    pub async fn start_with(edit: impl FnOnce(&mut String)) -> Self {
        let nats = NatsServer::start().expect("nats-server starts");
        Self::start_on(nats, async_nats::ConnectOptions::new(), edit).await
    }

    /// Starts with the standard config plus the TOML `extra` returns for the fake provider's
    /// base URL (its issuer): another provider instance pointed at it, say.
    pub async fn start_plus(extra: impl FnOnce(&str) -> String) -> Self {
        Self::start_with(|config| {
            let issuer = config
                .lines()
                .find_map(|l| l.strip_prefix("issuer = \""))
                .and_then(|l| l.strip_suffix('"'))
                .expect("the standard config names the issuer")
                .to_owned();
            config.push_str(&extra(&issuer));
        })
        .await
    }

    /// Starts against a given nats-server; the test client connects with `client_options`.
    pub async fn start_on(
        nats: NatsServer,
        client_options: async_nats::ConnectOptions,
        edit: impl FnOnce(&mut String),
    ) -> Self {
        init_logs();
        let idp = FakeIdp::start(CLIENT_ID, CLIENT_SECRET)
            .await
            .expect("fake identity provider starts");
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = standard_config(&nats.url(), &idp.issuer(), data_dir.path());
        edit(&mut config);
        let client = client_options
            .request_timeout(Some(crate::PATIENCE))
            .connect(nats.url())
            .await
            .expect("test client connects");
        let mut this = Self {
            nats,
            idp,
            client,
            data_dir,
            config,
            daemon: None,
        };
        this.boot().await;
        this
    }

    async fn boot(&mut self) {
        let config = Config::from_toml(&self.config).expect("test config is valid");
        self.daemon = Some(Daemon::start(config).await.expect("daemon starts"));
    }

    /// Every directory the daemon's state is in: its data directory, and JetStream's when
    /// the suite runs on the JetStream store (for tests that scan them for secrets).
    pub fn state_dirs(&self) -> Vec<std::path::PathBuf> {
        let mut dirs = vec![self.data_dir.path().to_path_buf()];
        dirs.extend(self.nats.jetstream_dir().map(std::path::Path::to_path_buf));
        dirs
    }

    /// Stops the daemon (`restart` starts one again, with `config` as it then is).
    pub async fn stop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.shutdown().await;
        }
    }

    /// Stops the daemon and starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.shutdown().await;
        }
        self.boot().await;
    }

    /// Sends a command with a JSON body.
    pub async fn request(&self, command: &str, body: Value) -> Reply {
        self.request_raw(command, Bytes::from(body.to_string()))
            .await
    }

    /// Sends a command with raw bytes.
    pub async fn request_raw(&self, command: &str, body: Bytes) -> Reply {
        self.request_with_headers(command, async_nats::HeaderMap::new(), body)
            .await
    }

    /// Sends a command with headers (caller and admin tokens).
    pub async fn request_with_headers(
        &self,
        command: &str,
        headers: async_nats::HeaderMap,
        body: Bytes,
    ) -> Reply {
        let subject = format!("lanyard.v1.{command}");
        let message = tokio::time::timeout(
            crate::PATIENCE,
            self.client
                .request_with_headers(subject.clone(), headers, body),
        )
        .await
        .expect("the daemon answers")
        .unwrap_or_else(|e| panic!("{subject} was not delivered: {e}"));
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        Reply {
            body: serde_json::from_slice(&message.payload).unwrap_or(Value::Null),
            error_header: header("Nats-Service-Error"),
            status_header: header("Nats-Service-Error-Code"),
        }
    }

    /// Waits with `command` (`device.wait`, `login.wait`) until the login with `handle` is
    /// no longer pending, and answers how it ended; fails the test after
    /// [`PATIENCE`](crate::PATIENCE).
    pub async fn wait_ended(&self, command: &str, handle: &Value) -> Reply {
        let deadline = std::time::Instant::now() + crate::PATIENCE;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the login never ended"
            );
            let body = serde_json::json!({ "handle": handle, "timeout_secs": 20 });
            let reply = self.request(command, body).await;
            if reply.body["status"] != "pending" {
                return reply;
            }
        }
    }

    /// Starts a login and plays the browser at the fake provider, up to its redirect back.
    pub async fn begin(&self, login: Value) -> Approved {
        let reply = self.request("login", login).await;
        let reply = reply.ok().clone();
        let url = reply["authorization_url"]
            .as_str()
            .expect("authorization_url");
        let query = self.idp.approve(url).await.expect("the provider approves");
        Approved { reply, query }
    }

    /// A whole login: login, approve, and the callback of the browser that started it.
    pub async fn full_login(&self, login: Value) -> Reply {
        let approved = self.begin(login).await;
        self.request("callback", approved.callback()).await
    }
}

/// A login the browser has been through up to the provider's redirect: what a service holds
/// when the browser comes back to its callback URL.
#[derive(Debug, Clone)]
pub struct Approved {
    /// The `login` reply: `authorization_url`, `state`, and the `binding` the service keeps
    /// in the browser that started the login (an HttpOnly cookie).
    pub reply: Value,
    /// The query string the provider redirected the browser back with.
    pub query: String,
}

impl Approved {
    /// The login's binding, as the browser's cookie brings it back.
    pub fn binding(&self) -> &str {
        self.reply["binding"]
            .as_str()
            .expect("the login reply carries a binding")
    }

    /// The query parameter `name` of the provider's redirect (`state`, `code`, `iss`).
    pub fn param(&self, name: &str) -> String {
        query_param(&self.query, name)
            .unwrap_or_else(|| panic!("the redirect has no `{name}`: {}", self.query))
    }

    /// The `callback` request the service sends for the browser that started the login: the
    /// redirect's query and the binding from its cookie.
    pub fn callback(&self) -> Value {
        self.callback_with(json!({}))
    }

    /// The same request with the fields of `extra` added (`provider`, `redirect_uri`) or
    /// replacing its own (another browser's `binding`, a `query` changed on the way).
    pub fn callback_with(&self, extra: Value) -> Value {
        let mut body = json!({ "query": self.query, "binding": self.binding() });
        if let (Some(fields), Value::Object(extra)) = (body.as_object_mut(), extra) {
            fields.extend(extra);
        }
        body
    }
}

/// The cargo output directory the tests run from (`target/debug`), where the `lanyard`
/// binary and the plugins are.
pub fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let deps = exe.parent().expect("test binaries live in a directory");
    deps.parent().unwrap_or(deps).to_path_buf()
}

/// The `lanyard` binary built alongside the tests (`make test` builds it first).
pub fn lanyard_bin() -> std::path::PathBuf {
    target_dir().join(format!("lanyard{}", std::env::consts::EXE_SUFFIX))
}

/// The next event on a subscription: its subject and JSON body. Fails the test when none
/// comes at all ([`PATIENCE`](crate::PATIENCE)).
pub async fn next_event(events: &mut async_nats::Subscriber) -> (String, Value) {
    use futures::StreamExt;
    let message = tokio::time::timeout(crate::PATIENCE, events.next())
        .await
        .expect("an event")
        .expect("the subscription is open");
    let body = serde_json::from_slice(&message.payload).expect("events are JSON");
    assert_proto_event(message.subject.as_str(), &message.payload);
    (message.subject.to_string(), body)
}

/// An event as published is one `lanyard-proto` reads, on its type's subject, and that proto
/// writes back to the same bytes: the contract in the crate is the one on the wire.
pub fn assert_proto_event(subject: &str, payload: &[u8]) {
    let envelope: lanyard_proto::EventEnvelope = serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("{subject}: not an event lanyard-proto reads: {e}"));
    let name = envelope.event.name();
    assert!(
        subject.ends_with(&format!(".events.{name}")),
        "a `{name}` event on {subject}"
    );
    assert_eq!(
        String::from_utf8_lossy(&serde_json::to_vec(&envelope).expect("an event encodes")),
        String::from_utf8_lossy(payload),
        "lanyard-proto writes the event it read back to the bytes on the wire"
    );
}

/// The query parameter `name` of a query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn standard_config(nats_url: &str, issuer: &str, data_dir: &std::path::Path) -> String {
    let (store, vault) = if crate::nats::jetstream_under_test() {
        // Daemons sharing JetStream must share the master key; each test has its own.
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .expect("random bytes");
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
        (
            "store = \"jetstream\"\n",
            format!("\n[vault]\nmaster_key = \"{key}\"\n"),
        )
    } else {
        ("", String::new())
    };
    format!(
        r#"{store}
data_dir = "{data}"

[nats]
url = "{nats_url}"

[[providers]]
id = "oidc"
kind = "oidc"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uris = ["http://app.test/callback", "http://app.test/other"]
issuer = "{issuer}"
allowed_algs = ["RS256", "ES256"]

[[providers]]
id = "github"
kind = "github"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uris = ["http://app.test/callback/github"]
base_url = "{issuer}"
api_url = "{issuer}/api"

[[providers]]
id = "panicky"
kind = "panicky"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uris = ["http://app.test/callback/panicky"]
issuer = "{issuer}"
{vault}"#,
        data = data_dir.display()
    )
}

fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
