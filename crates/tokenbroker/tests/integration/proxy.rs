//! The reverse proxy end to end: consumers with a static key never see a 401, attacks on
//! the path are refused, bodies stream, upstream failures answer in the API's error shape.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use futures_util::StreamExt;
use futures_util::future::join_all;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::helpers::{Options, PROVIDER, TestApp, spawn_app, upstream};
use crate::process::ServeProcess;

/// `POST /v1/proxy/controlroom/v3/wlm/queues/1/workitems` with the scoped key, to be given
/// a body.
fn work_items(app: &TestApp) -> reqwest::RequestBuilder {
    app.http
        .post(format!(
            "{}/v1/proxy/{PROVIDER}/v3/wlm/queues/1/workitems",
            app.url
        ))
        .bearer_auth(&app.scoped_key)
}

/// A work item created through the proxy.
async fn create_work_item(app: &TestApp) -> reqwest::Response {
    work_items(app)
        .json(&serde_json::json!({ "workItems": [{ "json": { "n": 1 } }] }))
        .send()
        .await
        .expect("the broker answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_key_client_sees_no_401_while_the_token_is_kicked_every_2s() {
    let app = spawn_app(Options::default()).await;
    let kicker = tokio::spawn({
        let emulator = app.emulator.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                emulator.kick();
            }
        }
    });
    let statuses = join_all((0..4).map(|_| async {
        let mut seen = Vec::new();
        for _ in 0..250 {
            seen.push(create_work_item(&app).await.status());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    }))
    .await;
    kicker.abort();
    let all: Vec<StatusCode> = statuses.into_iter().flatten().collect();
    assert_eq!(all.len(), 1000);
    assert!(
        all.iter().all(|s| *s == StatusCode::OK),
        "{:?}",
        all.iter()
            .filter(|s| **s != StatusCode::OK)
            .collect::<Vec<_>>()
    );
    let seen = app.emulator.counters();
    assert!(
        seen.unauthorized >= 1,
        "the kicks made the upstream reject tokens: {seen:?}"
    );
    assert!(
        seen.logins >= 2,
        "the proxy logged in again after a kick: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_rotations_under_continuous_proxied_load_cause_no_401_at_all() {
    let app = spawn_app(Options {
        lifetime: Duration::from_secs(4),
        login_latency: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    let until = Instant::now() + Duration::from_secs(12);
    let statuses = join_all((0..20).map(|_| async {
        let mut seen = Vec::new();
        while Instant::now() < until {
            seen.push(create_work_item(&app).await.status());
        }
        seen
    }))
    .await;
    let all: Vec<StatusCode> = statuses.into_iter().flatten().collect();
    assert!(all.len() > 1000, "continuous load: {}", all.len());
    assert!(all.iter().all(|s| *s == StatusCode::OK));
    let seen = app.emulator.counters();
    assert!(seen.logins >= 3, "tokens were rotated: {seen:?}");
    assert_eq!(
        seen.unauthorized, 0,
        "no request ever carried a superseded token: {seen:?}"
    );
    assert_eq!(seen.max_issuances_in_flight, 1);
}

/// Sends a raw request line, as an attacker would (HTTP clients normalise paths).
async fn raw(app: &TestApp, target: &str, extra_headers: &str) -> (u16, String) {
    let address = app.url.trim_start_matches("http://");
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n{extra_headers}Connection: close\r\n\r\n",
        app.scoped_key
    );
    raw_request(app, &request).await
}

/// Sends `request` as written and reads the answer to the end: its status and its text.
async fn raw_request(app: &TestApp, request: &str) -> (u16, String) {
    let address = app.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[tokio::test]
async fn every_path_escape_is_refused_before_it_reaches_the_upstream() {
    let app = spawn_app(Options::default()).await;
    let prefix = format!("/v1/proxy/{PROVIDER}");
    for attack in [
        "/../../v1/authentication",
        "/v3/%2e%2e/%2e%2e/secret",
        "/v3/..%2f..%2fsecret",
        "/v3/%2F/x",
        "/v3/a%5c..%5cb",
        "/v3/a\\..\\b",
        "//evil.example/x",
        "/http://evil.example/x",
        "/user@evil.example/x",
        "/v3/a%0d%0aX-Injected:%201",
        "/v3/items?q=%0d%0aX-Injected:%201",
    ] {
        let (status, answer) = raw(&app, &format!("{prefix}{attack}"), "").await;
        assert_eq!(status, 400, "{attack}: {answer}");
        assert!(
            answer.contains("unsafe_path") || answer.contains("bad_request"),
            "{attack}: {answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("x-tokenbroker-error"),
            "{attack}: {answer}"
        );
    }
    let absolute = raw(&app, "http://evil.example/v1/proxy/controlroom/x", "").await;
    assert_eq!(absolute.0, 400, "{}", absolute.1);
    let seen = app.emulator.counters();
    assert_eq!(
        (seen.api_calls_ok, seen.unauthorized, seen.login_attempts),
        (0, 0, 0),
        "nothing reached the upstream: {seen:?}"
    );

    // A client cannot choose the token the upstream sees: its own value is replaced.
    let response = work_items(&app)
        .header("X-Authorization", "spoofed-token")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("x-tokenbroker-error").is_none());
    assert_eq!(app.emulator.counters().unauthorized, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_response_streams_through_in_bounded_memory() {
    const SIZE: usize = 100 << 20;
    let big = upstream(axum::Router::new().route(
        "/big",
        axum::routing::get(|| async {
            let chunk = axum::body::Bytes::from(vec![7u8; 64 << 10]);
            let stream = futures_util::stream::iter(
                (0..SIZE / chunk.len()).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
            );
            axum::body::Body::from_stream(stream)
        }),
    ))
    .await;
    let app = spawn_app(Options {
        upstream: Some(big),
        ..Options::default()
    })
    .await;
    let mut serve = ServeProcess::start(&app.config_text, &app.master_key);
    serve.ready(&app.http).await;
    let _ = app.plain_token(&serve.url).await;
    let before = serve.memory_kib("VmRSS");
    let response = app
        .http
        .get(format!("{}/v1/proxy/{PROVIDER}/big", serve.url))
        .bearer_auth(&app.scoped_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut received = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, SIZE);
    let peak = serve.memory_kib("VmHWM");
    assert!(
        peak < before + 20 * 1024,
        "RSS grew from {before} KiB to a peak of {peak} KiB"
    );
    let _ = serve.terminate().await;
}

#[tokio::test]
async fn upstream_failures_answer_in_the_error_shape() {
    let down = spawn_app(Options {
        upstream: Some("http://127.0.0.1:9".into()),
        ..Options::default()
    })
    .await;
    let response = create_work_item(&down).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        response.headers()["x-tokenbroker-error"],
        "upstream_unreachable"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unreachable");

    let slow = upstream(axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        "late"
    }))
    .await;
    let app = spawn_app(Options {
        upstream: Some(slow),
        provider_extra: "upstream_timeout = \"1s\"".into(),
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let response = create_work_item(&app).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
}

#[tokio::test]
async fn a_request_body_over_max_request_body_answers_413_announced_or_not() {
    let reads_the_body = upstream(
        axum::Router::new()
            .fallback(|body: axum::body::Bytes| async move { format!("{} bytes", body.len()) }),
    )
    .await;
    let app = spawn_app(Options {
        upstream: Some(reads_the_body),
        provider_extra: "max_request_body = 1024\nretry_body_limit = 512".into(),
        ..Options::default()
    })
    .await;
    let post = |body: reqwest::Body| {
        app.http
            .post(format!("{}/v1/proxy/{PROVIDER}/upload", app.url))
            .bearer_auth(&app.scoped_key)
            .body(body)
            .send()
    };
    // Within the limit, streamed (no Content-Length): relayed.
    let chunks = |n: usize| {
        let chunk = || Ok::<_, std::io::Error>(vec![b'x'; 256]);
        reqwest::Body::wrap_stream(futures_util::stream::iter((0..n).map(move |_| chunk())))
    };
    let response = post(chunks(3)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "768 bytes");
    // Over it, announced, and streamed: refused the same way.
    for (how, body) in [
        ("announced", reqwest::Body::from(vec![b'x'; 2048])),
        ("streamed", chunks(8)),
    ] {
        let response = post(body).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{how}");
        assert_eq!(
            response.headers()["x-tokenbroker-error"],
            "body_too_large",
            "{how}"
        );
    }
}

#[tokio::test]
async fn a_streamed_upload_is_timed_by_the_upstreams_turns_not_the_clients_pace() {
    // The upstream reads the whole body before it answers; at /never it reads nothing.
    let reads_the_body = upstream(
        axum::Router::new()
            .route("/never", axum::routing::post(std::future::pending::<()>))
            .fallback(|body: axum::body::Bytes| async move { format!("{} bytes", body.len()) }),
    )
    .await;
    let app = spawn_app(Options {
        upstream: Some(reads_the_body),
        provider_extra: "upstream_timeout = \"1s\"\nretry_body_limit = 16".into(),
        ..Options::default()
    })
    .await;
    let post = |path: &str, body: reqwest::Body| {
        app.http
            .post(format!("{}/v1/proxy/{PROVIDER}/{path}", app.url))
            .bearer_auth(&app.scoped_key)
            .body(body)
            .send()
    };
    // Six parts, one every 400 ms: the client takes 2.4 times the upstream's timeout.
    let slow_parts = || {
        reqwest::Body::wrap_stream(futures_util::stream::iter(0..6).then(|_| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, std::io::Error>(vec![b'x'; 100])
        }))
    };
    let started = Instant::now();
    let response = post("upload", slow_parts()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "600 bytes");
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "{:?}",
        started.elapsed()
    );
    // An upstream that takes no part and never answers is cut off after its timeout.
    let response = post("never", slow_parts()).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        response.headers()["x-tokenbroker-error"],
        "upstream_timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_broker_finishes_the_request_in_flight_and_takes_no_new_one() {
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let held = upstream(axum::Router::new().fallback({
        let (arrived, release) = (arrived.clone(), release.clone());
        move || async move {
            arrived.notify_one();
            release.notified().await;
            "finished"
        }
    }))
    .await;
    let mut app = spawn_app(Options {
        upstream: Some(held),
        ..Options::default()
    })
    .await;
    let url = format!("{}/v1/proxy/{PROVIDER}/slow", app.url);
    let in_flight = tokio::spawn(app.http.get(&url).bearer_auth(&app.scoped_key).send());
    arrived.notified().await;
    let stopping = app.begin_stop();

    // Every worker lets go of the listener: new connections are refused while the request
    // in flight is still held. (Polled: nothing outside the broker signals it.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    loop {
        match fresh.get(&url).bearer_auth(&app.scoped_key).send().await {
            Err(e) if e.is_connect() => break,
            answer => assert!(
                Instant::now() < deadline,
                "still accepting connections 5 s after the stop began: {answer:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!stopping.is_finished(), "the stop waits for the request");

    release.notify_one();
    let response = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "finished");
    stopping.await.unwrap().expect("the broker stops cleanly");
}

#[tokio::test]
async fn an_upstream_silent_mid_body_is_cut_off_after_upstream_timeout() {
    let stalling = upstream(axum::Router::new().fallback(|| async {
        let first = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"partial"))
        });
        axum::body::Body::from_stream(first.chain(futures_util::stream::pending()))
    }))
    .await;
    let app = spawn_app(Options {
        upstream: Some(stalling),
        provider_extra: "upstream_timeout = \"1s\"".into(),
        ..Options::default()
    })
    .await;
    let response = app.proxied_get("stream").await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the headers came through"
    );
    let body = tokio::time::timeout(Duration::from_secs(5), response.bytes())
        .await
        .expect("cut off after upstream_timeout (1 s), not left hanging");
    assert!(
        body.is_err(),
        "a body the upstream stopped sending ends in an error, not a truncated success"
    );
}

/// An HTTPS upstream on a loopback port with a fresh self-signed certificate for
/// `localhost`: its URL and the certificate's PEM file under `dir`.
async fn https_upstream(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join("upstream-cert.pem");
    let key = dir.join("upstream-key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let tls = tokenbroker::tls::server_config(&tokenbroker_core::config::TlsFiles {
        cert: cert.clone(),
        key,
    })
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = axum_server::tls_rustls::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )
    .unwrap();
    let router = axum::Router::new().fallback(|| async { "over tls" });
    tokio::spawn(server.serve(router.into_make_service()));
    (format!("https://localhost:{port}"), cert)
}

#[tokio::test]
async fn an_https_upstream_is_trusted_through_its_configured_ca_only() {
    let files = tempfile::tempdir().unwrap();
    let (url, ca) = https_upstream(files.path()).await;
    let trusting = spawn_app(Options {
        upstream: Some(url.clone()),
        provider_extra: format!("upstream_ca = \"{}\"", ca.display()),
        ..Options::default()
    })
    .await;
    let answer = trusting.proxied_get("anything").await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.text().await.unwrap(), "over tls");

    let untrusting = spawn_app(Options {
        upstream: Some(url),
        ..Options::default()
    })
    .await;
    let refused = untrusting.proxied_get("anything").await;
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        refused.headers()["x-tokenbroker-error"],
        "upstream_unreachable"
    );
}

#[tokio::test]
async fn the_upstream_sees_the_token_and_forwarding_headers_but_never_the_client_key() {
    let echo = upstream(axum::Router::new().fallback(
        |headers: axum::http::HeaderMap| async move {
            let seen: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").into()))
                .collect();
            (
                [("x-tokenbroker-error", "forged by the upstream")],
                axum::Json(seen),
            )
        },
    ))
    .await;
    let app = spawn_app(Options {
        upstream: Some(echo.clone()),
        ..Options::default()
    })
    .await;
    let token = app.plain_token(&app.url).await;
    let response = app
        .http
        .get(format!("{}/v1/proxy/{PROVIDER}/anything?x=1", app.url))
        .bearer_auth(&app.scoped_key)
        .header("Connection", "x-secret-hop")
        .header("x-secret-hop", "dropped")
        .send()
        .await
        .unwrap();
    assert!(
        response.headers().get("x-tokenbroker-error").is_none(),
        "an upstream cannot pose as the broker"
    );
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["x-authorization"], token.as_str());
    assert!(
        seen.get("authorization").is_none(),
        "the client key stays with the broker: {seen}"
    );
    assert!(!seen.to_string().contains(&app.scoped_key));
    assert!(
        seen.get("x-secret-hop").is_none(),
        "headers named by Connection stay on their hop"
    );
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["via"], "1.1 tokenbroker");
    assert_eq!(
        seen["host"],
        echo.trim_start_matches("http://"),
        "the upstream's own host, not the broker's"
    );
}

#[tokio::test]
async fn answers_read_to_the_end_give_their_upstream_connection_back() {
    let peers = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/fixed", axum::routing::get(|| async { "fixed" }))
        .route(
            "/chunked",
            axum::routing::get(|| async {
                let parts = ["chun", "ked"].map(|p| Ok::<_, std::io::Error>(p.to_owned()));
                axum::body::Body::from_stream(futures_util::stream::iter(parts))
            }),
        )
        .layer(axum::middleware::from_fn({
            let peers = peers.clone();
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                  request: axum::extract::Request,
                  next: axum::middleware::Next| {
                peers.lock().unwrap().insert(peer);
                next.run(request)
            }
        }));
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let app = spawn_app(Options {
        upstream: Some(url),
        ..Options::default()
    })
    .await;
    // One client connection, so one broker worker: its requests, one after the other, all
    // go over the one upstream connection, whether the answers are sized or chunked.
    for _ in 0..10 {
        for (path, body) in [("fixed", "fixed"), ("chunked", "chunked")] {
            let response = app.proxied_get(path).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.text().await.unwrap(), body);
        }
    }
    let peers = peers.lock().unwrap();
    assert_eq!(peers.len(), 1, "upstream connections: {peers:?}");
}

#[tokio::test]
async fn a_connection_still_uploading_after_an_early_answer_is_not_lent_to_the_next_request() {
    // Answers a POST with 401 at once, then reads its chunked body to the end at the
    // client's pace; answers a GET with "ok". One connection may carry both in turn.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                let mut read_until = async |socket: &mut tokio::net::TcpStream, end: &[u8]| {
                    let mut seen = Vec::new();
                    while !seen.ends_with(end) {
                        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                            return None;
                        }
                        seen.push(byte[0]);
                    }
                    Some(seen)
                };
                while let Some(head) = read_until(&mut socket, b"\r\n\r\n").await {
                    if head.starts_with(b"POST") {
                        let early = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
                        let _ = socket.write_all(early).await;
                        if read_until(&mut socket, b"0\r\n\r\n").await.is_none() {
                            return;
                        }
                    } else {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        let _ = socket.write_all(ok).await;
                    }
                }
            });
        }
    });
    let app = spawn_app(Options {
        upstream: Some(url),
        provider_extra: "upstream_timeout = \"1s\"\nretry_body_limit = 16".into(),
        server_extra: "workers = 1".into(),
        ..Options::default()
    })
    .await;
    // Ten parts, one every 300 ms: the upload outlasts the upstream's timeout threefold.
    let slow_parts =
        reqwest::Body::wrap_stream(futures_util::stream::iter(0..10).then(|_| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::io::Error>(vec![b'x'; 100])
        }));
    let uploading = app
        .http
        .post(format!("{}/v1/proxy/{PROVIDER}/upload", app.url))
        .bearer_auth(&app.scoped_key)
        .body(slow_parts)
        .send()
        .await
        .expect("the early answer");
    assert_eq!(uploading.status(), StatusCode::UNAUTHORIZED);
    // The upload goes on; another request on the same worker gets a connection of its own.
    let response = app.proxied_get("next").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn an_upstream_that_closes_every_connection_after_answering_is_still_answered() {
    // Answers one request per connection and closes it without saying so: every pooled
    // connection the broker keeps is dead by the next request, or dies as it is sent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn({
        let accepted = accepted.clone();
        async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        }
    });
    let app = spawn_app(Options {
        upstream: Some(url),
        ..Options::default()
    })
    .await;
    for n in 0..20 {
        let response = app.proxied_get("once").await;
        assert_eq!(response.status(), StatusCode::OK, "request {n}");
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 20);
}

#[tokio::test]
async fn a_client_body_that_breaks_mid_stream_is_the_clients_fault_not_the_upstreams() {
    let reads_the_body = upstream(
        axum::Router::new()
            .fallback(|body: axum::body::Bytes| async move { body.len().to_string() }),
    )
    .await;
    let app = spawn_app(Options {
        upstream: Some(reads_the_body),
        provider_extra: "retry_body_limit = 16".into(),
        ..Options::default()
    })
    .await;
    // A chunk past retry_body_limit (so the body streams), then a chunk size that is not hex.
    let part = "x".repeat(100);
    let (status, answer) = raw_request(
        &app,
        &format!(
            "POST /v1/proxy/{PROVIDER}/upload HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer {}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n64\r\n{part}\r\nZZ\r\n",
            app.scoped_key
        ),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("could not be read to its end"), "{answer}");
}

#[tokio::test]
async fn the_upstreams_references_to_itself_go_through_the_proxy() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let created = axum::Router::new().fallback({
        let location = format!("{origin}/base/items/8");
        move || async move {
            (
                StatusCode::CREATED,
                [
                    ("location", location),
                    (
                        "set-cookie",
                        "sid=1; Path=/; Domain=127.0.0.1; HttpOnly".to_owned(),
                    ),
                ],
            )
        }
    });
    tokio::spawn(async move { axum::serve(listener, created).await });
    let app = spawn_app(Options {
        upstream: Some(format!("{origin}/base")),
        ..Options::default()
    })
    .await;
    let response = app
        .http
        .post(format!("{}/v1/proxy/{PROVIDER}/items", app.url))
        .bearer_auth(&app.scoped_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["location"],
        format!("/v1/proxy/{PROVIDER}/items/8")
    );
    assert_eq!(
        response.headers()["set-cookie"],
        format!("sid=1; HttpOnly; Path=/v1/proxy/{PROVIDER}/")
    );
}

#[tokio::test]
async fn an_announced_empty_body_reaches_the_upstream_announced() {
    let echo = upstream(
        axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
            format!("{:?}", headers.get("content-length"))
        }),
    )
    .await;
    let app = spawn_app(Options {
        upstream: Some(echo),
        ..Options::default()
    })
    .await;
    let response = app
        .http
        .post(format!("{}/v1/proxy/{PROVIDER}/action", app.url))
        .bearer_auth(&app.scoped_key)
        .header("content-length", "0")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "Some(\"0\")");
}

#[tokio::test]
async fn a_small_body_of_unknown_length_is_kept_for_the_retry() {
    let app = spawn_app(Options::default()).await;
    crate::helpers::current(&app.http, &app.url, &app.scoped_key).await;
    app.emulator.kick();
    // Chunked: no Content-Length says how long it is.
    let item = serde_json::to_vec(&serde_json::json!({ "workItems": [{ "json": {} }] })).unwrap();
    let chunked =
        reqwest::Body::wrap_stream(futures_util::stream::iter([Ok::<_, std::io::Error>(item)]));
    let response = work_items(&app)
        .header("content-type", "application/json")
        .body(chunked)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "replayed with the new token"
    );
    let seen = app.emulator.counters();
    assert_eq!((seen.unauthorized, seen.logins), (1, 2), "{seen:?}");
}

#[tokio::test]
async fn a_401_to_a_body_too_large_to_replay_is_passed_through_saying_why() {
    let refusing =
        upstream(axum::Router::new().fallback(|| async { (StatusCode::UNAUTHORIZED, "no") })).await;
    let app = spawn_app(Options {
        upstream: Some(refusing),
        provider_extra: "retry_body_limit = 16".into(),
        ..Options::default()
    })
    .await;
    let post = || {
        app.http
            .post(format!("{}/v1/proxy/{PROVIDER}/x", app.url))
            .bearer_auth(&app.scoped_key)
            .body(vec![b'x'; 100])
            .send()
    };
    let passed_through = |response: &reqwest::Response| {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["x-tokenbroker-no-retry"],
            "request body too large to replay"
        );
    };
    passed_through(&post().await.unwrap());
    // The rejected token is replaced all the same, for the next request.
    let (generation, _) = crate::helpers::current(&app.http, &app.url, &app.scoped_key).await;
    assert_eq!(generation, 2);
    // With the issuer down, the upstream's answer is still the one the client gets.
    app.emulator.set_outage(true);
    passed_through(&post().await.unwrap());
}

#[tokio::test]
async fn an_upstream_that_always_answers_401_costs_one_reissue_per_request() {
    let refusing =
        upstream(axum::Router::new().fallback(|| async { (StatusCode::UNAUTHORIZED, "no") })).await;
    let app = spawn_app(Options {
        upstream: Some(refusing),
        ..Options::default()
    })
    .await;
    let response = app.proxied_get("x").await;
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "the upstream's answer, passed through"
    );
    assert!(response.headers().get("x-tokenbroker-error").is_none());
    assert_eq!(
        app.emulator.counters().logins,
        2,
        "the first token and exactly one reissue"
    );
}
