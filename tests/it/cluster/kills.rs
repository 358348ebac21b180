//! Killing a daemon, or a NATS node, under a steady load of logins: every login the daemons
//! acknowledged survives.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

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
///
/// Long because it owns the load loop and its bookkeeping (answered, failed, in flight) that the
/// kill tests read afterwards.
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
