//! Scale-out: several daemons on one JetStream store, on a three-node NATS cluster with
//! replicated (R3) buckets. A login started on one daemon completes on another; a daemon or a
//! NATS node killed under load loses no acknowledged login; a token.get storm spread over two
//! daemons makes one refresh at the provider. `coherence`: a change to shared state made
//! through one daemon is served by every daemon.

mod coherence;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    let reply = tokio::time::timeout(
        timeout,
        lanyard_tests::patient_request(
            client,
            format!("{callback_prefix}.v1.callback"),
            json!({ "query": query }).to_string().into(),
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
    // The same refresh token used again, on the other daemon, is a replay: the family goes.
    let replayed = request(
        &client,
        "b.v1.session.refresh".into(),
        json!({ "refresh_token": reply["session"]["refresh_token"] }),
    )
    .await;
    assert_eq!(replayed["error"]["code"], "unauthorized", "{replayed}");
    // A state is single-use across daemons too.
    let started = request(&client, "a.v1.login".into(), json!({ "provider": "oidc" })).await;
    let query = idp
        .approve(started["authorization_url"].as_str().unwrap())
        .await
        .unwrap();
    let first = request(&client, "b.v1.callback".into(), json!({ "query": query })).await;
    assert!(first.get("error").is_none(), "{first}");
    let again = request(&client, "a.v1.callback".into(), json!({ "query": query })).await;
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

/// A `lanyard serve` process, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_daemon(config: &str, dir: &Path, name: &str) -> Process {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Process(
        Command::new(lanyard_bin())
            .args(["serve", "--config"])
            .arg(&path)
            .env("LANYARD_LOG", "warn")
            .env_remove("LANYARD_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Waits until `count` daemons answer NATS micro's ping (each instance answers once).
async fn wait_serving(client: &async_nats::Client, count: usize, dir: &Path) {
    use futures::StreamExt;
    let deadline = Instant::now() + lanyard_tests::PATIENCE;
    loop {
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.unwrap();
        client
            .publish_with_reply("$SRV.PING.lanyard", inbox, "".into())
            .await
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        let window = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(window);
        loop {
            tokio::select! {
                Some(reply) = replies.next() => {
                    let body: Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
                    seen.insert(body["id"].to_string());
                }
                () = &mut window => break,
            }
        }
        if seen.len() >= count {
            return;
        }
        if Instant::now() > deadline {
            print_errors(dir, "d0");
            print_errors(dir, "d1");
            panic!("{} of {count} daemons serve", seen.len());
        }
    }
}

/// Logins acknowledged while something fails, and how many came after the failure.
struct Load {
    acknowledged: Vec<Value>,
    after_fault: usize,
    failed: usize,
    /// Why attempts failed, and how often.
    reasons: std::collections::BTreeMap<String, usize>,
    /// From the fault to the first login acknowledged after it.
    recovered_in: Option<Duration>,
}

/// Logins acknowledged that show logins flow.
const FLOWING: usize = 10;

/// Waits at least `least`, then until `done` holds (checked every 50 ms), at most a minute
/// more.
async fn wait_for(least: Duration, done: impl Fn() -> bool) {
    tokio::time::sleep(least).await;
    let cap = Instant::now() + Duration::from_secs(60);
    while !done() && Instant::now() < cap {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `workers` login loops against the shared queue group for at least `total`, applying
/// `fault` at `fault_at` or once logins flow, and going on until they flow again.
async fn under_load(
    client: &async_nats::Client,
    idp: &FakeIdp,
    workers: usize,
    fault_at: Duration,
    total: Duration,
    fault: impl FnOnce(),
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let faulted = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let after = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fault_time: Arc<Mutex<Option<Instant>>> = Arc::default();
    let reasons: Arc<Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
    let recovered: Arc<Mutex<Option<Duration>>> = Arc::default();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, idp, stop, faulted) =
                (client.clone(), idp.clone(), stop.clone(), faulted.clone());
            let (acknowledged, after, failed) =
                (acknowledged.clone(), after.clone(), failed.clone());
            let (fault_time, recovered, reasons) =
                (fault_time.clone(), recovered.clone(), reasons.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // A short limit: a login stuck on a dead daemon or node counts as
                    // failed, and the worker goes on.
                    let limit = Duration::from_secs(5);
                    match login_across(&client, &idp, "lanyard", "lanyard", limit).await {
                        Ok(reply) => {
                            if faulted.load(Ordering::Relaxed) {
                                after.fetch_add(1, Ordering::Relaxed);
                                let at = fault_time.lock().unwrap().map(|t| t.elapsed());
                                recovered
                                    .lock()
                                    .unwrap()
                                    .get_or_insert(at.unwrap_or_default());
                            }
                            acknowledged.lock().unwrap().push(reply);
                        }
                        Err(reason) => {
                            let reason = serde_json::from_str::<Value>(&reason)
                                .ok()
                                .and_then(|v| {
                                    let code = v["error"]["code"].as_str()?;
                                    let message = v["error"]["message"].as_str().unwrap_or("");
                                    Some(format!("{code}: {message}"))
                                })
                                .unwrap_or(reason);
                            *reasons.lock().unwrap().entry(reason).or_default() += 1;
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .collect();
    // The fault comes once logins flow (however long a loaded machine takes to get there),
    // and the load goes on until logins flow again after it: the times are the least each
    // phase lasts, the counts what each must see, and the caps only stop a test that hangs.
    let count = |n: &Arc<Mutex<Vec<Value>>>| n.lock().unwrap().len();
    wait_for(fault_at, || count(&acknowledged) >= FLOWING).await;
    fault();
    *fault_time.lock().unwrap() = Some(Instant::now());
    faulted.store(true, Ordering::Relaxed);
    wait_for(total - fault_at, || {
        after.load(Ordering::Relaxed) >= FLOWING
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    let recovered_in = *recovered.lock().unwrap();
    let reasons = std::mem::take(&mut *reasons.lock().unwrap());
    Load {
        acknowledged,
        after_fault: after.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        recovered_in,
        reasons,
    }
}

/// The distinct error lines of a daemon's log, for the test's output.
fn print_errors(dir: &Path, name: &str) {
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for line in log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN") || l.starts_with("lanyard:"))
    {
        let key: String = line.chars().take(300).collect();
        *seen.entry(key).or_default() += 1;
    }
    for (line, count) in seen {
        eprintln!("  {name} ×{count}: {line}");
    }
}

/// Every acknowledged login still has its user, identity and session.
async fn assert_all_kept(client: &async_nats::Client, load: &Load) {
    for reply in &load.acknowledged {
        let user_id = &reply["user"]["id"];
        let user = request(
            client,
            "lanyard.v1.user.get".into(),
            json!({ "user_id": user_id }),
        )
        .await;
        assert_eq!(user["user"]["id"], *user_id, "a lost user: {user}");
        assert_eq!(
            user["user"]["identities"][0]["provider"], "oidc",
            "a lost identity: {user}"
        );
        let claims = request(
            client,
            "lanyard.v1.session.verify".into(),
            json!({ "token": reply["session"]["access_token"] }),
        )
        .await;
        assert_eq!(claims["sub"], *user_id, "a lost session: {claims}");
    }
}

#[tokio::test]
async fn killing_a_daemon_under_load_loses_no_acknowledged_login() {
    let Some(_turn) = once_only().await else {
        return;
    };
    let cluster = NatsCluster::start(3).await.unwrap();
    let idp = FakeIdp::start(CLIENT_ID, CLIENT_SECRET).await.unwrap();
    let key = master_key();
    let dir = tempfile::tempdir().unwrap();
    let mut daemons: Vec<Option<Process>> = (0..2)
        .map(|i| {
            let name = format!("d{i}");
            let config = config(
                &cluster.url(),
                &idp.issuer(),
                &dir.path().join(&name),
                "lanyard",
                &key,
            );
            Some(spawn_daemon(&config, dir.path(), &name))
        })
        .collect();
    let client = async_nats::connect(cluster.urls()).await.unwrap();
    wait_serving(&client, 2, dir.path()).await;

    let load = under_load(
        &client,
        &idp,
        8,
        Duration::from_millis(1500),
        Duration::from_secs(4),
        || {
            // SIGKILL, mid-request for some workers.
            daemons[0].take();
        },
    )
    .await;
    eprintln!(
        "daemon killed: {} logins acknowledged ({} after the kill, the first {:?} after it), \
         {} attempts failed: {:?}",
        load.acknowledged.len(),
        load.after_fault,
        load.recovered_in,
        load.failed,
        load.reasons
    );
    print_errors(dir.path(), "d1");
    assert!(load.after_fault > 0, "the other daemon carried on");
    assert_all_kept(&client, &load).await;
    drop(daemons);
}

#[tokio::test]
async fn killing_a_nats_node_under_load_loses_no_acknowledged_login() {
    let Some(_turn) = once_only().await else {
        return;
    };
    let mut cluster = NatsCluster::start(3).await.unwrap();
    let idp = FakeIdp::start(CLIENT_ID, CLIENT_SECRET).await.unwrap();
    let key = master_key();
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let daemons: Vec<Process> = (0..2)
        .map(|i| {
            let name = format!("d{i}");
            let config = config(
                &url,
                &idp.issuer(),
                &dir.path().join(&name),
                "lanyard",
                &key,
            );
            spawn_daemon(&config, dir.path(), &name)
        })
        .collect();
    let client = async_nats::connect(cluster.urls()).await.unwrap();
    wait_serving(&client, 2, dir.path()).await;

    let cluster_ref = &mut cluster;
    let load = under_load(
        &client,
        &idp,
        8,
        Duration::from_millis(1500),
        Duration::from_secs(16),
        || {
            // The first node goes, with whatever it led.
            cluster_ref.kill(0);
        },
    )
    .await;
    eprintln!(
        "node killed: {} logins acknowledged ({} after the kill, the first {:?} after it), \
         {} attempts failed: {:?}",
        load.acknowledged.len(),
        load.after_fault,
        load.recovered_in,
        load.failed,
        load.reasons
    );
    print_errors(dir.path(), "d0");
    assert!(
        load.after_fault > 0,
        "the daemons carried on with two nodes"
    );
    assert_all_kept(&client, &load).await;
    // The node comes back and catches up; everything is still there.
    cluster.restart(0).await.unwrap();
    assert_all_kept(&client, &load).await;
    drop(daemons);
}
