//! Emulated token issuers, run in-process on loopback by tokenbroker's integration tests and
//! its `demo`, and as the small `tokenbroker-emulator` binary.
//!
//! Each emulator is "the other side" that tests assert on, so it counts what it sees (logins,
//! peak issuances in flight, 401s served) instead of trusting the broker's view of itself.
//! There are three:
//!
//! - [`ControlRoom`]: an Automation Anywhere Control Room with single-session JWT logins and a
//!   work-item queue API.
//! - [`CappedPool`]: a Reltio-style OAuth2 `client_credentials` server that issues a distinct
//!   token per call but caps a client's live tokens and answers 429 past the cap.
//! - [`RotatingRefresh`]: an OAuth2 server that rotates the refresh token on every use and
//!   revokes the whole token family when a used one is replayed outside its reuse grace.
//!
//! What they share lives here and in private modules: the loopback server (`Serving` in
//! this file), the in-flight gauge (`in_flight`), the JWT helpers (`jwt`), and for the two
//! OAuth2 servers the form parsing, client authentication, error answers and protected API
//! of [`oauth2`].
//!
//! This crate owns the emulated HTTP contracts only; it knows nothing of the broker.

pub mod control_room;
mod in_flight;
mod jwt;
pub mod oauth2;

pub use control_room::{ControlRoom, ControlRoomBuilder, Counters, RunningControlRoom};
pub use oauth2::fingerprint;
pub use oauth2::pool::{CappedPool, CappedPoolBuilder, PoolCounters, RunningCappedPool};
pub use oauth2::refresh::{
    RefreshCounters, RotatingRefresh, RotatingRefreshBuilder, RunningRotatingRefresh,
};

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Gives an emulator's running handle what every handle has: [`addr`], [`url`],
/// [`shutdown`] and [`stopped`], and a `Debug` that shows only the address, since the state
/// behind a handle holds secrets and tokens. The handle needs a `serving: Arc<Serving>` field.
///
/// [`addr`]: Serving::addr
/// [`url`]: Serving::url
/// [`shutdown`]: Serving::shutdown
/// [`stopped`]: Serving::stopped
macro_rules! serving_handle {
    ($handle:ident) => {
        impl ::std::fmt::Debug for $handle {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($handle))
                    .field("addr", &self.addr())
                    .finish_non_exhaustive()
            }
        }

        impl $handle {
            /// The address it listens on.
            pub fn addr(&self) -> ::std::net::SocketAddr {
                self.serving.addr()
            }

            /// The base URL, such as `http://127.0.0.1:PORT`, without a trailing slash.
            pub fn url(&self) -> String {
                self.serving.url()
            }

            /// Stops accepting connections and lets the requests in flight finish.
            pub fn shutdown(&self) {
                self.serving.shutdown();
            }

            /// Resolves once the server has stopped after [`shutdown`](Self::shutdown).
            pub async fn stopped(&self) {
                self.serving.stopped().await;
            }
        }
    };
}
pub(crate) use serving_handle;

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
    /// Binds `127.0.0.1:0`, the address every emulator's `spawn()` serves on.
    pub(crate) async fn bind_loopback() -> io::Result<TcpListener> {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await
    }

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

    /// The base URL, such as `http://127.0.0.1:PORT`, without a trailing slash.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
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

/// Rounds a token lifetime to the nearest whole second, at least one, as a JWT `exp` and an
/// OAuth2 `expires_in` need: the emulators then expire tokens after exactly the lifetime they
/// announced.
pub(crate) fn whole_seconds(d: Duration) -> Duration {
    let rounded = d.as_secs() + u64::from(d.subsec_millis() >= 500);
    Duration::from_secs(rounded.max(1))
}

/// Waits `latency`, the configured time an issuance takes; returns at once for zero, without
/// a trip through the timer.
pub(crate) async fn pause(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_round_to_the_nearest_second_and_at_least_one() {
        assert_eq!(
            whole_seconds(Duration::from_millis(1_499)),
            Duration::from_secs(1)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(1_500)),
            Duration::from_secs(2)
        );
        assert_eq!(
            whole_seconds(Duration::from_secs(1_200)),
            Duration::from_secs(1_200)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(100)),
            Duration::from_secs(1)
        );
        assert_eq!(whole_seconds(Duration::ZERO), Duration::from_secs(1));
    }
}
