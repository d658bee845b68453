//! Emulated token issuers, run in-process on loopback by tokenbroker's integration tests and
//! its `demo`, and as the small `tokenbroker-emulator` binary.
//!
//! Each emulator is "the other side" that tests assert on, so it counts what it sees (logins,
//! peak issuances in flight, 401s served) instead of trusting the broker's view of itself.
//! Today there is one: [`ControlRoom`], an Automation Anywhere Control Room with
//! single-session JWT logins and a work-item queue API. OAuth2 servers are meant to sit
//! beside it as sibling modules, sharing the JWT helpers in `jwt` and the loopback server
//! in this file.
//!
//! This crate owns the emulated HTTP contracts only; it knows nothing of the broker.

pub mod control_room;
mod jwt;

pub use control_room::{ControlRoom, ControlRoomBuilder, Counters, RunningControlRoom};

use std::io;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// An axum router being served on a bound listener, with the means to stop it.
///
/// Shared by every emulator so that each one only builds its router and its state.
#[derive(Debug)]
pub(crate) struct Serving {
    /// The address actually bound, so that callers who bound port 0 learn the port.
    addr: SocketAddr,
    /// Set to `true` to begin a graceful shutdown; a `watch` so the signal is never lost,
    /// whether it comes before or after the server starts waiting for it.
    stop: watch::Sender<bool>,
    /// Becomes `true` once the server task has returned, for callers that wait for the end.
    stopped: watch::Receiver<bool>,
}

impl Serving {
    /// Starts serving `router` on `listener` in a background task.
    ///
    /// Must be called from within a tokio runtime.
    pub(crate) fn start(listener: TcpListener, router: Router) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, mut stop_rx) = watch::channel(false);
        let (stopped_tx, stopped) = watch::channel(false);
        tokio::spawn(async move {
            let signal = async move {
                // An error means every handle is gone without asking to stop: keep serving
                // until the runtime ends, as a spawned task would, rather than vanish under
                // a caller that kept only the URL.
                if stop_rx.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            let result = axum::serve(listener, router)
                .with_graceful_shutdown(signal)
                .await;
            if let Err(error) = result {
                tracing::error!(%addr, %error, "emulator server failed");
            }
            stopped_tx.send_replace(true);
        });
        Ok(Self {
            addr,
            stop,
            stopped,
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks the server to stop accepting connections and to finish the requests in flight.
    pub(crate) fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once the server task has finished.
    pub(crate) async fn stopped(&self) {
        let mut stopped = self.stopped.clone();
        // An error means the server task is gone, which is what we wait for.
        let _ = stopped.wait_for(|done| *done).await;
    }
}
