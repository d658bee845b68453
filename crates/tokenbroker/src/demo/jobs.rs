//! The demo's jobs: the seed scenario's "create a work item, then poll its status until it
//! completes", done two ways against one Control Room API user.
//!
//! A [`self_login`] job logs in for itself and logs in again on a 401: the usual advice,
//! and the reason every job keeps killing the others' tokens. A [`brokered`] job gets the
//! token from the broker and, before each call, asks again once `refresh_at` has come; on
//! a 401 it reports the generation as rejected and retries the run once. Both count what
//! they see in [`Tally`]; the integration tests use [`brokered`] as their consumer and
//! check its tally against the emulator's counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use crate::api::TokenBody;
use crate::client::BrokerClient;

/// What a set of jobs saw, shared between them and the progress display.
#[derive(Debug, Default)]
pub struct Tally {
    /// Work items created and polled to completion.
    pub completed: AtomicU64,
    /// Runs cut short by a 401 (the job's token had been superseded).
    pub failed: AtomicU64,
    /// 401 answers seen from the work-item API.
    pub unauthorized: AtomicU64,
    /// 401s still there after the retry with a new token.
    pub unrecovered: AtomicU64,
    /// Runs that ended without an answer: no token from the broker or the login, or a
    /// network error.
    pub no_answer: AtomicU64,
}

impl Tally {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where a job's calls get their authentication header.
trait Credentials {
    /// The header name and value for the next call.
    async fn header(&mut self) -> anyhow::Result<(String, String)>;
}

/// A job's own login, kept until a 401.
struct OwnLogin {
    api: WorkItems,
    username: String,
    api_key: String,
    token: Option<String>,
}

impl Credentials for OwnLogin {
    async fn header(&mut self) -> anyhow::Result<(String, String)> {
        let token = match &self.token {
            Some(token) => token.clone(),
            None => {
                let token = self.api.login(&self.username, &self.api_key).await?;
                self.token.insert(token).clone()
            }
        };
        Ok(("X-Authorization".to_owned(), token))
    }
}

/// When a brokered job asks the broker again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskAgain {
    /// Once the token's `refresh_at` has come, as the API's contract asks.
    AtRefreshAt,
    /// Only when the upstream API rejects the token: a careless consumer, which still
    /// recovers through an invalidation.
    OnRejection,
}

/// The broker's token, asked for again as `policy` says.
struct FromBroker<'a> {
    broker: &'a BrokerClient,
    provider: &'a str,
    policy: AskAgain,
    current: Option<(TokenBody, SystemTime)>,
}

impl Credentials for FromBroker<'_> {
    async fn header(&mut self) -> anyhow::Result<(String, String)> {
        let due = self.current.as_ref().is_none_or(|(_, refresh_at)| {
            self.policy == AskAgain::AtRefreshAt && SystemTime::now() >= *refresh_at
        });
        if due {
            let token = self.broker.token(self.provider).await?;
            self.keep(token);
        }
        let (token, _) = self.current.as_ref().expect("a token was just fetched");
        Ok((token.header_name.clone(), token.header_value.clone()))
    }
}

impl FromBroker<'_> {
    fn keep(&mut self, token: TokenBody) {
        let refresh_at =
            humantime::parse_rfc3339(&token.refresh_at).unwrap_or_else(|_| SystemTime::now());
        self.current = Some((token, refresh_at));
    }

    /// Reports the token in use as rejected and keeps the one the broker answers.
    async fn rejected(&mut self) -> anyhow::Result<()> {
        if let Some((token, _)) = self.current.take() {
            let fresh = self
                .broker
                .invalidate(self.provider, token.generation)
                .await?;
            self.keep(fresh);
        }
        Ok(())
    }
}

/// The Control Room API a job works against.
#[derive(Clone)]
pub struct WorkItems {
    http: reqwest::Client,
    /// The Control Room's base URL.
    base: String,
    /// Pause between status polls: the pace of a real job.
    poll_every: Duration,
}

/// How one run ended.
enum Run {
    Completed,
    /// The upstream API answered 401.
    Unauthorized,
}

impl WorkItems {
    pub fn new(base: &str, poll_every: Duration) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            poll_every,
        }
    }

    /// Creates a work item and polls it until it completes, each call authenticated with
    /// the header `credentials` gives at that moment.
    async fn run(&self, credentials: &mut impl Credentials) -> anyhow::Result<Run> {
        let (name, value) = credentials.header().await?;
        let created = self
            .http
            .post(format!("{}/v3/wlm/queues/1/workitems", self.base))
            .header(name, value)
            .json(&json!({ "workItems": [{ "json": { "invoice": 42 } }] }))
            .send()
            .await?;
        if created.status() == StatusCode::UNAUTHORIZED {
            return Ok(Run::Unauthorized);
        }
        let created: serde_json::Value = created.error_for_status()?.json().await?;
        let id = created["list"][0]["id"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("work item answer without an id"))?;
        loop {
            tokio::time::sleep(self.poll_every).await;
            let (name, value) = credentials.header().await?;
            let status = self
                .http
                .get(format!("{}/v3/wlm/queues/1/workitems/{id}", self.base))
                .header(name, value)
                .send()
                .await?;
            if status.status() == StatusCode::UNAUTHORIZED {
                return Ok(Run::Unauthorized);
            }
            let status: serde_json::Value = status.error_for_status()?.json().await?;
            if status["status"] == "COMPLETED" {
                return Ok(Run::Completed);
            }
        }
    }

    /// Logs in as the API user, as a job without a broker does.
    async fn login(&self, username: &str, api_key: &str) -> anyhow::Result<String> {
        let answer: serde_json::Value = self
            .http
            .post(format!("{}/v1/authentication", self.base))
            .json(&json!({ "username": username, "apiKey": api_key }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        answer["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("login answer without a token"))
    }
}

/// A job that logs in for itself, and again whenever it sees a 401, until `deadline`.
pub async fn self_login(
    api: WorkItems,
    username: String,
    api_key: String,
    deadline: Instant,
    tally: &Tally,
) {
    let mut own = OwnLogin {
        api: api.clone(),
        username,
        api_key,
        token: None,
    };
    while Instant::now() < deadline {
        match api.run(&mut own).await {
            Ok(Run::Completed) => Tally::add(&tally.completed),
            Ok(Run::Unauthorized) => {
                Tally::add(&tally.unauthorized);
                Tally::add(&tally.failed);
                own.token = None;
            }
            Err(_) => failed_without_answer(tally).await,
        }
    }
}

/// A job that gets its tokens from the broker, until `deadline`. A run that meets a 401
/// reports the token and is retried once with the broker's answer.
pub async fn brokered(
    api: WorkItems,
    broker: &BrokerClient,
    provider: &str,
    policy: AskAgain,
    deadline: Instant,
    tally: &Tally,
) {
    let mut from_broker = FromBroker {
        broker,
        provider,
        policy,
        current: None,
    };
    while Instant::now() < deadline {
        match api.run(&mut from_broker).await {
            Ok(Run::Completed) => Tally::add(&tally.completed),
            Ok(Run::Unauthorized) => {
                Tally::add(&tally.unauthorized);
                if from_broker.rejected().await.is_err() {
                    Tally::add(&tally.no_answer);
                }
                match api.run(&mut from_broker).await {
                    Ok(Run::Completed) => Tally::add(&tally.completed),
                    Ok(Run::Unauthorized) => {
                        Tally::add(&tally.unauthorized);
                        Tally::add(&tally.unrecovered);
                        Tally::add(&tally.failed);
                    }
                    Err(_) => failed_without_answer(tally).await,
                }
            }
            Err(_) => failed_without_answer(tally).await,
        }
    }
}

/// A run that ended without an answer (no token, a network error): counted, then a pause so
/// that a broken setup does not spin.
async fn failed_without_answer(tally: &Tally) {
    Tally::add(&tally.failed);
    Tally::add(&tally.no_answer);
    tokio::time::sleep(Duration::from_millis(200)).await;
}
