//! What every backend stores and says the same way: times as Unix milliseconds, generations
//! and ids as signed 64-bit integers, the sealed columns that `rekey` walks, and the
//! contract's own errors (a lost compare-and-set, a store from a newer version).
//!
//! The SQL itself stays in each backend, since placeholders and upserts differ; keeping the
//! encodings and messages here means a row written or an error reported by SQLite reads the
//! same as one from PostgreSQL.

use std::fmt::Display;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokenbroker_core::seal::{Purpose, SealError};
use tokenbroker_core::store::{AuditKind, StoreError, StoreErrorKind};

/// The `meta` key of the master-key check.
pub(crate) const KEY_CHECK: &str = "key_check";

/// The tables whose `sealed` column `rekey` re-seals (keyed by `provider`), with the purpose
/// each value is sealed for. The key check in `meta` is re-sealed besides.
pub(crate) const SEALED_TABLES: [(&str, Purpose); 2] = [
    ("tokens", Purpose::AccessToken),
    ("refresh_tokens", Purpose::RefreshToken),
];

/// `at` in Unix milliseconds (0 before the epoch, `i64::MAX` past what fits).
pub(crate) fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The time `ms` Unix milliseconds stand for (the epoch for a negative value).
pub(crate) fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// The time `wait` after `now` (a lease's expiry, the end of an issuer's hold), in Unix
/// milliseconds; saturates rather than overflowing for an absurd `wait`.
pub(crate) fn millis_after(now: SystemTime, wait: Duration) -> i64 {
    millis(now).saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX))
}

/// A stored generation, fence or id (never negative when written by [`signed`]).
pub(crate) fn generation(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A generation, fence or id as the databases' signed 64-bit integer.
pub(crate) fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `save_token` lost its compare-and-set.
pub(crate) fn token_conflict(expected: u64) -> StoreError {
    StoreError::new(
        StoreErrorKind::Conflict,
        format!(
            "a token newer than generation {expected} is already stored, or the issuance lease \
             passed to another holder"
        ),
    )
}

/// `announce_drain` was fenced: the lease passed to another holder.
pub(crate) fn drain_fenced(generation: u64) -> StoreError {
    StoreError::new(
        StoreErrorKind::Conflict,
        format!(
            "cannot announce the drain of generation {generation}: the issuance lease passed to \
             another holder"
        ),
    )
}

/// `save_refresh` lost its compare-and-set, or was fenced.
pub(crate) fn refresh_conflict(expected: u64) -> StoreError {
    StoreError::new(
        StoreErrorKind::Conflict,
        format!(
            "a refresh token newer than generation {expected} is already stored, or the \
             issuance lease passed to another holder"
        ),
    )
}

/// An update of refresh token `generation` found another generation stored, or was fenced.
pub(crate) fn refresh_moved(generation: u64) -> StoreError {
    StoreError::new(
        StoreErrorKind::Conflict,
        format!(
            "the refresh token is no longer generation {generation}, or the issuance lease \
             passed to another holder"
        ),
    )
}

/// The audit kind a stored event name stands for; `Corrupt` for a name this version does not
/// know.
pub(crate) fn audit_kind(text: &str) -> Result<AuditKind, StoreError> {
    AuditKind::parse(text).ok_or_else(|| {
        StoreError::new(
            StoreErrorKind::Corrupt,
            format!("unknown audit event {text:?}"),
        )
    })
}

/// A sealed value that could not be re-sealed (wrong key or tampered).
pub(crate) fn reseal_failed(e: SealError) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, e.to_string())
}

/// The store `store` has schema `version`, newer than the `known` one; `setting` is the
/// config key that points tokenbroker at it.
pub(crate) fn too_new(
    store: impl Display,
    version: impl Display,
    known: usize,
    setting: &str,
) -> StoreError {
    StoreError::new(
        StoreErrorKind::TooNew,
        format!(
            "the store {store} has schema version {version}, newer than this tokenbroker knows \
             ({known}); refusing to use it (upgrade tokenbroker, or point {setting} elsewhere)"
        ),
    )
}
