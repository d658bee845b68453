//! The PostgreSQL schema: the numbered SQL files under `migrations/postgres/`, applied at
//! connect and recorded one row per version in `schema_migrations`.
//!
//! Several brokers may start at once against a fresh database. Each runs the whole check in
//! one transaction that first takes a transaction-scoped advisory lock keyed by the schema,
//! so exactly one of them creates the schema and applies what is missing, and the others,
//! waiting on the lock, then find nothing left to do. A database at a version newer than
//! this code knows is refused (`TooNew`), never migrated down.

use std::time::SystemTime;

use tokenbroker_core::store::{StoreError, StoreErrorKind};
use tokio_postgres::Client;

use super::error::{corrupt, map};
use crate::convert::{millis, too_new};

/// The schema migrations, in order; the schema version is how many have been applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_refresh_tokens_and_ledger.sql"),
    include_str!("../../migrations/postgres/0003_token_users.sql"),
    include_str!("../../migrations/postgres/0004_refresh_seeds.sql"),
    include_str!("../../migrations/postgres/0005_issuer_holds.sql"),
];

/// What [`migrate`] may do to the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Create it if missing and bring it up to date (a broker).
    Migrate,
    /// Only check that it exists at this code's version (the commands that read or repair a
    /// store: a newer CLI must not upgrade the schema under older running brokers).
    Check,
}

/// Brings the schema `schema` (or the connection's default one) up to date, or with
/// [`Mode::Check`] only checks that it is. `quoted` is the schema's name quoted as an
/// identifier; `name` names the store in messages.
pub(super) async fn migrate(
    client: &mut Client,
    schema: Option<(&str, &str)>,
    name: &str,
    mode: Mode,
) -> Result<(), StoreError> {
    let db = |e: tokio_postgres::Error| map(name, &e);
    let tx = client.transaction().await.map_err(db)?;
    // Held until commit or rollback; the key separates schemas, so isolated clusters (and
    // tests) sharing a database do not wait for each other.
    let lock_key = format!("tokenbroker migrations {}", schema.map_or("", |(s, _)| s));
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key])
        .await
        .map_err(db)?;
    let store = match schema {
        Some((schema, _)) => format!("{name} (schema {schema})"),
        None => name.to_owned(),
    };
    let missing = || {
        StoreError::new(
            StoreErrorKind::Unavailable,
            format!("no tokenbroker store in {store}: a broker creates it when it starts"),
        )
    };
    if let Some((schema, quoted)) = schema {
        let exists = tx
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
            .await
            .map_err(db)?
            .is_some();
        if !exists && mode == Mode::Check {
            return Err(missing());
        }
        if !exists {
            tx.batch_execute(&format!("CREATE SCHEMA {quoted}"))
                .await
                .map_err(db)?;
        }
    }
    let tracked = tx
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(db)?
        .try_get::<_, bool>(0)
        .map_err(|e| corrupt(name, &e))?;
    if !tracked && mode == Mode::Check {
        return Err(missing());
    }
    if !tracked {
        tx.batch_execute(
            "CREATE TABLE schema_migrations (
                 version       INTEGER PRIMARY KEY,
                 applied_at_ms BIGINT NOT NULL
             )",
        )
        .await
        .map_err(db)?;
    }
    let version = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(db)?
        .try_get::<_, i32>(0)
        .map_err(|e| corrupt(name, &e))?;
    let applied = usize::try_from(version).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(too_new(store, version, MIGRATIONS.len(), "store.url"));
    }
    if applied < MIGRATIONS.len() && mode == Mode::Check {
        return Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!(
                "the store {store} has schema version {version}, older than this tokenbroker's \
                 ({}); start a broker of this version on it first (it migrates the store), or \
                 run this command with the version of the brokers that run on it",
                MIGRATIONS.len()
            ),
        ));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(migration).await.map_err(db)?;
        let number = i32::try_from(index + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)",
            &[&number, &millis(SystemTime::now())],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}
