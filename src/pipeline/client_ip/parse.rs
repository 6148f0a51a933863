//! Parsers for the forwarding headers' address lists, right to left, without allocating.
//!
//! Each hop comes out as [`Hop`] or [`Malformed`]; the caller ([`super::resolve`]) decides
//! what to trust. Parsing is lazy: an element left of the answer is never looked at, so a
//! client cannot make the gateway give up on its real address by prepending garbage.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One address of a forwarding chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hop {
    /// A canonical IP (IPv4-mapped IPv6 unmapped).
    Ip(IpAddr),
    /// RFC 7239 `unknown` or an obfuscated `_identifier`: no address to go on.
    Opaque,
}

/// An element that is not an address in the syntax the header allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// `X-Forwarded-For` / `X-Real-IP`: `ip`, `ip:port`, `[v6]`, `[v6]:port`.
    Plain,
    /// RFC 7239 node: also `unknown`, `_obfuscated` and obfuscated ports.
    Forwarded,
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// RFC 7239 `obfnode` / `obfport` body: `_` followed by ALPHA / DIGIT / "." / "_" / "-".
fn is_obfuscated(s: &[u8]) -> bool {
    matches!(s, [b'_', rest @ ..] if !rest.is_empty()
        && rest.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
}

fn valid_port(s: &[u8], syntax: Syntax) -> bool {
    let numeric = !s.is_empty()
        && s.len() <= 5
        && s.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(s)
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .is_some();
    numeric || (syntax == Syntax::Forwarded && is_obfuscated(s))
}

fn parse_v4(s: &[u8]) -> Result<Ipv4Addr, Malformed> {
    // `Ipv4Addr::from_str` refuses leading zeros (no octal ambiguity) and anything but
    // four dotted decimal octets.
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed)
}

fn parse_v6(s: &[u8]) -> Result<Ipv6Addr, Malformed> {
    // No zone identifiers (`%eth0`): `Ipv6Addr::from_str` refuses them.
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Malformed)
}

/// One node: `ip`, `ip:port`, `[v6]`, `[v6]:port`, bare `v6`; with [`Syntax::Forwarded`]
/// also `unknown` and `_obf`, each with an optional port.
pub(crate) fn parse_node(s: &[u8], syntax: Syntax) -> Result<Hop, Malformed> {
    if let [b'[', rest @ ..] = s {
        let close = rest.iter().position(|&b| b == b']').ok_or(Malformed)?;
        let v6 = parse_v6(&rest[..close])?;
        return match &rest[close + 1..] {
            [] => Ok(Hop::Ip(IpAddr::V6(v6).to_canonical())),
            [b':', port @ ..] if valid_port(port, syntax) => {
                Ok(Hop::Ip(IpAddr::V6(v6).to_canonical()))
            }
            _ => Err(Malformed),
        };
    }
    let colons = s.iter().filter(|&&b| b == b':').count();
    if colons >= 2 {
        // A bare IPv6 address (no port possible without brackets).
        return Ok(Hop::Ip(IpAddr::V6(parse_v6(s)?).to_canonical()));
    }
    let (name, port) = match s.iter().position(|&b| b == b':') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    if let Some(port) = port {
        if !valid_port(port, syntax) {
            return Err(Malformed);
        }
    }
    if syntax == Syntax::Forwarded && (name.eq_ignore_ascii_case(b"unknown") || is_obfuscated(name))
    {
        return Ok(Hop::Opaque);
    }
    Ok(Hop::Ip(IpAddr::V4(parse_v4(name)?)))
}

/// `X-Forwarded-For` elements of one header line, right to left. Empty elements (`a,,b`,
/// a trailing comma) are skipped, as RFC 9110 §5.6.1 has list recipients do, and as the
/// header passed on upstream drops them: both name the same client.
pub(crate) fn xff_line(line: &[u8]) -> impl Iterator<Item = Result<Hop, Malformed>> + '_ {
    line.rsplit(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
        .map(|e| parse_node(e, Syntax::Plain))
}

/// Splits one `Forwarded` header line into its comma-separated elements, right to left,
/// honouring quoted strings. A backslash inside quotes (a quoted-pair, never needed by an
/// address) or an unbalanced quote makes that element [`Malformed`].
pub(crate) struct ForwardedElements<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> ForwardedElements<'a> {
    pub(crate) fn new(line: &'a [u8]) -> Self {
        ForwardedElements {
            rest: line,
            done: false,
        }
    }
}

impl<'a> Iterator for ForwardedElements<'a> {
    type Item = Result<&'a [u8], Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut in_quote = false;
        let mut i = self.rest.len();
        while i > 0 {
            i -= 1;
            match self.rest[i] {
                b'"' => in_quote = !in_quote,
                b'\\' if in_quote => {
                    self.done = true;
                    return Some(Err(Malformed));
                }
                b',' if !in_quote => {
                    let element = &self.rest[i + 1..];
                    self.rest = &self.rest[..i];
                    return Some(Ok(element));
                }
                _ => {}
            }
        }
        self.done = true;
        if in_quote {
            Some(Err(Malformed))
        } else {
            Some(Ok(self.rest))
        }
    }
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// One `Forwarded` element (`for=…;proto=…;by=…`): exactly one `for` parameter, whose
/// node is returned. Unquoted values may also hold `:`, `[` and `]` (common, if not
/// strictly RFC 7239, for `ip:port` and IPv6); the node parser then checks them.
pub(crate) fn forwarded_element(e: &[u8]) -> Result<Hop, Malformed> {
    let mut node: Option<&[u8]> = None;
    each_param(e, |name, value| {
        if name.eq_ignore_ascii_case(b"for") {
            if node.is_some() {
                return Err(Malformed);
            }
            node = Some(value);
        }
        Ok(())
    })?;
    parse_node(node.ok_or(Malformed)?, Syntax::Forwarded)
}

/// The `proto` parameter of one `Forwarded` element, if it is `http` or `https`.
pub(crate) fn forwarded_proto(e: &[u8]) -> Option<&'static str> {
    let mut proto = None;
    each_param(e, |name, value| {
        if name.eq_ignore_ascii_case(b"proto") {
            proto = Some(value);
        }
        Ok(())
    })
    .ok()?;
    match proto? {
        p if p.eq_ignore_ascii_case(b"https") => Some("https"),
        p if p.eq_ignore_ascii_case(b"http") => Some("http"),
        _ => None,
    }
}

/// Calls `f` with each `name=value` parameter of a `Forwarded` element (quotes removed).
fn each_param<'a>(
    e: &'a [u8],
    mut f: impl FnMut(&'a [u8], &'a [u8]) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    let e = trim_ows(e);
    let mut i = 0;
    loop {
        let start = i;
        while i < e.len() && is_tchar(e[i]) {
            i += 1;
        }
        let name = &e[start..i];
        if name.is_empty() || e.get(i) != Some(&b'=') {
            return Err(Malformed);
        }
        i += 1;
        let value = if e.get(i) == Some(&b'"') {
            let body = &e[i + 1..];
            let close = body.iter().position(|&b| b == b'"').ok_or(Malformed)?;
            let value = &body[..close];
            if value.contains(&b'\\') {
                return Err(Malformed);
            }
            i += close + 2;
            value
        } else {
            let start = i;
            while i < e.len() && (is_tchar(e[i]) || matches!(e[i], b':' | b'[' | b']')) {
                i += 1;
            }
            &e[start..i]
        };
        f(name, value)?;
        while i < e.len() && is_ows(e[i]) {
            i += 1;
        }
        match e.get(i) {
            None => break,
            Some(b';') => {
                i += 1;
                while i < e.len() && is_ows(e[i]) {
                    i += 1;
                }
            }
            Some(_) => return Err(Malformed),
        }
    }
    Ok(())
}

/// `Forwarded` hops of one header line, right to left.
pub(crate) fn forwarded_line(line: &[u8]) -> impl Iterator<Item = Result<Hop, Malformed>> + '_ {
    // Empty elements are skipped, as in `X-Forwarded-For`.
    ForwardedElements::new(line)
        .filter(|e| !matches!(e, Ok(e) if trim_ows(e).is_empty()))
        .map(|e| e.and_then(forwarded_element))
}
