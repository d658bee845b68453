//! The store boundary: what the core keeps across restarts, and what every backend (the
//! embedded SQLite store today, PostgreSQL for clusters) must provide.
//!
//! The store is on the issuance path only, never on the cached-token path. It sees secrets
//! only sealed ([`crate::seal`]). Token writes are a compare-and-set on the generation, so
//! a stale writer can never overwrite a newer token; the issuance lease says who may call the
//! issuer now, so that two brokers sharing a store never issue for one provider at once.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

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
    /// (0: none stored yet), committed and synced before returning; else `Conflict`.
    async fn save_token(
        &self,
        provider: &str,
        expected: u64,
        token: &StoredToken,
    ) -> Result<(), StoreError>;

    /// Grants the provider's issuance lease to `holder` for `ttl` unless another holder's
    /// lease is still running.
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

    /// Re-seals every sealed value in one transaction; returns how many it re-sealed.
    async fn rekey(&self, reseal: Reseal) -> Result<usize, StoreError>;
}
