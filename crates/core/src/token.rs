//! An issued access token and what the broker knows about it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

/// One access token held by a slot. Shared as `Arc<Token>`: the value never changes once
/// issued; a rotation produces a new `Token` with the next generation.
#[derive(Debug)]
pub struct Token {
    /// The token itself; `SecretString` never prints it.
    pub value: SecretString,
    /// Counts the issuances of this provider: every new token gets the next number, so a
    /// consumer can say which token got a 401 without sending it back.
    pub generation: u64,
    /// When the issuance request that produced the token was sent.
    pub issued_at: SystemTime,
    /// When the issuer stops accepting the token.
    pub expires_at: SystemTime,
    /// When the broker starts replacing it, rounded down to a second: a promise that the
    /// token is not replaced earlier unless the issuer rejects it.
    pub refresh_at: SystemTime,
    /// Whether any consumer has received this token: an unused token is not refreshed
    /// ahead of time, so an idle identity costs the issuer nothing.
    handed_out: AtomicBool,
    /// Proxied requests under way with this token: a single-session rotation waits for
    /// them to finish before it logs in again.
    in_flight: AtomicU64,
    /// Woken when `in_flight` drops to zero.
    idle: tokio::sync::Notify,
}

impl Token {
    /// A token as just issued.
    pub fn new(
        value: SecretString,
        generation: u64,
        issued_at: SystemTime,
        expires_at: SystemTime,
        refresh_at: SystemTime,
    ) -> Self {
        Self {
            value,
            generation,
            issued_at,
            expires_at,
            refresh_at,
            handed_out: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            idle: tokio::sync::Notify::new(),
        }
    }

    /// Counts a request that uses this token until the returned guard is dropped. (Sequentially
    /// consistent, as the drain's reads: see `Slot::get_in_use`.)
    pub fn use_for_request(self: &Arc<Self>) -> InUse {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InUse(self.clone())
    }

    /// Waits until no request uses this token.
    pub(crate) async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// The token value, for the few places that must send it somewhere.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    /// How long the token stays valid after `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// Records that a consumer received the token (written once, not by every request).
    pub(crate) fn mark_handed_out(&self) {
        if !self.handed_out.load(Ordering::Relaxed) {
            self.handed_out.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a consumer has received the token.
    pub(crate) fn was_handed_out(&self) -> bool {
        self.handed_out.load(Ordering::Relaxed)
    }
}

/// A request under way with a token (see [`Token::use_for_request`]).
#[derive(Debug)]
pub struct InUse(Arc<Token>);

impl InUse {
    /// The token the request uses.
    pub fn token(&self) -> &Arc<Token> {
        &self.0
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
