//! Phase 6: the upstream request. Headers cleaned and set (SPEC §3.6), the body streamed
//! both ways under `max_request_body`, WebSocket upgrades passed through, and upstream
//! failures turned into 502/504.

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{Body, BoxError};
use crate::config::TokenConfig;
use crate::error::Reject;
use crate::state::Upstream;
use crate::token::Claims;

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
    /// Path (normalized, rewritten) and query for the upstream.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub token: Option<&'a TokenConfig>,
    /// The refresh token's request header (`[refresh].header`): never passed on.
    pub refresh_header: Option<&'a HeaderName>,
    pub claims: Option<&'a Claims>,
    pub max_body: u64,
    pub allow_upgrade: bool,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Remove hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names, noting which hop-by-hop ones are present (bit i for
    // `HOP_BY_HOP[i]`, bit 8 for `Proxy-Authenticate`). Most messages carry none, the rest one
    // or two (`Connection: keep-alive`): only those are removed, with no allocation.
    let mut present = 0u16;
    for k in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|d| d == k) {
            present |= 1 << i;
        } else if k == header::PROXY_AUTHENTICATE {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if present == 0 {
        return;
    }
    // Other headers named in `Connection` (rare; `keep-alive`, `close`, `upgrade` are not).
    let mut named: Vec<HeaderName> = Vec::new();
    for v in h.get_all(header::CONNECTION) {
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
    for n in &named {
        h.remove(n);
    }
    for (i, d) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(d);
        }
    }
    if present & (1 << HOP_BY_HOP.len()) != 0 {
        h.remove(header::PROXY_AUTHENTICATE);
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

/// Remove the token (Authorization with one of our schemes, the token header, our cookies).
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
    if h.contains_key(header::COOKIE) {
        let name = token.cookie.name.as_str();
        let refresh = format!("{name}_refresh");
        let mut kept: Vec<&str> = Vec::new();
        let all: Vec<String> = h
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let mut changed = false;
        for line in &all {
            for pair in line.split(';') {
                let n = pair.split_once('=').map(|(n, _)| n).unwrap_or(pair).trim();
                if n == name || n == refresh {
                    changed = true;
                } else if !pair.trim().is_empty() {
                    kept.push(pair.trim());
                }
            }
        }
        if changed {
            h.remove(header::COOKIE);
            if !kept.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                    h.insert(header::COOKIE, v);
                }
            }
        }
    }
}

/// The request body, refused once it passes `max`.
struct LimitedBody {
    inner: Incoming,
    remaining: u64,
}

#[derive(Debug)]
pub struct BodyTooLarge;

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body over max_request_body")
    }
}

impl std::error::Error for BodyTooLarge {}

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
                    if n > self.remaining {
                        self.remaining = 0;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
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

fn caused_by_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTooLarge>() {
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
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > f.max_body {
            return Err(Reject::PayloadTooLarge);
        }
    }
    let upgrade = f.allow_upgrade && is_upgrade(req.headers()) && req.version() == Version::HTTP_11;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // Host as the client sent it (HTTP/2: from :authority).
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let h = &mut parts.headers;
    // The forwarding headers a trusted proxy sent are read before the hop-by-hop ones go: a
    // `Connection` naming one of them cannot erase what the gateway itself sets.
    let prior_xff: Option<String> = if f.peer_trusted {
        let joined: Vec<&str> = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!joined.is_empty()).then(|| joined.join(", "))
    } else {
        None
    };
    let prior_proto = f
        .peer_trusted
        .then(|| h.get(&X_FORWARDED_PROTO).cloned())
        .flatten();
    let prior_host = f
        .peer_trusted
        .then(|| h.get(&X_FORWARDED_HOST).cloned())
        .flatten();
    strip_hop_by_hop(h);
    if !f.peer_trusted {
        let doomed: Vec<HeaderName> = h
            .keys()
            .filter(|k| {
                let k = k.as_str();
                // Any spelling an app framework might read (`_` for `-`).
                (k.len() > 12 && same_spelling(&k[..12], "x-forwarded-"))
                    || same_spelling(k, "forwarded")
                    || same_spelling(k, "x-real-ip")
            })
            .cloned()
            .collect();
        for k in doomed {
            h.remove(k);
        }
    }
    let xff = match prior_xff {
        Some(p) => HeaderValue::from_str(&format!("{p}, {}", f.peer)).ok(),
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
    if let Some(v) = prior_host.or_else(|| host.clone()) {
        h.insert(X_FORWARDED_HOST, v);
    }
    if let Some(host) = host {
        h.insert(header::HOST, host);
    }

    if let Some(tc) = f.token {
        remove_claim_headers(h, tc);
        if !tc.forward_token {
            strip_token(h, tc);
        }
        // `forward_token` is about the access token; a refresh token never leaves.
        if let Some(r) = f.refresh_header {
            h.remove(r);
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
    if upgrade {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }

    let (target, pool) = f.upstream.pick();
    let mut pq = String::with_capacity(target.base_path.len() + f.path.len() + 1);
    pq.push_str(&target.base_path);
    pq.push_str(f.path);
    if let Some(q) = f.query {
        pq.push('?');
        pq.push_str(q);
    }
    // Origin form: the connection already goes to the target.
    parts.uri = Uri::builder()
        .path_and_query(pq)
        .build()
        .map_err(|_| Reject::BadRequest("unbuildable upstream uri"))?;
    parts.version = Version::HTTP_11;

    let body = LimitedBody {
        inner: body,
        remaining: f.max_body,
    }
    .boxed();
    let up_req = Request::from_parts(parts, body);
    let timeout: Duration = f.upstream.cfg.timeout;
    let mut resp = match tokio::time::timeout(timeout, pool.send(up_req)).await {
        Err(_) => return Err(Reject::UpstreamTimeout),
        Ok(Err(e)) => {
            if caused_by_too_large(&e) {
                return Err(Reject::PayloadTooLarge);
            }
            return Err(Reject::UpstreamUnavailable(error_chain(&e)));
        }
        Ok(Ok(r)) => r,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_up) = client_upgrade {
            let upstream_up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(c), Ok(u)) = (client_up.await, upstream_up.await) {
                    let mut c = TokioIo::new(c);
                    let mut u = TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
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
    if h.contains_key(header::TRANSFER_ENCODING) {
        // The upstream framed the body in chunks: a Content-Length beside that is not the
        // length of what is passed on (RFC 9112 §6.3), and would leave the client waiting.
        h.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(h);
    Ok(resp.map(BodyExt::boxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert!(same_spelling("x-auth-subject", "X-Auth-Subject"));
        assert!(same_spelling("x_auth_subject", "x-auth-subject"));
        assert!(!same_spelling("x-auth-subjects", "x-auth-subject"));
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
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h["x-ok"], "1");
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
