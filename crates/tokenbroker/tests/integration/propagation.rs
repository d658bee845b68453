//! A new token committed by one broker of a cluster reaches the others' memory by
//! PostgreSQL's LISTEN/NOTIFY, so an invalidation on one broker does not leave the others
//! serving the superseded token.
//!
//! The brokers here re-read the store only once an hour (`store.sync_interval`), so that
//! only a notification can explain a prompt change; each check polls the other broker with
//! a bounded deadline.

use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::TestSchema;
use crate::helpers::{Options, TestApp, spawn_app, start_broker};

/// Far below the hour of the periodic re-read, far above a notification's milliseconds.
const DEADLINE: Duration = Duration::from_secs(5);

/// The app's config moved to `schema`, with the periodic re-read an hour apart.
fn cluster_config(app: &TestApp, schema: &TestSchema) -> String {
    let config = schema.holds(&app.config_text, app.store.path());
    assert!(config.contains("[store]\n"), "the config has a store table");
    config.replacen("[store]\n", "[store]\nsync_interval = \"1h\"\n", 1)
}

/// The token the broker at `base` serves now, as its JSON body.
async fn token_at(app: &TestApp, base: &str) -> serde_json::Value {
    let response = app
        .http
        .get(format!("{base}/v1/tokens/{}", crate::helpers::PROVIDER))
        .bearer_auth(&app.all_key)
        .send()
        .await
        .expect("the broker answers");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response.json().await.expect("a JSON body")
}

/// Polls the broker at `base` until it serves generation `generation`; returns that token
/// and how long it took. Fails after [`DEADLINE`].
async fn served_generation(
    app: &TestApp,
    base: &str,
    generation: u64,
) -> (serde_json::Value, Duration) {
    let started = Instant::now();
    loop {
        let token = token_at(app, base).await;
        if token["generation"] == generation {
            return (token, started.elapsed());
        }
        assert!(
            started.elapsed() < DEADLINE,
            "still serving generation {} after {DEADLINE:?}, expected {generation}",
            token["generation"]
        );
        // A poll interval, not a synchronisation: the deadline decides.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_one_broker_reaches_the_other_by_notification() {
    let Some(schema) = TestSchema::new("tb_propagation").await else {
        return;
    };
    let app = spawn_app(Options::default()).await;
    let config = cluster_config(&app, &schema);
    let a = start_broker(&config, &app.master_key).await;
    let b = start_broker(&config, &app.master_key).await;

    let first = token_at(&app, &a.url).await;
    assert_eq!(first["generation"], 1);
    let (same, _) = served_generation(&app, &b.url, 1).await;
    assert_eq!(same["access_token"], first["access_token"], "one token");
    assert_eq!(app.emulator.counters().logins, 1);

    let rotated = app
        .http
        .post(format!(
            "{}/v1/tokens/{}/invalidate",
            a.url,
            crate::helpers::PROVIDER
        ))
        .bearer_auth(&app.all_key)
        .json(&serde_json::json!({ "generation": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), reqwest::StatusCode::OK);
    let rotated: serde_json::Value = rotated.json().await.unwrap();
    assert_eq!(rotated["generation"], 2);

    let (seen, took) = served_generation(&app, &b.url, 2).await;
    eprintln!("broker B served the rotated token {took:?} after broker A answered");
    assert_eq!(seen["access_token"], rotated["access_token"]);
    assert_eq!(
        app.emulator.counters().logins,
        2,
        "broker B took A's token instead of logging in"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_logged_out_by_one_brokers_shutdown_is_not_served_by_the_others() {
    let Some(schema) = TestSchema::new("tb_propagation").await else {
        return;
    };
    let app = spawn_app(Options {
        logout_on_shutdown: true,
        ..Options::default()
    })
    .await;
    let config = cluster_config(&app, &schema);
    let a = start_broker(&config, &app.master_key).await;
    let b = start_broker(&config, &app.master_key).await;
    let first = token_at(&app, &a.url).await;
    let (same, _) = served_generation(&app, &b.url, 1).await;
    assert_eq!(same["access_token"], first["access_token"]);

    // A's shutdown ends the session of generation 1 at the issuer and retires it.
    a.stop().await.unwrap();
    let (next, took) = served_generation(&app, &b.url, 2).await;
    eprintln!("broker B replaced the logged-out token {took:?} after broker A stopped");
    assert_ne!(next["access_token"], first["access_token"]);
    let seen = app.emulator.counters();
    assert_eq!(seen.logins, 2, "{seen:?}");
    b.stop().await.unwrap();
}
