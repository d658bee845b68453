//! The durable store end to end (SPEC guarantees 6's storage half, 7 and 9): restarts,
//! crashes, secrets at rest, master keys, and the operators' view.

use std::time::Duration;

use futures_util::future::join_all;
use rand::Rng;
use reqwest::StatusCode;
use serde_json::json;
use tokenbroker_core::store::Store;
use tokenbroker_store::SqliteStore;

use crate::helpers::{OTHER, Options, PROVIDER, current, providers, spawn_app, start_broker};
use crate::process::{ServeProcess, output, tokenbroker};

#[tokio::test]
async fn a_graceful_restart_reuses_the_stored_token() {
    let mut app = spawn_app(Options::default()).await;
    let before = current(&app.http, &app.url, &app.all_key).await;
    app.restart().await;
    let after = current(&app.http, &app.url, &app.all_key).await;
    assert_eq!(before, after);
    assert_eq!(
        app.emulator.counters().logins,
        1,
        "no login after the restart"
    );
}

#[tokio::test]
async fn a_restart_after_a_kill_mid_login_does_not_reuse_the_token_that_login_ended() {
    let mut app = spawn_app(Options::default()).await;
    let (generation, _) = current(&app.http, &app.url, &app.all_key).await;
    app.begin_stop().await.unwrap().unwrap();
    // What a broker killed between a login's answer and its commit leaves behind: a ledger
    // entry after the stored token, answered with a token that was never stored.
    let store = SqliteStore::open_existing(&app.store.path().join("tokenbroker.db"))
        .await
        .unwrap();
    let now = std::time::SystemTime::now();
    let entry = store.begin_issuance(PROVIDER, now).await.unwrap();
    let expiry = now + Duration::from_secs(600);
    store.finish_issuance(entry, Some(expiry)).await.unwrap();
    drop(store);
    app.restart().await;
    let (after, _) = current(&app.http, &app.url, &app.all_key).await;
    assert_eq!(after, generation + 1, "a new token, not the stored one");
    assert_eq!(app.emulator.counters().logins, 2);
}

#[tokio::test]
async fn brokers_sharing_one_sqlite_file_follow_each_others_tokens() {
    let app = spawn_app(Options::default()).await;
    let second = start_broker(&app.config_text, &app.master_key).await;
    let (first, _) = current(&app.http, &app.url, &app.all_key).await;
    let (seen, _) = current(&app.http, &second.url, &app.all_key).await;
    assert_eq!(
        seen, first,
        "the second broker uses the token the first stored"
    );
    assert_eq!(app.emulator.counters().logins, 1);
    // The first replaces it (an invalidation), superseding it at the issuer: the second
    // broker stops serving it within its re-read interval (1 s by default).
    let (status, _) = app.invalidate(json!({ "generation": first })).await;
    assert_eq!(status, StatusCode::OK);
    let started = std::time::Instant::now();
    loop {
        let (generation, _) = current(&app.http, &second.url, &app.all_key).await;
        if generation == first + 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the second broker still serves generation {generation}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.emulator.counters().logins, 2, "no login of its own");
    second.stop().await.unwrap();
}

#[tokio::test]
async fn a_provider_pointed_at_another_user_does_not_reuse_the_old_users_token() {
    let app = spawn_app(Options::default()).await;
    let (generation, token) = current(&app.http, &app.url, &app.all_key).await;
    // The same provider name, another Control Room user, on the same store.
    let other_user = app
        .config_text
        .replace("\"api-bot\"", "\"other-bot\"")
        .replace("\"k3y-for-tests\"", "\"other-k3y\"");
    assert_ne!(other_user, app.config_text);
    let other = start_broker(&other_user, &app.master_key).await;
    let (next, other_token) = current(&app.http, &other.url, &app.all_key).await;
    assert_ne!(
        other_token, token,
        "the first user's token, handed out as the other's"
    );
    assert_eq!(next, generation + 1);
    assert_eq!(
        app.emulator.counters().logins,
        2,
        "the other user logged in"
    );
    other.stop().await.unwrap();
}

#[tokio::test]
async fn logout_on_shutdown_ends_the_session_and_the_next_start_logs_in_again() {
    let mut app = spawn_app(Options {
        logout_on_shutdown: true,
        ..Options::default()
    })
    .await;
    let before = current(&app.http, &app.url, &app.all_key).await;
    app.restart().await;
    assert_eq!(
        app.emulator.counters().logouts,
        1,
        "the user is not left logged in"
    );
    let after = current(&app.http, &app.url, &app.all_key).await;
    assert_eq!(after.0, before.0 + 1, "a new login, numbered on");
    assert_ne!(after.1, before.1);
    assert_eq!(app.emulator.counters().logins, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_under_load_lose_no_token_a_consumer_saw() {
    let app = spawn_app(Options {
        login_latency: Duration::from_millis(20),
        ..Options::default()
    })
    .await;
    let mut seen: Option<(u64, String)> = None;
    for round in 0..20 {
        let mut serve = ServeProcess::start(&app.config_text, &app.master_key);
        serve.ready(&app.http).await;
        let logins_before = app.emulator.counters().logins;
        let restored = current(&app.http, &serve.url, &app.all_key).await;
        if let Some(seen) = &seen {
            assert_eq!(
                &restored, seen,
                "round {round}: the last token a consumer saw is reused"
            );
            assert_eq!(
                app.emulator.counters().logins,
                logins_before,
                "round {round}: no login on restart"
            );
        }
        // A write a consumer sees: the token is replaced and the new one handed out.
        let answer: serde_json::Value = app
            .http
            .post(format!("{}/v1/tokens/{PROVIDER}/invalidate", serve.url))
            .bearer_auth(&app.all_key)
            .json(&json!({ "generation": restored.0 }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let written = (
            answer["generation"].as_u64().unwrap(),
            answer["access_token"].as_str().unwrap().to_owned(),
        );
        assert_eq!(written.0, restored.0 + 1);
        seen = Some(written);
        // Load, then SIGKILL at a random moment of it.
        let kill_after = Duration::from_millis(rand::rng().random_range(10..300));
        let load = join_all((0..8).map(|_| async {
            let until = tokio::time::Instant::now() + Duration::from_millis(400);
            while tokio::time::Instant::now() < until {
                let _ = app
                    .http
                    .get(format!("{}/v1/tokens/{PROVIDER}", serve.url))
                    .bearer_auth(&app.all_key)
                    .send()
                    .await;
            }
        }));
        tokio::select! {
            _ = load => {}
            () = tokio::time::sleep(kill_after) => {}
        }
        serve.kill();
    }
    // The file still opens cleanly after all that, in process too.
    let mut app = app;
    app.restart().await;
    assert_eq!(Some(current(&app.http, &app.url, &app.all_key).await), seen);
}

#[tokio::test]
async fn neither_the_store_file_nor_the_logs_hold_a_secret_in_plaintext() {
    let app = spawn_app(Options::default()).await;
    let mut serve = ServeProcess::start(&app.config_text, &app.master_key);
    serve.ready(&app.http).await;
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let (generation, token) = current(&app.http, &serve.url, &app.all_key).await;
        tokens.push(token);
        app.http
            .post(format!("{}/v1/tokens/{PROVIDER}/invalidate", serve.url))
            .bearer_auth(&app.all_key)
            .json(&json!({ "generation": generation }))
            .send()
            .await
            .unwrap();
    }
    tokens.push(current(&app.http, &serve.url, &app.all_key).await.1);
    let _ = app.get_token(OTHER, Some(&app.all_key)).await;
    let (status, logs) = serve.terminate().await;
    assert!(status.success(), "{logs}");

    let mut files = Vec::new();
    for entry in std::fs::read_dir(app.store.path()).unwrap() {
        files.push(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(!files.is_empty());
    let secrets: Vec<&[u8]> = tokens
        .iter()
        .map(|t| t.as_bytes())
        .chain([
            &b"k3y-for-tests"[..],
            b"other-k3y",
            app.all_key.as_bytes(),
            app.master_key.as_bytes(),
        ])
        .collect();
    for secret in &secrets {
        for bytes in files
            .iter()
            .chain(std::iter::once(&logs.as_bytes().to_vec()))
        {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == *secret),
                "a secret ({} bytes) is in plaintext in the store or the logs",
                secret.len()
            );
        }
    }
}

#[tokio::test]
async fn a_wrong_or_missing_master_key_fails_at_start_with_a_readable_error() {
    let app = spawn_app(Options::default()).await;
    let _ = current(&app.http, &app.url, &app.all_key).await;
    let config = app.store.path().join("serve.toml");
    std::fs::write(&config, &app.config_text).unwrap();
    let wrong = tokenbroker()
        .args(["serve", "--config"])
        .arg(&config)
        .env(
            "TOKENBROKER_MASTER_KEY",
            tokenbroker_core::seal::new_master_key(),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sealed with another master key"),
        "{stderr}"
    );
    let missing = tokenbroker()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("tokenbroker keys master"), "{stderr}");
}

#[tokio::test]
async fn rekey_round_trips_and_the_old_key_stops_working() {
    let mut app = spawn_app(Options::default()).await;
    let before = current(&app.http, &app.url, &app.all_key).await;
    let config = app.store.path().join("serve.toml");
    std::fs::write(&config, &app.config_text).unwrap();
    let new_key = tokenbroker_core::seal::new_master_key();
    app.restart().await; // no writes in flight while the CLI rekeys
    let rekey = tokenbroker()
        .args(["store", "rekey", "--config"])
        .arg(&config)
        .env("TOKENBROKER_MASTER_KEY", &app.master_key)
        .env("TOKENBROKER_NEW_MASTER_KEY", &new_key)
        .output()
        .unwrap();
    assert_eq!(
        rekey.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rekey.stderr)
    );
    assert!(String::from_utf8_lossy(&rekey.stdout).contains("re-sealed 2 value(s)"));

    let old_key = std::mem::replace(&mut app.master_key, new_key);
    app.restart().await;
    assert_eq!(
        current(&app.http, &app.url, &app.all_key).await,
        before,
        "the new key opens the token"
    );
    assert_eq!(app.emulator.counters().logins, 1);
    let stale = tokenbroker()
        .args(["serve", "--config"])
        .arg(&config)
        .env("TOKENBROKER_MASTER_KEY", &old_key)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&stale.stderr).contains("another master key"));
}

#[tokio::test]
async fn operators_see_every_live_token_of_a_provider_that_keeps_several() {
    // Not single-session: a new token leaves the earlier ones live at the issuer.
    let app = spawn_app(Options {
        provider_extra: "single_session = false".into(),
        ..Options::default()
    })
    .await;
    for generation in 1..=2 {
        current(&app.http, &app.url, &app.all_key).await;
        let (status, _) = app.invalidate(json!({ "generation": generation })).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, view) = providers(&app, &app.all_key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view[PROVIDER]["generation"], 3);
    assert_eq!(view[PROVIDER]["live_tokens"], 3, "{view}");
}

#[tokio::test]
async fn operators_see_provider_state_and_the_audit_trail() {
    let app = spawn_app(Options::default()).await;
    let (generation, _) = current(&app.http, &app.url, &app.all_key).await;
    let _ = app.invalidate(json!({ "generation": generation })).await;

    let (status, view) = providers(&app, &app.all_key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view[PROVIDER]["state"], "ready");
    assert_eq!(view[PROVIDER]["generation"], 2);
    assert_eq!(view[PROVIDER]["issuances"], 2);
    assert_eq!(view[PROVIDER]["live_tokens"], 1);
    assert_eq!(view[OTHER]["generation"], 0);
    let (scoped, _) = providers(&app, &app.scoped_key).await;
    assert_eq!(scoped, StatusCode::FORBIDDEN);

    let mut status = tokenbroker();
    status
        .args(["status", "--broker", &app.url])
        .env("TOKENBROKER_KEY", &app.all_key);
    let status = output(status).await;
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(table.starts_with("PROVIDER"), "{table}");
    assert!(table.lines().next().unwrap().contains(" LIVE "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(PROVIDER) && l.contains("ready")),
        "{table}"
    );

    let config = app.store.path().join("serve.toml");
    std::fs::write(&config, &app.config_text).unwrap();
    let audit = tokenbroker()
        .args(["audit", PROVIDER, "--since", "10m", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let trail = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    let events: Vec<&str> = trail
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(events, ["issued", "invalidated", "issued"], "{trail}");
    // A mistyped provider is not taken for a quiet one.
    let typo = tokenbroker()
        .args(["audit", "controlrom", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("no provider of that name"),
        "{typo:?}"
    );
}
