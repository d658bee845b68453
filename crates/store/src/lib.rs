//! Store backends for tokenbroker, each behind the core's
//! [`Store`](tokenbroker_core::store::Store) trait: [`sqlite`], the embedded default, and
//! [`postgres`], shared by a cluster of brokers.
//!
//! Backends map their native errors into the core's
//! [`StoreErrorKind`](tokenbroker_core::store::StoreErrorKind) so the core reacts to a lost
//! compare-and-set or an unreachable database the same way whatever the backend; `convert`
//! holds what they encode and say alike (times, generations, the contract's errors).

mod convert;
pub mod postgres;
pub mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
