//! Forward auth: a decision endpoint for nginx `auth_request`, Traefik `ForwardAuth` and
//! Caddy `forward_auth`. The original request's method and URI come from
//! `X-Forwarded-Method`/`X-Forwarded-Uri` (Traefik, Caddy) or
//! `X-Original-Method`/`X-Original-URI` (nginx); phases 1–5 run on it; the answer is 200
//! with the claim headers, or the refusal itself. Only trusted proxies may ask.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;

use crate::body::{full, Body};
use crate::error::Reject;
use crate::pipeline::{client_ip, forward, judge, path, request_host, Ask, Conn, Outcome};
use crate::state::{Active, State};

/// The one value the proxy gave under any of `names`. Two that differ (`X-Forwarded-Uri`
/// beside `X-Original-URI`, or a header twice) are ambiguous: a proxy that sets one family
/// may pass the client's copy of the other on (nginx `auth_request` passes every client
/// header), so neither can be trusted to be the proxy's.
/// Methods compare without case (a lower-case one is refused afterwards), URIs and hosts
/// exactly. One sent empty is as ambiguous.
fn one_of<'a>(
    h: &'a HeaderMap,
    names: &[&str],
    fold_case: bool,
    what: &'static str,
) -> Result<Option<&'a str>, Reject> {
    let mut found: Option<&str> = None;
    for n in names {
        for v in h.get_all(*n) {
            let v = v.to_str().map_err(|_| Reject::BadRequest(what))?.trim();
            if v.is_empty() {
                // Sent but naming nothing: not taken as absent (an empty method header would
                // otherwise be judged as GET).
                return Err(Reject::BadRequest(what));
            }
            match found {
                Some(f) if f != v && !(fold_case && f.eq_ignore_ascii_case(v)) => {
                    return Err(Reject::BadRequest(what));
                }
                _ => found = Some(v),
            }
        }
    }
    Ok(found)
}

/// The request a proxy asks about, from its headers.
pub struct Original<'a> {
    pub method: Method,
    /// Normalized.
    pub path: String,
    /// `X-Forwarded-Host`, when the proxy sent one.
    pub host: Option<&'a str>,
}

/// Reads the original request's method, URI and host from the proxy's headers. The host is
/// the one the proxy names in `X-Forwarded-Host` (Traefik and Caddy send it; nginx when told
/// to); with `host_routes` (routes match on host) it is required: the request's own `Host`,
/// the proxy's way of reaching the gateway, would judge it on the wrong route.
pub fn original(h: &HeaderMap, host_routes: bool) -> Result<Original<'_>, Reject> {
    let method = one_of(
        h,
        &["x-forwarded-method", "x-original-method"],
        true,
        "forward auth: ambiguous method",
    )?;
    // As sent, and refused with lower-case letters as a request's own method is: the app
    // behind the proxy gets the original method unchanged.
    let method = match method {
        None => Method::GET,
        Some(m) => Method::from_bytes(m.as_bytes())
            .ok()
            .filter(|m| crate::pipeline::method_problem(m).is_none())
            .ok_or(Reject::BadRequest("forward auth: bad method header"))?,
    };
    let uri_text = one_of(
        h,
        &["x-forwarded-uri", "x-original-uri"],
        false,
        "forward auth: ambiguous original URI",
    )?
    .ok_or(Reject::BadRequest(
        "forward auth: no X-Forwarded-Uri / X-Original-URI",
    ))?;
    let uri: Uri = uri_text
        .parse()
        .map_err(|_| Reject::BadRequest("forward auth: unparseable original URI"))?;
    let path = path::normalize(uri.path()).map_err(Reject::BadRequest)?;
    let host = one_of(
        h,
        &["x-forwarded-host"],
        false,
        "forward auth: ambiguous host",
    )?;
    if host.is_some_and(|h| !crate::pipeline::valid_host(h.as_bytes())) {
        return Err(Reject::BadRequest("forward auth: invalid X-Forwarded-Host"));
    }
    if host.is_none() && host_routes {
        return Err(Reject::BadRequest(
            "forward auth: routes match on host and the proxy sent no X-Forwarded-Host",
        ));
    }
    let host = host.map(crate::pipeline::route::host_of);
    Ok(Original { method, path, host })
}

pub async fn answer(
    req: &Request<Incoming>,
    conn: &Conn,
    active: &Active,
    state: &State,
    started: Instant,
    out: &mut Outcome,
) -> Result<Response<Body>, Reject> {
    let cfg = &active.config;
    if !conn.from_trusted_proxy(&cfg.client_ip) {
        out.client_ip = Some(conn.hop);
        return Err(Reject::IpDenied("forward auth asked by an untrusted peer"));
    }
    let h = req.headers();
    // Resolved first, so that a refused request is logged with its client IP too.
    let cip = client_ip::resolve(conn.peer.ip(), conn.proxied, h, &cfg.client_ip);
    out.client_ip = Some(cip.ip);
    out.ip_source = Some(cip.source);
    let original = original(h, active.host_routes)?;
    out.judged = Some((original.method.clone(), original.path.clone()));
    let original_path = original.path;
    let method = original.method;
    let host = original
        .host
        .or_else(|| request_host(h.get(http::header::HOST), req.uri()));
    let judged = judge(
        &Ask {
            method: &method,
            host,
            path: &original_path,
            headers: h,
            ip: cip.ip,
            started,
        },
        active,
        state,
        out,
    )
    .await?;
    let mut resp = Response::new(full(Bytes::from_static(b"")));
    if let (Some(tc), Some(claims)) = (&cfg.token, &judged.claims) {
        for (claim, name) in &tc.forward_claims {
            if let Some(v) = claims.get(claim) {
                let hv = forward::claim_header_value(&v)
                    .ok_or(Reject::TokenInvalid("claim is not a valid header value"))?;
                resp.headers_mut().insert(name.clone(), hv);
            }
        }
    }
    Ok(resp)
}
