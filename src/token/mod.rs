//! Tokens: claims, signing and verification keys, JWKS. No HTTP in here.
//!
//! Tokens are standard JWS compact JWTs. The algorithm is pinned by config: the header's
//! `alg` must equal it (so `none`, a weaker HMAC or RS/HS key confusion never verify), a
//! `crit` header is refused, and every registered claim is checked by us with the
//! configured leeway. Signatures are made and checked by aws-lc-rs with keys prepared once
//! at load; jsonwebtoken only reads PEM public keys and builds the JWKs, so none of its
//! validation defaults (60 s leeway, unchecked `nbf`) apply.

mod claims;
mod keys;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::config::{IpBinding, TokenConfig};

pub use claims::Claims;
pub use keys::Keys;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Access,
    Refresh,
}

impl TokenType {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Access => "access",
            TokenType::Refresh => "refresh",
        }
    }
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
    pub extra: Map<String, Value>,
    /// Already hashed (see `device_hash`).
    pub dev: Option<String>,
    pub fam: Option<String>,
    pub ttl: Duration,
}

/// Why no token was minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// The token would be longer than [`MAX_TOKEN_LEN`], which no gateway accepts: its claims
    /// (from the upstream's headers, or `--claim`) are too large. Its length.
    #[error("the token would be {0} bytes, over the {MAX_TOKEN_LEN} a gateway accepts: its claims are too large")]
    TooLarge(usize),
    /// No signing key, or signing failed.
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub exp: u64,
}

/// 128 random bits, unpadded base64url.
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    B64.encode(bytes)
}

/// Unpadded base64url SHA-256 of a device id (the `dev` claim).
pub fn device_hash(id: &str) -> String {
    use sha2::Digest;
    B64.encode(sha2::Sha256::digest(id.as_bytes()))
}

/// The claims a minted token carries (SPEC §4), the gateway's own always winning.
pub(crate) fn build_claims(
    cfg: &TokenConfig,
    req: &MintRequest,
    now: u64,
    jti: &str,
) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in cfg.claims.iter().chain(req.extra.iter()) {
        m.insert(k.clone(), v.clone());
    }
    if let Some(iss) = &cfg.issuer {
        m.insert("iss".into(), Value::String(iss.clone()));
    }
    match &req.sub {
        Some(s) => {
            m.insert("sub".into(), Value::String(s.clone()));
        }
        None => {
            m.remove("sub");
        }
    }
    if let Some(aud) = &cfg.audience {
        m.insert("aud".into(), Value::String(aud.clone()));
    }
    m.insert("iat".into(), Value::from(now));
    m.insert("nbf".into(), Value::from(now));
    m.insert("exp".into(), Value::from(now + req.ttl.as_secs()));
    m.insert("jti".into(), Value::String(jti.to_string()));
    m.insert("typ".into(), Value::String(req.typ.as_str().into()));
    m.insert(
        "ip".into(),
        Value::String(req.ip.to_canonical().to_string()),
    );
    for (k, v) in [("dev", &req.dev), ("fam", &req.fam)] {
        match v {
            Some(v) => {
                m.insert(k.into(), Value::String(v.clone()));
            }
            None => {
                m.remove(k);
            }
        }
    }
    m
}

/// Check the registered claims of a signature-verified payload; `grace` extends the expiry
/// (see [`Keys::verify_within`]).
pub(crate) fn check_claims(
    cfg: &TokenConfig,
    mut c: Claims,
    typ: TokenType,
    now: u64,
    grace: u64,
) -> Result<Claims, TokenError> {
    let leeway = cfg.leeway.as_secs();
    let exp = c
        .numeric_date("exp")?
        .ok_or(TokenError::Invalid("exp missing"))?;
    // `iat` is not compared with anything, but one that is not a NumericDate (RFC 7519 §4.1.6)
    // makes the token malformed.
    c.numeric_date("iat")?;
    if let Some(nbf) = c.numeric_date("nbf")? {
        if nbf > now + leeway {
            return Err(TokenError::Invalid("not yet valid"));
        }
    }
    if c.str("typ").ok().flatten().as_deref() != Some(typ.as_str()) {
        return Err(TokenError::Invalid("wrong typ"));
    }
    if let Some(iss) = &cfg.issuer {
        if c.str("iss").ok().flatten().as_deref() != Some(iss.as_str()) {
            return Err(TokenError::Invalid("issuer"));
        }
    }
    if let Some(aud) = &cfg.audience {
        let ok = match c.get("aud") {
            Some(Value::String(a)) => a == *aud,
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(aud.as_str())),
            _ => false,
        };
        if !ok {
            return Err(TokenError::Invalid("audience"));
        }
    }
    let ip = match c.str("ip") {
        Ok(None) if cfg.ip_binding == IpBinding::Off => None,
        Ok(None) => return Err(TokenError::Invalid("ip claim missing")),
        Ok(Some(s)) => Some(
            s.parse::<IpAddr>()
                .map_err(|_| TokenError::Invalid("ip claim malformed"))?
                .to_canonical(),
        ),
        Err(_) => return Err(TokenError::Invalid("ip claim malformed")),
    };
    // Expiry last among the checks, so a forged token never learns it merely expired.
    if exp.saturating_add(leeway).saturating_add(grace) < now {
        return Err(TokenError::Expired);
    }
    let owned = |v: Option<std::borrow::Cow<'_, str>>| v.map(|s| s.into_owned());
    c.sub = owned(c.str("sub")?);
    c.jti = owned(c.str("jti")?);
    c.dev = owned(c.str("dev")?);
    c.fam = owned(c.str("fam")?);
    c.exp = exp;
    c.ip = ip;
    Ok(c)
}

fn same_subnet(a: IpAddr, b: IpAddr, v4: u8, v6: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if v4 == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(v4.min(32)))
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if v6 == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(v6.min(128)))
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// IP binding (exact / subnet / off) and device binding against the request.
pub fn check_binding(
    cfg: &TokenConfig,
    claims: &Claims,
    ip: IpAddr,
    device_id: Option<&str>,
) -> Result<(), TokenError> {
    let ip = ip.to_canonical();
    match cfg.ip_binding {
        IpBinding::Off => {}
        IpBinding::Exact => {
            if claims.ip != Some(ip) {
                return Err(TokenError::IpMismatch);
            }
        }
        IpBinding::Subnet => match claims.ip {
            Some(bound) if same_subnet(bound, ip, cfg.subnet_v4, cfg.subnet_v6) => {}
            _ => return Err(TokenError::IpMismatch),
        },
    }
    if cfg.device_binding.is_some() {
        let (Some(id), Some(dev)) = (device_id, claims.dev.as_deref()) else {
            return Err(TokenError::DeviceMismatch);
        };
        let want = device_hash(id);
        if !bool::from(want.as_bytes().ct_eq(dev.as_bytes())) {
            return Err(TokenError::DeviceMismatch);
        }
    }
    Ok(())
}

/// A scalar claim equals one of `accepted`; an array claim has a scalar element that does (one
/// level: `[["admin"]]` is not `admin`).
fn value_matches(v: &Value, accepted: &[String]) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|i| scalar_matches(i, accepted)),
        v => scalar_matches(v, accepted),
    }
}

fn scalar_matches(v: &Value, accepted: &[String]) -> bool {
    match v {
        Value::String(s) => accepted.iter().any(|a| a == s),
        Value::Number(n) => accepted.iter().any(|a| *a == n.to_string()),
        Value::Bool(b) => accepted.iter().any(|a| *a == b.to_string()),
        _ => false,
    }
}

/// Each `require` rule must hold: the claim equals one of the values (arrays intersect).
pub fn check_require(claims: &Claims, require: &[(String, Vec<String>)]) -> bool {
    require.iter().all(|(claim, accepted)| {
        claims
            .get(claim)
            .is_some_and(|v| value_matches(&v, accepted))
    })
}
