//! The one place config is validated: file shape -> runtime [`Config`]. Every problem is
//! collected with its key path; unknown names get the closest valid one as a suggestion.
//!
//! This file reads the TOML and shapes it into the file structs; the [`Validator`] then checks
//! each section: `server.rs` (`[server]`, `[client_ip]`), `token.rs` (`[token]`, `[refresh]`,
//! `[store]`), `routes.rs` (`[upstreams]`, `[rate_limits]`, `[login_protection]`,
//! `[[routes]]`) and `validate.rs` (shared helpers, and the assembly of the `Config`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use super::units::{parse_duration, parse_rate, parse_size};
use super::*;

mod routes;
mod server;
mod token;
mod validate;

pub use token::RESERVED_CLAIMS;

const TOP_KEYS: &[&str] = &[
    "server",
    "client_ip",
    "ip",
    "token",
    "refresh",
    "store",
    "forward_auth",
    "upstreams",
    "rate_limits",
    "login_protection",
    "routes",
];

/// The file parsed and shaped into its structs: the errors of keys dropped on the way, and
/// whether every section could be read. A TOML syntax error is the only error returned.
fn parse(text: &str, path: &Path) -> Result<(FileConfig, Errors, bool), ConfigErrors> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        errors_of(
            path,
            vec![ConfigError {
                path: String::new(),
                message: syntax_error(text, &e),
            }],
        )
    })?;
    let mut errs = Errors::default();
    let (file, complete) = shape(table, &mut errs);
    Ok((file, errs, complete))
}

fn errors_of(path: &Path, errors: Vec<ConfigError>) -> ConfigErrors {
    ConfigErrors {
        file: path.display().to_string(),
        errors,
    }
}

pub(super) fn build(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| errors_of(path, errors);
    let (file, errs, complete) = parse(text, path)?;
    if !complete {
        // A section could not be read at all: checking the rest against it would only add
        // errors that are consequences of that one.
        return Err(fail(errs.0));
    }
    // Every error so far is a key that was dropped; validation must not report those keys
    // (or the tables holding them) again as missing.
    let shaped = errs.0.len();
    let dropped: Vec<String> = errs.0.iter().map(|e| e.path.clone()).collect();
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let mut v = Validator {
        base: base_dir.clone(),
        token_section: file.token.is_some(),
        errs,
        warnings: Vec::new(),
    };
    let cfg = v.config(file, path.to_path_buf(), base_dir);
    let consequence = |p: &str| {
        dropped.iter().any(|d| {
            d == p
                || d.strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    };
    let found = v.errs.0.split_off(shaped);
    v.errs
        .0
        .extend(found.into_iter().filter(|e| !consequence(&e.path)));
    if v.errs.0.is_empty() {
        let mut cfg = cfg;
        cfg.warnings = v.warnings;
        Ok(cfg)
    } else {
        Err(fail(v.errs.0))
    }
}

/// The file's shape only (no validation), for `demo`, which must know the certificate paths
/// and the secret's variable before the config can validate. Errors as `build` reports them.
pub(super) fn shape_only(text: &str, path: &Path) -> Result<FileConfig, ConfigErrors> {
    let (file, errs, _) = parse(text, path)?;
    if errs.0.is_empty() {
        Ok(file)
    } else {
        Err(errors_of(path, errs.0))
    }
}

/// A TOML syntax error as "line L, column C: message", without the source line that the
/// parser's own report quotes: that line may hold an inline secret, and `check` output ends
/// up in CI logs.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let at = e.span().map(|span| {
        let before = &text.as_bytes()[..span.start.min(text.len())];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        format!(" at line {line}, column {col}")
    });
    format!(
        "not valid TOML{}: {}",
        at.unwrap_or_default(),
        redact_strings(e.message().trim())
    )
}

/// Deserialize section by section so that one typo does not hide the next. Unknown keys are
/// reported and left out, so the rest is still read and validated; the flag is false when a
/// section could not be read at all.
fn shape(mut table: toml::Table, errs: &mut Errors) -> (FileConfig, bool) {
    for key in table.keys() {
        if !TOP_KEYS.contains(&key.as_str()) {
            let hint = closest(key, TOP_KEYS)
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            errs.push(key.clone(), format!("unknown section{hint}"));
        }
    }
    let mut out = FileConfig::default();
    let mut complete = true;
    let errs = &mut Shaping {
        errs,
        complete: &mut complete,
    };
    fn take<T: DeserializeOwned + Default>(
        t: &mut toml::Table,
        key: &str,
        errs: &mut Shaping,
    ) -> T {
        take_opt(t, key, errs).unwrap_or_default()
    }
    fn take_opt<T: DeserializeOwned>(
        t: &mut toml::Table,
        key: &str,
        errs: &mut Shaping,
    ) -> Option<T> {
        let v = t.remove(key)?;
        de(v, key, errs)
    }
    out.server = take(&mut table, "server", errs);
    out.client_ip = take(&mut table, "client_ip", errs);
    out.ip = take(&mut table, "ip", errs);
    out.token = take_opt(&mut table, "token", errs);
    out.refresh = take_opt(&mut table, "refresh", errs);
    out.store = take(&mut table, "store", errs);
    out.forward_auth = take_opt(&mut table, "forward_auth", errs);
    out.login_protection = take_opt(&mut table, "login_protection", errs);
    for (section, is_up) in [("upstreams", true), ("rate_limits", false)] {
        match table.remove(section) {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (name, v) in t {
                    let p = format!("{section}.{name}");
                    if is_up {
                        if let Some(u) = de(v, &p, errs) {
                            out.upstreams.insert(name, u);
                        }
                    } else if let Some(r) = de(v, &p, errs) {
                        out.rate_limits.insert(name, r);
                    }
                }
            }
            Some(_) => errs.fatal(section, "must be a table of named entries"),
        }
    }
    match table.remove("routes") {
        None => {}
        Some(toml::Value::Array(a)) => {
            for (i, v) in a.into_iter().enumerate() {
                if let Some(r) = de(v, &format!("routes[{i}]"), errs) {
                    out.routes.push(r);
                }
            }
        }
        Some(_) => errs.fatal("routes", "must be an array of tables: [[routes]]"),
    }
    (out, complete)
}

/// Errors of the shape step, and whether every section could be read.
struct Shaping<'a> {
    errs: &'a mut Errors,
    complete: &'a mut bool,
}

impl Shaping<'_> {
    fn fatal(&mut self, path: &str, msg: impl Into<String>) {
        self.errs.push(path, msg);
        *self.complete = false;
    }
}

/// Reads one section. A key that is unknown or of the wrong type, at any depth, is reported
/// with its whole path and dropped, and the section read again without it (a bounded number
/// of times): every such key of a section is reported at once, and the section still takes
/// part in validation. Only a key the section cannot do without (one that was dropped, or is
/// missing) stops it.
fn de<T: DeserializeOwned>(mut v: toml::Value, path: &str, errs: &mut Shaping) -> Option<T> {
    let mut dropped: Vec<String> = Vec::new();
    for _ in 0..64 {
        let (at, msg) = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => return Some(t),
            Err(e) => {
                let at: Vec<serde_path_to_error::Segment> = e.path().iter().cloned().collect();
                (at, e.into_inner().to_string())
            }
        };
        let msg = msg.split("\nin `").next().unwrap_or("").trim().to_string();
        // The path ends at the offending key (unknown, or of the wrong type); its table holds it.
        let (parent, key) = match at.split_last() {
            Some((serde_path_to_error::Segment::Map { key }, parent)) => {
                (parent, Some(key.as_str()))
            }
            _ => (&at[..], None),
        };
        let where_ = key_path(path, parent, key);
        let removed = key.is_some_and(|k| {
            lookup(&mut v, parent)
                .and_then(|t| t.as_table_mut())
                .is_some_and(|t| t.remove(k).is_some())
        });
        if !removed {
            // Nothing to drop (a missing key, a bad value at the section's top): the section
            // cannot be read. A key missing only because it was dropped is already reported.
            let missing = msg
                .strip_prefix("missing field `")
                .and_then(|m| m.split_once('`'))
                .map(|(f, _)| key_path(path, &at, Some(f)));
            if missing.is_none_or(|m| !dropped.contains(&m)) {
                errs.fatal(&where_, explain_serde(&msg));
            } else {
                *errs.complete = false;
            }
            return None;
        }
        errs.errs.push(&where_, explain_serde(&msg));
        dropped.push(where_);
    }
    *errs.complete = false;
    None
}

/// `section.key[0].sub` from a section path and a serde path.
fn key_path(base: &str, at: &[serde_path_to_error::Segment], last: Option<&str>) -> String {
    use serde_path_to_error::Segment;
    let mut out = base.to_string();
    for s in at {
        match s {
            Segment::Map { key } => {
                out.push('.');
                out.push_str(key);
            }
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    if let Some(k) = last {
        out.push('.');
        out.push_str(k);
    }
    out
}

/// The value at a serde path inside `v`.
fn lookup<'a>(
    v: &'a mut toml::Value,
    at: &[serde_path_to_error::Segment],
) -> Option<&'a mut toml::Value> {
    use serde_path_to_error::Segment;
    let mut cur = v;
    for s in at {
        cur = match s {
            Segment::Map { key } => cur.as_table_mut()?.get_mut(key)?,
            Segment::Seq { index } => cur.as_array_mut()?.get_mut(*index)?,
            Segment::Enum { .. } | Segment::Unknown => cur,
        };
    }
    Some(cur)
}

/// `string "…"` in a serde message becomes `a string`.
fn redact_strings(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        let after = &rest[i + "string \"".len()..];
        // serde quotes with Rust escapes, so an inner quote is `\"`.
        let mut end = None;
        let mut escaped = false;
        for (j, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(j);
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = end.map_or("", |j| &after[j + 1..]);
    }
    out.push_str(rest);
    out
}

/// The key named by serde's "unknown field `x`, expected …".
fn unknown_field(msg: &str) -> Option<&str> {
    msg.trim()
        .strip_prefix("unknown field `")?
        .split_once('`')
        .map(|(f, _)| f)
}

/// Turn serde's "unknown field `x`, expected one of `a`, `b`" into a suggestion. String
/// values quoted in type errors are left out: the value may be a secret put where a table
/// was expected (`secret = "…"`), and `check` output ends up in CI logs.
fn explain_serde(msg: &str) -> String {
    let msg = redact_strings(msg.trim().trim_end_matches('\n'));
    if msg.contains("untagged enum StoreUrlFile") {
        return "must be a string \"redis://host:6379/0\", { env = \"NAME\" } or { file = \"path\" }".into();
    }
    if msg.contains("expected struct SecretFile") {
        return "must be a table: { env = \"VARIABLE\" } or { file = \"path\" } (a secret is not written in the config)".into();
    }
    // Internal type names mean nothing to a user: `expected struct X` is a table.
    let msg = match msg.find("expected struct ") {
        Some(i) => format!("{}expected a table", &msg[..i]),
        None => msg,
    };
    if let Some(field) = unknown_field(&msg) {
        if let Some((_, tail)) = msg.split_once(&format!("`{field}`")) {
            let expected: Vec<&str> = tail
                .split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, s)| s)
                .collect();
            let hint = closest(field, &expected)
                .map(|c| format!("did you mean `{c}`?"))
                .unwrap_or_else(|| format!("valid keys: {}", expected.join(", ")));
            return format!("unknown key `{field}`; {hint}");
        }
    }
    msg
}

struct Validator {
    base: PathBuf,
    /// A [token] section exists (when it is invalid, its own errors say why).
    token_section: bool,
    errs: Errors,
    warnings: Vec<String>,
}
