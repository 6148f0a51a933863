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

pub mod auth;
pub mod client_ip;
pub mod forward;
pub mod forward_auth;
pub mod ip_policy;
pub mod mint;
pub mod path;
pub mod rate_limit;
pub mod route;
pub mod session;
pub mod shared;

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
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    /// Source announced by a PROXY-protocol header from a trusted proxy.
    pub proxied: Option<IpAddr>,
    pub tls: bool,
    /// The address that connected to us (`proxied`, else `peer`), canonical, and the same
    /// formatted once for `X-Forwarded-For`.
    pub hop: IpAddr,
    pub hop_header: HeaderValue,
    /// What the connection's watcher sees of it (header read and idle timeouts).
    pub activity: Arc<Activity>,
}

impl Conn {
    pub fn new(peer: SocketAddr, proxied: Option<IpAddr>, tls: bool) -> Conn {
        let hop = proxied.unwrap_or(peer.ip()).to_canonical();
        let hop_header = HeaderValue::from_str(&hop.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Conn {
            peer,
            proxied,
            tls,
            hop,
            hop_header,
            activity: Arc::default(),
        }
    }
}

/// What the access log and metrics record about one request.
#[derive(Debug, Default)]
pub struct Outcome {
    pub client_ip: Option<IpAddr>,
    pub ip_source: Option<client_ip::IpSource>,
    /// The path the log shows instead of the request's own (forward auth: the original one).
    pub path_override: Option<String>,
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

/// On a dry-run route a refusal is recorded and the request goes on.
fn enforce(r: Result<(), Reject>, dry_run: bool, out: &mut Outcome) -> Result<(), Reject> {
    match r {
        Err(e) if dry_run => {
            // Logged with the request's fields by the access log, at the end.
            crate::metrics::dry_run(e.code());
            out.dry_run.push((e.code(), e.cause().to_string()));
            Ok(())
        }
        other => other,
    }
}

pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<Conn>,
    state: Arc<State>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    conn.activity
        .request_started(req.version() == http::Version::HTTP_2);
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
        Err(rej) => {
            out.code = Some(rej.code());
            if !rej.cause().is_empty() {
                out.cause = Some(rej.cause().to_string());
            }
            rej.to_response()
        }
    };
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
    let logged_path = pending.logged_path();
    let bytes = http_body::Body::size_hint(resp.body()).exact();
    let status = resp.status().as_u16();
    crate::access_log::record(
        &pending.method,
        logged_path,
        status,
        bytes,
        &pending.out,
        &active,
        started,
    );
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        conn.activity.upgraded();
    }
    conn.activity.part_done();
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
            .path_override
            .as_deref()
            .or(self.path.as_deref().ok())
            .or(self.raw_path)
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
            CLIENT_CLOSED
        };
        crate::access_log::record(
            &self.method,
            self.logged_path(),
            status,
            None,
            &self.out,
            self.active,
            self.started,
        );
    }
}

/// nginx's status for a request the client closed before it was answered.
const CLIENT_CLOSED: u16 = 499;

async fn run(
    req: Request<Incoming>,
    path: &Result<String, path::Refusal>,
    conn: &Conn,
    active: &Active,
    state: &State,
    started: Instant,
    out: &mut Outcome,
) -> Result<Response<Body>, Reject> {
    let cfg = &active.config;
    let refresh_header = cfg.refresh.as_ref().map(|r| &r.header);
    let seen = forward::scan(req.headers(), cfg.token.as_ref(), refresh_header);
    let path = check_head(req.version(), req.headers(), req.uri(), &seen)
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
            peer_trusted: client_ip::is_trusted(peer, &cfg.client_ip),
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
            activity: &conn.activity,
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
            Box::pin(shared::login_outcome(
                active,
                state,
                ip,
                minted == mint::Minted::Yes,
                status,
            ))
            .await;
            if minted == mint::Minted::Yes {
                out.minted = true;
                crate::metrics::minted("access");
            }
        } else {
            mint::drop_our_headers(resp.headers_mut(), tc, refresh_header);
        }
    }
    Ok(resp)
}

/// A request as phases 2–5 see it (also built by forward auth and `explain`).
pub struct Ask<'a> {
    pub method: &'a Method,
    /// Without port; compared case-insensitively.
    pub host: Option<&'a str>,
    /// Normalized.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The resolved client IP (phase 1).
    pub ip: IpAddr,
    /// When the request arrived: the time its rate-limit checks count it at.
    pub started: Instant,
}

/// The verdict of phases 2–5.
pub struct Judged {
    pub route: usize,
    pub claims: Option<Claims>,
}

/// Phases 2–5: IP policy, route, rate limits, auth. Cheap checks come first, so an
/// abusive client never reaches signature verification.
pub async fn judge(
    a: &Ask<'_>,
    active: &Active,
    state: &State,
    out: &mut Outcome,
) -> Result<Judged, Reject> {
    let cfg = &active.config;
    let ip = a.ip;

    // 2. global IP policy. A dry-run route records an address outside the global allow list
    // and goes on (rolling out a new allow list); the global deny list is a blocklist and
    // holds on every route.
    if let Err(e) = active.ip_policy.check(ip) {
        let dry = !active.ip_policy.denies(ip)
            && route::find(&active.routes, a.method, a.host, a.path)
                .is_ok_and(|i| active.routes[i].cfg.dry_run);
        if !dry {
            return Err(e);
        }
        enforce(Err(e), true, out)?;
    }

    // 3. route, then its own IP policy
    let idx = route::find(&active.routes, a.method, a.host, a.path)?;
    out.route = Some(idx);
    let route = &active.routes[idx];
    let rc = &route.cfg;
    if let Some(p) = &route.ip {
        enforce(p.check(ip), rc.dry_run, out)?;
    }

    // 4. rate limits (subject-keyed policies wait for a verified subject after phase 5)
    limits(a, active, state, idx, None, false, out).await?;
    if let AuthMode::Mint(_) = rc.auth {
        if let Some(left) = shared::login_locked(active, state, ip).await? {
            enforce(
                Err(Reject::LoginLocked { retry_after: left }),
                rc.dry_run,
                out,
            )?;
        }
    }

    // 5. auth
    let mut claims = None;
    if let AuthMode::Token = rc.auth {
        let (Some(tc), Some(keys)) = (&cfg.token, &active.keys) else {
            return Err(Reject::Internal("token route without keys".into()));
        };
        let verdict = auth::verify(
            a.headers,
            tc,
            keys,
            &state.store,
            cfg.store.on_error,
            ip,
            &rc.require,
            &mut out.sub,
        )
        .await;
        crate::metrics::verified(verdict.as_ref().err().map(Reject::code));
        match verdict {
            Ok(c) => claims = Some(c),
            Err(e) => enforce(Err(e), rc.dry_run, out)?,
        }
        let sub = claims.as_ref().and_then(|c| c.sub.as_deref());
        limits(a, active, state, idx, sub, true, out).await?;
    }
    Ok(Judged { route: idx, claims })
}

/// Check the route's rate-limit policies of one kind (subject-keyed or not). `global` policies
/// kept in the shared store come last: their count cannot be given back, so a client the local
/// policies refuse never spends everyone's shared budget.
async fn limits(
    a: &Ask<'_>,
    active: &Active,
    state: &State,
    idx: usize,
    sub: Option<&str>,
    subject_phase: bool,
    out: &mut Outcome,
) -> Result<(), Reject> {
    let rc = &active.routes[idx].cfg;
    let now = active.limiters.time(a.started);
    let shared_store = state.store.shared().is_some();
    // Policies (by position, the first 64) this request has counted against so far.
    let mut counted: u64 = 0;
    // Shared `global` policies in a second pass; without a shared store there are none.
    let passes: &[bool] = if shared_store {
        &[false, true]
    } else {
        &[false]
    };
    for &shared_pass in passes {
        for (n, &pi) in rc.rate_limit.iter().enumerate() {
            let policy = active.limiters.policy(pi);
            let shared = policy.key == LimitKey::Global && shared_store;
            if shared != shared_pass {
                continue;
            }
            if (policy.key == LimitKey::Subject) != subject_phase {
                if n == 0 && !subject_phase {
                    // The first policy waits for a verified subject: until then (and on a
                    // refusal before it) the headers report its whole quota, since nothing was
                    // counted.
                    let full = rate_limit::Decision::untouched(policy.burst);
                    out.ratelimit = Some(ratelimit_headers(active, pi, &full));
                }
                continue;
            }
            let d = if shared {
                Box::pin(shared::global(active, state, policy)).await?
            } else {
                None
            };
            let d = match d {
                Some(d) => d,
                None => active
                    .limiters
                    .check_at(pi, &key_input(a, &rc.name, sub), now),
            };
            if n == 0 {
                out.ratelimit = Some(ratelimit_headers(active, pi, &d));
            }
            if d.allowed {
                if n < 64 {
                    counted |= 1 << n;
                }
                continue;
            }
            if !rc.dry_run {
                // On a dry-run route the refusal is counted as one (`iptgate_dry_run_total`).
                crate::metrics::rate_limited(&policy.name);
                refund(a, active, idx, sub, subject_phase, counted, now, out);
            }
            enforce(
                Err(Reject::RateLimited {
                    policy: policy.name.clone(),
                    retry_after: d.retry_after,
                }),
                rc.dry_run,
                out,
            )?;
        }
    }
    Ok(())
}

/// What a rate-limit policy keys the request on.
fn key_input<'a>(a: &'a Ask<'_>, route: &'a str, sub: Option<&'a str>) -> rate_limit::KeyInput<'a> {
    rate_limit::KeyInput {
        ip: a.ip,
        sub,
        route,
        headers: a.headers,
    }
}

/// `RateLimit-Policy` and `RateLimit` for policy `pi` in state `d`.
fn ratelimit_headers(
    active: &Active,
    pi: usize,
    d: &rate_limit::Decision,
) -> (HeaderValue, HeaderValue) {
    let (policy_hdr, name) = &active.ratelimit_headers[pi];
    (policy_hdr.clone(), rate_limit::state_header(name, d))
}

/// A request one policy refuses costs nothing in the route's others: what they counted is
/// given back, so a client that waits out `Retry-After` gets in. `counted`: the policies of
/// this phase that counted the request (by position); in the subject phase every non-subject
/// policy has. A `global` policy's count in the shared store is not given back (it is
/// checked last, see [`limits`]).
#[allow(clippy::too_many_arguments)]
fn refund(
    a: &Ask<'_>,
    active: &Active,
    idx: usize,
    sub: Option<&str>,
    subject_phase: bool,
    counted: u64,
    now: rate_limit::Time,
    out: &mut Outcome,
) {
    let rc = &active.routes[idx].cfg;
    for (m, &pi) in rc.rate_limit.iter().enumerate() {
        let is_subject = active.limiters.policy(pi).key == LimitKey::Subject;
        let was_counted = if is_subject == subject_phase {
            m < 64 && counted & (1 << m) != 0
        } else {
            subject_phase
        };
        if !was_counted {
            continue;
        }
        if let Some(d) = active
            .limiters
            .refund_at(pi, &key_input(a, &rc.name, sub), now)
        {
            if m == 0 {
                out.ratelimit = Some(ratelimit_headers(active, pi, &d));
            }
        }
    }
}

/// The request's framing and host must be unambiguous. No transfer coding but `chunked`.
/// And (RFC 9112 §3.2, §3.2.2) an HTTP/1.1 request carries
/// exactly one Host header with a valid value, and an absolute-form target names the same host
/// as Host (RFC 9112 says the target wins; the gateway routes on Host and passes Host on, so a
/// different one is refused rather than silently ignored). Otherwise `400 bad_request` before
/// any phase runs. HTTP/2 is left as it was: a Host header there, if any, names the host
/// routed on and passed on, which is what clients that set one mean.
fn check_head(
    version: http::Version,
    headers: &HeaderMap,
    uri: &http::Uri,
    seen: &forward::Seen,
) -> Result<(), Reject> {
    // A transfer coding besides `chunked` (`gzip, chunked`): hyper takes the chunks off and
    // would pass the body on still gzipped with nothing saying so.
    let te = seen.has(forward::Seen::TRANSFER_ENCODING);
    let other_coding = te
        && headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
            v.to_str().map_or(true, |s| {
                s.split(',')
                    .any(|c| !c.trim().eq_ignore_ascii_case("chunked"))
            })
        });
    if other_coding {
        return Err(Reject::BadRequest("a transfer coding other than chunked"));
    }
    if seen.hosts > 1 {
        return Err(Reject::BadRequest("more than one Host header"));
    }
    let Some(host) = &seen.host else {
        return if version == http::Version::HTTP_11 {
            Err(Reject::BadRequest("missing Host header"))
        } else {
            Ok(())
        };
    };
    if host.is_empty() {
        // Allowed for a target without an authority; nothing to route on.
        return Ok(());
    }
    if !valid_host(host.as_bytes()) {
        return Err(Reject::BadRequest("invalid Host header"));
    }
    let h1 = matches!(version, http::Version::HTTP_10 | http::Version::HTTP_11);
    if let (true, Some(target), Ok(host)) = (h1, uri.authority(), host.to_str()) {
        if !route::host_of(target.as_str()).eq_ignore_ascii_case(route::host_of(host)) {
            return Err(Reject::BadRequest("Host differs from the request target"));
        }
    }
    Ok(())
}

/// A Host value that is one authority, `host[:port]`, with no userinfo.
pub fn valid_host(h: &[u8]) -> bool {
    plain_host(h) || (!h.contains(&b'@') && http::uri::Authority::try_from(h).is_ok())
}

/// `name[:port]` with a name of letters, digits, `.` and `-` and a port up to 65535: the Host
/// nearly every request carries, accepted without the full authority parse.
fn plain_host(h: &[u8]) -> bool {
    let (name, port) = match h.iter().position(|&c| c == b':') {
        Some(i) => (&h[..i], Some(&h[i + 1..])),
        None => (h, None),
    };
    let name_ok = !name.is_empty()
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-');
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.iter().all(u8::is_ascii_digit)
            && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= u32::from(u16::MAX)
    });
    name_ok && port_ok
}

/// Host for route matching: `Host`, else the URI authority (HTTP/2), without port. Borrowed:
/// route matching compares hosts case-insensitively, so nothing is lower-cased per request.
pub fn request_host<'a>(host: Option<&'a HeaderValue>, uri: &'a http::Uri) -> Option<&'a str> {
    let raw = host
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))?;
    Some(route::host_of(raw))
}

#[cfg(test)]
mod tests {
    use super::plain_host;
    use proptest::prelude::*;

    #[test]
    fn plain_hosts() {
        for ok in ["example.com", "a-b.example:8443", "127.0.0.1:80", "x:65535"] {
            assert!(plain_host(ok.as_bytes()), "{ok}");
        }
        for not in [
            "", ":80", "a:", "a:65536", "a:123456", "[::1]:80", "u@h", "a b", "a:8a",
        ] {
            assert!(!plain_host(not.as_bytes()), "{not}");
        }
    }

    proptest! {
        /// The shortcut accepts nothing the full check would refuse.
        #[test]
        fn plain_host_is_a_valid_authority(h in "[a-z0-9.:@-]{0,12}") {
            if plain_host(h.as_bytes()) {
                prop_assert!(http::uri::Authority::try_from(h.as_bytes()).is_ok());
                prop_assert!(!h.contains('@'));
            }
        }
    }
}
