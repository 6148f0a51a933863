//! The in-memory backend: two `DashMap`s of id → expiry, pruned by [`MemoryStore::prune`].
//!
//! Entries are never evicted before their expiry (a revocation that could be pushed out would
//! be worthless), so memory grows with the number of live revocations and spent refresh tokens;
//! both are bounded by token issuance, which the mint routes' rate limits bound.

use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::Spend;

/// Far enough to mean "never" without overflowing `Instant`.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn expiry(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl.min(FOREVER))
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

#[derive(Default)]
pub struct MemoryStore {
    revoked: DashMap<String, Instant>,
    spent: DashMap<String, Instant>,
}

impl MemoryStore {
    pub fn revoke(&self, id: &str, ttl: Duration) {
        self.revoke_at(id, ttl, Instant::now());
    }

    pub fn revoke_at(&self, id: &str, ttl: Duration, now: Instant) {
        let until = expiry(now, ttl);
        self.revoked
            .entry(id.to_string())
            .and_modify(|e| {
                if *e < until {
                    *e = until;
                }
            })
            .or_insert(until);
    }

    pub fn is_revoked(&self, jti: Option<&str>, fam: Option<&str>) -> bool {
        self.is_revoked_at(jti, fam, Instant::now())
    }

    pub fn is_revoked_at(&self, jti: Option<&str>, fam: Option<&str>, now: Instant) -> bool {
        [jti, fam]
            .into_iter()
            .flatten()
            .any(|id| self.revoked.get(id).is_some_and(|until| *until > now))
    }

    pub fn spend(&self, jti: &str, fam: &str, ttl: Duration) -> Spend {
        self.spend_at(jti, fam, ttl, Instant::now())
    }

    pub fn spend_at(&self, jti: &str, fam: &str, ttl: Duration, now: Instant) -> Spend {
        let until = expiry(now, ttl);
        let reused = match self.spent.entry(jti.to_string()) {
            Entry::Occupied(mut o) => {
                if *o.get() > now {
                    true
                } else {
                    o.insert(until);
                    false
                }
            }
            Entry::Vacant(v) => {
                v.insert(until);
                false
            }
        };
        if reused {
            self.revoke_at(fam, ttl, now);
            Spend::Reused
        } else {
            Spend::Fresh
        }
    }

    pub fn prune(&self) {
        self.prune_at(Instant::now());
    }

    pub fn prune_at(&self, now: Instant) {
        self.revoked.retain(|_, until| *until > now);
        self.spent.retain(|_, until| *until > now);
        self.revoked.shrink_to_fit();
        self.spent.shrink_to_fit();
    }

    /// Entries held (revoked, spent), expired ones included until pruned.
    pub fn len(&self) -> (usize, usize) {
        (self.revoked.len(), self.spent.len())
    }

    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty() && self.spent.is_empty()
    }
}
