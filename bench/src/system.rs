//! The processes a run starts (daemons, the echo responder) and what it reads about them from /proc (RSS, CPU, the data directory's size).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use lanyard_tests::{FakeIdp, NatsServer};
use serde_json::Value;

use crate::{Figures, CALLER_TOKEN, CLIENT_ID, CLIENT_SECRET};

/// A child process killed on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a request; an error envelope is an error.
pub(crate) async fn call(
    client: &Client,
    subject: &str,
    body: Bytes,
    headers: Option<HeaderMap>,
) -> anyhow::Result<Value> {
    let message = match headers {
        Some(headers) => {
            client
                .request_with_headers(subject.to_owned(), headers, body)
                .await?
        }
        None => client.request(subject.to_owned(), body).await?,
    };
    let reply: Value = serde_json::from_slice(&message.payload)?;
    if let Some(error) = reply.get("error") {
        bail!("{subject}: {error}");
    }
    Ok(reply)
}

/// A request whose reply is only checked for success, by its error header (as the echo
/// baseline checks only its reply's length): the load generator then costs the same per
/// request for both, and the ratio measures the daemon rather than JSON parsing in the
/// generator, which shares the machine's cores with it.
pub(crate) async fn call_unparsed(
    client: &Client,
    subject: &str,
    body: Bytes,
) -> anyhow::Result<()> {
    let message = client.request(subject.to_owned(), body).await?;
    if let Some(error) = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error"))
    {
        bail!("{subject}: {}", error.as_str());
    }
    anyhow::ensure!(!message.payload.is_empty(), "{subject}: an empty reply");
    Ok(())
}

/// The browser at the fake provider: follows the authorization URL to the provider's
/// redirect and returns the callback's query string.
pub(crate) async fn browse(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let response = http.get(url).send().await?;
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("the provider did not redirect")?;
    Ok(url::Url::parse(location)?
        .query()
        .unwrap_or_default()
        .to_owned())
}

pub(crate) async fn wait_ready(
    client: &Client,
    subject: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            client.request(subject.to_owned(), Bytes::from_static(b"{}")),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{subject} did not answer within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) fn daemon_config(
    nats_url: &str,
    idp: &FakeIdp,
    data: &Path,
    prefix: &str,
    providers: usize,
) -> String {
    let mut config = format!(
        r#"data_dir = "{data}"
[nats]
url = "{url}"
subject_prefix = "{prefix}"
queue_group = "{prefix}"

[[callers]]
name = "bench"
token = "{CALLER_TOKEN}"
"#,
        data = data.display(),
        url = nats_url,
    );
    for i in 0..providers {
        let id = if i == 0 {
            "dev".to_owned()
        } else {
            format!("dev-{i}")
        };
        config.push_str(&format!(
            r#"
[[providers]]
id = "{id}"
kind = "oidc"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uris = ["http://localhost:3000/cb"]
issuer = "{issuer}"
store_tokens = true
token_readers = ["bench"]
"#,
            issuer = idp.issuer()
        ));
    }
    config
}

pub(crate) fn spawn_daemon(
    bin_dir: &Path,
    dir: &Path,
    name: &str,
    config: &str,
) -> anyhow::Result<Proc> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = Command::new(bin_dir.join("lanyard"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("LANYARD_LOG", "warn")
        .env_remove("LANYARD_CONFIG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start target/release/lanyard (run `make bench`, which builds it)")?;
    Ok(Proc(child))
}

/// Start-up to the first answered request, and resting RSS, with ten providers configured.
pub(crate) async fn idle(
    bin_dir: &Path,
    nats: &NatsServer,
    idp: &FakeIdp,
    dir: &Path,
) -> anyhow::Result<Figures> {
    let client = async_nats::connect(nats.url()).await?;
    let config = daemon_config(&nats.url(), idp, &dir.join("data-idle"), "idle", 10);
    let started = Instant::now();
    let daemon = spawn_daemon(bin_dir, dir, "idle", &config)?;
    wait_ready(&client, "idle.v1.jwks", Duration::from_secs(30)).await?;
    let ready = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_mb(daemon.0.id());
    drop(daemon);
    let figures = Figures {
        scenario: "idle, 10 providers".into(),
        seconds: ready.as_secs_f64(),
        daemon_peak_rss_mb: rss,
        note: format!(
            "start-up to first answered request {:.0} ms; RSS after 1 s idle",
            ready.as_secs_f64() * 1000.0
        ),
        ..Figures::default()
    };
    eprintln!("  {}: {}", figures.scenario, figures.note);
    Ok(figures)
}

/// Samples the daemon's RSS every 50 ms and its CPU time at both ends.
pub(crate) struct Sampler {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) task: tokio::task::JoinHandle<Option<f64>>,
    pub(crate) pids: Pids,
    pub(crate) before: [Option<u64>; 3],
    pub(crate) ticks: f64,
}

/// The processes whose CPU a scenario reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pids {
    pub(crate) daemon: u32,
    pub(crate) nats: u32,
    /// The echo responder, counted with the load generator.
    pub(crate) echo: u32,
}

impl Pids {
    /// Daemon, nats-server, load generator (this process and the echo responder) ticks.
    pub(crate) fn ticks(&self) -> [Option<u64>; 3] {
        let own = cpu_ticks(std::process::id());
        let echo = cpu_ticks(self.echo);
        [
            cpu_ticks(self.daemon),
            cpu_ticks(self.nats),
            own.zip(echo).map(|(a, b)| a + b),
        ]
    }
}

/// What a sampler saw: the daemon's peak RSS, and CPU seconds of the daemon, nats-server
/// and the load generator.
pub(crate) struct Sample {
    pub(crate) rss: Option<f64>,
    pub(crate) cpu: [Option<f64>; 3],
}

impl Sample {
    pub(crate) fn fill(&self, figures: &mut Figures) {
        figures.daemon_peak_rss_mb = self.rss;
        figures.daemon_cpu_seconds = self.cpu[0];
        figures.nats_cpu_seconds = self.cpu[1];
        figures.loadgen_cpu_seconds = self.cpu[2];
        if figures.requests > 0 {
            figures.daemon_cpu_us_per_request =
                self.cpu[0].map(|s| s * 1e6 / figures.requests as f64);
        }
    }
}

impl Sampler {
    pub(crate) fn start(pids: Pids, ticks: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let pid = pids.daemon;
        let task = tokio::spawn(async move {
            let mut peak: Option<f64> = None;
            while !flag.load(Ordering::Relaxed) {
                if let Some(rss) = rss_mb(pid) {
                    peak = Some(peak.map_or(rss, |p| p.max(rss)));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        });
        Self {
            stop,
            task,
            pids,
            before: pids.ticks(),
            ticks,
        }
    }

    pub(crate) async fn stop(self) -> Sample {
        let after = self.pids.ticks();
        self.stop.store(true, Ordering::Relaxed);
        let rss = self.task.await.ok().flatten();
        let mut cpu = [None; 3];
        for (i, slot) in cpu.iter_mut().enumerate() {
            if let (Some(b), Some(a)) = (self.before[i], after[i]) {
                *slot = Some(a.saturating_sub(b) as f64 / self.ticks);
            }
        }
        Sample { rss, cpu }
    }
}

/// The bytes of all files under `dir`.
pub(crate) fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_size(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub(crate) fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
