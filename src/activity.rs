//! What a connection's watcher knows about it: whether bytes moved (the idle timeout) and
//! whether an HTTP/1 request head is being read and since when (the header read timeout).
//!
//! The connection's IO ([`Activity::read`], [`Activity::wrote`]) and the request handler
//! ([`Activity::request_started`], [`Activity::part_done`]) update it with a few atomic
//! operations per request; the watcher task looks at it once per tick. This replaces hyper's
//! own header timer, which costs a timer per request and, as it starts when hyper begins to
//! wait for a head, also closed keep-alive connections after `header_read_timeout` of
//! quiet, well before `idle_timeout`.
//!
//! A head is being read from the connection's start until the first request reaches the
//! handler, and again from the first byte read after a request is done (the handler has
//! answered and the request body, if forwarded, has been sent) until the next one reaches
//! it. HTTP/2 connections and upgraded ones (WebSocket) are not watched for heads.

use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU8,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reading a request head (since `head_tick`).
const READING_HEAD: u8 = 0;
/// A request is being handled, or its body forwarded.
const IN_REQUEST: u8 = 1;
/// Between requests: quiet, or answered and waiting for the next head's first byte.
const BETWEEN: u8 = 2;
/// No heads to watch: a connection upgraded to another protocol.
const UNWATCHED: u8 = 3;
/// HTTP/2, past its first request: idle when no stream is open and none began or ended for
/// `idle_timeout` (bytes alone, PINGs say, are no activity).
const H2: u8 = 4;
/// The largest write taken for HTTP/2 control frames only (PING and SETTINGS acknowledgements
/// of 9–17 bytes, WINDOW_UPDATEs, a few of them together): a larger one carries data to the
/// client. A client that opens its window by less than this per `idle_timeout` has all but
/// stopped reading.
const CONTROL_WRITE: usize = 256;

#[derive(Debug)]
pub struct Activity {
    /// Bytes moved (either way) since the watcher last looked.
    moved: AtomicBool,
    phase: AtomicU8,
    /// The watcher's tick count when the head being read began.
    head_tick: AtomicU32,
    /// Ticks of the watcher so far.
    tick: AtomicU32,
    /// Parts of the current request still open: its handler, and its body while forwarded.
    open: AtomicU8,
    /// The last write or flush to the client could not complete: the client is not taking
    /// what is sent (as opposed to a response with nothing to send, such as a quiet stream).
    blocked: AtomicBool,
    /// HTTP/2: streams open (a request in the handler, or its response body on its way).
    streams: AtomicU32,
    /// HTTP/2: open streams whose response body gave a frame that waits to be sent (the
    /// client's flow-control window is shut: it is not reading).
    blocked_streams: AtomicU32,
    /// HTTP/2: a stream began or ended, or a response body gave a frame, since the watcher
    /// last looked.
    streamed: AtomicBool,
    /// More than control frames were written to the client since the watcher last looked: a
    /// stream waiting on its client's window is moving, however slowly.
    sent_data: AtomicBool,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            moved: AtomicBool::new(false),
            // The first head is due from the start.
            phase: AtomicU8::new(READING_HEAD),
            head_tick: AtomicU32::new(0),
            tick: AtomicU32::new(0),
            open: AtomicU8::new(0),
            blocked: AtomicBool::new(false),
            streams: AtomicU32::new(0),
            blocked_streams: AtomicU32::new(0),
            streamed: AtomicBool::new(false),
            sent_data: AtomicBool::new(false),
        }
    }
}

impl Activity {
    /// Bytes were read from the client.
    pub fn read(&self) {
        // A flag the watcher swaps once per tick: no ordering with the phase needed.
        self.moved.store(true, Relaxed);
        if self.phase.load(SeqCst) == BETWEEN {
            // The tick first, so the watcher never sees the new phase with an old tick.
            self.head_tick.store(self.tick.load(SeqCst), SeqCst);
            let _ = self
                .phase
                .compare_exchange(BETWEEN, READING_HEAD, SeqCst, SeqCst);
        }
    }

    /// Bytes were written to the client.
    pub fn wrote(&self, n: usize) {
        self.moved.store(true, Relaxed);
        self.blocked.store(false, Relaxed);
        if n > CONTROL_WRITE {
            self.sent_data.store(true, Relaxed);
        }
    }

    /// A write or flush to the client is pending (`true`: its buffers are full) or has
    /// completed (`false`).
    pub fn write_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Relaxed);
    }

    /// Whether the client is not taking what is written to it.
    pub fn is_write_blocked(&self) -> bool {
        self.blocked.load(Relaxed)
    }

    /// A request head reached the handler. HTTP/2 connections are watched for heads no more,
    /// and for streams from then on (see [`Activity::stream_open`]).
    pub fn request_started(&self, http2: bool) {
        if http2 {
            self.phase.store(H2, SeqCst);
        } else if self.phase.load(SeqCst) != UNWATCHED {
            self.open.store(1, SeqCst);
            self.phase.store(IN_REQUEST, SeqCst);
        }
    }

    /// The request's body is being forwarded: the request is not done before it is. The
    /// guard marks that part done when dropped.
    pub fn body_forwarded(self: &Arc<Self>) -> BodyOpen {
        self.open.fetch_add(1, SeqCst);
        BodyOpen(Arc::clone(self))
    }

    /// One part of the current request is done (the handler has answered, or the body has
    /// been forwarded); when none is left, the connection is between requests.
    pub fn part_done(&self) {
        if self.open.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)) == Ok(1) {
            let _ = self
                .phase
                .compare_exchange(IN_REQUEST, BETWEEN, SeqCst, SeqCst);
        }
    }

    /// An HTTP/2 stream is open until the guard is dropped: with the response body that
    /// ends it, or with the handler of a request abandoned before its answer.
    pub fn stream_open(self: &Arc<Self>) -> StreamOpen {
        self.streams.fetch_add(1, SeqCst);
        self.streamed.store(true, Relaxed);
        StreamOpen {
            activity: Arc::clone(self),
            blocked: false,
        }
    }

    /// Whether this is an HTTP/2 connection, idle by its streams (not its bytes).
    pub fn is_h2(&self) -> bool {
        self.phase.load(SeqCst) == H2
    }

    /// HTTP/2: whether a stream is open that is not waiting on the client (its handler or
    /// upstream is at work, or a quiet event stream has nothing to send); and whether a stream
    /// began, ended or sent something since the last call.
    pub fn take_streamed(&self) -> (bool, bool) {
        let open = self.streams.load(SeqCst);
        let busy = open > self.blocked_streams.load(SeqCst);
        // A stream waiting on its client's window moves while data is written to it.
        let sent = self.sent_data.swap(false, Relaxed) && open > 0;
        (busy, self.streamed.swap(false, Relaxed) || sent)
    }

    /// HTTP/2: streams are open and every one waits on a client that is not reading.
    pub fn h2_stalled(&self) -> bool {
        let open = self.streams.load(SeqCst);
        self.is_h2() && open > 0 && self.blocked_streams.load(SeqCst) >= open
    }

    /// The connection now carries another protocol: no more heads.
    pub fn upgraded(&self) {
        self.phase.store(UNWATCHED, SeqCst);
    }

    /// An HTTP/1 connection whose request has been answered (or that has none): what is left
    /// in flight is a response body on its way to the client. Not while a handler still waits
    /// on the upstream, nor on HTTP/2 and upgraded connections (not watched).
    pub fn answered(&self) -> bool {
        matches!(self.phase.load(SeqCst), BETWEEN | READING_HEAD)
    }

    /// An HTTP/1 request head is being read (begun, or due on a new connection).
    pub fn reading_head(&self) -> bool {
        self.phase.load(SeqCst) == READING_HEAD
    }

    /// Whether bytes moved since the last call.
    pub fn take_moved(&self) -> bool {
        self.moved.swap(false, Relaxed)
    }

    /// Counts `n` ticks that passed before the watcher began (the connection's PROXY header
    /// and TLS handshake): the first head's time runs from the connection's start.
    pub fn skip_ticks(&self, n: u32) {
        self.tick.fetch_add(n, SeqCst);
    }

    /// One watcher tick; true when a head has been read for `limit` ticks or more, counted
    /// from the end of the tick it began in (so at least `limit` whole ticks of time).
    pub fn tick_head_overdue(&self, limit: u32) -> bool {
        let now = self.tick.fetch_add(1, SeqCst).wrapping_add(1);
        self.phase.load(SeqCst) == READING_HEAD
            && now.wrapping_sub(self.head_tick.load(SeqCst)) > limit
    }
}

/// Idle detection over [`Activity::take_moved`], looked at once per tick by whoever watches the
/// connection (its watcher, then the tunnel of an upgraded one).
pub struct Quiet {
    since: Instant,
}

impl Default for Quiet {
    /// Quiet from now.
    fn default() -> Quiet {
        Quiet {
            since: Instant::now(),
        }
    }
}

impl Quiet {
    /// One look: true once nothing has moved for `idle`. An HTTP/2 connection moves when a
    /// stream begins, ends or sends something, and is never quiet with a stream open that
    /// does not wait on the client (a quiet event stream, say): PINGs and other frames alone
    /// do not keep it, nor streams whose client has stopped reading.
    pub fn over(&mut self, activity: &Activity, idle: Duration) -> bool {
        let now = Instant::now();
        let moved = if activity.is_h2() {
            let (busy, streamed) = activity.take_streamed();
            busy || streamed
        } else {
            activity.take_moved()
        };
        if moved {
            self.since = now;
            false
        } else {
            now.duration_since(self.since) >= idle
        }
    }
}

/// An open HTTP/2 stream ([`Activity::stream_open`]), closed when dropped; its response body
/// says when it waits on the client.
#[derive(Debug)]
pub struct StreamOpen {
    activity: Arc<Activity>,
    /// A frame of the body waits to be sent.
    blocked: bool,
}

impl StreamOpen {
    /// The body gave a frame: until it is asked for the next, the frame waits on the client
    /// (hyper asks again once the stream's flow-control window lets it send).
    pub fn gave_frame(&mut self) {
        self.activity.streamed.store(true, Relaxed);
        if !self.blocked {
            self.blocked = true;
            self.activity.blocked_streams.fetch_add(1, SeqCst);
        }
    }

    /// The body is asked for its next frame: nothing waits on the client.
    pub fn asked(&mut self) {
        if self.blocked {
            self.blocked = false;
            self.activity.blocked_streams.fetch_sub(1, SeqCst);
        }
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.asked();
        self.activity.streams.fetch_sub(1, SeqCst);
        self.activity.streamed.store(true, Relaxed);
    }
}

/// Marks a forwarded request body done when dropped ([`Activity::body_forwarded`]).
#[derive(Debug)]
pub struct BodyOpen(Arc<Activity>);

impl Drop for BodyOpen {
    fn drop(&mut self) {
        self.0.part_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ticks until the watcher calls the head overdue, with at most `max` ticks.
    fn ticks_until_overdue(a: &Activity, limit: u32, max: u32) -> Option<u32> {
        (1..=max).find(|_| a.tick_head_overdue(limit))
    }

    #[test]
    fn the_first_head_is_due_from_the_start() {
        let a = Activity::default();
        assert_eq!(ticks_until_overdue(&a, 4, 10), Some(5));
    }

    #[test]
    fn quiet_between_requests_is_not_a_slow_head() {
        let a = Arc::new(Activity::default());
        a.read();
        a.request_started(false);
        a.part_done();
        assert_eq!(ticks_until_overdue(&a, 4, 50), None);
        // The next head's first byte starts the clock.
        a.read();
        assert_eq!(ticks_until_overdue(&a, 4, 10), Some(5));
    }

    #[test]
    fn a_body_still_forwarded_keeps_the_request_open() {
        let a = Arc::new(Activity::default());
        a.request_started(false);
        let body = a.body_forwarded();
        a.part_done(); // the handler answered early
        a.read(); // body bytes
        assert_eq!(ticks_until_overdue(&a, 4, 50), None);
        drop(body);
        assert_eq!(ticks_until_overdue(&a, 4, 50), None);
        a.read();
        assert_eq!(ticks_until_overdue(&a, 4, 10), Some(5));
    }

    #[test]
    fn http2_and_upgraded_connections_are_not_watched() {
        let a = Activity::default();
        a.request_started(true);
        a.read();
        assert_eq!(ticks_until_overdue(&a, 4, 50), None);
        let b = Activity::default();
        b.request_started(false);
        b.upgraded();
        b.part_done();
        b.read();
        assert_eq!(ticks_until_overdue(&b, 4, 50), None);
    }
}
