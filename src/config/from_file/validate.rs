//! The validator's shared helpers (durations, addresses, header names, IP lists) and the
//! assembly of the runtime `Config` from the checked sections.

use super::server::default_server;
use super::*;

impl Validator {
    pub(super) fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errs.push(path, msg);
    }

    pub(super) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                self.err(path, e);
                default
            }),
        }
    }

    /// A duration that must not be zero: a zero timeout or lifetime would refuse everything.
    pub(super) fn positive_duration(
        &mut self,
        path: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path, v, default);
        if d.is_zero() {
            self.err(path, "must be longer than 0");
            return default;
        }
        d
    }

    /// A header that carries a token or a claim: a valid name, and not one that proxies
    /// remove or that frames the message.
    pub(super) fn carrier_header(&mut self, path: &str, v: &str) -> Option<HeaderName> {
        let h = self.header_name(path, v)?;
        if let Some(why) = checks::header_problem(&h) {
            self.err(path, format!("`{v}` {why}; pick another header name"));
            return None;
        }
        Some(h)
    }

    pub(super) fn addr(&mut self, path: &str, v: &str) -> Option<SocketAddr> {
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

    pub(super) fn header_name(&mut self, path: &str, v: &str) -> Option<HeaderName> {
        match HeaderName::from_str(v) {
            Ok(h) => Some(h),
            Err(_) => {
                self.err(path, format!("`{v}` is not a valid HTTP header name"));
                None
            }
        }
    }

    pub(super) fn nets(&mut self, path: &str, list: &[String]) -> Vec<IpNet> {
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

    pub(super) fn ip_lists(&mut self, path: &str, f: &IpFile) -> IpLists {
        let allow = self.nets(&format!("{path}.allow"), &f.allow);
        let mut deny = self.nets(&format!("{path}.deny"), &f.deny);
        if let Some(df) = &f.deny_file {
            let p = self.resolve(df);
            match std::fs::read_to_string(&p) {
                Ok(text) => {
                    // A byte-order mark (files saved by some Windows editors) is not content.
                    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
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

    pub(super) fn config(&mut self, f: FileConfig, source: PathBuf, base_dir: PathBuf) -> Config {
        let server = self.server(&f.server);
        let client_ip = self.client_ip(&f.client_ip);
        let ip = self.ip_lists("ip", &f.ip);
        let token = f.token.as_ref().and_then(|t| self.token(t));
        let can_sign = token.as_ref().is_none_or(|t| t.keys.can_sign());
        let refresh = self.refresh(f.refresh.as_ref(), token.is_some(), can_sign);
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
                routes.push((i, route));
            }
        }
        if f.routes.is_empty() {
            self.err("routes", "no routes: add at least one [[routes]] table");
        }
        self.check_routes(&routes);
        self.routes_under_gateway_paths(
            &served_paths(token.as_ref(), refresh.as_ref(), forward_auth.as_deref()),
            &routes,
        );
        let routes = routes.into_iter().map(|(_, r)| r).collect();
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
        let served = served_paths(token, refresh, forward_auth);
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
    pub(super) fn statuses(&mut self, key: &str, list: &[u16], example: &str) {
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

    /// Gateway-served paths are matched before routes (SPEC §3): a route matching one of
    /// them exactly never sees requests to it, which the config should say.
    fn routes_under_gateway_paths(
        &mut self,
        served: &[(&str, &str)],
        routes: &[(usize, RouteConfig)],
    ) {
        for (i, r) in routes {
            let (PathMatch::Exact(p) | PathMatch::Prefix(p)) = &r.matcher;
            let p = if p.is_empty() { "/" } else { p.as_str() };
            if let Some((key, _)) = served.iter().find(|(_, q)| *q == p) {
                self.warnings.push(format!(
                    "routes[{i}] (`{}`): `{p}` is served by the gateway itself as {key}, before any route: this route never sees requests to it",
                    r.name
                ));
            }
        }
    }

    /// A path the gateway serves is matched against the normalized request path: it must be
    /// one itself.
    pub(super) fn gateway_path(&mut self, key: &str, p: &str) {
        if checks::matcher_problem(p).is_some()
            || crate::pipeline::path::normalize(p).as_deref() != Ok(p)
        {
            self.err(key, format!("`{}` must be an absolute, normalized path: starting with /, no query or fragment, no //, . or .. segments, no %-escapes", p.escape_debug()));
        }
    }
}

/// The paths the gateway answers itself, each with the key (or name) that sets it.
fn served_paths<'a>(
    token: Option<&'a TokenConfig>,
    refresh: Option<&'a RefreshConfig>,
    forward_auth: Option<&'a str>,
) -> Vec<(&'static str, &'a str)> {
    let mut served = Vec::new();
    if token.is_some_and(|t| !t.algorithm.is_hmac()) {
        served.push(("the JWKS endpoint", "/.well-known/jwks.json"));
    }
    if let Some(r) = refresh {
        served.push(("refresh.path", r.path.as_str()));
        served.push(("refresh.logout_path", r.logout_path.as_str()));
    }
    if let Some(p) = forward_auth {
        served.push(("forward_auth.path", p));
    }
    served
}

/// Whether a cookie with `Path=cookie_path` is sent to `path` (RFC 6265 §5.1.4 path-match).
fn cookie_path_matches(cookie_path: &str, path: &str) -> bool {
    path == cookie_path
        || (path.starts_with(cookie_path)
            && (cookie_path.ends_with('/')
                || path.as_bytes().get(cookie_path.len()) == Some(&b'/')))
}

/// "10.0.0.0/8", "192.0.2.7", "::1", "::ffff:10.0.0.0/104" (IPv4-mapped: stored as IPv4).
fn parse_net(s: &str) -> Result<IpNet, String> {
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
