//! Phase 1: the one canonical client IP. INTERFACE (stub until implemented)

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::ClientIpConfig;

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

/// `proxied` is the source address a trusted PROXY-protocol header announced.
pub fn resolve(
    peer: IpAddr,
    proxied: Option<IpAddr>,
    _headers: &HeaderMap,
    _cfg: &ClientIpConfig,
) -> ClientIp {
    let peer = peer.to_canonical();
    match proxied {
        Some(ip) => ClientIp {
            ip: ip.to_canonical(),
            source: IpSource::ProxyProtocol,
            peer,
        },
        None => ClientIp {
            ip: peer,
            source: IpSource::Peer,
            peer,
        },
    }
}

/// Is this TCP peer one of the trusted proxies?
pub fn is_trusted(peer: IpAddr, cfg: &ClientIpConfig) -> bool {
    let peer = peer.to_canonical();
    cfg.trusted_proxies.iter().any(|n| n.contains(&peer))
}
