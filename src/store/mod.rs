//! Shared state: revocation and refresh families. In memory by default, Redis when several
//! instances run.
//!
//! Two sets, each entry kept until its own expiry:
//! - revoked ids (access `jti`s and refresh families, one namespace: both are 128 random bits),
//!   Redis key `iptgate:rev:<id>`;
//! - spent refresh `jti`s, Redis key `iptgate:spent:<jti>`.
//!
//! A revocation never shortens an existing one: revoking an id again with a shorter `ttl` keeps
//! the longer expiry (a logout after theft detection must not shorten the family's revocation).
//!
//! [`Store::spend`] is atomic (one `DashMap` entry lock; one Lua script in Redis running
//! `SET NX PX`): of two concurrent spends of one `jti` exactly one is [`Spend::Fresh`]. A spend of
//! an already spent `jti` revokes the family for `ttl` and answers [`Spend::Reused`]. Pass the
//! refresh lifetime (`refresh.ttl`) as `ttl`: every member of the family was minted at most that
//! long ago, so a family revocation of that length outlives all of them.
//!
//! Redis errors and timeouts (connect 2 s, each operation 1 s) are [`StoreError`]s; the
//! pipeline answers `503 store_unavailable` or skips the check, per `[store] on_error`. A
//! spend that failed is undone should it still run (see `RedisStore::spend`): the client was
//! told 503 and retries with the same refresh token.

mod memory;
mod redis;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::config::{StoreBackend, StoreConfig};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

#[derive(Debug, Clone, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

/// Outcome of spending a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// First use: rotation may proceed.
    Fresh,
    /// Already spent: theft suspected; the family has been revoked.
    Reused,
}

/// Redis key of a revoked jti or family id.
pub fn revoked_key(id: &str) -> String {
    format!("iptgate:rev:{id}")
}

/// Redis key of a spent refresh jti.
pub fn spent_key(jti: &str) -> String {
    format!("iptgate:spent:{jti}")
}

enum Backend {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// The configured store (see the module docs). `Store::default()` is an empty memory store.
pub struct Store {
    backend: Backend,
}

impl Default for Store {
    fn default() -> Self {
        Store::memory()
    }
}

impl Store {
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, StoreError> {
        match &cfg.backend {
            StoreBackend::Memory => Ok(Store::memory()),
            StoreBackend::Redis(url) => Ok(Store {
                backend: Backend::Redis(RedisStore::connect(url).await?),
            }),
        }
    }

    /// An empty in-memory store.
    pub fn memory() -> Store {
        Store {
            backend: Backend::Memory(MemoryStore::default()),
        }
    }

    /// `"memory"` or `"redis"`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// Checks that the backend answers (always true for memory).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(r) => r.ping().await,
        }
    }

    /// Revoke each jti or family id until its `ttl` from now: all of them, or (on an error)
    /// none.
    pub async fn revoke(&self, ids: &[(&str, Duration)]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(m) => {
                for &(id, ttl) in ids {
                    m.revoke(id, ttl);
                }
                Ok(())
            }
            Backend::Redis(r) => r.revoke(ids).await,
        }
    }

    pub async fn is_revoked(
        &self,
        jti: Option<&str>,
        fam: Option<&str>,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.is_revoked(jti, fam)),
            Backend::Redis(r) => r.is_revoked(jti, fam).await,
        }
    }

    /// Mark a refresh jti as spent (kept `ttl`).
    pub async fn spend(&self, jti: &str, fam: &str, ttl: Duration) -> Result<Spend, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.spend(jti, fam, ttl)),
            Backend::Redis(r) => r.spend(jti, fam, ttl).await,
        }
    }

    /// The Redis backend when one is configured: login lock-outs and `global` rate limits are
    /// then shared by every gateway using it.
    pub fn shared(&self) -> Option<&RedisStore> {
        match &self.backend {
            Backend::Memory(_) => None,
            Backend::Redis(r) => Some(r),
        }
    }

    /// Drops expired entries (memory; Redis expires keys itself). Called by a background task.
    pub fn prune(&self) {
        if let Backend::Memory(m) = &self.backend {
            m.prune();
        }
    }
}
