//! The drain of a planned single-session rotation spans the cluster (SPEC guarantee 2):
//! before the broker that rotates logs in again, the requests every broker proxies with the
//! old token finish, so the upstream never sees a token killed under a request; and a
//! broker that died holding the old token delays the rotation by `drain_timeout` at most.
//!
//! Two brokers share a PostgreSQL schema; the upstream takes 1.5 s per request and, when it
//! answers, asks the emulated Control Room whether the token it got is still the live
//! session. Both brokers see proxied load, since either may win the lease and rotate: the
//! other one's requests are the point. Without the cluster drain a rotation kills the other
//! broker's requests when one of them ends after all of the rotator's (a coin toss per
//! rotation, with the upstream's random latency): over the four or so rotations of the first
//! test, it fails about 15 times out of 16.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::join_all;
use reqwest::StatusCode;
use tokenbroker_emulator::RunningControlRoom;

use crate::cluster::TestSchema;
use crate::helpers::{Options, PROVIDER, TestApp, spawn_app, start_broker};
use crate::process::ServeProcess;

/// How long the upstream takes to answer, at least: longer than the margin between a
/// token's `refresh_at` and the moment its successor is logged in without a drain.
const SLOW: Duration = Duration::from_millis(1000);

/// How much longer, at most, chosen at random per request: which broker's request on the
/// old token ends last is then a coin toss at each rotation, wherever the rotation runs.
const JITTER_MS: u64 = 1000;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    token: String,
    answered_at: Instant,
    /// Whether the token was still the live session when the upstream answered.
    alive: bool,
}

/// An upstream that answers after [`SLOW`] and some jitter, 401 if the token it got was
/// killed meanwhile.
struct SlowUpstream {
    url: String,
    emulator: Arc<OnceLock<RunningControlRoom>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl SlowUpstream {
    async fn start() -> Self {
        let emulator: Arc<OnceLock<RunningControlRoom>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let router = axum::Router::new().fallback({
            let (emulator, seen) = (emulator.clone(), seen.clone());
            move |headers: axum::http::HeaderMap| {
                let (emulator, seen) = (emulator.clone(), seen.clone());
                async move {
                    let token = headers
                        .get("x-authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let jitter = Duration::from_millis(rand::random::<u64>() % JITTER_MS);
                    tokio::time::sleep(SLOW + jitter).await;
                    let emulator: &RunningControlRoom = emulator
                        .get()
                        .expect("the emulator is set before any request");
                    let alive = emulator.is_current(&token);
                    seen.lock().unwrap().push(Seen {
                        token,
                        answered_at: Instant::now(),
                        alive,
                    });
                    if alive {
                        StatusCode::OK
                    } else {
                        StatusCode::UNAUTHORIZED
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            url,
            emulator,
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// An app whose `controlroom` tokens live `lifetime` and are replaced 3 s before they
/// expire (so that a request in flight at `refresh_at`, and a drain of `drain_timeout`,
/// end before the old token expires), proxied to `upstream`; and its config moved to
/// `schema`.
async fn cluster_app(
    upstream: &SlowUpstream,
    schema: &TestSchema,
    lifetime: Duration,
    drain_timeout: &str,
    refresh_before: &str,
) -> (TestApp, String) {
    let app = spawn_app(Options {
        lifetime,
        upstream: Some(upstream.url.clone()),
        provider_extra: format!(
            "drain_timeout = \"{drain_timeout}\"\nrefresh_before = \"{refresh_before}\""
        ),
        ..Options::default()
    })
    .await;
    assert!(upstream.emulator.set(app.emulator.clone()).is_ok());
    let config = schema.holds(&app.config_text, app.store.path());
    (app, config)
}

/// Proxied GETs through the broker at `base`, one after the other, until `until`; the
/// statuses the consumer got.
async fn proxy_loop(app: &TestApp, base: &str, until: Instant) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    while Instant::now() < until {
        let response = app
            .http
            .get(format!("{base}/v1/proxy/{PROVIDER}/slow"))
            .bearer_auth(&app.scoped_key)
            .send()
            .await
            .expect("the broker answers");
        statuses.push(response.status());
    }
    statuses
}

/// That the upstream answered no request whose token had been killed under it, and every
/// consumer, of the `statuses` each got, only 200s.
fn assert_none_killed(seen: &[Seen], statuses: Vec<Vec<StatusCode>>) {
    let killed = seen.iter().filter(|s| !s.alive).count();
    assert_eq!(
        killed,
        0,
        "{killed} of {} requests had their token killed under them",
        seen.len()
    );
    let statuses: Vec<StatusCode> = statuses.into_iter().flatten().collect();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_rotation_waits_for_the_requests_other_brokers_proxy_with_the_old_token() {
    let Some(schema) = TestSchema::new("tb_drain").await else {
        return;
    };
    let upstream = SlowUpstream::start().await;
    let (app, config) = cluster_app(&upstream, &schema, Duration::from_secs(5), "5s", "3s").await;
    let brokers = [
        start_broker(&config, &app.master_key).await,
        start_broker(&config, &app.master_key).await,
    ];
    let (status, first) = app.token_at(&brokers[0].url).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{first}");
    let first_token = first["access_token"].as_str().unwrap().to_owned();

    // Three consumers per broker, each always mid-request: whichever broker rotates at a
    // refresh_at (every 3 to 4 s), the other has requests in flight with the old token.
    let until = Instant::now() + Duration::from_secs(12);
    let statuses = join_all(
        brokers
            .iter()
            .flat_map(|b| std::iter::repeat_n(b.url.as_str(), 3))
            .map(|base| proxy_loop(&app, base, until)),
    )
    .await;

    let counters = app.emulator.counters();
    assert!(counters.logins >= 3, "the token was rotated: {counters:?}");
    let seen = upstream.seen();
    assert_none_killed(&seen, statuses);
    // The rotation's login came after the last answer with the first token, wherever it
    // was proxied.
    let rotated_at = app.emulator.login_attempt_times()[1];
    let on_first: Vec<&Seen> = seen.iter().filter(|s| s.token == first_token).collect();
    assert!(on_first.len() >= 6, "every consumer used the first token");
    let last = on_first.iter().map(|s| s.answered_at).max().unwrap();
    eprintln!(
        "{} logins; {} requests on the first token, the rotation's login {:?} after the last",
        counters.logins,
        on_first.len(),
        rotated_at.saturating_duration_since(last)
    );
    assert!(
        last <= rotated_at,
        "a request on the first token was answered {:?} after the rotation's login",
        last - rotated_at
    );
    for broker in brokers {
        broker.stop().await.unwrap();
    }
}

/// The `drain_timeout` of [`rotation_delay`]'s brokers: long enough that a rotation that
/// waits for it stands out from one that does not on a loaded machine.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// How long after `refresh_at` a broker rotated the token when the other broker that served
/// it had been ended by `end` (a kill, a graceful stop); `None` without PostgreSQL.
async fn rotation_delay(end: impl AsyncFnOnce(ServeProcess)) -> Option<Duration> {
    let schema = TestSchema::new("tb_drain").await?;
    let upstream = SlowUpstream::start().await;
    let (app, config) = cluster_app(&upstream, &schema, Duration::from_secs(12), "4s", "6s").await;
    // The other broker starts before the first token exists, so it takes the token up
    // through its driver (recording itself as a user) before it answers.
    let mut other = ServeProcess::start_ready(1, &config, &app.master_key, &app.http).await;
    let other = other.remove(0);
    let rotator = start_broker(&config, &app.master_key).await;
    let (_, first) = app.token_at(&rotator.url).await.unwrap();
    let (status, same) = app.token_at(&other.url).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(same["access_token"], first["access_token"]);
    end(other).await;

    let refresh_at = humantime::parse_rfc3339(first["refresh_at"].as_str().unwrap()).unwrap();
    app.emulator
        .wait_for(|seen| seen.login_attempts >= 2, Duration::from_secs(15))
        .await
        .expect("the rotation happens");
    let delay = SystemTime::now()
        .duration_since(refresh_at)
        .unwrap_or_default();
    rotator.stop().await.unwrap();
    Some(delay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stopped_gracefully_does_not_delay_a_rotation() {
    let stop = async |broker: ServeProcess| {
        let (stopped, logs) = broker.terminate().await;
        assert!(stopped.success(), "{logs}");
    };
    let Some(delay) = rotation_delay(stop).await else {
        return;
    };
    // A broker that left is not waited for, as a dead one is (the test below).
    assert!(
        delay < DRAIN_TIMEOUT / 2,
        "the rotation came {delay:?} after refresh_at: it waited for the broker that stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_broker_delays_a_rotation_by_drain_timeout_at_most() {
    let Some(delay) = rotation_delay(async |broker: ServeProcess| broker.kill()).await else {
        return;
    };
    eprintln!("with a dead user of the token, the rotation came {delay:?} after refresh_at");
    assert!(
        delay >= DRAIN_TIMEOUT - Duration::from_millis(300),
        "the rotation came {delay:?} after refresh_at: it did not wait for the broker that used the token"
    );
    assert!(
        delay <= DRAIN_TIMEOUT + Duration::from_secs(3),
        "the rotation came {delay:?} after refresh_at, more than drain_timeout ({DRAIN_TIMEOUT:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_shutdown_waits_for_the_requests_other_brokers_proxy_with_the_token() {
    logout_on_shutdown_beside_a_staying_broker("").await;
}

/// A logout kills the token whether or not a new login would have: the provider's
/// `single_session` does not matter to the drain before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_shutdown_drains_the_other_brokers_for_a_provider_that_is_not_single_session() {
    logout_on_shutdown_beside_a_staying_broker("single_session = false").await;
}

/// Two brokers with `logout_on_shutdown` (and `provider_extra`): one stops while the
/// other's consumers proxy with the token; none of their requests has it killed under them.
async fn logout_on_shutdown_beside_a_staying_broker(provider_extra: &str) {
    let Some(schema) = TestSchema::new("tb_drain").await else {
        return;
    };
    let upstream = SlowUpstream::start().await;
    let app = spawn_app(Options {
        lifetime: Duration::from_secs(300),
        upstream: Some(upstream.url.clone()),
        logout_on_shutdown: true,
        provider_extra: format!("drain_timeout = \"10s\"\n{provider_extra}"),
        ..Options::default()
    })
    .await;
    assert!(upstream.emulator.set(app.emulator.clone()).is_ok());
    let config = schema.holds(&app.config_text, app.store.path());
    let leaving = start_broker(&config, &app.master_key).await;
    let staying = start_broker(&config, &app.master_key).await;
    let (status, first) = app.token_at(&leaving.url).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{first}");

    // Three consumers of the staying broker, each always mid-request, while the other
    // broker stops and logs out: the token's session ends under the staying broker.
    let until = Instant::now() + Duration::from_secs(8);
    let consumers = join_all((0..3).map(|_| proxy_loop(&app, &staying.url, until)));
    let stop = async {
        // Once the staying broker has proxied with the token, its consumers' next
        // requests are under way with it.
        let proxied = async {
            while upstream.seen().len() < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), proxied)
            .await
            .expect("the staying broker proxies");
        leaving.stop().await.unwrap();
    };
    let (statuses, ()) = tokio::join!(consumers, stop);

    let counters = app.emulator.counters();
    assert_eq!(
        counters.logouts, 1,
        "the leaving broker logged out: {counters:?}"
    );
    assert!(
        counters.logins >= 2,
        "the staying broker logged in again: {counters:?}"
    );
    assert_none_killed(&upstream.seen(), statuses);
    staying.stop().await.unwrap();
}
