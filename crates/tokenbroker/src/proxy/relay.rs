//! The upstream's answer on its way to the client: relayed as it arrives, held "in use"
//! until its last byte, cut off when the upstream goes silent mid-body, and its connection
//! given back to the pool once read to the end; and what a failed exchange's error says.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use tokenbroker_core::token::InUse;
use tokio::time::{Instant, Sleep};

use super::headers;
use super::pool::Lease;
use super::references::References;

type BoxError = Box<dyn Error + Send + Sync>;

/// The upstream's answer for the client: its end-to-end headers, its body relayed as it
/// arrives. `in_use` keeps the token counted until the last byte is sent; a silence of
/// `idle` between two parts of the body ends it with an error (the client sees the
/// connection cut, as it would from the upstream). `lease`, the connection the answer came
/// on, goes back to its pool once the body has been read to its end.
pub(super) fn respond(
    answer: hyper::Response<Incoming>,
    lease: Lease,
    in_use: Option<InUse>,
    idle: Duration,
    references: &References,
) -> Response {
    let (mut parts, body) = answer.into_parts();
    headers::to_client(&mut parts.headers);
    references.localise(&mut parts.headers);
    let mut relay = Relay {
        body,
        lease: Some(lease),
        idle,
        silence: None,
        armed: false,
        _in_use: in_use,
    };
    if relay.body.is_end_stream() {
        relay.release();
    }
    Response::from_parts(parts, Body::new(relay))
}

/// Drops an answer that is not relayed (a rejection about to be retried), giving its
/// connection back when the answer had no body left to read.
pub(super) fn discard(answer: hyper::Response<Incoming>, lease: Lease) {
    if answer.body().is_end_stream() {
        lease.release();
    }
}

/// Whether a failed upstream request failed by a timeout (of the connection attempt).
pub(super) fn timed_out(error: &(dyn Error + 'static)) -> bool {
    sources(error).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// Whether a failed upstream request failed because the client's body went past its
/// limit (`upload::streamed`): the client's fault, not the upstream's.
pub(super) fn body_too_large(error: &(dyn Error + 'static)) -> bool {
    sources(error).any(|e| e.is::<http_body_util::LengthLimitError>())
}

/// Whether a failed upstream request failed because the client's streamed body broke off
/// or was malformed (hyper's server reports it as the body's error): the client's fault.
pub(super) fn client_body_failed(error: &(dyn Error + 'static)) -> bool {
    sources(error).any(|e| e.is::<axum::Error>())
}

/// The error and its causes, for the log (none of them quotes a header or a body).
pub(super) fn describe(error: &(dyn Error + 'static)) -> String {
    sources(error)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn sources<'a>(
    error: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

/// The upstream's body on its way to the client.
struct Relay {
    body: Incoming,
    /// The connection it comes on, until it has been read to the end.
    lease: Option<Lease>,
    /// How long the upstream may stay silent mid-body.
    idle: Duration,
    /// The deadline of the current silence, made only once the body first has to wait.
    silence: Option<Pin<Box<Sleep>>>,
    /// Whether `silence` counts from the current wait (else it is left from an earlier one).
    armed: bool,
    _in_use: Option<InUse>,
}

impl Relay {
    /// Gives the connection back; called once the body has been read to its end.
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }
}

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                // At the end, or known to be there (an answer of known length read whole,
                // before anyone polls for the end), the connection is free for the next
                // request. A broken body leaves it with hyper, which closes it.
                match &frame {
                    None => this.release(),
                    Some(Ok(_)) if this.body.is_end_stream() => this.release(),
                    Some(_) => {}
                }
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => {
                if !this.armed {
                    let deadline = Instant::now() + this.idle;
                    match &mut this.silence {
                        Some(silence) => silence.as_mut().reset(deadline),
                        None => this.silence = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    this.armed = true;
                }
                match this
                    .silence
                    .as_mut()
                    .map(|silence| silence.as_mut().poll(cx))
                {
                    Some(Poll::Ready(())) => Poll::Ready(Some(Err(
                        "the upstream was silent for longer than upstream_timeout mid-body".into(),
                    ))),
                    _ => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
