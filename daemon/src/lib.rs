//! Lanyard: an identity daemon that runs OAuth2 / OpenID Connect logins for other services
//! over NATS request-reply. See ARCHITECTURE.md for the map of this crate; the wire contract
//! (command bodies, error codes, subjects, events) is the `lanyard-proto` crate.
//!
//! `unsafe` is denied everywhere but in [`providers::plugin`], the loader of provider
//! libraries.

pub(crate) mod admin;
mod app;
pub(crate) mod applied;
pub(crate) mod callout;
pub mod config;
pub mod crypto;
pub mod edge;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod feed;
mod locks;
mod login;
pub(crate) mod login_state;
pub(crate) mod metrics;
pub(crate) mod provider_tokens;
pub mod providers;
pub(crate) mod service;
pub mod sessions;
pub mod store;
mod users;
mod web;

pub use app::{open_store_kind, prepare, Daemon, Prepared, StartError};
