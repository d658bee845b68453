//! The embedded store: one SQLite file in WAL mode, `synchronous = FULL`, so that a
//! committed write survives a crash of the process or the machine before the token it
//! carries is handed to anyone.
//!
//! rusqlite is synchronous; every call runs on tokio's blocking pool with the one
//! connection behind a std `Mutex` (held only inside that blocking closure, never across an
//! await). One connection is plenty: the store is on the issuance path only.
//! Migrations are the numbered SQL files under `migrations/sqlite/`, applied at open and
//! tracked in `PRAGMA user_version`; a file from a newer version is refused, not migrated
//! down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokenbroker_core::seal::Purpose;
use tokenbroker_core::store::{
    AuditEvent, IssuanceRecord, Lease, Reseal, SealedRow, Store, StoreError, StoreErrorKind,
    StoredRefresh, StoredToken,
};

use crate::convert::{
    KEY_CHECK, SEALED_TABLES, audit_kind, drain_fenced, generation, millis, millis_after,
    refresh_conflict, refresh_moved, reseal_failed, signed, time, token_conflict, too_new,
};

/// The schema migrations, in order; the schema version is how many have been applied.
/// How long a statement waits for another connection's lock before failing as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_refresh_tokens_and_ledger.sql"),
    include_str!("../migrations/sqlite/0003_token_users.sql"),
    include_str!("../migrations/sqlite/0004_refresh_seeds.sql"),
    include_str!("../migrations/sqlite/0005_issuer_holds.sql"),
];

/// The SQLite store at one path.
#[derive(Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let owned = path.to_owned();
        let connection = tokio::task::spawn_blocking(move || open_and_migrate(&owned, true))
            .await
            .map_err(|e| unavailable(path, &e.to_string()))??;
        Ok(Self::wrap(connection, path))
    }

    /// Opens an existing store without creating or migrating it (for reading the audit).
    pub async fn open_existing(path: &Path) -> Result<Self, StoreError> {
        let owned = path.to_owned();
        let connection = tokio::task::spawn_blocking(move || open_and_migrate(&owned, false))
            .await
            .map_err(|e| unavailable(path, &e.to_string()))??;
        Ok(Self::wrap(connection, path))
    }

    fn wrap(connection: Connection, path: &Path) -> Self {
        Self {
            connection: Arc::new(Mutex::new(connection)),
            path: Arc::new(path.to_owned()),
        }
    }

    /// Runs one fenced compare-and-set update of a refresh-token row (`?1` provider, `?2`
    /// generation, `?3` the lease's fence, `?4` a value if any); `Conflict` if the generation
    /// moved on or the lease passed to another holder.
    async fn refresh_update(
        &self,
        provider: &str,
        fence: u64,
        generation_: u64,
        sql: &'static str,
        value: Option<rusqlite::types::Value>,
    ) -> Result<(), StoreError> {
        let provider = provider.to_owned();
        let path = self.path.clone();
        self.with(move |c| {
            let (generation_signed, fence) = (signed(generation_), signed(fence));
            let changed = match value {
                Some(value) => c.execute(sql, params![provider, generation_signed, fence, value]),
                None => c.execute(sql, params![provider, generation_signed, fence]),
            }
            .map_err(|e| map(&path, &e))?;
            if changed == 1 {
                Ok(())
            } else {
                Err(refresh_moved(generation_))
            }
        })
        .await
    }

    /// Runs one statement with two text parameters, `?1` and `?2`.
    async fn execute(
        &self,
        sql: &'static str,
        first: &str,
        second: &str,
    ) -> Result<(), StoreError> {
        let (first, second) = (first.to_owned(), second.to_owned());
        let path = self.path.clone();
        self.with(move |c| {
            c.execute(sql, params![first, second])
                .map(drop)
                .map_err(|e| map(&path, &e))
        })
        .await
    }

    /// Runs `work` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = self.connection.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().expect("store connection lock poisoned");
            work(&mut connection)
        })
        .await
        .map_err(|e| unavailable(&path, &e.to_string()))?
    }
}

fn open_and_migrate(path: &Path, create: bool) -> Result<Connection, StoreError> {
    if !create && !path.exists() {
        return Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!("no store at {}", path.display()),
        ));
    }
    let connection = Connection::open(path).map_err(|e| map(path, &e))?;
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| map(path, &e))?;
    use_wal(&connection, path)?;
    connection
        .pragma_update(None, "synchronous", "FULL")
        .map_err(|e| map(path, &e))?;
    let version: usize = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| map(path, &e))?;
    if version > MIGRATIONS.len() {
        return Err(too_new(
            path.display(),
            version,
            MIGRATIONS.len(),
            "store.path",
        ));
    }
    let mut connection = connection;
    if create {
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = connection
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| map(path, &e))?;
            // Another process opening the same new file may have applied it while this one
            // waited for the write lock.
            let applied: usize = tx
                .pragma_query_value(None, "user_version", |row| row.get(0))
                .map_err(|e| map(path, &e))?;
            if applied > index {
                continue;
            }
            tx.execute_batch(migration).map_err(|e| map(path, &e))?;
            tx.pragma_update(None, "user_version", index + 1)
                .map_err(|e| map(path, &e))?;
            tx.commit().map_err(|e| map(path, &e))?;
        }
    }
    Ok(connection)
}

/// Switches the file to write-ahead logging. On a new file another connection may be
/// switching it at the same moment, and SQLite then answers "locked" at once, without
/// waiting in its busy handler: tried again for as long as that would have waited.
fn use_wal(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match connection.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(failure, _))
                if matches!(
                    failure.code,
                    ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(map(path, &e)),
        }
    }
}

/// Why re-sealing a table failed.
enum Reseal_ {
    Store(rusqlite::Error),
    Seal(tokenbroker_core::seal::SealError),
}

/// Re-seals the `sealed` column of every row of `table` (keyed by `provider`).
fn reseal_table(
    tx: &rusqlite::Transaction<'_>,
    table: &'static str,
    purpose: Purpose,
    reseal: &Reseal,
) -> Result<usize, Reseal_> {
    let rows: Vec<(String, Vec<u8>)> = {
        let mut statement = tx
            .prepare(&format!("SELECT provider, sealed FROM {table}"))
            .map_err(Reseal_::Store)?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(Reseal_::Store)?;
        rows.collect::<Result<_, _>>().map_err(Reseal_::Store)?
    };
    for (provider, sealed) in &rows {
        let row = SealedRow {
            provider,
            purpose,
            sealed,
        };
        let resealed = reseal(row).map_err(Reseal_::Seal)?;
        tx.execute(
            &format!("UPDATE {table} SET sealed = ?2 WHERE provider = ?1"),
            params![provider, resealed],
        )
        .map_err(Reseal_::Store)?;
    }
    Ok(rows.len())
}

fn unavailable(path: &Path, why: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!("store {}: {why}", path.display()),
    )
}

/// The fenced compare-and-set that stores refresh token `sealed` as the successor of
/// generation `expected` (0: none yet) and clears any intent and `needs_credentials`;
/// whether it did (not: another generation is stored, or the lease has moved on).
fn put_refresh(
    c: &Connection,
    provider: &str,
    fence: u64,
    expected: u64,
    sealed: &[u8],
) -> rusqlite::Result<bool> {
    let changed = if expected == 0 {
        c.execute(
            "INSERT INTO refresh_tokens (provider, generation, sealed) SELECT ?1, 1, ?2
             WHERE EXISTS (SELECT 1 FROM leases WHERE provider = ?1 AND fence = ?3)
             ON CONFLICT (provider) DO NOTHING",
            params![provider, sealed, signed(fence)],
        )?
    } else {
        c.execute(
            "UPDATE refresh_tokens SET generation = ?3, sealed = ?2, intent_at_ms = NULL,
                    needs_credentials = NULL
             WHERE provider = ?1 AND generation = ?4
                 AND EXISTS (SELECT 1 FROM leases WHERE provider = ?1 AND fence = ?5)",
            params![
                provider,
                sealed,
                signed(expected + 1),
                signed(expected),
                signed(fence)
            ],
        )?
    };
    Ok(changed == 1)
}

/// A write transaction for the drain of `generation`, begun only while the lease has
/// `fence`: else the drain's `Conflict`.
fn drain_transaction<'c>(
    c: &'c mut Connection,
    provider: &str,
    fence: u64,
    generation: u64,
    path: &Path,
) -> Result<rusqlite::Transaction<'c>, StoreError> {
    let db = |e: rusqlite::Error| map(path, &e);
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let leased: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM leases WHERE provider = ?1 AND fence = ?2)",
            params![provider, signed(fence)],
            |row| row.get(0),
        )
        .map_err(db)?;
    if leased {
        Ok(tx)
    } else {
        Err(drain_fenced(generation))
    }
}

/// Maps SQLite's errors into the core's kinds.
fn map(path: &Path, e: &rusqlite::Error) -> StoreError {
    let kind = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreErrorKind::Corrupt,
        Some(ErrorCode::ConstraintViolation) => StoreErrorKind::Conflict,
        _ => StoreErrorKind::Unavailable,
    };
    StoreError::new(kind, format!("store {}: {e}", path.display()))
}

#[async_trait]
impl Store for SqliteStore {
    async fn load_token(&self, provider: &str) -> Result<Option<StoredToken>, StoreError> {
        let provider = provider.to_owned();
        let path = self.path.clone();
        self.with(move |c| {
            c.query_row(
                "SELECT generation, issued_at_ms, expires_at_ms, refresh_at_ms, sealed
                 FROM tokens WHERE provider = ?1",
                params![provider],
                |row| {
                    Ok(StoredToken {
                        generation: generation(row.get(0)?),
                        issued_at: time(row.get(1)?),
                        expires_at: time(row.get(2)?),
                        refresh_at: time(row.get(3)?),
                        sealed: row.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| map(&path, &e))
        })
        .await
    }

    async fn save_token(
        &self,
        provider: &str,
        fence: u64,
        expected: u64,
        token: &StoredToken,
    ) -> Result<(), StoreError> {
        let provider = provider.to_owned();
        let token = token.clone();
        let path = self.path.clone();
        self.with(move |c| {
            let values = params![
                provider,
                signed(token.generation),
                millis(token.issued_at),
                millis(token.expires_at),
                millis(token.refresh_at),
                token.sealed,
                signed(expected),
                signed(fence),
            ];
            let changed = if expected == 0 {
                c.execute(
                    "INSERT INTO tokens (provider, generation, issued_at_ms, expires_at_ms, refresh_at_ms, sealed)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE ?7 = 0
                         AND EXISTS (SELECT 1 FROM leases WHERE provider = ?1 AND fence = ?8)
                     ON CONFLICT (provider) DO NOTHING",
                    values,
                )
            } else {
                c.execute(
                    "UPDATE tokens SET generation = ?2, issued_at_ms = ?3, expires_at_ms = ?4,
                            refresh_at_ms = ?5, sealed = ?6
                     WHERE provider = ?1 AND generation = ?7
                         AND EXISTS (SELECT 1 FROM leases WHERE provider = ?1 AND fence = ?8)",
                    values,
                )
            }
            .map_err(|e| map(&path, &e))?;
            if changed == 1 {
                Ok(())
            } else {
                Err(token_conflict(expected))
            }
        })
        .await
    }

    async fn acquire_lease(
        &self,
        provider: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let (provider, holder) = (provider.to_owned(), holder.to_owned());
        let path = self.path.clone();
        self.with(move |c| {
            let now = SystemTime::now();
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| map(&path, &e))?;
            let fence: Option<i64> = tx
                .query_row(
                    "INSERT INTO leases (provider, holder, expires_at_ms, fence) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT (provider) DO UPDATE SET holder = excluded.holder,
                         expires_at_ms = excluded.expires_at_ms,
                         fence = leases.fence + (leases.holder <> excluded.holder)
                     WHERE leases.expires_at_ms <= ?4 OR leases.holder = excluded.holder
                     RETURNING fence",
                    params![provider, holder, millis_after(now, ttl), millis(now)],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| map(&path, &e))?;
            let lease = match fence {
                Some(fence) => Lease::Granted {
                    fence: generation(fence),
                },
                None => {
                    let until: i64 = tx
                        .query_row(
                            "SELECT expires_at_ms FROM leases WHERE provider = ?1",
                            params![provider],
                            |row| row.get(0),
                        )
                        .map_err(|e| map(&path, &e))?;
                    Lease::HeldElsewhere { until: time(until) }
                }
            };
            tx.commit().map_err(|e| map(&path, &e))?;
            Ok(lease)
        })
        .await
    }

    async fn retire_token(&self, provider: &str, generation_: u64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE tokens SET expires_at_ms = 0, refresh_at_ms = 0
             WHERE provider = ?1 AND generation = CAST(?2 AS INTEGER)",
            provider,
            &generation_.to_string(),
        )
        .await
    }

    async fn release_lease(&self, provider: &str, holder: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE leases SET expires_at_ms = 0 WHERE provider = ?1 AND holder = ?2",
            provider,
            holder,
        )
        .await
    }

    async fn record(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let event = event.clone();
        let path = self.path.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO audit (at_ms, provider, event, generation, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    millis(event.at),
                    event.provider,
                    event.kind.as_str(),
                    event.generation.map(signed),
                    event.detail
                ],
            )
            .map(drop)
            .map_err(|e| map(&path, &e))
        })
        .await
    }

    async fn audit(
        &self,
        provider: Option<&str>,
        since: SystemTime,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let provider = provider.map(str::to_owned);
        let path = self.path.clone();
        self.with(move |c| {
            let mut statement = c
                .prepare(
                    "SELECT at_ms, provider, event, generation, detail FROM audit
                     WHERE at_ms >= ?1 AND (?2 IS NULL OR provider = ?2) ORDER BY id",
                )
                .map_err(|e| map(&path, &e))?;
            let rows = statement
                .query_map(params![millis(since), provider], |row| {
                    let kind: String = row.get(2)?;
                    let generation: Option<i64> = row.get(3)?;
                    Ok((row.get(0)?, row.get(1)?, kind, generation, row.get(4)?))
                })
                .map_err(|e| map(&path, &e))?;
            let mut events = Vec::new();
            for row in rows {
                let (at, provider, kind, gen_, detail): (i64, String, String, Option<i64>, String) =
                    row.map_err(|e| map(&path, &e))?;
                events.push(AuditEvent {
                    at: time(at),
                    provider,
                    kind: audit_kind(&kind)?,
                    generation: gen_.map(generation),
                    detail,
                });
            }
            Ok(events)
        })
        .await
    }

    async fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path.clone();
        self.with(move |c| {
            c.query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![KEY_CHECK],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| map(&path, &e))
        })
        .await
    }

    async fn set_key_check(&self, sealed: &[u8]) -> Result<(), StoreError> {
        let sealed = sealed.to_vec();
        let path = self.path.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                params![KEY_CHECK, sealed],
            )
            .map(drop)
            .map_err(|e| map(&path, &e))
        })
        .await
    }

    async fn was_seeded(&self, digest: &[u8]) -> Result<bool, StoreError> {
        let digest = digest.to_vec();
        let path = self.path.clone();
        self.with(move |c| {
            c.query_row(
                "SELECT 1 FROM refresh_seeds WHERE digest = ?1",
                params![digest],
                |_| Ok(()),
            )
            .optional()
            .map(|row| row.is_some())
            .map_err(|e| map(&path, &e))
        })
        .await
    }

    async fn hold_off(&self, provider: &str, wait: Duration) -> Result<(), StoreError> {
        let provider = provider.to_owned();
        let until = millis_after(SystemTime::now(), wait);
        let path = self.path.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO issuer_holds (provider, until_ms) VALUES (?1, ?2)
                 ON CONFLICT (provider) DO UPDATE SET until_ms = max(until_ms, excluded.until_ms)",
                params![provider, until],
            )
            .map(drop)
            .map_err(|e| map(&path, &e))
        })
        .await
    }

    async fn held_off_for(&self, provider: &str) -> Result<Option<Duration>, StoreError> {
        let provider = provider.to_owned();
        let path = self.path.clone();
        let until: Option<i64> = self
            .with(move |c| {
                c.query_row(
                    "SELECT until_ms FROM issuer_holds WHERE provider = ?1",
                    params![provider],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| map(&path, &e))
            })
            .await?;
        Ok(until.and_then(|until| time(until).duration_since(SystemTime::now()).ok()))
    }

    async fn load_refresh(&self, provider: &str) -> Result<Option<StoredRefresh>, StoreError> {
        let provider = provider.to_owned();
        let path = self.path.clone();
        self.with(move |c| {
            c.query_row(
                "SELECT generation, sealed, intent_at_ms, needs_credentials
                 FROM refresh_tokens WHERE provider = ?1",
                params![provider],
                |row| {
                    let intent: Option<i64> = row.get(2)?;
                    Ok(StoredRefresh {
                        generation: generation(row.get(0)?),
                        sealed: row.get(1)?,
                        intent_at: intent.map(time),
                        needs_credentials: row.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| map(&path, &e))
        })
        .await
    }

    async fn save_refresh(
        &self,
        provider: &str,
        fence: u64,
        expected: u64,
        sealed: &[u8],
    ) -> Result<u64, StoreError> {
        let provider = provider.to_owned();
        let sealed = sealed.to_vec();
        let path = self.path.clone();
        self.with(move |c| {
            if put_refresh(c, &provider, fence, expected, &sealed).map_err(|e| map(&path, &e))? {
                Ok(expected + 1)
            } else {
                Err(refresh_conflict(expected))
            }
        })
        .await
    }

    async fn save_given_refresh(
        &self,
        provider: &str,
        fence: u64,
        expected: u64,
        sealed: &[u8],
        digest: &[u8],
    ) -> Result<Option<u64>, StoreError> {
        let (provider, sealed, digest) = (provider.to_owned(), sealed.to_vec(), digest.to_vec());
        let path = self.path.clone();
        self.with(move |c| {
            let db = |e: rusqlite::Error| map(&path, &e);
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db)?;
            let first = tx
                .execute(
                    "INSERT INTO refresh_seeds (provider, digest) VALUES (?1, ?2)
                     ON CONFLICT (digest) DO NOTHING",
                    params![provider, digest],
                )
                .map_err(db)?
                == 1;
            if !first {
                return Ok(None);
            }
            if !put_refresh(&tx, &provider, fence, expected, &sealed).map_err(db)? {
                return Err(refresh_conflict(expected));
            }
            tx.commit().map_err(db)?;
            Ok(Some(expected + 1))
        })
        .await
    }

    async fn begin_refresh(
        &self,
        provider: &str,
        fence: u64,
        generation: u64,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        self.refresh_update(
            provider,
            fence,
            generation,
            "UPDATE refresh_tokens SET intent_at_ms = COALESCE(intent_at_ms, ?4)
             WHERE provider = ?1 AND generation = ?2
                 AND EXISTS (SELECT 1 FROM leases WHERE provider = ?1 AND fence = ?3)",
            Some(millis(at).into()),
        )
        .await
    }

    async fn clear_refresh_intent(
        &self,
        provider: &str,
        fence: u64,
        generation: u64,
    ) -> Result<(), StoreError> {
        self.refresh_update(
            provider,
            fence,
            generation,
            "UPDATE refresh_tokens SET intent_at_ms = NULL
             WHERE provider = ?1 AND generation = ?2
                 AND EXISTS (SELECT 1 FROM leases WHERE provider = ?1 AND fence = ?3)",
            None,
        )
        .await
    }

    async fn mark_needs_credentials(
        &self,
        provider: &str,
        fence: u64,
        generation: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.refresh_update(
            provider,
            fence,
            generation,
            "UPDATE refresh_tokens SET needs_credentials = ?4
             WHERE provider = ?1 AND generation = ?2
                 AND EXISTS (SELECT 1 FROM leases WHERE provider = ?1 AND fence = ?3)",
            Some(reason.to_owned().into()),
        )
        .await
    }

    async fn begin_issuance(&self, provider: &str, at: SystemTime) -> Result<u64, StoreError> {
        let provider = provider.to_owned();
        let path = self.path.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO issuances (provider, requested_at_ms) VALUES (?1, ?2)",
                params![provider, millis(at)],
            )
            .map_err(|e| map(&path, &e))?;
            Ok(generation(c.last_insert_rowid()))
        })
        .await
    }

    async fn finish_issuance(
        &self,
        id: u64,
        expires_at: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        self.with(move |c| {
            c.execute(
                "UPDATE issuances SET expires_at_ms = COALESCE(?2, requested_at_ms) WHERE id = ?1",
                params![signed(id), expires_at.map(millis)],
            )
            .map(drop)
            .map_err(|e| map(&path, &e))
        })
        .await
    }

    async fn issuances(
        &self,
        provider: &str,
        since: SystemTime,
    ) -> Result<Vec<IssuanceRecord>, StoreError> {
        let provider = provider.to_owned();
        let path = self.path.clone();
        self.with(move |c| {
            let mut statement = c
                .prepare(
                    "SELECT requested_at_ms, expires_at_ms FROM issuances
                     WHERE provider = ?1 AND (requested_at_ms >= ?2 OR expires_at_ms IS NULL
                                              OR expires_at_ms >= ?2)
                     ORDER BY requested_at_ms",
                )
                .map_err(|e| map(&path, &e))?;
            let rows = statement
                .query_map(params![provider, millis(since)], |row| {
                    let expires: Option<i64> = row.get(1)?;
                    Ok(IssuanceRecord {
                        requested_at: time(row.get(0)?),
                        expires_at: expires.map(time),
                    })
                })
                .map_err(|e| map(&path, &e))?;
            rows.collect::<Result<_, _>>().map_err(|e| map(&path, &e))
        })
        .await
    }

    async fn register_user(
        &self,
        provider: &str,
        holder: &str,
        generation_: u64,
    ) -> Result<bool, StoreError> {
        let (provider, holder) = (provider.to_owned(), holder.to_owned());
        let path = self.path.clone();
        self.with(move |c| {
            let state: Option<String> = c
                .query_row(
                    "INSERT INTO token_users (provider, holder, generation, state)
                     VALUES (?1, ?2, ?3, CASE WHEN EXISTS (
                         SELECT 1 FROM token_users WHERE provider = ?1 AND generation = ?3
                             AND state <> 'using') THEN 'draining' ELSE 'using' END)
                     ON CONFLICT (provider, holder) DO UPDATE SET generation = excluded.generation,
                         state = CASE WHEN token_users.generation = excluded.generation
                                      THEN token_users.state ELSE excluded.state END
                     WHERE token_users.generation <= excluded.generation
                     RETURNING state",
                    params![provider, holder, signed(generation_)],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| map(&path, &e))?;
            Ok(state.is_some_and(|s| s != "using"))
        })
        .await
    }

    async fn forget_user(&self, provider: &str, holder: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM token_users WHERE provider = ?1 AND holder = ?2",
            provider,
            holder,
        )
        .await
    }

    async fn announce_drain(
        &self,
        provider: &str,
        holder: &str,
        fence: u64,
        generation_: u64,
    ) -> Result<(), StoreError> {
        let (provider, holder) = (provider.to_owned(), holder.to_owned());
        let path = self.path.clone();
        self.with(move |c| {
            let db = |e: rusqlite::Error| map(&path, &e);
            let tx = drain_transaction(c, &provider, fence, generation_, &path)?;
            let generation_ = signed(generation_);
            tx.execute(
                "DELETE FROM token_users WHERE provider = ?1 AND generation < ?2 AND holder <> ?3",
                params![provider, generation_, holder],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT INTO token_users (provider, holder, generation, state)
                 VALUES (?1, ?2, ?3, 'drained')
                 ON CONFLICT (provider, holder) DO UPDATE SET generation = excluded.generation,
                     state = 'drained'",
                params![provider, holder, generation_],
            )
            .map_err(db)?;
            tx.execute(
                "UPDATE token_users SET state = 'draining'
                 WHERE provider = ?1 AND generation = ?2 AND holder <> ?3 AND state = 'using'",
                params![provider, generation_, holder],
            )
            .map_err(db)?;
            tx.commit().map_err(db)
        })
        .await
    }

    async fn withdraw_drain(
        &self,
        provider: &str,
        fence: u64,
        generation_: u64,
    ) -> Result<(), StoreError> {
        let provider = provider.to_owned();
        let path = self.path.clone();
        self.with(move |c| {
            let db = |e: rusqlite::Error| map(&path, &e);
            let tx = drain_transaction(c, &provider, fence, generation_, &path)?;
            tx.execute(
                "UPDATE token_users SET state = 'using'
                 WHERE provider = ?1 AND generation = ?2 AND state <> 'using'",
                params![provider, signed(generation_)],
            )
            .map_err(db)?;
            tx.commit().map_err(db)
        })
        .await
    }

    async fn drain_request(&self, provider: &str, holder: &str) -> Result<Option<u64>, StoreError> {
        let (provider, holder) = (provider.to_owned(), holder.to_owned());
        let path = self.path.clone();
        self.with(move |c| {
            c.query_row(
                "SELECT generation FROM token_users
                 WHERE provider = ?1 AND holder = ?2 AND state = 'draining'",
                params![provider, holder],
                |row| row.get(0).map(generation),
            )
            .optional()
            .map_err(|e| map(&path, &e))
        })
        .await
    }

    async fn ack_drain(
        &self,
        provider: &str,
        holder: &str,
        generation_: u64,
    ) -> Result<(), StoreError> {
        let (provider, holder) = (provider.to_owned(), holder.to_owned());
        let path = self.path.clone();
        self.with(move |c| {
            c.execute(
                "UPDATE token_users SET state = 'drained'
                 WHERE provider = ?1 AND holder = ?2 AND generation = ?3 AND state = 'draining'",
                params![provider, holder, signed(generation_)],
            )
            .map(drop)
            .map_err(|e| map(&path, &e))
        })
        .await
    }

    async fn undrained(&self, provider: &str, generation_: u64) -> Result<Vec<String>, StoreError> {
        let provider = provider.to_owned();
        let path = self.path.clone();
        self.with(move |c| {
            let db = |e: rusqlite::Error| map(&path, &e);
            let mut statement = c
                .prepare_cached(
                    "SELECT holder FROM token_users
                     WHERE provider = ?1 AND generation = ?2 AND state = 'draining'
                     ORDER BY holder",
                )
                .map_err(db)?;
            let rows = statement
                .query_map(params![provider, signed(generation_)], |row| row.get(0))
                .map_err(db)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(db)
        })
        .await
    }

    async fn rekey(&self, reseal: Reseal) -> Result<usize, StoreError> {
        let path = self.path.clone();
        self.with(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| map(&path, &e))?;
            let mut count = 0;
            for (table, purpose) in SEALED_TABLES {
                count += reseal_table(&tx, table, purpose, &reseal).map_err(|e| match e {
                    Reseal_::Store(e) => map(&path, &e),
                    Reseal_::Seal(e) => reseal_failed(e),
                })?;
            }
            let check: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT value FROM meta WHERE key = ?1",
                    params![KEY_CHECK],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| map(&path, &e))?;
            if let Some(sealed) = check {
                let row = SealedRow {
                    provider: "",
                    purpose: Purpose::KeyCheck,
                    sealed: &sealed,
                };
                let resealed = reseal(row).map_err(reseal_failed)?;
                tx.execute(
                    "UPDATE meta SET value = ?2 WHERE key = ?1",
                    params![KEY_CHECK, resealed],
                )
                .map_err(|e| map(&path, &e))?;
                count += 1;
            }
            tx.commit().map_err(|e| map(&path, &e))?;
            Ok(count)
        })
        .await
    }
}
