//! One module per CLI command (except `demo`, which is big enough to be [`crate::demo`]).

pub mod audit;
pub mod check;
pub mod exec;
pub mod keys;
pub mod rekey;
pub mod reseed;
pub mod serve;
pub mod status;
mod table;
pub mod token;
