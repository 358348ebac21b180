//! The `lanyard` command's subcommands, one file each; `main.rs` parses the command line
//! and hands over.

pub(crate) mod admin;
pub(crate) mod events;
pub(crate) mod nats_auth;
pub(crate) mod plugin;
pub(crate) mod serve;
pub(crate) mod store;
