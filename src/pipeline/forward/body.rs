//! The request body on its way upstream: refused past `max_request_body`, and the upstream
//! `timeout` extended only while it moves.

use super::*;

/// The request body, refused once it passes `max`.
pub(super) struct LimitedBody {
    pub(super) inner: Incoming,
    pub(super) max: u64,
    /// Bytes passed on so far (at most `max`).
    pub(super) read: u64,
    /// Held while the body is being forwarded (dropped at its end).
    pub(super) open: Option<BodyOpen>,
    /// When the body last moved (see [`BodyProgress`]).
    pub(super) progress: Option<Arc<BodyProgress>>,
    /// Held while hyper may still send the body ([`crate::upstream::Sending`]).
    pub(super) _sending: Option<Arc<()>>,
}

/// When a request body last passed a frame on (nanoseconds since the request was sent on), and
/// how much of it: the upstream `timeout` ("until response headers") counts from the end of
/// the request, so an upload that takes longer than it is not cut off while it still moves.
/// Two relaxed stores per body frame, only for requests with a body.
pub(super) struct BodyProgress {
    pub(super) since: std::time::Instant,
    pub(super) last: std::sync::atomic::AtomicU64,
    pub(super) bytes: std::sync::atomic::AtomicU64,
}

/// The slowest upload that keeps extending the upstream `timeout`: each byte buys this much
/// time (1 KiB/s), so a client trickling a byte now and then cannot hold an upstream request,
/// and a connection slot, open for ever.
const MIN_UPLOAD_NANOS_PER_BYTE: u64 = 1_000_000_000 / 1024;

impl BodyProgress {
    fn moved(&self, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(n, Relaxed);
        self.bytes.store(bytes, Relaxed);
    }

    /// The request's end for the upstream `timeout`: the body's last frame, but no later than
    /// what the bytes so far have earned at [`MIN_UPLOAD_NANOS_PER_BYTE`].
    fn end(&self) -> std::time::Instant {
        use std::sync::atomic::Ordering::Relaxed;
        let last = Duration::from_nanos(self.last.load(Relaxed));
        let earned = Duration::from_nanos(
            self.bytes
                .load(Relaxed)
                .saturating_mul(MIN_UPLOAD_NANOS_PER_BYTE),
        );
        self.since + last.min(earned)
    }
}

/// `fut` within `timeout` of the request's end: from `sent`, or, while a request body is still
/// moving (at 1 KiB/s on average at least), from its last frame. `None` when it ran out.
pub(super) async fn within<F: std::future::Future>(
    fut: F,
    sent: std::time::Instant,
    timeout: Duration,
    progress: Option<&BodyProgress>,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut deadline = sent + timeout;
    loop {
        match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), fut.as_mut()).await
        {
            Ok(out) => return Some(out),
            Err(_) => {
                let later = progress.map(|p| p.end() + timeout);
                match later {
                    Some(d) if d > deadline => deadline = d,
                    _ => return None,
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct BodyTooLarge;

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body over max_request_body")
    }
}

impl std::error::Error for BodyTooLarge {}

/// The client's request body could not be read (bad chunked framing, a connection gone).
#[derive(Debug)]
pub struct ClientBodyError(hyper::Error);

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("reading the request body failed")
    }
}

impl ClientBodyError {
    /// The body was cut short by the client going away (its connection closed or reset
    /// before the length it announced), not framed badly.
    pub(super) fn client_left(&self) -> bool {
        use std::error::Error as _;
        self.0.is_incomplete_message()
            || self
                .0
                .source()
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::UnexpectedEof
                    )
                })
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    if n > self.max - self.read {
                        self.read = self.max;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.read += n;
                }
                if let Some(p) = &self.progress {
                    p.moved(self.read);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(ClientBodyError(e))))),
            Poll::Ready(None) => {
                self.open = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
