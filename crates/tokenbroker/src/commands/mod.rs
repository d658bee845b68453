//! One module per CLI command (except `demo`, which is big enough to be [`crate::demo`]).

pub mod check;
pub mod exec;
pub mod keys;
pub mod serve;
pub mod token;
