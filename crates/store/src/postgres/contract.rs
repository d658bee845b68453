//! The [`Store`] contract as PostgreSQL statements, one per call except the lease and rekey
//! transactions, and the writes of a token's users, each run behind the provider's advisory
//! lock (`users_write`). Each mirrors its SQLite twin in `sqlite.rs` (same tables, same
//! compare-and-sets, `ON CONFLICT` upserts, the same ledger query) with `$n` placeholders, so
//! the conformance suite holds for both alike. The writes other brokers must hear of (tokens
//! and refresh tokens) also `pg_notify` the cluster's channel from the same statement, only
//! for the row they changed (see `listen`), and so do the drain's announcement and
//! acknowledgements.
//!
//! The issuance writes are fenced by `EXISTS (SELECT ... FROM leases WHERE fence = $n FOR
//! SHARE)`: the share lock makes a concurrent grant of the lease to another holder wait for
//! the write's commit, or the write see that grant and change nothing, so no fenced write
//! lands after the lease passed on. "See" is READ COMMITTED's re-check of a row it waited
//! for, so every pooled connection is set to READ COMMITTED, whatever the server's default.
//!
//! Times are the brokers' (Unix milliseconds, as in SQLite), except a lease's expiry, a
//! refresh intent's time, the issuance ledger's times and the end of an issuer's hold: they
//! are set and judged by the database's clock, the one clock all brokers share
//! (`db_now_ms!`), so that brokers whose clocks disagree by more than a lease still never
//! both hold it, agree on whether an interrupted refresh is within the issuer's grace, count
//! each other's issuance requests in the same window, and wait out a `Retry-After` alike. The ledger's calls take and answer this broker's times; a
//! time crosses as its distance from this broker's now, laid off from the database's now.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokenbroker_core::seal::Purpose;
use tokenbroker_core::store::{
    AuditEvent, Change, IssuanceRecord, Lease, Reseal, SealedRow, Store, StoreError,
    StoreErrorKind, StoredRefresh, StoredToken,
};
use tokio_postgres::types::ToSql;

use super::PostgresStore;
use crate::convert::{
    KEY_CHECK, SEALED_TABLES, audit_kind, drain_fenced, generation, millis, refresh_conflict,
    refresh_moved, reseal_failed, signed, time, token_conflict,
};

/// The database's clock, in Unix milliseconds: the SQL expression every statement that
/// stamps or judges a time by it uses.
macro_rules! db_now_ms {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    };
}

#[async_trait]
impl Store for PostgresStore {
    async fn load_token(&self, provider: &str) -> Result<Option<StoredToken>, StoreError> {
        let row = self
            .query_opt(
                "SELECT generation, issued_at_ms, expires_at_ms, refresh_at_ms, sealed
                 FROM tokens WHERE provider = $1",
                &[&provider],
            )
            .await?;
        row.map(|row| {
            Ok(StoredToken {
                generation: generation(self.get(&row, 0)?),
                issued_at: time(self.get(&row, 1)?),
                expires_at: time(self.get(&row, 2)?),
                refresh_at: time(self.get(&row, 3)?),
                sealed: self.get(&row, 4)?,
            })
        })
        .transpose()
    }

    async fn save_token(
        &self,
        provider: &str,
        fence: u64,
        expected: u64,
        token: &StoredToken,
    ) -> Result<(), StoreError> {
        let values: [&(dyn ToSql + Sync); 8] = [
            &provider,
            &signed(token.generation),
            &millis(token.issued_at),
            &millis(token.expires_at),
            &millis(token.refresh_at),
            &token.sealed,
            &signed(expected),
            &signed(fence),
        ];
        let changed = if expected == 0 {
            self.notifying(
                "WITH changed AS (
                     INSERT INTO tokens (provider, generation, issued_at_ms, expires_at_ms,
                                         refresh_at_ms, sealed)
                     SELECT $1, $2, $3, $4, $5, $6 WHERE $7::BIGINT = 0 AND EXISTS (
                         SELECT 1 FROM leases WHERE provider = $1 AND fence = $8 FOR SHARE)
                     ON CONFLICT (provider) DO NOTHING RETURNING provider)
                 SELECT pg_notify($9, provider) FROM changed",
                &values,
            )
            .await?
        } else {
            self.notifying(
                "WITH changed AS (
                     UPDATE tokens SET generation = $2, issued_at_ms = $3, expires_at_ms = $4,
                            refresh_at_ms = $5, sealed = $6
                     WHERE provider = $1 AND generation = $7 AND EXISTS (
                         SELECT 1 FROM leases WHERE provider = $1 AND fence = $8 FOR SHARE)
                     RETURNING provider)
                 SELECT pg_notify($9, provider) FROM changed",
                &values,
            )
            .await?
        };
        if changed == 1 {
            Ok(())
        } else {
            Err(token_conflict(expected))
        }
    }

    async fn retire_token(&self, provider: &str, generation_: u64) -> Result<(), StoreError> {
        self.notifying(
            "WITH changed AS (
                 UPDATE tokens SET expires_at_ms = 0, refresh_at_ms = 0
                 WHERE provider = $1 AND generation = $2 RETURNING provider)
             SELECT pg_notify($3, provider) FROM changed",
            &[&provider, &signed(generation_)],
        )
        .await
        .map(drop)
    }

    async fn acquire_lease(
        &self,
        provider: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.db(&e))?;
        // The conflicting row is locked either way, so the second query reads the lease
        // that won, and two brokers asking at once cannot both be granted. Its expiry is
        // set and judged by the database's clock, which all brokers share: brokers whose
        // own clocks disagree by more than a lease must still never both hold it.
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let granted = tx
            .query_opt(
                concat!(
                    "WITH clock AS (SELECT ",
                    db_now_ms!(),
                    " AS now_ms)
                 INSERT INTO leases (provider, holder, expires_at_ms, fence)
                 SELECT $1, $2, LEAST(now_ms::numeric + $3::bigint, 9223372036854775807)::bigint, 1
                 FROM clock
                 ON CONFLICT (provider) DO UPDATE SET holder = excluded.holder,
                     expires_at_ms = excluded.expires_at_ms,
                     fence = leases.fence
                             + CASE WHEN leases.holder = excluded.holder THEN 0 ELSE 1 END
                 WHERE leases.expires_at_ms <= (SELECT now_ms FROM clock)
                       OR leases.holder = excluded.holder
                 RETURNING fence"
                ),
                &[&provider, &holder, &ttl_ms],
            )
            .await
            .map_err(|e| self.db(&e))?;
        let lease = if let Some(row) = granted {
            Lease::Granted {
                fence: generation(self.get(&row, 0)?),
            }
        } else {
            // How much longer by the database's clock, as a time on this broker's.
            let row = tx
                .query_one(
                    concat!(
                        "SELECT expires_at_ms - ",
                        db_now_ms!(),
                        " FROM leases WHERE provider = $1"
                    ),
                    &[&provider],
                )
                .await
                .map_err(|e| self.db(&e))?;
            let left: i64 = self.get(&row, 0)?;
            Lease::HeldElsewhere {
                until: SystemTime::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0)),
            }
        };
        tx.commit().await.map_err(|e| self.db(&e))?;
        Ok(lease)
    }

    async fn release_lease(&self, provider: &str, holder: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE leases SET expires_at_ms = 0 WHERE provider = $1 AND holder = $2",
            &[&provider, &holder],
        )
        .await
        .map(drop)
    }

    async fn record(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO audit (at_ms, provider, event, generation, detail)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &millis(event.at),
                &event.provider,
                &event.kind.as_str(),
                &event.generation.map(signed),
                &event.detail,
            ],
        )
        .await
        .map(drop)
    }

    async fn audit(
        &self,
        provider: Option<&str>,
        since: SystemTime,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = self
            .query(
                "SELECT at_ms, provider, event, generation, detail FROM audit
                 WHERE at_ms >= $1 AND ($2::TEXT IS NULL OR provider = $2) ORDER BY id",
                &[&millis(since), &provider],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEvent {
                    at: time(self.get(row, 0)?),
                    provider: self.get(row, 1)?,
                    kind: audit_kind(self.get(row, 2)?)?,
                    generation: self.get::<Option<i64>>(row, 3)?.map(generation),
                    detail: self.get(row, 4)?,
                })
            })
            .collect()
    }

    async fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let row = self
            .query_opt("SELECT value FROM meta WHERE key = $1", &[&KEY_CHECK])
            .await?;
        row.map(|row| self.get(&row, 0)).transpose()
    }

    async fn set_key_check(&self, sealed: &[u8]) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&KEY_CHECK, &sealed],
        )
        .await
        .map(drop)
    }

    async fn was_seeded(&self, digest: &[u8]) -> Result<bool, StoreError> {
        let row = self
            .query_opt("SELECT 1 FROM refresh_seeds WHERE digest = $1", &[&digest])
            .await?;
        Ok(row.is_some())
    }

    async fn hold_off(&self, provider: &str, wait: Duration) -> Result<(), StoreError> {
        let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        self.execute(
            concat!(
                "INSERT INTO issuer_holds (provider, until_ms) VALUES ($1, ",
                db_now_ms!(),
                " + $2) ON CONFLICT (provider) DO UPDATE
                 SET until_ms = GREATEST(issuer_holds.until_ms, excluded.until_ms)"
            ),
            &[&provider, &wait],
        )
        .await
        .map(drop)
    }

    async fn held_off_for(&self, provider: &str) -> Result<Option<Duration>, StoreError> {
        let row = self
            .query_opt(
                concat!(
                    "SELECT until_ms - ",
                    db_now_ms!(),
                    " FROM issuer_holds WHERE provider = $1"
                ),
                &[&provider],
            )
            .await?;
        let left: Option<i64> = row.map(|row| self.get(&row, 0)).transpose()?;
        Ok(left
            .and_then(|ms| u64::try_from(ms).ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis))
    }

    async fn load_refresh(&self, provider: &str) -> Result<Option<StoredRefresh>, StoreError> {
        let row = self
            .query_opt(
                // The intent's age by the database's clock, which stamped it: brokers whose
                // clocks disagree still age it alike.
                concat!(
                    "SELECT generation, sealed, ",
                    db_now_ms!(),
                    " - intent_at_ms, needs_credentials
                     FROM refresh_tokens WHERE provider = $1"
                ),
                &[&provider],
            )
            .await?;
        let now = SystemTime::now();
        // An intent stamped after the database's now (by a broker's clock before this store
        // stamped intents itself, or before the database's clock stepped back) has no age
        // to trust: it counts as old, since retrying a refresh past the issuer's grace
        // revokes the token family for good, where `needs_credentials` only waits for a
        // reseed.
        let intent_at = |age_ms: i64| match u64::try_from(age_ms) {
            Ok(ms) => now.checked_sub(Duration::from_millis(ms)).unwrap_or(now),
            Err(_) => SystemTime::UNIX_EPOCH,
        };
        row.map(|row| {
            Ok(StoredRefresh {
                generation: generation(self.get(&row, 0)?),
                sealed: self.get(&row, 1)?,
                intent_at: self.get::<Option<i64>>(&row, 2)?.map(intent_at),
                needs_credentials: self.get(&row, 3)?,
            })
        })
        .transpose()
    }

    async fn save_refresh(
        &self,
        provider: &str,
        fence: u64,
        expected: u64,
        sealed: &[u8],
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        if self
            .put_refresh(&client, provider, fence, expected, sealed)
            .await?
        {
            Ok(expected + 1)
        } else {
            Err(refresh_conflict(expected))
        }
    }

    async fn save_given_refresh(
        &self,
        provider: &str,
        fence: u64,
        expected: u64,
        sealed: &[u8],
        digest: &[u8],
    ) -> Result<Option<u64>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.db(&e))?;
        // The digest's unique index makes a concurrent seed of the same token wait for this
        // transaction, and then find the digest taken.
        let first = tx
            .execute(
                "INSERT INTO refresh_seeds (provider, digest) VALUES ($1, $2)
                 ON CONFLICT (digest) DO NOTHING",
                &[&provider, &digest],
            )
            .await
            .map_err(|e| self.db(&e))?
            == 1;
        if !first {
            return Ok(None);
        }
        if !self
            .put_refresh(&tx, provider, fence, expected, sealed)
            .await?
        {
            return Err(refresh_conflict(expected));
        }
        tx.commit().await.map_err(|e| self.db(&e))?;
        Ok(Some(expected + 1))
    }

    async fn begin_refresh(
        &self,
        provider: &str,
        fence: u64,
        generation: u64,
        _at: SystemTime,
    ) -> Result<(), StoreError> {
        // Stamped with the database's clock, as the lease is: see `load_refresh`.
        self.refresh_update(
            concat!(
                "UPDATE refresh_tokens SET intent_at_ms = COALESCE(intent_at_ms, ",
                db_now_ms!(),
                ") WHERE provider = $1 AND generation = $2 AND EXISTS (
                     SELECT 1 FROM leases WHERE provider = $1 AND fence = $3 FOR SHARE)"
            ),
            provider,
            fence,
            generation,
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
            "UPDATE refresh_tokens SET intent_at_ms = NULL
             WHERE provider = $1 AND generation = $2 AND EXISTS (
                 SELECT 1 FROM leases WHERE provider = $1 AND fence = $3 FOR SHARE)",
            provider,
            fence,
            generation,
        )
        .await
    }

    async fn mark_needs_credentials(
        &self,
        provider: &str,
        fence: u64,
        generation_: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let changed = self
            .notifying(
                "WITH changed AS (
                     UPDATE refresh_tokens SET needs_credentials = $4
                     WHERE provider = $1 AND generation = $2 AND EXISTS (
                         SELECT 1 FROM leases WHERE provider = $1 AND fence = $3 FOR SHARE)
                     RETURNING provider)
                 SELECT pg_notify($5, provider) FROM changed",
                &[&provider, &signed(generation_), &signed(fence), &reason],
            )
            .await?;
        if changed == 1 {
            Ok(())
        } else {
            Err(refresh_moved(generation_))
        }
    }

    async fn begin_issuance(&self, provider: &str, at: SystemTime) -> Result<u64, StoreError> {
        let row = self
            .query_opt(
                concat!(
                    "INSERT INTO issuances (provider, requested_at_ms) VALUES ($1, ",
                    db_now_ms!(),
                    " + $2) RETURNING id"
                ),
                &[&provider, &from_now(at, SystemTime::now())],
            )
            .await?
            .ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::Corrupt,
                    format!(
                        "store {}: an insert into the ledger returned no id",
                        self.name
                    ),
                )
            })?;
        Ok(generation(self.get(&row, 0)?))
    }

    async fn finish_issuance(
        &self,
        id: u64,
        expires_at: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let now = SystemTime::now();
        self.execute(
            concat!(
                "UPDATE issuances SET expires_at_ms = COALESCE(",
                db_now_ms!(),
                " + $2, requested_at_ms) WHERE id = $1"
            ),
            &[&signed(id), &expires_at.map(|at| from_now(at, now))],
        )
        .await
        .map(drop)
    }

    async fn issuances(
        &self,
        provider: &str,
        since: SystemTime,
    ) -> Result<Vec<IssuanceRecord>, StoreError> {
        let now = SystemTime::now();
        let rows = self
            .query(
                concat!(
                    "WITH clock AS (SELECT ",
                    db_now_ms!(),
                    " AS now_ms)
                     SELECT requested_at_ms - now_ms, expires_at_ms - now_ms FROM issuances, clock
                     WHERE provider = $1 AND (requested_at_ms >= now_ms + $2
                                              OR expires_at_ms IS NULL
                                              OR expires_at_ms >= now_ms + $2)
                     ORDER BY requested_at_ms"
                ),
                &[&provider, &from_now(since, now)],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(IssuanceRecord {
                    requested_at: at_from_now(self.get(row, 0)?, now),
                    expires_at: self
                        .get::<Option<i64>>(row, 1)?
                        .map(|ms| at_from_now(ms, now)),
                })
            })
            .collect()
    }

    async fn register_user(
        &self,
        provider: &str,
        holder: &str,
        generation_: u64,
    ) -> Result<bool, StoreError> {
        let rows = self
            .users_write(
                provider,
                "INSERT INTO token_users (provider, holder, generation, state)
                 VALUES ($1, $2, $3, CASE WHEN EXISTS (
                     SELECT 1 FROM token_users WHERE provider = $1 AND generation = $3
                         AND state <> 'using') THEN 'draining' ELSE 'using' END)
                 ON CONFLICT (provider, holder) DO UPDATE SET generation = excluded.generation,
                     state = CASE WHEN token_users.generation = excluded.generation
                                  THEN token_users.state ELSE excluded.state END
                 WHERE token_users.generation <= excluded.generation
                 RETURNING state",
                &[&provider, &holder, &signed(generation_)],
            )
            .await?;
        let state: Option<String> = rows.first().map(|row| self.get(row, 0)).transpose()?;
        Ok(state.is_some_and(|s| s != "using"))
    }

    async fn forget_user(&self, provider: &str, holder: &str) -> Result<(), StoreError> {
        self.notifying(
            "WITH gone AS (
                 DELETE FROM token_users WHERE provider = $1 AND holder = $2
                 RETURNING provider)
             SELECT pg_notify($3, provider) FROM gone",
            &[&provider, &holder],
        )
        .await
        .map(drop)
    }

    async fn announce_drain(
        &self,
        provider: &str,
        holder: &str,
        fence: u64,
        generation_: u64,
    ) -> Result<(), StoreError> {
        let channel: &str = &self.channel;
        // One statement: the sub-statements see one snapshot and touch distinct rows (older
        // generations of others; this holder's row; this generation's other rows).
        let announced = self
            .users_write(
                provider,
                "WITH lease AS (
                     SELECT provider FROM leases WHERE provider = $1 AND fence = $4 FOR SHARE),
                 forgotten AS (
                     DELETE FROM token_users WHERE provider = $1 AND generation < $3
                         AND holder <> $2 AND EXISTS (SELECT 1 FROM lease)),
                 own AS (
                     INSERT INTO token_users (provider, holder, generation, state)
                     SELECT $1, $2, $3, 'drained' WHERE EXISTS (SELECT 1 FROM lease)
                     ON CONFLICT (provider, holder) DO UPDATE SET generation = excluded.generation,
                         state = 'drained'),
                 asked AS (
                     UPDATE token_users SET state = 'draining'
                     WHERE provider = $1 AND generation = $3 AND holder <> $2 AND state = 'using'
                         AND EXISTS (SELECT 1 FROM lease))
                 SELECT pg_notify($5, provider) FROM lease",
                &[
                    &provider,
                    &holder,
                    &signed(generation_),
                    &signed(fence),
                    &channel,
                ],
            )
            .await?
            .len();
        if announced == 1 {
            Ok(())
        } else {
            Err(drain_fenced(generation_))
        }
    }

    async fn withdraw_drain(
        &self,
        provider: &str,
        fence: u64,
        generation_: u64,
    ) -> Result<(), StoreError> {
        let channel: &str = &self.channel;
        // Told only if a record changed: a failed attempt with nothing announced is common.
        let leased = self
            .users_write(
                provider,
                "WITH lease AS (
                     SELECT provider FROM leases WHERE provider = $1 AND fence = $3 FOR SHARE),
                 withdrawn AS (
                     UPDATE token_users SET state = 'using'
                     WHERE provider = $1 AND generation = $2 AND state <> 'using'
                         AND EXISTS (SELECT 1 FROM lease)
                     RETURNING provider),
                 told AS (SELECT pg_notify($4, provider) FROM withdrawn LIMIT 1)
                 SELECT provider FROM lease WHERE (SELECT count(*) FROM told) >= 0",
                &[&provider, &signed(generation_), &signed(fence), &channel],
            )
            .await?
            .len();
        if leased == 1 {
            Ok(())
        } else {
            Err(drain_fenced(generation_))
        }
    }

    async fn drain_request(&self, provider: &str, holder: &str) -> Result<Option<u64>, StoreError> {
        let row = self
            .query_opt(
                "SELECT generation FROM token_users
                 WHERE provider = $1 AND holder = $2 AND state = 'draining'",
                &[&provider, &holder],
            )
            .await?;
        row.map(|row| self.get(&row, 0).map(generation)).transpose()
    }

    async fn ack_drain(
        &self,
        provider: &str,
        holder: &str,
        generation_: u64,
    ) -> Result<(), StoreError> {
        self.notifying(
            "WITH changed AS (
                 UPDATE token_users SET state = 'drained'
                 WHERE provider = $1 AND holder = $2 AND generation = $3 AND state = 'draining'
                 RETURNING provider)
             SELECT pg_notify($4, provider) FROM changed",
            &[&provider, &holder, &signed(generation_)],
        )
        .await
        .map(drop)
    }

    async fn undrained(&self, provider: &str, generation_: u64) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query(
                "SELECT holder FROM token_users
                 WHERE provider = $1 AND generation = $2 AND state = 'draining'
                 ORDER BY holder",
                &[&provider, &signed(generation_)],
            )
            .await?;
        rows.iter().map(|row| self.get(row, 0)).collect()
    }

    async fn rekey(&self, reseal: Reseal) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.db(&e))?;
        let db = |e: tokio_postgres::Error| self.db(&e);
        // Writers wait (readers do not) until the new seals are committed, so no value can be
        // written under the old key after its table was walked: as SQLite's IMMEDIATE
        // transaction.
        tx.batch_execute("LOCK TABLE tokens, refresh_tokens, meta IN EXCLUSIVE MODE")
            .await
            .map_err(db)?;
        let mut count = 0;
        for (table, purpose) in SEALED_TABLES {
            let rows = tx
                .query(&format!("SELECT provider, sealed FROM {table}"), &[])
                .await
                .map_err(db)?;
            let update = format!("UPDATE {table} SET sealed = $2 WHERE provider = $1");
            for row in &rows {
                let provider: &str = self.get(row, 0)?;
                let sealed: &[u8] = self.get(row, 1)?;
                let resealed = reseal(SealedRow {
                    provider,
                    purpose,
                    sealed,
                })
                .map_err(reseal_failed)?;
                tx.execute(&update, &[&provider, &resealed])
                    .await
                    .map_err(db)?;
            }
            count += rows.len();
        }
        let check = tx
            .query_opt("SELECT value FROM meta WHERE key = $1", &[&KEY_CHECK])
            .await
            .map_err(db)?;
        if let Some(row) = check {
            let sealed: &[u8] = self.get(&row, 0)?;
            let resealed = reseal(SealedRow {
                provider: "",
                purpose: Purpose::KeyCheck,
                sealed,
            })
            .map_err(reseal_failed)?;
            tx.execute(
                "UPDATE meta SET value = $2 WHERE key = $1",
                &[&KEY_CHECK, &resealed],
            )
            .await
            .map_err(db)?;
            count += 1;
        }
        tx.commit().await.map_err(db)?;
        Ok(count)
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        Some(self.listener.subscribe())
    }
}

/// How far `at` is from `now`, in signed milliseconds (negative: before it), saturating.
fn from_now(at: SystemTime, now: SystemTime) -> i64 {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    match at.duration_since(now) {
        Ok(ahead) => ms(ahead),
        Err(behind) => -ms(behind.duration()),
    }
}

/// The time `ms` milliseconds from `now` (the epoch at the earliest; a `SystemTime` reaches
/// far past any `i64` of milliseconds, so the addition does not overflow).
fn at_from_now(ms: i64, now: SystemTime) -> SystemTime {
    let distance = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        now.checked_add(distance).unwrap_or(now)
    } else {
        now.checked_sub(distance)
            .map_or(SystemTime::UNIX_EPOCH, |at| at.max(SystemTime::UNIX_EPOCH))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_crosses_as_its_distance_from_now_and_back() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        assert_eq!(from_now(now + hour, now), 3_600_000);
        assert_eq!(from_now(now - hour, now), -3_600_000);
        for at in [now, now + hour, now - hour] {
            assert_eq!(at_from_now(from_now(at, now), now), at);
        }
        let before_the_epoch = from_now(SystemTime::UNIX_EPOCH, now) - 1_000;
        assert_eq!(at_from_now(before_the_epoch, now), SystemTime::UNIX_EPOCH);
    }
}
