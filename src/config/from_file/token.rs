//! `[token]`, its secrets and keys, `[refresh]` and `[store]`.

use super::*;

impl Validator {
    pub(super) fn secret(&mut self, key: &str, s: &SecretFile) -> Option<Vec<u8>> {
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

    /// The algorithm and its key material; `None` (with the errors recorded) when either is
    /// unusable.
    fn token_keys(&mut self, t: &TokenFile) -> Option<(Algorithm, KeyMaterial)> {
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
        Some((algorithm, keys))
    }

    /// A token's lifetime: tokens count time in whole seconds, so one under a second would
    /// expire as it is issued.
    fn token_lifetime(&mut self, path: &str, v: &Option<String>, default: Duration) -> Duration {
        let d = self.positive_duration(path, v, default);
        if !d.is_zero() && d < Duration::from_secs(1) {
            self.err(
                path,
                "must be at least 1s (tokens count time in whole seconds)",
            );
            return default;
        }
        d
    }

    pub(super) fn token(&mut self, t: &TokenFile) -> Option<TokenConfig> {
        // A bad algorithm or key is reported, and the rest of [token] is still checked: every
        // error at once, even where the secret's variable is not set (CI running `check`).
        let algorithm_and_keys = self.token_keys(t);
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
            .token_header("token.header", t.header.as_deref().unwrap_or("IPToken"))
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
            if accept.contains(&src) {
                self.warnings
                    .push(format!("token.accept[{i}]: `{a}` is listed twice"));
            } else {
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
        if header == http::header::AUTHORIZATION
            && accept.contains(&TokenSource::Authorization)
            && accept.contains(&TokenSource::Header)
        {
            self.err(
                "token.header",
                "`Authorization` is also the \"authorization\" place of token.accept: a Bearer token would be read there and, whole, as the header place, and refused; keep one of the two in accept",
            );
        }
        if schemes.is_empty() && accept.contains(&TokenSource::Authorization) {
            self.warnings.push("token.schemes: is empty while token.accept lists \"authorization\": no Authorization header will ever carry a token (drop it from accept to say so)".into());
        }
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
        let ttl = self.token_lifetime("token.ttl", &t.ttl, Duration::from_secs(3600));
        let leeway = self.duration("token.leeway", &t.leeway, Duration::from_secs(30));
        if leeway > ttl {
            self.warnings.push(format!(
                "token.leeway ({}) is longer than token.ttl ({}): an expired token is still taken for longer than it was valid",
                t.leeway.as_deref().unwrap_or("30s"),
                t.ttl.as_deref().unwrap_or("60m")
            ));
        }
        let (algorithm, keys) = algorithm_and_keys?;
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

    pub(super) fn refresh(
        &mut self,
        r: Option<&RefreshFile>,
        has_token: bool,
        can_sign: bool,
    ) -> Option<RefreshConfig> {
        if let Some(off) = r.filter(|r| !r.enabled) {
            // Checked all the same: switching it on later must not reveal an old mistake.
            self.token_lifetime("refresh.ttl", &off.ttl, Duration::from_secs(30 * 86_400));
        }
        let r = r.filter(|r| r.enabled)?;
        if !has_token && !self.token_section {
            self.err("refresh.enabled", "needs a [token] section");
        }
        if !can_sign {
            self.err(
                "refresh.enabled",
                "needs token.private_key: with public_keys alone this gateway cannot mint the new tokens",
            );
        }
        let header = self
            .token_header(
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
            ttl: self.token_lifetime("refresh.ttl", &r.ttl, Duration::from_secs(30 * 86_400)),
            header,
            path,
            logout_path,
        })
    }

    pub(super) fn store(&mut self, s: &StoreFile) -> StoreConfig {
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
        let shown = if hidden {
            "the URL read".to_string()
        } else {
            format!("`{}`", checks::redact_url(&u))
        };
        if u.starts_with("rediss://") {
            self.err(
                "store.url",
                format!("{shown}: rediss:// (TLS to Redis) is not supported; reach Redis on a private network or through a TLS tunnel (stunnel, spiped), with redis://"),
            );
            return None;
        }
        if !u.starts_with("redis://") {
            self.err("store.url", format!("{shown} is not a redis:// URL"));
            return None;
        }
        // As the client will read it at startup (`/abc` as the database is no number).
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(u.as_str()) {
            self.err(
                "store.url",
                format!("{shown} is not a usable Redis URL ({:?}; the database is a number: redis://host:6379/0)", e.kind()),
            );
            return None;
        }
        Some(u)
    }
}

/// Claims the gateway sets itself; static or header claims may not override them.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "typ", "ip", "dev", "fam",
];

impl Validator {
    /// The header a token travels in (`token.header`, `refresh.header`): one the gateway
    /// strips from the upstream request and sets on the client's response, so never one it
    /// manages or reads for something else. `token.header` may be `Authorization` for
    /// clients that send a bare token there, unless `accept` also reads it as Bearer; a
    /// refresh token there would strip the app's own credentials on every route.
    fn token_header(&mut self, path: &str, v: &str) -> Option<HeaderName> {
        let name = self.carrier_header(path, v)?;
        // `Authorization` carrying a bare token (legacy clients): see `token.accept`.
        let bare_authorization = path == "token.header" && name == http::header::AUTHORIZATION;
        if is_reserved_header(&name) && !bare_authorization {
            self.err(
                path,
                format!("`{v}` is a header the gateway manages or reads; pick another name"),
            );
            return None;
        }
        Some(name)
    }
}

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
            | "x-forwarded-prefix"
            | "forwarded"
            | "x-real-ip"
            | "authorization"
            | "cookie"
    )
}
