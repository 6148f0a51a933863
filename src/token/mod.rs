//! Tokens: claims, signing and verification keys, JWKS. No HTTP in here.
//!
//! INTERFACE (stub until implemented)

use std::net::IpAddr;
use std::time::Duration;

use crate::config::TokenConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Access,
    Refresh,
}

/// Verified claims of a presented token.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub raw: serde_json::Map<String, serde_json::Value>,
    pub sub: Option<String>,
    pub jti: Option<String>,
    pub exp: u64,
    pub ip: Option<IpAddr>,
    pub dev: Option<String>,
    pub fam: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Cause for the logs only.
    Invalid(&'static str),
    Expired,
    IpMismatch,
    DeviceMismatch,
}

pub struct MintRequest {
    pub typ: TokenType,
    pub ip: IpAddr,
    pub sub: Option<String>,
    /// claims_from_headers and CLI --claim values (static claims are added by mint).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Already hashed (see `device_hash`).
    pub dev: Option<String>,
    pub fam: Option<String>,
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub exp: u64,
}

pub struct Keys {}

impl Keys {
    pub fn new(_cfg: &TokenConfig) -> Result<Keys, String> {
        Ok(Keys {})
    }
    pub fn can_mint(&self) -> bool {
        false
    }
    pub fn mint(&self, _cfg: &TokenConfig, _req: MintRequest) -> Result<Minted, String> {
        Err("not implemented".into())
    }
    pub fn verify(
        &self,
        _cfg: &TokenConfig,
        _token: &str,
        _typ: TokenType,
        _now: u64,
    ) -> Result<Claims, TokenError> {
        Err(TokenError::Invalid("not implemented"))
    }
    pub fn jwks(&self) -> Option<String> {
        None
    }
}

pub fn check_binding(
    _cfg: &TokenConfig,
    _claims: &Claims,
    _ip: IpAddr,
    _device_id: Option<&str>,
) -> Result<(), TokenError> {
    Err(TokenError::IpMismatch)
}

pub fn device_hash(_id: &str) -> String {
    String::new()
}

pub fn check_require(_claims: &Claims, require: &[(String, Vec<String>)]) -> bool {
    require.is_empty()
}
