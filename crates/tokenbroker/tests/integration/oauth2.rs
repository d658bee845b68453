//! OAuth2 identities end to end (SPEC guarantees 5 and 6): capped token pools, rotating
//! refresh tokens through crashes, `Retry-After`, issuance budgets, RFC 6749 errors.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::json;
use tokenbroker_core::access::{hex, key_sha256, new_client_key};
use tokenbroker_core::seal::new_master_key;
use tokenbroker_emulator::{CappedPool, RotatingRefresh, RunningRotatingRefresh};

use crate::cluster::TestSchema;
use crate::helpers::start_broker;
use crate::process::{ServeProcess, output, tokenbroker};

/// A broker config around some provider tables, with one all-providers admin client.
struct Setup {
    config_text: String,
    master_key: String,
    key: String,
    store: tempfile::TempDir,
    http: reqwest::Client,
}

impl Setup {
    fn new(providers: &str) -> Self {
        let store = tempfile::tempdir().unwrap();
        let key = new_client_key();
        let config_text = format!(
            "[store]\npath = \"{}/tokenbroker.db\"\n\n{providers}\n\n[clients.all]\nkey_sha256 = \"{}\"\nproviders = [\"*\"]\nadmin = true\n",
            store.path().display(),
            hex(&key_sha256(&key)),
        );
        Self {
            config_text,
            master_key: new_master_key(),
            key,
            store,
            http: reqwest::Client::new(),
        }
    }

    /// `GET /v1/tokens/{provider}`: the status and the JSON body (`Null` if none).
    async fn token(&self, base: &str, provider: &str) -> (StatusCode, serde_json::Value) {
        match self
            .http
            .get(format!("{base}/v1/tokens/{provider}"))
            .bearer_auth(&self.key)
            .send()
            .await
        {
            Ok(r) => (r.status(), r.json().await.unwrap_or_default()),
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, serde_json::Value::Null),
        }
    }

    /// The body of `base`'s `/readyz`.
    async fn readyz(&self, base: &str) -> serde_json::Value {
        let response = self.http.get(format!("{base}/readyz")).send().await;
        response.unwrap().json().await.unwrap()
    }
}

/// A consumer of an OAuth2-protected API: token, call, and on a 401 report and retry once.
/// Returns (calls that succeeded, 401s that a retry did not cure).
async fn consume(
    setup: &Setup,
    base: &str,
    provider: &str,
    api: &str,
    until: Instant,
) -> (u64, u64) {
    let (mut ok, mut unrecovered) = (0, 0);
    while Instant::now() < until {
        let (status, body) = setup.token(base, provider).await;
        if status != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let call = |token: &str| {
            setup
                .http
                .get(format!("{api}/api/ping"))
                .bearer_auth(token)
                .send()
        };
        match call(body["access_token"].as_str().unwrap()).await {
            Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                let fresh: serde_json::Value = match setup
                    .http
                    .post(format!("{base}/v1/tokens/{provider}/invalidate"))
                    .bearer_auth(&setup.key)
                    .json(&json!({ "generation": body["generation"] }))
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => continue,
                };
                if let Some(token) = fresh["access_token"].as_str()
                    && let Ok(r) = call(token).await
                {
                    if r.status() == StatusCode::UNAUTHORIZED {
                        unrecovered += 1;
                    } else {
                        ok += 1;
                    }
                }
            }
            Ok(r) if r.status().is_success() => ok += 1,
            _ => {}
        }
    }
    (ok, unrecovered)
}

fn pool_provider(url: &str, extra: &str) -> String {
    format!(
        "[providers.reltio]\ntype = \"oauth2_client_credentials\"\ntoken_url = \"{url}/oauth/token\"\n\
         client_id = \"svc\"\nclient_secret = \"secret\"\nmin_validity = \"200ms\"\nbackoff_min = \"200ms\"\n\
         backoff_max = \"2s\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_capped_at_3_serves_100_consumers_without_a_429_across_a_restart() {
    let pool = CappedPool::builder()
        .max_active(3)
        .token_lifetime(Duration::from_secs(4))
        .spawn()
        .await
        .unwrap();
    let setup = Setup::new(&pool_provider(&pool.url(), "max_active_tokens = 3"));
    let first = start_broker(&setup.config_text, &setup.master_key).await;
    let half = Duration::from_millis(7500);
    let until = Instant::now() + half;
    let api = pool.url();
    let results =
        join_all((0..100).map(|_| consume(&setup, &first.url, "reltio", &api, until))).await;
    first.stop().await.unwrap();
    let second = start_broker(&setup.config_text, &setup.master_key).await;
    let until = Instant::now() + half;
    let more =
        join_all((0..100).map(|_| consume(&setup, &second.url, "reltio", &api, until))).await;
    second.stop().await.unwrap();

    let seen = pool.counters();
    let ok: u64 = results.iter().chain(&more).map(|r| r.0).sum();
    let unrecovered: u64 = results.iter().chain(&more).map(|r| r.1).sum();
    assert_eq!(
        seen.rejected_429, 0,
        "the issuer never had to refuse: {seen:?}"
    );
    assert!(seen.max_active_seen <= 3, "{seen:?}");
    assert!(seen.issued >= 3, "tokens were rotated: {seen:?}");
    assert_eq!(unrecovered, 0);
    assert!(ok > 1000, "the consumers worked: {ok}");
}

fn refresh_provider(url: &str, grace: &str, initial: &str) -> String {
    format!(
        "[providers.crm]\ntype = \"oauth2_refresh_token\"\ntoken_url = \"{url}/oauth2/token\"\n\
         client_id = \"svc\"\nclient_secret = \"secret\"\nrefresh_token = \"{initial}\"\n\
         refresh_token_grace = \"{grace}\"\nsingle_session = false\nrefresh_before = \"500ms\"\n\
         min_validity = \"200ms\"\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\ntimeout = \"5s\"\n"
    )
}

/// An issuer rotating refresh tokens (2 s access tokens, 5 s reuse grace, 300 ms per
/// answer) and a broker set up with its first refresh token and a 5 s grace.
async fn rotating_with_grace() -> (RunningRotatingRefresh, Setup) {
    let issuer = RotatingRefresh::builder()
        .access_lifetime(Duration::from_secs(2))
        .reuse_grace(Duration::from_secs(5))
        .latency(Duration::from_millis(300))
        .spawn()
        .await
        .unwrap();
    let setup = Setup::new(&refresh_provider(
        &issuer.url(),
        "5s",
        &issuer.initial_refresh_token(),
    ));
    (issuer, setup)
}

#[tokio::test]
async fn a_provider_moved_to_another_token_endpoint_never_sends_it_the_old_refresh_token() {
    let first = RotatingRefresh::builder().spawn().await.unwrap();
    let setup = Setup::new(&refresh_provider(
        &first.url(),
        "0s",
        &first.initial_refresh_token(),
    ));
    let broker = start_broker(&setup.config_text, &setup.master_key).await;
    let (status, before) = setup.token(&broker.url, "crm").await;
    assert_eq!(status, StatusCode::OK, "{before}");
    assert_eq!(
        first.counters().refreshes,
        1,
        "a rotated refresh token is stored"
    );
    broker.stop().await.unwrap();

    // The operator points the provider at another issuer, with that issuer's refresh token.
    let second = RotatingRefresh::builder().spawn().await.unwrap();
    let moved = setup
        .config_text
        .replace(&first.url(), &second.url())
        .replace(
            &first.initial_refresh_token(),
            &second.initial_refresh_token(),
        );
    let broker = start_broker(&moved, &setup.master_key).await;
    let (status, after) = setup.token(&broker.url, "crm").await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_ne!(
        after["access_token"], before["access_token"],
        "not the old issuer's token"
    );
    let seen = second.counters();
    assert_eq!(
        (seen.refreshes, seen.invalid_grant),
        (1, 0),
        "the configured refresh token, not the old issuer's: {seen:?}"
    );
    broker.stop().await.unwrap();

    // And back: the first issuer's configured refresh token was spent long ago. Sending it
    // again would be a replay; overwriting the second issuer's stored one would lose it.
    let broker = start_broker(&setup.config_text, &setup.master_key).await;
    let (status, back) = setup.token(&broker.url, "crm").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{back}");
    assert_eq!(back["error"], "needs_credentials", "{back}");
    let seen = first.counters();
    assert_eq!(
        (seen.token_requests, seen.replays_outside_grace),
        (1, 0),
        "the spent token was not sent again: {seen:?}"
    );
    broker.stop().await.unwrap();
    let broker = start_broker(&moved, &setup.master_key).await;
    let (status, forward) = setup.token(&broker.url, "crm").await;
    assert_eq!(status, StatusCode::OK, "{forward}");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_refresh_tokens_survive_20_sigkills_without_a_replay() {
    let (issuer, setup) = rotating_with_grace().await;
    let api = issuer.url();
    for _ in 0..20 {
        let mut serve = ServeProcess::start(&setup.config_text, &setup.master_key);
        serve.ready(&setup.http).await;
        let until = Instant::now() + Duration::from_millis(rand::rng().random_range(100..1200));
        join_all((0..30).map(|_| consume(&setup, &serve.url, "crm", &api, until))).await;
        serve.kill();
    }
    let mut serve = ServeProcess::start(&setup.config_text, &setup.master_key);
    serve.ready(&setup.http).await;
    // Past the access token's life, a token is served only if refreshing still works.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = setup.token(&serve.url, "crm").await;
    assert_eq!(status, StatusCode::OK, "in service at the end: {body}");
    let ready = setup.readyz(&serve.url).await;
    assert_eq!(ready["needs_credentials"], json!([]), "{ready}");
    let seen = issuer.counters();
    assert_eq!(seen.replays_outside_grace, 0, "{seen:?}");
    assert_eq!(seen.lockouts, 0, "{seen:?}");
    assert_eq!(
        seen.max_requests_in_flight, 1,
        "never two refreshes at once: {seen:?}"
    );
    // With 2 s access tokens, about one refresh per second and a half of the ~13 s the
    // brokers ran (fewer on a loaded machine, where starting takes longer): the kills had
    // refreshes to interrupt. (That refreshing still works is the token check above.)
    assert!(seen.refreshes >= 5, "{seen:?}");
    let (code, logs) = serve.terminate().await;
    assert!(code.success(), "{logs}");
}

#[tokio::test]
async fn a_rotated_refresh_token_beside_an_unusable_access_token_is_kept() {
    let issuer = RotatingRefresh::builder().spawn().await.unwrap();
    let setup = Setup::new(&refresh_provider(
        &issuer.url(),
        "0s",
        &issuer.initial_refresh_token(),
    ));
    // The issuer rotates the refresh token, and answers the new one beside an empty
    // access token. The one the broker sent is spent either way.
    issuer.set_empty_access_tokens(true);
    let broker = start_broker(&setup.config_text, &setup.master_key).await;
    let (status, body) = setup.token(&broker.url, "crm").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("issuer_error")),
        "{body}"
    );
    assert_eq!(issuer.counters().refreshes, 1);

    // Mended: the next attempt sends the rotated refresh token, not the spent one (which,
    // with no reuse grace, would have to wait for a reseed).
    issuer.set_empty_access_tokens(false);
    let started = Instant::now();
    loop {
        let (status, body) = setup.token(&broker.url, "crm").await;
        if status == StatusCode::OK {
            break;
        }
        assert_ne!(body["error"], "needs_credentials", "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no token: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = issuer.counters();
    assert_eq!(
        (
            seen.refreshes,
            seen.replays_within_grace,
            seen.replays_outside_grace,
            seen.invalid_grant
        ),
        (2, 0, 0, 0),
        "{seen:?}"
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_refresh_without_grace_replays_nothing_and_waits_for_reseed() {
    let issuer = RotatingRefresh::builder()
        .access_lifetime(Duration::from_secs(60))
        .latency(Duration::from_secs(3))
        .spawn()
        .await
        .unwrap();
    let setup = Setup::new(&refresh_provider(
        &issuer.url(),
        "0s",
        &issuer.initial_refresh_token(),
    ));
    let mut serve = ServeProcess::start(&setup.config_text, &setup.master_key);
    serve.ready(&setup.http).await;
    let asking = tokio::spawn({
        let (http, url, key) = (setup.http.clone(), serve.url.clone(), setup.key.clone());
        async move {
            http.get(format!("{url}/v1/tokens/crm"))
                .bearer_auth(key)
                .send()
                .await
        }
    });
    // The issuer rotates, then holds its answer: kill the broker in that window.
    let started = Instant::now();
    while issuer.counters().refreshes == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no refresh arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    serve.kill();
    let _ = asking.await;

    let mut serve = ServeProcess::start(&setup.config_text, &setup.master_key);
    serve.ready(&setup.http).await;
    // The dead broker's issuance lease blocks issuing until it expires (at most 3 s);
    // until then requests time out, and none is ever served a token.
    let started = Instant::now();
    loop {
        let (status, body) = setup.token(&serve.url, "crm").await;
        assert_ne!(status, StatusCode::OK, "{body}");
        if body["error"] == "needs_credentials" {
            break;
        }
        assert_eq!(body["error"], "issuer_timeout", "{body}");
        assert!(started.elapsed() < Duration::from_secs(20), "never settled");
    }
    for _ in 0..3 {
        let (status, body) = setup.token(&serve.url, "crm").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "needs_credentials");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("tokenbroker reseed crm"),
            "{body}"
        );
    }
    let seen = issuer.counters();
    assert_eq!(
        (
            seen.refreshes,
            seen.replays_within_grace,
            seen.replays_outside_grace,
            seen.lockouts
        ),
        (1, 0, 0, 0),
        "nothing replayed: {seen:?}"
    );
    let ready = setup.readyz(&serve.url).await;
    assert_eq!(ready["needs_credentials"], json!(["crm"]));

    // The operator reseeds with the refresh token the issuer holds now; first with the
    // wrong master key, which is refused before anything is written.
    let config = setup.store.path().join("serve.toml");
    std::fs::write(&config, &setup.config_text).unwrap();
    let reseed = |master_key: &str| {
        let mut reseed = tokenbroker();
        reseed
            .args(["reseed", "crm", "--config"])
            .arg(&config)
            .env("TOKENBROKER_MASTER_KEY", master_key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = reseed.spawn().unwrap();
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            issuer.current_refresh_token().unwrap().as_bytes(),
        )
        .unwrap();
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
    };
    let refused = reseed(&tokenbroker_core::seal::new_master_key())
        .await
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("another master key"), "{said}");
    let (status, body) = setup.token(&serve.url, "crm").await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("needs_credentials"))
    );
    let reseeded = reseed(&setup.master_key).await.unwrap();
    assert!(reseeded.status.success());
    // The same token once more is refused: once stored, it counts as sent.
    let again = reseed(&setup.master_key).await.unwrap();
    assert_eq!(again.status.code(), Some(2));
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("stored before"), "{said}");
    let started = Instant::now();
    loop {
        let (status, _) = setup.token(&serve.url, "crm").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not back in service after reseed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = issuer.counters();
    assert_eq!(
        (seen.replays_outside_grace, seen.lockouts),
        (0, 0),
        "{seen:?}"
    );
    let (_, logs) = serve.terminate().await;
    assert!(
        !logs.contains(&issuer.current_refresh_token().unwrap()),
        "no refresh token in the logs"
    );
    let mut audit = tokenbroker();
    audit.args(["audit", "crm", "--config"]).arg(&config);
    let trail = String::from_utf8_lossy(&output(audit).await.stdout).into_owned();
    assert!(trail.contains("reseeded"), "{trail}");
}

#[tokio::test]
async fn a_429_with_retry_after_2_silences_the_issuer_for_2_seconds() {
    let pool = CappedPool::builder().max_active(10).spawn().await.unwrap();
    let setup = Setup::new(&pool_provider(&pool.url(), ""));
    let broker = start_broker(&setup.config_text, &setup.master_key).await;
    pool.set_rate_limit(Some(Duration::from_secs(2)));
    let (status, body) = setup.token(&broker.url, "reltio").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let first = pool.token_request_times()[0];
    // Consumers keep asking until the broker asks the issuer again (bounded): when is what
    // is checked below.
    let until = Instant::now() + Duration::from_secs(15);
    while pool.token_request_times().len() < 2 && Instant::now() < until {
        let _ = setup.token(&broker.url, "reltio").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let times = pool.token_request_times();
    assert!(
        times.len() >= 2,
        "the broker asked again after Retry-After: {}",
        times.len()
    );
    assert!(
        times[1..]
            .iter()
            .all(|t| *t - first >= Duration::from_secs(2)),
        "asked again within Retry-After: {:?}",
        times.iter().map(|t| *t - first).collect::<Vec<_>>()
    );
    pool.set_rate_limit(None);
    let started = Instant::now();
    while setup.token(&broker.url, "reltio").await.0 != StatusCode::OK {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_silences_every_broker_sharing_the_store() {
    let pool = CappedPool::builder().max_active(10).spawn().await.unwrap();
    let setup = Setup::new(&pool_provider(&pool.url(), ""));
    let first = start_broker(&setup.config_text, &setup.master_key).await;
    let second = start_broker(&setup.config_text, &setup.master_key).await;
    pool.set_rate_limit(Some(Duration::from_secs(30)));
    for broker in [&first, &second] {
        let (status, body) = setup.token(&broker.url, "reltio").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    assert_eq!(
        pool.token_request_times().len(),
        1,
        "the second broker heeded the first one's Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_3_per_10s_holds_under_50_consumers_and_invalidations() {
    let pool = CappedPool::builder()
        .max_active(100)
        .token_lifetime(Duration::from_secs(60))
        .spawn()
        .await
        .unwrap();
    let setup = Setup::new(&pool_provider(&pool.url(), "max_issuances = \"3/10s\""));
    let broker = start_broker(&setup.config_text, &setup.master_key).await;
    let until = Instant::now() + Duration::from_secs(12);
    join_all((0..50).map(|_| async {
        while Instant::now() < until {
            let (status, body) = setup.token(&broker.url, "reltio").await;
            if status == StatusCode::OK {
                let _ = setup
                    .http
                    .post(format!("{}/v1/tokens/reltio/invalidate", broker.url))
                    .bearer_auth(&setup.key)
                    .json(&json!({ "generation": body["generation"] }))
                    .send()
                    .await;
            } else {
                assert_eq!(body["error"], "issuance_budget_exhausted", "{body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }))
    .await;
    let times = pool.token_request_times();
    assert!(
        times.len() >= 4,
        "the budget was reached and renewed: {}",
        times.len()
    );
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .filter(|u| **u - *t < Duration::from_secs(10))
            .count();
        assert!(in_window <= 3, "{in_window} requests within 10s");
    }
}

#[tokio::test]
async fn rfc_6749_errors_reach_the_consumer_distinct_and_readable() {
    let pool = CappedPool::builder().spawn().await.unwrap();
    let setup = Setup::new(&pool_provider(&pool.url(), ""));
    let broker = start_broker(&setup.config_text, &setup.master_key).await;
    for (status, code) in [
        (401, "invalid_client"),
        (400, "invalid_scope"),
        (400, "unauthorized_client"),
    ] {
        pool.force_error(Some((status, code, "explained by the issuer")));
        // Each error starts a backoff; wait it out so this request reaches the issuer.
        let started = Instant::now();
        let body = loop {
            let before = pool.counters().token_requests;
            let (_, body) = setup.token(&broker.url, "reltio").await;
            if pool.counters().token_requests > before {
                break body;
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(body["error"], "issuer_error", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(code) && message.contains("explained by the issuer"),
            "{message}"
        );
        assert!(message.starts_with("reltio: "), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_capped_at_3_stays_capped_across_3_brokers_on_postgresql() {
    let Some(schema) = TestSchema::new("tb_pool").await else {
        return;
    };
    let pool = CappedPool::builder()
        .max_active(3)
        .token_lifetime(Duration::from_secs(4))
        .spawn()
        .await
        .unwrap();
    let setup = Setup::new(&pool_provider(&pool.url(), "max_active_tokens = 3"));
    let config = schema.holds(&setup.config_text, setup.store.path());
    let mut brokers = Vec::new();
    for _ in 0..3 {
        brokers.push(start_broker(&config, &setup.master_key).await);
    }
    let api = pool.url();
    let until = Instant::now() + Duration::from_secs(12);
    let results =
        join_all((0..60).map(|i| consume(&setup, &brokers[i % 3].url, "reltio", &api, until)))
            .await;
    for broker in brokers {
        broker.stop().await.unwrap();
    }
    let seen = pool.counters();
    assert_eq!(seen.rejected_429, 0, "{seen:?}");
    assert!(seen.max_active_seen <= 3, "{seen:?}");
    assert!(seen.issued >= 3, "tokens were rotated: {seen:?}");
    assert_eq!(
        results.iter().map(|r| r.1).sum::<u64>(),
        0,
        "no unrecovered 401"
    );
    assert!(results.iter().map(|r| r.0).sum::<u64>() > 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_refresh_token_through_3_brokers_with_sigkills_is_never_replayed() {
    let Some(schema) = TestSchema::new("tb_refresh").await else {
        return;
    };
    let (issuer, setup) = rotating_with_grace().await;
    let config = schema.holds(&setup.config_text, setup.store.path());
    let mut brokers = ServeProcess::start_ready(3, &config, &setup.master_key, &setup.http).await;
    let api = issuer.url();
    for round in 0..10 {
        let urls: Vec<String> = brokers.iter().map(|b| b.url.clone()).collect();
        let until = Instant::now() + Duration::from_millis(rand::rng().random_range(300..1500));
        join_all((0..30).map(|i| consume(&setup, &urls[i % 3], "crm", &api, until))).await;
        // Kill one broker (by turns), possibly the one holding the lease, and replace it.
        let victim = brokers.remove(round % 3);
        victim.kill();
        let mut fresh = ServeProcess::start(&config, &setup.master_key);
        fresh.ready(&setup.http).await;
        brokers.push(fresh);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for broker in &brokers {
        let (status, body) = setup.token(&broker.url, "crm").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "every broker in service at the end: {body}"
        );
    }
    let seen = issuer.counters();
    assert_eq!(
        (seen.replays_outside_grace, seen.lockouts),
        (0, 0),
        "{seen:?}"
    );
    assert_eq!(
        seen.max_requests_in_flight, 1,
        "one refresh at a time across brokers: {seen:?}"
    );
    assert!(seen.refreshes >= 5, "{seen:?}");
}
