//! Client connections: one that never completes its request head or body, sits idle
//! between requests, or stops reading its answer, is closed after `server.idle_timeout`; a
//! request the broker takes longer than that to answer, or whose answer takes longer than
//! that to stream, is not cut by it. A client that hangs up (or is cut off) while its
//! proxied request waits has that request, and its call upstream, dropped.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::helpers::{Options, PROVIDER, TestApp, spawn_app, upstream};

const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// A broker that closes connections after [`IDLE_TIMEOUT`] with no request being answered.
async fn app(options: Options) -> TestApp {
    spawn_app(Options {
        server_extra: format!("idle_timeout = \"{}ms\"", IDLE_TIMEOUT.as_millis()),
        ..options
    })
    .await
}

async fn connect(app: &TestApp) -> TcpStream {
    let address = app
        .url
        .strip_prefix("http://")
        .expect("a plain HTTP broker");
    TcpStream::connect(address)
        .await
        .expect("the broker accepts")
}

/// The head of a proxied request, `method_path` being e.g. `GET /path` (under the
/// provider's upstream), with the scoped key and the `extra` header lines.
fn proxied_head(app: &TestApp, method_path: &str, extra: &str) -> String {
    let (method, path) = method_path.split_once(' ').expect("a method and a path");
    format!(
        "{method} /v1/proxy/{PROVIDER}{path} HTTP/1.1\r\nHost: broker\r\n\
         Authorization: Bearer {}\r\n{extra}\r\n",
        app.scoped_key
    )
}

/// A request head without the blank line that ends it.
const UNFINISHED_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: broker\r\n";

/// Everything the broker sends until it closes the connection, which must come about
/// [`IDLE_TIMEOUT`] after the last thing the client sent (the broker closes between one
/// and one and a quarter of it): not within half of it (then something else closed it;
/// the half is a margin for when the broker starts counting), and well within ten (a
/// broker that keeps the connection open fails the test).
async fn closed_by_the_idle_timeout(stream: &mut TcpStream) -> String {
    let started = Instant::now();
    let mut received = Vec::new();
    let closed = tokio::time::timeout(IDLE_TIMEOUT * 10, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    let received = String::from_utf8_lossy(&received).into_owned();
    assert!(
        closed.is_ok(),
        "the broker kept the connection open; it sent {received:?}"
    );
    assert!(
        started.elapsed() >= IDLE_TIMEOUT / 2,
        "closed after {:?}, before the idle timeout; it sent {received:?}",
        started.elapsed()
    );
    received
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_off_after_the_idle_timeout() {
    let app = app(Options::default()).await;

    // The same head, finished, is answered: the broker has nothing against it.
    let mut prompt = connect(&app).await;
    prompt.write_all(UNFINISHED_HEAD).await.unwrap();
    prompt.write_all(b"\r\n").await.unwrap();
    let mut answer = [0u8; 12];
    prompt.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");

    let mut slow = connect(&app).await;
    slow.write_all(UNFINISHED_HEAD).await.unwrap();
    let received = closed_by_the_idle_timeout(&mut slow).await;
    assert!(
        !received.contains("200"),
        "an unfinished head was answered: {received:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = app(Options::default()).await;
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n")
        .await
        .unwrap();
    let received = closed_by_the_idle_timeout(&mut idle).await;
    assert!(
        received.starts_with("HTTP/1.1 200"),
        "the request was not answered: {received:?}"
    );
    assert!(
        !received.to_ascii_lowercase().contains("connection: close"),
        "the broker meant to close it anyway: {received:?}"
    );
}

#[tokio::test]
async fn an_answer_that_takes_longer_than_the_idle_timeout_still_arrives() {
    // The first token request waits for the login, which takes twice the idle timeout.
    let app = app(Options {
        login_latency: IDLE_TIMEOUT * 2,
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let (status, _, body) = app.get_token(PROVIDER, Some(&app.scoped_key)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        started.elapsed() >= IDLE_TIMEOUT * 2,
        "the login did not take its latency ({:?}), so this proves nothing",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_answer_that_streams_for_longer_than_the_idle_timeout_arrives_whole() {
    // The upstream answers at once, then sends its body in five parts, each after half an
    // idle timeout.
    let gap = IDLE_TIMEOUT / 2;
    let dripping = upstream(axum::Router::new().fallback(move || async move {
        let parts = futures_util::stream::iter(0..5).then(move |part| async move {
            tokio::time::sleep(gap).await;
            Ok::<_, std::io::Error>(format!("part {part}\n"))
        });
        axum::body::Body::from_stream(parts)
    }))
    .await;
    let app = app(Options {
        upstream: Some(dripping),
        ..Options::default()
    })
    .await;
    let started = Instant::now();
    let response = app.proxied_get("drip").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.expect("the body arrives whole");
    assert_eq!(body, "part 0\npart 1\npart 2\npart 3\npart 4\n");
    assert!(
        started.elapsed() >= IDLE_TIMEOUT * 2,
        "the body did not take its time ({:?}), so this proves nothing",
        started.elapsed()
    );
}

/// Sends on its channel when dropped: tells that the upstream's handler was dropped.
struct Dropped(mpsc::UnboundedSender<()>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_request_has_its_upstream_call_dropped() {
    // The upstream takes the request and never answers; it reports when it starts and when
    // its handler is dropped (hyper drops it when the broker closes that connection).
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let silent = upstream(axum::Router::new().fallback(move || {
        let guard = Dropped(dropped_tx.clone());
        let _ = started_tx.send(());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        }
    }))
    .await;
    let app = app(Options {
        upstream: Some(silent),
        // Far longer than the test waits: only the hang-up can end the upstream call.
        provider_extra: "upstream_timeout = \"10min\"".to_owned(),
        ..Options::default()
    })
    .await;

    let mut client = connect(&app).await;
    let head = proxied_head(&app, "GET /hang", "");
    client.write_all(head.as_bytes()).await.unwrap();
    started.recv().await.expect("the upstream got the request");
    drop(client);

    let ended = tokio::time::timeout(Duration::from_secs(20), dropped.recv()).await;
    assert!(
        matches!(ended, Ok(Some(()))),
        "the upstream call went on after its client hung up"
    );
}

#[tokio::test]
async fn a_request_body_that_stops_coming_is_cut_off_after_the_idle_timeout() {
    let app = app(Options {
        upstream: Some(upstream(axum::Router::new().fallback(|| async { "ok" })).await),
        ..Options::default()
    })
    .await;
    // Announces 100 bytes (a body the proxy keeps for a retry), sends 10, and waits.
    let mut client = connect(&app).await;
    let head = proxied_head(&app, "POST /upload", "Content-Length: 100\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(b"0123456789").await.unwrap();
    let received = closed_by_the_idle_timeout(&mut client).await;
    assert!(
        !received.contains("200"),
        "a request without its body was answered: {received:?}"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_cut_off_and_its_upstream_call_dropped() {
    // The upstream streams an endless body, and reports when the stream is dropped.
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let endless = upstream(axum::Router::new().fallback(move || {
        let guard = Dropped(dropped_tx.clone());
        async move {
            let chunks = futures_util::stream::unfold(guard, |guard| async move {
                let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
                Some((Ok::<_, std::io::Error>(chunk), guard))
            });
            axum::body::Body::from_stream(chunks)
        }
    }))
    .await;
    let app = app(Options {
        upstream: Some(endless),
        provider_extra: "upstream_timeout = \"10min\"".to_owned(),
        ..Options::default()
    })
    .await;

    let mut client = connect(&app).await;
    let head = proxied_head(&app, "GET /endless", "");
    client.write_all(head.as_bytes()).await.unwrap();
    let mut status = [0u8; 12];
    client.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    // From here on the client reads nothing, and keeps its connection open.
    let ended = tokio::time::timeout(Duration::from_secs(20), dropped.recv()).await;
    assert!(
        matches!(ended, Ok(Some(()))),
        "the broker kept streaming to a client that reads nothing"
    );
    drop(client);
}
