//! PostgreSQL's errors in the core's terms: SQLSTATE codes, closed connections and pool
//! timeouts mapped into [`StoreErrorKind`], the way the SQLite backend maps its result codes.
//!
//! Messages name the database (never its user or password) and quote the server's message
//! and SQLSTATE, but not its DETAIL, which can echo a whole row ("Failing row contains ...").

use std::error::Error as _;

use deadpool_postgres::PoolError;
use tokenbroker_core::store::{StoreError, StoreErrorKind};

/// Maps a tokio-postgres error of the store `name` into the core's kinds.
pub(super) fn map(name: &str, e: &tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // No answer from the server: refused, reset, closed, a TLS failure, a timeout.
        return StoreError::new(
            StoreErrorKind::Unavailable,
            format!("store {name}: {}", chain(e)),
        );
    };
    let code = db.code().code();
    let kind = match code {
        // Integrity violations (a unique key above all), as SQLite's constraint errors:
        // someone else wrote first. (A serialization failure, 40001, says only "try again",
        // not that a newer generation is stored: it falls through to `Unavailable`.)
        _ if code.starts_with("23") => StoreErrorKind::Conflict,
        // Data exceptions, tables or columns missing after migration, corrupted pages.
        _ if code.starts_with("22") => StoreErrorKind::Corrupt,
        "42P01" | "42703" | "XX001" | "XX002" => StoreErrorKind::Corrupt,
        // Connection exceptions, shutdowns, lack of resources, deadlocks, timeouts: now, not
        // for good.
        _ => StoreErrorKind::Unavailable,
    };
    StoreError::new(
        kind,
        format!("store {name}: {} (SQLSTATE {code})", db.message()),
    )
}

/// Maps a failure to get a pooled connection.
pub(super) fn pool(name: &str, e: &PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => map(name, e),
        PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(e)) => map(name, e),
        PoolError::Timeout(_) => StoreError::new(
            StoreErrorKind::Unavailable,
            format!("store {name}: timed out waiting for a database connection"),
        ),
        other => StoreError::new(
            StoreErrorKind::Unavailable,
            format!("store {name}: {other}"),
        ),
    }
}

/// A row that lacks a column or holds a value of the wrong type.
pub(super) fn corrupt(name: &str, e: &tokio_postgres::Error) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("store {name}: {}", chain(e)),
    )
}

/// `e` and its causes: tokio-postgres's own message ("error connecting to server") says
/// little without them ("Connection refused").
fn chain(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
