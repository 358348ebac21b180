//! Provider instances and their actors: everything between a command and an identity
//! provider. Only this module (through [`http`]) talks HTTP.
//!
//! - [`supervisor`]: keeps one actor per instance running, reconciled to the config file and
//!   the store's change feed; it alone writes the routing table.
//! - [`Providers`] (`handle.rs`): how the rest of the daemon reaches the actors.
//! - [`actor`]: one instance's changing state (discovery, JWKS, breaker, rate limit) and
//!   requests.
//! - [`instance`]: what an instance is built from and the network work of a login.

pub(crate) mod actor;
pub(crate) mod breaker;
mod handle;
pub(crate) mod http;
pub(crate) mod instance;
pub(crate) mod oidc;
pub mod plugin;
pub(crate) mod supervisor;

pub(crate) use handle::{ProviderHealth, Providers};
pub(crate) use instance::{CompleteArgs, Completed, Instance, InstanceSpec, LoginArgs};
pub(crate) use supervisor::RecordSpecs;
