//! Running the broker: open the store, build the core from a config, serve the API on a
//! bound listener until a shutdown future resolves, then let in-flight requests and
//! issuances finish.
//!
//! [`run`] takes the listener and the shutdown signal from its caller, so `serve` passes a
//! socket it bound and SIGINT/SIGTERM, and tests pass port 0 and a channel of their own.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokenbroker_core::access::Access;
use tokenbroker_core::broker::StartError;
use tokenbroker_core::seal::Sealer;
use tokenbroker_core::slot::Persistence;
use tokenbroker_core::{Broker, Config};

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::backend::{self, Missing};
use crate::proxy::{UpstreamError, Upstreams};
use crate::rendered::RenderCache;

/// How long in-flight requests get to finish after the shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Broker(#[from] StartError),
    #[error(transparent)]
    Proxy(#[from] UpstreamError),
}

impl AppState {
    /// Opens the store `config` names with `sealer` and starts the core: stored tokens are
    /// reused, nobody logs in until a consumer asks.
    pub async fn start(config: Config, sealer: Sealer) -> Result<Self, StartupError> {
        let backend = backend::open(&config.store, Missing::Create)
            .await
            .map_err(StartError::from)?;
        let persistence = Persistence {
            store: backend.store,
            sealer: Arc::new(sealer),
            holder: holder_id(),
            sync_every: backend.sync_every,
        };
        let access = Arc::new(Access::from_config(&config));
        let upstreams = Arc::new(Upstreams::new(config.providers.values())?);
        let rendered = Arc::new(RenderCache::new(
            config.providers.keys().map(String::as_str),
        ));
        let broker = Arc::new(Broker::start(config.providers, persistence).await?);
        Ok(Self {
            broker,
            access,
            upstreams,
            rendered,
            scheme: "http",
        })
    }
}

/// This process's name as an issuance-lease holder: unique per start.
fn holder_id() -> String {
    format!("{}-{:016x}", std::process::id(), rand::random::<u64>())
}

/// Serves the API on `listener` until `shutdown` resolves, then drains (bounded) and stops
/// the slots' drivers.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let broker = state.broker.clone();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = stopping_tx.send(());
    };
    let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let result = tokio::select! {
        result = serve.into_future() => result,
        // Requests that outlive the drain window are cut.
        () = async {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(DRAIN).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(drain_s = DRAIN.as_secs(), "requests still in flight after the drain window; closing");
            Ok(())
        }
    };
    broker.shutdown().await;
    result
}

/// A broker served by a background task, for the demo and the tests.
pub struct Running {
    /// The base URL it answers on, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops it as a signal would, and waits for it to finish.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(Ok(()))
    }
}

/// Serves `state` on `listener` in a background task until [`Running::stop`].
pub fn spawn(listener: TcpListener, state: AppState) -> std::io::Result<Running> {
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, state, async {
        let _ = stopped.await;
    }));
    Ok(Running { url, stop, task })
}

/// Serves the API over HTTPS on `listener` until `shutdown` resolves, then drains
/// (bounded) and stops the slots' drivers, as [`run`] does for plain HTTP.
pub async fn run_tls(
    listener: TcpListener,
    mut state: AppState,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    state.scheme = "https";
    let broker = state.broker.clone();
    let handle = axum_server::Handle::new();
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    let server = axum_server::tls_rustls::from_tcp_rustls(listener.into_std()?, config)?
        .handle(handle.clone());
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing requests in flight");
        handle.graceful_shutdown(Some(DRAIN));
    });
    let app = api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let result = server.serve(app).await;
    broker.shutdown().await;
    result
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
