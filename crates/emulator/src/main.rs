//! The `tokenbroker-emulator` binary: an emulated Control Room on a chosen address, and on
//! request the two OAuth2 servers beside it, for trying the broker by hand.
//!
//! Parses the flags, sets up tracing, binds, and hands the listener to the library; then
//! waits for Ctrl-C (or SIGTERM) and shuts down gracefully. Everything else is the library's.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokenbroker_emulator::{CappedPool, ControlRoom, RotatingRefresh};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// How long the requests in flight get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// An emulated Automation Anywhere Control Room (single-session JWT logins and a work-item
/// queue API), and optionally the OAuth2 capped pool and rotating refresh-token servers, for
/// trying tokenbroker by hand.
#[derive(Parser)]
#[command(name = "tokenbroker-emulator", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Token lifetime (rounded to whole seconds, at least 1 s), e.g. `20m`, `30s`.
    #[arg(long, value_name = "DURATION", default_value = "20m", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    /// How long each login and refresh takes to answer, e.g. `250ms`.
    #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = humantime::parse_duration)]
    login_latency: Duration,
    /// An accepted user and its API key; repeatable. Default: `api-bot:demo-key`.
    #[arg(long = "user", value_name = "NAME:APIKEY", value_parser = parse_user)]
    users: Vec<User>,
    /// Also serve the capped OAuth2 pool (client `svc`/`secret`, 3 active tokens, token
    /// endpoint `/oauth/token`) on this address.
    #[arg(long, value_name = "ADDR")]
    pool_listen: Option<SocketAddr>,
    /// Also serve the rotating refresh-token server (client `svc`/`secret`, token endpoint
    /// `/oauth2/token`) on this address; its first refresh token is logged.
    #[arg(long, value_name = "ADDR")]
    refresh_listen: Option<SocketAddr>,
}

/// One `--user NAME:APIKEY`. No `Debug`, so that the key cannot end up in a log.
#[derive(Clone)]
struct User {
    /// The username logins present.
    name: String,
    /// The API key (or password) that goes with it.
    api_key: String,
}

/// Splits `NAME:APIKEY` at the first colon, so that keys may contain colons.
fn parse_user(raw: &str) -> Result<User, String> {
    match raw.split_once(':') {
        Some((name, api_key)) if !name.is_empty() && !api_key.is_empty() => Ok(User {
            name: name.to_owned(),
            api_key: api_key.to_owned(),
        }),
        _ => Err("expected NAME:APIKEY, both non-empty".to_owned()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("tokenbroker_emulator=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tokenbroker-emulator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until a shutdown signal, then drains within [`SHUTDOWN_GRACE`].
async fn run(args: Args) -> anyhow::Result<()> {
    let mut builder = ControlRoom::builder()
        .token_lifetime(args.lifetime)
        .login_latency(args.login_latency);
    for user in &args.users {
        builder = builder.user(&user.name, &user.api_key);
    }
    let listener = bind(args.listen).await?;
    let control_room = builder
        .spawn_on(listener)
        .context("cannot start the Control Room emulator")?;

    println!("{}", control_room.url());
    let names: Vec<&str> = if args.users.is_empty() {
        vec!["api-bot"]
    } else {
        args.users.iter().map(|user| user.name.as_str()).collect()
    };
    tracing::info!(
        url = %control_room.url(),
        users = ?names,
        lifetime = %humantime::format_duration(args.lifetime),
        login_latency = %humantime::format_duration(args.login_latency),
        "Control Room emulator ready; Ctrl-C to stop"
    );

    let pool = match args.pool_listen {
        Some(addr) => {
            let pool = CappedPool::builder().spawn_on(bind(addr).await?)?;
            tracing::info!(url = %pool.url(), "capped OAuth2 pool ready");
            Some(pool)
        }
        None => None,
    };
    let refresh = match args.refresh_listen {
        Some(addr) => {
            let refresh = RotatingRefresh::builder().spawn_on(bind(addr).await?)?;
            tracing::info!(
                url = %refresh.url(),
                refresh_token = %refresh.initial_refresh_token(),
                "rotating refresh-token server ready"
            );
            Some(refresh)
        }
        None => None,
    };

    shutdown_signal().await?;
    tracing::info!("shutting down");
    control_room.shutdown();
    if let Some(pool) = &pool {
        pool.shutdown();
    }
    if let Some(refresh) = &refresh {
        refresh.shutdown();
    }
    let all_stopped = async {
        control_room.stopped().await;
        if let Some(pool) = &pool {
            pool.stopped().await;
        }
        if let Some(refresh) = &refresh {
            refresh.stopped().await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_stopped)
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still in flight at shutdown");
    }
    let counters = control_room.counters();
    tracing::info!(?counters, "stopped");
    if let Some(pool) = &pool {
        tracing::info!(counters = ?pool.counters(), "capped pool stopped");
    }
    if let Some(refresh) = &refresh {
        tracing::info!(counters = ?refresh.counters(), "rotating refresh server stopped");
    }
    Ok(())
}

/// Binds `addr`, saying which address failed.
async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Resolves on Ctrl-C, or on SIGTERM where there is one.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_split_at_the_first_colon() {
        let Ok(user) = parse_user("api-bot:key:with:colons") else {
            panic!("a name and a key with colons is valid");
        };
        assert_eq!(user.name, "api-bot");
        assert_eq!(user.api_key, "key:with:colons");
    }

    #[test]
    fn users_without_a_name_or_key_are_refused() {
        assert!(parse_user("api-bot").is_err());
        assert!(parse_user(":key").is_err());
        assert!(parse_user("api-bot:").is_err());
    }

    #[test]
    fn defaults_match_the_documented_flags() {
        let Ok(args) = Args::try_parse_from(["tokenbroker-emulator"]) else {
            panic!("no flags at all must parse");
        };
        assert_eq!(
            args.listen,
            "127.0.0.1:9000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(args.lifetime, Duration::from_secs(20 * 60));
        assert_eq!(args.login_latency, Duration::ZERO);
        assert!(args.users.is_empty());
        assert_eq!((args.pool_listen, args.refresh_listen), (None, None));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
