//! Lanyard's integration tests, one binary (one link of the daemon, axum and reqwest instead of
//! eleven): a module per area. Each test starts what it needs (a real `nats-server`, the fake
//! identity provider, a daemon in-process or as a process) from the test kit in `tests/src`.
//! `STORE_UNDER_TEST=jetstream` runs the same tests on the JetStream store.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a failure is the test failing.

mod admin;
mod admin_cli;
mod apps;
mod binding;
mod claims;
mod client;
mod cluster;
mod config_cli;
mod device;
mod hosted;
mod lives;
mod login;
mod nats_auth;
mod nats_edge;
mod ops;
mod properties;
mod providers;
mod reliability;
mod sessions;
mod state;
mod store;
mod store_copy;
mod tokens;
mod web_login;
