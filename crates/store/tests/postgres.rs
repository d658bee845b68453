//! The store contract on PostgreSQL, plus what is PostgreSQL's own: committed tokens survive
//! reconnecting, a newer schema is refused, brokers starting at once migrate once, the lease
//! holds across brokers, writes notify the other brokers of the cluster (and only them),
//! TLS when the URL asks for it, no password in any error.
//!
//! Runs against `TOKENBROKER_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//! each test in a fresh schema of its own, dropped at the end, so tests run in parallel. Where
//! no PostgreSQL answers, each test says `SKIPPED: ...` on stderr and returns.

mod conformance;

use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use tokenbroker_core::store::{Change, Lease, Store, StoreErrorKind};
use tokenbroker_store::PostgresStore;
use tokio::sync::broadcast;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test database's URL.
fn url() -> String {
    std::env::var("TOKENBROKER_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `url` with the query parameters `params` added.
fn with_query(url: &str, params: &str) -> String {
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}{params}")
}

/// `url` with any password masked, for printing.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "the configured connection string".to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// A raw connection to the test database, or `None` (after saying so) if none answers.
async fn raw() -> Option<tokio_postgres::Client> {
    let url = url();
    let connecting = tokio_postgres::connect(&url, tokio_postgres::NoTls);
    let outcome = tokio::time::timeout(Duration::from_secs(10), connecting).await;
    let why = match outcome {
        Ok(Ok((client, connection))) => {
            tokio::spawn(connection);
            return Some(client);
        }
        // The server answered and refused (a wrong user, no such database): a broken setup,
        // not a missing database.
        Ok(Err(e)) if e.as_db_error().is_some() => panic!("PostgreSQL at {}: {e:?}", shown(&url)),
        Ok(Err(e)) => std::error::Error::source(&e).map_or(e.to_string(), ToString::to_string),
        Err(_) => "no answer within 10 s".to_owned(),
    };
    no_database(&format!(
        "PostgreSQL not reachable at {} ({why}); set TOKENBROKER_TEST_PG_URL",
        shown(&url)
    ));
    None
}

/// Says on the terminal that a test (or part of one) is skipped and why. Written to stderr
/// directly: the test harness keeps `eprintln!` of a passing test to itself.
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// A PostgreSQL test cannot run for want of a database: skipped (saying `why`), or a
/// failure where one is required (`TOKENBROKER_REQUIRE_PG`, which CI sets).
fn no_database(why: &str) {
    if std::env::var_os("TOKENBROKER_REQUIRE_PG").is_some() {
        panic!("TOKENBROKER_REQUIRE_PG is set, and {why}");
    }
    skipped(why);
}

/// A fresh schema of the test database, dropped (best effort) when the test ends, even by a
/// panic.
struct Schema {
    name: String,
}

impl Schema {
    /// A new schema name; the schema itself is created by the store's `connect`.
    fn new() -> Self {
        Self {
            name: format!("tb_test_{:016x}", rand::random::<u64>()),
        }
    }

    async fn connect(&self) -> Result<PostgresStore, tokenbroker_core::store::StoreError> {
        PostgresStore::connect(&SecretString::from(url()), Some(&self.name)).await
    }

    /// As the commands that read or repair a store connect: without creating or migrating.
    async fn connect_existing(&self) -> Result<PostgresStore, tokenbroker_core::store::StoreError> {
        PostgresStore::connect_existing(&SecretString::from(url()), Some(&self.name)).await
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Bounded: a test that failed mid-transaction may leave it open (its connection's
        // task cannot run while this blocks), and the test must then fail, not hang.
        let drop_schema = format!(
            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.name
        );
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its
        // own with a runtime of its own does the cleanup.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&drop_schema).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A store in a fresh schema, or `None` (after saying so) without PostgreSQL.
async fn fresh() -> Option<(Schema, PostgresStore)> {
    raw().await?;
    let schema = Schema::new();
    let store = schema.connect().await.unwrap();
    Some((schema, store))
}

#[tokio::test]
async fn token_writes_are_compare_and_set() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::token_writes_are_compare_and_set(&store).await;
}

#[tokio::test]
async fn leases_exclude_other_holders_until_they_expire() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::leases_exclude_other_holders_until_they_expire(&store).await;
}

#[tokio::test]
async fn audit_appends_and_filters() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::audit_appends_and_filters(&store).await;
}

#[tokio::test]
async fn key_check_is_written_once() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::key_check_is_written_once(&store).await;
}

#[tokio::test]
async fn given_refresh_tokens_are_stored_once() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::given_refresh_tokens_are_stored_once(&store).await;
}

#[tokio::test]
async fn rekey_reseals_all_or_nothing() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::rekey_reseals_all_or_nothing(&store).await;
}

#[tokio::test]
async fn refresh_tokens_rotate_by_compare_and_set() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::refresh_tokens_rotate_by_compare_and_set(&store).await;
}

#[tokio::test]
async fn a_refresh_intent_is_stamped_and_aged_by_the_database_clock() {
    let Some((schema, store)) = fresh().await else {
        return;
    };
    let fence = conformance::fence(&store, "crm").await;
    store.save_refresh("crm", fence, 0, b"rt1").await.unwrap();
    // This broker's clock is an hour behind the database's (and the other brokers').
    let behind = SystemTime::now() - Duration::from_secs(3600);
    store.begin_refresh("crm", fence, 1, behind).await.unwrap();
    let stored = store.load_refresh("crm").await.unwrap().unwrap();
    let age = SystemTime::now()
        .duration_since(stored.intent_at.expect("an intent"))
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(5),
        "the intent reads {age:?} old: it was stamped with the broker's clock"
    );

    // A minute ago by the database's clock: a second use keeps the first one's time.
    let raw = raw().await.expect("PostgreSQL answered a moment ago");
    raw.execute(
        &format!(
            "UPDATE \"{}\".refresh_tokens
             SET intent_at_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 60000",
            schema.name
        ),
        &[],
    )
    .await
    .unwrap();
    store
        .begin_refresh("crm", fence, 1, SystemTime::now())
        .await
        .unwrap();
    let stored = store.load_refresh("crm").await.unwrap().unwrap();
    let age = SystemTime::now()
        .duration_since(stored.intent_at.expect("an intent"))
        .unwrap_or_default();
    assert!(
        age >= Duration::from_secs(60),
        "the grace counts from the first use, not {age:?} ago"
    );

    // Stamped a minute in the database's future (a broker's clock, before the store stamped
    // intents itself): no age to trust, so as old as can be.
    raw.execute(
        &format!(
            "UPDATE \"{}\".refresh_tokens
             SET intent_at_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 60000",
            schema.name
        ),
        &[],
    )
    .await
    .unwrap();
    let stored = store.load_refresh("crm").await.unwrap().unwrap();
    assert_eq!(stored.intent_at, Some(SystemTime::UNIX_EPOCH));
}

#[tokio::test]
async fn ledger_keeps_requests_and_outcomes() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::ledger_keeps_requests_and_outcomes(&store).await;
}

#[tokio::test]
async fn drains_are_announced_acknowledged_and_fenced() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::drains_are_announced_acknowledged_and_fenced(&store).await;
}

#[tokio::test]
async fn issuer_holds_are_kept_until_their_time_is_up() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::issuer_holds_are_kept_until_their_time_is_up(&store).await;
}

#[tokio::test]
async fn a_stopped_user_is_not_waited_for() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::a_stopped_user_is_not_waited_for(&store).await;
}

#[tokio::test]
async fn drains_are_called_off_by_the_lease_holder() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::drains_are_called_off_by_the_lease_holder(&store).await;
}

#[tokio::test]
async fn a_stale_lease_holder_is_fenced() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    conformance::a_stale_lease_holder_is_fenced(&store).await;
}

#[tokio::test]
async fn committed_tokens_survive_reconnecting() {
    let Some((schema, store)) = fresh().await else {
        return;
    };
    let fence = conformance::fence(&store, "cr").await;
    store
        .save_token("cr", fence, 0, &conformance::token(1, b"sealed"))
        .await
        .unwrap();
    drop(store);
    let reconnected = schema.connect().await.unwrap();
    assert_eq!(
        reconnected.load_token("cr").await.unwrap(),
        Some(conformance::token(1, b"sealed"))
    );
}

#[tokio::test]
async fn a_store_from_a_newer_version_is_refused() {
    let Some((schema, store)) = fresh().await else {
        return;
    };
    drop(store);
    let client = raw().await.unwrap();
    let table = format!("\"{}\".schema_migrations", schema.name);
    client
        .batch_execute(&format!(
            "INSERT INTO {table} (version, applied_at_ms) VALUES (99, 0)"
        ))
        .await
        .unwrap();
    let error = schema.connect().await.unwrap_err();
    assert_eq!(error.kind, StoreErrorKind::TooNew);
    assert!(
        error.message.contains("schema version 99"),
        "{}",
        error.message
    );
    assert!(error.message.contains("refusing"), "{}", error.message);
    let row = client
        .query_one(&format!("SELECT MAX(version) FROM {table}"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i32>>(0), Some(99), "not migrated down");
}

#[tokio::test]
async fn connecting_to_an_existing_store_never_creates_or_migrates_it() {
    let Some(client) = raw().await else {
        return;
    };
    let missing = Schema::new();
    let error = missing.connect_existing().await.map(drop).unwrap_err();
    assert!(
        error.message.contains("no tokenbroker store"),
        "{}",
        error.message
    );
    let created = client
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&missing.name],
        )
        .await
        .unwrap();
    assert!(created.is_none(), "the schema was created");

    // A store at the previous version, as a broker of that version left it.
    let older = Schema::new();
    drop(older.connect().await.unwrap());
    let table = format!("\"{}\".schema_migrations", older.name);
    client
        .batch_execute(&format!(
            "DELETE FROM {table} WHERE version = (SELECT MAX(version) FROM {table})"
        ))
        .await
        .unwrap();
    let version = || async {
        let row = client
            .query_one(&format!("SELECT MAX(version) FROM {table}"), &[])
            .await
            .unwrap();
        row.get::<_, Option<i32>>(0).unwrap()
    };
    let before = version().await;
    let error = older.connect_existing().await.map(drop).unwrap_err();
    assert!(
        error.message.contains("older than this tokenbroker"),
        "{}",
        error.message
    );
    assert_eq!(version().await, before, "not migrated");
    // At this version (the row back), it opens.
    client
        .batch_execute(&format!(
            "INSERT INTO {table} (version, applied_at_ms) VALUES ({}, 0)",
            before + 1
        ))
        .await
        .unwrap();
    older.connect_existing().await.unwrap();
}

#[tokio::test]
async fn brokers_connecting_at_once_to_a_fresh_schema_migrate_once() {
    let Some(client) = raw().await else {
        return;
    };
    let schema = Schema::new();
    let (a, b, c, d) = tokio::join!(
        schema.connect(),
        schema.connect(),
        schema.connect(),
        schema.connect()
    );
    let stores = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count();
    let row = client
        .query_one(
            &format!(
                "SELECT COUNT(*), MAX(version) FROM \"{}\".schema_migrations",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let (count, version): (i64, i32) = (row.get(0), row.get(1));
    assert_eq!(
        count,
        i64::try_from(migrations).unwrap(),
        "each applied once"
    );
    assert_eq!(version, i32::try_from(migrations).unwrap());
    // All four see one store.
    let fence = conformance::fence(&stores[0], "cr").await;
    stores[0]
        .save_token("cr", fence, 0, &conformance::token(1, b"one"))
        .await
        .unwrap();
    for store in &stores {
        assert_eq!(store.load_token("cr").await.unwrap().unwrap().generation, 1);
    }
}

#[tokio::test]
async fn the_lease_excludes_a_second_broker_on_the_same_schema() {
    let Some((schema, first)) = fresh().await else {
        return;
    };
    let second = schema.connect().await.unwrap();
    let ttl = Duration::from_secs(60);
    let Lease::Granted { fence } = first.acquire_lease("cr", "broker-a", ttl).await.unwrap() else {
        panic!("a free lease is granted");
    };
    assert!(matches!(
        second.acquire_lease("cr", "broker-b", ttl).await.unwrap(),
        Lease::HeldElsewhere { .. }
    ));
    first.release_lease("cr", "broker-a").await.unwrap();
    let Lease::Granted { fence: next } = second.acquire_lease("cr", "broker-b", ttl).await.unwrap()
    else {
        panic!("a released lease is granted to the other broker");
    };
    assert!(next > fence, "the fence grows across brokers");

    // Many holders on both brokers asking at the same moment: exactly one wins.
    let mut asks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        asks.spawn(async move {
            store
                .acquire_lease("race", &format!("holder-{i}"), ttl)
                .await
        });
    }
    let outcomes: Vec<Lease> = asks
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let granted = outcomes
        .iter()
        .filter(|o| matches!(o, Lease::Granted { .. }))
        .count();
    assert_eq!(granted, 1, "{outcomes:?}");
}

/// A broker that takes a token up at the moment another announces its drain is asked to
/// drain it, whichever of the two writes comes first: neither may decide from a snapshot
/// that misses the other (it would serve the token on, and not be waited for).
#[tokio::test]
async fn a_token_taken_up_while_its_drain_is_announced_is_drained() {
    let Some((_schema, store)) = fresh().await else {
        return;
    };
    let ttl = Duration::from_secs(60);
    for round in 0..100 {
        let provider = format!("cr{round}");
        let Lease::Granted { fence } = store.acquire_lease(&provider, "a", ttl).await.unwrap()
        else {
            panic!("a free lease is granted");
        };
        let (taken_up, announced) = tokio::join!(
            store.register_user(&provider, "b", 1),
            store.announce_drain(&provider, "a", fence, 1)
        );
        taken_up.unwrap();
        announced.unwrap();
        assert_eq!(
            store.drain_request(&provider, "b").await.unwrap(),
            Some(1),
            "round {round}: the broker that took the token up is not asked to drain it"
        );
    }
}

/// A fenced write that waits for a lease renewal goes ahead once the renewal commits, even
/// where the database's default isolation is stricter than READ COMMITTED (given here by the
/// URL's `options`, as a server or role default would): there, the write would fail as a
/// serialization failure. (`pg_current_xact_id` needs PostgreSQL 13 or later.)
#[tokio::test]
async fn a_fenced_write_after_a_lease_renewal_holds_under_a_strict_default_isolation() {
    let Some(renewal) = raw().await else {
        return;
    };
    let schema = Schema::new();
    let strict = with_query(
        &url(),
        "options=-c%20default_transaction_isolation%3Dserializable",
    );
    let store = PostgresStore::connect(&SecretString::from(strict), Some(&schema.name))
        .await
        .unwrap();
    let Lease::Granted { fence } = store
        .acquire_lease("cr", "broker-a", Duration::from_secs(60))
        .await
        .unwrap()
    else {
        panic!("a free lease is granted");
    };
    // A renewal of the lease, held open: it has the lease's row locked.
    renewal.batch_execute("BEGIN").await.unwrap();
    renewal
        .execute(
            &format!(
                "UPDATE \"{}\".leases SET expires_at_ms = expires_at_ms + 1 WHERE provider = 'cr'",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let xid: String = renewal
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .unwrap()
        .get(0);
    let write = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .save_token("cr", fence, 0, &conformance::token(1, b"one"))
                .await
        }
    });
    // Until the write waits for the renewal's lock.
    let waiting = "SELECT count(*) FROM pg_locks \
                   WHERE NOT granted AND locktype = 'transactionid' AND transactionid::text = $1";
    let mut polls = 0;
    while renewal
        .query_one(waiting, &[&xid])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        polls += 1;
        assert!(polls < 1000, "the write never waited for the renewal");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    renewal.batch_execute("COMMIT").await.unwrap();
    write
        .await
        .unwrap()
        .expect("the write goes ahead under its own fence");
    assert_eq!(store.load_token("cr").await.unwrap().unwrap().generation, 1);
}

#[tokio::test]
async fn tls_is_used_and_verified_when_the_url_asks_for_it() {
    let Some(client) = raw().await else {
        return;
    };
    let url = url();
    // Without a trusted root for the server's certificate, nothing connects: no silent
    // fallback to a plain or an unverified connection.
    let require = SecretString::from(with_query(&url, "sslmode=require"));
    let schema = Schema::new();
    match PostgresStore::connect(&require, Some(&schema.name)).await {
        Ok(_) => eprintln!("note: the system roots trust the server's certificate"),
        Err(e) => {
            eprintln!("sslmode=require without a trusted root: {}", e.message);
            assert_eq!(e.kind, StoreErrorKind::Unavailable, "{}", e.message);
            assert!(
                e.message.contains("TLS") || e.message.contains("certificate"),
                "{}",
                e.message
            );
        }
    }
    // With the server's own certificate as the root, and its name as the host, TLS works.
    let ssl = client.query_one("SHOW ssl", &[]).await.unwrap();
    let cert = client.query_one("SHOW ssl_cert_file", &[]).await.unwrap();
    let cert: String = cert.get(0);
    let local = url.contains("@127.0.0.1:") || url.contains("@localhost:");
    if ssl.get::<_, String>(0) != "on" || !local || std::fs::metadata(&cert).is_err() {
        skipped("(part) the server has no TLS certificate this test can read, or is not local");
        return;
    }
    let verified = url.replacen("@127.0.0.1:", "@localhost:", 1);
    let verified = SecretString::from(with_query(
        &verified,
        &format!("sslmode=verify-full&sslrootcert={cert}"),
    ));
    match PostgresStore::connect(&verified, Some(&schema.name)).await {
        Ok(store) => {
            eprintln!("sslmode=verify-full with sslrootcert={cert}: connected");
            store.set_key_check(b"over tls").await.unwrap();
            assert_eq!(store.key_check().await.unwrap().unwrap(), b"over tls");
        }
        // A certificate for another name than localhost: verification must be what failed.
        Err(e) => assert!(e.message.contains("certificate"), "{}", e.message),
    }
}

#[tokio::test]
async fn a_table_missing_after_migration_is_reported_corrupt() {
    let Some((schema, store)) = fresh().await else {
        return;
    };
    let client = raw().await.unwrap();
    client
        .batch_execute(&format!("DROP TABLE \"{}\".tokens", schema.name))
        .await
        .unwrap();
    let error = store.load_token("cr").await.unwrap_err();
    assert_eq!(error.kind, StoreErrorKind::Corrupt, "{}", error.message);
    assert!(error.message.contains("42P01"), "{}", error.message);
}

#[tokio::test]
async fn connections_the_server_dropped_are_replaced_without_an_error() {
    let Some(client) = raw().await else {
        return;
    };
    let schema = Schema::new();
    let tagged = SecretString::from(with_query(
        &url(),
        &format!("application_name={}", schema.name),
    ));
    let store = PostgresStore::connect(&tagged, Some(&schema.name))
        .await
        .unwrap();
    store.set_key_check(b"before").await.unwrap();
    let terminated = client
        .query_one(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                   WHERE application_name = $1) AS t",
            &[&schema.name],
        )
        .await
        .unwrap();
    assert!(
        terminated.get::<_, i64>(0) >= 1,
        "the store's connection was found"
    );
    assert_eq!(store.key_check().await.unwrap().unwrap(), b"before");
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_and_keeps_the_password_secret() {
    // Port 1 on the loopback: nothing listens, the connection is refused at once.
    let url = SecretString::from("postgres://alice:hunter2@127.0.0.1:1/prod".to_owned());
    let error = PostgresStore::connect(&url, None).await.unwrap_err();
    assert_eq!(error.kind, StoreErrorKind::Unavailable);
    assert!(
        error.message.contains("postgres://127.0.0.1:1/prod"),
        "{}",
        error.message
    );
    assert!(!error.message.contains("hunter2"), "{}", error.message);
    assert!(!error.message.contains("alice"), "{}", error.message);
}

#[tokio::test]
async fn a_schema_name_that_is_not_plain_is_refused() {
    let url = SecretString::from(url());
    for name in ["", "a;DROP TABLE x", "with space", "\"quoted\"", "9lives"] {
        let error = PostgresStore::connect(&url, Some(name)).await.unwrap_err();
        assert!(error.message.contains("schema name"), "{}", error.message);
    }
}

/// The next change `changes` tells of, waiting at most 10 s.
async fn next_change(changes: &mut broadcast::Receiver<Change>) -> Change {
    tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("a change is told within 10 s")
        .expect("the store keeps telling")
}

/// `Provider(name)`.
fn of(name: &str) -> Change {
    Change::Provider(name.to_owned())
}

#[tokio::test]
async fn writes_notify_the_brokers_of_the_cluster_when_they_commit_a_change() {
    let Some((schema, writer)) = fresh().await else {
        return;
    };
    let other_cluster = Schema::new();
    let elsewhere = other_cluster.connect().await.unwrap();
    let listener = schema.connect().await.unwrap();
    let mut changes = listener.changes().expect("PostgreSQL tells of changes");
    assert_eq!(
        next_change(&mut changes).await,
        Change::Everything,
        "once listening, the store says to re-read everything"
    );

    let (cr, crm) = (
        conformance::fence(&writer, "cr").await,
        conformance::fence(&writer, "crm").await,
    );
    writer
        .save_token("cr", cr, 0, &conformance::token(1, b"one"))
        .await
        .unwrap();
    assert_eq!(next_change(&mut changes).await, of("cr"));
    // Writes that change nothing notify nobody: each check below would otherwise first
    // receive the "cr" of the write before it. Writes of another cluster are not heard.
    let lost = writer
        .save_token("cr", cr, 0, &conformance::token(1, b"again"))
        .await;
    assert_eq!(lost.unwrap_err().kind, StoreErrorKind::Conflict);
    writer.retire_token("cr", 7).await.unwrap();
    let theirs = conformance::fence(&elsewhere, "cr").await;
    elsewhere
        .save_token("cr", theirs, 0, &conformance::token(1, b"theirs"))
        .await
        .unwrap();
    writer.save_refresh("crm", crm, 0, b"rt1").await.unwrap();
    assert_eq!(next_change(&mut changes).await, of("crm"));
    writer.retire_token("cr", 1).await.unwrap();
    assert_eq!(next_change(&mut changes).await, of("cr"));
    writer
        .mark_needs_credentials("crm", crm, 1, "invalid_grant")
        .await
        .unwrap();
    assert_eq!(next_change(&mut changes).await, of("crm"));
    writer.save_refresh("crm", crm, 1, b"rt2").await.unwrap();
    assert_eq!(next_change(&mut changes).await, of("crm"));
    // A drain: its announcement is told, and its calling off if that changed anything.
    writer.withdraw_drain("cr", cr, 1).await.unwrap();
    writer.save_refresh("crm", crm, 2, b"rt3").await.unwrap();
    assert_eq!(
        next_change(&mut changes).await,
        of("crm"),
        "nothing to call off"
    );
    writer.announce_drain("cr", "a", cr, 1).await.unwrap();
    assert_eq!(next_change(&mut changes).await, of("cr"));
    writer.withdraw_drain("cr", cr, 1).await.unwrap();
    assert_eq!(next_change(&mut changes).await, of("cr"));
    // The listener's own writes are told too (a broker cannot tell its commits apart).
    listener
        .save_token("cr", cr, 1, &conformance::token(2, b"two"))
        .await
        .unwrap();
    assert_eq!(next_change(&mut changes).await, of("cr"));
    assert!(
        changes.try_recv().is_err(),
        "one notification per change: {:?}",
        changes.try_recv()
    );
}

#[tokio::test]
async fn a_lost_listening_connection_comes_back_and_says_everything_may_have_changed() {
    let Some((schema, writer)) = fresh().await else {
        return;
    };
    let client = raw().await.unwrap();
    let listener = schema.connect().await.unwrap();
    let mut changes = listener.changes().unwrap();
    assert_eq!(next_change(&mut changes).await, Change::Everything);

    let terminated = client
        .query_one(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                   WHERE query = $1) AS t",
            &[&format!("LISTEN \"tokenbroker_{}\"", schema.name)],
        )
        .await
        .unwrap();
    assert_eq!(
        terminated.get::<_, i64>(0),
        1,
        "the listening connection was found"
    );
    assert_eq!(
        next_change(&mut changes).await,
        Change::Everything,
        "listening again, after news may have been missed"
    );
    let fence = conformance::fence(&writer, "cr").await;
    writer
        .save_token("cr", fence, 0, &conformance::token(1, b"one"))
        .await
        .unwrap();
    assert_eq!(next_change(&mut changes).await, of("cr"));
}
