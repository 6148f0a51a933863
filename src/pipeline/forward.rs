//! Phase 6: the upstream request. Headers cleaned and set (SPEC §3.6), the body streamed
//! both ways under `max_request_body`, WebSocket upgrades passed through, and upstream
//! failures turned into 502/504.

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::activity::{Activity, BodyOpen};
use crate::body::{Body, BoxError};
use crate::config::{CookieConfig, TokenConfig};
use crate::error::Reject;
use crate::state::Upstream;
use crate::token::Claims;
use crate::upstream::SendFail;

/// What the forward phase needs to know about the request besides the request itself.
pub struct Forward<'a> {
    pub client_ip: IpAddr,
    /// The address that connected to us (after PROXY protocol).
    pub peer: IpAddr,
    /// `peer` as a header value.
    pub peer_header: &'a HeaderValue,
    pub peer_trusted: bool,
    pub tls: bool,
    pub upstream: &'a Upstream,
    /// Path (normalized, rewritten) for the upstream; the query goes as the client sent it.
    pub path: &'a str,
    pub token: Option<&'a TokenConfig>,
    /// The refresh token's request header (`[refresh].header`): never passed on.
    pub refresh_header: Option<&'a HeaderName>,
    pub claims: Option<&'a Claims>,
    pub max_body: u64,
    pub allow_upgrade: bool,
    /// What the request's headers hold ([`scan`]).
    pub seen: Seen,
    /// How long an upgraded tunnel may stay quiet (the server's `idle_timeout`).
    pub idle_timeout: Duration,
    /// The prefix a `strip_prefix` route took off the path (`X-Forwarded-Prefix`).
    pub stripped_prefix: Option<&'a str>,
    /// When the request was sent on: the upstream `timeout` counts from there.
    pub sent: std::time::Instant,
    /// The connection's activity: a request is not done while its body is being forwarded.
    pub activity: &'a Arc<Activity>,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers: never passed on. A `static`, not a `const`: a `const` array of
/// `HeaderName`s is built and dropped again wherever it is used.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// What a message's headers hold that the gateway acts on, found in one pass over them
/// ([`scan`], [`scan_response`]), so that each step looks a header up only when it is there.
/// The steps only ever remove headers, so what is seen before them stays true enough: a bit
/// may say a header is there after it has gone, never the other way round.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    bits: u32,
    /// How many `Host` values (request).
    pub hosts: u8,
    /// The first `Host` value (request).
    pub host: Option<HeaderValue>,
}

impl Seen {
    /// Any of the hop-by-hop headers; bit `i` is `HOP_BY_HOP[i]`.
    pub const HOP: u32 = 0x1ff;
    pub const CONNECTION: u32 = 1;
    pub const TRANSFER_ENCODING: u32 = 1 << 5;
    pub const UPGRADE: u32 = 1 << 6;
    pub const CONTENT_LENGTH: u32 = 1 << 9;
    pub const AUTHORIZATION: u32 = 1 << 10;
    pub const COOKIE: u32 = 1 << 11;
    /// `X-Forwarded-*`, `Forwarded` or `X-Real-IP`, in any spelling an app might read.
    pub const FORWARDING: u32 = 1 << 12;
    /// A header only the gateway reads or sets: the token header, the refresh header, a
    /// claim header (any spelling).
    pub const OURS: u32 = 1 << 13;
    pub const EXPECT: u32 = 1 << 14;

    /// Whether any of `bits` was seen.
    pub fn has(&self, bits: u32) -> bool {
        self.bits & bits != 0
    }
}

/// The bits of [`Seen`] a header name sets by itself (`Host` and the configured names aside).
fn class(k: &str) -> u32 {
    match k {
        "connection" => Seen::CONNECTION,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "te" => 1 << 3,
        "trailer" => 1 << 4,
        "transfer-encoding" => Seen::TRANSFER_ENCODING,
        "upgrade" => Seen::UPGRADE,
        "proxy-authorization" => 1 << 7,
        "proxy-authenticate" => 1 << 8,
        "content-length" => Seen::CONTENT_LENGTH,
        "authorization" => Seen::AUTHORIZATION,
        "cookie" => Seen::COOKIE,
        "expect" => Seen::EXPECT,
        _ => 0,
    }
}

/// A name an app framework may read as a forwarding header (`_` for `-`, any case), or as
/// the path it really serves (`X-Original-URL`, `X-Rewrite-URL`: IIS, older Symfony and
/// Laravel route on them, so a client could name a path the gateway never judged).
fn forwarding_spelling(k: &str) -> bool {
    (k.len() > 12 && same_spelling(&k[..12], "x-forwarded-"))
        || same_spelling(k, "forwarded")
        || same_spelling(k, "x-real-ip")
        || same_spelling(k, "x-original-url")
        || same_spelling(k, "x-rewrite-url")
}

/// One pass over a request's headers.
pub fn scan(h: &HeaderMap, token: Option<&TokenConfig>, refresh: Option<&HeaderName>) -> Seen {
    let mut seen = Seen::default();
    for (k, v) in h {
        if k == header::HOST {
            if seen.hosts == 0 {
                seen.host = Some(v.clone());
            }
            seen.hosts = seen.hosts.saturating_add(1);
            continue;
        }
        let name = k.as_str();
        let mut bits = class(name);
        if bits == 0 {
            if forwarding_spelling(name) {
                bits = Seen::FORWARDING;
            }
            let ours = token.is_some_and(|tc| {
                *k == tc.header
                    || tc
                        .forward_claims
                        .iter()
                        .any(|(_, n)| same_spelling(name, n.as_str()))
            }) || refresh.is_some_and(|r| k == r);
            if ours {
                bits |= Seen::OURS;
            }
        }
        seen.bits |= bits;
    }
    seen
}

/// One pass over a response's headers (hop-by-hop and framing only).
pub fn scan_response(h: &HeaderMap) -> Seen {
    Seen {
        bits: h.keys().fold(0, |acc, k| acc | class(k.as_str())),
        ..Seen::default()
    }
}

/// Remove hop-by-hop headers and every header named in `Connection`, given what a scan saw.
/// Most messages carry none, the rest one or two (`Connection: keep-alive`): only those are
/// removed, with no allocation.
pub fn strip_hop_by_hop(h: &mut HeaderMap, seen: &Seen) {
    if !seen.has(Seen::HOP) {
        return;
    }
    // `Connection` is taken out with its values in one lookup; other headers it names are
    // removed too (rare: `keep-alive`, `close`, `upgrade` are not such names).
    let mut named: Vec<HeaderName> = Vec::new();
    if seen.has(Seen::CONNECTION) {
        if let header::Entry::Occupied(e) = h.entry(header::CONNECTION) {
            for v in e.remove_entry_mult().1 {
                let b = v.as_bytes();
                if b.eq_ignore_ascii_case(b"keep-alive") || b.eq_ignore_ascii_case(b"close") {
                    // Nearly every message: nothing named.
                    continue;
                }
                let Ok(v) = v.to_str() else { continue };
                for n in v.split(',').map(str::trim) {
                    if n.is_empty()
                        || n.eq_ignore_ascii_case("close")
                        || HOP_BY_HOP
                            .iter()
                            .any(|d| d.as_str().eq_ignore_ascii_case(n))
                    {
                        continue;
                    }
                    if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
                        named.push(name);
                    }
                }
            }
        }
    }
    for n in &named {
        h.remove(n);
    }
    // The other hop-by-hop headers seen (bit 0, `Connection`, is gone already).
    for (i, d) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if seen.has(1 << i) {
            h.remove(d);
        }
    }
}

/// A WebSocket upgrade request (`Upgrade: websocket` with `Connection: upgrade`). Other
/// upgrades (`h2c` above all) are not passed on: after a `101` the connection is a tunnel no
/// later request on it is judged in, so only the protocol the gateway means to carry gets one.
/// Their `Upgrade` header goes with the other hop-by-hop headers.
fn is_upgrade(h: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

/// Whether a `101` answers the WebSocket key that was sent (RFC 6455 §4.2.2:
/// `Sec-WebSocket-Accept` is base64(SHA-1(key + the protocol's GUID))).
fn websocket_accepted(key: Option<&HeaderValue>, resp: &HeaderMap) -> bool {
    use base64::Engine as _;
    let (Some(key), Some(accept)) = (key, resp.get(header::SEC_WEBSOCKET_ACCEPT)) else {
        return false;
    };
    let mut sha1 = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key.as_bytes().trim_ascii());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let want = base64::engine::general_purpose::STANDARD.encode(sha1.finish());
    accept.as_bytes().trim_ascii() == want.as_bytes()
}

/// Header names compared the way a lenient app framework would: case-insensitive, `_` = `-`.
fn same_spelling(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let n = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            n(x) == n(y)
        })
}

/// Remove every incoming spelling of the claim headers (they are set only by the gateway).
pub fn remove_claim_headers(h: &mut HeaderMap, token: &TokenConfig) {
    if token.forward_claims.is_empty() {
        return;
    }
    let doomed: Vec<HeaderName> = h
        .keys()
        .filter(|k| {
            token
                .forward_claims
                .iter()
                .any(|(_, name)| same_spelling(k.as_str(), name.as_str()))
        })
        .cloned()
        .collect();
    for k in doomed {
        h.remove(k);
    }
}

/// A claim as a header value (UTF-8 passes as is); `None` when it cannot be one (control
/// characters).
pub fn claim_header_value(v: &serde_json::Value) -> Option<HeaderValue> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| match x {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        serde_json::Value::Null => return None,
        other => other.to_string(),
    };
    HeaderValue::from_bytes(s.as_bytes()).ok()
}

/// Remove the token from `Authorization` (our schemes) and the token header; the cookie goes in
/// [`rewrite_cookies`].
pub fn strip_token(h: &mut HeaderMap, token: &TokenConfig) {
    let ours = |v: &HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|s| s.split_once(' '))
            .is_some_and(|(scheme, _)| token.schemes.iter().any(|t| t.eq_ignore_ascii_case(scheme)))
    };
    if h.get_all(header::AUTHORIZATION).iter().any(ours) {
        let keep: Vec<HeaderValue> = h
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter(|v| !ours(v))
            .cloned()
            .collect();
        h.remove(header::AUTHORIZATION);
        for v in keep {
            h.append(header::AUTHORIZATION, v);
        }
    }
    h.remove(&token.header);
}

/// The request's cookies as one `Cookie` field, without the gateway's own (`ours`: the cookie
/// config, and whether the access token's cookie goes too; the refresh token's always does).
/// HTTP/2 clients send each cookie as its own field (RFC 9113 §8.2.3) and an HTTP/1.1 upstream
/// expects one (RFC 6265 §5.4). A single field with none of ours is left as it is, unread.
fn rewrite_cookies(h: &mut HeaderMap, ours: Option<(&CookieConfig, bool)>) {
    let is_ours = |pair: &[u8]| {
        let name = pair
            .split(|&c| c == b'=')
            .next()
            .unwrap_or(pair)
            .trim_ascii();
        ours.is_some_and(|(c, access)| {
            name == c.refresh_name.as_bytes() || (access && name == c.name.as_bytes())
        })
    };
    let fields = h.get_all(header::COOKIE);
    let several = fields.iter().nth(1).is_some();
    let any_ours = || ours.is_some() && fields.iter().flat_map(cookie_pairs).any(is_ours);
    if !several && !any_ours() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in fields {
        for pair in cookie_pairs(v).filter(|p| !is_ours(p)) {
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(pair);
        }
    }
    h.remove(header::COOKIE);
    if !joined.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            h.insert(header::COOKIE, v);
        }
    }
}

/// The `name=value` pairs of a `Cookie` field, trimmed.
fn cookie_pairs(v: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    v.as_bytes()
        .split(|&c| c == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// The scheme the trusted proxy recorded in the element it added to `Forwarded` (RFC 7239
/// `proto` of the right-most element only: anything left of it the client may have written),
/// for `X-Forwarded-Proto` when it sent none.
fn forwarded_proto(h: &HeaderMap) -> Option<&'static str> {
    let line = h.get_all(header::FORWARDED).iter().next_back()?;
    let element = crate::pipeline::client_ip::parse::ForwardedElements::new(line.as_bytes())
        .next()?
        .ok()?;
    crate::pipeline::client_ip::parse::forwarded_proto(element)
}

/// The request body, refused once it passes `max`.
struct LimitedBody {
    inner: Incoming,
    max: u64,
    /// Bytes passed on so far (at most `max`).
    read: u64,
    /// Held while the body is being forwarded (dropped at its end).
    open: Option<BodyOpen>,
    /// When the body last moved (see [`BodyProgress`]).
    progress: Option<Arc<BodyProgress>>,
}

/// When a request body last passed a frame on (nanoseconds since the request was sent on), and
/// how much of it: the upstream `timeout` ("until response headers") counts from the end of
/// the request, so an upload that takes longer than it is not cut off while it still moves.
/// Two relaxed stores per body frame, only for requests with a body.
struct BodyProgress {
    since: std::time::Instant,
    last: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
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
async fn within<F: std::future::Future>(
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

/// Whether `e` or an error under it is a `T`.
fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

/// Send the request upstream and return its response (headers cleaned, body streaming).
pub async fn send(mut req: Request<Incoming>, f: Forward<'_>) -> Result<Response<Body>, Reject> {
    let mut seen = f.seen;
    if let Some(len) = seen
        .has(Seen::CONTENT_LENGTH)
        .then(|| req.headers().get(header::CONTENT_LENGTH))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > f.max_body {
            return Err(Reject::PayloadTooLarge);
        }
    }
    let upgrade = f.allow_upgrade
        && seen.has(Seen::UPGRADE)
        && is_upgrade(req.headers())
        && req.version() == Version::HTTP_11;
    let ws_key = upgrade
        .then(|| req.headers().get(header::SEC_WEBSOCKET_KEY).cloned())
        .flatten();
    if upgrade && ws_key.is_none() {
        // A WebSocket handshake without its key cannot complete (RFC 6455 §4.1): the client's
        // fault, before anything goes upstream.
        return Err(Reject::BadRequest(
            "WebSocket upgrade without Sec-WebSocket-Key",
        ));
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // Host as the client sent it (HTTP/2: from :authority).
    let mut host = seen.host.take().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let h = &mut parts.headers;
    // The forwarding headers a trusted proxy sent are read before the hop-by-hop ones go: a
    // `Connection` naming one of them cannot erase what the gateway itself sets.
    let forwarded = f.peer_trusted && seen.has(Seen::FORWARDING);
    let prior_xff: Option<String> = if forwarded {
        let joined: Vec<&str> = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!joined.is_empty()).then(|| joined.join(", "))
    } else {
        None
    };
    let prior_proto = forwarded
        .then(|| {
            h.get(&X_FORWARDED_PROTO)
                .cloned()
                .or_else(|| forwarded_proto(h).map(HeaderValue::from_static))
        })
        .flatten();
    let prior_host = forwarded
        .then(|| h.get(&X_FORWARDED_HOST).cloned())
        .flatten();
    strip_hop_by_hop(h, &seen);
    if seen.has(Seen::EXPECT) {
        // `100-continue` is answered by the gateway itself, when the body is first read: the
        // upstream gets the body as any other, never a question it could answer with a 417
        // after the client was told to go on.
        h.remove(header::EXPECT);
    }
    if !f.peer_trusted && seen.has(Seen::FORWARDING) {
        let doomed: Vec<HeaderName> = h
            .keys()
            .filter(|k| forwarding_spelling(k.as_str()))
            .cloned()
            .collect();
        for k in doomed {
            h.remove(k);
        }
    }
    // Room for the headers set below, made once.
    h.reserve(4);
    let xff = match prior_xff {
        Some(p) => HeaderValue::from_str(&format!("{p}, {}", f.peer)).ok(),
        // A trusted proxy that named the client in `Forwarded` or `X-Real-IP` only: the
        // upstream still learns the client the gateway decided on, in the usual header.
        None if forwarded && f.client_ip != f.peer => {
            HeaderValue::from_str(&format!("{}, {}", f.client_ip, f.peer)).ok()
        }
        None => Some(f.peer_header.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(
        X_FORWARDED_PROTO,
        prior_proto.unwrap_or(HeaderValue::from_static(if f.tls {
            "https"
        } else {
            "http"
        })),
    );
    // The client's Host is still in the map unless a `Connection` header named it (or there
    // was none: HTTP/2 `:authority`, HTTP/1.0); then it is moved into X-Forwarded-Host
    // rather than cloned, and the map is not asked again.
    let host_in_map = seen.hosts > 0 && !seen.has(Seen::CONNECTION);
    let forwarded_host = match prior_host {
        Some(p) => Some(p),
        None if host_in_map => host.take(),
        None => host.clone(),
    };
    if let Some(v) = forwarded_host {
        h.insert(X_FORWARDED_HOST, v);
    }
    if let Some(prefix) = f.stripped_prefix {
        // The app builds its links and redirects under it (Spring, ASP.NET, Werkzeug's
        // ProxyFix), as behind Traefik's StripPrefix; after a trusted proxy's own prefix.
        // A prior prefix is a path (`/app`), never `//host` that a link would leave for.
        let prior = f
            .peer_trusted
            .then(|| h.get(&X_FORWARDED_PREFIX).and_then(|v| v.to_str().ok()))
            .flatten()
            .map(|p| p.trim_end_matches('/'))
            .filter(|p| p.starts_with('/') && !p.starts_with("//"))
            .unwrap_or("");
        if let Ok(v) = HeaderValue::from_str(&format!("{prior}{prefix}")) {
            h.insert(X_FORWARDED_PREFIX, v);
        }
    }
    let (picked, target, pool) = f.upstream.pick();
    if !host_in_map {
        match host {
            // Back if a `Connection` header named it; set from `:authority` on HTTP/2.
            Some(host) => {
                h.entry(header::HOST).or_insert(host);
            }
            // An HTTP/1.0 request may come without Host; the upstream hears HTTP/1.1, which
            // requires one: the target's own authority, as nginx's default `$proxy_host`.
            None => {
                if let Ok(v) = HeaderValue::from_str(target.authority.as_str()) {
                    h.insert(header::HOST, v);
                }
            }
        }
    }

    if let Some(tc) = f.token {
        if seen.has(Seen::OURS) {
            remove_claim_headers(h, tc);
            // `forward_token` is about the access token; a refresh token never leaves.
            if let Some(r) = f.refresh_header {
                h.remove(r);
            }
        }
        if !tc.forward_token && seen.has(Seen::AUTHORIZATION | Seen::OURS) {
            strip_token(h, tc);
        }
        if let Some(claims) = f.claims {
            for (claim, name) in &tc.forward_claims {
                if let Some(v) = claims.get(claim) {
                    match claim_header_value(&v) {
                        Some(hv) => {
                            h.insert(name.clone(), hv);
                        }
                        None => {
                            return Err(Reject::TokenInvalid("claim is not a valid header value"))
                        }
                    }
                }
            }
        }
    }
    if seen.has(Seen::COOKIE) {
        // The access token's cookie goes on only with `forward_token`; the refresh token's,
        // as its header, never.
        rewrite_cookies(h, f.token.map(|tc| (&tc.cookie, !tc.forward_token)));
    }
    if upgrade {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }

    // Origin form: the connection already goes to the target. The client's own target is
    // kept when it is that already, which is the common case (no prefix stripped, no
    // rewrite, nothing normalized away, no base path).
    let kept = target.base_path.is_empty()
        && parts.uri.scheme().is_none()
        && parts.uri.authority().is_none()
        && parts.uri.path() == f.path;
    if !kept {
        let query = parts.uri.query();
        let mut pq = String::with_capacity(
            target.base_path.len() + f.path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&target.base_path);
        pq.push_str(f.path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        parts.uri = Uri::builder()
            .path_and_query(pq)
            .build()
            .map_err(|_| Reject::BadRequest("unbuildable upstream uri"))?;
    }
    parts.version = Version::HTTP_11;

    let has_body = !body.is_end_stream();
    let open = has_body.then(|| f.activity.body_forwarded());
    let progress = has_body.then(|| {
        Arc::new(BodyProgress {
            since: f.sent,
            last: Default::default(),
            bytes: Default::default(),
        })
    });
    let body = LimitedBody {
        inner: body,
        max: f.max_body,
        open,
        progress: progress.clone(),
        read: 0,
    }
    .boxed();
    let up_req = Request::from_parts(parts, body);
    let timeout = f.upstream.cfg.timeout;
    let progress = progress.as_deref();
    // From when the caller sent it on (already read from the clock, for the upstream time).
    // Boxed: the send future is about a kilobyte, and `timeout` would copy it in twice. The
    // picked target's pool is asked directly; only when it could not connect (the request is
    // back, unsent) do the other targets get it, so the common path has no extra layer.
    let mut sent = within(Box::pin(pool.send(up_req)), f.sent, timeout, progress).await;
    if f.upstream.has_others() {
        if let Some(Err(
            fail @ SendFail {
                unsent: Some(_), ..
            },
        )) = sent
        {
            sent = within(
                Box::pin(f.upstream.failover(picked, fail)),
                f.sent,
                timeout,
                progress,
            )
            .await;
        }
    }
    let mut resp = match sent {
        None => return Err(Reject::UpstreamTimeout),
        Some(Err(SendFail { err: e, .. })) => {
            if caused_by::<BodyTooLarge>(&e) {
                return Err(Reject::PayloadTooLarge);
            }
            // The client's own body failed: its error, not the upstream's.
            if caused_by::<ClientBodyError>(&e) {
                return Err(Reject::BadRequest("the request body could not be read"));
            }
            return Err(Reject::UpstreamUnavailable(error_chain(&e)));
        }
        Some(Ok(r)) => r,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_up) = client_upgrade {
            // Only a WebSocket handshake completed for this very key opens the tunnel: after
            // it, nothing on the connection is judged any more.
            if !is_upgrade(resp.headers()) || !websocket_accepted(ws_key.as_ref(), resp.headers()) {
                return Err(Reject::UpstreamUnavailable(
                    "101 without a matching WebSocket handshake".into(),
                ));
            }
            let upstream_up = hyper::upgrade::on(&mut resp);
            let (idle, activity) = (f.idle_timeout, f.activity.clone());
            tokio::spawn(async move {
                if let (Ok(c), Ok(u)) = (client_up.await, upstream_up.await) {
                    crate::tunnel::splice(TokioIo::new(c), TokioIo::new(u), idle, activity).await;
                }
            });
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, crate::body::empty()));
        }
        return Err(Reject::UpstreamUnavailable(
            "unexpected 101 from upstream".into(),
        ));
    }
    let h = resp.headers_mut();
    let seen = scan_response(h);
    if seen.has(Seen::TRANSFER_ENCODING) {
        // The upstream framed the body in chunks: a Content-Length beside that is not the
        // length of what is passed on (RFC 9112 §6.3), and would leave the client waiting.
        h.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(h, &seen);
    // The client hears the gateway's HTTP version, whatever the upstream's: an HTTP/1.0
    // upstream's close-delimited body goes on chunked over a kept-alive HTTP/1.1 connection.
    *resp.version_mut() = Version::HTTP_11;
    Ok(resp.map(BodyExt::boxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_proto_is_read_from_the_proxys_own_element_only() {
        let proto = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append(header::FORWARDED, HeaderValue::from_str(l).unwrap());
            }
            forwarded_proto(&h)
        };
        assert_eq!(proto(&["for=203.0.113.9;proto=HTTPS"]), Some("https"));
        assert_eq!(
            proto(&["for=1.1.1.1;proto=https", "for=203.0.113.9;proto=http"]),
            Some("http")
        );
        // The client's element left of the proxy's (which names no proto) is not read.
        assert_eq!(proto(&["proto=https, for=198.51.100.7"]), None);
        assert_eq!(proto(&["for=198.51.100.7;host=\"a,proto=https\""]), None);
        assert_eq!(proto(&["for=198.51.100.7;proto=wss"]), None);
        assert_eq!(proto(&[]), None);
    }

    #[test]
    fn websocket_accept_follows_rfc_6455() {
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert!(websocket_accepted(Some(&key), &h));
        assert!(!websocket_accepted(None, &h));
        let other = HeaderValue::from_static("AQIDBAUGBwgJCgsMDQ4PEC==");
        assert!(!websocket_accepted(Some(&other), &h));
        assert!(!websocket_accepted(Some(&key), &HeaderMap::new()));
    }

    #[test]
    fn spellings() {
        assert!(same_spelling("x-auth-subject", "X-Auth-Subject"));
        assert!(same_spelling("x_auth_subject", "x-auth-subject"));
        assert!(!same_spelling("x-auth-subjects", "x-auth-subject"));
    }

    #[test]
    fn hop_bits_follow_the_table() {
        for (i, d) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(class(d.as_str()), 1 << i, "{d}");
        }
        assert_eq!(class("host") & Seen::HOP, 0);
    }

    #[test]
    fn hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("x-ok", HeaderValue::from_static("1"));
        let seen = scan_response(&h);
        strip_hop_by_hop(&mut h, &seen);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h["x-ok"], "1");
    }

    #[test]
    fn every_connection_value_is_read() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-a"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        let seen = scan_response(&h);
        strip_hop_by_hop(&mut h, &seen);
        assert!(h.get(header::CONNECTION).is_none() && h.get("x-a").is_none());
        assert_eq!(h["x-b"], "1");
    }

    #[test]
    fn claim_values() {
        assert_eq!(
            claim_header_value(&serde_json::json!("alice")).unwrap(),
            "alice"
        );
        assert_eq!(
            claim_header_value(&serde_json::json!(["a", "b"])).unwrap(),
            "a,b"
        );
        assert!(claim_header_value(&serde_json::json!("a\r\nb")).is_none());
    }
}
