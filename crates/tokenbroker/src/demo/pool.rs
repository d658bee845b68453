//! The demo's second act: workers of one OAuth2 client against a Reltio-style server that
//! caps the client's live tokens (3) and answers 429 past the cap. A [`self_fetch`] worker
//! asks the token endpoint for each run of work, as a naive client does; a [`brokered`]
//! worker asks the broker, which holds at most `max_active_tokens` and shares them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use crate::client::BrokerClient;

/// OAuth2 client the emulated server knows.
pub(super) const CLIENT_ID: &str = "svc";
pub(super) const CLIENT_SECRET: &str = "demo-client-secret";
/// Calls per run of work, and the pause between them.
const CALLS_PER_RUN: usize = 3;
const CALL_EVERY: Duration = Duration::from_millis(100);

/// What the workers saw.
#[derive(Debug, Default)]
pub(super) struct PoolTally {
    /// API calls answered 2xx.
    pub(super) calls_ok: AtomicU64,
    /// API calls or token requests that failed (a 401, or no token at all).
    pub(super) failed: AtomicU64,
}

impl PoolTally {
    pub(super) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Calls the protected API a run's worth of times with `token`; false on a 401.
async fn run(http: &reqwest::Client, api: &str, authorization: &str, tally: &PoolTally) -> bool {
    for _ in 0..CALLS_PER_RUN {
        let answer = http
            .get(format!("{api}/api/ping"))
            .header(reqwest::header::AUTHORIZATION, authorization)
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => PoolTally::add(&tally.calls_ok),
            Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                PoolTally::add(&tally.failed);
                return false;
            }
            _ => PoolTally::add(&tally.failed),
        }
        tokio::time::sleep(CALL_EVERY).await;
    }
    true
}

/// A worker that fetches a token of its own for every run, until `deadline`.
pub(super) async fn self_fetch(api: String, deadline: Instant, tally: &PoolTally) {
    let http = reqwest::Client::new();
    while Instant::now() < deadline {
        let answer = http
            .post(format!("{api}/oauth/token"))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await;
        let token = match answer {
            Ok(r) if r.status().is_success() => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|b| b["access_token"].as_str().map(str::to_owned)),
            _ => None,
        };
        match token {
            Some(token) => {
                run(&http, &api, &format!("Bearer {token}"), tally).await;
            }
            None => {
                PoolTally::add(&tally.failed);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// A worker that gets its token from the broker for every run, until `deadline`; on a 401
/// it reports the generation.
pub(super) async fn brokered(
    api: String,
    broker: &BrokerClient,
    provider: &str,
    deadline: Instant,
    tally: &PoolTally,
) {
    let http = reqwest::Client::new();
    while Instant::now() < deadline {
        match broker.token(provider).await {
            Ok(token) => {
                if !run(&http, &api, &token.header_value, tally).await {
                    let _ = broker.invalidate(provider, token.generation).await;
                }
            }
            Err(_) => {
                PoolTally::add(&tally.failed);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}
