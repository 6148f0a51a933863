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

use tokio::io::{AsyncRead, AsyncWrite};

use crate::activity::{Activity, Quiet};

/// Copies both ways between `client` and `upstream` until either side closes, an error, or
/// `idle` passes with nothing moving on the client connection (`activity`); closed between
/// 1 and 1.25 times `idle` after the last byte.
pub async fn splice<A, B>(mut client: A, mut upstream: B, idle: Duration, activity: Arc<Activity>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut quiet = Quiet::default();
    loop {
        tokio::select! {
            _ = &mut copy => return,
            () = tokio::time::sleep(tick) => if quiet.over(&activity, idle) {
                return;
            },
        }
    }
}
