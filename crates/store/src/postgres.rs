//! The cluster store: PostgreSQL shared by every broker of a cluster, with the same tables,
//! compare-and-sets and lease as the embedded SQLite store, so the core cannot tell them
//! apart, and several brokers behave as one.
//!
//! tokio-postgres with a deadpool pool rather than sqlx: leaner (no macros, no query
//! checking at build time, no second runtime abstraction), and the same choice as rusqlite on
//! the SQLite side, a thin driver under hand-written SQL. Times come from the callers and the
//! brokers' clocks (`SystemTime::now()`), except a lease's expiry, a refresh intent's time
//! and the issuance ledger's times: those are the database's clock, the one all brokers share
//! (brokers on one SQLite file share a host's). Every write is one
//! autocommitted statement or one transaction; PostgreSQL's default `synchronous_commit = on`
//! makes it durable before the call returns.
//!
//! This file owns the pool and the way calls use it; the `Store` statements are in
//! `contract`, the connection string and TLS in `endpoint`, the schema in `migrate`, the
//! error mapping in `error`, the change notifications between brokers in `listen`. An
//! optional PostgreSQL schema isolates one broker cluster (or one test) inside a shared
//! database: every pooled connection starts with `SET search_path` to it.

mod contract;
mod endpoint;
mod error;
mod listen;
mod migrate;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Hook, HookError, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use secrecy::{ExposeSecret, SecretString};
use tokenbroker_core::store::{StoreError, StoreErrorKind};
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};

use crate::convert::{refresh_moved, signed};
use endpoint::Endpoint;
use listen::{Listener, Target};
use migrate::Mode;

/// Connections per broker: the store is on the issuance path only, so a few suffice even
/// with many providers issuing at once.
const POOL_SIZE: usize = 8;

/// How long a call waits for a pooled connection, or for a new one to open, before the
/// store counts as unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(15);

/// A statement's parameters.
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// How long a write of a token's users waits for another's lock.
const USERS_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '5s'";

/// The PostgreSQL store: a pool of connections to one database (and schema).
#[derive(Clone)]
pub struct PostgresStore {
    /// Connections, each with the schema's `search_path` set.
    pool: Pool,
    /// The database (and schema) for messages: never its user or password.
    name: Arc<str>,
    /// The cluster's notification channel, which writes notify (`listen::channel`).
    channel: Arc<str>,
    /// The connection that listens on `channel`, started by the first `changes()`.
    listener: Arc<Listener>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.name)
            .finish()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL or libpq `key=value` pairs; TLS
    /// when its `sslmode` is `require`, `verify-ca` or `verify-full`) and brings its schema
    /// up to date. With `schema`, the store lives in that PostgreSQL schema, created if
    /// missing: one per cluster of brokers, or per test. Fails with `TooNew` for a database
    /// migrated by a newer tokenbroker, `Unavailable` when it cannot be reached.
    pub async fn connect(url: &SecretString, schema: Option<&str>) -> Result<Self, StoreError> {
        Self::open(url, schema, Mode::Migrate).await
    }

    /// Connects to a store a broker has already created at this version, without changing
    /// its schema: for the commands that read or repair a store, so that a newer CLI never
    /// migrates a store under the older brokers that run on it.
    pub async fn connect_existing(
        url: &SecretString,
        schema: Option<&str>,
    ) -> Result<Self, StoreError> {
        Self::open(url, schema, Mode::Check).await
    }

    async fn open(
        url: &SecretString,
        schema: Option<&str>,
        mode: Mode,
    ) -> Result<Self, StoreError> {
        let endpoint = Endpoint::parse(url.expose_secret())?;
        let quoted = schema.map(quote).transpose()?;
        let name: Arc<str> = match schema {
            Some(schema) => format!("{} (schema {schema})", endpoint.name).into(),
            None => endpoint.name.into(),
        };
        let manager_config = ManagerConfig {
            // One empty round trip before each use: a connection that died (a restarted
            // database, a dropped link) is replaced before a call fails on it.
            recycling_method: RecyclingMethod::Verified,
        };
        let channel: Arc<str> = listen::channel(schema).into();
        let listener = Arc::new(Listener::new(Target {
            config: endpoint.config.clone(),
            tls: endpoint.tls.clone(),
            name: name.clone(),
            channel: channel.clone(),
        }));
        let manager = match endpoint.tls {
            Some(tls) => Manager::from_config(endpoint.config, tls, manager_config),
            None => Manager::from_config(endpoint.config, tokio_postgres::NoTls, manager_config),
        };
        let mut builder = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT));
        // The fenced writes rely on READ COMMITTED (see `contract`): a write that waited for
        // a lease renewal then sees the renewed row, where a stricter default of the server's
        // or the role's would fail it as a serialization failure.
        let mut set = "SET default_transaction_isolation TO 'read committed'".to_owned();
        if let Some(quoted) = &quoted {
            set.push_str(&format!("; SET search_path TO {quoted}"));
        }
        builder = builder.post_create(Hook::async_fn(move |client, _| {
            let set = set.clone();
            Box::pin(async move { client.batch_execute(&set).await.map_err(HookError::Backend) })
        }));
        let pool = builder.build().map_err(|e| {
            StoreError::new(StoreErrorKind::Unavailable, format!("store {name}: {e}"))
        })?;
        let store = Self {
            pool,
            name,
            channel,
            listener,
        };
        let mut client = store.client().await?;
        let schema = schema.zip(quoted.as_deref());
        migrate::migrate(&mut client, schema, &store.name, mode).await?;
        drop(client);
        Ok(store)
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| error::pool(&self.name, &e))
    }

    /// Maps a database error.
    fn db(&self, e: &tokio_postgres::Error) -> StoreError {
        error::map(&self.name, e)
    }

    /// Column `index` of `row`; `Corrupt` if it is missing or of another type.
    fn get<'a, T: FromSql<'a>>(&self, row: &'a Row, index: usize) -> Result<T, StoreError> {
        row.try_get(index)
            .map_err(|e| error::corrupt(&self.name, &e))
    }

    /// Runs one statement (prepared once per connection); returns how many rows it changed.
    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| self.db(&e))?;
        client
            .execute(&statement, params)
            .await
            .map_err(|e| self.db(&e))
    }

    /// Runs one query (prepared once per connection); returns its rows.
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| self.db(&e))?;
        client
            .query(&statement, params)
            .await
            .map_err(|e| self.db(&e))
    }

    /// Runs one write that notifies the cluster's channel, shaped
    /// `WITH changed AS (... RETURNING provider) SELECT pg_notify($n, provider) FROM changed`
    /// with the channel as its last parameter `$n`; returns how many rows it changed (and
    /// notified of, when the write commits).
    async fn notifying(&self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        let channel: &str = &self.channel;
        let mut all: Vec<&(dyn ToSql + Sync)> = params.to_vec();
        all.push(&channel);
        Ok(self.query(sql, &all).await?.len() as u64)
    }

    /// Runs a write of the token's users (`token_users`) in a transaction that first takes
    /// the provider's users lock (an advisory lock of this schema and provider); returns its
    /// rows. Those writes decide from what the others wrote (a broker taking a token up looks
    /// for its drain; an announcement asks the brokers that use it): under the lock, each
    /// one's snapshot is taken after the other committed, so neither misses the other.
    async fn users_write(
        &self,
        provider: &str,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let db = |e: tokio_postgres::Error| self.db(&e);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // A broker cut off mid-transaction holds the lock until its connection is given up
        // for dead: the others wait a few seconds at most, then fail as unavailable.
        tx.batch_execute(USERS_LOCK_TIMEOUT).await.map_err(db)?;
        let key = format!("{}/{provider}", self.channel);
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&key],
        )
        .await
        .map_err(db)?;
        let statement = tx.prepare_cached(sql).await.map_err(db)?;
        let rows = tx.query(&statement, params).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(rows)
    }

    /// Runs one query that finds at most one row.
    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// The fenced compare-and-set that stores refresh token `sealed` as the successor of
    /// generation `expected` (0: none yet), clears any intent and `needs_credentials`, and
    /// notifies the cluster, on `client` (a pooled connection or a transaction); whether it
    /// did (not: another generation is stored, or the lease has moved on).
    async fn put_refresh(
        &self,
        client: &impl GenericClient,
        provider: &str,
        fence: u64,
        expected: u64,
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        let channel: &str = &self.channel;
        let (fence, expected, next) = (signed(fence), signed(expected), signed(expected + 1));
        let (sql, params): (&str, Params<'_>) = if expected == 0 {
            (
                "WITH changed AS (
                     INSERT INTO refresh_tokens (provider, generation, sealed)
                     SELECT $1, 1, $2 WHERE EXISTS (
                         SELECT 1 FROM leases WHERE provider = $1 AND fence = $3 FOR SHARE)
                     ON CONFLICT (provider) DO NOTHING RETURNING provider)
                 SELECT pg_notify($4, provider) FROM changed",
                &[&provider, &sealed, &fence, &channel],
            )
        } else {
            (
                "WITH changed AS (
                     UPDATE refresh_tokens SET generation = $3, sealed = $2, intent_at_ms = NULL,
                            needs_credentials = NULL
                     WHERE provider = $1 AND generation = $4 AND EXISTS (
                         SELECT 1 FROM leases WHERE provider = $1 AND fence = $5 FOR SHARE)
                     RETURNING provider)
                 SELECT pg_notify($6, provider) FROM changed",
                &[&provider, &sealed, &next, &expected, &fence, &channel],
            )
        };
        let statement = client.prepare_cached(sql).await.map_err(|e| self.db(&e))?;
        let changed = client
            .query(&statement, params)
            .await
            .map_err(|e| self.db(&e))?;
        Ok(changed.len() == 1)
    }

    /// Runs a fenced compare-and-set update of refresh token `generation_`; `Conflict` if
    /// the generation moved on or the lease passed to another holder. `$1` is the provider,
    /// `$2` the generation, `$3` the lease's fence.
    async fn refresh_update(
        &self,
        sql: &str,
        provider: &str,
        fence: u64,
        generation_: u64,
    ) -> Result<(), StoreError> {
        let (generation_signed, fence) = (signed(generation_), signed(fence));
        let changed = self
            .execute(sql, &[&provider, &generation_signed, &fence])
            .await?;
        if changed == 1 {
            Ok(())
        } else {
            Err(refresh_moved(generation_))
        }
    }
}

/// `schema` quoted as an identifier. Only plain names are taken (letters, digits,
/// underscores, at most 63 bytes), so the quoting needs no escapes and a name never smuggles
/// SQL into `SET search_path`.
fn quote(schema: &str) -> Result<String, StoreError> {
    let plain = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        Ok(format!("\"{schema}\""))
    } else {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!(
                "invalid PostgreSQL schema name {schema:?}: use letters, digits and underscores \
                 (at most 63, not starting with a digit)"
            ),
        ))
    }
}
