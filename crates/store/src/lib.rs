//! Store backends for tokenbroker, each behind the core's
//! [`Store`](tokenbroker_core::store::Store) trait: [`sqlite`], the embedded default.
//!
//! Backends map their native errors into the core's
//! [`StoreErrorKind`](tokenbroker_core::store::StoreErrorKind) so the core reacts to a lost
//! compare-and-set or an unreachable database the same way whatever the backend.

pub mod sqlite;

pub use sqlite::SqliteStore;
