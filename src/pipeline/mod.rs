//! The request's journey, one phase per module, read top to bottom in [`run`]:
//!
//! | phase | module | refuses with |
//! |---|---|---|
//! | path | [`path`] | 400 bad_request |
//! | 1 client IP | [`client_ip`] | — |
//! | 2 IP policy | [`ip_policy`] | 403 ip_denied |
//! | 3 route | [`route`] | 404 no_route, 405 method_not_allowed, 403 (route ip) |
//! | 4 rate limits | [`rate_limit`] | 429 rate_limited, 429 login_locked |
//! | 5 auth | [`auth`] | 401 token_*, ip_mismatch, device_mismatch; 403 insufficient_claims |
//! | 6 forward | [`forward`] | 413, 502, 504 |
//! | 7 mint | [`mint`] | 502 (bad claim value) |
//!
//! [`handle`] wraps [`run`]: it loads the config generation once, turns a [`Reject`] into
//! exactly one response, and writes the access-log line and metrics.
//! Phases 2–5 give one verdict, [`judge`] (`verdict.rs`), which forward auth and `explain`
//! also ask; before any phase, `head.rs` refuses an ambiguous request head.

pub mod auth;
pub mod client_ip;
pub mod forward;
pub mod forward_auth;
mod head;
pub mod ip_policy;
pub mod mint;
pub mod path;
pub mod rate_limit;
pub mod route;
pub mod session;
pub mod shared;
mod verdict;

use head::check_head;
pub use head::{method_problem, request_host, valid_host};
use verdict::*;
pub use verdict::{global_refusal_recorded, judge, Ask, Judged};

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::activity::Activity;
use crate::body::Body;
use crate::config::{AuthMode, LimitKey};
use crate::error::Reject;
use crate::state::{Active, State};
use crate::token::Claims;

/// What the listener knows about the connection a request came on.
#[derive(Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    /// What a trusted proxy's PROXY-protocol header announced.
    pub proxied: client_ip::Proxied,
    pub tls: bool,
    /// The address that connected to us (`proxied`, else `peer`), canonical, and the same
    /// formatted once for `X-Forwarded-For`.
    pub hop: IpAddr,
    pub hop_header: HeaderValue,
    /// What the connection's watcher sees of it (header read and idle timeouts).
    pub activity: Arc<Activity>,
    /// Its place among `max_connections`, given back when the last holder lets go: the
    /// connection, or the WebSocket tunnel it became.
    pub slot: Option<crate::server::Slot>,
}

impl Conn {
    pub fn new(peer: SocketAddr, proxied: client_ip::Proxied, tls: bool) -> Conn {
        let hop = match proxied {
            client_ip::Proxied::Client(ip) => ip,
            _ => peer.ip(),
        }
        .to_canonical();
        let hop_header = HeaderValue::from_str(&hop.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Conn {
            peer,
            proxied,
            tls,
            hop,
            hop_header,
            activity: Arc::default(),
            slot: None,
        }
    }

    /// Whether the connection comes from a trusted proxy, whose forwarding headers are
    /// believed: never an `UNKNOWN` relay (its forwarding headers are its client's own).
    pub fn from_trusted_proxy(&self, cfg: &crate::config::ClientIpConfig) -> bool {
        self.proxied != client_ip::Proxied::Unknown && client_ip::is_trusted(self.hop, cfg)
    }
}

/// What the access log and metrics record about one request.
#[derive(Debug, Default)]
pub struct Outcome {
    pub client_ip: Option<IpAddr>,
    pub ip_source: Option<client_ip::IpSource>,
    /// The method and path the log shows instead of the request's own (forward auth: those
    /// of the original request it judged).
    pub judged: Option<(Method, String)>,
    pub route: Option<usize>,
    pub code: Option<&'static str>,
    pub cause: Option<String>,
    pub sub: Option<String>,
    pub upstream_ms: Option<f64>,
    /// When the request was sent upstream (for `upstream_ms` of one abandoned on the way).
    pub forwarded_at: Option<Instant>,
    pub minted: bool,
    /// Refusals a dry-run route let through.
    pub dry_run: Vec<(&'static str, String)>,
    /// `RateLimit-Policy` / `RateLimit` for the route's first policy.
    pub ratelimit: Option<(HeaderValue, HeaderValue)>,
}

pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<Conn>,
    state: Arc<State>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let h2 = req.version() == http::Version::HTTP_2;
    conn.activity.request_started(h2);
    // An HTTP/2 stream counts as open (its connection not idle) until its response is sent.
    let stream = h2.then(|| conn.activity.stream_open());
    let head = req.method() == Method::HEAD;
    let active = state.active.load_full();
    // Normalized here, outside `run`, so that the access log can borrow it. A rejected path is
    // logged as sent (never with its query).
    let path = path::normalize(req.uri().path());
    let raw_path = path.is_err().then(|| req.uri().path().to_owned());
    let mut pending = Pending {
        method: req.method().clone(),
        path: &path,
        raw_path: raw_path.as_deref(),
        active: &active,
        started,
        out: Outcome::default(),
        answered: false,
    };
    let run = run(
        req,
        &path,
        &conn,
        &active,
        &state,
        started,
        &mut pending.out,
    )
    .await;
    pending.answered = true;
    let out = &mut pending.out;
    let mut resp = match run {
        Ok(r) => r,
        // Nobody to refuse: logged and counted with status 499 and no code, as a request
        // dropped before its answer.
        Err(rej @ Reject::ClientClosed) => rej.to_response(),
        Err(rej) => {
            out.code = Some(rej.code());
            if !rej.cause().is_empty() {
                out.cause = Some(rej.cause().to_string());
            }
            rej.to_response()
        }
    };
    if head && !http_body::Body::is_end_stream(resp.body()) {
        // The gateway's own answers (refusals, the JWKS) are built whole; a HEAD gets their
        // headers only, as RFC 9110 §9.3.2 says. hyper drops the body over HTTP/1.1 itself,
        // not over HTTP/2, where it would break the stream.
        if let Some(n) = http_body::Body::size_hint(resp.body()).exact() {
            resp.headers_mut()
                .entry(header::CONTENT_LENGTH)
                .or_insert(HeaderValue::from(n));
        }
        *resp.body_mut() = crate::body::empty();
    }
    // Every response of a limited route carries its first policy's state; one refused before
    // the limits ran (the route's IP policy, the store) reports the whole quota: nothing was
    // counted.
    let ratelimit = out.ratelimit.take().or_else(|| {
        let &pi = active.routes[out.route?].cfg.rate_limit.first()?;
        let full = rate_limit::Decision::untouched(active.limiters.policy(pi).burst);
        Some(ratelimit_headers(&active, pi, &full))
    });
    if let Some((policy, now)) = ratelimit {
        let h = resp.headers_mut();
        h.reserve(2);
        h.insert(HeaderName::from_static("ratelimit-policy"), policy);
        h.insert(HeaderName::from_static("ratelimit"), now);
    }
    let bytes = http_body::Body::size_hint(resp.body()).exact();
    let status = resp.status().as_u16();
    let upgraded = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let at_end = !upgraded
        && !http_body::Body::is_end_stream(resp.body())
        && crate::access_log::logged_at_end(bytes);
    if at_end {
        // A stream or a large body: its line is written when it ends (bytes sent, time to
        // the last byte).
        let log = pending.deferred(status, active.clone());
        resp = resp
            .map(|b| http_body_util::BodyExt::boxed(crate::access_log::LoggedBody::new(b, log)));
    } else {
        pending.record(status, bytes);
    }
    if upgraded {
        conn.activity.upgraded();
    }
    conn.activity.part_done();
    if let Some(open) = stream {
        resp = resp.map(|b| crate::body::on_stream(b, open));
    }
    Ok(resp)
}

/// A request between its arrival and its answer. Dropped unanswered — the client went away,
/// or the drain's grace ran out — it is still logged and counted, with nginx's status 499.
struct Pending<'a> {
    method: Method,
    path: &'a Result<String, path::Refusal>,
    raw_path: Option<&'a str>,
    active: &'a Active,
    started: Instant,
    out: Outcome,
    answered: bool,
}

impl Pending<'_> {
    fn logged_path(&self) -> Option<&str> {
        self.out
            .judged
            .as_ref()
            .map(|(_, p)| p.as_str())
            .or(self.path.as_deref().ok())
            .or(self.raw_path)
    }

    fn logged_method(&self) -> &Method {
        self.out.judged.as_ref().map_or(&self.method, |(m, _)| m)
    }

    /// The access line and counts, now.
    fn record(&self, status: u16, bytes: Option<u64>) {
        crate::access_log::record(
            self.logged_method(),
            self.logged_path(),
            status,
            bytes,
            &self.out,
            self.active,
            self.started,
        );
    }

    /// What the access line needs when it is written at the end of the response body.
    fn deferred(&mut self, status: u16, active: Arc<Active>) -> crate::access_log::Deferred {
        crate::access_log::Deferred {
            method: self.logged_method().clone(),
            path: self.logged_path().map(str::to_owned),
            status,
            out: std::mem::take(&mut self.out),
            active,
            started: self.started,
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // A panic in the request's handling is the gateway's failure (hyper closes the
        // connection): a 500 for the logs and alerts, not a client that left.
        if let (None, Some(at)) = (self.out.upstream_ms, self.out.forwarded_at) {
            self.out.upstream_ms = Some(at.elapsed().as_secs_f64() * 1000.0);
        }
        let status = if std::thread::panicking() {
            self.out.code = Some("internal_error");
            500
        } else {
            crate::error::CLIENT_CLOSED
        };
        self.record(status, None);
    }
}

async fn run(
    req: Request<Incoming>,
    path: &Result<String, path::Refusal>,
    conn: &Arc<Conn>,
    active: &Active,
    state: &State,
    started: Instant,
    out: &mut Outcome,
) -> Result<Response<Body>, Reject> {
    let cfg = &active.config;
    let refresh_header = cfg.refresh.as_ref().map(|r| &r.header);
    let seen = forward::scan(req.headers(), cfg.token.as_ref(), refresh_header);
    let path = check_head(req.method(), req.version(), req.headers(), req.uri(), &seen)
        .and_then(|()| path.as_deref().map_err(|e| Reject::BadRequest(e)));
    if matches!((&path, &cfg.forward_auth), (Ok(p), Some(f)) if p == f) {
        // Boxed, as the other rarely taken branches below: an inline sub-future would grow
        // every request's future, which is copied as it is created and moved into place.
        return Box::pin(forward_auth::answer(
            &req, conn, active, state, started, out,
        ))
        .await;
    }

    // 1. client IP
    let cip = client_ip::resolve(conn.peer.ip(), conn.proxied, req.headers(), &cfg.client_ip);
    let ip = cip.ip;
    out.client_ip = Some(ip);
    out.ip_source = Some(cip.source);
    // A request the gateway cannot make sense of (path, Host) is refused after the global IP
    // policy, as the phases go: a denied address hears 403 whatever it sends, and the refusal
    // is logged with its client IP.
    let path = match path {
        Ok(p) => p,
        Err(rej) => {
            active.ip_policy.check(ip)?;
            return Err(rej);
        }
    };

    // Gateway-served paths come before routes (after the global IP policy).
    if session::is_served(path, active) {
        active.ip_policy.check(ip)?;
        if let Some(resp) =
            Box::pin(session::serve(&req, path, ip, active, state, &mut out.sub)).await?
        {
            return Ok(resp);
        }
    }

    // 2–5
    let host = active
        .host_routes
        .then(|| request_host(seen.host.as_ref(), req.uri()))
        .flatten();
    let judged = judge(
        &Ask {
            method: req.method(),
            host,
            path,
            headers: req.headers(),
            ip,
            started,
        },
        active,
        state,
        out,
    )
    .await?;
    let rc = &active.routes[judged.route].cfg;
    let claims = judged.claims;

    // 6. forward
    let upstream = &active.upstreams[rc.upstream];
    let up_path = route::upstream_path(rc, path);
    let device = match (&rc.auth, &cfg.token) {
        (AuthMode::Mint(_), Some(tc)) => auth::device_id(req.headers(), tc).map(str::to_string),
        _ => None,
    };
    let peer = conn.hop;
    let sent = Instant::now();
    out.forwarded_at = Some(sent);
    let resp = forward::send(
        req,
        forward::Forward {
            client_ip: ip,
            peer,
            peer_header: &conn.hop_header,
            peer_trusted: conn.from_trusted_proxy(&cfg.client_ip),
            ip_header: cfg.client_ip.header,
            tls: conn.tls,
            upstream,
            path: &up_path,
            token: cfg.token.as_ref(),
            refresh_header,
            claims: claims.as_ref(),
            max_body: cfg.server.max_request_body,
            allow_upgrade: !matches!(rc.auth, AuthMode::Mint(_)),
            seen,
            stripped_prefix: route::stripped_prefix(rc),
            idle_timeout: cfg.server.idle_timeout,
            sent,
            conn,
        },
    )
    .await;
    // Also when it failed (502, 504): the time spent waiting on the upstream.
    out.upstream_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
    let mut resp = resp?;

    // 7. mint
    if let Some(tc) = &cfg.token {
        if let (AuthMode::Mint(rule), Some(keys)) = (&rc.auth, &active.keys) {
            let minted = mint::apply(
                &mut resp,
                &mint::MintCtx {
                    rule,
                    token: tc,
                    keys,
                    refresh: cfg.refresh.as_ref(),
                    ip,
                    device_id: device.as_deref(),
                },
            )?;
            let status = resp.status().as_u16();
            let yes = matches!(minted, mint::Minted::Yes { .. });
            Box::pin(shared::login_outcome(active, state, ip, yes, status)).await;
            if let mint::Minted::Yes { sub } = minted {
                out.minted = true;
                // The access log names who logged in.
                out.sub = sub;
                crate::metrics::minted("access");
            }
        } else {
            mint::drop_our_headers(resp.headers_mut(), tc, refresh_header);
        }
    }
    Ok(resp)
}
