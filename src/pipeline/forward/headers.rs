//! The request's and response's headers: what they hold (one pass, [`Seen`]), hop-by-hop
//! removal, the token and claim headers, the gateway's own cookies.

use super::*;

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers: never passed on. A `static`, not a `const`: a `const` array of
/// `HeaderName`s is built and dropped again wherever it is used.
pub(super) static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    // The h2c upgrade's settings (RFC 7540 §3.2.1): connection-specific, listed in
    // `Connection` or not.
    HeaderName::from_static("http2-settings"),
];

/// What a message's headers hold that the gateway acts on, found in one pass over them
/// ([`scan`], [`scan_response`]), so that each step looks a header up only when it is there.
/// The steps only ever remove headers, so what is seen before them stays true enough: a bit
/// may say a header is there after it has gone, never the other way round.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    bits: u32,
    /// How many `Host` values (request).
    pub hosts: u8,
    /// The first `Host` value (request).
    pub host: Option<HeaderValue>,
}

impl Seen {
    /// Any of the hop-by-hop headers; bit `i` is `HOP_BY_HOP[i]`.
    pub const HOP: u32 = 0x3ff;
    pub const CONNECTION: u32 = 1;
    pub const TRANSFER_ENCODING: u32 = 1 << 5;
    pub const UPGRADE: u32 = 1 << 6;
    pub const CONTENT_LENGTH: u32 = 1 << 10;
    pub const AUTHORIZATION: u32 = 1 << 11;
    pub const COOKIE: u32 = 1 << 12;
    /// `X-Forwarded-*`, `Forwarded`, `X-Real-IP` or another header that tells an app where a
    /// request came from or what it really is ([`forwarding_spelling`]), in any spelling.
    pub const FORWARDING: u32 = 1 << 13;
    /// A header only the gateway reads or sets: the token header, the refresh header, a
    /// claim header (any spelling).
    pub const OURS: u32 = 1 << 14;
    pub const EXPECT: u32 = 1 << 15;

    /// Whether any of `bits` was seen.
    pub fn has(&self, bits: u32) -> bool {
        self.bits & bits != 0
    }
}

/// The bits of [`Seen`] a header name sets by itself (`Host` and the configured names aside).
pub(super) fn class(k: &str) -> u32 {
    match k {
        "connection" => Seen::CONNECTION,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "te" => 1 << 3,
        "trailer" => 1 << 4,
        "transfer-encoding" => Seen::TRANSFER_ENCODING,
        "upgrade" => Seen::UPGRADE,
        "proxy-authorization" => 1 << 7,
        "proxy-authenticate" => 1 << 8,
        "http2-settings" => 1 << 9,
        "content-length" => Seen::CONTENT_LENGTH,
        "authorization" => Seen::AUTHORIZATION,
        "cookie" => Seen::COOKIE,
        "expect" => Seen::EXPECT,
        _ => 0,
    }
}

/// A name an app framework may read as a forwarding header (`_` for `-`, any case): the
/// standard ones, and the client-address headers of CDNs and frameworks (`True-Client-IP`,
/// `CF-Connecting-IP`, `Client-IP` that Rails reads, …), which a client could set to name any
/// address it likes; or as the path it really serves (`X-Original-URL`, `X-Rewrite-URL`: IIS,
/// older Symfony and Laravel route on them, so a client could name a path the gateway never
/// judged); or as the method it really runs (`X-HTTP-Method-Override` and its kin: Rails,
/// Laravel, Express and ASP.NET run a POST carrying `DELETE` there as a DELETE, which the
/// route's `methods` never judged).
pub(super) fn forwarding_spelling(k: &str) -> bool {
    const NAMES: &[&str] = &[
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded",
        "forwarded-for",
        "x-original-forwarded-for",
        "client-ip",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
    ];
    (k.len() > 12 && same_spelling(&k[..12], "x-forwarded-"))
        || NAMES.iter().any(|n| same_spelling(k, n))
        || method_override(k)
}

fn method_override(k: &str) -> bool {
    same_spelling(k, "x-http-method-override")
        || same_spelling(k, "x-http-method")
        || same_spelling(k, "x-method-override")
}

/// A [`forwarding_spelling`] a trusted proxy's request may keep: in its canonical spelling (an
/// underscore one is the client's own, passed on by a proxy that forwards any name — nginx
/// drops them, HAProxy, Envoy and Traefik do not). Of the headers naming the client, only
/// the family the gateway reads it from (`header`): the others are whatever the client sent
/// through the proxy (nginx's `proxy_set_header X-Real-IP $remote_addr` passes the client's
/// `X-Forwarded-For` on), and the upstream would read a client the gateway did not decide on.
/// The proxy's other `X-Forwarded-*` (`-Proto`, `-Host`, `-Prefix`) and `X-Original-URL` /
/// `X-Rewrite-URL` are its own; method overrides and the other client-address headers never
/// pass.
pub(super) fn kept_from_trusted_proxy(k: &str, header: ForwardHeader) -> bool {
    if k.contains('_') {
        return false;
    }
    match k {
        "x-forwarded-for" => header == ForwardHeader::XForwardedFor,
        "forwarded" => header == ForwardHeader::Forwarded,
        "x-real-ip" => header == ForwardHeader::XRealIp,
        "x-original-url" | "x-rewrite-url" => true,
        _ => k.len() > 12 && k.starts_with("x-forwarded-"),
    }
}

/// One pass over a request's headers.
pub fn scan(h: &HeaderMap, token: Option<&TokenConfig>, refresh: Option<&HeaderName>) -> Seen {
    let mut seen = Seen::default();
    for (k, v) in h {
        if k == header::HOST {
            if seen.hosts == 0 {
                seen.host = Some(v.clone());
            }
            seen.hosts = seen.hosts.saturating_add(1);
            continue;
        }
        let name = k.as_str();
        let mut bits = class(name);
        if bits == 0 {
            if forwarding_spelling(name) {
                bits = Seen::FORWARDING;
            }
            let ours = token.is_some_and(|tc| {
                *k == tc.header
                    || tc
                        .forward_claims
                        .iter()
                        .any(|(_, n)| same_spelling(name, n.as_str()))
            }) || refresh.is_some_and(|r| k == r);
            if ours {
                bits |= Seen::OURS;
            }
        }
        seen.bits |= bits;
    }
    seen
}

/// One pass over a response's headers (hop-by-hop and framing only).
pub fn scan_response(h: &HeaderMap) -> Seen {
    Seen {
        bits: h.keys().fold(0, |acc, k| acc | class(k.as_str())),
        ..Seen::default()
    }
}

/// Remove hop-by-hop headers and every header named in `Connection`, given what a scan saw.
/// Most messages carry none, the rest one or two (`Connection: keep-alive`): only those are
/// removed, with no allocation.
pub fn strip_hop_by_hop(h: &mut HeaderMap, seen: &Seen) {
    if !seen.has(Seen::HOP) {
        return;
    }
    // `Connection` is taken out with its values in one lookup; other headers it names are
    // removed too (rare: `keep-alive`, `close`, `upgrade` are not such names).
    let mut named: Vec<HeaderName> = Vec::new();
    if seen.has(Seen::CONNECTION) {
        if let header::Entry::Occupied(e) = h.entry(header::CONNECTION) {
            for v in e.remove_entry_mult().1 {
                let b = v.as_bytes();
                if b.eq_ignore_ascii_case(b"keep-alive") || b.eq_ignore_ascii_case(b"close") {
                    // Nearly every message: nothing named.
                    continue;
                }
                let Ok(v) = v.to_str() else { continue };
                for n in v.split(',').map(str::trim) {
                    if n.is_empty()
                        || n.eq_ignore_ascii_case("close")
                        || HOP_BY_HOP
                            .iter()
                            .any(|d| d.as_str().eq_ignore_ascii_case(n))
                    {
                        continue;
                    }
                    if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
                        named.push(name);
                    }
                }
            }
        }
    }
    for n in &named {
        h.remove(n);
    }
    // The other hop-by-hop headers seen (bit 0, `Connection`, is gone already).
    for (i, d) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if seen.has(1 << i) {
            h.remove(d);
        }
    }
}

/// A WebSocket upgrade request (`Upgrade: websocket` with `Connection: upgrade`). Other
/// upgrades (`h2c` above all) are not passed on: after a `101` the connection is a tunnel no
/// later request on it is judged in, so only the protocol the gateway means to carry gets one.
/// Their `Upgrade` header goes with the other hop-by-hop headers.
pub(super) fn is_upgrade(h: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::UPGRADE, "websocket") && has_token(header::CONNECTION, "upgrade")
}

/// Whether a `101` answers the WebSocket key that was sent (RFC 6455 §4.2.2:
/// `Sec-WebSocket-Accept` is base64(SHA-1(key + the protocol's GUID))).
pub(super) fn websocket_accepted(key: Option<&HeaderValue>, resp: &HeaderMap) -> bool {
    use base64::Engine as _;
    let (Some(key), Some(accept)) = (key, resp.get(header::SEC_WEBSOCKET_ACCEPT)) else {
        return false;
    };
    let mut sha1 = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key.as_bytes().trim_ascii());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let want = base64::engine::general_purpose::STANDARD.encode(sha1.finish());
    accept.as_bytes().trim_ascii() == want.as_bytes()
}

/// Header names compared the way a lenient app framework would: case-insensitive, `_` = `-`.
pub(super) fn same_spelling(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let n = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            n(x) == n(y)
        })
}

/// Remove every incoming spelling of the claim headers (they are set only by the gateway).
pub fn remove_claim_headers(h: &mut HeaderMap, token: &TokenConfig) {
    if token.forward_claims.is_empty() {
        return;
    }
    let doomed: Vec<HeaderName> = h
        .keys()
        .filter(|k| {
            token
                .forward_claims
                .iter()
                .any(|(_, name)| same_spelling(k.as_str(), name.as_str()))
        })
        .cloned()
        .collect();
    for k in doomed {
        h.remove(k);
    }
}

/// A claim as a header value (UTF-8 passes as is); `None` when it cannot be one (control
/// characters).
pub fn claim_header_value(v: &serde_json::Value) -> Option<HeaderValue> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| match x {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        serde_json::Value::Null => return None,
        other => other.to_string(),
    };
    HeaderValue::from_bytes(s.as_bytes()).ok()
}

/// Remove the token from `Authorization` (our schemes) and the token header; the cookie goes in
/// [`rewrite_cookies`].
pub fn strip_token(h: &mut HeaderMap, token: &TokenConfig) {
    let ours = |v: &HeaderValue| {
        let (scheme, _) = crate::pipeline::auth::authorization_parts(v.as_bytes());
        token
            .schemes
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(scheme))
    };
    if h.get_all(header::AUTHORIZATION).iter().any(ours) {
        let keep: Vec<HeaderValue> = h
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter(|v| !ours(v))
            .cloned()
            .collect();
        h.remove(header::AUTHORIZATION);
        for v in keep {
            h.append(header::AUTHORIZATION, v);
        }
    }
    h.remove(&token.header);
}

/// The request's cookies as one `Cookie` field, without the gateway's own (`ours`: the cookie
/// config, and whether the access token's cookie goes too; the refresh token's always does).
/// HTTP/2 clients send each cookie as its own field (RFC 9113 §8.2.3) and an HTTP/1.1 upstream
/// expects one (RFC 6265 §5.4). A single field with none of ours is left as it is, unread.
pub(super) fn rewrite_cookies(h: &mut HeaderMap, ours: Option<(&CookieConfig, bool)>) {
    let is_ours = |pair: &[u8]| {
        let name = pair
            .split(|&c| c == b'=')
            .next()
            .unwrap_or(pair)
            .trim_ascii();
        ours.is_some_and(|(c, access)| {
            name == c.refresh_name.as_bytes() || (access && name == c.name.as_bytes())
        })
    };
    let fields = h.get_all(header::COOKIE);
    let several = fields.iter().nth(1).is_some();
    let any_ours = || ours.is_some() && fields.iter().flat_map(cookie_pairs).any(is_ours);
    if !several && !any_ours() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in fields {
        for pair in cookie_pairs(v).filter(|p| !is_ours(p)) {
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(pair);
        }
    }
    h.remove(header::COOKIE);
    if !joined.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            h.insert(header::COOKIE, v);
        }
    }
}

/// The `name=value` pairs of a `Cookie` field, trimmed.
fn cookie_pairs(v: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    v.as_bytes()
        .split(|&c| c == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// The scheme the trusted proxy recorded in the element it added to `Forwarded` (RFC 7239
/// `proto` of the right-most element only: anything left of it the client may have written),
/// for `X-Forwarded-Proto` when it sent none.
pub(super) fn forwarded_proto(h: &HeaderMap) -> Option<&'static str> {
    let line = h.get_all(header::FORWARDED).iter().next_back()?;
    let element = crate::pipeline::client_ip::parse::ForwardedElements::new(line.as_bytes())
        .next()?
        .ok()?;
    crate::pipeline::client_ip::parse::forwarded_proto(element)
}
