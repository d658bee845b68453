//! A body that tells an [`Observer`] how each poll of it went. The connections' idle watch
//! (`server::idle`) learns from a request's and an answer's body whether the request waits
//! on its client, and the proxy's upload timing (`proxy::upload`) whether it is the
//! upstream's turn; both read it off the polls, as this wrapper reports them.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};

/// What a poll of a body came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Polled {
    /// Nothing yet: the body's source has not sent its next part.
    Pending,
    /// A part (or an error) was handed to the poller.
    Part,
    /// The body has ended.
    End,
}

/// Told of every poll of an [`Observed`] body.
pub(crate) trait Observer {
    fn polled(&self, polled: Polled);
}

impl<O: Observer + ?Sized> Observer for Arc<O> {
    fn polled(&self, polled: Polled) {
        (**self).polled(polled);
    }
}

/// `body`, reporting each poll to `observer` (which lives as long as the body).
pub(crate) struct Observed<B, O> {
    body: B,
    observer: O,
}

impl<B, O> Observed<B, O> {
    pub(crate) fn new(body: B, observer: O) -> Self {
        Self { body, observer }
    }
}

impl<B, O> http_body::Body for Observed<B, O>
where
    B: http_body::Body + Unpin,
    O: Observer + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        this.observer.polled(match &polled {
            Poll::Pending => Polled::Pending,
            Poll::Ready(Some(_)) => Polled::Part,
            Poll::Ready(None) => Polled::End,
        });
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
