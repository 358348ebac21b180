//! Provider instances and their actors: everything between a command and an identity
//! provider. Only this module (through `http.rs`) talks HTTP.
//!
//! - `supervisor.rs`: keeps one actor per instance running, reconciled to the config file
//!   and the store's change feed; it alone writes the routing table.
//! - `handle.rs`: `Providers`, how the rest of the daemon reaches the actors.
//! - `actor.rs`: one instance's changing state (discovery, JWKS, breaker, rate limit) and
//!   requests.
//! - `instance/`: what an instance is built from and the network work of a login.
//! - [`plugin`]: the loader of provider libraries (the one place `unsafe` is allowed).

pub(crate) mod actor;
pub(crate) mod breaker;
mod handle;
pub(crate) mod http;
pub(crate) mod instance;
pub(crate) mod oidc;
pub mod plugin;
pub(crate) mod supervisor;

pub(crate) use handle::{ProviderHealth, Providers};
pub(crate) use instance::{
    CompleteArgs, Completed, DevicePoll, Instance, InstanceSpec, LoginArgs, Ticket,
};
pub(crate) use supervisor::RecordSpecs;
