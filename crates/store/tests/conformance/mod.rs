//! The store contract, as checks that every backend must pass: each backend's test file
//! calls every check here under the same test names (SQLite today, PostgreSQL next).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokenbroker_core::seal::Purpose;
use tokenbroker_core::store::{
    AuditEvent, AuditKind, Lease, Reseal, Store, StoreErrorKind, StoredToken,
};

/// The fence of a lease on `provider` granted to the conformance checks' holder, for the
/// writes that need one.
pub(crate) async fn fence(store: &dyn Store, provider: &str) -> u64 {
    match store
        .acquire_lease(provider, "checks", Duration::from_secs(60))
        .await
        .unwrap()
    {
        Lease::Granted { fence } => fence,
        Lease::HeldElsewhere { .. } => panic!("the checks' lease on {provider} is free"),
    }
}

/// The fence of `holder`'s grant of `provider`'s lease, once the checks released theirs.
async fn lease_passed_to(store: &dyn Store, provider: &str, holder: &str) -> u64 {
    store.release_lease(provider, "checks").await.unwrap();
    match store
        .acquire_lease(provider, holder, Duration::from_secs(60))
        .await
        .unwrap()
    {
        Lease::Granted { fence } => fence,
        Lease::HeldElsewhere { .. } => panic!("a released lease is granted"),
    }
}

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
    let f = fence(store, "cr").await;
    store
        .save_token("cr", f, 0, &token(1, b"one"))
        .await
        .unwrap();
    let conflict = store
        .save_token("cr", f, 0, &token(1, b"again"))
        .await
        .unwrap_err();
    assert_eq!(conflict.kind, StoreErrorKind::Conflict);
    store
        .save_token("cr", f, 1, &token(2, b"two"))
        .await
        .unwrap();
    let stale = store
        .save_token("cr", f, 1, &token(2, b"stale"))
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
    assert_eq!(renewed, first, "a renewal keeps the fence");
    store.release_lease("cr", "a").await.unwrap();
    let Lease::Granted { fence: next } = store.acquire_lease("cr", "b", ttl).await.unwrap() else {
        panic!("a released lease is granted");
    };
    assert!(next > first, "a grant to another holder raises the fence");
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

/// A given refresh token is stored once, with its digest, or not at all: a digest stored
/// before (whichever provider asks: one renamed in the config is the same client) stores
/// nothing, and a save that loses its compare-and-set records no digest.
pub(crate) async fn given_refresh_tokens_are_stored_once(store: &dyn Store) {
    let (a, b) = (fence(store, "a").await, fence(store, "b").await);
    let (first, second) = ([7u8; 32], [8u8; 32]);
    assert!(!store.was_seeded(&first).await.unwrap());
    assert_eq!(
        store
            .save_given_refresh("a", a, 0, b"rt1", &first)
            .await
            .unwrap(),
        Some(1)
    );
    assert!(store.was_seeded(&first).await.unwrap());
    for (provider, fence, expected) in [("a", a, 1), ("b", b, 0)] {
        assert_eq!(
            store
                .save_given_refresh(provider, fence, expected, b"rt1 again", &first)
                .await
                .unwrap(),
            None,
            "{provider}: the token was stored before"
        );
    }
    assert_eq!(store.load_refresh("b").await.unwrap(), None);
    let error = store
        .save_given_refresh("a", a, 0, b"rt2", &second)
        .await
        .unwrap_err();
    assert_eq!(error.kind, StoreErrorKind::Conflict);
    assert!(
        !store.was_seeded(&second).await.unwrap(),
        "a token that was not stored is not recorded as sent"
    );
    assert_eq!(
        store
            .save_given_refresh("a", a, 1, b"rt2", &second)
            .await
            .unwrap(),
        Some(2)
    );
    let stored = store.load_refresh("a").await.unwrap().unwrap();
    assert_eq!(
        (stored.generation, stored.sealed.as_slice()),
        (2, &b"rt2"[..])
    );
}

/// Rekey re-seals every sealed value, or nothing if one fails.
pub(crate) async fn rekey_reseals_all_or_nothing(store: &dyn Store) {
    let (fa, fb) = (fence(store, "a").await, fence(store, "b").await);
    store
        .save_token("a", fa, 0, &token(1, b"a1"))
        .await
        .unwrap();
    store
        .save_token("b", fb, 0, &token(1, b"b1"))
        .await
        .unwrap();
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
    let f = fence(store, "crm").await;
    assert_eq!(store.save_refresh("crm", f, 0, b"rt1").await.unwrap(), 1);
    assert_eq!(
        store
            .save_refresh("crm", f, 0, b"again")
            .await
            .unwrap_err()
            .kind,
        StoreErrorKind::Conflict
    );
    store.begin_refresh("crm", f, 1, t0).await.unwrap();
    let first = store.load_refresh("crm").await.unwrap().unwrap().intent_at;
    store
        .begin_refresh("crm", f, 1, t0 + Duration::from_secs(5))
        .await
        .unwrap();
    let again = store.load_refresh("crm").await.unwrap().unwrap().intent_at;
    // A store that stamps intents with its own clock ignores `at`: its stamp is still within
    // a second or two of `t0` (the current second).
    let near = |a, b| apart(a, b) < Duration::from_secs(2);
    let (first, again) = (first.expect("an intent"), again.expect("an intent"));
    assert!(near(first, t0), "the intent is when the refresh began");
    assert!(near(again, first), "the grace counts from the first use");
    store.clear_refresh_intent("crm", f, 1).await.unwrap();
    assert_eq!(
        store.load_refresh("crm").await.unwrap().unwrap().intent_at,
        None
    );
    store.begin_refresh("crm", f, 1, t0).await.unwrap();
    store
        .mark_needs_credentials("crm", f, 1, "invalid_grant")
        .await
        .unwrap();
    let stored = store.load_refresh("crm").await.unwrap().unwrap();
    assert_eq!(stored.needs_credentials.as_deref(), Some("invalid_grant"));
    assert_eq!(store.save_refresh("crm", f, 1, b"rt2").await.unwrap(), 2);
    let stored = store.load_refresh("crm").await.unwrap().unwrap();
    assert_eq!(
        (stored.generation, stored.sealed.as_slice()),
        (2, &b"rt2"[..])
    );
    assert_eq!((stored.intent_at, stored.needs_credentials), (None, None));
    assert_eq!(
        store.begin_refresh("crm", f, 1, t0).await.unwrap_err().kind,
        StoreErrorKind::Conflict
    );
    assert_eq!(
        store
            .save_refresh("crm", f, 1, b"stale")
            .await
            .unwrap_err()
            .kind,
        StoreErrorKind::Conflict
    );
    assert_eq!(
        store
            .mark_needs_credentials("crm", f, 1, "a refusal of an older token")
            .await
            .unwrap_err()
            .kind,
        StoreErrorKind::Conflict,
        "needs_credentials is a compare-and-set on the refresh token's generation"
    );
    assert_eq!(
        store
            .load_refresh("crm")
            .await
            .unwrap()
            .unwrap()
            .needs_credentials,
        None
    );
}

/// A holder whose lease passed to another holder is fenced: every issuance write it makes
/// afterwards fails with `Conflict` and changes nothing, even one that would win the
/// generation compare-and-set; the new holder's writes go through.
pub(crate) async fn a_stale_lease_holder_is_fenced(store: &dyn Store) {
    let t0 = tokenbroker_core::clock::floor_to_second(SystemTime::now());
    let granted = |lease: Lease| match lease {
        Lease::Granted { fence } => fence,
        Lease::HeldElsewhere { .. } => panic!("the lease is free"),
    };
    // A's lease expires at once (it stalled); B takes it over.
    let a = granted(
        store
            .acquire_lease("cr", "a", Duration::ZERO)
            .await
            .unwrap(),
    );
    store
        .save_token("cr", a, 0, &token(1, b"a1"))
        .await
        .unwrap();
    assert_eq!(store.save_refresh("cr", a, 0, b"rt1").await.unwrap(), 1);
    let b = granted(
        store
            .acquire_lease("cr", "b", Duration::from_secs(60))
            .await
            .unwrap(),
    );
    assert!(b > a);

    let fenced = |result: Result<(), tokenbroker_core::store::StoreError>, what: &str| {
        assert_eq!(
            result.map_err(|e| e.kind),
            Err(StoreErrorKind::Conflict),
            "{what} by a fenced holder"
        );
    };
    fenced(
        store.save_token("cr", a, 1, &token(2, b"a2")).await,
        "save_token",
    );
    fenced(
        store.save_refresh("cr", a, 1, b"rt2").await.map(drop),
        "save_refresh",
    );
    fenced(
        store.save_refresh("fresh", a, 0, b"rt1").await.map(drop),
        "a first save_refresh (no lease there at all)",
    );
    fenced(store.begin_refresh("cr", a, 1, t0).await, "begin_refresh");
    fenced(
        store.clear_refresh_intent("cr", a, 1).await,
        "clear_refresh_intent",
    );
    fenced(
        store.mark_needs_credentials("cr", a, 1, "stale").await,
        "mark_needs_credentials",
    );
    assert_eq!(
        store.load_token("cr").await.unwrap(),
        Some(token(1, b"a1")),
        "nothing changed"
    );
    let refresh = store.load_refresh("cr").await.unwrap().unwrap();
    assert_eq!(
        (
            refresh.generation,
            refresh.intent_at,
            refresh.needs_credentials
        ),
        (1, None, None)
    );

    // The holder that has the lease writes as before.
    store.begin_refresh("cr", b, 1, t0).await.unwrap();
    assert_eq!(store.save_refresh("cr", b, 1, b"rt2").await.unwrap(), 2);
    store
        .save_token("cr", b, 1, &token(2, b"b2"))
        .await
        .unwrap();
    // A holder that takes the lease back gets a new fence: the old one stays dead.
    store.release_lease("cr", "b").await.unwrap();
    let again = granted(
        store
            .acquire_lease("cr", "a", Duration::from_secs(60))
            .await
            .unwrap(),
    );
    assert!(again > b);
    fenced(
        store.save_token("cr", a, 2, &token(3, b"a3")).await,
        "save_token with the fence of an earlier grant",
    );
    store
        .save_token("cr", again, 2, &token(3, b"a3"))
        .await
        .unwrap();
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
    // A store that keeps the ledger on its own clock answers each time as its distance from
    // the caller's now, a few milliseconds off at most.
    let near = |a, b| apart(a, b) < Duration::from_millis(500);
    let requested: Vec<_> = records.iter().map(|r| r.requested_at).collect();
    assert!(
        requested.len() == 2 && near(requested[0], at(30)) && near(requested[1], at(40)),
        "old and failed requests no longer matter: {requested:?}"
    );
    assert!(near(records[0].expires_at.expect("an expiry"), at(100)));
    assert_eq!(
        records[1].expires_at, None,
        "an unknown outcome stays visible"
    );
    assert_eq!(store.issuances("pool", at(0)).await.unwrap().len(), 4);
}

/// An issuer's hold is kept per provider, the longest one winning, until its time is up.
pub(crate) async fn issuer_holds_are_kept_until_their_time_is_up(store: &dyn Store) {
    assert_eq!(store.held_off_for("cr").await.unwrap(), None);
    store.hold_off("cr", Duration::from_secs(60)).await.unwrap();
    store.hold_off("cr", Duration::from_secs(1)).await.unwrap();
    let left = store.held_off_for("cr").await.unwrap().expect("held off");
    assert!(
        left > Duration::from_secs(55) && left <= Duration::from_secs(60),
        "{left:?}"
    );
    assert_eq!(store.held_off_for("other").await.unwrap(), None);
    store.hold_off("past", Duration::ZERO).await.unwrap();
    assert_eq!(store.held_off_for("past").await.unwrap(), None);
}

/// A broker that stops is forgotten: no drain waits for it.
pub(crate) async fn a_stopped_user_is_not_waited_for(store: &dyn Store) {
    let f = fence(store, "cr").await;
    for holder in ["gone", "staying"] {
        assert!(!store.register_user("cr", holder, 6).await.unwrap());
    }
    store.forget_user("cr", "gone").await.unwrap();
    store.forget_user("cr", "never-was").await.unwrap();
    store.announce_drain("cr", "checks", f, 6).await.unwrap();
    assert_eq!(store.undrained("cr", 6).await.unwrap(), ["staying"]);
}

/// A drain called off (the rotation or logout failed): every broker's record of the
/// generation is in use again, so the next announcement asks them all, announcer included;
/// a stale lease holder cannot call it off.
pub(crate) async fn drains_are_called_off_by_the_lease_holder(store: &dyn Store) {
    let f = fence(store, "cr").await;
    for holder in ["a", "b", "c"] {
        assert!(!store.register_user("cr", holder, 5).await.unwrap());
    }
    store.announce_drain("cr", "a", f, 5).await.unwrap();
    store.ack_drain("cr", "b", 5).await.unwrap();
    assert_eq!(store.undrained("cr", 5).await.unwrap(), ["c"]);

    store.withdraw_drain("cr", f, 5).await.unwrap();
    assert!(store.undrained("cr", 5).await.unwrap().is_empty());
    assert_eq!(store.drain_request("cr", "c").await.unwrap(), None);
    for holder in ["a", "b", "c", "late"] {
        assert!(
            !store.register_user("cr", holder, 5).await.unwrap(),
            "{holder}: in use, not draining"
        );
    }
    store.withdraw_drain("cr", f, 5).await.unwrap(); // nothing to call off: still fine

    let next = lease_passed_to(store, "cr", "b").await;
    store.announce_drain("cr", "b", next, 5).await.unwrap();
    assert_eq!(store.undrained("cr", 5).await.unwrap(), ["a", "c", "late"]);
    let stale = store.withdraw_drain("cr", f, 5).await.unwrap_err();
    assert_eq!(stale.kind, StoreErrorKind::Conflict);
    assert_eq!(store.undrained("cr", 5).await.unwrap(), ["a", "c", "late"]);
}

/// The drain of a rotation: the rotator (holding the lease) asks every other broker that
/// took up the generation, each acknowledges, a broker taking it up late is asked too,
/// older generations are forgotten, and a stale lease holder cannot announce.
pub(crate) async fn drains_are_announced_acknowledged_and_fenced(store: &dyn Store) {
    let f = fence(store, "cr").await;
    assert!(!store.register_user("cr", "checks", 3).await.unwrap());
    assert!(!store.register_user("cr", "b", 3).await.unwrap());
    assert!(!store.register_user("cr", "c", 3).await.unwrap());
    assert!(!store.register_user("cr", "old", 2).await.unwrap());
    assert!(
        !store.register_user("cr", "b", 2).await.unwrap(),
        "an older generation never replaces a newer one"
    );
    assert!(!store.register_user("other", "b", 3).await.unwrap());
    assert_eq!(store.drain_request("cr", "b").await.unwrap(), None);
    assert!(store.undrained("cr", 3).await.unwrap().is_empty());

    store.announce_drain("cr", "checks", f, 3).await.unwrap();
    assert_eq!(store.undrained("cr", 3).await.unwrap(), ["b", "c"]);
    assert_eq!(store.drain_request("cr", "b").await.unwrap(), Some(3));
    assert_eq!(store.drain_request("cr", "checks").await.unwrap(), None);
    assert_eq!(
        store.drain_request("other", "b").await.unwrap(),
        None,
        "per provider"
    );
    assert_eq!(store.drain_request("cr", "old").await.unwrap(), None);
    assert!(
        store.register_user("cr", "late", 3).await.unwrap(),
        "a broker taking up a draining generation is told"
    );
    assert!(
        store.register_user("cr", "b", 3).await.unwrap(),
        "and so is one asking again"
    );
    assert_eq!(store.undrained("cr", 3).await.unwrap(), ["b", "c", "late"]);

    store.ack_drain("cr", "b", 3).await.unwrap();
    store.ack_drain("cr", "c", 2).await.unwrap(); // not the generation it is asked about
    assert_eq!(store.undrained("cr", 3).await.unwrap(), ["c", "late"]);
    assert_eq!(store.drain_request("cr", "b").await.unwrap(), None);
    store.ack_drain("cr", "c", 3).await.unwrap();
    store.ack_drain("cr", "late", 3).await.unwrap();
    assert!(store.undrained("cr", 3).await.unwrap().is_empty());

    // The next generation starts afresh; a stale holder's announcement is refused.
    assert!(!store.register_user("cr", "b", 4).await.unwrap());
    let next = lease_passed_to(store, "cr", "b").await;
    let stale = store
        .announce_drain("cr", "checks", f, 4)
        .await
        .unwrap_err();
    assert_eq!(stale.kind, StoreErrorKind::Conflict);
    assert_eq!(store.drain_request("cr", "b").await.unwrap(), None);
    assert!(!store.register_user("cr", "c", 4).await.unwrap());
    store.announce_drain("cr", "b", next, 4).await.unwrap();
    assert_eq!(store.undrained("cr", 4).await.unwrap(), ["c"]);
    assert!(
        store.undrained("cr", 3).await.unwrap().is_empty(),
        "older generations are forgotten"
    );
}

/// How far apart `a` and `b` are, whichever is first.
fn apart(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap_or_default()
}
