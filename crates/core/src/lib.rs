//! The broker core: everything tokenbroker knows about identities and their tokens, and
//! nothing about how consumers reach it.
//!
//! - [`config`] reads and validates `tokenbroker.toml` into one [`Config`].
//! - [`issuer`] talks to the token issuers (the providers' login and token endpoints).
//! - [`slot`] owns one provider's current token: single-flight issuance, refresh-ahead,
//!   generation-aware invalidation and backoff.
//! - [`broker`] holds a slot per provider and [`access`] decides which client key reaches which.
//! - [`store`] is the boundary to durable state (backends live in `tokenbroker-store`),
//!   [`seal`] encrypts every secret before it crosses it, and [`identity`] stamps each token
//!   with the identity it was obtained for.
//! - [`tls`] is the trust the broker's own TLS clients share (roots, client setup).
//!
//! The HTTP API, the proxy and the CLI live in the `tokenbroker` crate and depend on this
//! one; this crate depends on no server, no CLI and no transport of its own (it is an HTTP
//! *client* of the issuers, nothing more).

pub mod access;
pub mod broker;
pub mod clock;
pub mod config;
pub mod identity;
pub mod issuer;
pub mod metrics;
pub mod seal;
pub mod slot;
pub mod store;
pub mod tls;
pub mod token;

pub use broker::Broker;
pub use config::Config;
