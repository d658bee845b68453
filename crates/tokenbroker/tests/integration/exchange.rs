//! `json_login`'s token exchange (`refresh_url`): a token still in service is exchanged for
//! its successor at its `refresh_at`, and an exchange the issuer refuses is followed by a
//! login, which is a request of its own for `max_issuances` (SPEC guarantee 5).

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Options, PROVIDER, TestApp, current, providers, spawn_app};

/// Eight-second tokens, replaced four seconds before they expire (so a test has four
/// seconds to ask for one it saw published), by exchange when possible.
fn exchanging(extra: &str) -> Options {
    Options {
        lifetime: Duration::from_secs(8),
        provider_extra: format!(
            "refresh_before = \"4s\"\n\
             refresh_url = \"{{emulator}}/v1/authentication/token\"\n\
             refresh_body = {{ token = \"${{token}}\" }}\n{extra}"
        ),
        ..Options::default()
    }
}

/// The provider's entry in `GET /v1/providers`, once `done` holds for it (looked at every
/// 20 ms, for up to 10 s).
async fn provider_status(app: &TestApp, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..500 {
        last = providers(app, &app.all_key).await.1[PROVIDER].clone();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the provider never got there: {last}");
}

#[tokio::test]
async fn a_token_is_exchanged_and_a_refused_exchange_is_followed_by_a_login() {
    let app = spawn_app(exchanging("")).await;
    let (generation, first) = current(&app.http, &app.url, &app.all_key).await;
    assert_eq!(generation, 1);

    let seen = app
        .emulator
        .wait_for(|c| c.refreshes == 1, Duration::from_secs(10))
        .await
        .expect("the token is exchanged at its refresh_at");
    assert_eq!((seen.logins, seen.unauthorized), (1, 0));
    provider_status(&app, |p| p["generation"] == 2).await;
    let (generation, second) = current(&app.http, &app.url, &app.all_key).await;
    assert_eq!(generation, 2);
    assert!(!app.emulator.is_current(&first) && app.emulator.is_current(&second));

    // Ended out of band: the next exchange is refused, and a login takes its place.
    app.emulator.kick();
    let seen = app
        .emulator
        .wait_for(|c| c.logins == 2, Duration::from_secs(10))
        .await
        .expect("a login follows the refused exchange");
    assert_eq!((seen.refreshes, seen.unauthorized), (1, 1), "{seen:?}");
    provider_status(&app, |p| p["generation"] == 3).await;
    let (generation, third) = current(&app.http, &app.url, &app.all_key).await;
    assert_eq!(generation, 3);
    assert!(app.emulator.is_current(&third));
}

#[tokio::test]
async fn the_login_after_a_refused_exchange_counts_against_max_issuances() {
    let app = spawn_app(exchanging("max_issuances = \"2/10m\"")).await;
    current(&app.http, &app.url, &app.all_key).await;
    app.emulator.kick();

    // The exchange is the second request of the window: the login would be a third.
    let status = provider_status(&app, |p| {
        p["state"] == "backing_off" || p["generation"].as_u64() > Some(1)
    })
    .await;
    let seen = app.emulator.counters();
    let requests = seen.login_attempts + seen.refreshes + seen.unauthorized;
    assert_eq!(
        requests, 2,
        "the issuer saw {seen:?}; the broker says {status}"
    );
    assert_eq!(seen.unauthorized, 1, "the exchange was refused: {seen:?}");
    let message = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_issuances"), "{status}");
}

#[tokio::test]
async fn the_login_after_a_slow_refused_exchange_has_a_timeout_of_its_own() {
    // Each login and exchange takes 2.8 s, against a `timeout` of 5 s: both together would
    // not fit in one.
    let app = spawn_app(Options {
        login_latency: Duration::from_millis(2800),
        ..exchanging("")
    })
    .await;
    current(&app.http, &app.url, &app.all_key).await;
    app.emulator.kick();
    let seen = app
        .emulator
        .wait_for(|c| c.logins == 2, Duration::from_secs(15))
        .await
        .expect("a login follows the refused exchange");
    assert_eq!(seen.unauthorized, 1, "one exchange, refused: {seen:?}");
    let status = provider_status(&app, |p| p["generation"] == 2).await;
    assert_eq!(status["state"], "ready", "{status}");
}
