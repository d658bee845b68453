//! The store boundary: what the core keeps across restarts, and what every backend (the
//! embedded SQLite store today, PostgreSQL for clusters) must provide.
//!
//! The store is on the issuance path only, never on the cached-token path. It sees secrets
//! only sealed ([`crate::seal`]). Token writes are a compare-and-set on the generation, so
//! a stale writer can never overwrite a newer token; the issuance lease says who may call the
//! issuer now, so that two brokers sharing a store never issue for one provider at once.
//!
//! The issuance writes (the token, the refresh token, its intent and `needs_credentials`)
//! are also fenced: each carries the fence of its writer's lease grant and fails with
//! `Conflict` once the lease has been granted to another holder, so a holder that stalled
//! past its lease cannot overwrite what the next holder did. Not fenced: the ledger (a
//! request a stale holder sent still counts against the issuer's limits), the audit trail,
//! and `retire_token`, written at shutdown without the lease and harmless by its own
//! generation condition (it only ever ends the token it names).
//!
//! The drain of a single-session rotation spans the cluster: every broker records which
//! generation it took up (`register_user`); the broker about to log in again, holding the
//! lease, asks the others to let their requests on the old generation finish
//! (`announce_drain`, fenced), each answers when it has (`ack_drain`), and the rotator waits
//! until none is left (`undrained`) or its `drain_timeout` passes. The rows name brokers by
//! their lease-holder name and hold no secret.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::broadcast;

/// A provider's current token as stored: times in the clear, the value sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub generation: u64,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    pub refresh_at: SystemTime,
    /// The token value sealed for the provider and [`Purpose::AccessToken`](crate::seal::Purpose).
    pub sealed: Vec<u8>,
}

/// A provider's refresh token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRefresh {
    /// Grows with every rotation and reseed.
    pub generation: u64,
    /// The refresh token sealed for the provider and [`Purpose::RefreshToken`](crate::seal::Purpose).
    pub sealed: Vec<u8>,
    /// Set when a refresh with this token was started and its outcome not yet stored: when,
    /// on the reader's clock. A store shared by several hosts keeps and ages it on its own
    /// clock and answers `now − age`, so that brokers whose clocks disagree judge it alike;
    /// when it cannot tell the age (a stamp in its clock's future), it answers the epoch.
    pub intent_at: Option<SystemTime>,
    /// Set when the token can no longer be used; a person must reseed it.
    pub needs_credentials: Option<String>,
}

/// One issuance request in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuanceRecord {
    pub requested_at: SystemTime,
    /// The token's expiry; `None` while (or if, after a crash) the outcome is unknown.
    pub expires_at: Option<SystemTime>,
}

/// The outcome of asking for a provider's issuance lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This holder may issue until the lease expires; `fence` grows with every grant.
    Granted { fence: u64 },
    /// Another holder is issuing; its lease runs until `until`.
    HeldElsewhere { until: SystemTime },
}

/// What the audit trail records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// A token obtained by a login.
    Issued,
    /// A token obtained by exchanging the previous one.
    Refreshed,
    /// A consumer reported the current token rejected.
    Invalidated,
    /// An issuance attempt failed.
    Failed,
    /// A stored token was reused at start instead of logging in.
    Restored,
    /// A person gave a new refresh token (`tokenbroker reseed`).
    Reseeded,
}

impl AuditKind {
    /// The name stored and shown by `tokenbroker audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Refreshed => "refreshed",
            Self::Invalidated => "invalidated",
            Self::Failed => "failed",
            Self::Restored => "restored",
            Self::Reseeded => "reseeded",
        }
    }

    /// The kind a stored name stands for.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Issued,
            Self::Refreshed,
            Self::Invalidated,
            Self::Failed,
            Self::Restored,
            Self::Reseeded,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// One line of the audit trail. `detail` is built from typed errors and never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// When it happened.
    pub at: SystemTime,
    pub provider: String,
    /// What happened.
    pub kind: AuditKind,
    /// The token generation it concerns, if one.
    pub generation: Option<u64>,
    /// A reason or an error message.
    pub detail: String,
}

/// News that what the store holds for a provider changed, told by the store as writers
/// commit (PostgreSQL's LISTEN/NOTIFY), so that every broker sharing it re-reads at once
/// instead of at its next periodic re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This provider's token (a new generation, a retired one) or refresh token was written,
    /// or a drain of its token was announced or acknowledged.
    Provider(String),
    /// Anything may have changed: news may have been missed (the store's notification
    /// connection was lost and is back).
    Everything,
}

/// What went wrong, in terms every backend maps its own errors into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// A compare-and-set lost: someone stored a newer generation.
    Conflict,
    /// The store cannot be reached or written now.
    Unavailable,
    /// The store's content is not what this version expects.
    Corrupt,
    /// The store was written by a newer version of tokenbroker.
    TooNew,
}

/// A store failure: its kind and a message without secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
}

impl StoreError {
    /// An error of `kind`; `message` must hold no secret.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A sealed value as the store holds it, for re-sealing under a new key.
#[derive(Debug, Clone, Copy)]
pub struct SealedRow<'a> {
    /// The provider the value is sealed for (empty for store-wide values).
    pub provider: &'a str,
    pub purpose: crate::seal::Purpose,
    pub sealed: &'a [u8],
}

/// Re-seals one stored value; `rekey` calls it for every sealed value in the store.
pub type Reseal =
    std::sync::Arc<dyn Fn(SealedRow<'_>) -> Result<Vec<u8>, crate::seal::SealError> + Send + Sync>;

/// Durable broker state. Implementations are cheap to share (`Arc<dyn Store>`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The provider's stored token, if any.
    async fn load_token(&self, provider: &str) -> Result<Option<StoredToken>, StoreError>;

    /// Stores `token` as the provider's current one if the stored generation is `expected`
    /// (0: none stored yet) and the lease still has `fence`, committed and synced before
    /// returning; else `Conflict`.
    async fn save_token(
        &self,
        provider: &str,
        fence: u64,
        expected: u64,
        token: &StoredToken,
    ) -> Result<(), StoreError>;

    /// Marks the stored token of `generation` expired (its session was ended), keeping its
    /// generation so that numbering continues.
    async fn retire_token(&self, provider: &str, generation: u64) -> Result<(), StoreError>;

    /// Grants the provider's issuance lease to `holder` for `ttl` unless another holder's
    /// lease is still running. The fence grows whenever the lease passes to another holder;
    /// a holder renewing or re-taking its own lease keeps its fence, so that a fence names
    /// one stretch of time during which nobody else held the lease.
    async fn acquire_lease(
        &self,
        provider: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError>;

    /// Ends `holder`'s lease early (after the issuance is stored).
    async fn release_lease(&self, provider: &str, holder: &str) -> Result<(), StoreError>;

    /// Appends to the audit trail.
    async fn record(&self, event: &AuditEvent) -> Result<(), StoreError>;

    /// The audit trail since `since`, oldest first, for one provider or all.
    async fn audit(
        &self,
        provider: Option<&str>,
        since: SystemTime,
    ) -> Result<Vec<AuditEvent>, StoreError>;

    /// The store's key check: a known value sealed under the master key, written once.
    async fn key_check(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes the key check if none is there yet.
    async fn set_key_check(&self, sealed: &[u8]) -> Result<(), StoreError>;

    /// Whether a configured (or reseeded) refresh token of this `digest` was stored before
    /// ([`save_given_refresh`](Self::save_given_refresh)), by any provider (the digest names
    /// the client, so a renamed provider is the same one): it was sent then, and sending it
    /// again could be a replay.
    async fn was_seeded(&self, digest: &[u8]) -> Result<bool, StoreError>;

    /// Records that the provider's issuer asked to be left alone for `wait` (a 429's
    /// `Retry-After`), by the store's clock; an earlier, longer hold is kept.
    async fn hold_off(&self, provider: &str, wait: Duration) -> Result<(), StoreError>;

    /// How much longer the issuer asked to be left alone ([`hold_off`](Self::hold_off)), if
    /// it did and the time is not up.
    async fn held_off_for(&self, provider: &str) -> Result<Option<Duration>, StoreError>;

    /// The provider's refresh token, if one was stored.
    async fn load_refresh(&self, provider: &str) -> Result<Option<StoredRefresh>, StoreError>;

    /// Stores a refresh token as the successor of generation `expected` (0: none yet) and
    /// clears any intent and `needs_credentials`; returns the new generation. A
    /// compare-and-set: `Conflict` if the stored generation is not `expected` or the lease
    /// no longer has `fence`.
    async fn save_refresh(
        &self,
        provider: &str,
        fence: u64,
        expected: u64,
        sealed: &[u8],
    ) -> Result<u64, StoreError>;

    /// Stores a refresh token given to the broker (the configured one, or a reseed) as
    /// [`save_refresh`](Self::save_refresh) does, and records its `digest` (all that is kept
    /// of it) in the same transaction: both or neither, so no crash between them lets the
    /// token be stored, and sent, again. `None`, storing nothing, if a token of that digest
    /// was stored before.
    async fn save_given_refresh(
        &self,
        provider: &str,
        fence: u64,
        expected: u64,
        sealed: &[u8],
        digest: &[u8],
    ) -> Result<Option<u64>, StoreError>;

    /// Records, durably, that a refresh with token `generation` is about to be sent, `at`
    /// (this broker's now; a store shared by several hosts uses its own clock instead); an
    /// earlier intent for it is kept (the issuer's reuse grace counts from the first use).
    /// `Conflict` if the generation moved on or the lease no longer has `fence`.
    async fn begin_refresh(
        &self,
        provider: &str,
        fence: u64,
        generation: u64,
        at: SystemTime,
    ) -> Result<(), StoreError>;

    /// Clears the intent of token `generation`: its request provably rotated nothing.
    /// `Conflict` if the generation moved on or the lease no longer has `fence` (the next
    /// holder's intent on the same token must not be erased).
    async fn clear_refresh_intent(
        &self,
        provider: &str,
        fence: u64,
        generation: u64,
    ) -> Result<(), StoreError>;

    /// Takes refresh token `generation` out of service until it is reseeded. `Conflict` if
    /// the generation moved on (another holder rotated it: the refusal that prompted this
    /// was of an older token) or the lease no longer has `fence`.
    async fn mark_needs_credentials(
        &self,
        provider: &str,
        fence: u64,
        generation: u64,
        reason: &str,
    ) -> Result<(), StoreError>;

    /// Records an issuance request before it is sent; returns its ledger id.
    async fn begin_issuance(&self, provider: &str, at: SystemTime) -> Result<u64, StoreError>;

    /// Records the outcome of ledger entry `id`: the token's expiry, or `None` if the
    /// request produced no token.
    async fn finish_issuance(
        &self,
        id: u64,
        expires_at: Option<SystemTime>,
    ) -> Result<(), StoreError>;

    /// The provider's ledger entries that matter at `since`: requested since then, or whose
    /// token was still live then, or whose outcome is unknown.
    async fn issuances(
        &self,
        provider: &str,
        since: SystemTime,
    ) -> Result<Vec<IssuanceRecord>, StoreError>;

    /// Re-seals every sealed value in one transaction; returns how many it re-sealed.
    async fn rekey(&self, reseal: Reseal) -> Result<usize, StoreError>;

    /// Records that `holder` took up `generation` of the provider (its proxied requests may
    /// use it from now on), replacing the older generation it had recorded. Returns whether a
    /// drain of that generation was already announced: the holder is then asked to drain it
    /// too, as if it had been told ([`Store::drain_request`]). Not fenced: any broker serving
    /// a token records it.
    async fn register_user(
        &self,
        provider: &str,
        holder: &str,
        generation: u64,
    ) -> Result<bool, StoreError>;

    /// Forgets `holder`'s records of the provider's tokens: a broker that stops serving them
    /// (it shuts down), so that no drain waits for it; a drain waiting now is told.
    async fn forget_user(&self, provider: &str, holder: &str) -> Result<(), StoreError>;

    /// Announces that `holder`, holding the lease with `fence`, is about to supersede
    /// `generation`: every other holder that recorded it is asked to drain it, the other
    /// brokers are told (a [`Change`] of the provider), and the rows of older generations are
    /// forgotten. `Conflict` if the lease no longer has `fence`.
    async fn announce_drain(
        &self,
        provider: &str,
        holder: &str,
        fence: u64,
        generation: u64,
    ) -> Result<(), StoreError>;

    /// Calls off the drain of `generation`, announced by whoever held the lease, now held
    /// with `fence`: the token was not superseded after all (the attempt to replace it, or
    /// the logout, failed). Every holder's record of it is back in use, as if no drain had
    /// been announced, and the other brokers are told if any record changed. `Conflict` if the
    /// lease no longer has `fence`.
    async fn withdraw_drain(
        &self,
        provider: &str,
        fence: u64,
        generation: u64,
    ) -> Result<(), StoreError>;

    /// The generation `holder` is asked to drain and has not acknowledged yet, if any.
    async fn drain_request(&self, provider: &str, holder: &str) -> Result<Option<u64>, StoreError>;

    /// Acknowledges that `holder` has no request left on `generation` (or gave up waiting
    /// for them); the rotator is told (a [`Change`] of the provider).
    async fn ack_drain(
        &self,
        provider: &str,
        holder: &str,
        generation: u64,
    ) -> Result<(), StoreError>;

    /// The holders asked to drain `generation` that have not acknowledged yet.
    async fn undrained(&self, provider: &str, generation: u64) -> Result<Vec<String>, StoreError>;

    /// Every [`Change`] committed from now on, by any writer (this broker included), if the
    /// backend can tell: a lagging receiver misses news and must treat that as
    /// [`Change::Everything`]. `None` (the default) for a backend that cannot; slots then rely
    /// on their periodic re-read alone (`Persistence::sync_every`). Called inside a tokio
    /// runtime: a backend may start listening on the first call.
    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        None
    }
}
