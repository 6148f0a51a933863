//! Pure checks that `from_file/` applies to single values: host and domain names, cookie
//! attributes, header names the gateway cannot hand out, route matchers, host bits of a
//! CIDR, and URLs with a password in them (which must never be printed).

use http::HeaderName;
use ipnet::IpNet;

/// A DNS name (`gw.example.com`, `localhost`): dot-separated labels of letters, digits and
/// inner hyphens, 1–63 bytes each, 253 in all. No port, no trailing dot, no wildcard.
pub fn is_dns_name(s: &str) -> bool {
    labels_ok(s, b"-")
}

/// Dot-separated labels of letters, digits and the `extra` bytes (never first nor last in a
/// label), 1–63 bytes each, 253 in all.
fn labels_ok(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
        })
}

/// What is wrong with a route's `host`, if anything.
#[derive(Debug, PartialEq, Eq)]
pub enum HostProblem {
    /// A host with a port: it matches (ports are ignored), but the port misleads.
    Port(String),
    /// It can never match.
    Invalid(String),
}

/// What is wrong with a route's `host`, or `None`: a DNS name or an IP address, best without a
/// port (the gateway matches hosts ignoring their port).
pub fn route_host_problem(h: &str) -> Option<HostProblem> {
    route_host_invalid(h).map(|why| match why {
        Ok(port) => HostProblem::Port(port),
        Err(invalid) => HostProblem::Invalid(invalid),
    })
}

/// `Ok(message)`: a valid host with a port; `Err(message)`: no host at all.
fn route_host_invalid(h: &str) -> Option<Result<String, String>> {
    if h.is_empty() {
        return Some(Err("is empty: leave `host` out to match any host".into()));
    }
    if h.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some(Err(format!(
            "`{h}`: write an IPv6 address in brackets, `[{h}]`, as requests name it"
        )));
    }
    // What requests may name (see the listener's Host check): a name, an IPv4 address, or
    // an IPv6 one in brackets.
    let host_ok = |s: &str| match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => s.parse::<std::net::Ipv4Addr>().is_ok() || is_route_name(s),
    };
    if host_ok(h) {
        return None;
    }
    if let Some((name, port)) = h.rsplit_once(':') {
        if host_ok(name) && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Some(Ok(format!(
                "`{h}`: matched as `{name}`, whatever the port: hosts are matched ignoring the port"
            )));
        }
    }
    Some(Err(format!(
        "`{h}` is not a host name or IP address (letters, digits, `-`, `_` and `.`; an IPv6 address in brackets; no wildcards, scheme or path)"
    )))
}

/// A host name a route may match: DNS labels that may also hold `_` (service names such as
/// Docker's), with one trailing dot allowed (the root, which matching ignores).
fn is_route_name(s: &str) -> bool {
    labels_ok(s.strip_suffix('.').unwrap_or(s), b"-_")
}

/// Why `cookie.path` would break the `Set-Cookie` header, or `None`.
pub fn cookie_path_problem(p: &str) -> Option<&'static str> {
    if !p.starts_with('/') {
        return Some("must start with /");
    }
    if p.bytes().any(|b| b == b';' || !b.is_ascii_graphic()) {
        return Some("must not hold `;`, whitespace, control or non-ASCII characters (it is written into Set-Cookie as is)");
    }
    None
}

/// Why `cookie.domain` is not a domain a browser would take, or `None`. A leading dot (the
/// old RFC 2109 form) is accepted; browsers ignore it.
pub fn cookie_domain_problem(d: &str) -> Option<&'static str> {
    if d.bytes().any(|b| b == b';' || !b.is_ascii_graphic()) {
        return Some("must not hold `;`, whitespace, control or non-ASCII characters (it is written into Set-Cookie as is)");
    }
    if !is_dns_name(d.strip_prefix('.').unwrap_or(d)) {
        return Some("is not a domain name (e.g. \"example.com\")");
    }
    None
}

/// Why a header cannot carry a token, a refresh token or a claim, or `None`: hop-by-hop
/// headers are removed by every proxy on the way, framing headers describe the message
/// itself, and cookies have their own syntax and their own settings (`token.cookie`).
pub fn header_problem(h: &HeaderName) -> Option<&'static str> {
    match h.as_str() {
        "connection"
        | "keep-alive"
        | "proxy-connection"
        | "te"
        | "trailer"
        | "upgrade"
        | "transfer-encoding"
        | "proxy-authenticate"
        | "proxy-authorization" => Some("is a hop-by-hop header, removed by proxies on the way"),
        "content-length" | "content-encoding" | "content-type" | "host" | "expect" => {
            Some("describes the message itself (framing, Host)")
        }
        "cookie" | "set-cookie" => Some("carries cookies; use token.cookie and set_cookie instead"),
        _ => None,
    }
}

/// `p` with the hex digits of its %-escapes in upper case, as path normalization writes them.
pub fn upper_escapes(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut hex_left = 0;
    for c in p.chars() {
        if hex_left > 0 {
            hex_left -= 1;
            out.push(c.to_ascii_uppercase());
        } else {
            if c == '%' {
                hex_left = 2;
            }
            out.push(c);
        }
    }
    out
}

/// Why a route `path`/`prefix` can never match a request path, or `None`: the matcher sees
/// the path only (the query and fragment are never part of it) and paths hold no spaces.
pub fn matcher_problem(p: &str) -> Option<&'static str> {
    if p.contains('?') {
        return Some("holds `?` (routes match the path only, never the query string)");
    }
    if p.contains('#') {
        return Some("holds `#` (a fragment is never sent to a server)");
    }
    if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("holds whitespace or control characters (no request path carries them)");
    }
    if !p.is_ascii() {
        return Some(
            "holds non-ASCII characters (request paths carry them %-encoded: `/ü` is `/%C3%BC`)",
        );
    }
    None
}

/// The network a CIDR written with host bits (`10.0.0.1/8`) stands for, when it has them.
pub fn host_bits(s: &str) -> Option<IpNet> {
    let n: IpNet = s.trim().parse().ok()?;
    (n.trunc() != n).then(|| n.trunc())
}

/// A URL with its password replaced by `***` (`http://admin:***@host`), for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // No scheme: anything before an `@` may be credentials.
        return match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_string(),
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// Whether a URL carries a password (`redis://:pw@host`, `redis://user:pw@host`).
pub fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for ok in [
            "localhost",
            "gw.example.com",
            "a-b.c1",
            "xn--bcher-kva.example",
        ] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a b",
            "*.example.com",
            "a_b.c",
            "a.b.",
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn route_hosts() {
        assert_eq!(route_host_problem("api.example.com"), None);
        assert_eq!(route_host_problem("127.0.0.1"), None);
        assert_eq!(route_host_problem("[::1]"), None);
        assert!(route_host_problem("").is_some());
        assert!(matches!(
            route_host_problem("api.example.com:8443"),
            Some(HostProblem::Port(_))
        ));
        assert!(route_host_problem("https://api.example.com").is_some());
        assert!(route_host_problem("*.example.com").is_some());
        // As requests may name them: `_` in service names, the root's trailing dot.
        assert_eq!(route_host_problem("my_service.internal"), None);
        assert_eq!(route_host_problem("example.com."), None);
        assert!(matches!(
            route_host_problem("[::1]:8443"),
            Some(HostProblem::Port(_))
        ));
        // A bare IPv6 address would be cut at its last colon and never match.
        let e = route_host_problem("::1");
        assert!(
            matches!(&e, Some(HostProblem::Invalid(m)) if m.contains("[::1]")),
            "{e:?}"
        );
        assert!(route_host_problem("[127.0.0.1]").is_some());
    }

    #[test]
    fn cookie_attributes() {
        assert_eq!(cookie_path_problem("/"), None);
        assert_eq!(cookie_path_problem("/app/x"), None);
        assert!(cookie_path_problem("app").is_some());
        assert!(cookie_path_problem("/; Domain=evil.example").is_some());
        assert!(cookie_path_problem("/a b").is_some());
        assert!(cookie_path_problem("/a\u{7f}").is_some());
        assert_eq!(cookie_domain_problem("example.com"), None);
        assert_eq!(cookie_domain_problem(".example.com"), None);
        assert!(cookie_domain_problem("example.com; Secure").is_some());
        assert!(cookie_domain_problem("").is_some());
        assert!(cookie_domain_problem("exa mple.com").is_some());
        assert!(cookie_domain_problem("/example.com").is_some());
    }

    #[test]
    fn headers_a_token_cannot_ride_on() {
        for bad in [
            "Set-Cookie",
            "cookie",
            "Content-Length",
            "Transfer-Encoding",
            "Host",
            "Connection",
            "TE",
            "Upgrade",
        ] {
            let h = HeaderName::from_bytes(bad.as_bytes()).unwrap_or_else(|_| panic!("{bad}"));
            assert!(header_problem(&h).is_some(), "{bad}");
        }
        for ok in ["IPToken", "Authorization", "X-Auth-Subject"] {
            let h = HeaderName::from_bytes(ok.as_bytes()).unwrap_or_else(|_| panic!("{ok}"));
            assert_eq!(header_problem(&h), None, "{ok}");
        }
    }

    #[test]
    fn matchers_that_never_match() {
        assert_eq!(matcher_problem("/api/v1"), None);
        assert!(matcher_problem("/login?next=/").is_some());
        assert!(matcher_problem("/a#b").is_some());
        assert!(matcher_problem("/a b").is_some());
        assert!(matcher_problem("/a\tb").is_some());
    }

    #[test]
    fn cidrs_with_host_bits() {
        assert_eq!(host_bits("10.0.0.1/8"), "10.0.0.0/8".parse().ok());
        assert_eq!(host_bits("10.0.0.0/8"), None);
        assert_eq!(host_bits("192.0.2.7"), None);
        assert_eq!(host_bits("2001:db8::1/32"), "2001:db8::/32".parse().ok());
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("http://admin:PW@host:3000/x"),
            "http://admin:***@host:3000/x"
        );
        assert_eq!(redact_url("redis://:PW@r:6379/0"), "redis://:***@r:6379/0");
        assert_eq!(redact_url("http://host:3000"), "http://host:3000");
        assert_eq!(redact_url("admin:PW@host"), "***@host");
        assert!(!redact_url("ftp://u:PW@x").contains("PW"));
        assert!(url_has_password("redis://:PW@r:6379/0"));
        assert!(url_has_password("redis://user:PW@r"));
        assert!(!url_has_password("redis://user@r"));
        assert!(!url_has_password("redis://r:6379/0"));
        assert!(!url_has_password("redis://r/0?a=b:c@d"));
    }
}
