//! `[upstreams]`, `[rate_limits]`, `[login_protection]` and `[[routes]]`, and the checks across
//! routes (duplicates, shadowing).

use super::*;
use crate::pipeline::route::method_allowed;

impl Validator {
    pub(super) fn upstream(&mut self, name: &str, u: &UpstreamFile) -> UpstreamConfig {
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

    pub(super) fn rate_limit(&mut self, name: &str, r: &RateLimitFile) -> RateLimitPolicy {
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
                    "missing: write e.g. rate = \"100/s\" (N/s, N/m, N/h or N/d)",
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

    pub(super) fn login(&mut self, l: &LoginProtectionFile) -> LoginProtection {
        let max_failures = l.max_failures.unwrap_or(5);
        if max_failures == 0 {
            self.err("login_protection.max_failures", "must be at least 1");
        } else if max_failures > MAX_LOGIN_FAILURES {
            // Each client's recent failure times are kept, up to this many.
            self.err(
                "login_protection.max_failures",
                format!("{max_failures} is more than {MAX_LOGIN_FAILURES}"),
            );
        }
        let failure_status = l.failure_status.clone().unwrap_or_else(|| vec![401, 403]);
        self.statuses(
            "login_protection.failure_status",
            &failure_status,
            "[401, 403]",
        );
        LoginProtection {
            max_failures: max_failures.clamp(1, MAX_LOGIN_FAILURES),
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

    pub(super) fn route(
        &mut self,
        i: usize,
        r: &RouteFile,
        upstreams: &[String],
        limits: &[RateLimitPolicy],
        token: Option<&TokenConfig>,
    ) -> Option<RouteConfig> {
        let key = format!("routes[{i}]");
        // A route missing its matcher or its auth is not built, but the rest of it is still
        // checked: every error of the file comes out in one run.
        let matcher = match (&r.path, &r.prefix) {
            (Some(p), None) => {
                self.route_path(&format!("{key}.path"), p);
                Some(PathMatch::Exact(p.clone()))
            }
            (None, Some(p)) => {
                self.route_path(&format!("{key}.prefix"), p);
                Some(PathMatch::Prefix(p.trim_end_matches('/').to_string()))
            }
            _ => {
                self.err(
                    &key,
                    "write exactly one of path = \"/exact\" or prefix = \"/segment\"",
                );
                None
            }
        };
        let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
        if name.trim().is_empty() {
            // Names label metrics, logs and `explain`.
            self.err(
                format!("{key}.name"),
                "is empty: name the route, or leave name out",
            );
        }
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
                    let hint = match closest(u, &names) {
                        Some(c) => format!("; did you mean `{c}`?"),
                        None if names.is_empty() => {
                            "; none is defined: add [upstreams.NAME] with a url".into()
                        }
                        None => format!("; defined: {}", names.join(", ")),
                    };
                    self.err(
                        format!("{key}.upstream"),
                        format!("no upstream `{u}`{hint}"),
                    );
                    0
                }
            },
        };
        let auth = match r.auth.as_deref() {
            Some("public") => Some(AuthMode::Public),
            Some("token") => Some(AuthMode::Token),
            Some("mint") => {
                if token.is_some_and(|t| !t.keys.can_sign()) {
                    self.err(
                        format!("{key}.auth"),
                        "\"mint\" needs token.private_key: with public_keys alone this gateway only verifies tokens",
                    );
                }
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
                Some(AuthMode::Mint(MintRule {
                    status,
                    claims_from_headers: cfh,
                    required_claims: m.required_claims,
                }))
            }
            Some(other) => {
                let hint = closest(other, &["public", "mint", "token"])
                    .map(|c| format!("did you mean \"{c}\"?"))
                    .unwrap_or_else(|| "use \"public\", \"mint\" or \"token\"".into());
                self.err(format!("{key}.auth"), format!("`{other}`: {hint}"));
                None
            }
            None => {
                self.err(
                    format!("{key}.auth"),
                    "missing: say \"public\", \"mint\" or \"token\" (no silent default for access control)",
                );
                None
            }
        };
        // The checks that depend on the auth mode are made only when it is known.
        let auth_is = |f: fn(&AuthMode) -> bool| auth.as_ref().is_some_and(f);
        if r.mint.is_some() && auth_is(|a| !matches!(a, AuthMode::Mint(_))) {
            self.err(format!("{key}.mint"), "only used with auth = \"mint\"");
        }
        if let Some(a) = auth.as_ref().filter(|a| !matches!(a, AuthMode::Public)) {
            if token.is_none() && !self.token_section {
                self.err(
                    format!("{key}.auth"),
                    format!("auth = \"{}\" needs a valid [token] section", a.name()),
                );
            }
        }
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().enumerate() {
            let upper = m.to_ascii_uppercase();
            // A misspelt method would make the route never match, and its requests fall
            // through to another route: only methods that exist are taken.
            if upper == "CONNECT" {
                self.err(
                    format!("{key}.methods[{j}]"),
                    "CONNECT is not proxied: the gateway answers it 400",
                );
                continue;
            }
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
                Ok(m) if methods.contains(&m) => self
                    .warnings
                    .push(format!("{key}.methods[{j}]: `{m}` is listed twice")),
                Ok(m) => methods.push(m),
                Err(_) => {}
            }
        }
        let mut rate_limit = Vec::new();
        for (j, n) in r.rate_limit.iter().enumerate() {
            match limits.iter().position(|p| &p.name == n) {
                Some(idx) => {
                    if limits[idx].key == LimitKey::Subject
                        && auth_is(|a| !matches!(a, AuthMode::Token))
                    {
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
        if !r.require.is_empty() && auth_is(|a| !matches!(a, AuthMode::Token)) {
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
            // The upstream must get a path the gateway itself would accept (§5): what it
            // decided on, not a query, a `..` or an encoded slash of the config's making.
            // Sent as written: `%c3%a9` is as good as the `%C3%A9` normalizing makes of it.
            if checks::matcher_problem(rw).is_some()
                || crate::pipeline::path::normalize(rw).as_deref()
                    != Ok(checks::upper_escapes(rw).as_str())
            {
                self.err(
                    format!("{key}.rewrite"),
                    format!("`{}` must be an absolute, normalized path: starting with /, no query or fragment, no //, . or .. segments, no %2F and no %-escapes of unreserved characters", rw.escape_debug()),
                );
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
        if let Some(AuthMode::Mint(m)) = &auth {
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
            if rate_limit.is_empty() {
                self.warnings.push(format!(
                    "{key} (`{name}`) mints with no rate_limit: guesses sent at once all reach the app before [login_protection] counts the first failure; add one (key = \"ip\", rate = \"5/m\")"
                ));
            }
        }
        let (Some(matcher), Some(auth)) = (matcher, auth) else {
            return None;
        };
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

    /// Checks between routes, each with its index in the file (a route that could not be
    /// built is not among them, and must not shift the others' names in messages).
    pub(super) fn check_routes(&mut self, routes: &[(usize, RouteConfig)]) {
        for (k, (j, b)) in routes.iter().enumerate() {
            // Names label metrics, logs and `explain`: two routes sharing one would be
            // counted and reported as one.
            if let Some((i, _)) = routes[..k].iter().find(|(_, a)| a.name == b.name) {
                self.err(
                    format!("routes[{j}].name"),
                    format!("`{}` is already the name of routes[{i}]", b.name),
                );
            }
            for (_, a) in &routes[..k] {
                if a.matcher != b.matcher {
                    continue;
                }
                // What each route answers: a route naming GET answers HEAD too.
                let a_takes = |m: &Method| method_allowed(&a.methods, m);
                let b_takes = |m: &Method| method_allowed(&b.methods, m);
                let methods_overlap = a.methods.is_empty()
                    || b.methods.is_empty()
                    || a.methods.iter().any(b_takes)
                    || b.methods.iter().any(a_takes);
                if !methods_overlap {
                    continue;
                }
                let covers = a.methods.is_empty()
                    || (!b.methods.is_empty() && b.methods.iter().all(a_takes));
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

/// The methods a route may name: RFC 9110, PATCH (RFC 5789), PURGE (caches), QUERY (the
/// IETF's safe method with a body) and WebDAV/CalDAV.
const KNOWN_METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PURGE",
    "QUERY",
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

/// A lock-out that needs more failures than this is no lock-out.
const MAX_LOGIN_FAILURES: u32 = 1000;
