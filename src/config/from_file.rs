//! The one place config is validated: file shape -> runtime [`Config`]. Every problem is
//! collected with its key path; unknown names get the closest valid one as a suggestion.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use super::units::{parse_duration, parse_rate, parse_size};
use super::*;

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

impl Validator {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errs.push(path, msg);
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn duration(&mut self, path: &str, v: &Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                self.err(path, e);
                default
            }),
        }
    }

    /// A duration that must not be zero: a zero timeout or lifetime would refuse everything.
    fn positive_duration(&mut self, path: &str, v: &Option<String>, default: Duration) -> Duration {
        let d = self.duration(path, v, default);
        if d.is_zero() {
            self.err(path, "must be longer than 0");
            return default;
        }
        d
    }

    /// A header that carries a token or a claim: a valid name, and not one that proxies
    /// remove or that frames the message.
    fn carrier_header(&mut self, path: &str, v: &str) -> Option<HeaderName> {
        let h = self.header_name(path, v)?;
        if let Some(why) = checks::header_problem(&h) {
            self.err(path, format!("`{v}` {why}; pick another header name"));
            return None;
        }
        Some(h)
    }

    fn addr(&mut self, path: &str, v: &str) -> Option<SocketAddr> {
        match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path,
                    format!(
                        "`{v}` is not an IP:port address (e.g. \"0.0.0.0:8443\", \"[::]:8443\")"
                    ),
                );
                None
            }
        }
    }

    fn header_name(&mut self, path: &str, v: &str) -> Option<HeaderName> {
        match HeaderName::from_str(v) {
            Ok(h) => Some(h),
            Err(_) => {
                self.err(path, format!("`{v}` is not a valid HTTP header name"));
                None
            }
        }
    }

    fn nets(&mut self, path: &str, list: &[String]) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(list.len());
        for (i, s) in list.iter().enumerate() {
            match parse_net(s) {
                Ok(n) => {
                    self.host_bits(&format!("{path}[{i}]"), s);
                    out.push(n)
                }
                Err(e) => self.err(format!("{path}[{i}]"), e),
            }
        }
        out
    }

    /// `10.0.0.1/8` stands for all of 10.0.0.0/8: say so, as nginx does.
    fn host_bits(&mut self, path: &str, s: &str) {
        if let Some(net) = checks::host_bits(s) {
            self.warnings.push(format!(
                "{path}: `{}` has host bits set; it is read as {net} (the whole network)",
                s.trim()
            ));
        }
    }

    fn ip_lists(&mut self, path: &str, f: &IpFile) -> IpLists {
        let allow = self.nets(&format!("{path}.allow"), &f.allow);
        let mut deny = self.nets(&format!("{path}.deny"), &f.deny);
        if let Some(df) = &f.deny_file {
            let p = self.resolve(df);
            match std::fs::read_to_string(&p) {
                Ok(text) => {
                    for (n, line) in text.lines().enumerate() {
                        let line = line.split('#').next().unwrap_or("").trim();
                        if line.is_empty() {
                            continue;
                        }
                        match parse_net(line) {
                            Ok(net) => {
                                self.host_bits(
                                    &format!("{path}.deny_file ({}:{})", p.display(), n + 1),
                                    line,
                                );
                                deny.push(net)
                            }
                            Err(e) => {
                                self.err(format!("{path}.deny_file ({}:{})", p.display(), n + 1), e)
                            }
                        }
                    }
                }
                Err(e) => self.err(
                    format!("{path}.deny_file"),
                    format!("cannot read {}: {e}", p.display()),
                ),
            }
        }
        IpLists { allow, deny }
    }

    fn config(&mut self, f: FileConfig, source: PathBuf, base_dir: PathBuf) -> Config {
        let server = self.server(&f.server);
        let client_ip = self.client_ip(&f.client_ip);
        let ip = self.ip_lists("ip", &f.ip);
        let token = f.token.as_ref().and_then(|t| self.token(t));
        let refresh = self.refresh(f.refresh.as_ref(), token.is_some());
        if let (Some(tc), Some(r)) = (&token, &refresh) {
            if tc.set_cookie {
                for (key, p) in [
                    ("refresh.path", &r.path),
                    ("refresh.logout_path", &r.logout_path),
                ] {
                    if !cookie_path_matches(&tc.cookie.path, p) {
                        self.warnings.push(format!(
                            "token.cookie.path `{}` does not cover {key} `{p}`: browsers will not send the cookies there, so refresh and logout by cookie cannot work",
                            tc.cookie.path
                        ));
                    }
                }
            }
        }
        let store = self.store(&f.store);
        let forward_auth = f.forward_auth.as_ref().map(|fa| {
            let p = fa.path.clone().unwrap_or_else(|| "/_iptgate/verify".into());
            self.gateway_path("forward_auth.path", &p);
            p
        });
        self.gateway_clashes(token.as_ref(), refresh.as_ref(), forward_auth.as_deref());
        // As written (an invalid token.header falls back to the default, which must not
        // make a clash of its own).
        let token_header = f
            .token
            .as_ref()
            .map(|t| t.header.as_deref().unwrap_or("IPToken"));
        let refresh_header = f
            .refresh
            .as_ref()
            .filter(|r| r.enabled)
            .map(|r| r.header.as_deref().unwrap_or("IPToken-Refresh"));
        if let (Some(t), Some(r)) = (token_header, refresh_header) {
            if t.eq_ignore_ascii_case(r) {
                self.err(
                    "refresh.header",
                    format!(
                        "`{r}` is also token.header: the refresh token needs a header of its own"
                    ),
                );
            }
        }
        let upstream_names: Vec<String> = f.upstreams.keys().cloned().collect();
        let upstreams: Vec<UpstreamConfig> = f
            .upstreams
            .iter()
            .map(|(n, u)| self.upstream(n, u))
            .collect();
        let rate_limits: Vec<RateLimitPolicy> = f
            .rate_limits
            .iter()
            .map(|(n, r)| self.rate_limit(n, r))
            .collect();
        let login_protection = f.login_protection.as_ref().map(|l| self.login(l));
        let mut routes = Vec::new();
        for (i, r) in f.routes.iter().enumerate() {
            if let Some(route) = self.route(i, r, &upstream_names, &rate_limits, token.as_ref()) {
                routes.push(route);
            }
        }
        if f.routes.is_empty() {
            self.err("routes", "no routes: add at least one [[routes]] table");
        }
        self.check_routes(&routes);
        Config {
            source,
            base_dir,
            server: server.unwrap_or_else(default_server),
            client_ip,
            ip,
            token,
            refresh,
            store,
            forward_auth,
            upstreams,
            rate_limits,
            login_protection,
            routes,
            warnings: Vec::new(),
        }
    }

    /// Paths the gateway answers itself must be distinct (one would hide the other), and the
    /// refresh token must not ride on the access token's header.
    fn gateway_clashes(
        &mut self,
        token: Option<&TokenConfig>,
        refresh: Option<&RefreshConfig>,
        forward_auth: Option<&str>,
    ) {
        let mut served: Vec<(&str, &str)> = Vec::new();
        if token.is_some_and(|t| !t.algorithm.is_hmac()) {
            served.push(("the JWKS endpoint", "/.well-known/jwks.json"));
        }
        if let Some(r) = refresh {
            served.push(("refresh.path", &r.path));
            served.push(("refresh.logout_path", &r.logout_path));
        }
        if let Some(p) = forward_auth {
            served.push(("forward_auth.path", p));
        }
        for (j, (key, p)) in served.iter().enumerate() {
            if let Some((other, _)) = served[..j].iter().find(|(_, q)| q == p) {
                self.err(
                    *key,
                    format!("`{p}` is already served by the gateway as {other}: each gateway path must be distinct"),
                );
            }
        }
    }

    /// A non-empty list of HTTP status codes (100–599).
    fn statuses(&mut self, key: &str, list: &[u16], example: &str) {
        if list.is_empty() {
            self.err(
                key,
                format!("is empty, so it never matches: list HTTP status codes, e.g. {example}"),
            );
        }
        for (i, s) in list.iter().enumerate() {
            if !(100..=599).contains(s) {
                self.err(
                    format!("{key}[{i}]"),
                    format!("{s} is not an HTTP status code (100–599)"),
                );
            }
        }
    }

    fn gateway_path(&mut self, key: &str, p: &str) {
        if !p.starts_with('/') || p.contains("//") || p.contains("/./") || p.contains("/../") {
            self.err(key, format!("`{p}` must be an absolute, normalized path"));
        }
    }

    fn server(&mut self, s: &ServerFile) -> Option<ServerConfig> {
        let listen = self.addr(
            "server.listen",
            s.listen.as_deref().unwrap_or("0.0.0.0:8443"),
        )?;
        let tls = s.tls.as_ref().and_then(|t| {
            let mut file = |k: &str, p: &Option<PathBuf>| match p {
                None => {
                    self.err(
                        k,
                        "missing: [server].tls needs both cert and key (PEM files)",
                    );
                    None
                }
                Some(p) => Some(self.resolve(p)),
            };
            let cert = file("server.tls.cert", &t.cert);
            let key = file("server.tls.key", &t.key);
            Some(TlsPaths {
                cert: cert?,
                key: key?,
            })
        });
        if let Some(t) = &tls {
            let mut missing = false;
            for (k, p) in [("server.tls.cert", &t.cert), ("server.tls.key", &t.key)] {
                if !p.exists() {
                    missing = true;
                    self.err(
                        k,
                        format!(
                            "{} does not exist (run `iptgate cert --out DIR`)",
                            p.display()
                        ),
                    );
                }
            }
            // Parsed now, so a bad PEM or a key that does not match is reported with the rest.
            if !missing {
                if let Err(e) = crate::tls::server_config(t) {
                    self.err("server.tls", e.to_string());
                }
            }
        }
        let redirect_http = s
            .redirect_http
            .as_ref()
            .and_then(|a| self.addr("server.redirect_http", a));
        if redirect_http.is_some() && tls.is_none() {
            self.err(
                "server.redirect_http",
                "needs [server].tls: without TLS there is nothing to redirect to",
            );
        }
        let admin_listen = match s.admin_listen.as_deref() {
            Some("" | "off") => None,
            Some(a) => self.addr("server.admin_listen", a),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
        };
        let mut bound = vec![("server.listen", listen)];
        for (k, a) in [
            ("server.admin_listen", admin_listen),
            ("server.redirect_http", redirect_http),
        ] {
            let Some(a) = a else { continue };
            if let Some((other, _)) = bound.iter().find(|(_, b)| same_socket(a, *b)) {
                let why = if k == "server.admin_listen" {
                    "; the admin endpoints never share the main listener"
                } else {
                    ""
                };
                self.err(
                    k,
                    format!("{a} takes the same port as {other} (a wildcard address covers every address of its family){why}"),
                );
            }
            bound.push((k, a));
        }
        let max_request_body = match &s.max_request_body {
            None => 10 << 20,
            Some(v) => parse_size(v).unwrap_or_else(|e| {
                self.err("server.max_request_body", e);
                0
            }),
        };
        let max_connections = s.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            self.err("server.max_connections", "must be at least 1");
        }
        let workers = s.workers.unwrap_or(0);
        if workers > MAX_WORKERS {
            self.err(
                "server.workers",
                format!("{workers} is more than {MAX_WORKERS}: each worker is an OS thread with its own stack, and past the core count more only add switching; 0 means one per core"),
            );
        }
        Some(ServerConfig {
            listen,
            tls,
            redirect_http,
            admin_listen,
            workers: workers.min(MAX_WORKERS),
            max_connections,
            header_read_timeout: self.positive_duration(
                "server.header_read_timeout",
                &s.header_read_timeout,
                Duration::from_secs(10),
            ),
            idle_timeout: self.positive_duration(
                "server.idle_timeout",
                &s.idle_timeout,
                Duration::from_secs(60),
            ),
            max_request_body,
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                &s.shutdown_grace,
                Duration::from_secs(30),
            ),
        })
    }

    fn client_ip(&mut self, c: &ClientIpFile) -> ClientIpConfig {
        let trusted_proxies = self.nets("client_ip.trusted_proxies", &c.trusted_proxies);
        for n in trusted_proxies.iter().filter(|n| n.prefix_len() == 0) {
            self.warnings.push(format!(
                "client_ip.trusted_proxies: `{n}` trusts every address, so any client can name its own IP in the forwarding header"
            ));
        }
        let header = match c.header.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("x-forwarded-for") => ForwardHeader::XForwardedFor,
            Some("forwarded") => ForwardHeader::Forwarded,
            Some("x-real-ip") => ForwardHeader::XRealIp,
            Some(other) => {
                self.err(
                    "client_ip.header",
                    format!("`{other}`: use \"x-forwarded-for\", \"forwarded\" or \"x-real-ip\""),
                );
                ForwardHeader::XForwardedFor
            }
        };
        ClientIpConfig {
            trusted_proxies,
            header,
            proxy_protocol: c.proxy_protocol,
        }
    }

    fn secret(&mut self, key: &str, s: &SecretFile) -> Option<Vec<u8>> {
        match (&s.env, &s.file) {
            (Some(name), None) => match std::env::var(name) {
                Ok(v) => Some(v.into_bytes()),
                Err(_) => {
                    self.err(
                        format!("{key}.env"),
                        format!("environment variable {name} is not set (or not UTF-8)"),
                    );
                    None
                }
            },
            (None, Some(p)) => {
                let p = self.resolve(p);
                match std::fs::read(&p) {
                    Ok(mut b) => {
                        while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                            b.pop();
                        }
                        Some(b)
                    }
                    Err(e) => {
                        self.err(
                            format!("{key}.file"),
                            format!("cannot read {}: {e}", p.display()),
                        );
                        None
                    }
                }
            }
            _ => {
                self.err(
                    key,
                    "write exactly one of { env = \"NAME\" } or { file = \"path\" }",
                );
                None
            }
        }
    }

    fn token(&mut self, t: &TokenFile) -> Option<TokenConfig> {
        let alg_name = t.algorithm.as_deref().unwrap_or("HS256");
        let algorithm = match Algorithm::ALL.iter().find(|(n, _)| *n == alg_name) {
            Some((_, a)) => *a,
            None => {
                let names: Vec<&str> = Algorithm::ALL.iter().map(|(n, _)| *n).collect();
                let same_letters = names.iter().find(|n| n.eq_ignore_ascii_case(alg_name));
                let hint = same_letters
                    .copied()
                    .or_else(|| closest(alg_name, &names))
                    .map(|c| format!("did you mean `{c}`?"))
                    .unwrap_or_else(|| format!("use one of {}", names.join(", ")));
                self.err(
                    "token.algorithm",
                    format!("unknown algorithm `{alg_name}`; {hint}"),
                );
                return None;
            }
        };
        let keys = if algorithm.is_hmac() {
            if t.private_key.is_some() || !t.public_keys.is_empty() {
                self.err(
                    "token.private_key",
                    format!("{alg_name} uses `secret`; private_key/public_keys are for asymmetric algorithms"),
                );
            }
            let Some(secret_ref) = &t.secret else {
                self.err(
                    "token.secret",
                    format!("{alg_name} needs a secret: secret = {{ env = \"IPTGATE_SECRET\" }}"),
                );
                return None;
            };
            let secret = self.secret("token.secret", secret_ref)?;
            if secret.len() < 32 {
                self.err(
                    "token.secret",
                    format!(
                        "the secret is {} bytes; HS* secrets need at least 32",
                        secret.len()
                    ),
                );
                return None;
            }
            KeyMaterial::Secret(secret)
        } else {
            if t.secret.is_some() {
                self.err(
                    "token.secret",
                    format!(
                        "{alg_name} is asymmetric: use private_key (and public_keys), not secret"
                    ),
                );
            }
            let mut read = |key: &str, p: &Path| -> Option<Vec<u8>> {
                let p = self.resolve(p);
                std::fs::read(&p)
                    .map_err(|e| self.err(key, format!("cannot read {}: {e}", p.display())))
                    .ok()
            };
            let private_key = t
                .private_key
                .as_ref()
                .and_then(|p| read("token.private_key", p));
            let public_keys: Vec<Vec<u8>> = t
                .public_keys
                .iter()
                .enumerate()
                .filter_map(|(i, p)| read(&format!("token.public_keys[{i}]"), p))
                .collect();
            if t.private_key.is_none() && t.public_keys.is_empty() {
                self.err(
                    "token.private_key",
                    format!("{alg_name} needs private_key (to mint) or public_keys (to verify)"),
                );
                return None;
            }
            KeyMaterial::Pem {
                private_key,
                public_keys,
            }
        };
        let ip_binding = match t.ip_binding.as_deref().unwrap_or("exact") {
            "exact" => IpBinding::Exact,
            "subnet" => IpBinding::Subnet,
            "off" => IpBinding::Off,
            other => {
                self.err(
                    "token.ip_binding",
                    format!("`{other}`: use \"exact\", \"subnet\" or \"off\""),
                );
                IpBinding::Exact
            }
        };
        let subnet_v4 = t.subnet_v4.unwrap_or(24);
        let subnet_v6 = t.subnet_v6.unwrap_or(64);
        if subnet_v4 > 32 {
            self.err("token.subnet_v4", "must be 0..=32");
        }
        if subnet_v6 > 128 {
            self.err("token.subnet_v6", "must be 0..=128");
        }
        let header = self
            .carrier_header("token.header", t.header.as_deref().unwrap_or("IPToken"))
            .unwrap_or(HeaderName::from_static("iptoken"));
        let c = t.cookie.clone().unwrap_or_default();
        let cookie_name = c.name.unwrap_or_else(|| "ipt".into());
        if cookie_name.is_empty()
            || !cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            self.err(
                "token.cookie.name",
                format!("`{cookie_name}` is not a valid cookie name"),
            );
        }
        let same_site = match c
            .same_site
            .as_deref()
            .unwrap_or("Strict")
            .to_ascii_lowercase()
            .as_str()
        {
            "strict" => SameSite::Strict,
            "lax" => SameSite::Lax,
            "none" => SameSite::None,
            other => {
                self.err(
                    "token.cookie.same_site",
                    format!("`{other}`: use \"Strict\", \"Lax\" or \"None\""),
                );
                SameSite::Strict
            }
        };
        let secure = c.secure.unwrap_or(true);
        if same_site == SameSite::None && !secure {
            self.err(
                "token.cookie.same_site",
                "SameSite=None cookies must be secure (browsers reject them otherwise)",
            );
        }
        let path = c.path.unwrap_or_else(|| "/".into());
        if let Some(why) = checks::cookie_path_problem(&path) {
            self.err(
                "token.cookie.path",
                format!("`{}` {why}", path.escape_debug()),
            );
        }
        if let Some(why) = c.domain.as_deref().and_then(checks::cookie_domain_problem) {
            let d = c.domain.as_deref().unwrap_or_default().escape_debug();
            self.err("token.cookie.domain", format!("`{d}` {why}"));
        }
        let cookie = CookieConfig {
            refresh_name: format!("{cookie_name}_refresh"),
            name: cookie_name,
            secure,
            http_only: c.http_only.unwrap_or(true),
            same_site,
            path,
            domain: c.domain,
        };
        let mut accept = Vec::new();
        let accept_names = t
            .accept
            .clone()
            .unwrap_or_else(|| vec!["authorization".into(), "header".into(), "cookie".into()]);
        for (i, a) in accept_names.iter().enumerate() {
            let src = match a.to_ascii_lowercase().as_str() {
                "authorization" => TokenSource::Authorization,
                "header" => TokenSource::Header,
                "cookie" => TokenSource::Cookie,
                other => {
                    self.err(
                        format!("token.accept[{i}]"),
                        format!("`{other}`: use \"authorization\", \"header\" or \"cookie\""),
                    );
                    continue;
                }
            };
            if !accept.contains(&src) {
                accept.push(src);
            }
        }
        if accept.is_empty() {
            self.err(
                "token.accept",
                "must name at least one place a token may be carried",
            );
        }
        let schemes: Vec<String> = t
            .schemes
            .clone()
            .unwrap_or_else(|| vec!["Bearer".into(), "Token".into()])
            .into_iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        for (i, s) in schemes.iter().enumerate() {
            let token = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                self.err(
                    format!("token.schemes[{i}]"),
                    format!("`{s}` is not an Authorization scheme name (one word, as \"Bearer\")"),
                );
            }
        }
        let fc = t
            .forward_claims
            .clone()
            .unwrap_or_else(|| [("sub".to_string(), "X-Auth-Subject".to_string())].into());
        let mut forward_claims = Vec::new();
        for (claim, h) in &fc {
            if let Some(name) = self.carrier_header(&format!("token.forward_claims.{claim}"), h) {
                if name == header {
                    self.err(
                        format!("token.forward_claims.{claim}"),
                        format!("`{h}` is token.header, which carries the token itself; pick another name"),
                    );
                } else if is_reserved_header(&name) {
                    self.err(
                        format!("token.forward_claims.{claim}"),
                        format!("`{h}` is a header the gateway manages; pick another name"),
                    );
                }
                forward_claims.push((claim.clone(), name));
            }
        }
        let device_binding = match &t.device_binding {
            None => None,
            Some(DeviceBindingFile {
                cookie: Some(c),
                header: None,
            }) => Some(DeviceBinding::Cookie(c.clone())),
            Some(DeviceBindingFile {
                cookie: None,
                header: Some(h),
            }) => self
                .header_name("token.device_binding.header", h)
                .map(DeviceBinding::Header),
            Some(_) => {
                self.err(
                    "token.device_binding",
                    "write exactly one of { cookie = \"NAME\" } or { header = \"NAME\" }",
                );
                None
            }
        };
        let mut claims = serde_json::Map::new();
        for (k, v) in &t.claims {
            if RESERVED_CLAIMS.contains(&k.as_str()) {
                self.err(
                    format!("token.claims.{k}"),
                    "is set by the gateway itself and cannot be a static claim",
                );
                continue;
            }
            match serde_json::to_value(v) {
                Ok(j) => {
                    claims.insert(k.clone(), j);
                }
                Err(e) => self.err(format!("token.claims.{k}"), e.to_string()),
            }
        }
        let issuer = match t.issuer.as_deref() {
            None => Some("iptgate".to_string()),
            Some("") => None,
            Some(s) => Some(s.to_string()),
        };
        let ttl = self.positive_duration("token.ttl", &t.ttl, Duration::from_secs(3600));
        let leeway = self.duration("token.leeway", &t.leeway, Duration::from_secs(30));
        if leeway > ttl {
            self.warnings.push(format!(
                "token.leeway ({}) is longer than token.ttl ({}): an expired token is still taken for longer than it was valid",
                t.leeway.as_deref().unwrap_or("30s"),
                t.ttl.as_deref().unwrap_or("60m")
            ));
        }
        let tc = TokenConfig {
            algorithm,
            keys,
            ttl,
            issuer,
            audience: t.audience.clone().filter(|a| !a.is_empty()),
            leeway,
            claims,
            ip_binding,
            subnet_v4: subnet_v4.min(32),
            subnet_v6: subnet_v6.min(128),
            header,
            cookie,
            set_cookie: t.set_cookie,
            accept,
            schemes,
            forward_claims,
            forward_token: t.forward_token,
            device_binding,
        };
        // Parse the keys now, so a bad PEM is a config error with its key path.
        if let Err(e) = crate::token::Keys::new(&tc) {
            self.err("token", e);
            return None;
        }
        Some(tc)
    }

    fn refresh(&mut self, r: Option<&RefreshFile>, has_token: bool) -> Option<RefreshConfig> {
        if let Some(off) = r.filter(|r| !r.enabled) {
            // Checked all the same: switching it on later must not reveal an old mistake.
            self.positive_duration("refresh.ttl", &off.ttl, Duration::from_secs(30 * 86_400));
        }
        let r = r.filter(|r| r.enabled)?;
        if !has_token && !self.token_section {
            self.err("refresh.enabled", "needs a [token] section");
        }
        let header = self
            .carrier_header(
                "refresh.header",
                r.header.as_deref().unwrap_or("IPToken-Refresh"),
            )
            .unwrap_or(HeaderName::from_static("iptoken-refresh"));
        let path = r.path.clone().unwrap_or_else(|| "/auth/refresh".into());
        let logout_path = r
            .logout_path
            .clone()
            .unwrap_or_else(|| "/auth/logout".into());
        self.gateway_path("refresh.path", &path);
        self.gateway_path("refresh.logout_path", &logout_path);
        Some(RefreshConfig {
            ttl: self.positive_duration("refresh.ttl", &r.ttl, Duration::from_secs(30 * 86_400)),
            header,
            path,
            logout_path,
        })
    }

    fn store(&mut self, s: &StoreFile) -> StoreConfig {
        let backend = match s.backend.as_deref().unwrap_or("memory") {
            "memory" => {
                if s.url.is_some() {
                    self.err("store.url", "only used with backend = \"redis\"");
                }
                StoreBackend::Memory
            }
            "redis" => match self.store_url(s.url.as_ref()) {
                Some(u) => StoreBackend::Redis(u),
                None => StoreBackend::Memory,
            },
            other => {
                self.err(
                    "store.backend",
                    format!("`{other}`: use \"memory\" or \"redis\""),
                );
                StoreBackend::Memory
            }
        };
        let on_error = match s.on_error.as_deref().unwrap_or("closed") {
            "closed" => OnError::Closed,
            "open" => OnError::Open,
            other => {
                self.err(
                    "store.on_error",
                    format!("`{other}`: use \"closed\" or \"open\""),
                );
                OnError::Closed
            }
        };
        StoreConfig { backend, on_error }
    }

    /// The Redis URL, written in the file or read from `{ env }` / `{ file }`. It is never
    /// printed with its password.
    fn store_url(&mut self, url: Option<&StoreUrlFile>) -> Option<String> {
        // A URL read from the environment or a file is never shown, even masked.
        let (u, hidden) = match url {
            None => {
                self.err(
                    "store.url",
                    "backend = \"redis\" needs url = \"redis://host:6379/0\" (or { env = \"REDIS_URL\" })",
                );
                return None;
            }
            Some(StoreUrlFile::Plain(u)) => {
                if checks::url_has_password(u) {
                    self.warnings.push("store.url holds a password: move the URL out of the config, to url = { env = \"REDIS_URL\" } or { file = \"path\" }".into());
                }
                (u.clone(), false)
            }
            Some(StoreUrlFile::Secret(sf)) => {
                let bytes = self.secret("store.url", sf)?;
                let Ok(u) = String::from_utf8(bytes) else {
                    self.err("store.url", "the URL read is not UTF-8");
                    return None;
                };
                (u.trim().to_string(), true)
            }
        };
        if u.starts_with("redis://") || u.starts_with("rediss://") {
            return Some(u);
        }
        let shown = if hidden {
            "the URL read".to_string()
        } else {
            format!("`{}`", checks::redact_url(&u))
        };
        self.err(
            "store.url",
            format!("{shown} is not a redis:// or rediss:// URL"),
        );
        None
    }

    fn upstream(&mut self, name: &str, u: &UpstreamFile) -> UpstreamConfig {
        let key = format!("upstreams.{name}");
        let urls: Vec<String> = match (&u.url, &u.targets) {
            (Some(url), None) => vec![url.clone()],
            (None, Some(t)) if !t.is_empty() => t.clone(),
            _ => {
                self.err(
                    &key,
                    "write exactly one of url = \"http://host:port\" or targets = [\"http://a:port\", …]",
                );
                vec![]
            }
        };
        let mut targets = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let k = if u.url.is_some() {
                format!("{key}.url")
            } else {
                format!("{key}.targets[{i}]")
            };
            match parse_target(url) {
                Ok(t) => targets.push(t),
                Err(e) => self.err(k, e),
            }
        }
        let ca = u.ca.as_ref().map(|p| self.resolve(p));
        if let Some(p) = &ca {
            if !p.exists() {
                self.err(
                    format!("{key}.ca"),
                    format!("{} does not exist", p.display()),
                );
            } else if let Err(e) = crate::tls::client_config(Some(p)) {
                // Parsed now, so a bad CA file is reported with the rest.
                self.err(format!("{key}.ca"), e.to_string());
            }
        }
        UpstreamConfig {
            name: name.to_string(),
            targets,
            connect_timeout: self.positive_duration(
                &format!("{key}.connect_timeout"),
                &u.connect_timeout,
                Duration::from_secs(2),
            ),
            timeout: self.positive_duration(
                &format!("{key}.timeout"),
                &u.timeout,
                Duration::from_secs(30),
            ),
            ca,
        }
    }

    fn rate_limit(&mut self, name: &str, r: &RateLimitFile) -> RateLimitPolicy {
        let key_path = format!("rate_limits.{name}");
        let Some(key_name) = r.key.as_deref() else {
            self.err(
                format!("{key_path}.key"),
                "missing: say what is counted: \"ip\", \"subject\", \"route\", \"global\" or \"header:NAME\"",
            );
            return self.rate_limit_rest(name, r, LimitKey::Global);
        };
        let key = match key_name {
            "ip" => LimitKey::Ip,
            "subject" => LimitKey::Subject,
            "route" => LimitKey::Route,
            "global" => LimitKey::Global,
            other => match other.strip_prefix("header:") {
                Some(h) => self
                    .header_name(&format!("{key_path}.key"), h)
                    .map(LimitKey::Header)
                    .unwrap_or(LimitKey::Global),
                None => {
                    self.err(
                        format!("{key_path}.key"),
                        format!("`{other}`: use \"ip\", \"subject\", \"route\", \"global\" or \"header:NAME\""),
                    );
                    LimitKey::Global
                }
            },
        };
        self.rate_limit_rest(name, r, key)
    }

    fn rate_limit_rest(&mut self, name: &str, r: &RateLimitFile, key: LimitKey) -> RateLimitPolicy {
        let key_path = format!("rate_limits.{name}");
        let (count, per) = match r.rate.as_deref() {
            Some(rate) => parse_rate(rate).unwrap_or_else(|e| {
                self.err(format!("{key_path}.rate"), e);
                (1, Duration::from_secs(1))
            }),
            None => {
                self.err(
                    format!("{key_path}.rate"),
                    "missing: write e.g. rate = \"100/s\" (N/s, N/m or N/h)",
                );
                (1, Duration::from_secs(1))
            }
        };
        let burst = r.burst.unwrap_or(count);
        if burst == 0 {
            self.err(format!("{key_path}.burst"), "must be at least 1");
        }
        let ipv6_prefix = r.ipv6_prefix.unwrap_or(64);
        if ipv6_prefix > 128 {
            self.err(format!("{key_path}.ipv6_prefix"), "must be 0..=128");
        }
        RateLimitPolicy {
            name: name.to_string(),
            key,
            count,
            per,
            burst: burst.max(1),
            ipv6_prefix: ipv6_prefix.min(128),
        }
    }

    fn login(&mut self, l: &LoginProtectionFile) -> LoginProtection {
        let max_failures = l.max_failures.unwrap_or(5);
        if max_failures == 0 {
            self.err("login_protection.max_failures", "must be at least 1");
        }
        let failure_status = l.failure_status.clone().unwrap_or_else(|| vec![401, 403]);
        self.statuses(
            "login_protection.failure_status",
            &failure_status,
            "[401, 403]",
        );
        LoginProtection {
            max_failures: max_failures.max(1),
            window: self.positive_duration(
                "login_protection.window",
                &l.window,
                Duration::from_secs(600),
            ),
            lockout: self.positive_duration(
                "login_protection.lockout",
                &l.lockout,
                Duration::from_secs(900),
            ),
            failure_status,
        }
    }

    fn route(
        &mut self,
        i: usize,
        r: &RouteFile,
        upstreams: &[String],
        limits: &[RateLimitPolicy],
        token: Option<&TokenConfig>,
    ) -> Option<RouteConfig> {
        let key = format!("routes[{i}]");
        let matcher = match (&r.path, &r.prefix) {
            (Some(p), None) => {
                self.route_path(&format!("{key}.path"), p);
                PathMatch::Exact(p.clone())
            }
            (None, Some(p)) => {
                self.route_path(&format!("{key}.prefix"), p);
                PathMatch::Prefix(p.trim_end_matches('/').to_string())
            }
            _ => {
                self.err(
                    &key,
                    "write exactly one of path = \"/exact\" or prefix = \"/segment\"",
                );
                return None;
            }
        };
        let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
        let upstream = match &r.upstream {
            None => {
                self.err(
                    format!("{key}.upstream"),
                    "missing: name one of [upstreams.*]",
                );
                0
            }
            Some(u) => match upstreams.iter().position(|n| n == u) {
                Some(idx) => idx,
                None => {
                    let names: Vec<&str> = upstreams.iter().map(String::as_str).collect();
                    let hint = closest(u, &names)
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_else(|| format!("; defined: {}", names.join(", ")));
                    self.err(
                        format!("{key}.upstream"),
                        format!("no upstream `{u}`{hint}"),
                    );
                    0
                }
            },
        };
        let auth = match r.auth.as_deref() {
            Some("public") => AuthMode::Public,
            Some("token") => AuthMode::Token,
            Some("mint") => {
                let m = r.mint.clone().unwrap_or(MintFile {
                    status: None,
                    claims_from_headers: Default::default(),
                    required_claims: vec![],
                });
                let mut cfh = Vec::new();
                for (claim, h) in &m.claims_from_headers {
                    if RESERVED_CLAIMS.contains(&claim.as_str()) && claim != "sub" {
                        self.err(
                            format!("{key}.mint.claims_from_headers.{claim}"),
                            "is set by the gateway itself",
                        );
                    }
                    if let Some(hn) =
                        self.carrier_header(&format!("{key}.mint.claims_from_headers.{claim}"), h)
                    {
                        cfh.push((claim.clone(), hn));
                    }
                }
                for (j, c) in m.required_claims.iter().enumerate() {
                    let known = m.claims_from_headers.contains_key(c)
                        || token.is_some_and(|t| t.claims.contains_key(c));
                    if !known {
                        self.err(
                            format!("{key}.mint.required_claims[{j}]"),
                            format!("`{c}` is neither in claims_from_headers nor a static claim: nothing could ever be minted"),
                        );
                    }
                }
                let status = m.status.unwrap_or_else(|| vec![200]);
                self.statuses(&format!("{key}.mint.status"), &status, "[200]");
                AuthMode::Mint(MintRule {
                    status,
                    claims_from_headers: cfh,
                    required_claims: m.required_claims,
                })
            }
            Some(other) => {
                self.err(
                    format!("{key}.auth"),
                    format!("`{other}`: use \"public\", \"mint\" or \"token\""),
                );
                return None;
            }
            None => {
                self.err(
                    format!("{key}.auth"),
                    "missing: say \"public\", \"mint\" or \"token\" (no silent default for access control)",
                );
                return None;
            }
        };
        if r.mint.is_some() && !matches!(auth, AuthMode::Mint(_)) {
            self.err(format!("{key}.mint"), "only used with auth = \"mint\"");
        }
        if !matches!(auth, AuthMode::Public) && token.is_none() && !self.token_section {
            self.err(
                format!("{key}.auth"),
                format!("auth = \"{}\" needs a valid [token] section", auth.name()),
            );
        }
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().enumerate() {
            let upper = m.to_ascii_uppercase();
            // A misspelt method would make the route never match, and its requests fall
            // through to another route: only methods that exist are taken.
            if !KNOWN_METHODS.contains(&upper.as_str()) {
                let hint = closest(&upper, KNOWN_METHODS)
                    .map(|c| format!("; did you mean `{c}`?"))
                    .unwrap_or_default();
                self.err(
                    format!("{key}.methods[{j}]"),
                    format!("`{m}` is not an HTTP method{hint}"),
                );
                continue;
            }
            match Method::from_bytes(upper.as_bytes()) {
                Ok(m) if !methods.contains(&m) => methods.push(m),
                _ => {}
            }
        }
        let mut rate_limit = Vec::new();
        for (j, n) in r.rate_limit.iter().enumerate() {
            match limits.iter().position(|p| &p.name == n) {
                Some(idx) => {
                    if limits[idx].key == LimitKey::Subject && !matches!(auth, AuthMode::Token) {
                        self.err(
                            format!("{key}.rate_limit[{j}]"),
                            format!("policy `{n}` is keyed by subject, which needs auth = \"token\" (a verified token)"),
                        );
                    }
                    rate_limit.push(idx);
                }
                None => {
                    let names: Vec<&str> = limits.iter().map(|p| p.name.as_str()).collect();
                    let hint = closest(n, &names)
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default();
                    self.err(
                        format!("{key}.rate_limit[{j}]"),
                        format!("no policy [rate_limits.{n}]{hint}"),
                    );
                }
            }
        }
        if !r.require.is_empty() && !matches!(auth, AuthMode::Token) {
            self.err(format!("{key}.require"), "only used with auth = \"token\"");
        }
        let require: Vec<(String, Vec<String>)> = r
            .require
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (claim, vals) in &require {
            if vals.is_empty() {
                self.err(
                    format!("{key}.require.{claim}"),
                    "an empty list can never be met; list the accepted values",
                );
            }
        }
        let ip =
            r.ip.as_ref()
                .map(|f| self.ip_lists(&format!("{key}.ip"), f));
        if let Some(rw) = &r.rewrite {
            if !rw.starts_with('/') {
                self.err(format!("{key}.rewrite"), "must start with /");
            }
            if r.strip_prefix {
                self.err(
                    format!("{key}.rewrite"),
                    "strip_prefix and rewrite both change the prefix: keep one",
                );
            }
        }
        let host = r.host.as_ref().map(|h| {
            match checks::route_host_problem(h) {
                Some(checks::HostProblem::Invalid(why)) => self.err(format!("{key}.host"), why),
                Some(checks::HostProblem::Port(why)) => {
                    self.warnings.push(format!("{key}.host: {why}"));
                }
                None => {}
            }
            let h = h.trim().to_ascii_lowercase();
            crate::pipeline::route::host_of(&h).to_string()
        });
        if let AuthMode::Mint(m) = &auth {
            if m.required_claims.is_empty() {
                self.warnings.push(format!(
                    "{key} (`{name}`) mints with no mint.required_claims: any answer in mint.status (a login page served by GET included) mints a token with no identity, which passes every auth = \"token\" route without `require`; add required_claims = [\"sub\"]"
                ));
            }
            if methods.is_empty() {
                self.warnings.push(format!(
                    "{key} (`{name}`) mints on every method: a GET of the login page may answer in mint.status; add methods = [\"POST\"]"
                ));
            }
        }
        Some(RouteConfig {
            name,
            matcher,
            host,
            methods,
            upstream,
            auth,
            rate_limit,
            require,
            ip,
            strip_prefix: r.strip_prefix,
            rewrite: r.rewrite.clone(),
            dry_run: r.dry_run,
        })
    }

    fn route_path(&mut self, key: &str, p: &str) {
        if let Some(why) = checks::matcher_problem(p) {
            self.err(
                key,
                format!("`{}` {why}: the route could never match", p.escape_debug()),
            );
        } else if crate::pipeline::path::normalize(p).as_deref() != Ok(p) {
            self.err(
                key,
                format!("`{p}` must be an absolute, normalized path (no //, . or .. segments, no %-escapes of unreserved characters)"),
            );
        }
    }

    fn check_routes(&mut self, routes: &[RouteConfig]) {
        for (j, b) in routes.iter().enumerate() {
            // Names label metrics, logs and `explain`: two routes sharing one would be
            // counted and reported as one.
            if let Some(i) = routes[..j].iter().position(|a| a.name == b.name) {
                self.err(
                    format!("routes[{j}].name"),
                    format!("`{}` is already the name of routes[{i}]", b.name),
                );
            }
            for a in &routes[..j] {
                if a.matcher != b.matcher {
                    continue;
                }
                let methods_overlap = a.methods.is_empty()
                    || b.methods.is_empty()
                    || a.methods.iter().any(|m| b.methods.contains(m));
                if !methods_overlap {
                    continue;
                }
                let covers = a.methods.is_empty()
                    || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
                let same_methods = a.methods.len() == b.methods.len()
                    && b.methods.iter().all(|m| a.methods.contains(m));
                if a.host == b.host {
                    if same_methods {
                        self.err(
                            format!("routes[{j}]"),
                            format!(
                                "route `{}` has the same match as route `{}` ({}); one of them can never answer",
                                b.name,
                                a.name,
                                b.describe_match()
                            ),
                        );
                    } else if covers {
                        self.warnings.push(format!(
                            "route `{}` is shadowed by the earlier route `{}`: same match, and it takes every method `{}` names; move it above to let it answer",
                            b.name, a.name, b.name
                        ));
                    } else {
                        self.warnings.push(format!(
                            "route `{}` is partly shadowed by the earlier route `{}` (same match, overlapping methods)",
                            b.name, a.name
                        ));
                    }
                } else if a.host.is_none() && covers {
                    self.warnings.push(format!(
                        "route `{}` is shadowed by the earlier route `{}`: same match, any host; move it above to let it answer",
                        b.name, a.name
                    ));
                }
            }
        }
    }
}

/// More worker threads than this is a typo or a misunderstanding, not a tuning.
const MAX_WORKERS: usize = 1024;

/// Whether two listeners would fight for one port: the same address, or a wildcard address
/// (`0.0.0.0`, `[::]`, which on Linux also takes IPv4) and any address it covers.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |w: SocketAddr, o: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// Whether a cookie with `Path=cookie_path` is sent to `path` (RFC 6265 §5.1.4 path-match).
fn cookie_path_matches(cookie_path: &str, path: &str) -> bool {
    path == cookie_path
        || (path.starts_with(cookie_path)
            && (cookie_path.ends_with('/')
                || path.as_bytes().get(cookie_path.len()) == Some(&b'/')))
}

/// The methods a route may name: RFC 9110, PATCH (RFC 5789) and WebDAV/CalDAV.
const KNOWN_METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
    "MKCALENDAR",
    "ACL",
    "BIND",
    "UNBIND",
    "REBIND",
    "CHECKOUT",
    "CHECKIN",
    "MERGE",
    "VERSION-CONTROL",
    "MKWORKSPACE",
    "UPDATE",
    "LABEL",
    "BASELINE-CONTROL",
    "MKACTIVITY",
    "ORDERPATCH",
    "QUERY",
];

/// Claims the gateway sets itself; static or header claims may not override them.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "typ", "ip", "dev", "fam",
];

/// Headers the gateway manages on the upstream request.
fn is_reserved_header(h: &HeaderName) -> bool {
    matches!(
        h.as_str(),
        "host"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "forwarded"
            | "x-real-ip"
            | "authorization"
            | "cookie"
    )
}

/// "10.0.0.0/8", "192.0.2.7", "::1", "::ffff:10.0.0.0/104" (IPv4-mapped: stored as IPv4).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = if let Ok(n) = s.parse::<IpNet>() {
        n
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        IpNet::from(ip)
    } else {
        return Err(format!("`{s}` is neither an IP address nor a CIDR"));
    };
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                return ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(IpNet::V4)
                    .map_err(|e| e.to_string());
            }
        }
    }
    Ok(net.trunc())
}

/// An upstream URL; errors show it with any password masked.
fn parse_target(raw: &str) -> Result<Target, String> {
    let url = &checks::redact_url(raw);
    let uri: http::Uri = raw
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("`{url}`: use an http:// or https:// URL")),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{url}`: credentials in the URL are not supported (the gateway never sends them)"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}`: a query string is not allowed here"));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(Target {
        https,
        authority,
        base_path,
    })
}

fn default_server() -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
        tls: None,
        redirect_http: None,
        admin_listen: None,
        workers: 0,
        max_connections: 10_000,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_request_body: 10 << 20,
        shutdown_grace: Duration::from_secs(30),
    }
}
