//! Several brokers sharing one store behave as one (SPEC guarantees 1, 2, 3): the issuer
//! never sees two logins in flight, consumers spread over the brokers see no unrecovered
//! 401, and logins stay within one per token life; a broker killed while it holds the
//! issuance lease stalls the others no longer than the lease; a database outage leaves the
//! cached tokens served.

use std::path::Path;
use std::time::Duration;

use futures_util::future::join_all;
use secrecy::SecretString;
use tokenbroker::client::BrokerClient;
use tokenbroker::demo::jobs::{self, AskAgain, Tally, WorkItems};
use tokio::time::Instant;

use crate::helpers::{Options, PROVIDER, login_bound, spawn_app, start_broker};
use crate::process::ServeProcess;

const LIFETIME: Duration = Duration::from_secs(4);

/// How long an issuance lease lasts unless renewed (`LEASE_TTL` in the core's
/// `slot/driver.rs`): the longest a dead holder may keep the other brokers from issuing.
const LEASE_TTL: Duration = Duration::from_secs(3);

/// Runs 60 consumers spread over three `tokenbroker serve` processes for 20 s, the brokers
/// sharing the app's SQLite file, or `schema` if given, and checks that the issuer saw them
/// as one: never two logins in flight, no unrecovered 401, logins within one per token life.
async fn three_processes_log_in_as_one(schema: Option<&TestSchema>) {
    let duration = Duration::from_secs(20);
    let app = spawn_app(Options {
        lifetime: LIFETIME,
        login_latency: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    let config = match schema {
        None => app.config_text.clone(),
        Some(schema) => schema.holds(&app.config_text, app.store.path()),
    };
    let brokers = ServeProcess::start_ready(3, &config, &app.master_key, &app.http).await;
    let clients: Vec<BrokerClient> = brokers
        .iter()
        .map(|b| BrokerClient::new(&b.url, SecretString::from(app.all_key.clone())).unwrap())
        .collect();
    let api = WorkItems::new(&app.emulator.url(), Duration::from_millis(50));
    let tally = Tally::default();
    let deadline = Instant::now() + duration;
    join_all((0..60).map(|i| {
        jobs::brokered(
            api.clone(),
            &clients[i % clients.len()],
            PROVIDER,
            AskAgain::OnRejection,
            deadline,
            &tally,
        )
    }))
    .await;
    let seen = app.emulator.counters();
    for broker in brokers {
        let (status, logs) = broker.terminate().await;
        assert!(status.success(), "the broker stops cleanly: {logs}");
    }
    assert_eq!(
        seen.max_issuances_in_flight, 1,
        "never two logins in flight: {seen:?}"
    );
    assert_eq!(Tally::get(&tally.unrecovered), 0);
    assert!(
        Tally::get(&tally.completed) > 500,
        "the consumers worked: {}",
        Tally::get(&tally.completed)
    );
    let logins = seen.logins + seen.refreshes;
    assert!(
        logins <= login_bound(LIFETIME, duration),
        "{logins} logins in {duration:?}: {seen:?}"
    );
    assert!(logins >= 3, "tokens were rotated: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_broker_processes_on_one_sqlite_file_log_in_as_one() {
    three_processes_log_in_as_one(None).await;
}

/// `config`, whose store is the SQLite file under `dir` (as the test helpers write it),
/// with `store_lines` in its place.
pub(crate) fn moved_store(config: &str, dir: &Path, store_lines: &str) -> String {
    let path = format!("path = \"{}/tokenbroker.db\"", dir.display());
    assert!(
        config.contains(&path),
        "the config keeps its store under {}",
        dir.display()
    );
    config.replacen(&path, store_lines, 1)
}

/// A fresh schema of the test database for one test, dropped (best effort; the name is
/// unique, so a leftover harms nothing) when the test ends.
pub(crate) struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    /// A schema named `prefix_<random>`, or `None` when the test database is down.
    pub(crate) async fn new(prefix: &str) -> Option<Self> {
        let url = postgres().await?;
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        Some(Self { url, name })
    }

    /// `config`, whose store is the SQLite file under `dir`, moved to this schema.
    pub(crate) fn holds(&self, config: &str, dir: &Path) -> String {
        moved_store(
            config,
            dir,
            &format!("url = \"{}\"\nschema = \"{}\"", self.url, self.name),
        )
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let drop_schema = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let _ = std::process::Command::new("psql")
            .args([self.url.as_str(), "-q", "-c", &drop_schema])
            .output();
    }
}

/// Says on the terminal that a test is skipped and why. Written to stderr directly: the
/// test harness keeps `eprintln!` of a passing test to itself.
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// A PostgreSQL test cannot run for want of a database: skipped (saying `why`), or a
/// failure where one is required (`TOKENBROKER_REQUIRE_PG`, which CI sets).
fn no_database(why: &str) {
    if std::env::var_os("TOKENBROKER_REQUIRE_PG").is_some() {
        panic!("TOKENBROKER_REQUIRE_PG is set, and {why}");
    }
    skipped(why);
}

/// The test database, or `None` (and a line saying the test is skipped) when it is down.
async fn postgres() -> Option<String> {
    let url = std::env::var("TOKENBROKER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let host = url
        .rsplit_once('@')
        .map_or(url.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:5432")
        .to_owned();
    match tokio::net::TcpStream::connect(&host).await {
        Ok(_) => Some(url),
        Err(e) => {
            no_database(&format!(
                "PostgreSQL not reachable at {host} ({e}); set TOKENBROKER_TEST_PG_URL"
            ));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_broker_processes_on_postgresql_log_in_as_one() {
    let Some(schema) = TestSchema::new("tb_cluster").await else {
        return;
    };
    three_processes_log_in_as_one(Some(&schema)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_lease_holder_stalls_the_other_brokers_no_longer_than_the_lease() {
    let Some(schema) = TestSchema::new("tb_lease").await else {
        return;
    };
    let latency = Duration::from_millis(200);
    let app = spawn_app(Options {
        login_latency: latency,
        ..Options::default()
    })
    .await;
    let config = schema.holds(&app.config_text, app.store.path());
    let mut brokers = ServeProcess::start_ready(3, &config, &app.master_key, &app.http).await;

    // Only the first broker is asked: its driver takes the lease, then logs in, and the
    // emulator holds that login, so the broker is killed mid-issuance holding the lease.
    app.emulator.hold_issuances(true);
    let holder = brokers.remove(0);
    let holder_url = holder.url.clone();
    let kill_mid_login = async {
        app.emulator
            .wait_for(|seen| seen.login_attempts == 1, Duration::from_secs(10))
            .await
            .expect("the first broker logs in");
        holder.kill();
        Instant::now()
    };
    let (asked, killed) = tokio::join!(app.token_at(&holder_url), kill_mid_login);
    assert!(
        asked.is_err(),
        "the killed broker never answered: {asked:?}"
    );
    // The dead broker's login is dropped unanswered: no token of its will ever exist.
    app.emulator
        .wait_for(
            |seen| seen.issuances_in_flight == 0,
            Duration::from_secs(10),
        )
        .await
        .expect("the dead broker's login is dropped");
    app.emulator.hold_issuances(false);

    let answers = join_all(brokers.iter().map(|broker| async {
        let answer = app.token_at(&broker.url).await;
        (
            answer.expect("a surviving broker answers"),
            killed.elapsed(),
        )
    }))
    .await;
    // Its lease expires at most LEASE_TTL after its last renewal; the survivors look again
    // every 200 ms, then one logs in (`latency`); the rest is the machine's slack.
    let bound = LEASE_TTL + Duration::from_millis(200) + latency + Duration::from_millis(2500);
    for ((status, body), waited) in &answers {
        assert_eq!(*status, reqwest::StatusCode::OK, "{body}");
        assert!(
            *waited <= bound,
            "a survivor waited {waited:?} after the kill, more than {bound:?}"
        );
    }
    let token = &answers[0].0.1["access_token"];
    assert!(
        answers
            .iter()
            .all(|((_, body), _)| body["access_token"] == *token),
        "one token for the cluster: {answers:?}"
    );
    assert!(
        app.emulator.is_current(token.as_str().expect("a token")),
        "the issuer's current session"
    );

    let seen = app.emulator.counters();
    assert_eq!(
        (
            seen.login_attempts,
            seen.logins,
            seen.max_issuances_in_flight
        ),
        (2, 1, 1),
        "the dead broker's login, then one login for the survivors: {seen:?}"
    );
    // The survivors waited for the lease rather than logging in beside the dead broker's
    // login: the second login came a lease's life after the first (less the moments between
    // taking the lease and reaching the issuer).
    let times = app.emulator.login_attempt_times();
    let gap = times[1] - times[0];
    assert!(
        gap >= LEASE_TTL - Duration::from_millis(500),
        "the second login came {gap:?} after the first, inside the dead broker's lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_keeps_cached_tokens_served_and_brokers_recover_by_themselves() {
    let database = match crate::private_pg::PrivatePostgres::start() {
        Ok(database) => database,
        Err(why) => {
            no_database(&format!("no private PostgreSQL for the fault test: {why}"));
            return;
        }
    };
    let app = spawn_app(Options::default()).await;
    let config = moved_store(
        &app.config_text,
        app.store.path(),
        &format!("url = \"{}\"", database.url()),
    );
    let brokers = [
        start_broker(&config, &app.master_key).await,
        start_broker(&config, &app.master_key).await,
    ];
    let (_, first) = app.token_at(&brokers[0].url).await.unwrap();
    let (_, same) = app.token_at(&brokers[1].url).await.unwrap();
    assert_eq!(
        first["access_token"], same["access_token"],
        "one token for the cluster"
    );
    assert_eq!(app.emulator.counters().logins, 1);

    database.stop();
    for broker in &brokers {
        let (status, body) = app.token_at(&broker.url).await.unwrap();
        assert_eq!(
            status,
            reqwest::StatusCode::OK,
            "cached token served while the database is down"
        );
        assert_eq!(body["access_token"], first["access_token"]);
        let ready = app
            .http
            .get(format!("{}/readyz", broker.url))
            .send()
            .await
            .unwrap();
        assert_eq!(
            ready.status(),
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "readyz says so"
        );
    }
    // An issuance needs the lease: refused, rather than a login that could break the
    // single-session identity.
    let refused = app
        .http
        .post(format!(
            "{}/v1/tokens/{PROVIDER}/invalidate",
            brokers[0].url
        ))
        .bearer_auth(&app.all_key)
        .json(&serde_json::json!({ "generation": first["generation"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.emulator.counters().login_attempts,
        1,
        "no login without the lease"
    );

    database.resume().unwrap();
    let started = Instant::now();
    let recovered = loop {
        let (status, body) = app.token_at(&brokers[0].url).await.unwrap();
        if status == reqwest::StatusCode::OK && body["generation"] != first["generation"] {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no recovery: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        recovered["generation"], 2,
        "numbering went on from the stored generation"
    );
    let ready = app
        .http
        .get(format!("{}/readyz", brokers[1].url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    for broker in brokers {
        broker.stop().await.unwrap();
    }
}
