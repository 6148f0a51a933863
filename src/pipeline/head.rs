//! The request head must be unambiguous before any phase runs: framing, Host, target.

use super::*;

/// The request's framing and host must be unambiguous. No transfer coding but `chunked`.
/// An HTTP/1.1 request carries exactly one Host header (RFC 9112 §3.2), and every host the
/// request names (Host, the target's or `:authority`'s authority) is one valid `host[:port]`
/// with a numeric port and no userinfo: the gateway routes on the name, and an app that reads
/// `admin.example:abc` or `x@admin.example` as `admin.example` must not be sent a request judged
/// as another host's. An HTTP/1 absolute-form target and Host name the same host: RFC 9112
/// says the target wins, the gateway routes on Host and passes Host on, so a different one is
/// refused rather than silently ignored. Otherwise `400 bad_request` before any phase runs.
///
/// HTTP/2 `:authority` beside a Host header that differs is refused too (RFC 9113 §8.3.1):
/// a front proxy routing on `:authority` and an app reading Host would disagree on the host.
pub(super) fn check_head(
    method: &http::Method,
    version: http::Version,
    headers: &HeaderMap,
    uri: &http::Uri,
    seen: &forward::Seen,
) -> Result<(), Reject> {
    if let Some(why) = method_problem(method) {
        return Err(Reject::BadRequest(why));
    }
    // A transfer coding besides `chunked` (`gzip, chunked`): hyper takes the chunks off and
    // would pass the body on still gzipped with nothing saying so.
    let te = seen.has(forward::Seen::TRANSFER_ENCODING);
    let other_coding = te
        && headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
            v.to_str().map_or(true, |s| {
                s.split(',')
                    .any(|c| !c.trim().eq_ignore_ascii_case("chunked"))
            })
        });
    if other_coding {
        return Err(Reject::BadRequest("a transfer coding other than chunked"));
    }
    if seen.hosts > 1 {
        return Err(Reject::BadRequest("more than one Host header"));
    }
    let target = uri.authority();
    if target.is_some_and(|a| !valid_host(a.as_str().as_bytes())) {
        return Err(Reject::BadRequest(
            "invalid authority in the request target",
        ));
    }
    let Some(host) = &seen.host else {
        return if version == http::Version::HTTP_11 {
            Err(Reject::BadRequest("missing Host header"))
        } else {
            Ok(())
        };
    };
    if host.is_empty() {
        // Allowed for a target without an authority; nothing to route on.
        return Ok(());
    }
    if !valid_host(host.as_bytes()) {
        return Err(Reject::BadRequest("invalid Host header"));
    }
    // An HTTP/1 absolute-form target, or HTTP/2's `:authority`, naming another host than
    // `Host` (ports aside): which one the app reads is anybody's guess (RFC 9113 §8.3.1 has
    // such an HTTP/2 request treated as malformed).
    if let (Some(target), Ok(host)) = (target, host.to_str()) {
        if !route::host_of(target.as_str()).eq_ignore_ascii_case(route::host_of(host)) {
            return Err(Reject::BadRequest("Host differs from the request target"));
        }
    }
    Ok(())
}

/// Why a method is refused, if it is. A method with lower-case letters: methods are
/// case-sensitive, so `post` is not the `POST` a route's `methods` names, yet frameworks
/// (Flask, among others) upper-case what they are sent: such a request would skip a
/// `POST`-only route (its rate limit, the login lock-out) and be served by the app as that
/// route's (nginx and Envoy refuse them too). `CONNECT`: the gateway is no forward proxy, and
/// passed on, a 2xx would leave the client waiting for a tunnel that is never opened.
pub fn method_problem(m: &http::Method) -> Option<&'static str> {
    // The common methods are known to be fine without looking at their bytes.
    if matches!(
        *m,
        http::Method::GET | http::Method::POST | http::Method::HEAD | http::Method::PUT
    ) {
        None
    } else if *m == http::Method::CONNECT {
        Some("CONNECT is not proxied")
    } else if m.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        Some("a method with lower-case letters")
    } else {
        None
    }
}

/// A Host value that is one plain authority, `name[:port]` or `[IPv6][:port]`: a name of
/// letters, digits and `-._~` (RFC 3986's unreserved characters), a port of digits. Anything
/// else — userinfo, a sub-delimiter (`,` `;` `!` `&` `=` …), percent-encoding — is refused:
/// apps and frameworks split such values differently (Express keeps what is left of a
/// comma, Rails what is right of it) and would serve a request the gateway routed as
/// another host.
pub fn valid_host(h: &[u8]) -> bool {
    plain_host(h) || ip_literal_host(h)
}

/// `[v6]` or `[v6]:port`.
fn ip_literal_host(h: &[u8]) -> bool {
    let Some(rest) = h.strip_prefix(b"[") else {
        return false;
    };
    let Some(close) = rest.iter().position(|&c| c == b']') else {
        return false;
    };
    let literal = &rest[..close];
    let port_ok = match &rest[close + 1..] {
        [] => true,
        [b':', port @ ..] => digits_port(port),
        _ => false,
    };
    port_ok && std::str::from_utf8(literal).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

/// A port of up to 5 digits, at most 65535 (no sign, no space: `u16::from_str` takes `+80`).
/// Empty is allowed, as RFC 3986 does (`port = *DIGIT`): `a:` names host `a`.
fn digits_port(p: &[u8]) -> bool {
    p.len() <= 5
        && p.iter().all(u8::is_ascii_digit)
        && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= u32::from(u16::MAX)
}

/// `name[:port]` with a name of letters, digits and `-._~`, and a port up to 65535.
fn plain_host(h: &[u8]) -> bool {
    let (name, port) = match h.iter().position(|&c| c == b':') {
        Some(i) => (&h[..i], Some(&h[i + 1..])),
        None => (h, None),
    };
    let name_ok = !name.is_empty()
        && name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'~'));
    let port_ok = port.is_none_or(digits_port);
    name_ok && port_ok
}

/// Host for route matching: `Host`, else the URI authority (HTTP/2), without port. Borrowed:
/// route matching compares hosts case-insensitively, so nothing is lower-cased per request.
pub fn request_host<'a>(host: Option<&'a HeaderValue>, uri: &'a http::Uri) -> Option<&'a str> {
    let raw = host
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))?;
    Some(route::host_of(raw))
}

#[cfg(test)]
mod tests {
    use super::{plain_host, valid_host};
    use proptest::prelude::*;

    #[test]
    fn plain_hosts() {
        for ok in [
            "example.com",
            "a-b.example:8443",
            "127.0.0.1:80",
            "x:65535",
            "a:",
        ] {
            assert!(plain_host(ok.as_bytes()), "{ok}");
        }
        for not in [
            "", ":80", "a:65536", "a:123456", "[::1]:80", "u@h", "a b", "a:8a",
        ] {
            assert!(!plain_host(not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn hosts_with_odd_ports_or_userinfo_are_invalid() {
        for ok in [
            "[::1]:8443",
            "[::1]:",
            "[2001:db8::1]",
            "example.com",
            "EXAMPLE.com:80",
            "a_b.example",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for not in [
            "admin.example:abc",
            "admin.example:+80",
            "admin.example:80x",
            "admin.example:-1",
            "admin.example:65536",
            "[::1]:x",
            "x@admin.example",
            "a:b@x.example:443",
            ":80",
            ":",
        ] {
            assert!(!valid_host(not.as_bytes()), "{not}");
        }
    }

    proptest! {
        /// The shortcut accepts nothing the full check would refuse.
        #[test]
        fn plain_host_is_a_valid_authority(h in "[a-z0-9.:@-]{0,12}") {
            if plain_host(h.as_bytes()) {
                prop_assert!(http::uri::Authority::try_from(h.as_bytes()).is_ok());
                prop_assert!(!h.contains('@'));
            }
        }
    }
}
