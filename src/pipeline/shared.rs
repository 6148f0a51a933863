//! Limits shared by every gateway on one store: with `[store] backend = "redis"`, the login
//! lock-out and `global` rate-limit policies live in Redis (per-IP and other keyed limits stay
//! per instance, where they cost no round trip). With the memory store they are local.

use std::net::IpAddr;
use std::time::Duration;

use crate::config::{OnError, RateLimitPolicy};
use crate::error::Reject;
use crate::pipeline::rate_limit::Decision;
use crate::state::{Active, State};
use crate::store::StoreError;

/// The login lock-out key: the IPv4 address, or the IPv6 /64 (address rotation inside one
/// /64 does not escape the lock-out).
pub fn login_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let masked = u128::from(v6) & (u128::MAX << 64);
            format!("{}/64", std::net::Ipv6Addr::from(masked))
        }
    }
}

fn store_failed(on_error: OnError, e: &StoreError) -> Result<(), Reject> {
    match on_error {
        OnError::Closed => {
            tracing::error!(target: "security", error = %e, "store unavailable: refusing (on_error = closed)");
            Err(Reject::StoreUnavailable(e.to_string()))
        }
        OnError::Open => {
            tracing::warn!(error = %e, "store unavailable: shared limit skipped (on_error = open)");
            Ok(())
        }
    }
}

/// Remaining lock-out for this client on mint routes, if any.
pub async fn login_locked(
    active: &Active,
    state: &State,
    ip: IpAddr,
) -> Result<Option<Duration>, Reject> {
    if active.config.login_protection.is_none() {
        return Ok(None);
    }
    match state.store.shared() {
        Some(r) => match r.login_locked(&login_key(ip)).await {
            Ok(left) => Ok(left),
            Err(e) => store_failed(active.config.store.on_error, &e).map(|_| None),
        },
        None => Ok(active.login.as_ref().and_then(|g| g.locked(ip))),
    }
}

/// Record a login answer: a `failure_status` answer that minted nothing counts as a failure. A
/// success clears nothing (see `rate_limit::login`).
pub async fn login_outcome(active: &Active, state: &State, ip: IpAddr, minted: bool, status: u16) {
    let Some(lp) = &active.config.login_protection else {
        return;
    };
    if minted || !lp.failure_status.contains(&status) {
        return;
    }
    match state.store.shared() {
        Some(r) => {
            let result = r
                .login_failure(&login_key(ip), lp.window, lp.max_failures, lp.lockout)
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "store unavailable: login outcome not recorded");
            }
        }
        None => {
            if let Some(g) = &active.login {
                g.failure(ip);
            }
        }
    }
}

/// A `global` policy's decision from the shared store, or `None` to decide locally.
pub async fn global(
    active: &Active,
    state: &State,
    policy: &RateLimitPolicy,
) -> Result<Option<Decision>, Reject> {
    let Some(r) = state.store.shared() else {
        return Ok(None);
    };
    match r.gcra(&policy.name, policy.interval(), policy.burst).await {
        Ok((allowed, remaining, reset, retry_after)) => Ok(Some(Decision {
            allowed,
            remaining,
            reset,
            retry_after,
        })),
        Err(e) => store_failed(active.config.store.on_error, &e)
            .map(|_| Some(Decision::untouched(policy.burst))),
    }
}

#[cfg(test)]
mod tests {
    use super::login_key;

    #[test]
    fn login_keys_group_ipv6_by_64() {
        assert_eq!(login_key("203.0.113.7".parse().unwrap()), "203.0.113.7");
        assert_eq!(
            login_key("::ffff:203.0.113.7".parse().unwrap()),
            "203.0.113.7"
        );
        assert_eq!(
            login_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            login_key("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
        assert_ne!(
            login_key("2001:db8:1:2::1".parse().unwrap()),
            login_key("2001:db8:1:3::1".parse().unwrap())
        );
    }
}
