//! `tokenbroker serve`: load the config, bind, serve until SIGINT or SIGTERM.

use std::path::Path;

use anyhow::Context;

use super::check::load;
use tokenbroker_core::seal::Sealer;

use crate::api::AppState;
use crate::exit::{self, Exit};
use crate::server;

/// Runs `tokenbroker serve`; returns the exit code.
pub async fn run(path: &Path) -> Result<u8, Exit> {
    let config = load(path)?;
    let sealer = Sealer::from_env_or_file(config.store.key_file.as_deref())
        .map_err(|e| Exit::new(exit::CONFIG, e.to_string()))?;
    let tls = match &config.server.tls {
        Some(files) => Some(
            crate::tls::server_config(files).map_err(|e| Exit::new(exit::CONFIG, e.to_string()))?,
        ),
        None => None,
    };
    crate::cli::init_logging("tokenbroker=info,tokenbroker_core=info");
    let listen = config.server.listen;
    let serving = server::Serving::new(&config.server);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let listen = listener.local_addr().context("no local address")?;
    let providers = config.providers.len();
    let state = AppState::start(config, sealer)
        .await
        .map_err(|e| Exit::new(exit::FAILURE, format!("cannot start: {e}")))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        %listen,
        scheme,
        providers,
        workers = serving.workers,
        idle_timeout_s = serving.idle_timeout.as_secs_f64(),
        "tokenbroker serving"
    );
    let signalled = server::signal();
    let stop = async move {
        signalled.await;
    };
    match tls {
        Some(tls) => server::run_tls(listener, state, tls, serving, stop).await,
        None => server::run(listener, state, serving, stop).await,
    }
    .context("server failed")?;
    tracing::info!("stopped");
    Ok(exit::OK)
}
