//! Headless Chromium from Debian's packages (`scripts/install-deps.sh` installs it), for
//! tests of what a browser does: a page is opened and drives itself with its own script,
//! reporting what happened to the test's HTTP server; the test waits for that report.

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
        let profile = tempfile::tempdir()?;
        let child = std::process::Command::new(binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
            ])
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
