//! Login lock-out (`[login_protection]`): failed answers of mint routes counted per client.
//!
//! A client is an IPv4 address, or an IPv6 /64 ([`LOGIN_IPV6_PREFIX`]): one subscriber usually
//! holds a whole /64, so counting single IPv6 addresses would let it rotate addresses and never
//! be locked. The window slides, as fail2ban's `findtime`: the `max_failures`-th failure within
//! any span of `window` locks the client for `lockout` (each client keeps the times of its last
//! failures, at most `max_failures` of them). A fixed window opened at the first failure would
//! let a client send twice the number at its edge, and again every window. A successful
//! login does not clear the count: the key is the client, not the account, so a reset would let
//! anyone holding one valid account interleave its logins with guesses at others' passwords and
//! never be locked. While locked, failures are not counted (the pipeline refuses the requests
//! before they reach the upstream).
//!
//! At most [`MAX_TRACKED_LOGIN_KEYS`] clients are tracked; [`LoginGuard::prune`] drops those
//! with neither an open window nor a lock. At the cap a new client's failure is not recorded
//! (after an inline prune, at most once per second). Unlike the rate limiters this fails open,
//! deliberately: the alternative — locking every new client — would let whoever can fill the
//! table lock everyone out of logging in, while the route's own rate-limit policy still bounds
//! how fast an untracked client can guess.

use std::hash::RandomState;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::LoginProtection;

/// Hard cap on clients tracked by one [`LoginGuard`].
pub const MAX_TRACKED_LOGIN_KEYS: usize = 1_000_000;

/// IPv6 clients are grouped by this prefix.
pub const LOGIN_IPV6_PREFIX: u8 = 64;

#[derive(Debug, Clone, Default)]
struct Client {
    /// When its failures inside the window happened, oldest first (at most `max_failures`).
    failures: Vec<Instant>,
    locked_until: Option<Instant>,
}

impl Client {
    fn lock_left(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    fn live(&self, now: Instant, window: Duration) -> bool {
        self.lock_left(now).is_some()
            || self
                .failures
                .last()
                .is_some_and(|&t| now.saturating_duration_since(t) < window)
    }
}

/// Login lock-out per client IP on mint routes.
pub struct LoginGuard {
    cfg: LoginProtection,
    clients: DashMap<u128, Client, RandomState>,
    max_keys: usize,
    last_cap_prune: Mutex<Option<Instant>>,
}

fn client_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => v6.to_bits() & (u128::MAX << (128 - u32::from(LOGIN_IPV6_PREFIX))),
    }
}

impl LoginGuard {
    pub fn new(cfg: &LoginProtection) -> LoginGuard {
        LoginGuard::with_cap(cfg, MAX_TRACKED_LOGIN_KEYS)
    }

    /// As [`LoginGuard::new`] with a cap on tracked clients.
    pub fn with_cap(cfg: &LoginProtection, max_keys: usize) -> LoginGuard {
        LoginGuard {
            cfg: cfg.clone(),
            clients: DashMap::with_hasher(RandomState::new()),
            max_keys,
            last_cap_prune: Mutex::new(None),
        }
    }

    /// Some(remaining lock time) when the IP is locked out.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        self.locked_at(ip, Instant::now())
    }

    pub fn locked_at(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        self.clients.get(&client_key(ip))?.lock_left(now)
    }

    pub fn is_failure(&self, status: u16) -> bool {
        self.cfg.failure_status.contains(&status)
    }

    pub fn failure(&self, ip: IpAddr) {
        self.failure_at(ip, Instant::now());
    }

    /// Records a failed login answer; returns the lock time when this failure locked the client.
    pub fn failure_at(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let key = client_key(ip);
        if !self.clients.contains_key(&key) && !self.room_for_new(now) {
            metrics::counter!("iptgate_login_guard_cap_total").increment(1);
            return None;
        }
        let mut c = self.clients.entry(key).or_default();
        if c.lock_left(now).is_some() {
            return None;
        }
        let (window, max) = (self.cfg.window, self.cfg.max_failures.max(1) as usize);
        c.failures
            .retain(|&t| now.saturating_duration_since(t) < window);
        c.failures.push(now);
        if c.failures.len() >= max {
            c.failures = Vec::new();
            c.locked_until = now.checked_add(self.cfg.lockout);
            return Some(self.cfg.lockout);
        }
        None
    }

    /// Drops clients with neither an open window nor an active lock; called by a background task.
    pub fn prune(&self) {
        self.prune_at(Instant::now());
    }

    pub fn prune_at(&self, now: Instant) {
        let window = self.cfg.window;
        self.clients.retain(|_, c| c.live(now, window));
        self.clients.shrink_to_fit();
    }

    /// Clients currently tracked.
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }

    /// Whether a new client may be tracked; at the cap, prunes inline at most once a second.
    fn room_for_new(&self, now: Instant) -> bool {
        if self.clients.len() < self.max_keys {
            return true;
        }
        let due = match self.last_cap_prune.lock() {
            Ok(mut last) => {
                let due =
                    last.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
                if due {
                    *last = Some(now);
                }
                due
            }
            Err(_) => false,
        };
        if due {
            tracing::warn!(
                keys = self.clients.len(),
                "login guard table full: pruning inline"
            );
            let window = self.cfg.window;
            self.clients.retain(|_, c| c.live(now, window));
        }
        self.clients.len() < self.max_keys
    }
}
