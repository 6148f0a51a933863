//! `iptgate token mint` / `iptgate token verify`: tokens exactly as the gateway mints and
//! verifies them (ops, tests, load tests).

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::units::parse_duration;
use crate::config::Config;
use crate::pipeline::auth::{map_token_error, now};
use crate::token::{check_binding, Keys, MintRequest, TokenType};

fn setup(cfg: &Config, ip: &str, device: Option<&str>) -> Result<(Keys, IpAddr), ExitCode> {
    let Some(tc) = &cfg.token else {
        eprintln!("the config has no [token] section");
        return Err(ExitCode::from(2));
    };
    let ip: IpAddr = ip.parse().map_err(|_| {
        eprintln!("--ip: `{ip}` is not an IP address");
        ExitCode::from(2)
    })?;
    // Device binding: the gateway binds (and checks) a token to the request's device id, so
    // the command needs one exactly when the config binds tokens to devices.
    match (&tc.device_binding, device) {
        (Some(_), None) => {
            eprintln!(
                "--device: token.device_binding is set: give the device id the token is bound to"
            );
            return Err(ExitCode::from(2));
        }
        (Some(_), Some("")) => {
            eprintln!("--device: the device id is empty (the gateway treats that as none)");
            return Err(ExitCode::from(2));
        }
        (None, Some(_)) => {
            eprintln!("--device: token.device_binding is not set: tokens are not bound to devices");
            return Err(ExitCode::from(2));
        }
        _ => {}
    }
    let keys = Keys::new(tc).map_err(|e| {
        eprintln!("token: {e}");
        ExitCode::from(2)
    })?;
    Ok((keys, ip.to_canonical()))
}

pub fn mint(
    cfg: &Config,
    ip: &str,
    device: Option<&str>,
    sub: Option<String>,
    claims: &[String],
    ttl: Option<&str>,
) -> ExitCode {
    let (keys, ip) = match setup(cfg, ip, device) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Some(tc) = &cfg.token else {
        return ExitCode::from(2);
    };
    if !keys.can_mint() {
        eprintln!(
            "token.private_key: not set; with public_keys alone tokens can be verified, not minted"
        );
        return ExitCode::from(2);
    }
    let (sub, extra, ttl) = match args(sub, claims, ttl, tc.ttl) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match keys.mint(
        tc,
        MintRequest {
            typ: TokenType::Access,
            ip,
            sub,
            extra,
            dev: device.map(crate::token::device_hash),
            fam: None,
            ttl,
        },
    ) {
        Ok(m) => {
            crate::print_stdout(&format!("{}\n", m.token));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mint: {e}");
            ExitCode::from(1)
        }
    }
}

/// The longest `--ttl` taken: a longer one is a typo, or a credential that never ends.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

type Claims = serde_json::Map<String, serde_json::Value>;

/// `--sub`, `--claim k=v`… and `--ttl`, checked as the gateway would: reserved claims, empty
/// names and values the gateway would never mint (control characters) are refused, not
/// silently dropped.
fn args(
    mut sub: Option<String>,
    claims: &[String],
    ttl: Option<&str>,
    default_ttl: Duration,
) -> Result<(Option<String>, Claims, Duration), String> {
    // `--claim sub=alice` is `--sub alice`; the two naming different subjects is an error.
    for c in claims {
        if let Some(v) = c.strip_prefix("sub=") {
            match &sub {
                Some(s) if s != v => {
                    return Err("--claim sub=… names another subject than --sub".into());
                }
                _ => sub = Some(v.to_string()),
            }
        }
    }
    if let Some(s) = &sub {
        if s.is_empty() {
            return Err(
                "--sub: the subject is empty; leave --sub out for a token with none".into(),
            );
        }
        if s.chars().any(char::is_control) {
            return Err("--sub: control characters (CR, LF, NUL…) are never minted".into());
        }
    }
    let mut extra = serde_json::Map::new();
    for c in claims {
        let Some((k, v)) = c.split_once('=') else {
            return Err(format!("--claim: `{}` is not key=value", c.escape_debug()));
        };
        if k.is_empty() {
            return Err(format!(
                "--claim: `{}` has an empty claim name",
                c.escape_debug()
            ));
        }
        if k == "sub" {
            continue;
        }
        if crate::config::RESERVED_CLAIMS.contains(&k) {
            return Err(format!("--claim: `{k}` is set by the gateway itself"));
        }
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        if has_control(&value) || k.chars().any(char::is_control) {
            return Err(format!(
                "--claim: `{}` holds control characters (CR, LF, NUL…), which the gateway never mints",
                k.escape_debug()
            ));
        }
        extra.insert(k.to_string(), value);
    }
    let ttl = match ttl.map(parse_duration).transpose() {
        Ok(t) => t.unwrap_or(default_ttl),
        Err(e) => return Err(format!("--ttl: {e}")),
    };
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        // Tokens count time in whole seconds: under one, it would expire as it is issued.
        return Err("--ttl: must be at least 1s and at most 10 years".into());
    }
    Ok((sub, extra, ttl))
}

fn has_control(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.chars().any(char::is_control),
        serde_json::Value::Array(a) => a.iter().any(has_control),
        serde_json::Value::Object(o) => o
            .iter()
            .any(|(k, v)| k.chars().any(char::is_control) || has_control(v)),
        _ => false,
    }
}

pub fn verify(cfg: &Config, ip: &str, device: Option<&str>, token: &str) -> ExitCode {
    let (keys, ip) = match setup(cfg, ip, device) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Some(tc) = &cfg.token else {
        return ExitCode::from(2);
    };
    let verdict = keys
        .verify(tc, token.trim(), TokenType::Access, now())
        .and_then(|c| check_binding(tc, &c, ip, device).map(|_| c))
        .and_then(|c| {
            // A claim the route would have to forward but cannot put in a header refuses the
            // token there (`token_invalid`): the same verdict here.
            let unsendable = tc.forward_claims.iter().any(|(claim, _)| {
                c.get(claim)
                    .is_some_and(|v| crate::pipeline::forward::claim_header_value(&v).is_none())
            });
            if unsendable {
                Err(crate::token::TokenError::Invalid(
                    "claim is not a valid header value",
                ))
            } else {
                Ok(c)
            }
        });
    match verdict {
        Ok(c) => {
            let json = serde_json::to_string_pretty(&serde_json::Value::Object(c.to_map()))
                .unwrap_or_default();
            crate::print_stdout(&format!("{json}\n"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            let r = map_token_error(e);
            crate::print_stdout(&format!("{} {}\n", r.status().as_u16(), r.code()));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn err(sub: Option<&str>, claims: &[&str], ttl: Option<&str>) -> String {
        let claims: Vec<String> = claims.iter().map(|c| c.to_string()).collect();
        match args(sub.map(str::to_string), &claims, ttl, DAY) {
            Ok(_) => panic!("accepted: {sub:?} {claims:?} {ttl:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn claims_the_gateway_would_not_mint_are_refused() {
        let (sub, extra, ttl) = args(
            Some("alice".into()),
            &["role=admin".into(), "n=3".into()],
            Some("15m"),
            DAY,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sub.as_deref(), Some("alice"));
        assert_eq!(extra["role"], "admin");
        assert_eq!(extra["n"], 3);
        assert_eq!(ttl, Duration::from_secs(900));
        assert!(err(Some("alice"), &["sub=bob"], None).contains("--sub"));
        let (sub, extra, _) = args(None, &["sub=bob".to_string()], None, DAY).unwrap();
        assert_eq!((sub.as_deref(), extra.get("sub")), (Some("bob"), None));
        for reserved in [
            "ip", "exp", "iat", "nbf", "typ", "iss", "aud", "jti", "fam", "dev",
        ] {
            let e = err(None, &[&format!("{reserved}=x")], None);
            assert!(e.contains("set by the gateway"), "{reserved}: {e}");
        }
        assert!(err(None, &["=x"], None).contains("empty claim name"));
        assert!(err(Some(""), &[], None).contains("empty"));
        assert!(err(Some("a\r\nb"), &[], None).contains("control"));
        assert!(err(None, &["role=a\nb"], None).contains("control"));
        assert!(err(None, &["role=\"a\\u0000b\""], None).contains("control"));
        assert!(err(None, &["role=[\"a\\rb\"]"], None).contains("control"));
        assert!(err(None, &[], Some("11y")).contains("10 years"));
        assert!(err(None, &[], Some("0s")).contains("--ttl"));
        assert!(err(None, &[], Some("500ms")).contains("--ttl"));
        assert!(args(None, &[], Some("3650d"), DAY).is_ok());
    }
}
