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
