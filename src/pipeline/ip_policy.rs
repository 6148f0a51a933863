//! Phase 2 of the request journey: the allow/deny decision on the client IP that phase 1
//! ([`super::client_ip`]) resolved. The global `[ip]` policy runs right after phase 1; a
//! route's own `ip` policy is the same type, checked once the route is known.
//!
//! An [`IpPolicy`] is built once per config generation from [`IpLists`] (with `deny_file`
//! already merged into `deny`) into sorted range tables ([`table::IpRangeSet`]), so a
//! lookup is a binary search even with 100k CIDRs. Rules: deny wins over allow; a
//! non-empty allow list must contain the IP; an empty allow list admits everyone.
//! IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address, on both the address and the
//! network side, so it cannot slip past an IPv4 deny entry.

pub mod table;

use std::net::IpAddr;

use crate::config::IpLists;
use crate::error::Reject;

pub use table::{canonical_net, net_contains, IpRangeSet};

/// One allow/deny policy, ready for lookups.
#[derive(Debug, Clone, Default)]
pub struct IpPolicy {
    allow: IpRangeSet,
    deny: IpRangeSet,
}

impl IpPolicy {
    pub fn new(lists: &IpLists) -> IpPolicy {
        IpPolicy {
            allow: IpRangeSet::new(&lists.allow),
            deny: IpRangeSet::new(&lists.deny),
        }
    }

    /// Deny wins; a non-empty allow list must contain the IP.
    pub fn check(&self, ip: IpAddr) -> Result<(), Reject> {
        let ip = ip.to_canonical();
        if self.deny.contains(ip) {
            return Err(Reject::IpDenied("deny list"));
        }
        if !self.allow.is_empty() && !self.allow.contains(ip) {
            return Err(Reject::IpDenied("not in allow list"));
        }
        Ok(())
    }

    /// The IP is on the deny list (`deny` or `deny_file`).
    pub fn denies(&self, ip: IpAddr) -> bool {
        self.deny.contains(ip.to_canonical())
    }

    /// Neither list has an entry: every IP passes and the phase can be skipped.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests;
