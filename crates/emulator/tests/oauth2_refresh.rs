//! The emulated rotating refresh server seen from outside, over loopback HTTP: rotation,
//! retries within the reuse grace, lockouts outside it, reseeding, the crash window, the
//! protected API and the counters tests of the broker rely on.

mod common;

use std::time::Duration;

use common::{ClientAuth, DEFAULT_CLIENT, Reply};
use reqwest::StatusCode;
use serde_json::json;
use tokenbroker_emulator::{
    RefreshCounters, RotatingRefresh, RotatingRefreshBuilder, RunningRotatingRefresh,
};

/// A running server and a client for it.
struct App {
    server: RunningRotatingRefresh,
    http: reqwest::Client,
}

/// What a successful refresh hands out.
#[derive(Debug)]
struct Tokens {
    access: String,
    refresh: String,
}

impl App {
    async fn spawn() -> Self {
        Self::with(RotatingRefresh::builder()).await
    }

    async fn with(builder: RotatingRefreshBuilder) -> Self {
        let server = builder.spawn().await.expect("the emulator binds loopback");
        Self {
            server,
            http: reqwest::Client::new(),
        }
    }

    fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.server.url())
    }

    async fn request(&self, auth: ClientAuth<'_>, refresh_token: &str) -> Reply {
        let params = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        common::post_form(&self.http, &self.token_url(), auth, &params).await
    }

    /// Exchanges `refresh_token` as the default client; the exchange must succeed.
    async fn refresh(&self, refresh_token: &str) -> Tokens {
        let reply = self.request(DEFAULT_CLIENT, refresh_token).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["token_type"], "bearer");
        Tokens {
            access: reply.field("access_token"),
            refresh: reply.field("refresh_token"),
        }
    }

    async fn ping(&self, token: &str) -> StatusCode {
        common::ping(&self.http, &self.server.url(), Some(token)).await
    }

    fn counters(&self) -> RefreshCounters {
        self.server.counters()
    }
}

/// The answer that revokes a family.
fn assert_lockout(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body,
        json!({
            "error": "invalid_grant",
            "error_description": "refresh token reused; token family revoked"
        })
    );
}

#[tokio::test]
async fn each_use_of_the_current_refresh_token_rotates_it() {
    let app = App::with(RotatingRefresh::builder().initial_refresh_token("rt-0-test")).await;
    assert_eq!(app.server.initial_refresh_token(), "rt-0-test");
    let reply = app.request(DEFAULT_CLIENT, "rt-0-test").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["expires_in"], 60);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let first = Tokens {
        access: reply.field("access_token"),
        refresh: reply.field("refresh_token"),
    };
    assert_ne!(first.refresh, "rt-0-test");
    assert_eq!(
        app.server.current_refresh_token(),
        Some(first.refresh.clone())
    );
    assert_eq!(app.ping(&first.access).await, StatusCode::OK);

    let second = app.refresh(&first.refresh).await;
    assert_ne!(second.refresh, first.refresh);
    assert_ne!(second.access, first.access);
    assert_eq!(app.ping(&first.access).await, StatusCode::OK);
    assert_eq!(app.ping(&second.access).await, StatusCode::OK);
    assert_eq!(
        app.counters(),
        RefreshCounters {
            token_requests: 2,
            refreshes: 2,
            api_calls_ok: 3,
            max_requests_in_flight: 1,
            ..RefreshCounters::default()
        }
    );
}

#[tokio::test]
async fn a_random_initial_refresh_token_is_readable_from_the_handle() {
    let app = App::spawn().await;
    let initial = app.server.initial_refresh_token();
    assert!(initial.starts_with("rt-0-"), "{initial}");
    assert_eq!(app.server.current_refresh_token(), Some(initial.clone()));
    let other = App::spawn().await.server.initial_refresh_token();
    assert_ne!(initial, other);
    app.refresh(&initial).await;
}

#[tokio::test]
async fn basic_and_post_client_auth_with_encoded_credentials_are_accepted() {
    let app = App::with(RotatingRefresh::builder().client("svc:1", "p@ss w+rd")).await;
    let initial = app.server.initial_refresh_token();
    let basic = app
        .request(ClientAuth::Basic("svc%3A1", "p%40ss+w%2Brd"), &initial)
        .await;
    assert_eq!(basic.status, StatusCode::OK, "{}", basic.body);
    let post = app
        .request(
            ClientAuth::Post("svc:1", "p@ss w+rd"),
            &basic.field("refresh_token"),
        )
        .await;
    assert_eq!(post.status, StatusCode::OK, "{}", post.body);
    assert_eq!(app.counters().refreshes, 2);
}

#[tokio::test]
async fn a_wrong_client_is_refused_without_rotating() {
    let app = App::with(RotatingRefresh::builder().client("svc:1", "p@ss w+rd")).await;
    let initial = app.server.initial_refresh_token();
    for auth in [
        ClientAuth::Basic("svc:1", "p@ss w+rd"),
        ClientAuth::Post("svc:1", "wrong"),
        ClientAuth::Anonymous,
    ] {
        let reply = app.request(auth, &initial).await;
        reply.assert_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    assert_eq!(app.server.current_refresh_token(), Some(initial));
    let counters = app.counters();
    assert_eq!((counters.invalid_client, counters.refreshes), (3, 0));
}

#[tokio::test]
async fn malformed_requests_and_unknown_refresh_tokens_are_refused() {
    let app = App::spawn().await;
    let unknown = app.request(DEFAULT_CLIENT, "rt-made-up").await;
    unknown.assert_error(StatusCode::BAD_REQUEST, "invalid_grant");
    let url = app.token_url();
    let missing = common::post_form(
        &app.http,
        &url,
        DEFAULT_CLIENT,
        &[("grant_type", "refresh_token")],
    )
    .await;
    missing.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    let initial = app.server.initial_refresh_token();
    let params = [("grant_type", "password"), ("refresh_token", &initial)];
    let wrong_grant = common::post_form(&app.http, &url, DEFAULT_CLIENT, &params).await;
    wrong_grant.assert_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    let counters = app.counters();
    assert_eq!((counters.invalid_grant, counters.refreshes), (1, 0));
    assert_eq!(counters.lockouts, 0);
    // None of it touched the family.
    app.refresh(&initial).await;
}

#[tokio::test]
async fn a_replay_within_the_grace_answers_the_current_refresh_token() {
    let app = App::with(RotatingRefresh::builder().reuse_grace(Duration::from_secs(5))).await;
    let initial = app.server.initial_refresh_token();
    let first = app.refresh(&initial).await;

    // A client that lost the answer retries with the token it had.
    let retry = app.refresh(&initial).await;
    assert_eq!(retry.refresh, first.refresh, "the family's current token");
    assert_ne!(retry.access, first.access, "a fresh access token");
    assert_eq!(app.ping(&first.access).await, StatusCode::OK);
    assert_eq!(app.ping(&retry.access).await, StatusCode::OK);

    // The current token still rotates.
    let next = app.refresh(&retry.refresh).await;
    assert_ne!(next.refresh, first.refresh);
    let counters = app.counters();
    assert_eq!((counters.refreshes, counters.replays_within_grace), (2, 1));
    assert_eq!((counters.replays_outside_grace, counters.lockouts), (0, 0));
}

#[tokio::test]
async fn a_replay_outside_the_grace_revokes_the_whole_family() {
    let app = App::spawn().await;
    let initial = app.server.initial_refresh_token();
    let first = app.refresh(&initial).await;

    assert_lockout(&app.request(DEFAULT_CLIENT, &initial).await);
    assert_eq!(app.ping(&first.access).await, StatusCode::UNAUTHORIZED);
    let current = app.request(DEFAULT_CLIENT, &first.refresh).await;
    current.assert_error(StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(app.server.current_refresh_token(), None);
    assert_eq!(
        app.counters(),
        RefreshCounters {
            token_requests: 3,
            refreshes: 1,
            replays_outside_grace: 1,
            lockouts: 1,
            invalid_grant: 1,
            unauthorized: 1,
            max_requests_in_flight: 1,
            ..RefreshCounters::default()
        }
    );
}

#[tokio::test]
async fn a_replay_once_the_grace_has_passed_revokes_the_family() {
    let grace = Duration::from_millis(300);
    let app = App::with(RotatingRefresh::builder().reuse_grace(grace)).await;
    let initial = app.server.initial_refresh_token();
    let first = app.refresh(&initial).await;

    // Waiting for time to pass is the point here: the grace is measured from the use.
    tokio::time::sleep(grace + Duration::from_millis(100)).await;
    assert_lockout(&app.request(DEFAULT_CLIENT, &initial).await);
    assert_eq!(app.ping(&first.access).await, StatusCode::UNAUTHORIZED);
    let counters = app.counters();
    assert_eq!((counters.replays_within_grace, counters.lockouts), (0, 1));
}

#[tokio::test]
async fn reseed_puts_a_new_family_in_service_after_a_lockout() {
    let app = App::spawn().await;
    let initial = app.server.initial_refresh_token();
    let first = app.refresh(&initial).await;
    assert_lockout(&app.request(DEFAULT_CLIENT, &initial).await);

    let reseeded = app.server.reseed();
    assert_ne!(reseeded, initial);
    assert_eq!(app.server.current_refresh_token(), Some(reseeded.clone()));
    let fresh = app.refresh(&reseeded).await;
    assert_eq!(app.ping(&fresh.access).await, StatusCode::OK);
    // The revoked family stays revoked.
    let old = app.request(DEFAULT_CLIENT, &first.refresh).await;
    old.assert_error(StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(app.ping(&first.access).await, StatusCode::UNAUTHORIZED);
    let counters = app.counters();
    assert_eq!((counters.refreshes, counters.lockouts), (2, 1));
}

#[tokio::test]
async fn an_access_token_is_refused_once_its_lifetime_has_passed() {
    let app = App::with(RotatingRefresh::builder().access_lifetime(Duration::from_secs(1))).await;
    let tokens = app.refresh(&app.server.initial_refresh_token()).await;
    assert_eq!(app.ping(&tokens.access).await, StatusCode::OK);
    // Waiting for time to pass is the point here: nothing signals an expiry.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(app.ping(&tokens.access).await, StatusCode::UNAUTHORIZED);
    let counters = app.counters();
    assert_eq!((counters.api_calls_ok, counters.unauthorized), (1, 1));
}

#[tokio::test]
async fn a_client_gone_during_the_latency_lost_a_rotation_the_server_made() {
    let app = App::with(RotatingRefresh::builder().latency(Duration::from_millis(500))).await;
    let initial = app.server.initial_refresh_token();
    let params = [("grant_type", "refresh_token"), ("refresh_token", &initial)];
    let refresh = DEFAULT_CLIENT
        .apply(app.http.post(app.token_url()), &params)
        .send();
    // The server rotates before its latency; the client leaves as soon as it has.
    let rotated = async {
        while app.server.current_refresh_token().as_ref() == Some(&initial) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        answered = refresh => panic!("the refresh answered before the client left: {answered:?}"),
        done = tokio::time::timeout(Duration::from_secs(10), rotated) => {
            done.expect("the server rotates");
        }
    }
    // The client never saw the new token.
    let current = app.server.current_refresh_token();
    assert!(current.is_some_and(|current| current != initial));
    // Retrying with the old token, without a grace, is a replay.
    assert_lockout(&app.request(DEFAULT_CLIENT, &initial).await);
    assert_eq!(app.counters().lockouts, 1);
}

#[tokio::test]
async fn an_outage_answers_503_without_rotating() {
    let app = App::spawn().await;
    let initial = app.server.initial_refresh_token();
    let first = app.refresh(&initial).await;
    app.server.set_outage(true);
    let reply = app.request(DEFAULT_CLIENT, &first.refresh).await;
    reply.assert_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");
    assert_eq!(app.ping(&first.access).await, StatusCode::OK);
    app.server.set_outage(false);
    app.refresh(&first.refresh).await;
    assert_eq!(app.counters().refreshes, 2);
}

#[tokio::test]
async fn sequential_refreshes_show_one_request_in_flight() {
    let app = App::with(RotatingRefresh::builder().latency(Duration::from_millis(50))).await;
    let first = app.refresh(&app.server.initial_refresh_token()).await;
    app.refresh(&first.refresh).await;
    assert_eq!(app.counters().max_requests_in_flight, 1);
}

#[tokio::test]
async fn overlapping_requests_show_two_in_flight() {
    let app = App::with(RotatingRefresh::builder().latency(Duration::from_millis(300))).await;
    let initial = app.server.initial_refresh_token();
    let (rotated, unknown) = tokio::join!(
        app.request(DEFAULT_CLIENT, &initial),
        app.request(DEFAULT_CLIENT, "rt-made-up"),
    );
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    unknown.assert_error(StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(app.counters().max_requests_in_flight, 2);
}
