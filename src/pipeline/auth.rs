//! Phase 5: token extraction (the configured `accept` order) and verification: signature
//! with the configured algorithm only, typ, exp/nbf, iss/aud, revocation, IP and device
//! binding, then the route's `require` rules.

use std::net::IpAddr;

use http::{header, HeaderMap};

use crate::config::{DeviceBinding, OnError, TokenConfig, TokenSource};
use crate::error::Reject;
use crate::store::Store;
use crate::token::{check_binding, check_require, Claims, Keys, TokenError, TokenType};

/// The value of cookie `name` in the request's Cookie headers (the first, when repeated).
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookies(h, name).next()
}

/// Every value of cookie `name` in the request's Cookie headers.
fn cookies<'a, 'n>(h: &'a HeaderMap, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// The token carried by the request, in the configured `accept` order. Two places carrying
/// different tokens is `token_invalid`; an Authorization scheme we do not accept counts as
/// no token there.
pub fn extract<'a>(h: &'a HeaderMap, cfg: &TokenConfig) -> Result<Option<&'a str>, Reject> {
    let mut found: Option<&'a str> = None;
    let mut note = |t: &'a str| -> Result<(), Reject> {
        let t = t.trim();
        if t.is_empty() {
            return Ok(());
        }
        match found {
            Some(prev) if prev != t => {
                Err(Reject::TokenInvalid("two different tokens in one request"))
            }
            Some(_) => Ok(()),
            None => {
                found = Some(t);
                Ok(())
            }
        }
    };
    for src in &cfg.accept {
        match src {
            TokenSource::Authorization => {
                for v in h.get_all(header::AUTHORIZATION) {
                    let Ok(v) = v.to_str() else { continue };
                    if let Some((scheme, tok)) = v.trim().split_once(' ') {
                        if cfg.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
                            note(tok)?;
                        }
                    }
                }
            }
            TokenSource::Header => {
                for v in h.get_all(&cfg.header) {
                    if let Ok(v) = v.to_str() {
                        note(v)?;
                    }
                }
            }
            TokenSource::Cookie => {
                // Every copy: a second cookie of the same name (set for another path or
                // domain) carrying another token is as ambiguous as two headers.
                for v in cookies(h, &cfg.cookie.name) {
                    note(v)?;
                }
            }
        }
    }
    Ok(found)
}

/// The device id the request carries, when device binding is configured.
pub fn device_id<'a>(h: &'a HeaderMap, cfg: &TokenConfig) -> Option<&'a str> {
    match cfg.device_binding.as_ref()? {
        DeviceBinding::Cookie(name) => cookie(h, name),
        DeviceBinding::Header(name) => h.get(name).and_then(|v| v.to_str().ok()),
    }
    .filter(|v| !v.is_empty())
}

pub fn map_token_error(e: TokenError) -> Reject {
    match e {
        TokenError::Invalid(cause) => Reject::TokenInvalid(cause),
        TokenError::Expired => Reject::TokenExpired,
        TokenError::IpMismatch => Reject::IpMismatch,
        TokenError::DeviceMismatch => Reject::DeviceMismatch,
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Is this token (or its family) revoked? Store failures follow `on_error`.
pub async fn check_revoked(
    store: &Store,
    on_error: OnError,
    claims: &Claims,
) -> Result<(), Reject> {
    if claims.jti.is_none() && claims.fam.is_none() {
        return Ok(());
    }
    match store
        .is_revoked(claims.jti.as_deref(), claims.fam.as_deref())
        .await
    {
        Ok(false) => Ok(()),
        Ok(true) => Err(Reject::TokenRevoked),
        Err(e) => match on_error {
            OnError::Closed => {
                tracing::error!(target: "security", error = %e, "store unavailable: refusing (on_error = closed)");
                Err(Reject::StoreUnavailable)
            }
            OnError::Open => {
                tracing::warn!(error = %e, "store unavailable: revocation check skipped (on_error = open)");
                Ok(())
            }
        },
    }
}

/// Verify the request's access token for a `token` route. `sub` gets the subject of a
/// genuine token (signature and registered claims verified) even when a later check refuses
/// it (revoked, another IP, `require`): the log then says whose token was refused.
#[allow(clippy::too_many_arguments)]
pub async fn verify(
    h: &HeaderMap,
    cfg: &TokenConfig,
    keys: &Keys,
    store: &Store,
    on_error: OnError,
    ip: IpAddr,
    require: &[(String, Vec<String>)],
    sub: &mut Option<String>,
) -> Result<Claims, Reject> {
    let token = extract(h, cfg)?.ok_or(Reject::TokenMissing)?;
    let claims = keys
        .verify(cfg, token, TokenType::Access, now())
        .map_err(map_token_error)?;
    sub.clone_from(&claims.sub);
    check_revoked(store, on_error, &claims).await?;
    check_binding(cfg, &claims, ip, device_id(h, cfg)).map_err(map_token_error)?;
    if !check_require(&claims, require) {
        return Err(Reject::InsufficientClaims);
    }
    Ok(claims)
}
