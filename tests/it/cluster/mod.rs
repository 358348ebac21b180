//! Scale-out: several daemons on one JetStream store, on a three-node NATS cluster with
//! replicated (R3) buckets. A login started on one daemon completes on another; a daemon or a
//! NATS node killed under load loses no acknowledged login; a token.get storm spread over two
//! daemons makes one refresh at the provider. `coherence`: a change to shared state made
//! through one daemon is served by every daemon.

mod coherence;
mod device;
mod kills;

use std::path::Path;
use std::time::{Duration, Instant};

use lanyard::config::Config;
use lanyard::Daemon;
use lanyard_tests::cluster::NatsCluster;
use lanyard_tests::harness::{lanyard_bin, CLIENT_ID, CLIENT_SECRET};
use lanyard_tests::FakeIdp;
use serde_json::{json, Value};

/// A daemon's config: the JetStream store with R3 buckets, one OIDC instance that stores
/// tokens for any caller.
fn config(url: &str, issuer: &str, data: &Path, prefix: &str, key: &str) -> String {
    format!(
        r#"store = "jetstream"
data_dir = "{data}"

[vault]
master_key = "{key}"

[jetstream]
replicas = 3

[sessions]
# Long enough that a busy machine stays within it: a reuse on another daemon is answered.
refresh_reuse_grace_secs = 300

[nats]
url = "{url}"
subject_prefix = "{prefix}"
queue_group = "{prefix}"

[[providers]]
id = "oidc"
kind = "oidc"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uris = ["http://app.test/callback"]
issuer = "{issuer}"
allowed_algs = ["RS256", "ES256"]
store_tokens = true
token_readers = ["*"]
device_flow = true
"#,
        data = data.display()
    )
}

fn master_key() -> String {
    use base64::Engine;
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).unwrap();
    base64::engine::general_purpose::STANDARD.encode(key)
}

async fn request(client: &async_nats::Client, subject: String, body: Value) -> Value {
    let reply = lanyard_tests::patient_request(client, subject.clone(), body.to_string().into())
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&reply.payload).unwrap()
}

/// A whole login: started through `start_prefix`, called back through `callback_prefix`,
/// each request given up after `timeout`.
async fn login_across(
    client: &async_nats::Client,
    idp: &FakeIdp,
    start_prefix: &str,
    callback_prefix: &str,
    timeout: Duration,
) -> Result<Value, String> {
    let started = tokio::time::timeout(
        timeout,
        lanyard_tests::patient_request(
            client,
            format!("{start_prefix}.v1.login"),
            json!({ "provider": "oidc" }).to_string().into(),
        ),
    )
    .await
    .map_err(|_| "login timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let started: Value = serde_json::from_slice(&started.payload).map_err(|e| e.to_string())?;
    let url = started["authorization_url"]
        .as_str()
        .ok_or_else(|| started.to_string())?;
    let query = idp.approve(url).await.map_err(|e| e.to_string())?;
    let callback = json!({ "query": query, "binding": started["binding"] });
    let reply = tokio::time::timeout(
        timeout,
        lanyard_tests::patient_request(
            client,
            format!("{callback_prefix}.v1.callback"),
            callback.to_string().into(),
        ),
    )
    .await
    .map_err(|_| "callback timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let reply: Value = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
    if reply.get("error").is_some() {
        return Err(reply.to_string());
    }
    Ok(reply)
}

/// These tests always run on the JetStream store; `make test`'s second pass, which reruns
/// the suite on that store, skips them. The others take their turn: one cluster at a time
/// (three nats-servers, daemons and load on two cores are enough for any machine; two at
/// once made elections crawl).
async fn once_only() -> Option<tokio::sync::MutexGuard<'static, ()>> {
    static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if lanyard_tests::nats::jetstream_under_test() {
        return None;
    }
    Some(ONE_CLUSTER.lock().await)
}

/// A three-node cluster, the provider, and two in-process daemons sharing the buckets: `a`
/// on node 1 and subjects `a.v1.*`, `b` on node 2 and `b.v1.*`, so a test picks which one
/// serves each step.
struct TwoDaemons {
    cluster: NatsCluster,
    idp: FakeIdp,
    a: Daemon,
    b: Daemon,
    _dir: tempfile::TempDir,
}

impl TwoDaemons {
    async fn start() -> Self {
        let cluster = NatsCluster::start(3).await.unwrap();
        let idp = FakeIdp::start(CLIENT_ID, CLIENT_SECRET).await.unwrap();
        let key = master_key();
        let dir = tempfile::tempdir().unwrap();
        let daemon = |node: usize, prefix: &str| {
            config(
                &cluster.node_url(node),
                &idp.issuer(),
                &dir.path().join(prefix),
                prefix,
                &key,
            )
        };
        let a = in_process(&daemon(0, "a")).await;
        let b = in_process(&daemon(1, "b")).await;
        Self {
            cluster,
            idp,
            a,
            b,
            _dir: dir,
        }
    }
}

async fn in_process(config: &str) -> Daemon {
    Daemon::start(Config::from_toml(config).unwrap())
        .await
        .unwrap()
}

/// Long because starting a three-node cluster is the cost: one cluster serves every
/// cross-daemon check of a login and its session (verify, the reuse grace, single use).
#[tokio::test]
async fn a_login_started_on_one_daemon_completes_on_another() {
    let Some(_turn) = once_only().await else {
        return;
    };
    let TwoDaemons {
        cluster,
        idp,
        a,
        b,
        _dir,
    } = TwoDaemons::start().await;
    let client = async_nats::connect(cluster.node_url(2)).await.unwrap();

    let reply = login_across(&client, &idp, "a", "b", lanyard_tests::PATIENCE)
        .await
        .unwrap();
    let user_id = reply["user"]["id"].clone();
    // Each daemon sees the user, verifies the session the other signed, and refreshes it.
    let token = reply["session"]["access_token"].clone();
    for prefix in ["a", "b"] {
        let user = request(
            &client,
            format!("{prefix}.v1.user.get"),
            json!({ "user_id": user_id }),
        )
        .await;
        assert_eq!(user["user"]["id"], user_id, "{user}");
        let claims = request(
            &client,
            format!("{prefix}.v1.session.verify"),
            json!({ "token": token }),
        )
        .await;
        assert_eq!(claims["sub"], user_id, "{claims}");
    }
    let refreshed = request(
        &client,
        "a.v1.session.refresh".into(),
        json!({ "refresh_token": reply["session"]["refresh_token"] }),
    )
    .await;
    assert!(refreshed["access_token"].is_string(), "{refreshed}");
    // The same refresh token again, on the other daemon, within the reuse grace (another
    // tab): the same successor, from the derivation every daemon shares, and a fresh
    // access token of the same session.
    let repeated = request(
        &client,
        "b.v1.session.refresh".into(),
        json!({ "refresh_token": reply["session"]["refresh_token"] }),
    )
    .await;
    assert_eq!(
        repeated["session"]["refresh_token"], refreshed["session"]["refresh_token"],
        "{repeated}"
    );
    let claims = request(
        &client,
        "a.v1.session.verify".into(),
        json!({ "token": repeated["session"]["access_token"] }),
    )
    .await;
    assert_eq!(claims["sub"], user_id, "{claims}");
    // The successor rotates once, on either daemon.
    let next = request(
        &client,
        "a.v1.session.refresh".into(),
        json!({ "refresh_token": repeated["session"]["refresh_token"] }),
    )
    .await;
    assert!(next["session"]["refresh_token"].is_string(), "{next}");
    assert_ne!(
        next["session"]["refresh_token"],
        repeated["session"]["refresh_token"]
    );
    // A state is single-use across daemons too: of callbacks racing on both, one reaches
    // the provider and succeeds.
    idp.set_user(lanyard_tests::TestUser::from_email("raced@example.test"));
    let started = request(&client, "a.v1.login".into(), json!({ "provider": "oidc" })).await;
    let query = idp
        .approve(started["authorization_url"].as_str().unwrap())
        .await
        .unwrap();
    let callback = json!({ "query": query, "binding": started["binding"] });
    let tokens = idp.token_requests();
    let race = (0..20).map(|i| {
        let prefix = if i % 2 == 0 { "a" } else { "b" };
        request(&client, format!("{prefix}.v1.callback"), callback.clone())
    });
    let replies = futures::future::join_all(race).await;
    let ok = replies.iter().filter(|r| r.get("error").is_none()).count();
    let refused = replies
        .iter()
        .filter(|r| r["error"]["code"] == "invalid_state")
        .count();
    assert_eq!((ok, refused), (1, 19), "{replies:?}");
    assert_eq!(idp.token_requests() - tokens, 1, "one token request");
    let again = request(&client, "a.v1.callback".into(), callback).await;
    assert_eq!(again["error"]["code"], "invalid_state", "{again}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_token_get_storm_over_two_daemons_refreshes_once() {
    let Some(_turn) = once_only().await else {
        return;
    };
    let TwoDaemons {
        cluster,
        idp,
        a,
        b,
        _dir,
    } = TwoDaemons::start().await;
    let client = async_nats::connect(cluster.urls()).await.unwrap();
    idp.set(|k| k.expires_in = Some(0));
    let reply = login_across(&client, &idp, "a", "a", lanyard_tests::PATIENCE)
        .await
        .unwrap();
    let user_id = reply["user"]["id"].clone();
    // From here the provider is slow and hands out long-lived tokens.
    idp.set(|k| {
        k.expires_in = Some(3600);
        k.delay = Duration::from_millis(300);
    });
    let storm = (0..60).map(|i| {
        let client = client.clone();
        let prefix = if i % 2 == 0 { "a" } else { "b" };
        let user_id = user_id.clone();
        async move {
            request(
                &client,
                format!("{prefix}.v1.token.get"),
                json!({ "user_id": user_id, "provider": "oidc" }),
            )
            .await
        }
    });
    let replies = futures::future::join_all(storm).await;
    let tokens: std::collections::HashSet<String> = replies
        .iter()
        .map(|r| {
            r["access_token"]
                .as_str()
                .unwrap_or_else(|| panic!("{r}"))
                .to_owned()
        })
        .collect();
    assert_eq!(idp.refresh_requests(), 1, "one refresh at the provider");
    assert_eq!(tokens.len(), 1, "every caller got the refreshed token");
    a.shutdown().await;
    b.shutdown().await;
}
