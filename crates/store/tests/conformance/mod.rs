//! The store contract, as checks that every backend must pass: each backend's test file
//! calls every check here under the same test names (SQLite today, PostgreSQL next).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokenbroker_core::seal::Purpose;
use tokenbroker_core::store::{
    AuditEvent, AuditKind, Lease, Reseal, Store, StoreErrorKind, StoredToken,
};

pub(crate) fn token(generation: u64, sealed: &[u8]) -> StoredToken {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    StoredToken {
        generation,
        issued_at: now,
        expires_at: now + Duration::from_secs(1200),
        refresh_at: now + Duration::from_secs(1080),
        sealed: sealed.to_vec(),
    }
}

/// Token writes are a compare-and-set on the generation.
pub(crate) async fn token_writes_are_compare_and_set(store: &dyn Store) {
    assert_eq!(store.load_token("cr").await.unwrap(), None);
    store.save_token("cr", 0, &token(1, b"one")).await.unwrap();
    let conflict = store
        .save_token("cr", 0, &token(1, b"again"))
        .await
        .unwrap_err();
    assert_eq!(conflict.kind, StoreErrorKind::Conflict);
    store.save_token("cr", 1, &token(2, b"two")).await.unwrap();
    let stale = store
        .save_token("cr", 1, &token(2, b"stale"))
        .await
        .unwrap_err();
    assert_eq!(
        stale.kind,
        StoreErrorKind::Conflict,
        "a stale writer never overwrites"
    );
    assert_eq!(
        store.load_token("cr").await.unwrap(),
        Some(token(2, b"two"))
    );
    assert_eq!(
        store.load_token("other").await.unwrap(),
        None,
        "per provider"
    );
}

/// One holder at a time; a lease expires; the holder may renew and release it.
pub(crate) async fn leases_exclude_other_holders_until_they_expire(store: &dyn Store) {
    let ttl = Duration::from_secs(60);
    let Lease::Granted { fence: first } = store.acquire_lease("cr", "a", ttl).await.unwrap() else {
        panic!("a free lease is granted");
    };
    assert!(
        matches!(store.acquire_lease("cr", "b", ttl).await.unwrap(), Lease::HeldElsewhere { until } if until > SystemTime::now())
    );
    assert!(
        matches!(
            store.acquire_lease("other", "b", ttl).await.unwrap(),
            Lease::Granted { .. }
        ),
        "per provider"
    );
    let Lease::Granted { fence: renewed } = store.acquire_lease("cr", "a", ttl).await.unwrap()
    else {
        panic!("the holder renews");
    };
    assert!(renewed > first, "every grant has a new fence");
    store.release_lease("cr", "a").await.unwrap();
    assert!(matches!(
        store.acquire_lease("cr", "b", ttl).await.unwrap(),
        Lease::Granted { .. }
    ));
    // An expired lease is free again.
    assert!(matches!(
        store
            .acquire_lease("short", "a", Duration::ZERO)
            .await
            .unwrap(),
        Lease::Granted { .. }
    ));
    assert!(matches!(
        store.acquire_lease("short", "b", ttl).await.unwrap(),
        Lease::Granted { .. }
    ));
}

/// The audit trail keeps order and filters by provider and time.
pub(crate) async fn audit_appends_and_filters(store: &dyn Store) {
    // The store keeps milliseconds; whole seconds compare exactly.
    let at = tokenbroker_core::clock::floor_to_second(SystemTime::now());
    let event = |provider: &str, kind, offset: u64| AuditEvent {
        at: at + Duration::from_secs(offset),
        provider: provider.to_owned(),
        kind,
        generation: Some(offset),
        detail: format!("event {offset}"),
    };
    store
        .record(&event("cr", AuditKind::Issued, 0))
        .await
        .unwrap();
    store
        .record(&event("crm", AuditKind::Failed, 1))
        .await
        .unwrap();
    store
        .record(&event("cr", AuditKind::Invalidated, 2))
        .await
        .unwrap();
    let all = store.audit(None, at).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2], event("cr", AuditKind::Invalidated, 2));
    let cr: Vec<_> = store
        .audit(Some("cr"), at)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(cr, [AuditKind::Issued, AuditKind::Invalidated]);
    assert_eq!(
        store
            .audit(None, at + Duration::from_secs(2))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The key check is written once.
pub(crate) async fn key_check_is_written_once(store: &dyn Store) {
    assert_eq!(store.key_check().await.unwrap(), None);
    store.set_key_check(b"first").await.unwrap();
    store.set_key_check(b"second").await.unwrap();
    assert_eq!(
        store.key_check().await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
}

/// Rekey re-seals every sealed value, or nothing if one fails.
pub(crate) async fn rekey_reseals_all_or_nothing(store: &dyn Store) {
    store.save_token("a", 0, &token(1, b"a1")).await.unwrap();
    store.save_token("b", 0, &token(1, b"b1")).await.unwrap();
    store.set_key_check(b"check").await.unwrap();
    let upper: Reseal = Arc::new(|row| Ok(row.sealed.to_ascii_uppercase()));
    assert_eq!(store.rekey(upper).await.unwrap(), 3);
    assert_eq!(store.load_token("a").await.unwrap().unwrap().sealed, b"A1");
    assert_eq!(store.key_check().await.unwrap().unwrap(), b"CHECK");
    let failing: Reseal = Arc::new(|row| {
        if row.purpose == Purpose::KeyCheck {
            Err(tokenbroker_core::seal::SealError::WrongKeyOrTampered)
        } else {
            Ok(b"changed".to_vec())
        }
    });
    assert!(store.rekey(failing).await.is_err());
    assert_eq!(
        store.load_token("a").await.unwrap().unwrap().sealed,
        b"A1",
        "nothing changed"
    );
}

/// Refresh tokens rotate by compare-and-set; intents and `needs_credentials` are cleared by a
/// rotation or a reseed.
pub(crate) async fn refresh_tokens_rotate_by_compare_and_set(store: &dyn Store) {
    let t0 = tokenbroker_core::clock::floor_to_second(SystemTime::now());
    assert_eq!(store.load_refresh("crm").await.unwrap(), None);
    assert_eq!(store.save_refresh("crm", 0, b"rt1").await.unwrap(), 1);
    assert_eq!(
        store
            .save_refresh("crm", 0, b"again")
            .await
            .unwrap_err()
            .kind,
        StoreErrorKind::Conflict
    );
    store.begin_refresh("crm", 1, t0).await.unwrap();
    store
        .begin_refresh("crm", 1, t0 + Duration::from_secs(5))
        .await
        .unwrap();
    let stored = store.load_refresh("crm").await.unwrap().unwrap();
    assert_eq!(
        stored.intent_at,
        Some(t0),
        "the grace counts from the first use"
    );
    store.clear_refresh_intent("crm", 1).await.unwrap();
    assert_eq!(
        store.load_refresh("crm").await.unwrap().unwrap().intent_at,
        None
    );
    store.begin_refresh("crm", 1, t0).await.unwrap();
    store
        .mark_needs_credentials("crm", "invalid_grant")
        .await
        .unwrap();
    let stored = store.load_refresh("crm").await.unwrap().unwrap();
    assert_eq!(stored.needs_credentials.as_deref(), Some("invalid_grant"));
    assert_eq!(store.save_refresh("crm", 1, b"rt2").await.unwrap(), 2);
    let stored = store.load_refresh("crm").await.unwrap().unwrap();
    assert_eq!(
        (stored.generation, stored.sealed.as_slice()),
        (2, &b"rt2"[..])
    );
    assert_eq!((stored.intent_at, stored.needs_credentials), (None, None));
    assert_eq!(
        store.begin_refresh("crm", 1, t0).await.unwrap_err().kind,
        StoreErrorKind::Conflict
    );
    assert_eq!(
        store
            .save_refresh("crm", 1, b"stale")
            .await
            .unwrap_err()
            .kind,
        StoreErrorKind::Conflict
    );
}

/// The ledger keeps requests and their outcomes, and answers what matters at a time.
pub(crate) async fn ledger_keeps_requests_and_outcomes(store: &dyn Store) {
    let t0 = tokenbroker_core::clock::floor_to_second(SystemTime::now());
    let at = |s: u64| t0 + Duration::from_secs(s);
    let old = store.begin_issuance("pool", at(0)).await.unwrap();
    store.finish_issuance(old, Some(at(10))).await.unwrap();
    let failed = store.begin_issuance("pool", at(20)).await.unwrap();
    store.finish_issuance(failed, None).await.unwrap();
    let live = store.begin_issuance("pool", at(30)).await.unwrap();
    store.finish_issuance(live, Some(at(100))).await.unwrap();
    let _unknown = store.begin_issuance("pool", at(40)).await.unwrap();
    store.begin_issuance("other", at(40)).await.unwrap();
    let records = store.issuances("pool", at(25)).await.unwrap();
    let requested: Vec<_> = records.iter().map(|r| r.requested_at).collect();
    assert_eq!(
        requested,
        [at(30), at(40)],
        "old and failed requests no longer matter"
    );
    assert_eq!(records[0].expires_at, Some(at(100)));
    assert_eq!(
        records[1].expires_at, None,
        "an unknown outcome stays visible"
    );
    assert_eq!(store.issuances("pool", at(0)).await.unwrap().len(), 4);
}
