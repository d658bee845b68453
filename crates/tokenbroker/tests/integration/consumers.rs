//! Many consumers over real time against short-lived single-session tokens: the guarantees
//! that only show under load (SPEC 1, 2, 3, 4).

use std::time::Duration;

use futures_util::future::join_all;
use tokenbroker::demo::jobs::{self, AskAgain, Tally, WorkItems};
use tokio::time::Instant;

use crate::helpers::{Options, PROVIDER, login_bound, spawn_app};

const LIFETIME: Duration = Duration::from_secs(4);
const LATENCY: Duration = Duration::from_millis(200);

/// Runs `consumers` brokered jobs for `duration` and returns what they saw.
async fn load(
    consumers: usize,
    duration: Duration,
    policy: AskAgain,
) -> (Tally, tokenbroker_emulator::Counters) {
    let app = spawn_app(Options {
        lifetime: LIFETIME,
        login_latency: LATENCY,
        ..Options::default()
    })
    .await;
    let client = app.client();
    let api = WorkItems::new(&app.emulator.url(), Duration::from_millis(50));
    let tally = Tally::default();
    let deadline = Instant::now() + duration;
    join_all(
        (0..consumers)
            .map(|_| jobs::brokered(api.clone(), &client, PROVIDER, policy, deadline, &tally)),
    )
    .await;
    (tally, app.emulator.counters())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_consumers_that_hold_tokens_until_rejected_see_no_unrecovered_401() {
    let duration = Duration::from_secs(20);
    let (tally, seen) = load(50, duration, AskAgain::OnRejection).await;
    assert_eq!(Tally::get(&tally.unrecovered), 0);
    assert_eq!(Tally::get(&tally.no_answer), 0);
    assert!(
        Tally::get(&tally.completed) > 500,
        "the consumers worked: {}",
        Tally::get(&tally.completed)
    );
    assert_eq!(
        seen.max_issuances_in_flight, 1,
        "never two logins in flight"
    );
    let logins = seen.logins + seen.refreshes;
    assert!(
        logins <= login_bound(LIFETIME, duration),
        "{logins} logins in {duration:?}"
    );
    assert!(logins >= 3, "tokens were rotated: {logins}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_that_ask_again_at_refresh_at_never_see_a_401() {
    let duration = Duration::from_secs(12);
    let (tally, seen) = load(20, duration, AskAgain::AtRefreshAt).await;
    assert_eq!(seen.unauthorized, 0, "the emulator served no 401");
    assert_eq!(Tally::get(&tally.unauthorized), 0);
    assert_eq!(Tally::get(&tally.no_answer), 0);
    assert!(Tally::get(&tally.completed) > 200);
    assert_eq!(seen.max_issuances_in_flight, 1);
    let logins = seen.logins + seen.refreshes;
    assert!(
        (2..=login_bound(LIFETIME, duration)).contains(&logins),
        "{logins} logins"
    );
}
