//! One body type for everything the gateway sends: streamed upstream bodies and small
//! gateway-made ones.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// An HTTP/2 response body, its stream counted open until it has been sent (or dropped
/// unsent), and known to wait on the client while a frame it gave is not yet sent.
pub fn on_stream(inner: Body, open: crate::activity::StreamOpen) -> Body {
    OnStream { inner, open }.boxed()
}

struct OnStream {
    inner: Body,
    open: crate::activity::StreamOpen,
}

impl http_body::Body for OnStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.open.asked();
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
            self.open.gave_frame();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
