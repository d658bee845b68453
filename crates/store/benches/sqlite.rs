//! The embedded store's costs that sit on a user-visible path: committing a token (every
//! issuance waits for it before handing the token out) and the start-up read (how long a
//! restart takes before it can serve stored tokens). `cargo bench -p tokenbroker-store`.

use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use tokenbroker_core::store::{Store, StoredToken};
use tokenbroker_store::SqliteStore;

/// A token row as the broker writes it: a sealed JWT-sized value.
fn token(generation: u64) -> StoredToken {
    let now = SystemTime::now();
    StoredToken {
        generation,
        issued_at: now,
        expires_at: now + Duration::from_secs(1200),
        refresh_at: now + Duration::from_secs(1080),
        sealed: vec![0xa5; 1 + 24 + 600 + 16],
    }
}

fn write_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = runtime
        .block_on(SqliteStore::open(&dir.path().join("bench.db")))
        .expect("the store opens");
    // Every token write is fenced by the provider's issuance lease.
    let fence = match runtime
        .block_on(store.acquire_lease("cr", "bench", std::time::Duration::from_secs(3600)))
        .expect("the lease")
    {
        tokenbroker_core::store::Lease::Granted { fence } => fence,
        tokenbroker_core::store::Lease::HeldElsewhere { .. } => unreachable!("a fresh store"),
    };
    let mut generation = 0;
    c.bench_function("save_token (committed, synced)", |b| {
        b.to_async(&runtime).iter(|| {
            generation += 1;
            let (store, expected) = (&store, generation - 1);
            async move {
                store
                    .save_token("cr", fence, expected, &token(expected + 1))
                    .await
                    .expect("saved")
            }
        });
    });
}

fn startup_read(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("bench.db");
    let providers: Vec<String> = (0..10).map(|i| format!("provider-{i}")).collect();
    runtime.block_on(async {
        let store = SqliteStore::open(&path).await.expect("the store opens");
        for name in &providers {
            let lease = store
                .acquire_lease(name, "bench", std::time::Duration::from_secs(60))
                .await
                .expect("the lease");
            let tokenbroker_core::store::Lease::Granted { fence } = lease else {
                unreachable!("a fresh store");
            };
            store
                .save_token(name, fence, 0, &token(1))
                .await
                .expect("saved");
        }
    });
    c.bench_function("start-up read (open, migrate check, 10 providers)", |b| {
        b.to_async(&runtime).iter(|| async {
            let store = SqliteStore::open(&path).await.expect("the store opens");
            for name in &providers {
                store.load_token(name).await.expect("read").expect("stored");
            }
        });
    });
}

criterion_group!(benches, write_path, startup_read);
criterion_main!(benches);
