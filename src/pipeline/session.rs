//! Gateway-served paths, matched before routes: `/.well-known/jwks.json` (asymmetric
//! algorithms), `refresh.path` (rotate a refresh token) and `refresh.logout_path`
//! (revoke the presented tokens).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{empty, full, Body};
use crate::config::{AuthMode, RouteConfig, TokenConfig, RESERVED_CLAIMS};
use crate::error::Reject;
use crate::pipeline::auth::{
    check_revoked, device_id, extract, map_token_error, now, refresh_token,
};
use crate::pipeline::mint::set_cookie;
use crate::state::{Active, State};
use crate::store::Spend;
use crate::token::{check_binding, Claims, MintRequest, TokenType};

/// Is this one of the paths the gateway answers itself?
pub fn is_served(path: &str, active: &Active) -> bool {
    path == "/.well-known/jwks.json"
        || active
            .config
            .refresh
            .as_ref()
            .is_some_and(|r| path == r.path || path == r.logout_path)
}

/// A token that names a live session of this client: verified (an access token also up to
/// `grace` seconds after it expired), not revoked, bound to this client.
#[allow(clippy::too_many_arguments)]
async fn session_of(
    token: &str,
    typ: TokenType,
    grace: u64,
    keys: &crate::token::Keys,
    tc: &TokenConfig,
    store: &crate::store::Store,
    h: &http::HeaderMap,
    ip: IpAddr,
    on_error: crate::config::OnError,
) -> Result<Claims, Reject> {
    let claims = keys
        .verify_within(tc, token, typ, now(), grace)
        .map_err(map_token_error)?;
    check_revoked(store, on_error, &claims).await?;
    check_binding(tc, &claims, ip, device_id(h, tc)).map_err(map_token_error)?;
    Ok(claims)
}

/// A token a logout or refresh request presents: its type, and how long (seconds) after its
/// expiry it still counts.
pub(crate) struct Presented<'a> {
    pub token: &'a str,
    pub typ: TokenType,
    pub grace: u64,
}

/// The tokens a request to the logout path (`Access`: the access token where requests carry
/// it, counted up to `ttl` after its expiry, then the refresh token) or to the refresh path
/// (`Refresh`: the refresh token) presents, in the order they are tried. The first one
/// accepted names the session; when none is, the first one's refusal is the answer.
pub(crate) fn presented<'a>(
    h: &'a http::HeaderMap,
    tc: &TokenConfig,
    refresh: &crate::config::RefreshConfig,
    typ: TokenType,
) -> Result<Vec<Presented<'a>>, Reject> {
    let mut out = Vec::with_capacity(2);
    if typ == TokenType::Access {
        if let Some(token) = extract(h, tc)? {
            out.push(Presented {
                token,
                typ: TokenType::Access,
                grace: tc.ttl.as_secs(),
            });
        }
    }
    if let Some(token) = refresh_token(h, &refresh.header, tc)? {
        out.push(Presented {
            token,
            typ: TokenType::Refresh,
            grace: 0,
        });
    }
    Ok(out)
}

/// Answer a gateway-served path, or `None` to go on to routing.
pub async fn serve(
    req: &Request<Incoming>,
    path: &str,
    ip: IpAddr,
    active: &Active,
    state: &State,
    sub: &mut Option<String>,
) -> Result<Option<Response<Body>>, Reject> {
    let cfg = &active.config;
    if path == "/.well-known/jwks.json" {
        if let Some(jwks) = active.keys.as_ref().and_then(|k| k.jwks()) {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return Err(Reject::MethodNotAllowed("GET, HEAD".into()));
            }
            let mut r = Response::new(full(Bytes::from(jwks)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            return Ok(Some(r));
        }
        return Ok(None);
    }
    let (Some(refresh), Some(tc), Some(keys)) = (&cfg.refresh, &cfg.token, &active.keys) else {
        return Ok(None);
    };
    let is_refresh = path == refresh.path;
    let is_logout = path == refresh.logout_path;
    if !is_refresh && !is_logout {
        return Ok(None);
    }
    if req.method() != Method::POST {
        return Err(Reject::MethodNotAllowed("POST".into()));
    }
    let h = req.headers();
    let on_error = cfg.store.on_error;
    let store = &state.store;

    if is_logout {
        // Either token names the session: the access token where requests carry it, else (or
        // when that one is refused: an old tab's token, say) the refresh token. An access
        // token that expired less than `ttl` ago still counts (a client logging out after a
        // pause holds one); signature, issuer, type, revocation and binding are checked as
        // always.
        let mut found = Err(Reject::TokenMissing);
        for (i, p) in presented(h, tc, refresh, TokenType::Access)?
            .into_iter()
            .enumerate()
        {
            match session_of(p.token, p.typ, p.grace, keys, tc, store, h, ip, on_error).await {
                Ok(c) => {
                    found = Ok(c);
                    break;
                }
                Err(e) if i == 0 => found = Err(e),
                Err(_) => {}
            }
        }
        let claims = match found {
            Ok(c) => c,
            // Already ended (logged out before, its family revoked): nothing left to revoke,
            // and the answer is the same, so a second logout still clears the cookies.
            Err(Reject::TokenRevoked) => return Ok(Some(logged_out(tc))),
            Err(e) => return Err(e),
        };
        sub.clone_from(&claims.sub);
        let left = Duration::from_secs(claims.exp.saturating_sub(now()) + tc.leeway.as_secs());
        // Both in one step: a logout cut short must not leave the family alive behind a
        // revoked access token (whose second logout answers "already logged out").
        let ids: Vec<(&str, Duration)> = [
            claims.jti.as_deref().map(|j| (j, left)),
            claims.fam.as_deref().map(|f| (f, refresh.ttl + tc.leeway)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !ids.is_empty() {
            store
                .revoke(&ids)
                .await
                .map_err(|e| Reject::StoreUnavailable(e.to_string()))?;
        }
        crate::metrics::revoked();
        return Ok(Some(logged_out(tc)));
    }

    let token = refresh_token(h, &refresh.header, tc)?.ok_or(Reject::TokenMissing)?;
    let claims = session_of(
        token,
        TokenType::Refresh,
        0,
        keys,
        tc,
        store,
        h,
        ip,
        on_error,
    )
    .await?;
    let (Some(jti), Some(fam)) = (&claims.jti, &claims.fam) else {
        return Err(Reject::TokenInvalid("refresh token without jti/fam"));
    };
    // Every member of the family was minted at most `refresh.ttl` ago: a family revoked for
    // that long outlives all of them.
    match store.spend(jti, fam, refresh.ttl + tc.leeway).await {
        Ok(Spend::Fresh) => {}
        Ok(Spend::Reused) => {
            tracing::warn!(target: "security", client_ip = %ip, "spent refresh token presented again: family revoked");
            crate::metrics::revoked();
            return Err(Reject::TokenRevoked);
        }
        Err(e) => return Err(Reject::StoreUnavailable(e.to_string())),
    }
    sub.clone_from(&claims.sub);
    let extra = carried_claims(&claims, &cfg.routes);
    let mint = |typ, ttl| {
        keys.mint(
            tc,
            MintRequest {
                typ,
                ip,
                sub: claims.sub.clone(),
                extra: extra.clone(),
                dev: claims.dev.clone(),
                fam: Some(fam.clone()),
                ttl,
            },
        )
        .map_err(|e| Reject::Internal(e.to_string()))
    };
    let access = mint(TokenType::Access, tc.ttl)?;
    let next = mint(TokenType::Refresh, refresh.ttl)?;
    crate::metrics::minted("access");
    crate::metrics::minted("refresh");
    crate::metrics::refreshed();
    let body = serde_json::json!({
        "token_type": "Bearer",
        "access_token": access.token,
        "expires_in": tc.ttl.as_secs(),
        "refresh_token": next.token,
    });
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    let hm = r.headers_mut();
    hm.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    hm.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let hv = |s: &str| {
        HeaderValue::from_str(s).map_err(|_| Reject::Internal("token not header-safe".into()))
    };
    hm.insert(tc.header.clone(), hv(&access.token)?);
    hm.insert(refresh.header.clone(), hv(&next.token)?);
    if tc.set_cookie {
        if let Some(c) = set_cookie(&tc.cookie, &tc.cookie.name, &access.token, tc.ttl) {
            hm.append(header::SET_COOKIE, c);
        }
        if let Some(c) = set_cookie(
            &tc.cookie,
            &tc.cookie.refresh_name,
            &next.token,
            refresh.ttl,
        ) {
            hm.append(header::SET_COOKIE, c);
        }
    }
    Ok(Some(r))
}

/// Claims a rotated token keeps: everything the gateway does not set itself.
/// The claims a refresh carries over: those the login took from the upstream's headers
/// (`claims_from_headers` of a mint route in the current config). Static `claims` come from
/// the current config at every mint, so a changed or removed one does not live on in a family.
fn carried_claims(
    c: &Claims,
    routes: &[RouteConfig],
) -> serde_json::Map<String, serde_json::Value> {
    let from_headers = |k: &str| {
        routes.iter().any(|r| match &r.auth {
            AuthMode::Mint(rule) => rule.claims_from_headers.iter().any(|(claim, _)| claim == k),
            _ => false,
        })
    };
    let mut m = c.to_map();
    m.retain(|k, _| !RESERVED_CLAIMS.contains(&k.as_str()) && from_headers(k));
    m
}

/// `204`, with the token cookies cleared when the gateway sets them.
fn logged_out(tc: &TokenConfig) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    if tc.set_cookie {
        clear_cookies(&mut r, tc);
    }
    r
}

fn clear_cookies(r: &mut Response<Body>, tc: &TokenConfig) {
    for name in [&tc.cookie.name, &tc.cookie.refresh_name] {
        if let Some(c) = set_cookie(&tc.cookie, name, "", Duration::ZERO) {
            r.headers_mut().append(header::SET_COOKIE, c);
        }
    }
}
