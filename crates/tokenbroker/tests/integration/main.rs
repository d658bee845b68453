//! tokenbroker's integration tests: one test binary (one link) with a module per area.
//! Every test talks HTTP over loopback to a real broker and to the project's Control Room
//! emulator, and asserts on what the emulator saw.

mod cli;
mod cluster;
mod connections;
mod consumers;
mod drain;
mod exchange;
mod helpers;
mod oauth2;
mod private_pg;
mod process;
mod propagation;
mod proxy;
mod store;
mod tls;
mod token_api;
