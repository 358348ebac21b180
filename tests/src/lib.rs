//! Lanyard's test kit: a real `nats-server` on a free port, a fake identity provider that is a
//! real HTTP server speaking OAuth2 / OpenID Connect (and GitHub's API) with really signed
//! tokens, and a harness that runs the daemon in-process against both.

pub mod cluster;
pub mod harness;
pub mod idp;
pub mod nats;

pub use harness::{Reply, TestDaemon};
pub use idp::{FakeIdp, Knobs, Tamper, TestUser};
pub use nats::NatsServer;
