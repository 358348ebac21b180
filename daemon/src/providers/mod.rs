//! Provider instances and their actors: everything between a command and an identity
//! provider. Only this module (through [`http`]) talks HTTP.
//!
//! - [`supervisor`]: keeps one actor per instance running, reconciled to the config file and
//!   the store's change feed; it alone writes the routing table.
//! - [`Providers`] (`handle.rs`): how the rest of the daemon reaches the actors.
//! - [`actor`]: one instance's changing state (discovery, JWKS, breaker, rate limit) and
//!   requests.
//! - [`instance`]: what an instance is built from and the network work of a login.

pub mod actor;
pub mod breaker;
mod handle;
pub mod http;
pub mod instance;
pub mod oidc;
pub mod plugin;
pub mod supervisor;

pub use handle::{unknown_provider, ProviderHealth, Providers};
pub use instance::{
    CompleteArgs, Completed, Described, Instance, InstanceSpec, LoginArgs, LoginStart,
};
pub use supervisor::RecordSpecs;
