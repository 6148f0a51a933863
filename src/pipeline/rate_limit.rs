//! Phase 4: named rate-limit policies and the login lock-out. INTERFACE (stub until implemented)

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use crate::config::{LoginProtection, RateLimitPolicy};

/// What a key function may read.
pub struct KeyInput<'a> {
    pub ip: IpAddr,
    /// Verified subject only.
    pub sub: Option<&'a str>,
    pub route: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests allowed right now (after this one).
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When refused: until the next request would pass.
    pub retry_after: Duration,
}

/// One generation's limiters; state carries over from `previous` for unchanged policies.
pub struct Limiters {
    policies: Vec<RateLimitPolicy>,
}

impl Limiters {
    pub fn new(policies: &[RateLimitPolicy], _previous: Option<&Limiters>) -> Limiters {
        Limiters {
            policies: policies.to_vec(),
        }
    }

    pub fn policy(&self, idx: usize) -> &RateLimitPolicy {
        &self.policies[idx]
    }

    pub fn check(&self, idx: usize, _key: &KeyInput<'_>) -> Decision {
        let p = &self.policies[idx];
        Decision {
            allowed: true,
            remaining: p.burst,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
        }
    }

    /// Drop idle keys and bound memory; called by a background task.
    pub fn prune(&self) {}
}

/// `RateLimit-Policy` and `RateLimit` header values (IETF httpapi structured headers).
pub fn headers(p: &RateLimitPolicy, d: &Decision) -> (HeaderValue, HeaderValue) {
    let w = crate::error::ceil_secs(p.interval() * p.burst);
    let pol = format!("\"{}\";q={};w={}", p.name, p.burst, w);
    let now = format!(
        "\"{}\";r={};t={}",
        p.name,
        d.remaining,
        crate::error::ceil_secs(d.reset)
    );
    (
        HeaderValue::from_str(&pol).unwrap_or(HeaderValue::from_static("")),
        HeaderValue::from_str(&now).unwrap_or(HeaderValue::from_static("")),
    )
}

/// Login lock-out per client IP on mint routes.
pub struct LoginGuard {
    cfg: LoginProtection,
}

impl LoginGuard {
    pub fn new(cfg: &LoginProtection) -> LoginGuard {
        LoginGuard { cfg: cfg.clone() }
    }

    /// Some(remaining lock time) when the IP is locked out.
    pub fn locked(&self, _ip: IpAddr) -> Option<Duration> {
        None
    }

    pub fn is_failure(&self, status: u16) -> bool {
        self.cfg.failure_status.contains(&status)
    }

    pub fn failure(&self, _ip: IpAddr) {}

    pub fn success(&self, _ip: IpAddr) {}

    pub fn prune(&self) {}
}
