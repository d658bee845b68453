//! tokenbroker's transports and commands over the core: the HTTP API ([`api`], served by
//! [`server`], over HTTPS with [`tls`]) and its reverse [`proxy`], both sending a token as
//! [`rendered`] once per token; the command line ([`cli`], [`commands`], [`exit`]) and the
//! client it uses to reach a running broker ([`client`]); the store the config names
//! ([`backend`]); and the self-contained [`demo`]. `observed` is the body wrapper through
//! which the server and the proxy watch their bodies' polls.
//!
//! Everything here depends on `tokenbroker-core`; nothing in the core depends on this
//! crate.

pub mod api;
pub mod backend;
pub mod cli;
pub mod client;
pub mod commands;
pub mod demo;
pub mod exit;
mod observed;
pub mod proxy;
pub mod rendered;
pub mod server;
pub mod tls;
