//! The emulated capped pool seen from outside, over loopback HTTP: client authentication,
//! distinct tokens, the cap and its 429, revocation, the token list, the knobs, the protected
//! API and the counters tests of the broker rely on.

mod common;

use std::time::Duration;

use common::{ClientAuth, DEFAULT_CLIENT, Reply};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokenbroker_emulator::{
    CappedPool, CappedPoolBuilder, PoolCounters, RunningCappedPool, fingerprint,
};

/// The grant every successful request asks for.
const GRANT: (&str, &str) = ("grant_type", "client_credentials");

/// A running pool and a client for it.
struct App {
    pool: RunningCappedPool,
    http: reqwest::Client,
}

impl App {
    async fn spawn() -> Self {
        Self::with(CappedPool::builder()).await
    }

    async fn with(builder: CappedPoolBuilder) -> Self {
        let pool = builder.spawn().await.expect("the emulator binds loopback");
        Self {
            pool,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.pool.url())
    }

    async fn request_token(&self, auth: ClientAuth<'_>, params: &[(&str, &str)]) -> Reply {
        common::post_form(&self.http, &self.url("/oauth/token"), auth, params).await
    }

    /// A token for the default client, which must be issued.
    async fn token(&self) -> String {
        let reply = self.request_token(DEFAULT_CLIENT, &[GRANT]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.field("access_token")
    }

    async fn ping(&self, token: &str) -> StatusCode {
        common::ping(&self.http, &self.pool.url(), Some(token)).await
    }

    async fn multitokens(&self, auth: ClientAuth<'_>) -> Reply {
        let request = auth.apply(self.http.get(self.url("/oauth/multitokens")), &[]);
        Reply::read(request.send().await.expect("reaches the emulator")).await
    }

    async fn revoke(&self, token: Option<&str>) -> Reply {
        let params: Vec<(&str, &str)> = token.map(|token| ("token", token)).into_iter().collect();
        common::post_form(
            &self.http,
            &self.url("/oauth/revoketokens"),
            DEFAULT_CLIENT,
            &params,
        )
        .await
    }

    fn counters(&self) -> PoolCounters {
        self.pool.counters()
    }
}

/// The whole seconds of a `Retry-After` header.
fn retry_after(reply: &Reply) -> u64 {
    reply
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {:?}", reply.headers))
}

#[tokio::test]
async fn basic_and_post_client_auth_with_encoded_credentials_issue_distinct_tokens() {
    let app = App::with(CappedPool::builder().client("svc:1", "p@ss w+rd")).await;
    // RFC 6749 §2.3.1: form-encode the id and the secret, then join and base64 them.
    let basic = app
        .request_token(ClientAuth::Basic("svc%3A1", "p%40ss+w%2Brd"), &[GRANT])
        .await;
    assert_eq!(basic.status, StatusCode::OK, "{}", basic.body);
    assert_eq!(basic.body["token_type"], "bearer");
    assert_eq!(basic.body["expires_in"], 60);
    assert_eq!(basic.header("cache-control"), Some("no-store"));
    let post = app
        .request_token(
            ClientAuth::Post("svc:1", "p@ss w+rd"),
            &[GRANT, ("scope", "read write"), ("audience", "api")],
        )
        .await;
    assert_eq!(post.status, StatusCode::OK, "{}", post.body);
    assert_eq!(post.body["scope"], "read write");

    let (first, second) = (basic.field("access_token"), post.field("access_token"));
    assert_ne!(first, second);
    assert_eq!(app.ping(&first).await, StatusCode::OK);
    assert_eq!(app.ping(&second).await, StatusCode::OK);
    assert_eq!(
        app.counters(),
        PoolCounters {
            token_requests: 2,
            issued: 2,
            max_active_seen: 2,
            api_calls_ok: 2,
            max_requests_in_flight: 1,
            ..PoolCounters::default()
        }
    );
}

#[tokio::test]
async fn wrong_missing_or_unencoded_client_credentials_are_invalid_client() {
    let app = App::with(CappedPool::builder().client("svc:1", "p@ss w+rd")).await;
    let refused = [
        // Not form-encoded: the id ends at the first colon.
        ClientAuth::Basic("svc:1", "p@ss w+rd"),
        ClientAuth::Basic("svc%3A1", "wrong"),
        ClientAuth::Post("svc:1", "wrong"),
        ClientAuth::Post("svc", "p@ss w+rd"),
        ClientAuth::Anonymous,
    ];
    for auth in refused {
        let reply = app.request_token(auth, &[GRANT]).await;
        reply.assert_error(StatusCode::UNAUTHORIZED, "invalid_client");
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Basic "), "{auth:?}: {challenge:?}");
    }
    // Both methods at once is a malformed request (RFC 6749 §2.3).
    let both = app
        .request_token(
            ClientAuth::Basic("svc%3A1", "p%40ss+w%2Brd"),
            &[GRANT, ("client_secret", "p@ss w+rd")],
        )
        .await;
    both.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    let counters = app.counters();
    assert_eq!((counters.invalid_client, counters.issued), (5, 0));
    assert_eq!(counters.token_requests, 6);
}

#[tokio::test]
async fn only_the_client_credentials_grant_is_served() {
    let app = App::spawn().await;
    let password = app
        .request_token(DEFAULT_CLIENT, &[("grant_type", "password")])
        .await;
    password.assert_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    let missing = app.request_token(DEFAULT_CLIENT, &[]).await;
    missing.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    let repeated = app.request_token(DEFAULT_CLIENT, &[GRANT, GRANT]).await;
    repeated.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(app.counters().issued, 0);
}

#[tokio::test]
async fn past_the_cap_the_token_endpoint_answers_429_with_retry_after() {
    let app = App::with(CappedPool::builder().max_active(3)).await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(app.token().await);
    }
    let reply = app.request_token(DEFAULT_CLIENT, &[GRANT]).await;
    reply.assert_error(StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable");
    let wait = retry_after(&reply);
    assert!((59..=60).contains(&wait), "Retry-After {wait}");
    for token in &tokens {
        assert_eq!(app.ping(token).await, StatusCode::OK);
    }
    let counters = app.counters();
    assert_eq!((counters.issued, counters.rejected_429), (3, 1));
    assert_eq!(counters.max_active_seen, 3);
}

#[tokio::test]
async fn retry_after_counts_down_to_the_expiry_that_frees_the_slot() {
    let app = App::with(
        CappedPool::builder()
            .max_active(1)
            .token_lifetime(Duration::from_secs(2)),
    )
    .await;
    let first = app.token().await;
    let reply = app.request_token(DEFAULT_CLIENT, &[GRANT]).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&reply), 2);

    // Waiting for time to pass is the point here: nothing signals an expiry.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let reply = app.request_token(DEFAULT_CLIENT, &[GRANT]).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&reply), 1, "the time left on the oldest token");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(app.ping(&first).await, StatusCode::UNAUTHORIZED);
    let second = app.token().await;
    assert_eq!(app.ping(&second).await, StatusCode::OK);
    let counters = app.counters();
    assert_eq!((counters.issued, counters.max_active_seen), (2, 1));
    assert_eq!((counters.rejected_429, counters.unauthorized), (2, 1));
}

#[tokio::test]
async fn revoking_a_token_frees_its_slot_and_kills_it() {
    let app = App::with(CappedPool::builder().max_active(2)).await;
    let (first, second) = (app.token().await, app.token().await);
    let full = app.request_token(DEFAULT_CLIENT, &[GRANT]).await;
    assert_eq!(full.status, StatusCode::TOO_MANY_REQUESTS);

    let reply = app.revoke(Some(&first)).await;
    assert_eq!(
        (reply.status, reply.body),
        (StatusCode::OK, json!({"revoked": 1}))
    );
    assert_eq!(app.ping(&first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.ping(&second).await, StatusCode::OK);
    let third = app.token().await;
    assert_eq!(app.ping(&third).await, StatusCode::OK);

    // Revoking an unknown or already revoked token is no error and revokes nothing.
    let again = app.revoke(Some(&first)).await;
    assert_eq!(
        (again.status, again.body),
        (StatusCode::OK, json!({"revoked": 0}))
    );
    assert_eq!(app.counters().max_active_seen, 2);
}

#[tokio::test]
async fn revoking_without_a_token_revokes_every_token_of_the_client() {
    let app = App::spawn().await;
    let tokens = [app.token().await, app.token().await];
    let reply = app.revoke(None).await;
    assert_eq!(reply.body, json!({"revoked": 2}));
    for token in &tokens {
        assert_eq!(app.ping(token).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.multitokens(DEFAULT_CLIENT).await.body, json!([]));
}

#[tokio::test]
async fn multitokens_lists_the_live_tokens_by_fingerprint_oldest_first() {
    let app = App::spawn().await;
    let (first, second) = (app.token().await, app.token().await);
    let reply = app.multitokens(DEFAULT_CLIENT).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let listed = reply.body.as_array().expect("a list of tokens");
    let fingerprints: Vec<&Value> = listed.iter().map(|entry| &entry["fingerprint"]).collect();
    assert_eq!(
        fingerprints,
        [&json!(fingerprint(&first)), &json!(fingerprint(&second))]
    );
    for entry in listed {
        let expires_in = entry["expires_in"].as_u64().expect("whole seconds");
        assert!((59..=60).contains(&expires_in), "{entry}");
    }
    let shown = reply.body.to_string();
    assert!(
        !shown.contains(&first) && !shown.contains(&second),
        "{shown}"
    );

    let refused = app.multitokens(ClientAuth::Basic("svc", "wrong")).await;
    refused.assert_error(StatusCode::UNAUTHORIZED, "invalid_client");
    assert_eq!(app.counters().invalid_client, 1);
}

#[tokio::test]
async fn an_outage_answers_503_and_issued_tokens_keep_working() {
    let app = App::spawn().await;
    let token = app.token().await;
    app.pool.set_outage(true);
    let reply = app.request_token(DEFAULT_CLIENT, &[GRANT]).await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");
    assert_eq!(app.ping(&token).await, StatusCode::OK);
    app.pool.set_outage(false);
    app.token().await;
    let counters = app.counters();
    assert_eq!((counters.token_requests, counters.issued), (3, 2));
    assert_eq!(counters.rejected_429, 0);
}

#[tokio::test]
async fn a_rate_limit_answers_slow_down_and_every_request_time_is_recorded() {
    let app = App::spawn().await;
    app.token().await;
    app.pool.set_rate_limit(Some(Duration::from_secs(2)));
    for _ in 0..2 {
        let reply = app.request_token(DEFAULT_CLIENT, &[GRANT]).await;
        reply.assert_error(StatusCode::TOO_MANY_REQUESTS, "slow_down");
        assert_eq!(retry_after(&reply), 2);
    }
    app.pool.set_rate_limit(None);
    app.token().await;

    let times = app.pool.token_request_times();
    assert_eq!(times.len(), 4);
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{times:?}");
    let counters = app.counters();
    assert_eq!((counters.issued, counters.rejected_429), (2, 2));
}

#[tokio::test]
async fn forced_errors_answer_with_their_status_and_rfc_6749_body() {
    let app = App::spawn().await;
    let forced = [
        (401, "invalid_client", "client disabled"),
        (400, "invalid_scope", "scope admin is not allowed"),
        (
            400,
            "unauthorized_client",
            "grant not allowed for this client",
        ),
        (400, "invalid_request", "missing audience"),
        (500, "server_error", "boom"),
    ];
    for (status, code, description) in forced {
        app.pool.force_error(Some((status, code, description)));
        let reply = app.request_token(DEFAULT_CLIENT, &[GRANT]).await;
        assert_eq!(reply.status.as_u16(), status);
        assert_eq!(
            reply.body,
            json!({"error": code, "error_description": description})
        );
    }
    app.pool.force_error(None);
    app.token().await;
    let counters = app.counters();
    assert_eq!((counters.token_requests, counters.issued), (6, 1));
}

#[tokio::test]
async fn the_api_refuses_missing_unknown_and_revoked_tokens_and_counts_them() {
    let app = App::spawn().await;
    let token = app.token().await;
    assert_eq!(
        common::ping(&app.http, &app.pool.url(), None).await,
        StatusCode::UNAUTHORIZED
    );
    let response = app
        .http
        .get(app.url("/api/ping"))
        .bearer_auth("at-made-up")
        .send()
        .await
        .expect("reaches the emulator");
    let reply = Reply::read(response).await;
    reply.assert_error(StatusCode::UNAUTHORIZED, "invalid_token");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
    let ok = app
        .http
        .get(app.url("/api/ping"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("reaches the emulator");
    assert_eq!(Reply::read(ok).await.body, json!({"ok": true}));
    let counters = app.counters();
    assert_eq!((counters.unauthorized, counters.api_calls_ok), (2, 1));
}

#[tokio::test]
async fn overlapping_token_requests_show_two_in_flight() {
    let app = App::with(CappedPool::builder().issue_latency(Duration::from_millis(300))).await;
    let (first, second) = tokio::join!(app.token(), app.token());
    assert_ne!(first, second);
    assert_eq!(app.counters().max_requests_in_flight, 2);
}

#[tokio::test]
async fn sequential_token_requests_show_one_in_flight() {
    let app = App::with(CappedPool::builder().issue_latency(Duration::from_millis(50))).await;
    app.token().await;
    app.token().await;
    let counters = app.counters();
    assert_eq!((counters.max_requests_in_flight, counters.issued), (1, 2));
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let app = App::spawn().await;
    app.token().await;
    app.pool.shutdown();
    tokio::time::timeout(Duration::from_secs(5), app.pool.stopped())
        .await
        .expect("the server stops promptly");
    let result = reqwest::Client::new()
        .post(app.url("/oauth/token"))
        .send()
        .await;
    assert!(result.is_err(), "nothing listens after shutdown");
}
