//! The token API's contract: shapes, keys and scopes, invalidation, issuer failures.

use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{OTHER, Options, PROVIDER, spawn_app};

#[tokio::test]
async fn token_answer_has_the_spec_shape_and_plain_text_variant() {
    let app = spawn_app(Options::default()).await;
    let (status, headers, body) = app.get_token(PROVIDER, Some(&app.all_key)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["cache-control"], "no-store");
    let token = body["access_token"].as_str().expect("access_token");
    assert_eq!(body["provider"], PROVIDER);
    assert_eq!(body["generation"], 1);
    assert_eq!(body["header_name"], "X-Authorization");
    assert_eq!(body["header_value"], token, "empty prefix");
    assert_eq!(body["token_type"], "raw");
    let expires_at = humantime::parse_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    let refresh_at = humantime::parse_rfc3339(body["refresh_at"].as_str().unwrap()).unwrap();
    assert!(refresh_at < expires_at && expires_at > SystemTime::now());
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((590..=600).contains(&expires_in), "{expires_in}");

    assert_eq!(app.plain_token(&app.url).await, token);
    assert_eq!(
        app.emulator.counters().logins,
        1,
        "both answers came from one login"
    );
}

#[tokio::test]
async fn keys_are_checked_and_scoped() {
    let app = spawn_app(Options::default()).await;
    let error_of = |body: &serde_json::Value| body["error"].as_str().unwrap_or_default().to_owned();

    let (status, headers, body) = app.get_token(PROVIDER, None).await;
    assert_eq!(
        (status, error_of(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(body["message"].as_str().unwrap().contains("Bearer"));

    let (status, _, body) = app
        .get_token(PROVIDER, Some("tbk_not-a-configured-key"))
        .await;
    assert_eq!(
        (status, error_of(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );

    let (status, _, body) = app.get_token(OTHER, Some(&app.scoped_key)).await;
    assert_eq!(
        (status, error_of(&body).as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    // A provider that does not exist looks the same to a scoped key...
    let (status, _, body) = app
        .get_token("no-such-provider", Some(&app.scoped_key))
        .await;
    assert_eq!(
        (status, error_of(&body).as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    // ...and is reported as unknown only to an all-providers key.
    let (status, _, body) = app.get_token("no-such-provider", Some(&app.all_key)).await;
    assert_eq!(
        (status, error_of(&body).as_str()),
        (StatusCode::NOT_FOUND, "unknown_provider")
    );

    let (status, _, _) = app.get_token(PROVIDER, Some(&app.scoped_key)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.emulator.counters().login_attempts,
        1,
        "refused requests never reach the issuer"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_invalidations_of_one_generation_cause_one_login() {
    let app = spawn_app(Options {
        login_latency: Duration::from_millis(100),
        ..Options::default()
    })
    .await;
    let (_, _, first) = app.get_token(PROVIDER, Some(&app.all_key)).await;
    assert_eq!(first["generation"], 1);
    let answers = join_all((0..200).map(|_| app.invalidate(json!({ "generation": 1 })))).await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body["generation"], 2);
    }
    let counters = app.emulator.counters();
    assert_eq!(
        counters.logins, 2,
        "the first login and exactly one reissue"
    );
    assert_eq!(counters.max_issuances_in_flight, 1);

    // Reporting the superseded token by value changes nothing.
    let (status, body) = app
        .invalidate(json!({ "access_token": first["access_token"] }))
        .await;
    assert_eq!(
        (status, body["generation"].as_u64()),
        (StatusCode::OK, Some(2))
    );
    // Reporting the current one by value replaces it.
    let (_, body) = app
        .invalidate(json!({ "access_token": body["access_token"] }))
        .await;
    assert_eq!(body["generation"], 3);
    assert_eq!(app.emulator.counters().logins, 3);
}

#[tokio::test]
async fn the_token_path_answers_alike_however_it_is_written() {
    let app = spawn_app(Options::default()).await;
    let (status, _, direct) = app.get_token(PROVIDER, Some(&app.all_key)).await;
    assert_eq!(status, StatusCode::OK);
    // A percent-encoded name takes the router's way (it decodes), not the server's own
    // shortcut: the same provider, the same token.
    let encoded = format!("%{:02X}{}", PROVIDER.as_bytes()[0], &PROVIDER[1..]);
    let (status, _, decoded) = app.get_token(&encoded, Some(&app.all_key)).await;
    assert_eq!(status, StatusCode::OK, "{decoded}");
    assert_eq!(decoded["access_token"], direct["access_token"]);
    assert_eq!(decoded["provider"], PROVIDER);

    let post = app
        .http
        .post(format!("{}/v1/tokens/{PROVIDER}", app.url))
        .bearer_auth(&app.all_key)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    for path in ["/v1/tokens/", &format!("/v1/tokens/{PROVIDER}/extra")] {
        let response = app
            .http
            .get(format!("{}{path}", app.url))
            .bearer_auth(&app.all_key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "not_found", "{path}");
    }
    assert_eq!(app.emulator.counters().logins, 1);
}

#[tokio::test]
async fn bad_invalidation_bodies_get_the_json_error_shape() {
    let app = spawn_app(Options::default()).await;
    for body in [
        json!({}),
        json!({ "generation": 1, "access_token": "x" }),
        json!({ "gen": 1 }),
        json!("1"),
        json!({ "generation": "a-token-pasted-in-the-wrong-field" }),
    ] {
        let (status, answer) = app.invalidate(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"], "bad_request");
        let message = answer["message"].as_str().unwrap();
        assert!(!message.is_empty());
        assert!(
            !message.contains("pasted"),
            "the body is never echoed: {message}"
        );
    }
    // Over axum's limit for a body read whole (2 MiB): the same shape, and 413. (On a client
    // of its own: the broker closes that connection, with the rest of the body unread, and a
    // pooled client could reuse it for the next request before it sees it closed.)
    let too_large = reqwest::Client::new()
        .post(format!("{}/v1/tokens/{PROVIDER}/invalidate", app.url))
        .bearer_auth(&app.all_key)
        .body(vec![b' '; 3 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.headers()["x-tokenbroker-error"], "body_too_large");
    let answer: serde_json::Value = too_large.json().await.unwrap();
    assert_eq!(answer["error"], "body_too_large");
    let wrong_method = app
        .http
        .get(format!("{}/v1/tokens/{PROVIDER}/invalidate", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    let answer: serde_json::Value = wrong_method.json().await.unwrap();
    assert_eq!(answer["error"], "method_not_allowed");
    assert_eq!(app.emulator.counters().login_attempts, 0);
}

#[tokio::test]
async fn issuer_down_serves_the_cached_token_until_expiry_then_503_with_backoff() {
    let app = spawn_app(Options {
        lifetime: Duration::from_secs(4),
        provider_extra: "single_session = false\nrefresh_before = \"2s\"".into(),
        ..Options::default()
    })
    .await;
    let (_, _, first) = app.get_token(PROVIDER, Some(&app.all_key)).await;
    let expires_at = humantime::parse_rfc3339(first["expires_at"].as_str().unwrap()).unwrap();
    app.emulator.set_outage(true);

    // Poll (a pace, not a synchronisation) until the broker stops serving: every answer
    // before then must be the cached token, and the refusal must come only near expiry.
    let give_up = SystemTime::now() + Duration::from_secs(15);
    let refusal = loop {
        assert!(
            SystemTime::now() < give_up,
            "the broker never stopped serving the expired token"
        );
        let (status, headers, body) = app.get_token(PROVIDER, Some(&app.all_key)).await;
        if status == StatusCode::OK {
            assert_eq!(body["generation"], 1);
            assert!(SystemTime::now() < expires_at, "served after expiry");
        } else {
            break (status, headers, body, SystemTime::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, headers, body, refused_at) = refusal;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "issuer_unavailable");
    assert!(body["message"].as_str().unwrap().contains(PROVIDER));
    assert!(headers.contains_key("retry-after"));
    assert!(
        refused_at + Duration::from_secs(2) >= expires_at,
        "refused too early"
    );

    // Keep asking for a while: the issuer sees attempts spaced by the backoff, not a loop.
    for _ in 0..40 {
        let _ = app.get_token(PROVIDER, Some(&app.all_key)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let times = app.emulator.login_attempt_times();
    assert!(times.len() >= 3, "retries happened: {}", times.len());
    for pair in times[1..].windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(240),
            "attempts {gap:?} apart; backoff_min is 500ms"
        );
    }

    app.emulator.set_outage(false);
    let give_up = SystemTime::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = app.get_token(PROVIDER, Some(&app.all_key)).await;
        if status == StatusCode::OK {
            assert!(body["generation"].as_u64().unwrap() >= 2);
            break;
        }
        assert!(SystemTime::now() < give_up, "the broker did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn wrong_credentials_are_a_502_naming_the_provider_without_secrets() {
    let app = spawn_app(Options {
        other_api_key: "wrong-k3y-value",
        ..Options::default()
    })
    .await;
    let response = app
        .http
        .get(format!("{}/v1/tokens/{OTHER}", app.url))
        .bearer_auth(&app.all_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let text = response.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"], "issuer_error");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("other: the issuer rejected the credentials (HTTP 401)"),
        "{body}"
    );
    assert!(!text.contains("wrong-k3y-value"));
    assert_eq!(app.emulator.counters().bad_credentials, 1);
}

#[tokio::test]
async fn metrics_count_issuances_and_requests_and_hold_no_token() {
    let app = spawn_app(Options::default()).await;
    let (_, _, body) = app.get_token(PROVIDER, Some(&app.all_key)).await;
    let _ = app.get_token(OTHER, Some(&app.scoped_key)).await;
    let _ = app.invalidate(json!({ "generation": 1 })).await;
    let _ = app.invalidate(json!({ "generation": 1 })).await;
    let metrics = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tokenbroker_issuances_total{provider=\"controlroom\",kind=\"login\"} 2",
        "tokenbroker_token_requests_total{provider=\"controlroom\",outcome=\"served\"} 1",
        "tokenbroker_invalidations_total{provider=\"controlroom\",outcome=\"honoured\"} 1",
        "tokenbroker_invalidations_total{provider=\"controlroom\",outcome=\"ignored\"} 1",
        "tokenbroker_issuer_latency_seconds_count{provider=\"controlroom\"} 2",
        "tokenbroker_token_age_seconds{provider=\"controlroom\"}",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    assert!(!metrics.contains(body["access_token"].as_str().unwrap()));
    assert_eq!(app.status_of("/healthz").await, StatusCode::OK);
    assert_eq!(app.status_of("/readyz").await, StatusCode::OK);
    assert_eq!(app.status_of("/v1/nowhere").await, StatusCode::NOT_FOUND);
    // The proxy answers for every path no route matches: only its own need a key.
    assert_eq!(app.status_of("/v1/proxy/").await, StatusCode::NOT_FOUND);
    assert_eq!(app.status_of("/v1/proxyx/a").await, StatusCode::NOT_FOUND);
    assert_eq!(
        app.status_of("/v1/proxy/controlroom/a").await,
        StatusCode::UNAUTHORIZED
    );
}
