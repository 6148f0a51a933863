//! `iptgate token mint` / `iptgate token verify`: tokens exactly as the gateway mints and
//! verifies them (ops, tests, load tests).

use std::net::IpAddr;
use std::process::ExitCode;

use crate::config::units::parse_duration;
use crate::config::Config;
use crate::pipeline::auth::{map_token_error, now};
use crate::token::{check_binding, Keys, MintRequest, TokenType};

fn setup(cfg: &Config, ip: &str) -> Result<(Keys, IpAddr), ExitCode> {
    let Some(tc) = &cfg.token else {
        eprintln!("the config has no [token] section");
        return Err(ExitCode::from(2));
    };
    let ip: IpAddr = ip.parse().map_err(|_| {
        eprintln!("--ip: `{ip}` is not an IP address");
        ExitCode::from(2)
    })?;
    let keys = Keys::new(tc).map_err(|e| {
        eprintln!("token: {e}");
        ExitCode::from(2)
    })?;
    Ok((keys, ip.to_canonical()))
}

pub fn mint(
    cfg: &Config,
    ip: &str,
    sub: Option<String>,
    claims: &[String],
    ttl: Option<&str>,
) -> ExitCode {
    let (keys, ip) = match setup(cfg, ip) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Some(tc) = &cfg.token else {
        return ExitCode::from(2);
    };
    let mut extra = serde_json::Map::new();
    for c in claims {
        let Some((k, v)) = c.split_once('=') else {
            eprintln!("--claim: `{c}` is not key=value");
            return ExitCode::from(2);
        };
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        extra.insert(k.to_string(), value);
    }
    let ttl = match ttl.map(parse_duration).transpose() {
        Ok(t) => t.unwrap_or(tc.ttl),
        Err(e) => {
            eprintln!("--ttl: {e}");
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
            dev: None,
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

pub fn verify(cfg: &Config, ip: &str, token: &str) -> ExitCode {
    let (keys, ip) = match setup(cfg, ip) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Some(tc) = &cfg.token else {
        return ExitCode::from(2);
    };
    let verdict = keys
        .verify(tc, token.trim(), TokenType::Access, now())
        .and_then(|c| check_binding(tc, &c, ip, None).map(|_| c));
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
