//! Phase 2: allow/deny decision. INTERFACE (stub until implemented)

use std::net::IpAddr;

use crate::config::IpLists;
use crate::error::Reject;

#[derive(Debug, Clone, Default)]
pub struct IpPolicy {
    lists: IpLists,
}

impl IpPolicy {
    pub fn new(lists: &IpLists) -> IpPolicy {
        IpPolicy {
            lists: lists.clone(),
        }
    }

    /// Deny wins; a non-empty allow list must contain the IP.
    pub fn check(&self, ip: IpAddr) -> Result<(), Reject> {
        let ip = ip.to_canonical();
        if self.lists.deny.iter().any(|n| n.contains(&ip)) {
            return Err(Reject::IpDenied("deny list"));
        }
        if !self.lists.allow.is_empty() && !self.lists.allow.iter().any(|n| n.contains(&ip)) {
            return Err(Reject::IpDenied("not in allow list"));
        }
        Ok(())
    }
}
