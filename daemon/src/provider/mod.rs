//! Provider instances and their actors: everything between a command and an identity
//! provider. Only this module (through [`http`]) talks HTTP.
//!
//! - [`supervisor`]: keeps one actor per instance running, reconciled to the config file and
//!   the store's change feed; [`Providers`] is how the rest of the daemon reaches them.
//! - [`actor`]: one instance's changing state (discovery, JWKS, breaker, rate limit) and
//!   requests.
//! - [`instance`]: what an instance is built from and the network work of a login.

pub mod actor;
pub mod breaker;
pub mod http;
pub mod instance;
pub mod oidc;
pub mod supervisor;

pub use instance::{
    CompleteArgs, Completed, Described, Instance, InstanceSpec, LoginArgs, LoginStart,
};
pub use supervisor::{unknown_provider, ProviderHealth, Providers, RecordSpecs};
