//! Listeners and connections: accept (bounded by `max_connections`), optional PROXY
//! protocol, TLS handshake, hyper-util's auto HTTP/1.1 + HTTP/2 server with the header-read
//! and idle timeouts enforced, and a graceful drain on shutdown.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::activity::{Activity, Quiet};
use crate::config::Config;
use crate::pipeline::client_ip::{self, Proxied};
use crate::pipeline::Conn;
use crate::proxy_protocol::Source;
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({listener} listener, {key}): {source}")]
    Bind {
        listener: &'static str,
        key: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// A running gateway: its bound addresses and the handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub redirect_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The admin listener, stopped after the drain (it answers `/readyz` 503 during it).
    admin_task: Option<JoinHandle<()>>,
}

impl Running {
    /// Stop accepting, let in-flight requests finish (up to `shutdown_grace`), then return.
    pub async fn shutdown(self) {
        self.begin_shutdown();
        self.wait().await;
    }

    /// A receiver that flips to `true` when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Begin the drain without waiting for it.
    pub fn begin_shutdown(&self) {
        self.state.draining.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
    }

    /// Wait for every listener task to finish (after `begin_shutdown`).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(t) = self.admin_task {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Bind one listener; an error names which (`main`, `admin`, `redirect`) and its config key.
fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    let key = match listener {
        "admin" => "server.admin_listen",
        "redirect" => "server.redirect_http",
        _ => "server.listen",
    };
    let e = |source| ServeError::Bind {
        listener,
        key,
        addr,
        source,
    };
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(e)?;
    sock.set_reuseaddr(true).map_err(e)?;
    sock.bind(addr).map_err(e)?;
    sock.listen(4096).map_err(e)
}

/// Bind every listener and start serving. Returns once the listeners are bound.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    crate::metrics::install();
    let main = bind("main", config.server.listen)?;
    let admin = config
        .server
        .admin_listen
        .map(|a| bind("admin", a))
        .transpose()?;
    let redirect = config
        .server
        .redirect_http
        .map(|a| bind("redirect", a))
        .transpose()?;
    let state = State::new(config).await.map_err(ServeError::Setup)?;
    let (tx, rx) = watch::channel(false);
    let addr = main
        .local_addr()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let mut tasks = vec![tokio::spawn(accept_loop(main, state.clone(), rx.clone()))];
    let (admin_addr, admin_task) = match admin {
        Some(l) => (
            l.local_addr().ok(),
            Some(tokio::spawn(crate::admin::serve(l, state.clone()))),
        ),
        None => (None, None),
    };
    let redirect_addr = match redirect {
        Some(l) => {
            let a = l.local_addr().ok();
            tasks.push(tokio::spawn(redirect_loop(
                l,
                addr.port(),
                state.clone(),
                rx.clone(),
            )));
            a
        }
        None => None,
    };
    tasks.push(tokio::spawn(prune_loop(state.clone(), rx)));
    let admin_shown = admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(listen = %addr, admin = %admin_shown, tls = state.active.load().tls.is_some(), "iptgate listening");
    Ok(Running {
        addr,
        admin_addr,
        redirect_addr,
        state,
        shutdown: tx,
        tasks,
        admin_task,
    })
}

async fn prune_loop(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.changed() => return,
        }
        let active = state.active.load();
        active.limiters.prune();
        if let Some(g) = &active.login {
            g.prune();
        }
        state.store.prune();
        state.pools.sweep();
        crate::metrics::upkeep();
    }
}

/// The HTTP servers a connection can be given: on TLS, ALPN has chosen the protocol and the
/// connection goes straight to HTTP/1.1 or HTTP/2; on plain HTTP the first bytes tell
/// (HTTP/1.1, or HTTP/2 with prior knowledge).
struct Servers {
    sniff: auto::Builder<TokioExecutor>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

/// Which of [`Servers`] serves a connection.
#[derive(Clone, Copy)]
enum Proto {
    Sniff,
    H1,
    H2,
}

/// HTTP/1 read buffer and HTTP/2 header list limits, the same on every server.
const MAX_BUF: usize = 64 * 1024;
/// Concurrent HTTP/2 streams per connection.
const MAX_STREAMS: u32 = 256;

fn servers(idle: Duration) -> Servers {
    // HTTP/1: the header read timeout is kept by the connection's watcher (see `activity`):
    // hyper's own costs a timer per request and also runs while a keep-alive connection is
    // quiet, closing it long before `idle_timeout`. On TLS, a response's head and body are
    // written as one buffer (`writev(false)`): rustls copies them into its record anyway,
    // and the queue of slices cost more than the copy.
    // HTTP/2: `idle_timeout` drains a quiet connection with GOAWAY and a PING, and the drain
    // ends when the PING is answered: a peer that has gone (a dropped NAT entry, a client
    // that vanished without a reset) never answers, and would hold its slot for good. So a
    // connection with nothing read for twice `idle_timeout` is pinged, and closed when the
    // answer does not come within `idle_timeout` (at most 20 s). Not sooner: a ping answered
    // is traffic, and would keep an idle connection from ever being idle.
    let ping_after = idle.saturating_mul(2).max(Duration::from_secs(1));
    let ping_wait = idle.clamp(Duration::from_secs(1), Duration::from_secs(20));
    let mut sniff = auto::Builder::new(TokioExecutor::new());
    sniff
        .http1()
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(MAX_BUF);
    sniff
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(ping_after)
        .keep_alive_timeout(ping_wait)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_BUF as u32);
    let mut h1 = http1::Builder::new();
    h1.header_read_timeout(None)
        .keep_alive(true)
        .writev(false)
        .max_buf_size(MAX_BUF);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .keep_alive_interval(ping_after)
        .keep_alive_timeout(ping_wait)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_BUF as u32);
    Servers { sniff, h1, h2 }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let first = state.active.load_full();
    let tls_mode = first.tls.is_some();
    let mut acceptor = Acceptor::new(listener, first.config.server.max_connections, "main");
    let servers = Arc::new(servers(first.config.server.idle_timeout));
    drop(first);
    while let Some((permit, stream, peer)) = acceptor.next(&mut stop).await {
        let state = state.clone();
        let servers = servers.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let slot = Slot::take(permit, &state);
            connection(stream, peer, tls_mode, &state, &servers, stop, slot).await;
        });
    }
    drop(acceptor);
    // Drain: connections see the stop signal and close after their in-flight requests, for
    // the grace of the config in force now (a reload may have changed it).
    let grace = state.active.load().config.server.shutdown_grace;
    let deadline = Instant::now() + grace;
    // WebSocket tunnels have no request to finish: they end with the process.
    // `connections` first: a tunnel closing between the two reads is then still counted
    // (its mark goes before its slot), and the drain waits a tick more, never less.
    let busy = || {
        let connections = state.connections.load(Ordering::SeqCst);
        connections.saturating_sub(state.tunnels.load(Ordering::SeqCst))
    };
    while busy() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = busy();
    if left > 0 {
        tracing::warn!(
            connections = left,
            "shutdown grace over: closing remaining connections"
        );
    }
}

/// A listener's accept loop, up to `max_connections` at once: the main listener and the
/// redirect one each have their own.
struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    /// Its name in warnings.
    name: &'static str,
    /// When an accept failure was last warned of, and the failures since.
    warned: Option<Instant>,
    failures: u64,
}

impl Acceptor {
    fn new(listener: TcpListener, max_connections: usize, name: &'static str) -> Acceptor {
        Acceptor {
            listener,
            permits: Arc::new(Semaphore::new(max_connections)),
            name,
            warned: None,
            failures: 0,
        }
    }

    /// The next connection with its place, once one is free; `None` when the gateway stops.
    /// A failed accept (out of file descriptors, say) is warned of at most once a second, with
    /// the count since the last warning, and waited out a moment: retrying at once would spin.
    async fn next(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
        let permit = tokio::select! {
            p = self.permits.clone().acquire_owned() => p.ok()?,
            _ = stop.changed() => return None,
        };
        loop {
            tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((stream, peer)) => return Some((permit, stream, peer)),
                    Err(e) => {
                        self.failures += 1;
                        if self.warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                            tracing::warn!(listener = self.name, error = %e, failures = self.failures, "accept failed");
                            self.warned = Some(Instant::now());
                            self.failures = 0;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                _ = stop.changed() => return None,
            }
        }
    }
}

/// With `proxy_protocol = true`: what the PROXY header a trusted proxy starts with says (a
/// `LOCAL` one, the balancer's own connection, is as none); `Err` when the connection is to be closed (a
/// trusted proxy's header malformed, or missing where `required`; one from an untrusted peer).
async fn proxy_preamble(
    stream: &mut TcpStream,
    peer: SocketAddr,
    cfg: &crate::config::Config,
    required: bool,
    deadline: Instant,
) -> Result<Proxied, ()> {
    if !cfg.client_ip.proxy_protocol {
        return Ok(Proxied::No);
    }
    let handshake_timeout = deadline.saturating_duration_since(Instant::now());
    if client_ip::is_trusted(peer.ip(), &cfg.client_ip) {
        if !required && !starts_with_proxy(stream, handshake_timeout).await? {
            return Ok(Proxied::No);
        }
        // Closed (or reset) before its first byte: a TCP health check (a balancer's probe, a
        // Kubernetes `tcpSocket`), not a header to refuse.
        if required
            && matches!(
                tokio::time::timeout(handshake_timeout, stream.peek(&mut [0u8; 1])).await,
                Ok(Ok(0) | Err(_))
            )
        {
            tracing::debug!(peer = %peer.ip(), "connection closed before its PROXY header");
            return Err(());
        }
        let handshake_timeout = deadline.saturating_duration_since(Instant::now());
        match crate::proxy_protocol::read_header(stream, handshake_timeout).await {
            Ok(Source::Client(s)) => Ok(Proxied::Client(s.ip().to_canonical())),
            Ok(Source::Unknown) => Ok(Proxied::Unknown),
            Ok(Source::Local) => Ok(Proxied::No),
            Err(e) => {
                tracing::warn!(target: "security", peer = %peer.ip(), error = %e, "PROXY header refused");
                Err(())
            }
        }
    } else if starts_with_proxy(stream, handshake_timeout).await? {
        tracing::warn!(target: "security", peer = %peer.ip(), "PROXY header from an untrusted peer: connection closed");
        Err(())
    } else {
        Ok(Proxied::No)
    }
}

/// Whether the connection's first bytes are a PROXY signature. `Err` (close it) when `wait`
/// — the header read timeout — passes with nothing to tell (no byte, or a strict prefix of a
/// signature): the head it would begin is already late, and the connection is not kept for
/// a second timeout.
async fn starts_with_proxy(stream: &TcpStream, wait: Duration) -> Result<bool, ()> {
    match tokio::time::timeout(
        wait,
        crate::proxy_protocol::starts_with_proxy_signature(stream),
    )
    .await
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) | Err(_) => Err(()),
    }
}

/// A client connection's place among `max_connections`: counted in `state.connections` (the
/// active-connections gauge, and what a drain waits for) until dropped. The connection holds
/// it, and a WebSocket tunnel it turns into keeps it until the tunnel closes.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    state: Arc<State>,
}

impl Slot {
    fn take(permit: OwnedSemaphorePermit, state: &Arc<State>) -> Slot {
        // Sequentially consistent, as the tunnel marks: a drain reading `connections` and
        // then `tunnels` must never see a tunnel's slot gone and its mark still there.
        let n = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
        crate::metrics::connections(n);
        Slot {
            _permit: permit,
            state: state.clone(),
        }
    }
}

impl Slot {
    /// Marks the connection a tunnel while the guard lives: still counted, not waited for by
    /// a drain (a tunnel has no request to finish).
    pub fn tunnel(&self) -> TunnelMark {
        self.state.tunnels.fetch_add(1, Ordering::SeqCst);
        TunnelMark(self.state.clone())
    }
}

pub struct TunnelMark(Arc<State>);

impl Drop for TunnelMark {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let n = self.state.connections.fetch_sub(1, Ordering::SeqCst) - 1;
        crate::metrics::connections(n);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    tls_mode: bool,
    state: &Arc<State>,
    servers: &Servers,
    stop: watch::Receiver<bool>,
    slot: Slot,
) {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let active = state.active.load_full();
    let cfg = &active.config;
    let head = cfg.server.header_read_timeout;
    // The first request head is due `header_read_timeout` from the connection's start: the
    // PROXY header and the TLS handshake come out of that time, not on top of it.
    let deadline = started + head;
    let Ok(proxied) = proxy_preamble(&mut stream, peer, cfg, true, deadline).await else {
        return;
    };
    let mut conn = Conn::new(peer, proxied, tls_mode);
    conn.slot = Some(slot);
    let conn = Arc::new(conn);
    let w = Watch {
        stop,
        idle: cfg.server.idle_timeout,
        head,
        started,
    };
    let tls = active.tls.clone();
    drop(active);
    if tls_mode {
        let Some(tls) = tls.or_else(|| state.active.load().tls.clone()) else {
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, acceptor.accept(stream)).await {
            Ok(Ok(s)) => {
                // Without ALPN a TLS client speaks HTTP/1.1 (RFC 9113 §3.2: HTTP/2 over TLS
                // is negotiated).
                let proto = match s.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Proto::H2,
                    _ => Proto::H1,
                };
                serve_io(s, proto, conn, state, servers, w).await
            }
            Ok(Err(e)) => tracing::debug!(peer = %peer.ip(), error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(peer = %peer.ip(), "TLS handshake timed out"),
        }
    } else {
        serve_io(stream, Proto::Sniff, conn, state, servers, w).await;
    }
}

/// What the watcher of a connection needs besides the connection.
struct Watch {
    stop: watch::Receiver<bool>,
    idle: Duration,
    /// The header read timeout.
    head: Duration,
    /// When the connection began: the first head is due `head` from then.
    started: Instant,
}

/// Serve HTTP on one connection until it closes, goes idle, or the gateway drains; a request
/// head that takes longer than `header_read_timeout` (the first one counted from the start)
/// closes it. The timeouts are kept by [`watch_conn`] from the connection's [`Activity`].
async fn serve_io<S>(
    io: S,
    proto: Proto,
    conn: Arc<Conn>,
    state: &Arc<State>,
    servers: &Servers,
    w: Watch,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = conn.activity.clone();
    let io = TokioIo::new(Tracked {
        inner: io,
        activity: activity.clone(),
    });
    let (peer, hop) = (conn.peer.ip(), conn.hop);
    let st = state.clone();
    let svc = service_fn(move |req| crate::pipeline::handle(req, conn.clone(), st.clone()));
    let (tell, told) = oneshot::channel();
    tokio::spawn(watch_conn(activity, w, peer, tell));
    match proto {
        Proto::Sniff => {
            let c = servers.sniff.serve_connection_with_upgrades(io, svc);
            if let Some(Err(e)) = drive(c, told, |c| c.graceful_shutdown()).await {
                if let Some(e) = e.downcast_ref::<hyper::Error>() {
                    log_unparsed(e, hop, state);
                }
            }
        }
        Proto::H1 => {
            let c = servers.h1.serve_connection(io, svc).with_upgrades();
            if let Some(Err(e)) = drive(c, told, |c| c.graceful_shutdown()).await {
                log_unparsed(&e, hop, state);
            }
        }
        Proto::H2 => {
            let c = servers.h2.serve_connection(io, svc);
            drive(c, told, |c| c.graceful_shutdown()).await;
        }
    }
}

/// A request head hyper could not parse, which it answered itself (`400`, or `431` for one
/// too large) before any phase ran: still one access-log line, a `security` warning and a
/// count, as for the gateway's own `400`s. The client IP is the connection's (no header was
/// read); the method and path are unknown (`-`, empty).
fn log_unparsed(e: &hyper::Error, client: IpAddr, state: &State) {
    if !e.is_parse() && !e.is_parse_too_large() {
        return;
    }
    let status = if e.is_parse_too_large() { 431 } else { 400 };
    let out = crate::pipeline::Outcome {
        client_ip: Some(client),
        code: Some("bad_request"),
        cause: Some(e.to_string()),
        ..Default::default()
    };
    let active = state.active.load();
    let unknown = http::Method::from_bytes(b"-").unwrap_or_default();
    crate::access_log::record(&unknown, None, status, None, &out, &active, Instant::now());
}

/// Poll the connection `c` to its end, draining it (`drain`) or dropping it as its watcher
/// says. This task is woken several times per request; it then polls the connection and
/// the oneshot only, not the watcher's timers.
///
/// Returns how the connection ended, `None` when the watcher closed it.
async fn drive<C: Future>(
    c: C,
    mut told: oneshot::Receiver<Verdict>,
    drain: impl Fn(Pin<&mut C>),
) -> Option<C::Output> {
    let mut c = pin!(c);
    let mut closing = false;
    // After an idle drain: what is watched until the connection ends.
    let mut after_idle: Option<AfterIdle> = None;
    let tick = |idle: Duration| (idle / 4).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            biased;
            end = c.as_mut() => return Some(end),
            v = &mut told, if !closing => match v {
                Ok(Verdict::Close) => return None,
                Ok(Verdict::Idle(activity, idle, head)) => {
                    drain(c.as_mut());
                    closing = true;
                    after_idle = Some(AfterIdle {
                        activity,
                        idle,
                        head,
                        quiet: Quiet::default(),
                        head_since: None,
                    });
                }
                // Asked to drain, or the watcher is gone (the runtime is stopping).
                Ok(Verdict::Drain) | Err(_) => {
                    drain(c.as_mut());
                    closing = true;
                }
            },
            _ = sleep_if(after_idle.as_ref().map(|a| tick(a.idle.min(a.head)))) => {
                // A drain waits for the response in flight; on HTTP/1, an answered one whose
                // body moves no byte for another `idle_timeout` while a write to the client
                // is stuck (a client that stopped reading) is cut, as nginx's `send_timeout`
                // does, so that it cannot hold its connection for good. A response with
                // nothing to send (a quiet event stream) is not the client's doing and runs
                // on; a request still waiting on the upstream is the upstream `timeout`'s. On
                // HTTP/2, streams that all wait on a client that stopped reading (its
                // flow-control window shut) are cut the same way.
                // A head begun as the drain began (its first byte crossing the watcher's
                // verdict) is held to the header read timeout here, the watcher that kept it
                // having ended, and cut too when quiet for another `idle_timeout`.
                if let Some(a) = &mut after_idle {
                    if a.activity.reading_head() {
                        let since = *a.head_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > a.head {
                            return None;
                        }
                    } else {
                        a.head_since = None;
                    }
                    let stuck = a.activity.reading_head()
                        || (a.activity.answered() && a.activity.is_write_blocked())
                        || a.activity.h2_stalled();
                    if a.quiet.over(&a.activity, a.idle) && stuck {
                        return None;
                    }
                }
            }
        }
    }
}

/// What [`drive`] watches of a connection after its idle drain began.
struct AfterIdle {
    activity: Arc<Activity>,
    idle: Duration,
    /// The header read timeout.
    head: Duration,
    /// Quiet since when.
    quiet: Quiet,
    /// When a head was first seen being read since the drain began.
    head_since: Option<Instant>,
}

/// Sleeps `d`, or never ends: no timer is made for a branch that has none to wait for.
async fn sleep_if(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// What [`watch_conn`] tells a connection.
enum Verdict {
    /// A request head took longer than the header read timeout: close now.
    Close,
    /// Quiet for `idle_timeout`: finish the request in flight, then close; cut it if it moves
    /// nothing for another `idle_timeout`. With the idle and header read timeouts.
    Idle(Arc<Activity>, Duration, Duration),
    /// The gateway is stopping: finish the request in flight (within `shutdown_grace`), then
    /// close.
    Drain,
}

/// Watches one connection: closes it when a request head takes longer than `head`
/// (the header read timeout; the first head is due from the start, so a connection that
/// sends nothing is closed too), drains it after `idle` without traffic or when the gateway
/// stops. Ends when it has told the connection, or when the connection has ended (`tell`
/// closed).
///
/// It looks every quarter of the shorter timeout: a slow head is closed between 1 and 1.25
/// times the header read timeout after its first byte, never before.
async fn watch_conn(
    activity: Arc<Activity>,
    w: Watch,
    peer: IpAddr,
    mut tell: oneshot::Sender<Verdict>,
) {
    let Watch {
        mut stop,
        idle,
        head,
        started,
    } = w;
    if *stop.borrow() {
        let _ = tell.send(Verdict::Drain);
        return;
    }
    let tick = (idle.min(head) / 4).max(Duration::from_millis(10));
    // Whole ticks a head may take.
    let head_ticks = u32::try_from(head.as_nanos().div_ceil(tick.as_nanos())).unwrap_or(u32::MAX);
    // The first head's time began with the connection (its PROXY header, its TLS handshake).
    // Rounded up: the head is then closed between `head` and `head + tick` from the start.
    let spent = started.elapsed().as_nanos().div_ceil(tick.as_nanos());
    activity.skip_ticks(u32::try_from(spent).unwrap_or(u32::MAX));
    let mut quiet = Quiet::default();
    let verdict = loop {
        tokio::select! {
            _ = tell.closed() => return,
            _ = stop.changed() => break Verdict::Drain,
            _ = tokio::time::sleep(tick) => {
                if activity.tick_head_overdue(head_ticks) {
                    tracing::debug!(peer = %peer, "request head not received within header_read_timeout: connection closed");
                    break Verdict::Close;
                }
                // A head being read is the header read timeout's to close, never the idle
                // one's: the watcher ends with its verdict, and a head dribbled after it
                // would have no deadline left.
                if quiet.over(&activity, idle) && !activity.reading_head() {
                    break Verdict::Idle(activity.clone(), idle, head);
                }
            }
        }
    };
    let _ = tell.send(verdict);
}

/// An IO stream that tells the connection's [`Activity`] when bytes move. A flag store per
/// read or write: reading the clock there showed in profiles.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    /// After a write: bytes moved, or the client is not taking them (pending).
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.wrote(*n),
            Poll::Pending => self.activity.write_blocked(true),
            Poll::Ready(_) => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(&r);
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.activity.write_blocked(r.is_pending());
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The plain listener that sends every request to https (308, method and body kept). It
/// takes PROXY headers as the main listener does (a load balancer speaks it on both ports).
async fn redirect_loop(
    listener: TcpListener,
    https_port: u16,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    // Its own `max_connections`, so that neither listener's clients can take the other's
    // places; each connection answers one request (no keep-alive) within the header read
    // timeout, counted from its start.
    let max = state.active.load().config.server.max_connections;
    let mut acceptor = Acceptor::new(listener, max, "redirect");
    while let Some((permit, mut stream, peer)) = acceptor.next(&mut stop).await {
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let active = state.active.load_full();
            let head = active.config.server.header_read_timeout;
            let deadline = Instant::now() + head;
            // A trusted proxy's PROXY header is taken, not required: some load balancers speak
            // it on the TLS port only.
            if proxy_preamble(&mut stream, peer, &active.config, false, deadline)
                .await
                .is_err()
            {
                return;
            }
            drop(active);
            let svc = service_fn(
                move |req: http::Request<hyper::body::Incoming>| async move {
                    // The Location is built from the host the request names: an absolute-form
                    // target's (RFC 9112 §3.2.2: it wins over Host), else its one Host; a plain
                    // `host[:port]` (no userinfo, path or query smuggled in). None, or two
                    // Hosts: refused, as nothing says where to send the client.
                    let mut hosts = req.headers().get_all(http::header::HOST).iter();
                    let named = match (req.uri().authority(), hosts.next(), hosts.next()) {
                        (Some(a), _, _) => Some(a.as_str().as_bytes()),
                        (None, Some(v), None) => Some(v.as_bytes()),
                        _ => None,
                    };
                    let host = named
                        .filter(|h| crate::pipeline::valid_host(h))
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .map(|h| crate::pipeline::route::host_of(h).to_string())
                        .filter(|h| !h.is_empty());
                    // A lower-case method or CONNECT, refused as on the main listener.
                    let refused = crate::pipeline::method_problem(req.method()).is_some();
                    let Some(host) = host.filter(|_| !refused) else {
                        let mut resp = http::Response::new(crate::body::empty());
                        *resp.status_mut() = http::StatusCode::BAD_REQUEST;
                        return Ok::<_, std::convert::Infallible>(resp);
                    };
                    let port = if https_port == 443 {
                        String::new()
                    } else {
                        format!(":{https_port}")
                    };
                    // `OPTIONS *` (or any target not a path) goes to the root; an
                    // absolute-form target with a query and no path keeps its query.
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let pq = match pq.as_bytes().first() {
                        Some(b'/') => pq.to_string(),
                        Some(b'?') => format!("/{pq}"),
                        _ => "/".to_string(),
                    };
                    let loc = format!("https://{host}{port}{pq}");
                    let mut resp = http::Response::new(crate::body::empty());
                    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
                    if let Ok(v) = http::HeaderValue::from_str(&loc) {
                        resp.headers_mut().insert(http::header::LOCATION, v);
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                },
            );
            let left = deadline.saturating_duration_since(Instant::now());
            let serve = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(left)
                .keep_alive(false)
                .max_buf_size(MAX_BUF)
                .serve_connection(TokioIo::new(stream), svc);
            // Whole, within the header read timeout past the head's: a 308 is a few bytes.
            let _ = tokio::time::timeout(left + head, serve).await;
        });
    }
}
