//! Lanyard's test kit: a real `nats-server` on a free port, a fake identity provider that is a
//! real HTTP server speaking OAuth2 / OpenID Connect (and GitHub's API) with really signed
//! tokens, and a harness that runs the daemon in-process against both.

pub mod cluster;
pub mod harness;
pub mod idp;
pub mod nats;

pub use harness::{Reply, TestDaemon};
pub use idp::{FakeIdp, Gate, Knobs, Tamper, TestUser};
pub use nats::NatsServer;

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
