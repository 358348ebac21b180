//! Starts a real `nats-server` on a free loopback port and stops it on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server child process.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
    /// JetStream's storage when the suite runs on the JetStream store; kept across restarts.
    jetstream: Option<std::sync::Arc<tempfile::TempDir>>,
    /// The nats-server binary, kept for restarts.
    binary: PathBuf,
    /// The port, held while the server is stopped (see [`PortReservation`]).
    reserved: Option<PortReservation>,
}

/// Whether the suite runs on the JetStream store (`STORE_UNDER_TEST=jetstream`, set by
/// `make test` for its second pass) rather than sled.
pub fn jetstream_under_test() -> bool {
    std::env::var("STORE_UNDER_TEST").is_ok_and(|v| v == "jetstream")
}

impl NatsServer {
    /// Starts nats-server and waits until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts nats-server with extra arguments (auth, a config file).
    pub fn start_with(args: &[&str]) -> anyhow::Result<Self> {
        let jetstream = if jetstream_under_test() {
            Some(std::sync::Arc::new(tempfile::tempdir()?))
        } else {
            None
        };
        Self::spawn(binary(), args, None, jetstream)
    }

    /// Starts a nats-server that can host JetStream streams and buckets (2.10 or newer:
    /// `$JETSTREAM_NATS_SERVER`, which `make test` points at one, else as `start_with`).
    pub fn start_jetstream(args: &[&str]) -> anyhow::Result<Self> {
        let jetstream = if jetstream_under_test() {
            Some(std::sync::Arc::new(tempfile::tempdir()?))
        } else {
            None
        };
        Self::spawn(jetstream_binary(), args, None, jetstream)
    }

    /// Starts nats-server without JetStream even when the suite runs on the JetStream store
    /// (for tests of something else that JetStream would complicate, such as operator mode,
    /// where accounts must be granted JetStream in their JWTs); such a test runs on sled.
    pub fn start_plain(args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(binary(), args, None, None)
    }

    /// Starts a given nats-server binary (a particular version) with `args`, on a port it
    /// picks, without JetStream unless `args` ask for it.
    pub fn start_binary(binary: &std::path::Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(binary.to_path_buf(), args, None, None)
    }

    /// Stops the server (an outage); `restart` brings it back on the same port, which nobody
    /// else can take meanwhile.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.reserved.is_none() {
            self.reserved = PortReservation::hold(self.port);
        }
    }

    /// Stops the server and starts it again on the same port with the same arguments, as an
    /// operator restarting NATS would.
    pub fn restart(&mut self, args: &[&str]) -> anyhow::Result<()> {
        self.stop();
        // The reservation goes with the old value, once the new server holds the port.
        let next = Self::spawn(
            self.binary.clone(),
            args,
            Some(self.port),
            self.jetstream.clone(),
        )?;
        *self = next;
        Ok(())
    }

    fn spawn(
        binary: PathBuf,
        args: &[&str],
        port: Option<u16>,
        jetstream: Option<std::sync::Arc<tempfile::TempDir>>,
    ) -> anyhow::Result<Self> {
        // By default the server picks its own port (`-p -1`) and reports it in a ports file,
        // so parallel tests can never race for the same port.
        let dir = tempfile::tempdir()?;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut command = Command::new(&binary);
        command.args(["-a", "127.0.0.1", "-p", &port_arg]);
        if let Some(dir) = &jetstream {
            // Before the test's own arguments, which may name another store directory.
            command
                .arg("--jetstream")
                .arg("--store_dir")
                .arg(dir.path());
        }
        let mut child = command
            .args(args)
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start nats-server (is it installed?): {e}"))?;
        let ports_file = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + crate::PATIENCE;
        let port = loop {
            if let Some(port) = read_port(&ports_file) {
                break port;
            }
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                let _ = child.kill();
                anyhow::bail!("nats-server did not report a port");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(Self {
            child,
            port,
            _dir: dir,
            jetstream,
            binary,
            reserved: None,
        })
    }

    /// Where JetStream keeps its data, when the suite runs on the JetStream store.
    pub fn jetstream_dir(&self) -> Option<&std::path::Path> {
        self.jetstream.as_deref().map(tempfile::TempDir::path)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The WebSocket listener's URL (`ws://…`), when the server's config has one (its
    /// `port: -1` is picked by the server and reported in the ports file).
    pub fn websocket_url(&self) -> Option<String> {
        let ports = self
            ._dir
            .path()
            .join(format!("nats-server_{}.ports", self.child.id()));
        let text = std::fs::read_to_string(ports).ok()?;
        let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
        ports["websocket"][0].as_str().map(str::to_owned)
    }

    /// The server's process id (the benchmark samples its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$JETSTREAM_NATS_SERVER` (a 2.10+ server for JetStream features), else [`binary`].
pub fn jetstream_binary() -> PathBuf {
    std::env::var_os("JETSTREAM_NATS_SERVER").map_or_else(binary, PathBuf::from)
}

/// `$NATS_SERVER`, else `nats-server` on the PATH, else Debian's `/usr/sbin/nats-server`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nats-server"))
            .find(|p| p.exists())
    });
    on_path.unwrap_or(sbin)
}

fn read_port(ports_file: &std::path::Path) -> Option<u16> {
    let text = std::fs::read_to_string(ports_file).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = ports["nats"][0].as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A loopback port bound but not listening, with `SO_REUSEADDR`: connecting to it is
/// refused, as to a stopped server; the kernel gives it to nobody else (neither to a bind to
/// port 0 nor as a connection's local port), yet a nats-server (whose listener sets
/// `SO_REUSEADDR` too) can bind it. Parallel tests pick free ports all the time; a server's
/// port left unheld while it is down, or between choosing it and starting the server, could
/// be taken by one of them. (Linux only: elsewhere nothing is held.)
#[derive(Debug)]
pub struct PortReservation {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl PortReservation {
    /// Holds `port` (0: one the kernel picks), or `None` when it cannot be held.
    pub fn hold(port: u16) -> Option<Self> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.set_reuseaddr(true).ok()?;
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .ok()?;
        let port = socket.local_addr().ok()?.port();
        Some(Self {
            _socket: socket,
            port,
        })
    }
}
