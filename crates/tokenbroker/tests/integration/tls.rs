//! HTTPS on the broker's listener: a client that trusts the broker's certificate gets
//! tokens; one that does not, or that speaks plain HTTP, gets nothing.

use reqwest::StatusCode;
use tokenbroker::api::AppState;
use tokenbroker_core::Config;
use tokenbroker_core::config::TlsFiles;

use crate::helpers::{Options, PROVIDER, sealer, spawn_app};

#[tokio::test]
async fn serves_https_with_a_configured_certificate() {
    let app = spawn_app(Options::default()).await;
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = app.store.path().join("cert.pem");
    let key = app.store.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();

    let tls =
        tokenbroker::tls::server_config(&TlsFiles { cert, key }).expect("the certificate loads");
    let config = Config::parse(&app.config_text).unwrap();
    let state = AppState::start(config, sealer(&app.master_key))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tokenbroker::server::run_tls(
        listener,
        state,
        tls,
        tokenbroker::server::Serving::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/v1/tokens/{PROVIDER}");
    let answer = trusting
        .get(&url)
        .bearer_auth(&app.all_key)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));

    let untrusting = reqwest::Client::builder()
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    assert!(
        untrusting.get(&url).send().await.is_err(),
        "an unknown certificate is refused"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "no plain HTTP on the TLS port"
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn a_certificate_without_its_key_is_a_config_error() {
    let problems = Config::parse("[server]\ntls_cert = \"cert.pem\"\n").unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.to_string() == "server.tls_cert: tls_cert and tls_key go together"),
        "{problems:?}"
    );
    let missing = tokenbroker::tls::server_config(&TlsFiles {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
    })
    .unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/cert.pem"),
        "{missing}"
    );
}
