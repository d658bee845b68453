//! The store contract on the embedded SQLite backend, plus what is SQLite's own: the file
//! survives reopening, and a file from a newer version is refused.

mod conformance;

use std::path::PathBuf;

use tokenbroker_core::store::{Store, StoreErrorKind};
use tokenbroker_store::SqliteStore;

async fn fresh() -> (tempfile::TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).await.unwrap();
    (dir, path, store)
}

#[tokio::test]
async fn token_writes_are_compare_and_set() {
    let (_dir, _, store) = fresh().await;
    conformance::token_writes_are_compare_and_set(&store).await;
}

#[tokio::test]
async fn leases_exclude_other_holders_until_they_expire() {
    let (_dir, _, store) = fresh().await;
    conformance::leases_exclude_other_holders_until_they_expire(&store).await;
}

#[tokio::test]
async fn audit_appends_and_filters() {
    let (_dir, _, store) = fresh().await;
    conformance::audit_appends_and_filters(&store).await;
}

#[tokio::test]
async fn key_check_is_written_once() {
    let (_dir, _, store) = fresh().await;
    conformance::key_check_is_written_once(&store).await;
}

#[tokio::test]
async fn given_refresh_tokens_are_stored_once() {
    let (_dir, _, store) = fresh().await;
    conformance::given_refresh_tokens_are_stored_once(&store).await;
}

#[tokio::test]
async fn rekey_reseals_all_or_nothing() {
    let (_dir, _, store) = fresh().await;
    conformance::rekey_reseals_all_or_nothing(&store).await;
}

#[tokio::test]
async fn refresh_tokens_rotate_by_compare_and_set() {
    let (_dir, _, store) = fresh().await;
    conformance::refresh_tokens_rotate_by_compare_and_set(&store).await;
}

#[tokio::test]
async fn ledger_keeps_requests_and_outcomes() {
    let (_dir, _, store) = fresh().await;
    conformance::ledger_keeps_requests_and_outcomes(&store).await;
}

#[tokio::test]
async fn a_stale_lease_holder_is_fenced() {
    let (_dir, _, store) = fresh().await;
    conformance::a_stale_lease_holder_is_fenced(&store).await;
}

#[tokio::test]
async fn committed_tokens_survive_reopening() {
    let (_dir, path, store) = fresh().await;
    let fence = conformance::fence(&store, "cr").await;
    store
        .save_token("cr", fence, 0, &conformance::token(1, b"sealed"))
        .await
        .unwrap();
    drop(store);
    let reopened = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        reopened.load_token("cr").await.unwrap(),
        Some(conformance::token(1, b"sealed"))
    );
}

#[tokio::test]
async fn a_store_from_a_newer_version_is_refused() {
    let (_dir, path, store) = fresh().await;
    drop(store);
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert_eq!(error.kind, StoreErrorKind::TooNew);
    assert!(
        error.message.contains("schema version 99"),
        "{}",
        error.message
    );
    assert!(error.message.contains("refusing"), "{}", error.message);
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, 99, "not migrated down");
}

#[tokio::test]
async fn a_file_that_is_not_a_store_is_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let error = SqliteStore::open(&path).await.unwrap_err();
    assert_eq!(error.kind, StoreErrorKind::Corrupt, "{}", error.message);
}

#[tokio::test]
async fn audit_of_a_missing_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = SqliteStore::open_existing(&dir.path().join("none.db"))
        .await
        .unwrap_err();
    assert!(error.message.contains("no store at"), "{}", error.message);
}

#[tokio::test]
async fn drains_are_announced_acknowledged_and_fenced() {
    let (_dir, _, store) = fresh().await;
    conformance::drains_are_announced_acknowledged_and_fenced(&store).await;
}

#[tokio::test]
async fn issuer_holds_are_kept_until_their_time_is_up() {
    let (_dir, _, store) = fresh().await;
    conformance::issuer_holds_are_kept_until_their_time_is_up(&store).await;
}

#[tokio::test]
async fn a_stopped_user_is_not_waited_for() {
    let (_dir, _, store) = fresh().await;
    conformance::a_stopped_user_is_not_waited_for(&store).await;
}

#[tokio::test]
async fn drains_are_called_off_by_the_lease_holder() {
    let (_dir, _, store) = fresh().await;
    conformance::drains_are_called_off_by_the_lease_holder(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_opening_one_new_file_at_once_migrate_it_once() {
    // Connections of one process race as those of several would: each has its own.
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move { SqliteStore::open(&path).await })
            })
            .collect();
        for open in opens {
            if let Err(e) = open.await.unwrap() {
                panic!("round {round}: {}", e.message);
            }
        }
    }
}
