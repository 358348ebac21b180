//! Lanyard's test kit: a real `nats-server` on a free port, a fake identity provider that is a
//! real HTTP server speaking OAuth2 / OpenID Connect (and GitHub's API) with really signed
//! tokens, and a harness that runs the daemon in-process against both.

pub mod browser;
pub mod cluster;
pub mod harness;
pub mod idp;
pub mod nats;
pub mod serve;

pub use harness::{Approved, Reply, TestDaemon};
pub use idp::{FakeIdp, Gate, Knobs, Tamper, TestUser};
pub use nats::NatsServer;
pub use serve::ServeProcess;

/// How long a test waits for something that must happen, however loaded the machine: it
/// bounds a hang, nothing else, so it is generous. Tests wait for the event itself and never
/// measure how long it took.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// A NATS request that waits up to [`PATIENCE`] for its reply (the client's own default, 10 s,
/// is a guess about a quiet machine).
pub async fn patient_request(
    client: &async_nats::Client,
    subject: impl Into<String>,
    body: bytes::Bytes,
) -> Result<async_nats::Message, async_nats::RequestError> {
    let request = async_nats::Request::new()
        .payload(body)
        .timeout(Some(PATIENCE));
    client.send_request(subject.into(), request).await
}

/// Every file under `dirs` with its contents, for tests that scan the daemon's state for
/// secrets. nats-server writes some files beside the real ones and renames them into place
/// (`meta.inf.tmp`), so a file listed a moment ago may be gone: such a file is skipped (what
/// it held is in the file it became).
pub fn files_under(dirs: &[std::path::PathBuf]) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut stack = dirs.to_vec();
    let mut files = Vec::new();
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if gone(&e) => continue,
            Err(e) => panic!("cannot list {}: {e}", dir.display()),
        };
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) if gone(&e) => continue,
                Err(e) => panic!("cannot list {}: {e}", dir.display()),
            };
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            match std::fs::read(&path) {
                Ok(bytes) => files.push((path, bytes)),
                Err(e) if gone(&e) => {}
                Err(e) => panic!("cannot read {}: {e}", path.display()),
            }
        }
    }
    files
}

/// Whether `needle` occurs anywhere in `hay`.
pub fn holds(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Fails the test if any file under `dirs` holds one of `secrets` (a description and the
/// bytes), and returns how many bytes it scanned (so a test can check it scanned something).
/// The vault's dev-mode key file is skipped: holding the master key is its job.
pub fn assert_not_on_disk(dirs: &[std::path::PathBuf], secrets: &[(&str, &[u8])]) -> usize {
    let mut scanned = 0;
    for (path, bytes) in files_under(dirs) {
        if path.file_name() == Some(std::ffi::OsStr::new(lanyard::crypto::DEV_KEY_FILE)) {
            continue;
        }
        scanned += bytes.len();
        for (what, secret) in secrets {
            assert!(!holds(&bytes, secret), "{} holds {what}", path.display());
        }
    }
    scanned
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_disk_scan_finds_a_secret_in_a_nested_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("db/blob"), b"...the-secret...").unwrap();
        let dirs = [dir.path().to_owned()];
        assert!(super::assert_not_on_disk(&dirs, &[("x", b"absent")]) > 0);
        let found = std::panic::catch_unwind(|| {
            super::assert_not_on_disk(&dirs, &[("the secret", b"the-secret")])
        });
        assert!(found.is_err());
    }
}
