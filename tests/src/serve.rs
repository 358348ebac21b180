//! A `lanyard serve` process with its log in a file: for tests of signals and of what the
//! daemon logs (an in-process daemon logs to the test runner's output, which no test reads).

use std::time::Duration;

/// A running `lanyard serve`, killed on drop.
#[derive(Debug)]
pub struct ServeProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl ServeProcess {
    /// Starts `lanyard serve` on `config` (written to `{dir}/{name}.toml`), logging at
    /// `info` to `{dir}/{name}.log`.
    pub fn start(config: &str, dir: &std::path::Path, name: &str) -> Self {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).expect("the config file is written");
        let log = dir.join(format!("{name}.log"));
        let child = std::process::Command::new(crate::harness::lanyard_bin())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_remove("LANYARD_CONFIG")
            .env("LANYARD_LOG", "info")
            .stderr(std::fs::File::create(&log).expect("the log file is created"))
            .spawn()
            .expect("the lanyard binary runs (make test builds it)");
        Self { child, log }
    }

    /// Waits until the daemon logs that it serves.
    pub async fn wait_serving(&mut self) {
        let deadline = std::time::Instant::now() + crate::PATIENCE;
        while !self.log_text().contains("lanyard is serving") {
            assert!(
                self.exited().is_none(),
                "the daemon exited: {}",
                self.log_text()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "not serving: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (`TERM`, `INT`) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal}");
    }

    /// Waits for the process to exit and returns its log; the bound only catches a stop that
    /// never ends (the bug this guards against hung for good), it is no timing requirement.
    pub async fn wait_exit(&mut self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if self.exited().is_some() {
                return self.log_text();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not stop: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .try_wait()
            .expect("the daemon's status can be read")
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
