//! The emulated Control Room seen from outside, over loopback HTTP: single sessions,
//! refresh, expiry, outage, held issuances, kick, credentials, and the counters tests of the
//! broker rely on.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokenbroker_emulator::{ControlRoom, Counters, RunningControlRoom};

/// A running Control Room and a client for it, with typed calls for its endpoints.
struct App {
    cr: RunningControlRoom,
    http: reqwest::Client,
}

impl App {
    async fn spawn() -> Self {
        Self::with(ControlRoom::builder()).await
    }

    async fn with(builder: tokenbroker_emulator::ControlRoomBuilder) -> Self {
        let cr = builder.spawn().await.expect("the emulator binds loopback");
        Self {
            cr,
            http: reqwest::Client::new(),
        }
    }

    /// A Control Room with two users: `bot-a` (key `key-a`) and `bot-b` (key `key-b`).
    async fn with_two_users() -> Self {
        Self::with(
            ControlRoom::builder()
                .user("bot-a", "key-a")
                .user("bot-b", "key-b"),
        )
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cr.url())
    }

    async fn post_login(&self, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/v1/authentication"))
            .json(&body)
            .send()
            .await
            .expect("login request reaches the emulator");
        status_and_json(response).await
    }

    /// A login of the default user by a client that gives up after `timeout`.
    /// Sends a login and leaves (drops the request) once the emulator is handling it.
    async fn abandoned_login(&self) {
        let login = self
            .http
            .post(self.url("/v1/authentication"))
            .json(&json!({"username": "api-bot", "apiKey": "demo-key"}))
            .send();
        let handling = self.cr.wait_for(
            |seen| seen.issuances_in_flight == 1,
            Duration::from_secs(10),
        );
        tokio::select! {
            answered = login => panic!("the login answered before it was left: {answered:?}"),
            seen = handling => {
                seen.expect("the emulator handles the login");
            }
        }
    }

    /// Logs in with `body`, which must succeed, and returns the token.
    async fn login_with(&self, body: Value) -> String {
        let (status, answer) = self.post_login(body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        token_of(&answer)
    }

    /// Logs the default user in and returns the token.
    async fn login(&self) -> String {
        let (status, body) = self
            .post_login(json!({"username": "api-bot", "apiKey": "demo-key"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["user"]["username"], "api-bot");
        token_of(&body)
    }

    async fn refresh(&self, token: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/v1/authentication/token"))
            .json(&json!({ "token": token }))
            .send()
            .await
            .expect("refresh request reaches the emulator");
        status_and_json(response).await
    }

    async fn is_valid(&self, token: &str) -> bool {
        let response = self
            .http
            .get(self.url("/v1/authentication/token"))
            .query(&[("token", token)])
            .send()
            .await
            .expect("validate request reaches the emulator");
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["valid"].as_bool().expect("valid is a boolean")
    }

    async fn logout(&self, token: &str) -> StatusCode {
        self.http
            .post(self.url("/v1/authentication/logout"))
            .header("X-Authorization", token)
            .send()
            .await
            .expect("logout request reaches the emulator")
            .status()
    }

    /// Adds one work item to queue 7 with `X-Authorization: token`.
    async fn add_work_item(&self, token: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/v3/wlm/queues/7/workitems"))
            .header("X-Authorization", token)
            .json(&json!({"workItems": [{"json": {"invoice": 42}}]}))
            .send()
            .await
            .expect("work-item request reaches the emulator");
        status_and_json(response).await
    }

    async fn poll_work_item(&self, id: &str, token: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.url(&format!("/v3/wlm/queues/7/workitems/{id}")))
            .header("X-Authorization", token)
            .send()
            .await
            .expect("work-item request reaches the emulator");
        status_and_json(response).await
    }

    fn counters(&self) -> Counters {
        self.cr.counters()
    }
}

async fn status_and_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn token_of(body: &Value) -> String {
    body["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {body}"))
        .to_owned()
}

/// The JWT payload, decoded without any checking, as a broker would read `exp`.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .expect("payload is base64url");
    serde_json::from_slice(&payload).expect("payload is JSON")
}

#[tokio::test]
async fn login_then_work_items_are_served_and_counted() {
    let app = App::spawn().await;
    let token = app.login().await;

    let (status, body) = app.add_work_item(&token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let item = &body["list"][0];
    assert_eq!(item["status"], "NEW");
    let id = item["id"]
        .as_u64()
        .expect("work item ids are numbers")
        .to_string();

    let (status, body) = app.poll_work_item(&id, &token).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("IN_PROGRESS"))
    );
    // The broker may be configured to send `Authorization: Bearer` instead.
    let response = app
        .http
        .get(app.url(&format!("/v3/wlm/queues/7/workitems/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("reaches the emulator");
    let (status, body) = status_and_json(response).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("COMPLETED"))
    );
    assert_eq!(body["id"].as_u64().map(|id| id.to_string()), Some(id));

    let (status, _) = app.poll_work_item("999", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert_eq!(
        app.counters(),
        Counters {
            login_attempts: 1,
            logins: 1,
            max_issuances_in_flight: 1,
            api_calls_ok: 3,
            ..Counters::default()
        }
    );
    assert_eq!(app.cr.login_attempt_times().len(), 1);
}

#[tokio::test]
async fn a_token_expires_at_iat_plus_the_lifetime_in_its_exp() {
    let app = App::with(ControlRoom::builder().token_lifetime(Duration::from_secs(90))).await;
    let token = app.login().await;
    let claims = claims(&token);
    assert_eq!(claims["sub"], "api-bot");
    let iat = claims["iat"].as_u64().expect("iat is whole seconds");
    assert_eq!(claims["exp"].as_u64(), Some(iat + 90));
}

#[tokio::test]
async fn a_second_login_supersedes_the_first_token() {
    let app = App::spawn().await;
    let first = app.login().await;
    let second = app.login().await;
    assert_ne!(first, second);

    let (status, body) = app.add_work_item(&first).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].is_string(), "{body}");
    let (status, _) = app.add_work_item(&second).await;
    assert_eq!(status, StatusCode::OK);

    assert!(!app.is_valid(&first).await);
    assert!(app.is_valid(&second).await);
    let counters = app.counters();
    assert_eq!((counters.logins, counters.unauthorized), (2, 1));
    assert_eq!(counters.api_calls_ok, 1);
}

#[tokio::test]
async fn users_have_separate_sessions() {
    let app = App::with_two_users().await;
    let a = app
        .login_with(json!({"username": "bot-a", "apiKey": "key-a"}))
        .await;
    let b = app
        .login_with(json!({"username": "bot-b", "apiKey": "key-b"}))
        .await;
    assert_eq!(app.add_work_item(&a).await.0, StatusCode::OK);
    assert_eq!(app.add_work_item(&b).await.0, StatusCode::OK);
    // The default user exists only when no user was configured.
    let (status, _) = app
        .post_login(json!({"username": "api-bot", "apiKey": "demo-key"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_refresh_supersedes_the_token_it_was_given() {
    let app = App::spawn().await;
    let old = app.login().await;
    let (status, body) = app.refresh(&old).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = token_of(&body);
    assert_ne!(old, new);

    assert_eq!(app.add_work_item(&old).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.add_work_item(&new).await.0, StatusCode::OK);
    // Refreshing the superseded token again is refused.
    assert_eq!(app.refresh(&old).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.add_work_item(&new).await.0, StatusCode::OK);

    let counters = app.counters();
    assert_eq!((counters.logins, counters.refreshes), (1, 1));
    assert_eq!((counters.unauthorized, counters.api_calls_ok), (2, 2));
    assert_eq!(
        counters.login_attempts, 1,
        "a refresh is not a login attempt"
    );
}

#[tokio::test]
async fn a_token_is_refused_once_its_lifetime_has_passed() {
    let app = App::with(ControlRoom::builder().token_lifetime(Duration::from_secs(1))).await;
    let token = app.login().await;
    assert_eq!(app.add_work_item(&token).await.0, StatusCode::OK);

    // Waiting for time to pass is the point here: nothing signals an expiry.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(app.add_work_item(&token).await.0, StatusCode::UNAUTHORIZED);
    assert!(!app.is_valid(&token).await);
    assert_eq!(app.refresh(&token).await.0, StatusCode::UNAUTHORIZED);

    let fresh = app.login().await;
    assert_eq!(app.add_work_item(&fresh).await.0, StatusCode::OK);
    let counters = app.counters();
    assert_eq!((counters.unauthorized, counters.api_calls_ok), (2, 2));
}

#[tokio::test]
async fn an_outage_answers_503_and_still_counts_attempts() {
    let app = App::spawn().await;
    let token = app.login().await;
    app.cr.set_outage(true);

    for _ in 0..2 {
        let (status, body) = app
            .post_login(json!({"username": "api-bot", "apiKey": "demo-key"}))
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body["message"].is_string(), "{body}");
    }
    assert_eq!(app.refresh(&token).await.0, StatusCode::SERVICE_UNAVAILABLE);
    // The work-item API and the token issued before the outage keep working.
    assert_eq!(app.add_work_item(&token).await.0, StatusCode::OK);

    let counters = app.counters();
    assert_eq!((counters.login_attempts, counters.logins), (3, 1));
    assert_eq!(counters.refreshes, 0);
    let times = app.cr.login_attempt_times();
    assert_eq!(times.len(), 3);
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{times:?}");

    app.cr.set_outage(false);
    let after = app.login().await;
    assert_eq!(app.add_work_item(&after).await.0, StatusCode::OK);
    assert_eq!(app.counters().logins, 2);
}

#[tokio::test]
async fn a_kick_invalidates_every_current_token() {
    let app = App::with_two_users().await;
    let a = app
        .login_with(json!({"username": "bot-a", "apiKey": "key-a"}))
        .await;
    let b = app
        .login_with(json!({"username": "bot-b", "password": "key-b"}))
        .await;

    app.cr.kick();
    assert_eq!(app.add_work_item(&a).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.add_work_item(&b).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.refresh(&a).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.counters().unauthorized, 3);

    let again = app
        .login_with(json!({"username": "bot-a", "apiKey": "key-a"}))
        .await;
    assert_eq!(app.add_work_item(&again).await.0, StatusCode::OK);
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_401_and_counted_apart() {
    let app = App::spawn().await;
    let refused = [
        json!({"username": "api-bot", "apiKey": "wrong"}),
        json!({"username": "someone", "apiKey": "demo-key"}),
        json!({"username": "api-bot"}),
        json!({}),
    ];
    for body in refused {
        let (status, answer) = app.post_login(body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(answer, json!({"message": "Invalid credentials"}));
    }
    let counters = app.counters();
    assert_eq!(counters.bad_credentials, 4);
    assert_eq!(counters.unauthorized, 0);
    assert_eq!((counters.login_attempts, counters.logins), (4, 0));

    // `password` is accepted in place of `apiKey`.
    let (status, body) = app
        .post_login(json!({"username": "api-bot", "password": "demo-key"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_malformed_login_is_400_and_still_an_attempt() {
    let app = App::spawn().await;
    let response = app
        .http
        .post(app.url("/v1/authentication"))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("reaches the emulator");
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].is_string(), "{body}");
    let counters = app.counters();
    assert_eq!((counters.login_attempts, counters.bad_credentials), (1, 0));
}

#[tokio::test]
async fn missing_or_made_up_tokens_are_401_and_counted() {
    let app = App::spawn().await;
    let token = app.login().await;
    let response = app
        .http
        .post(app.url("/v3/wlm/queues/7/workitems"))
        .json(&json!({"workItems": []}))
        .send()
        .await
        .expect("reaches the emulator");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.add_work_item("not-a-token").await.0,
        StatusCode::UNAUTHORIZED
    );
    // A token with the right claims but not the one issued is refused too.
    let forged = format!("{}.{}", token.rsplit_once('.').expect("a JWT").0, "c2ln");
    assert_eq!(app.add_work_item(&forged).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.counters().unauthorized, 3);
    assert_eq!(app.add_work_item(&token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn logout_ends_the_session() {
    let app = App::spawn().await;
    let token = app.login().await;
    assert_eq!(app.logout(&token).await, StatusCode::NO_CONTENT);
    assert_eq!(app.add_work_item(&token).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(app.logout(&token).await, StatusCode::UNAUTHORIZED);
    let counters = app.counters();
    assert_eq!((counters.logouts, counters.unauthorized), (1, 2));
}

#[tokio::test]
async fn overlapping_logins_show_two_issuances_in_flight() {
    let app = App::with(ControlRoom::builder().login_latency(Duration::from_millis(300))).await;
    let (first, second) = tokio::join!(app.login(), app.login());
    assert_ne!(first, second);
    let counters = app.counters();
    assert_eq!(counters.max_issuances_in_flight, 2);
    assert_eq!(counters.logins, 2);
}

#[tokio::test]
async fn sequential_issuances_show_one_in_flight() {
    let app = App::with(ControlRoom::builder().login_latency(Duration::from_millis(50))).await;
    let token = app.login().await;
    let (status, _) = app.refresh(&token).await;
    assert_eq!(status, StatusCode::OK);
    app.login().await;
    assert_eq!(app.counters().max_issuances_in_flight, 1);
}

#[tokio::test]
async fn a_refresh_overlapping_a_login_counts_as_in_flight() {
    let app = App::with(ControlRoom::builder().login_latency(Duration::from_millis(300))).await;
    let token = app.login().await;
    let (_, (status, _)) = tokio::join!(app.login(), app.refresh(&token));
    // Both were in flight at once, whichever won.
    assert_eq!(app.counters().max_issuances_in_flight, 2);
    assert!(status == StatusCode::OK || status == StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_client_that_gives_up_mid_latency_leaves_no_issuance_in_flight() {
    let latency = Duration::from_millis(300);
    let app = App::with(ControlRoom::builder().login_latency(latency)).await;
    app.abandoned_login().await;

    app.cr
        .wait_for(|seen| seen.issuances_in_flight == 0, latency * 10)
        .await
        .expect("the abandoned handler ends");
    app.login().await;
    assert_eq!(app.counters().max_issuances_in_flight, 1);
}

#[tokio::test]
async fn a_held_login_answers_on_release_and_one_whose_client_left_is_dropped() {
    let app = App::spawn().await;
    app.cr.hold_issuances(true);
    app.abandoned_login().await;
    // The abandoned handler is dropped, not left holding.
    app.cr
        .wait_for(|seen| seen.issuances_in_flight == 0, Duration::from_secs(5))
        .await
        .expect("the handler of a client that left is dropped");

    let (token, ()) = tokio::join!(app.login(), async {
        let seen = app
            .cr
            .wait_for(|seen| seen.issuances_in_flight == 1, Duration::from_secs(5))
            .await
            .expect("the login arrives");
        assert_eq!(seen.logins, 0, "held until released: {seen:?}");
        app.cr.hold_issuances(false);
    });
    assert!(app.cr.is_current(&token));
    let counters = app.counters();
    assert_eq!(
        (
            counters.login_attempts,
            counters.logins,
            counters.issuances_in_flight
        ),
        (2, 1, 0),
        "{counters:?}"
    );
    assert_eq!(counters.max_issuances_in_flight, 1);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let app = App::spawn().await;
    app.login().await;
    app.cr.shutdown();
    tokio::time::timeout(Duration::from_secs(5), app.cr.stopped())
        .await
        .expect("the server stops promptly");
    let fresh = reqwest::Client::new();
    let result = fresh.post(app.url("/v1/authentication")).send().await;
    assert!(result.is_err(), "nothing listens after shutdown");
}
