//! Upstream connection pools: HTTP/1.1 keep-alive connections per target, each carrying one
//! request at a time.
//!
//! A request takes the most recently used idle connection of its target (or opens one) and
//! the connection goes back when the response body has been read to its end, from inside the
//! body itself ([`PooledBody`]). So a request costs no pool task, no channel and no lock
//! beyond the idle list's, which is held only to push or pop. Each connection is driven by its
//! own task (hyper's `Connection`), spawned once when it opens.
//!
//! A request that an idle connection could not take — the upstream closed it while it sat in
//! the pool — is given back by hyper unsent and tried on the next connection. When the close
//! crosses the request on the wire (the upstream's keep-alive timeout ran out as it was
//! written), hyper has sent it and cannot give it back: an idempotent request without a body
//! (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) is then sent once more on a new
//! connection, as nginx and Go's transport do, provided its connection had sat idle for
//! [`REPLAY_AFTER_IDLE`] (keep-alive timeouts are longer than that; the copy this takes is
//! not worth making for connections in steady use). So an upstream's keep-alive timeout never
//! surfaces as a 502. Idle connections are dropped after [`IDLE_TIMEOUT`] and beyond
//! [`MAX_IDLE`] per target.

use std::collections::{HashMap, VecDeque};
use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::{Body, BoxError};
use crate::config::{Target, UpstreamConfig};

/// An idle connection is closed after this long unused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per target; the oldest go first.
pub const MAX_IDLE: usize = 256;
/// A connection idle this long may be closed by the upstream as a request is written on it:
/// a replayable request sent on one is kept, to be sent again on a new connection.
pub const REPLAY_AFTER_IDLE: Duration = Duration::from_millis(250);

/// Why a request got no response from the upstream.
#[derive(Debug)]
pub enum SendError {
    /// No connection within `connect_timeout`.
    ConnectTimeout,
    /// The TCP connect or the TLS handshake failed.
    Connect(std::io::Error),
    /// The HTTP exchange failed.
    Http(hyper::Error),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::ConnectTimeout => f.write_str("connect timed out"),
            SendError::Connect(_) => f.write_str("connect failed"),
            SendError::Http(_) => f.write_str("upstream exchange failed"),
        }
    }
}

impl StdError for SendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            SendError::ConnectTimeout => None,
            SendError::Connect(e) => Some(e),
            SendError::Http(e) => Some(e),
        }
    }
}

/// A failed send: the error, and the request when it was never sent (no connection could be
/// opened), for another target. Boxed, so that the result stays the size of a response.
#[derive(Debug)]
pub struct SendFail {
    pub err: SendError,
    pub unsent: Option<Box<Request<Body>>>,
}

impl From<SendError> for SendFail {
    fn from(err: SendError) -> SendFail {
        SendFail { err, unsent: None }
    }
}

struct Idle {
    tx: SendRequest<Body>,
    since: Instant,
}

/// The connections of one upstream target.
pub struct Pool {
    /// `host:port` to connect to.
    addr: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle: Mutex<VecDeque<Idle>>,
}

impl Pool {
    fn new(target: &Target, u: &UpstreamConfig) -> Result<Pool, String> {
        let host = target.authority.host();
        let port = target
            .authority
            .port_u16()
            .unwrap_or(if target.https { 443 } else { 80 });
        // `[::1]` in a URI is `::1` to connect to and to name.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tls = if target.https {
            let cfg = crate::tls::client_config(u.ca.as_deref())
                .map_err(|e| format!("upstreams.{}: {e}", u.name))?;
            let name = ServerName::try_from(bare.to_string())
                .map_err(|e| format!("upstreams.{}: bad TLS server name {bare:?}: {e}", u.name))?;
            Some((TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        Ok(Pool {
            addr: format!("{host}:{port}"),
            tls,
            connect_timeout: u.connect_timeout,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        // The list holds plain handles: a panic elsewhere cannot leave it inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `req` (origin-form URI) and returns the response, its body streaming from the
    /// connection, which rejoins the pool when the body ends. When no connection could be
    /// opened, nothing was sent and the request comes back in the error, for another target.
    ///
    /// `at`: when the request was sent on, already read from the clock; an idle connection's
    /// age is measured against it.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
        at: Instant,
    ) -> Result<Response<PooledBody>, SendFail> {
        let sending = req.extensions().get::<Sending>().cloned();
        loop {
            let taken = self.idle().pop_back();
            let Some(Idle { mut tx, since }) = taken else {
                break;
            };
            if tx.ready().await.is_err() {
                continue;
            }
            let again = (at.saturating_duration_since(since) >= REPLAY_AFTER_IDLE)
                .then(|| replayable(&req))
                .flatten();
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, tx, sending)),
                Err(mut e) => match (e.take_message(), again) {
                    // Never written: the connection was gone; the next one gets it.
                    (Some(unsent), _) => req = unsent,
                    // Written as the upstream closed the connection: once more, on a new one
                    // (the other idle ones are as old).
                    (None, Some(copy)) => {
                        tracing::debug!(error = %e.into_error(), "idle upstream connection closed under a request: sending it again on a new one");
                        req = copy;
                        break;
                    }
                    (None, None) => return Err(SendError::Http(e.into_error()).into()),
                },
            }
        }
        // Boxed: the connect future (TLS handshake state included) is kilobytes, and inline it
        // would be copied with every request's future, pooled or not.
        let mut tx = match Box::pin(self.connect()).await {
            Ok(tx) => tx,
            Err(err) => {
                return Err(SendFail {
                    err,
                    unsent: Some(Box::new(req)),
                })
            }
        };
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| SendFail::from(SendError::Http(e)))?;
        Ok(self.wrap(resp, tx, sending))
    }

    /// `host:port` this pool connects to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn wrap(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        tx: SendRequest<Body>,
        sending: Option<Sending>,
    ) -> Response<PooledBody> {
        let home = Some((tx, Arc::clone(self)));
        let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let mut body = resp.map(|inner| PooledBody {
            // As the access log decides: a body of known length up to its threshold is
            // logged with the head, as whole.
            logged_whole: !crate::access_log::logged_at_end(inner.size_hint().exact()),
            inner,
            home,
            sending,
        });
        if upgraded {
            // The connection now belongs to the upgraded protocol.
            body.body_mut().home = None;
        } else if body.body().inner.is_end_stream() {
            // Nothing to read (204, 304, HEAD, `Content-Length: 0`): back right away.
            body.body_mut().release();
        }
        body
    }

    fn put(&self, tx: SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle();
        while idle
            .front()
            .is_some_and(|i| idle.len() >= MAX_IDLE || now.duration_since(i.since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        idle.push_back(Idle { tx, since: now });
    }

    /// Drops connections idle longer than [`IDLE_TIMEOUT`] or already closed.
    fn sweep(&self) {
        let now = Instant::now();
        self.idle()
            .retain(|i| !i.tx.is_closed() && now.duration_since(i.since) <= IDLE_TIMEOUT);
    }

    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let open = async {
            let tcp = TcpStream::connect(self.addr.as_str())
                .await
                .map_err(SendError::Connect)?;
            tcp.set_nodelay(true).map_err(SendError::Connect)?;
            match &self.tls {
                None => handshake(tcp).await,
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(SendError::Connect)?;
                    handshake(tls).await
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, open)
            .await
            .map_err(|_| SendError::ConnectTimeout)?
    }
}

/// A copy of `req` to send again, when it may be: an idempotent method (RFC 9110 §9.2.2) and
/// no body.
fn replayable(req: &Request<Body>) -> Option<Request<Body>> {
    use http::Method;
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !idempotent || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(crate::body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// HTTP/1.1 over `io`; the connection's task is spawned here and ends when it closes.
async fn handshake<T>(io: T) -> Result<SendRequest<Body>, SendError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection closed with an error");
        }
    });
    Ok(tx)
}

/// A response body from a pooled connection; the connection goes back to its pool when the
/// body has been read to its end, and is closed if the body is dropped before that.
pub struct PooledBody {
    inner: Incoming,
    home: Option<(SendRequest<Body>, Arc<Pool>)>,
    /// The request body, while hyper may still be sending it.
    sending: Option<Sending>,
    /// The access log wrote this response's line with its head, counting the body whole: if
    /// the upstream cuts it short, the warning is written here.
    logged_whole: bool,
}

/// Put in a request's extensions by whoever sends a body with it: alive (its `Arc` held by the
/// body) while hyper may still be sending that body. An upstream may answer before it has read
/// an upload (a 401, a 413, a redirect), and the connection then stays busy until the client
/// has sent the rest: taken again from the pool, it would hold another client's request for as
/// long as this one's upload lasts. So a connection whose request body is still out is not
/// pooled again.
#[derive(Clone, Debug)]
pub struct Sending(pub std::sync::Weak<()>);

impl Sending {
    fn still(&self) -> bool {
        self.0.strong_count() > 0
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if self.inner.is_end_stream() {
                    self.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let (true, Some((_, pool))) = (self.logged_whole, &self.home) {
                    tracing::warn!(
                        target: "upstream",
                        upstream = pool.addr(),
                        error = %e,
                        "response body cut short by the upstream (its access line counts it whole)"
                    );
                }
                self.home = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                self.release();
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

impl PooledBody {
    fn release(&mut self) {
        if let Some((tx, pool)) = self.home.take() {
            if !self.sending.as_ref().is_some_and(Sending::still) {
                pool.put(tx);
            }
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    https: bool,
    authority: String,
    connect_timeout: Duration,
    ca: Option<PathBuf>,
}

/// Every target's pool, kept across config generations: a reload that keeps a target keeps
/// its warm connections.
#[derive(Default)]
pub struct Pools {
    map: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl Pools {
    /// The pool of one target of upstream `u`, created on first use.
    pub fn get(&self, target: &Target, u: &UpstreamConfig) -> Result<Arc<Pool>, String> {
        let key = PoolKey {
            https: target.https,
            authority: target.authority.as_str().to_string(),
            connect_timeout: u.connect_timeout,
            ca: u.ca.clone(),
        };
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = map.get(&key) {
            return Ok(Arc::clone(p));
        }
        let pool = Arc::new(Pool::new(target, u)?);
        map.insert(key, Arc::clone(&pool));
        Ok(pool)
    }

    /// Closes idle connections past [`IDLE_TIMEOUT`], and forgets the pools of targets no
    /// config generation uses any more (only this map still holds them: the reload that
    /// dropped the target is done and its last requests have finished). Called periodically.
    pub fn sweep(&self) {
        let pools: Vec<Arc<Pool>> = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, p| Arc::strong_count(p) > 1);
            map.values().cloned().collect()
        };
        for p in pools {
            p.sweep();
        }
    }

    /// Number of pools held (one per target in use).
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
