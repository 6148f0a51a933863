//! Shared state: revocation and refresh families. In memory by default, Redis when several
//! instances run. INTERFACE (stub until implemented)

use std::time::Duration;

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

#[derive(Default)]
pub struct Store {}

impl Store {
    pub async fn connect(_cfg: &crate::config::StoreConfig) -> Result<Store, StoreError> {
        Ok(Store {})
    }
    /// Revoke a jti or a family id until `ttl` from now.
    pub async fn revoke(&self, _id: &str, _ttl: Duration) -> Result<(), StoreError> {
        Ok(())
    }
    pub async fn is_revoked(
        &self,
        _jti: Option<&str>,
        _fam: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Mark a refresh jti as spent (kept `ttl`).
    pub async fn spend(&self, _jti: &str, _fam: &str, _ttl: Duration) -> Result<Spend, StoreError> {
        Ok(Spend::Fresh)
    }
}
