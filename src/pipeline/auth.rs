//! Phase 5: token extraction (the configured `accept` order) and verification: signature
//! with the configured algorithm only, typ, exp/nbf, iss/aud, revocation, IP and device
//! binding, then the route's `require` rules.

use std::net::IpAddr;

use http::{header, HeaderMap};

use crate::config::{DeviceBinding, OnError, TokenConfig, TokenSource};
use crate::error::Reject;
use crate::store::Store;
use crate::token::{check_binding, check_require, Claims, Keys, TokenError, TokenType};

/// The value of cookie `name` in the request's Cookie headers (the first, when repeated), when
/// it is text.
pub fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookies(h, name)
        .next()
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Every value of cookie `name` in the request's Cookie headers, as bytes: a pair whose value
/// is not ASCII (a browser sends UTF-8 as it is) is another cookie's business and does not hide
/// the ones after it.
fn cookies<'a, 'n>(
    h: &'a HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
    h.get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&c| c == b';'))
        .filter_map(|pair| {
            let eq = pair.iter().position(|&c| c == b'=')?;
            Some((pair[..eq].trim_ascii(), &pair[eq + 1..]))
        })
        .filter(move |(n, _)| *n == name.as_bytes())
        .map(|(_, v)| trim_quotes(v.trim_ascii()))
}

fn trim_quotes(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// The scheme and the credentials of an `Authorization` value: the scheme ends at the first
/// byte that is not a token character (RFC 9110 §5.6.2), so `Bearer\xa0<token>` — which
/// passport-jwt and Python's `split()` read as a Bearer token — is scheme `Bearer` with
/// credentials that are not ASCII (refused), never a scheme of its own the gateway would let
/// by. One rule for reading the token and for stripping it, so no value is skipped by one and
/// passed on by the other.
pub fn authorization_parts(v: &[u8]) -> (&[u8], &[u8]) {
    let v = v.trim_ascii();
    let tchar = |c: &u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c);
    let end = v.iter().position(|c| !tchar(c)).unwrap_or(v.len());
    (&v[..end], v[end..].trim_ascii())
}

/// The one token that `values` carry: empty ones are none, two different ones are
/// `token_invalid`, and so is one that is not ASCII (it cannot be a token, and one the gateway
/// skipped could still reach the app beside the one it verified).
pub(crate) struct OneToken<'a> {
    found: Option<&'a str>,
}

impl<'a> OneToken<'a> {
    pub(crate) fn new() -> OneToken<'a> {
        OneToken { found: None }
    }

    pub(crate) fn note(&mut self, t: &'a [u8]) -> Result<(), Reject> {
        let t = t.trim_ascii();
        if t.is_empty() {
            return Ok(());
        }
        let Some(t) = t.is_ascii().then(|| std::str::from_utf8(t).ok()).flatten() else {
            return Err(Reject::TokenInvalid("a token that is not ASCII"));
        };
        match self.found {
            Some(prev) if prev != t => {
                Err(Reject::TokenInvalid("two different tokens in one request"))
            }
            Some(_) => Ok(()),
            None => {
                self.found = Some(t);
                Ok(())
            }
        }
    }

    pub(crate) fn get(self) -> Option<&'a str> {
        self.found
    }
}

/// The token carried by the request, in the configured `accept` order. Two places carrying
/// different tokens is `token_invalid`; an Authorization scheme we do not accept counts as
/// no token there.
pub fn extract<'a>(h: &'a HeaderMap, cfg: &TokenConfig) -> Result<Option<&'a str>, Reject> {
    let mut one = OneToken::new();
    for src in &cfg.accept {
        match src {
            TokenSource::Authorization => {
                for v in h.get_all(header::AUTHORIZATION) {
                    let (scheme, tok) = authorization_parts(v.as_bytes());
                    if cfg
                        .schemes
                        .iter()
                        .any(|s| s.as_bytes().eq_ignore_ascii_case(scheme))
                    {
                        one.note(tok)?;
                    }
                }
            }
            TokenSource::Header => {
                for v in h.get_all(&cfg.header) {
                    one.note(v.as_bytes())?;
                }
            }
            TokenSource::Cookie => {
                // Every copy: a second cookie of the same name (set for another path or
                // domain) carrying another token is as ambiguous as two headers.
                for v in cookies(h, &cfg.cookie.name) {
                    one.note(v)?;
                }
            }
        }
    }
    Ok(one.get())
}

/// The refresh token in its header or the `<cookie>_refresh` cookie; as for access tokens, two
/// different ones are `token_invalid`.
pub(crate) fn refresh_token<'a>(
    h: &'a HeaderMap,
    refresh_header: &http::HeaderName,
    tc: &TokenConfig,
) -> Result<Option<&'a str>, Reject> {
    let mut one = OneToken::new();
    for v in h.get_all(refresh_header) {
        one.note(v.as_bytes())?;
    }
    for v in cookies(h, &tc.cookie.refresh_name) {
        one.note(v)?;
    }
    Ok(one.get())
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
                Err(Reject::StoreUnavailable(e.to_string()))
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
