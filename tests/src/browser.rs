//! Headless Chromium from Debian's packages (`scripts/install-deps.sh` installs it), for
//! tests of what a browser does: a page is opened and drives itself with its own script,
//! reporting what happened to the test's HTTP server; or the test drives it over the
//! DevTools protocol ([`DrivenBrowser`]), reading the page and clicking as a user would.

/// A headless Chromium showing one page, with a profile of its own (no cookies but the
/// page's), killed on drop.
#[derive(Debug)]
pub struct Browser {
    child: std::process::Child,
    _profile: tempfile::TempDir,
}

/// `$CHROMIUM`, else Debian's `/usr/bin/chromium`.
fn binary() -> std::path::PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), Into::into)
}

impl Browser {
    /// Opens `url`.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        Self::start(url, &[])
    }

    /// Opens `url` with `extra` command-line switches.
    fn start(url: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let profile = tempfile::tempdir()?;
        let child = std::process::Command::new(binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--window-size=900,600",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start {} (scripts/install-deps.sh installs Debian's chromium): {e}",
                    binary().display()
                )
            })?;
        Ok(Self {
            child,
            _profile: profile,
        })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium the test drives over the DevTools protocol (a WebSocket): it reads
/// the page and clicks its buttons as a user would. Killed on drop.
pub struct DrivenBrowser {
    _browser: Browser,
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl std::fmt::Debug for DrivenBrowser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenBrowser").finish_non_exhaustive()
    }
}

impl DrivenBrowser {
    /// Opens `url` in a Chromium that listens for DevTools on a port it picks (written to
    /// its profile's `DevToolsActivePort`), and connects to the page.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let browser = Browser::start(url, &["--remote-debugging-port=0"])?;
        let file = browser._profile.path().join("DevToolsActivePort");
        let deadline = std::time::Instant::now() + crate::PATIENCE;
        let page = loop {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "Chromium never offered DevTools"
            );
            if let Some(page) = Self::page_socket(&file).await {
                break page;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(page.as_str()).await?;
        Ok(Self {
            _browser: browser,
            socket,
            next_id: 0,
        })
    }

    /// The page's DevTools WebSocket URL, once Chromium wrote its port and lists the page.
    async fn page_socket(file: &std::path::Path) -> Option<String> {
        let port = std::fs::read_to_string(file).ok()?;
        let port = port.lines().next()?.trim().to_owned();
        let list: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        list.as_array()?
            .iter()
            .find(|target| target["type"] == "page")
            .and_then(|target| target["webSocketDebuggerUrl"].as_str())
            .map(str::to_owned)
    }

    /// Sends a DevTools command and returns its result (or the protocol's error).
    pub async fn call(
        &mut self,
        method: &str,
        params: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        use futures::{SinkExt, StreamExt};
        self.next_id += 1;
        let id = self.next_id;
        let message = serde_json::json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::text(
                message.to_string(),
            ))
            .await?;
        loop {
            let next = tokio::time::timeout(crate::PATIENCE, self.socket.next())
                .await
                .map_err(|_| anyhow::anyhow!("{method} got no answer"))?
                .ok_or_else(|| anyhow::anyhow!("DevTools closed"))??;
            let Ok(text) = next.to_text() else { continue };
            let Ok(reply) = serde_json::from_str::<serde_json::Value>(text) else {
                continue;
            };
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    anyhow::bail!("{method}: {error}");
                }
                return Ok(reply["result"].clone());
            }
        }
    }

    /// The value of a JavaScript `expression` in the page.
    pub async fn evaluate(&mut self, expression: &str) -> anyhow::Result<serde_json::Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({ "expression": expression, "returnByValue": true }),
            )
            .await?;
        anyhow::ensure!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        Ok(result["result"]["value"].clone())
    }

    /// Waits (up to [`PATIENCE`](crate::PATIENCE)) until `expression` is true in the page;
    /// a page that is loading meanwhile is asked again.
    pub async fn wait_for(&mut self, expression: &str) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + crate::PATIENCE;
        loop {
            if let Ok(serde_json::Value::Bool(true)) = self.evaluate(expression).await {
                return Ok(());
            }
            let at = self.evaluate("location.href").await.unwrap_or_default();
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "never true: {expression} (the page is at {at})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A PNG of what the page shows now.
    pub async fn screenshot(&mut self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine;
        let shot = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({ "format": "png" }),
            )
            .await?;
        let data = shot["data"].as_str().unwrap_or_default();
        Ok(base64::engine::general_purpose::STANDARD.decode(data)?)
    }
}
