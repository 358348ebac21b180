//! Lanyard: an identity daemon that runs OAuth2 / OpenID Connect logins for other services
//! over NATS request-reply. See ARCHITECTURE.md for the map of this crate; the wire contract
//! (command bodies, error codes, subjects, events) is the `lanyard-proto` crate.
//!
//! `unsafe` is denied everywhere but in [`plugin`], the loader of provider libraries.

pub mod admin;
pub mod config;
mod daemon;
pub mod edge;
pub mod error;
pub mod events;
pub mod feed;
mod locks;
pub mod plugin;
pub mod provider;
pub mod service;
pub mod session;
pub mod store;
pub mod tokens;
pub mod vault;

pub use daemon::{open_store_kind, prepare, Daemon, Prepared, StartError};
