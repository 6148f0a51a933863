//! Phase 7: on `mint` routes, when the upstream status is in `mint.status` and every
//! required claim was found, a new token goes back to the client (header, and cookie when
//! `set_cookie`). The claim headers never reach the client.

use std::net::IpAddr;
use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue, Response};

use crate::body::Body;
use crate::config::{CookieConfig, MintRule, RefreshConfig, SameSite, TokenConfig};
use crate::error::Reject;
use crate::token::{device_hash, Keys, MintError, MintRequest, TokenType};

/// A `Set-Cookie` value for one of our cookies.
pub fn set_cookie(
    c: &CookieConfig,
    name: &str,
    value: &str,
    max_age: Duration,
) -> Option<HeaderValue> {
    let mut s = format!(
        "{name}={value}; Path={}; Max-Age={}",
        c.path,
        max_age.as_secs()
    );
    if let Some(d) = &c.domain {
        s.push_str("; Domain=");
        s.push_str(d);
    }
    if c.secure {
        s.push_str("; Secure");
    }
    if c.http_only {
        s.push_str("; HttpOnly");
    }
    s.push_str(match c.same_site {
        SameSite::Strict => "; SameSite=Strict",
        SameSite::Lax => "; SameSite=Lax",
        SameSite::None => "; SameSite=None",
    });
    if s.len() > BROWSER_COOKIE_LIMIT {
        tracing::warn!(
            cookie = name,
            bytes = s.len(),
            "token cookie over {BROWSER_COOKIE_LIMIT} bytes: browsers drop it (the header still carries the token); keep the claims smaller"
        );
    }
    HeaderValue::from_str(&s).ok()
}

/// What browsers keep of one cookie (name, value and attributes), RFC 6265 §6.1's minimum.
const BROWSER_COOKIE_LIMIT: usize = 4096;

/// A refused mint: the upstream's claims too large for a token is the upstream's answer being
/// unusable (502, as a bad claim value); anything else is the gateway's own failure.
fn mint_refused(e: MintError) -> Reject {
    match e {
        MintError::TooLarge(_) => Reject::UpstreamUnavailable(format!(
            "the claim headers from the upstream make a token too large: {e}"
        )),
        MintError::Failed(c) => Reject::Internal(c),
    }
}

/// Drop an upstream `Set-Cookie` for the gateway's own cookie names.
fn drop_our_cookies(h: &mut HeaderMap, cookie: &CookieConfig) {
    let keep: Vec<HeaderValue> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            // On bytes: a value that is not ASCII after the name is still that cookie.
            let b = v.as_bytes();
            let name = b
                .iter()
                .position(|&c| c == b'=')
                .map(|i| b[..i].trim_ascii());
            name != Some(cookie.name.as_bytes()) && name != Some(cookie.refresh_name.as_bytes())
        })
        .cloned()
        .collect();
    h.remove(header::SET_COOKIE);
    for v in keep {
        h.append(header::SET_COOKIE, v);
    }
}

/// Drop an upstream's copies of the gateway's own token headers and cookies (on every route,
/// minting or not), so only the gateway ever hands them out. One pass over the names; the
/// map is touched only for what is there.
pub fn drop_our_headers(h: &mut HeaderMap, token: &TokenConfig, refresh: Option<&HeaderName>) {
    let (mut cookie, mut ours) = (false, false);
    for k in h.keys() {
        if *k == header::SET_COOKIE {
            cookie = true;
        } else if *k == token.header || refresh.is_some_and(|r| r == k) {
            ours = true;
        }
    }
    if cookie {
        drop_our_cookies(h, &token.cookie);
    }
    if ours {
        h.remove(&token.header);
        if let Some(r) = refresh {
            h.remove(r);
        }
    }
}

/// Everything mint needs from config for one request.
pub struct MintCtx<'a> {
    pub rule: &'a MintRule,
    pub token: &'a TokenConfig,
    pub keys: &'a Keys,
    pub refresh: Option<&'a RefreshConfig>,
    pub ip: IpAddr,
    pub device_id: Option<&'a str>,
}

/// The outcome, for the login guard, metrics and the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Minted {
    /// With the subject the tokens name, when known.
    Yes {
        sub: Option<String>,
    },
    No,
}

/// Issue access (and refresh) tokens on the response when the status says so.
pub fn apply(resp: &mut Response<Body>, m: &MintCtx<'_>) -> Result<Minted, Reject> {
    // Read and remove the claim headers whatever the status: they never reach the client.
    let mut extra = serde_json::Map::new();
    let mut bad_value = false;
    for (claim, name) in &m.rule.claims_from_headers {
        let values: Vec<HeaderValue> = resp.headers().get_all(name).iter().cloned().collect();
        resp.headers_mut().remove(name);
        if values.iter().any(|v| *v != values[0]) {
            // Two identities in one answer: which one logged in is ambiguous; mint neither.
            bad_value = true;
        } else if let Some(v) = values.first() {
            // UTF-8 (a user called Élise) is a valid claim; other bytes are not text.
            match std::str::from_utf8(v.as_bytes()) {
                Ok(s) if !s.is_empty() => {
                    extra.insert(claim.clone(), serde_json::Value::String(s.to_string()));
                }
                Ok(_) => {}
                Err(_) => bad_value = true,
            }
        }
    }
    // Only the gateway hands out tokens: the upstream's own copies of our headers go, minted
    // or not, so a client never takes an upstream's value for one of ours.
    drop_our_headers(resp.headers_mut(), m.token, m.refresh.map(|r| &r.header));
    if !m.rule.status.contains(&resp.status().as_u16()) {
        return Ok(Minted::No);
    }
    if bad_value {
        return Err(Reject::UpstreamUnavailable(
            "a claim header from the upstream is not a valid header value, or is there twice"
                .into(),
        ));
    }
    if let Some(missing) = m
        .rule
        .required_claims
        .iter()
        .find(|c| !extra.contains_key(*c) && !m.token.claims.contains_key(*c))
    {
        tracing::warn!(target: "security", claim = %missing, "login answered with a mint status but a required claim is missing: nothing minted");
        return Ok(Minted::No);
    }
    let dev = match (&m.token.device_binding, m.device_id) {
        (None, _) => None,
        (Some(_), Some(id)) => Some(device_hash(id)),
        (Some(_), None) => {
            tracing::warn!(target: "security", "device binding is on but the login request carries no device id: nothing minted");
            return Ok(Minted::No);
        }
    };
    let sub = match extra.remove("sub") {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };
    let fam = m.refresh.map(|_| random_id());
    let access = m
        .keys
        .mint(
            m.token,
            MintRequest {
                typ: TokenType::Access,
                ip: m.ip,
                sub: sub.clone(),
                extra: extra.clone(),
                dev: dev.clone(),
                fam: fam.clone(),
                ttl: m.token.ttl,
            },
        )
        .map_err(mint_refused)?;
    let h = resp.headers_mut();
    let hv = HeaderValue::from_str(&access.token)
        .map_err(|_| Reject::Internal("token not header-safe".into()))?;
    h.insert(m.token.header.clone(), hv);
    if m.token.set_cookie {
        if let Some(c) = set_cookie(
            &m.token.cookie,
            &m.token.cookie.name,
            &access.token,
            m.token.ttl,
        ) {
            h.append(header::SET_COOKIE, c);
        }
    }
    if let Some(r) = m.refresh {
        let refresh = m
            .keys
            .mint(
                m.token,
                MintRequest {
                    typ: TokenType::Refresh,
                    ip: m.ip,
                    sub: sub.clone(),
                    extra,
                    dev,
                    fam,
                    ttl: r.ttl,
                },
            )
            .map_err(mint_refused)?;
        let hv = HeaderValue::from_str(&refresh.token)
            .map_err(|_| Reject::Internal("token not header-safe".into()))?;
        h.insert(r.header.clone(), hv);
        crate::metrics::minted("refresh");
        if m.token.set_cookie {
            let name = &m.token.cookie.refresh_name;
            if let Some(c) = set_cookie(&m.token.cookie, name, &refresh.token, r.ttl) {
                h.append(header::SET_COOKIE, c);
            }
        }
    }
    // The token must never be cached by an intermediary.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(Minted::Yes { sub })
}

pub use crate::token::random_id;
