//! An upgraded connection (WebSocket) spliced to the upstream's, closed once neither side has
//! sent anything for the server's `idle_timeout` (as nginx's `proxy_read_timeout` does): a
//! quiet tunnel would otherwise hold a connection slot for ever. Applications that keep
//! tunnels open while quiet send WebSocket pings more often than that.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Copies both ways between `a` and `b` until either side closes, an error, or `idle` passes
/// with no byte read from either.
pub async fn splice<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let since = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Tracked {
        inner: a,
        since,
        last: last.clone(),
    };
    let mut b = Tracked {
        inner: b,
        since,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let quiet_until = since + Duration::from_nanos(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            _ = &mut copy => return,
            () = tokio::time::sleep_until(quiet_until.into()) => {
                let moved = Duration::from_nanos(last.load(Ordering::Relaxed));
                if since.elapsed() >= moved + idle {
                    return;
                }
            }
        }
    }
}

/// An I/O object that records when it last read something (nanoseconds since `since`).
struct Tracked<T> {
    inner: T,
    since: Instant,
    last: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let n = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.last.store(n, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
