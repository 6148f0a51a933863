//! `iptgate check`: validate a config, print every error with its key path (exit 2), or the
//! resolved route table and warnings (exit 0).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

pub fn run(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Certificates are parsed too (token keys already were), so `check` catches what `run` would.
    let mut errors = Vec::new();
    if let Some(t) = &cfg.server.tls {
        if let Err(e) = crate::tls::server_config(t) {
            errors.push(format!("server.tls: {e}"));
        }
    }
    for u in &cfg.upstreams {
        if let Some(ca) = &u.ca {
            if let Err(e) = crate::tls::client_config(Some(ca)) {
                errors.push(format!("upstreams.{}.ca: {e}", u.name));
            }
        }
    }
    if !errors.is_empty() {
        eprintln!("{}: {} error(s)", path.display(), errors.len());
        for e in errors {
            eprintln!("  {e}");
        }
        return ExitCode::from(2);
    }
    // Written as one block, and a reader that went away (`check | head -1`) is not an error.
    let mut out = String::new();
    let _ = writeln!(out, "{}: valid", path.display());
    let _ = writeln!(
        out,
        "listen {}{}  admin {}",
        cfg.server.listen,
        if cfg.server.tls.is_some() {
            " (TLS)"
        } else {
            " (plain HTTP)"
        },
        cfg.server
            .admin_listen
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into())
    );
    out.push_str(
        "routes (exact path beats prefix; longest prefix wins; ties go to the earlier route):\n",
    );
    out.push_str(&cfg.route_table());
    for w in &cfg.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    crate::print_stdout(&out);
    ExitCode::SUCCESS
}
