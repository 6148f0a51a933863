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

use crate::activity::BodyOpen;
use crate::body::{Body, BoxError};
use crate::config::{CookieConfig, ForwardHeader, TokenConfig};
use crate::error::Reject;
use crate::state::Upstream;
use crate::token::Claims;
use crate::upstream::SendFail;

mod body;
mod headers;

use body::*;
use headers::*;
pub use headers::{
    claim_header_value, remove_claim_headers, scan, scan_response, strip_hop_by_hop, strip_token,
    Seen,
};

/// What the forward phase needs to know about the request besides the request itself.
pub struct Forward<'a> {
    pub client_ip: IpAddr,
    /// The address that connected to us (after PROXY protocol).
    pub peer: IpAddr,
    /// `peer` as a header value.
    pub peer_header: &'a HeaderValue,
    pub peer_trusted: bool,
    /// The header a trusted proxy names the client in (`client_ip.header`): of the forwarding
    /// headers such a proxy sends, only its family is passed on.
    pub ip_header: ForwardHeader,
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
    /// The client's connection: its activity (a request is not done while its body is being
    /// forwarded), and its place among `max_connections`, which a WebSocket tunnel keeps.
    pub conn: &'a Arc<super::Conn>,
}

/// `e` or the first error under it that is a `T`.
fn found<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
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
    // A WebSocket handshake is a GET (RFC 6455 §4.1); any other method goes as a plain request.
    let upgrade = f.allow_upgrade
        && seen.has(Seen::UPGRADE)
        && req.method() == http::Method::GET
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
    // The client: only from the family it was read from (with `header = "x-real-ip"`, an
    // `X-Forwarded-For` the proxy let through is the client's own, not the proxy's).
    let forwarded = f.peer_trusted && seen.has(Seen::FORWARDING);
    let xff_family = forwarded && f.ip_header == ForwardHeader::XForwardedFor;
    let prior_xff: Option<String> = if xff_family {
        // Element by element, as the client was read: empty ones (an empty line, `a, `) are
        // nobody, and one that is not text cannot be passed on, but the others around it are.
        let joined: Vec<&str> = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&c| c == b','))
            .filter_map(|e| std::str::from_utf8(e.trim_ascii()).ok())
            .filter(|e| !e.is_empty() && e.is_ascii())
            .collect();
        (!joined.is_empty()).then(|| joined.join(", "))
    } else {
        None
    };
    // The proxy's scheme and host: with `header = "forwarded"` the `proto` of its own element
    // first; its X-Forwarded-Proto / -Host in any case.
    let prior_proto = forwarded
        .then(|| {
            (f.ip_header == ForwardHeader::Forwarded)
                .then(|| forwarded_proto(h).map(HeaderValue::from_static))
                .flatten()
                .or_else(|| h.get(&X_FORWARDED_PROTO).cloned())
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
    if seen.has(Seen::FORWARDING) {
        // From a trusted proxy, its own forwarding headers stay.
        let doomed: Vec<HeaderName> = h
            .keys()
            .filter(|k| {
                forwarding_spelling(k.as_str())
                    && !(f.peer_trusted && kept_from_trusted_proxy(k.as_str(), f.ip_header))
            })
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
    let open = has_body.then(|| f.conn.activity.body_forwarded());
    let progress = has_body.then(|| {
        Arc::new(BodyProgress {
            since: f.sent,
            last: Default::default(),
            bytes: Default::default(),
        })
    });
    let sending = has_body.then(|| Arc::new(()));
    if let Some(s) = &sending {
        parts
            .extensions
            .insert(crate::upstream::Sending(Arc::downgrade(s)));
    }
    let body = LimitedBody {
        inner: body,
        max: f.max_body,
        open,
        progress: progress.clone(),
        read: 0,
        _sending: sending,
    }
    .boxed();
    let up_req = Request::from_parts(parts, body);
    let timeout = f.upstream.cfg.timeout;
    let progress = progress.as_deref();
    // From when the caller sent it on (already read from the clock, for the upstream time).
    // Boxed: the send future is about a kilobyte, and `timeout` would copy it in twice. The
    // picked target's pool is asked directly; only when it could not connect (the request is
    // back, unsent) do the other targets get it, so the common path has no extra layer.
    let mut sent = within(
        Box::pin(pool.send(up_req, f.sent)),
        f.sent,
        timeout,
        progress,
    )
    .await;
    if f.upstream.has_others() {
        if let Some(Err(
            fail @ SendFail {
                unsent: Some(_), ..
            },
        )) = sent
        {
            sent = within(
                Box::pin(f.upstream.failover(picked, fail, f.sent)),
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
            if found::<BodyTooLarge>(&e).is_some() {
                return Err(Reject::PayloadTooLarge);
            }
            // The client's own body failed: its error, not the upstream's. Cut short (the
            // client went away) is not a bad request: nobody is there to hear one.
            if let Some(c) = found::<ClientBodyError>(&e) {
                return Err(if c.client_left() {
                    Reject::ClientClosed
                } else {
                    Reject::BadRequest("the request body could not be read")
                });
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
            let (idle, conn) = (f.idle_timeout, f.conn.clone());
            tokio::spawn(async move {
                if let (Ok(c), Ok(u)) = (client_up.await, upstream_up.await) {
                    let _tunnel = conn.slot.as_ref().map(|s| s.tunnel());
                    let activity = conn.activity.clone();
                    crate::tunnel::splice(TokioIo::new(c), TokioIo::new(u), idle, activity).await;
                }
                // The connection's slot (`max_connections`, the active-connections gauge)
                // is given back with the tunnel.
                drop(conn);
            });
            let (parts, _) = resp.into_parts();
            return Ok(Response::from_parts(parts, crate::body::empty()));
        }
        return Err(Reject::UpstreamUnavailable(
            "unexpected 101 from upstream".into(),
        ));
    }
    let no_content = resp.status() == StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    let seen = scan_response(h);
    if seen.has(Seen::TRANSFER_ENCODING) || (no_content && seen.has(Seen::CONTENT_LENGTH)) {
        // The upstream framed the body in chunks: a Content-Length beside that is not the
        // length of what is passed on (RFC 9112 §6.3), and would leave the client waiting.
        // A 204 has no body and must not say otherwise (RFC 9110 §8.6): HTTP/2 clients
        // refuse the stream of one that does.
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
