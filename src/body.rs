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

/// A body that keeps `held` alive as long as itself: until it has been sent, or dropped
/// unsent (the HTTP/2 stream it answers stays open as long, see `Activity::stream_open`).
pub fn holding<G: Send + Sync + Unpin + 'static>(inner: Body, held: G) -> Body {
    Holding { inner, _held: held }.boxed()
}

struct Holding<G> {
    inner: Body,
    _held: G,
}

impl<G> http_body::Body for Holding<G>
where
    G: Send + Sync + Unpin + 'static,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        // `Body` is boxed, so `Unpin`: the field may be pinned anew.
        let this = self.get_mut();
        std::pin::Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
