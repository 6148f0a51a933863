//! Phase 1 of the request journey: the one canonical client IP that every later phase
//! (IP policy, rate limits, token binding, the access log) uses.
//!
//! The client is the TCP peer, or the source a PROXY-protocol header announced (the
//! listener accepts one only from a trusted proxy, see [`crate::proxy_protocol`]); this is
//! the *effective peer*. Only when the effective peer is in `trusted_proxies` is the
//! configured forwarding header read (`X-Forwarded-For`, RFC 7239 `Forwarded`, or
//! `X-Real-IP`): its addresses are walked from the right, skipping trusted proxies, and the
//! first untrusted one is the client. The left of a chain is written by whoever sent the
//! request, so it is never believed over the right, and anything the walk cannot read
//! (a malformed element, `for=unknown`, several `X-Real-IP` lines) falls back to the
//! effective peer rather than a guess. Every address is canonical: `::ffff:a.b.c.d` is
//! `a.b.c.d`. No allocation on this path: header lines and their elements are iterated
//! right to left in place.

pub(crate) mod parse;

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};

use crate::config::{ClientIpConfig, ForwardHeader};
use crate::pipeline::ip_policy::net_contains;

use parse::{Hop, Malformed, Syntax};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSource {
    Peer,
    Header,
    ProxyProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    pub ip: IpAddr,
    pub source: IpSource,
    /// The TCP peer (after PROXY protocol: the proxy's address).
    pub peer: IpAddr,
}

/// Why [`resolve`] settled on its answer (for `explain` and debug logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The effective peer is not a trusted proxy: headers are ignored.
    UntrustedPeer,
    /// A PROXY header said `UNKNOWN`: the balancer relays a client it cannot name, and any
    /// forwarding header is that client's own (an L4 balancer writes none): the peer is used.
    ProxyUnknown,
    /// A trusted peer sent no forwarding header.
    NoHeader,
    /// The right-most address that is not a trusted proxy.
    RightmostUntrusted,
    /// Every address in the header is a trusted proxy: the left-most one.
    AllTrusted,
    /// An element the walk reached is not an address: the effective peer is used.
    Malformed,
    /// `Forwarded` named an `unknown` or obfuscated node: the effective peer is used.
    Opaque,
    /// More than one `X-Real-IP` line: the effective peer is used.
    Ambiguous,
}

impl Decision {
    pub fn describe(self) -> &'static str {
        match self {
            Decision::UntrustedPeer => "peer is not a trusted proxy; forwarding headers ignored",
            Decision::ProxyUnknown => {
                "PROXY header said UNKNOWN; peer used, forwarding headers ignored"
            }
            Decision::NoHeader => "trusted peer sent no forwarding header",
            Decision::RightmostUntrusted => {
                "right-most address in the forwarding header that is not a trusted proxy"
            }
            Decision::AllTrusted => "every forwarded address is a trusted proxy; left-most used",
            Decision::Malformed => "malformed forwarding header element; peer used",
            Decision::Opaque => "forwarding header names an unknown or obfuscated node; peer used",
            Decision::Ambiguous => "several X-Real-IP headers; peer used",
        }
    }
}

/// What a trusted proxy's PROXY-protocol header said about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Proxied {
    /// No header (PROXY protocol off, or not sent where it is optional), or a v2 `LOCAL` one
    /// (the balancer's own connection, such as a health check): the TCP peer.
    #[default]
    No,
    /// The client's address.
    Client(IpAddr),
    /// v1 `UNKNOWN`, or v2 `PROXY` with an unspecified family: a relayed client the balancer
    /// cannot name.
    Unknown,
}

/// `proxied`: what a trusted PROXY-protocol header announced.
pub fn resolve(
    peer: IpAddr,
    proxied: Proxied,
    headers: &HeaderMap,
    cfg: &ClientIpConfig,
) -> ClientIp {
    resolve_explained(peer, proxied, headers, cfg).0
}

/// [`resolve`], also saying why.
pub fn resolve_explained(
    peer: IpAddr,
    proxied: Proxied,
    headers: &HeaderMap,
    cfg: &ClientIpConfig,
) -> (ClientIp, Decision) {
    let peer = peer.to_canonical();
    let effective = match proxied {
        Proxied::Client(ip) => ClientIp {
            ip: ip.to_canonical(),
            source: IpSource::ProxyProtocol,
            peer,
        },
        Proxied::No | Proxied::Unknown => ClientIp {
            ip: peer,
            source: IpSource::Peer,
            peer,
        },
    };
    if proxied == Proxied::Unknown {
        return (effective, Decision::ProxyUnknown);
    }
    if !is_trusted(effective.ip, cfg) {
        return (effective, Decision::UntrustedPeer);
    }
    let outcome = match cfg.header {
        ForwardHeader::XForwardedFor => walk(
            headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .rev()
                .flat_map(|line| parse::xff_line(line.as_bytes())),
            cfg,
        ),
        ForwardHeader::Forwarded => walk(
            headers
                .get_all(http::header::FORWARDED)
                .iter()
                .rev()
                .flat_map(|line| parse::forwarded_line(line.as_bytes())),
            cfg,
        ),
        ForwardHeader::XRealIp => {
            let mut lines = headers.get_all(X_REAL_IP).iter();
            match (lines.next(), lines.next()) {
                (None, _) => Err(Decision::NoHeader),
                (Some(_), Some(_)) => Err(Decision::Ambiguous),
                (Some(line), None) => walk(
                    std::iter::once(parse::parse_node(
                        parse::trim_ows(line.as_bytes()),
                        Syntax::Plain,
                    )),
                    cfg,
                ),
            }
        }
    };
    match outcome {
        Ok((ip, decision)) => (
            ClientIp {
                ip,
                source: IpSource::Header,
                peer,
            },
            decision,
        ),
        Err(decision) => (effective, decision),
    }
}

/// Walks hops given right to left; `Err` means "use the effective peer".
fn walk<I>(hops: I, cfg: &ClientIpConfig) -> Result<(IpAddr, Decision), Decision>
where
    I: Iterator<Item = Result<Hop, Malformed>>,
{
    let mut leftmost = None;
    for hop in hops {
        match hop {
            Err(Malformed) => return Err(Decision::Malformed),
            Ok(Hop::Opaque) => return Err(Decision::Opaque),
            Ok(Hop::Ip(ip)) => {
                if !is_trusted(ip, cfg) {
                    return Ok((ip, Decision::RightmostUntrusted));
                }
                leftmost = Some(ip);
            }
        }
    }
    leftmost
        .map(|ip| (ip, Decision::AllTrusted))
        .ok_or(Decision::NoHeader)
}

/// Is this TCP peer one of the trusted proxies?
pub fn is_trusted(peer: IpAddr, cfg: &ClientIpConfig) -> bool {
    cfg.trusted_proxies.iter().any(|n| net_contains(n, peer))
}

#[cfg(test)]
mod tests;
