//! An upgraded connection (WebSocket) spliced to the upstream's, closed once neither side has
//! sent anything for the server's `idle_timeout` (as nginx's `proxy_read_timeout` does): a
//! quiet tunnel would otherwise stay open for ever. Applications that keep tunnels open while
//! quiet send WebSocket pings more often than that.
//!
//! Traffic is seen through the client connection's [`Activity`]: its IO marks every read and
//! write, which covers both directions of the tunnel. The connection's own watcher has ended
//! with the HTTP connection, so the tunnel looks at it the same way, a few times per timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::activity::{Activity, Quiet};

/// Copies both ways between `client` and `upstream` until both sides have closed, an error,
/// or `idle` passes with nothing moving on the client connection (`activity`); closed between
/// 1 and 1.25 times `idle` after the last byte. Once one side has closed, its end is passed on
/// and the other side's data still in flight is delivered, but the tunnel closes as soon as
/// nothing has moved for [`LINGER`] (at most `idle`): a WebSocket has no use for a half-closed
/// connection, and a peer that keeps its end open without sending would otherwise hold the
/// tunnel, and its place among `max_connections`, until the idle timeout.
pub async fn splice<A, B>(client: A, upstream: B, idle: Duration, activity: Arc<Activity>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut upstream_rd, mut upstream_wr) = tokio::io::split(upstream);
    let up = async {
        let _ = tokio::io::copy(&mut client_rd, &mut upstream_wr).await;
        let _ = upstream_wr.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut upstream_rd, &mut client_wr).await;
        let _ = client_wr.shutdown().await;
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let mut quiet = Quiet::default();
    loop {
        let limit = if up_done || down_done {
            LINGER.min(idle)
        } else {
            idle
        };
        let tick = (limit / 4).max(Duration::from_millis(10));
        tokio::select! {
            // The linger counts from the close: the quiet before it was the idle one's.
            () = &mut up, if !up_done => {
                up_done = true;
                quiet = Quiet::default();
            }
            () = &mut down, if !down_done => {
                down_done = true;
                quiet = Quiet::default();
            }
            () = tokio::time::sleep(tick) => if quiet.over(&activity, limit) {
                return;
            },
        }
        if up_done && down_done {
            return;
        }
    }
}

/// How long a tunnel one side has closed stays open with nothing moving.
pub const LINGER: Duration = Duration::from_secs(1);
