//! `iptgate explain`: what the gateway would do with one request, phase by phase, without
//! sending anything anywhere. Uses the same phase functions as the live pipeline.

use std::net::IpAddr;
use std::process::ExitCode;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{AuthMode, Config, LimitKey};
use crate::error::Reject;
use crate::pipeline::{auth, client_ip, forward_auth, path, rate_limit, route, session};
use crate::state::Active;
use crate::token::{check_binding, check_require, TokenType};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The request method (case-sensitive, as on the wire).
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The request path, with its query if any (e.g. /api/x?q=1).
    #[arg(long)]
    pub path: String,
    /// The TCP peer's IP.
    #[arg(long)]
    pub ip: String,
    /// The Host the request names (for routes that match on host).
    #[arg(long)]
    pub host: Option<String>,
    /// A token, as if sent as `Authorization: Bearer …`.
    #[arg(long)]
    pub token: Option<String>,
    /// Extra request header as "Name: value" (repeatable), e.g. X-Forwarded-For.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Treat this as the N-th identical request (shows when rate limits would refuse).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
}

/// The global IP policy's line, and its refusal; for a request that routes (`method`, host,
/// path), one the live gateway only records (a dry-run route) goes on, as live.
fn global_policy(
    active: &Active,
    ip: IpAddr,
    request: Option<(&Method, Option<&str>, &str)>,
    line: &mut impl FnMut(String),
) -> Result<(), Reject> {
    let recorded = |(m, h, p)| crate::pipeline::global_refusal_recorded(active, ip, m, h, p);
    match active.ip_policy.check(ip) {
        Ok(()) => line("ip policy global: allowed".into()),
        Err(e) if request.is_some_and(recorded) => line(format!(
            "ip policy global: would refuse ({}); dry run, goes on",
            e.cause()
        )),
        Err(e) => {
            line(format!("ip policy global: DENIED ({})", e.cause()));
            return Err(e);
        }
    }
    Ok(())
}

/// Explain one request; returns the printed report and the final verdict.
pub fn explain(active: &Active, a: &Args) -> Result<(String, Result<(), Reject>), String> {
    let cfg = &active.config;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let peer: IpAddr =
        a.ip.parse()
            .map_err(|_| format!("--ip: `{}` is not an IP address", a.ip))?;
    // Methods are case-sensitive (RFC 9110): `post` is not `POST`, here as live.
    let method = Method::from_bytes(a.method.as_bytes())
        .map_err(|_| format!("--method: `{}` is not an HTTP method", a.method))?;
    let mut headers = HeaderMap::new();
    for h in &a.headers {
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header: `{h}` is not \"Name: value\""))?;
        let n = HeaderName::from_bytes(n.trim().as_bytes())
            .map_err(|_| format!("--header: bad name in `{h}`"))?;
        let v =
            HeaderValue::from_str(v.trim()).map_err(|_| format!("--header: bad value in `{h}`"))?;
        headers.append(n, v);
    }
    if let Some(t) = &a.token {
        let v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| "--token: not header-safe".to_string())?;
        headers.insert(http::header::AUTHORIZATION, v);
    }
    let verdict = (|| -> Result<Answer, Reject> {
        let (raw_path, _query) = a.path.split_once('?').unwrap_or((&a.path, ""));
        let cip = client_ip::resolve(peer, client_ip::Proxied::No, &headers, &cfg.client_ip);
        let client_line = format!(
            "client ip {} (from {:?}; peer {} {})",
            cip.ip,
            cip.source,
            cip.peer,
            if client_ip::is_trusted(peer, &cfg.client_ip) {
                "is a trusted proxy"
            } else {
                "is not a trusted proxy"
            }
        );
        // As live: a request the gateway cannot make sense of (path, Host) is refused after
        // the global IP policy, so a denied address hears 403 whatever it sends.
        let head = path::normalize(raw_path)
            .map_err(Reject::BadRequest)
            .and_then(|p| {
                if let Some(why) = crate::pipeline::method_problem(&method) {
                    return Err(Reject::BadRequest(why));
                }
                let bad_host = a
                    .host
                    .as_deref()
                    .is_some_and(|h| !crate::pipeline::valid_host(h.as_bytes()));
                if bad_host {
                    Err(Reject::BadRequest("invalid Host header"))
                } else {
                    Ok(p)
                }
            });
        let mut p = match head {
            Ok(p) => p,
            Err(rej) => {
                line(client_line);
                global_policy(active, cip.ip, None, &mut line)?;
                return Err(rej);
            }
        };
        line(format!("path      {raw_path} -> normalized {p}"));
        let mut method = method.clone();
        let mut host = a
            .host
            .as_deref()
            .map(|h| route::host_of(h).to_ascii_lowercase());
        // Forward auth is answered before anything else: only a trusted proxy may ask, and the
        // request judged is the one its headers name.
        let forward_auth = cfg.forward_auth.as_deref() == Some(p.as_str());
        if forward_auth {
            if !client_ip::is_trusted(peer, &cfg.client_ip) {
                line(format!(
                    "served    forward auth endpoint: asked by {peer}, not a trusted proxy"
                ));
                return Err(Reject::IpDenied("forward auth asked by an untrusted peer"));
            }
            let o = forward_auth::original(&headers, active.host_routes)?;
            line(format!(
                "served    forward auth endpoint: judging the original request {} {}",
                o.method, o.path
            ));
            if let Some(h) = o.host {
                host = Some(h.to_ascii_lowercase());
            }
            method = o.method;
            p = o.path;
        }
        line(client_line);
        // Gateway-served paths come before routes, after the global IP policy (held strictly
        // there; a routed request's refusal may be only recorded, on a dry-run route).
        let served_path = !forward_auth && session::is_served(&p, active);
        let routed = (!served_path).then_some((&method, host.as_deref(), p.as_str()));
        global_policy(active, cip.ip, routed, &mut line)?;
        if served_path {
            if let Some(served) = served(active, &p) {
                line(format!("served    by the gateway: {}", served.what));
                if !served.methods.contains(&method) {
                    let allow: Vec<&str> = served.methods.iter().map(Method::as_str).collect();
                    return Err(Reject::MethodNotAllowed(allow.join(", ")));
                }
                if let Some(typ) = served.token {
                    // Refresh and logout judge a token (revocations are not looked up here).
                    let c = session_token(active, &headers, cip.ip, typ).inspect_err(|e| {
                        line(format!(
                            "token     REFUSED: {} {}",
                            e.status().as_u16(),
                            e.code()
                        ));
                    })?;
                    line(format!(
                        "token     valid (sub {}); revocation not looked up",
                        c.sub.as_deref().unwrap_or("-")
                    ));
                }
                return Ok(Answer::Served);
            }
        }
        let idx = route::find(&active.routes, &method, host.as_deref(), &p).inspect_err(|e| {
            line(format!(
                "route     none: {} {}",
                e.status().as_u16(),
                e.code()
            ));
        })?;
        let rc = &active.routes[idx].cfg;
        line(format!(
            "route     #{idx} `{}` ({}) auth={} upstream={}{}",
            rc.name,
            rc.describe_match(),
            rc.auth.name(),
            cfg.upstreams[rc.upstream].name,
            if rc.dry_run { " DRY-RUN" } else { "" }
        ));
        for w in cfg
            .warnings
            .iter()
            .filter(|w| w.contains(&format!("`{}`", rc.name)))
        {
            line(format!("          warning: {w}"));
        }
        if let Some(pol) = &active.routes[idx].ip {
            match pol.check(cip.ip) {
                Ok(()) => line("ip policy route: allowed".into()),
                Err(e) => {
                    line(format!("ip policy route: DENIED ({})", e.cause()));
                    if !rc.dry_run {
                        return Err(e);
                    }
                }
            }
        }
        // Rate limits: non-subject policies now, subject ones after the token (as live).
        let rate = |sub: Option<&str>,
                    subject_phase: bool,
                    line: &mut dyn FnMut(String)|
         -> Result<(), Reject> {
            for &pi in &rc.rate_limit {
                let pol = active.limiters.policy(pi);
                if (pol.key == LimitKey::Subject) != subject_phase {
                    continue;
                }
                let input = rate_limit::KeyInput {
                    ip: cip.ip,
                    sub,
                    route: &rc.name,
                    headers: &headers,
                };
                let mut d = active.limiters.check(pi, &input);
                for _ in 1..a.repeat.max(1) {
                    d = active.limiters.check(pi, &input);
                }
                let key = match &pol.key {
                    LimitKey::Ip => format!("ip {} (IPv6 grouped by /{})", cip.ip, pol.ipv6_prefix),
                    LimitKey::Subject => format!("subject {}", sub.unwrap_or("-")),
                    LimitKey::Route => format!("route {}", rc.name),
                    LimitKey::Global => "global".into(),
                    LimitKey::Header(h) => format!("header {h}"),
                };
                line(format!(
                    "rate      `{}` {} per {}s, burst {}, keyed by {key}: request #{} {} ({} left)",
                    pol.name,
                    pol.count,
                    pol.per.as_secs(),
                    pol.burst,
                    a.repeat.max(1),
                    if d.allowed { "allowed" } else { "REFUSED" },
                    d.remaining
                ));
                if !d.allowed && !rc.dry_run {
                    return Err(Reject::RateLimited {
                        policy: pol.name.clone(),
                        retry_after: d.retry_after,
                    });
                }
            }
            Ok(())
        };
        rate(None, false, &mut line)?;
        let mut claims = None;
        if let (AuthMode::Token, Some(tc), Some(keys)) = (&rc.auth, &cfg.token, &active.keys) {
            let verdict = auth::extract(&headers, tc).and_then(|t| {
                let t = t.ok_or(Reject::TokenMissing)?;
                let c = keys
                    .verify(tc, t, TokenType::Access, auth::now())
                    .map_err(auth::map_token_error)?;
                check_binding(tc, &c, cip.ip, auth::device_id(&headers, tc))
                    .map_err(auth::map_token_error)?;
                if !check_require(&c, &rc.require) {
                    return Err(Reject::InsufficientClaims);
                }
                Ok(c)
            });
            match verdict {
                Ok(c) => {
                    line(format!(
                        "token     valid (sub {})",
                        c.sub.as_deref().unwrap_or("-")
                    ));
                    claims = Some(c);
                }
                Err(e) => {
                    line(format!(
                        "token     REFUSED: {} {}",
                        e.status().as_u16(),
                        e.code()
                    ));
                    if !rc.dry_run {
                        return Err(e);
                    }
                }
            }
        } else {
            line(format!(
                "token     not required (auth = {})",
                rc.auth.name()
            ));
        }
        rate(
            claims.as_ref().and_then(|c| c.sub.as_deref()),
            true,
            &mut line,
        )?;
        if let AuthMode::Mint(rule) = &rc.auth {
            line(format!(
                "mint      on upstream status {:?}; claims from headers {:?}; required {:?}",
                rule.status,
                rule.claims_from_headers
                    .iter()
                    .map(|(c, h)| format!("{c}<-{h}"))
                    .collect::<Vec<_>>(),
                rule.required_claims
            ));
        }
        Ok(if forward_auth {
            Answer::ForwardAuthAllowed
        } else {
            Answer::Forwarded
        })
    })();
    match &verdict {
        Ok(Answer::Forwarded) => line("verdict   forwarded upstream".into()),
        Ok(Answer::Served) => line("verdict   answered by the gateway".into()),
        Ok(Answer::ForwardAuthAllowed) => {
            line("verdict   200 (forward auth: allowed, with the claim headers)".into());
        }
        Err(e) => {
            line(format!("verdict   {} {}", e.status().as_u16(), e.code()));
            // Why, as the log's `cause` says it (never a token); a 405 names the methods.
            if let Reject::MethodNotAllowed(allow) = e {
                line(format!("allow     {allow}"));
            } else if !e.cause().is_empty() {
                line(format!("cause     {}", e.cause()));
            }
        }
    }
    Ok((out, verdict.map(|_| ())))
}

/// What a request the phases let through comes to.
enum Answer {
    Forwarded,
    /// A gateway-served path.
    Served,
    ForwardAuthAllowed,
}

struct Served {
    what: String,
    methods: &'static [Method],
    /// The token the path judges (refresh: the refresh token; logout: either).
    token: Option<TokenType>,
}

/// The token a refresh (`Refresh`) or logout (`Access`: the access token, else the refresh
/// token) request presents, judged as the gateway would, but for revocation.
fn session_token(
    active: &Active,
    headers: &HeaderMap,
    ip: IpAddr,
    typ: TokenType,
) -> Result<crate::token::Claims, Reject> {
    let (Some(tc), Some(keys), Some(refresh)) = (
        active.config.token.as_ref(),
        active.keys.as_ref(),
        active.config.refresh.as_ref(),
    ) else {
        return Err(Reject::TokenMissing);
    };
    let judge = |p: &session::Presented<'_>| {
        let c = keys
            .verify_within(tc, p.token, p.typ, auth::now(), p.grace)
            .map_err(auth::map_token_error)?;
        check_binding(tc, &c, ip, auth::device_id(headers, tc)).map_err(auth::map_token_error)?;
        Ok(c)
    };
    let mut found = Err(Reject::TokenMissing);
    for (i, p) in session::presented(headers, tc, refresh, typ)?
        .iter()
        .enumerate()
    {
        match judge(p) {
            Ok(c) => return Ok(c),
            Err(e) if i == 0 => found = Err(e),
            Err(_) => {}
        }
    }
    found
}

/// The gateway-served path `p`, when the gateway answers it itself (the JWKS only exists for
/// asymmetric algorithms; otherwise that path goes on to the routes).
fn served(active: &Active, p: &str) -> Option<Served> {
    const POST: &[Method] = &[Method::POST];
    if p == "/.well-known/jwks.json" {
        active.keys.as_ref().and_then(|k| k.jwks())?;
        return Some(Served {
            what: "the JWKS (public verification keys)".into(),
            methods: &[Method::GET, Method::HEAD],
            token: None,
        });
    }
    let refresh = active.config.refresh.as_ref()?;
    let tc = active.config.token.as_ref()?;
    if p == refresh.path {
        Some(Served {
            what: format!(
                "refresh: rotates the refresh token sent in `{}` or the cookie `{}`",
                refresh.header, tc.cookie.refresh_name
            ),
            methods: POST,
            token: Some(TokenType::Refresh),
        })
    } else if p == refresh.logout_path {
        Some(Served {
            what: "logout: revokes the access token (or refresh token) presented, and its family"
                .into(),
            methods: POST,
            token: Some(TokenType::Access),
        })
    } else {
        None
    }
}

pub fn run(mut cfg: Config, a: Args) -> ExitCode {
    // Nothing is sent anywhere: the store is the in-memory one.
    cfg.store.backend = crate::config::StoreBackend::Memory;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let state = match crate::state::State::new(cfg).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        let active = state.active.load_full();
        match explain(&active, &a) {
            Ok((text, _)) => {
                crate::print_stdout(&text);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        }
    })
}
