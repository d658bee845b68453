//! `tokenbroker demo`: the scenario that started it all, on loopback, in one process.
//!
//! Act one starts an emulated Control Room whose API user has a single live session, then
//! runs the same jobs twice: each job logging in for itself ([`jobs::self_login`]), then
//! every job getting the token from a broker ([`jobs::brokered`]). Act two does the same with
//! workers of an OAuth2 client whose server caps its live tokens ([`pool`]). Each half gets a
//! fresh emulator so the counts are its own. Progress shows live; one table compares all.
//! With `--serve` the broker stays up afterwards for the reader to try with `curl`.

pub mod jobs;
mod pool;
mod report;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use secrecy::SecretString;
use tokenbroker_core::Config;
use tokenbroker_core::access::{hex, key_sha256, new_client_key};
use tokenbroker_core::seal::{Sealer, new_master_key};
use tokenbroker_emulator::{CappedPool, ControlRoom, RunningCappedPool, RunningControlRoom};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::api::AppState;
use crate::client::BrokerClient;
use crate::exit::{self, Exit};
use crate::server;
use jobs::{AskAgain, Tally, WorkItems};
use pool::PoolTally;
use report::Row;

const USER: &str = "api-bot";
const API_KEY: &str = "demo-api-key";
const PROVIDER: &str = "controlroom";
/// The emulated tokens' lifetime: short, so that the broker half shows rotations too.
const LIFETIME: Duration = Duration::from_secs(10);
const LOGIN_LATENCY: Duration = Duration::from_millis(150);
const POLL_EVERY: Duration = Duration::from_millis(150);
const POOL_PROVIDER: &str = "reltio";
/// The emulated OAuth2 server's cap on a client's live tokens.
const POOL_CAP: u32 = 3;
const POOL_LIFETIME: Duration = Duration::from_secs(30);
/// The longest `--duration` taken: a demo is watched.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

pub async fn run(jobs: usize, duration: Duration, keep_serving: bool) -> Result<u8, Exit> {
    if jobs == 0 || duration.is_zero() || duration > MAX_DURATION {
        return Err(Exit::new(
            exit::USAGE,
            "--jobs must be above zero, and --duration above zero and at most a day",
        ));
    }
    crate::cli::init_logging("warn");
    // Listening before anything is made: an interruption then ends the acts, and the
    // store's directory is removed on the way out, with the broker's sealed tokens. With
    // `--serve`, the same signal then ends the serving.
    let mut signalled = std::pin::pin!(server::signal());
    let store = tempfile::tempdir().context("cannot make a directory for the demo's store")?;
    let path = store.path().join("demo.db");
    let finished = tokio::select! {
        finished = acts(jobs, duration, keep_serving, &path) => finished?,
        stop = &mut signalled => {
            return Err(Exit::new(
                stop.exit_code(),
                "interrupted; the demo's temporary store is removed",
            ));
        }
    };
    if keep_serving {
        report::try_it(&finished.broker.url, &finished.key, PROVIDER);
        signalled.await;
    }
    finished.broker.stop().await.context("the broker failed")?;
    finished.shared.shutdown();
    finished.pooled.shutdown();
    Ok(exit::OK)
}

/// What outlives the acts: the broker, for `--serve`, and the emulators it talks to.
struct Finished {
    broker: server::Running,
    key: String,
    shared: RunningControlRoom,
    pooled: RunningCappedPool,
}

/// Both acts, each half without and then with the broker (its store at `store`), and the
/// table that compares them.
async fn acts(
    jobs: usize,
    duration: Duration,
    keep_serving: bool,
    store: &Path,
) -> Result<Finished, Exit> {
    println!(
        "tokenbroker demo: {jobs} jobs share one Control Room API user (one live session per user, \
         {}s tokens), each creating work items and polling them to completion.\n",
        LIFETIME.as_secs()
    );
    let bars = MultiProgress::new();

    let alone = emulator().await?;
    let tally = Tally::default();
    let bar = progress(&bars, "jobs logging in for themselves", duration);
    let deadline = Instant::now() + duration;
    let api = WorkItems::new(&alone.url(), POLL_EVERY);
    let work = (0..jobs).map(|_| {
        jobs::self_login(
            api.clone(),
            USER.to_owned(),
            API_KEY.to_owned(),
            deadline,
            &tally,
        )
    });
    watch(&bar, deadline, join_all(work), || {
        control_room_progress(&alone, &tally)
    })
    .await;
    let first = Row::control_room("Control Room: each job logs in", &alone.counters(), &tally);
    alone.shutdown();

    let shared = emulator().await?;
    let key = new_client_key();
    let pooled = pool_emulator().await?;
    let broker = start_broker(&shared, &pooled, &key, keep_serving, store).await?;
    let client = BrokerClient::new(&broker.url, SecretString::from(key.clone()))
        .map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?;
    let tally = Tally::default();
    let bar = progress(&bars, "jobs using the broker", duration);
    let deadline = Instant::now() + duration;
    let api = WorkItems::new(&shared.url(), POLL_EVERY);
    let work = (0..jobs).map(|_| {
        jobs::brokered(
            api.clone(),
            &client,
            PROVIDER,
            AskAgain::AtRefreshAt,
            deadline,
            &tally,
        )
    });
    watch(&bar, deadline, join_all(work), || {
        control_room_progress(&shared, &tally)
    })
    .await;
    let second = Row::control_room(
        "Control Room: through tokenbroker",
        &shared.counters(),
        &tally,
    );

    // Act two: a capped token pool, with half the time per half.
    let act = duration / 2;
    let alone_pool = pool_emulator().await?;
    let tally = PoolTally::default();
    let bar = progress(&bars, "workers fetching their own tokens", act);
    let deadline = Instant::now() + act;
    let work = (0..jobs).map(|_| pool::self_fetch(alone_pool.url(), deadline, &tally));
    watch(&bar, deadline, join_all(work), || {
        pool_progress(&alone_pool, &tally)
    })
    .await;
    let third = Row::pool(
        "Capped pool: each worker fetches",
        &alone_pool.counters(),
        &tally,
    );
    alone_pool.shutdown();

    let tally = PoolTally::default();
    let bar = progress(&bars, "workers using the broker", act);
    let deadline = Instant::now() + act;
    let work =
        (0..jobs).map(|_| pool::brokered(pooled.url(), &client, POOL_PROVIDER, deadline, &tally));
    watch(&bar, deadline, join_all(work), || {
        pool_progress(&pooled, &tally)
    })
    .await;
    let fourth = Row::pool(
        "Capped pool: through tokenbroker",
        &pooled.counters(),
        &tally,
    );

    println!("\n{}", report::table(&[first, second, third, fourth]));
    Ok(Finished {
        broker,
        key,
        shared,
        pooled,
    })
}

async fn pool_emulator() -> Result<RunningCappedPool, Exit> {
    CappedPool::builder()
        .client(pool::CLIENT_ID, pool::CLIENT_SECRET)
        .max_active(POOL_CAP as usize)
        .token_lifetime(POOL_LIFETIME)
        .spawn()
        .await
        .map_err(|e| {
            Exit::new(
                exit::FAILURE,
                format!("cannot start the emulated token pool: {e}"),
            )
        })
}

async fn emulator() -> Result<RunningControlRoom, Exit> {
    ControlRoom::builder()
        .user(USER, API_KEY)
        .token_lifetime(LIFETIME)
        .login_latency(LOGIN_LATENCY)
        .spawn()
        .await
        .map_err(|e| {
            Exit::new(
                exit::FAILURE,
                format!("cannot start the emulated Control Room: {e}"),
            )
        })
}

/// Starts a broker for the emulated Control Room; with `--serve` on the usual port when free.
async fn start_broker(
    cr: &RunningControlRoom,
    pool: &RunningCappedPool,
    key: &str,
    keep_serving: bool,
    store: &Path,
) -> Result<server::Running, Exit> {
    let text = format!(
        r#"
[providers.{PROVIDER}]
type = "json_login"
login_url = "{cr}/v1/authentication"
login_body = {{ username = "{USER}", apiKey = "{API_KEY}" }}
header = "X-Authorization"
prefix = ""
refresh_before = "3s"
upstream = "{cr}"

[providers.{POOL_PROVIDER}]
type = "oauth2_client_credentials"
token_url = "{pool}/oauth/token"
client_id = "{client_id}"
client_secret = "{client_secret}"
max_active_tokens = {POOL_CAP}
upstream = "{pool}"

[store]
path = {store:?}

[clients.demo]
key_sha256 = "{hash}"
providers = ["{PROVIDER}", "{POOL_PROVIDER}"]
admin = true
"#,
        cr = cr.url(),
        hash = hex(&key_sha256(key)),
        store = store.display().to_string(),
        pool = pool.url(),
        client_id = pool::CLIENT_ID,
        client_secret = pool::CLIENT_SECRET,
    );
    let config = Config::parse(&text).map_err(|problems| {
        Exit::new(exit::FAILURE, format!("demo config invalid: {problems:?}"))
    })?;
    let listener = match keep_serving {
        true => match TcpListener::bind("127.0.0.1:8420").await {
            Ok(l) => l,
            Err(_) => TcpListener::bind("127.0.0.1:0")
                .await
                .context("cannot bind the broker")?,
        },
        false => TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the broker")?,
    };
    let sealer = Sealer::from_base64(&SecretString::from(new_master_key()), "the demo")
        .map_err(|e| Exit::new(exit::FAILURE, e.to_string()))?;
    let state = AppState::start(config, sealer)
        .await
        .context("cannot start the broker")?;
    Ok(server::spawn(listener, state, server::Serving::default())
        .context("cannot serve the broker")?)
}

fn progress(bars: &MultiProgress, label: &str, duration: Duration) -> ProgressBar {
    let bar = bars.add(ProgressBar::new(duration.as_millis() as u64));
    bar.set_style(
        ProgressStyle::with_template("{prefix:32} [{bar:24}] {elapsed:>3} {msg}")
            .expect("the progress template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar
}

/// Runs `work` while updating `bar` from the emulator's and the jobs' counters.
async fn watch(
    bar: &ProgressBar,
    deadline: Instant,
    work: impl std::future::Future<Output = Vec<()>>,
    message: impl Fn() -> String,
) {
    let start = Instant::now();
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let show = |bar: &ProgressBar| {
        bar.set_position(start.elapsed().min(deadline - start).as_millis() as u64);
        bar.set_message(message());
    };
    loop {
        tokio::select! {
            _ = &mut work => break,
            _ = tick.tick() => show(bar),
        }
    }
    show(bar);
    bar.finish();
    if bar.is_hidden() {
        println!("{}: {}", bar.prefix(), bar.message());
    }
}

/// The live line of the Control Room act.
fn control_room_progress(cr: &RunningControlRoom, tally: &Tally) -> String {
    let c = cr.counters();
    format!(
        "logins {:>3}  401s {:>3}  runs done {:>4}  failed {:>3}",
        c.logins + c.refreshes,
        c.unauthorized,
        Tally::get(&tally.completed),
        Tally::get(&tally.failed),
    )
}

/// The live line of the capped-pool act.
fn pool_progress(pool: &RunningCappedPool, tally: &PoolTally) -> String {
    let c = pool.counters();
    format!(
        "tokens {:>3}  429s {:>3}  calls ok {:>4}  failed {:>3}",
        c.issued,
        c.rejected_429,
        PoolTally::get(&tally.calls_ok),
        PoolTally::get(&tally.failed),
    )
}
