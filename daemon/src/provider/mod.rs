//! Provider instances and their actors: everything between a command and an identity
//! provider. Only this module (through [`http`]) talks HTTP.

pub mod actor;
pub mod breaker;
pub mod http;
pub mod instance;
pub mod oidc;

pub use actor::{unknown_provider, InstanceSpec, Providers};
pub use instance::{CompleteArgs, Completed, Instance, LoginArgs, LoginStart};
