#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use super::parse::{forwarded_element, parse_node, Hop, Malformed, Syntax};
use super::*;
use crate::config::{ClientIpConfig, ForwardHeader};

fn cfg(header: ForwardHeader, trusted: &[&str]) -> ClientIpConfig {
    ClientIpConfig {
        trusted_proxies: trusted.iter().map(|s| s.parse().unwrap()).collect(),
        header,
        proxy_protocol: false,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn headers(name: &str, lines: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
    for l in lines {
        h.append(name.clone(), HeaderValue::from_bytes(l.as_bytes()).unwrap());
    }
    h
}

fn xff(lines: &[&str]) -> HeaderMap {
    headers("x-forwarded-for", lines)
}

const PROXY: &str = "10.0.0.1";

fn xff_cfg() -> ClientIpConfig {
    cfg(ForwardHeader::XForwardedFor, &["10.0.0.0/8", "fd00::/8"])
}

#[test]
fn untrusted_peer_ignores_headers() {
    let c = xff_cfg();
    let r = resolve(ip("203.0.113.9"), Proxied::No, &xff(&["1.1.1.1"]), &c);
    assert_eq!(
        r,
        ClientIp {
            ip: ip("203.0.113.9"),
            source: IpSource::Peer,
            peer: ip("203.0.113.9")
        }
    );
    // No trusted proxies at all: same.
    let c = cfg(ForwardHeader::XForwardedFor, &[]);
    let r = resolve(ip("10.0.0.1"), Proxied::No, &xff(&["1.1.1.1"]), &c);
    assert_eq!(r.ip, ip("10.0.0.1"));
    assert_eq!(r.source, IpSource::Peer);
}

#[test]
fn trusted_peer_gives_rightmost_untrusted() {
    let c = xff_cfg();
    let (r, d) = resolve_explained(ip(PROXY), Proxied::No, &xff(&["6.6.6.6, 1.2.3.4"]), &c);
    assert_eq!(r.ip, ip("1.2.3.4"));
    assert_eq!(r.source, IpSource::Header);
    assert_eq!(r.peer, ip(PROXY));
    assert_eq!(d, Decision::RightmostUntrusted);
}

#[test]
fn multi_hop_with_two_trusted_proxies() {
    let c = xff_cfg();
    let h = xff(&["6.6.6.6, 1.2.3.4, 10.1.1.1", "10.2.2.2"]);
    let r = resolve(ip(PROXY), Proxied::No, &h, &c);
    assert_eq!(r.ip, ip("1.2.3.4"));
    // All trusted: the left-most.
    let h = xff(&["10.3.3.3, 10.1.1.1", "10.2.2.2"]);
    let (r, d) = resolve_explained(ip(PROXY), Proxied::No, &h, &c);
    assert_eq!(
        (r.ip, r.source, d),
        (ip("10.3.3.3"), IpSource::Header, Decision::AllTrusted)
    );
}

#[test]
fn garbage_reached_by_the_walk_falls_back_to_peer() {
    let c = xff_cfg();
    for lines in [
        &["1.2.3.4, garbage"][..],
        &["1.2.3.4, 10.1.1.1, nope"],
        &["1.2.3.4, 1.2.3.4.5"],
        &["01.2.3.4"],
        &["1.2.3.4:99999"],
        &["1.2.3.4:"],
        &["fe80::1%eth0"],
        &["[::1"],
        &["unknown"],
        &["\"1.2.3.4\""],
        &["1.2.3.4 5.6.7.8"],
    ] {
        let (r, d) = resolve_explained(ip(PROXY), Proxied::No, &xff(lines), &c);
        assert_eq!((r.ip, r.source), (ip(PROXY), IpSource::Peer), "{lines:?}");
        assert_eq!(d, Decision::Malformed, "{lines:?}");
    }
    // Empty list elements are skipped (RFC 9110 §5.6.1), as the header passed upstream drops
    // them: both name the same client.
    for lines in [
        &["1.2.3.4,"][..],
        &[",1.2.3.4,,"],
        &["1.2.3.4, , 10.1.1.1"],
        &["1.2.3.4", ""],
    ] {
        let (r, d) = resolve_explained(ip(PROXY), Proxied::No, &xff(lines), &c);
        assert_eq!(
            (r.ip, r.source),
            (ip("1.2.3.4"), IpSource::Header),
            "{lines:?}"
        );
        assert_eq!(d, Decision::RightmostUntrusted, "{lines:?}");
    }
}

#[test]
fn garbage_left_of_the_answer_is_never_read() {
    let c = xff_cfg();
    for lines in [
        &["garbage, 1.2.3.4"][..],
        &["x y z", "1.2.3.4"],
        &["[[[, 1.2.3.4, 10.9.9.9"],
    ] {
        let r = resolve(ip(PROXY), Proxied::No, &xff(lines), &c);
        assert_eq!(r.ip, ip("1.2.3.4"), "{lines:?}");
    }
    // Non-ASCII bytes in the client's part of the same line.
    let mut h = HeaderMap::new();
    h.append(
        "x-forwarded-for",
        HeaderValue::from_bytes(b"\xff\xfe, 1.2.3.4").unwrap(),
    );
    assert_eq!(resolve(ip(PROXY), Proxied::No, &h, &c).ip, ip("1.2.3.4"));
}

#[test]
fn xff_ports_brackets_and_mapped() {
    let c = xff_cfg();
    for (line, want) in [
        ("1.2.3.4:5678", "1.2.3.4"),
        ("[2001:db8::1]:80", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("[::ffff:1.2.3.4]:443", "1.2.3.4"),
        ("  1.2.3.4\t", "1.2.3.4"),
        // A mapped trusted proxy is still a trusted proxy.
        ("1.2.3.4, ::ffff:10.0.0.7", "1.2.3.4"),
    ] {
        let r = resolve(ip(PROXY), Proxied::No, &xff(&[line]), &c);
        assert_eq!(r.ip, ip(want), "{line}");
        assert!(r.ip.to_canonical() == r.ip);
    }
}

#[test]
fn mapped_peer_is_canonical_and_trusted() {
    let c = xff_cfg();
    let r = resolve(ip("::ffff:10.0.0.1"), Proxied::No, &xff(&["1.2.3.4"]), &c);
    assert_eq!(r.peer, ip("10.0.0.1"));
    assert_eq!(r.ip, ip("1.2.3.4"));
    let r = resolve(ip("::ffff:8.8.8.8"), Proxied::No, &HeaderMap::new(), &c);
    assert_eq!(r.ip, ip("8.8.8.8"));
    // Trusted proxies written as mapped IPv6 networks.
    let c = cfg(ForwardHeader::XForwardedFor, &["::ffff:10.0.0.0/104"]);
    assert!(is_trusted(ip("10.4.4.4"), &c));
    assert_eq!(
        resolve(ip(PROXY), Proxied::No, &xff(&["1.2.3.4"]), &c).ip,
        ip("1.2.3.4")
    );
}

#[test]
fn no_header_from_trusted_peer() {
    let c = xff_cfg();
    let (r, d) = resolve_explained(ip(PROXY), Proxied::No, &HeaderMap::new(), &c);
    assert_eq!(
        (r.ip, r.source, d),
        (ip(PROXY), IpSource::Peer, Decision::NoHeader)
    );
}

#[test]
fn proxy_protocol_source_is_the_effective_peer() {
    let c = xff_cfg();
    // PROXY source untrusted: it is the client, headers ignored.
    let r = resolve(
        ip(PROXY),
        Proxied::Client(ip("198.51.100.1")),
        &xff(&["1.2.3.4"]),
        &c,
    );
    assert_eq!(
        r,
        ClientIp {
            ip: ip("198.51.100.1"),
            source: IpSource::ProxyProtocol,
            peer: ip(PROXY)
        }
    );
    // PROXY source is itself a trusted proxy: its forwarding header is read.
    let r = resolve(
        ip(PROXY),
        Proxied::Client(ip("10.5.5.5")),
        &xff(&["1.2.3.4"]),
        &c,
    );
    assert_eq!((r.ip, r.source), (ip("1.2.3.4"), IpSource::Header));
    // ...and a malformed one falls back to the PROXY source, not the TCP peer.
    let r = resolve(ip(PROXY), Proxied::Client(ip("10.5.5.5")), &xff(&["x"]), &c);
    assert_eq!((r.ip, r.source), (ip("10.5.5.5"), IpSource::ProxyProtocol));
    // Mapped PROXY source.
    let r = resolve(
        ip(PROXY),
        Proxied::Client(ip("::ffff:198.51.100.1")),
        &HeaderMap::new(),
        &c,
    );
    assert_eq!(r.ip, ip("198.51.100.1"));
    // UNKNOWN: a relayed client the balancer cannot name; its forwarding header is its own.
    let (r, d) = resolve_explained(ip(PROXY), Proxied::Unknown, &xff(&["1.2.3.4"]), &c);
    assert_eq!(
        (r.ip, r.source, d),
        (ip(PROXY), IpSource::Peer, Decision::ProxyUnknown)
    );
}

fn fwd_cfg() -> ClientIpConfig {
    cfg(ForwardHeader::Forwarded, &["10.0.0.0/8", "fd00::/8"])
}

fn fwd(lines: &[&str]) -> HeaderMap {
    headers("forwarded", lines)
}

#[test]
fn forwarded_quoted_v6_and_ports() {
    let c = fwd_cfg();
    for (lines, want) in [
        (&["for=192.0.2.43"][..], "192.0.2.43"),
        (&["For=\"[2001:db8:cafe::17]:4711\""], "2001:db8:cafe::17"),
        (&["for=\"[2001:db8:cafe::17]\""], "2001:db8:cafe::17"),
        (&["for=\"192.0.2.43:8080\""], "192.0.2.43"),
        (&["for=192.0.2.43:8080"], "192.0.2.43"),
        (&["for=\"[::ffff:192.0.2.43]:_port\""], "192.0.2.43"),
        (&["for=192.0.2.60;proto=http;by=203.0.113.43"], "192.0.2.60"),
        (
            &["proto=https; for=192.0.2.60 ;by=\"[fd00::1]\""],
            "192.0.2.60",
        ),
        (&["for=192.0.2.43, for=198.51.100.17"], "198.51.100.17"),
        (
            &["for=192.0.2.43, for=10.1.1.1;by=x", "for=\"[fd00::2]\""],
            "192.0.2.43",
        ),
        (&["for=\"_hidden\", for=192.0.2.43"], "192.0.2.43"),
        // Quoted commas and semicolons do not split.
        (&["for=192.0.2.43;host=\"a,b;c\""], "192.0.2.43"),
    ] {
        let r = resolve(ip(PROXY), Proxied::No, &fwd(lines), &c);
        assert_eq!((r.ip, r.source), (ip(want), IpSource::Header), "{lines:?}");
    }
}

#[test]
fn forwarded_unknown_obfuscated_and_malformed() {
    let c = fwd_cfg();
    for (lines, why) in [
        (&["for=192.0.2.43, for=unknown"][..], Decision::Opaque),
        (&["for=192.0.2.43, for=_gazonk"], Decision::Opaque),
        (&["for=192.0.2.43, for=\"_gazonk\""], Decision::Opaque),
        (
            &["for=192.0.2.43, for=UNKNOWN:80, for=10.1.1.1"],
            Decision::Opaque,
        ),
        (&["for=192.0.2.43, proto=http"], Decision::Malformed),
        (&["for=192.0.2.43;for=192.0.2.44"], Decision::Malformed),
        (&["for=\"192.0.2.43"], Decision::Malformed),
        (&["for=\"1.2.3.4\\\"\""], Decision::Malformed),
        (&["for = 192.0.2.43"], Decision::Malformed),
        (&["for="], Decision::Malformed),
        (&["for=_"], Decision::Malformed),
        (&["192.0.2.43"], Decision::Malformed),
        (&["for=[2001:db8::1]:x"], Decision::Malformed),
    ] {
        let (r, d) = resolve_explained(ip(PROXY), Proxied::No, &fwd(lines), &c);
        assert_eq!(
            (r.ip, r.source, d),
            (ip(PROXY), IpSource::Peer, why),
            "{lines:?}"
        );
    }
    // Empty elements are skipped, as in X-Forwarded-For.
    for lines in [&["for=192.0.2.43,"][..], &[", for=192.0.2.43 ,,"]] {
        let (r, _) = resolve_explained(ip(PROXY), Proxied::No, &fwd(lines), &c);
        assert_eq!(
            (r.ip, r.source),
            (ip("192.0.2.43"), IpSource::Header),
            "{lines:?}"
        );
    }
}

#[test]
fn forwarded_client_garbage_on_the_left_is_not_read() {
    let c = fwd_cfg();
    for line in [
        "for=\"evil, for=192.0.2.43",
        "\\\"\"\", for=192.0.2.43",
        "for=unknown, for=192.0.2.43",
        "for=192.0.2.1;for=1.1.1.1, for=192.0.2.43, for=10.1.2.3",
    ] {
        let r = resolve(ip(PROXY), Proxied::No, &fwd(&[line]), &c);
        assert_eq!(r.ip, ip("192.0.2.43"), "{line}");
    }
}

#[test]
fn x_real_ip() {
    let c = cfg(ForwardHeader::XRealIp, &["10.0.0.0/8"]);
    let h = headers("x-real-ip", &["192.0.2.7"]);
    let r = resolve(ip(PROXY), Proxied::No, &h, &c);
    assert_eq!((r.ip, r.source), (ip("192.0.2.7"), IpSource::Header));
    let h = headers("x-real-ip", &[" [2001:db8::7]:99 "]);
    assert_eq!(
        resolve(ip(PROXY), Proxied::No, &h, &c).ip,
        ip("2001:db8::7")
    );
    // Ignored from an untrusted peer.
    assert_eq!(
        resolve(ip("192.0.2.1"), Proxied::No, &h, &c).ip,
        ip("192.0.2.1")
    );
    // Two lines: ambiguous.
    let h = headers("x-real-ip", &["192.0.2.7", "192.0.2.8"]);
    let (r, d) = resolve_explained(ip(PROXY), Proxied::No, &h, &c);
    assert_eq!((r.ip, d), (ip(PROXY), Decision::Ambiguous));
    // A list is not one value.
    let h = headers("x-real-ip", &["192.0.2.7, 192.0.2.8"]);
    let (r, d) = resolve_explained(ip(PROXY), Proxied::No, &h, &c);
    assert_eq!((r.ip, d), (ip(PROXY), Decision::Malformed));
    // The configured header only: X-Forwarded-For is not a fallback.
    let h = xff(&["192.0.2.9"]);
    assert_eq!(resolve(ip(PROXY), Proxied::No, &h, &c).ip, ip(PROXY));
}

#[test]
fn only_the_configured_header_is_read() {
    let c = xff_cfg();
    let h = fwd(&["for=192.0.2.43"]);
    assert_eq!(resolve(ip(PROXY), Proxied::No, &h, &c).ip, ip(PROXY));
}

#[test]
fn node_parser() {
    assert_eq!(
        parse_node(b"1.2.3.4", Syntax::Plain),
        Ok(Hop::Ip(ip("1.2.3.4")))
    );
    assert_eq!(parse_node(b"unknown", Syntax::Forwarded), Ok(Hop::Opaque));
    assert_eq!(parse_node(b"_a.b-c_d", Syntax::Forwarded), Ok(Hop::Opaque));
    assert_eq!(parse_node(b"_a.b-c_d", Syntax::Plain), Err(Malformed));
    assert_eq!(parse_node(b"1.2.3.4:_p", Syntax::Plain), Err(Malformed));
    assert_eq!(
        parse_node(b"1.2.3.4:_p", Syntax::Forwarded),
        Ok(Hop::Ip(ip("1.2.3.4")))
    );
    assert_eq!(parse_node(b"[1.2.3.4]", Syntax::Plain), Err(Malformed));
    assert_eq!(parse_node(b"[::1]x", Syntax::Plain), Err(Malformed));
    assert_eq!(parse_node(b"", Syntax::Plain), Err(Malformed));
    assert_eq!(forwarded_element(b"by=x"), Err(Malformed));
}

// ---- properties ----

/// Addresses the generated chains use: 10.0.0.0/8 and fd00::/8 are trusted.
fn arb_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..4).prop_map(|x| IpAddr::from([10, 0, 0, x])),
        (0u8..4).prop_map(|x| IpAddr::from([192, 0, 2, x])),
        (0u16..3).prop_map(|x| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, x])),
        (0u16..3).prop_map(|x| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, x])),
    ]
}

/// One XFF element spelling an address: plain, with a port, bracketed, mapped.
fn spell_xff(a: IpAddr, style: u8) -> String {
    match (a, style % 4) {
        (IpAddr::V4(v4), 1) => format!("{v4}:1234"),
        (IpAddr::V4(v4), 2) => format!("::ffff:{v4}"),
        (IpAddr::V4(v4), 3) => format!("[{}]:8", v4.to_ipv6_mapped()),
        (IpAddr::V6(v6), 1) => format!("[{v6}]:443"),
        (IpAddr::V6(v6), 2) => format!("[{v6}]"),
        (a, _) => a.to_string(),
    }
}

fn spell_fwd(a: IpAddr, style: u8) -> String {
    match (a, style % 3) {
        (IpAddr::V4(v4), 1) => format!("for=\"{v4}:80\";proto=https"),
        (IpAddr::V6(v6), 0) => format!("for=\"[{v6}]\""),
        (IpAddr::V6(v6), _) => format!("by=x;for=\"[{v6}]:_p\""),
        (a, _) => format!("for={a}"),
    }
}

/// Splits elements into header lines at the given cut points.
fn lines(elems: &[String], cuts: &[bool]) -> Vec<String> {
    let mut out = vec![String::new()];
    for (i, e) in elems.iter().enumerate() {
        let last = out.last_mut().unwrap();
        if !last.is_empty() {
            last.push_str(", ");
        }
        last.push_str(e);
        if cuts.get(i).copied().unwrap_or(false) && i + 1 < elems.len() {
            out.push(String::new());
        }
    }
    out
}

fn map_of(name: &str, lines: &[String]) -> HeaderMap {
    let mut h = HeaderMap::new();
    let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
    for l in lines {
        if let Ok(v) = HeaderValue::from_str(l) {
            h.append(name.clone(), v);
        }
    }
    h
}

/// Header-value-safe text: printable ASCII, space and tab.
fn arb_text() -> impl Strategy<Value = String> {
    "[ -~\t]{0,40}"
}

proptest! {
    /// Well-formed chains: exactly the right-most untrusted address, else the left-most.
    #[test]
    fn resolves_rightmost_untrusted(chain in prop::collection::vec((arb_addr(), any::<u8>()), 0..20),
                                    cuts in prop::collection::vec(any::<bool>(), 20),
                                    forwarded in any::<bool>()) {
        let (c, name) = if forwarded { (fwd_cfg(), "forwarded") } else { (xff_cfg(), "x-forwarded-for") };
        let elems: Vec<String> = chain.iter()
            .map(|&(a, s)| if forwarded { spell_fwd(a, s) } else { spell_xff(a, s) })
            .collect();
        let h = if chain.is_empty() { HeaderMap::new() } else { map_of(name, &lines(&elems, &cuts)) };
        let r = resolve(ip(PROXY), Proxied::No, &h, &c);
        let want = chain.iter().rev().map(|&(a, _)| a).find(|a| !is_trusted(*a, &c))
            .or(chain.first().map(|&(a, _)| a));
        match want {
            Some(w) => prop_assert_eq!((r.ip, r.source), (w, IpSource::Header)),
            None => prop_assert_eq!((r.ip, r.source), (ip(PROXY), IpSource::Peer)),
        }
    }

    /// With garbage mixed in anywhere: the answer is the peer or an address of the chain,
    /// and never left of the right-most untrusted address.
    #[test]
    fn never_skips_an_untrusted_hop(chain in prop::collection::vec(
                                        prop_oneof![
                                            3 => (arb_addr(), any::<u8>()).prop_map(|(a, s)| (Some(a), spell_xff(a, s))),
                                            1 => arb_text().prop_filter("no comma", |t| !t.contains(',')).prop_map(|t| (None, t)),
                                        ], 0..20),
                                    cuts in prop::collection::vec(any::<bool>(), 20)) {
        let c = xff_cfg();
        let elems: Vec<String> = chain.iter().map(|(_, s)| s.clone()).collect();
        let h = map_of("x-forwarded-for", &lines(&elems, &cuts));
        let r = resolve(ip(PROXY), Proxied::No, &h, &c);
        if r.ip == ip(PROXY) && r.source == IpSource::Peer {
            return Ok(());
        }
        prop_assert_eq!(r.source, IpSource::Header);
        // Elements that parse to an address (garbage may happen to be one).
        let parsed: Vec<Option<IpAddr>> = elems.iter()
            .map(|e| match parse_node(e.trim_matches([' ', '\t']).as_bytes(), Syntax::Plain) {
                Ok(Hop::Ip(a)) => Some(a),
                _ => None,
            })
            .collect();
        let pos = parsed.iter().rposition(|a| *a == Some(r.ip));
        prop_assert!(pos.is_some(), "{} not in chain", r.ip);
        let rightmost_untrusted = parsed.iter().rposition(|a| a.is_some_and(|a| !is_trusted(a, &c)));
        if let (Some(p), Some(u)) = (pos, rightmost_untrusted) {
            prop_assert!(p >= u, "answer at {} left of untrusted hop at {}", p, u);
        }
    }

    /// Whatever a client puts in front, a trusted proxy's appended address wins.
    #[test]
    fn client_prefix_cannot_move_the_answer(prefix in prop::collection::vec(
                                                prop_oneof![any::<u8>().prop_filter("header-safe", |b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))], 0..60),
                                            same_line in any::<bool>(),
                                            kind in 0u8..2) {
        let (c, name, tail) = if kind == 0 {
            (xff_cfg(), "x-forwarded-for", &b"198.51.100.7"[..])
        } else {
            (fwd_cfg(), "forwarded", &b"for=198.51.100.7"[..])
        };
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        let mut h = HeaderMap::new();
        if same_line {
            let mut v = prefix.clone();
            v.extend_from_slice(b", ");
            v.extend_from_slice(tail);
            h.append(name, HeaderValue::from_bytes(&v).unwrap());
        } else {
            h.append(name.clone(), HeaderValue::from_bytes(&prefix).unwrap());
            h.append(name, HeaderValue::from_bytes(tail).unwrap());
        }
        let r = resolve(ip(PROXY), Proxied::No, &h, &c);
        prop_assert_eq!((r.ip, r.source), (ip("198.51.100.7"), IpSource::Header));
    }

    /// Arbitrary header bytes never panic, and the answer is the peer or canonical.
    #[test]
    fn never_panics(values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4),
                    kind in 0u8..3) {
        let (c, name) = match kind {
            0 => (xff_cfg(), "x-forwarded-for"),
            1 => (fwd_cfg(), "forwarded"),
            _ => (cfg(ForwardHeader::XRealIp, &["10.0.0.0/8"]), "x-real-ip"),
        };
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        let mut h = HeaderMap::new();
        for v in &values {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.append(name.clone(), v);
            }
            let _ = parse_node(v, Syntax::Forwarded);
            let _ = forwarded_element(v);
        }
        let r = resolve(ip(PROXY), Proxied::No, &h, &c);
        prop_assert_eq!(r.ip, r.ip.to_canonical());
        prop_assert_eq!(r.peer, ip(PROXY));
    }

    #[test]
    fn never_panics_on_text(s in "\\PC{0,80}") {
        let _ = parse_node(s.as_bytes(), Syntax::Plain);
        let _ = parse_node(s.as_bytes(), Syntax::Forwarded);
        let _ = forwarded_element(s.as_bytes());
        let _ = super::parse::forwarded_line(s.as_bytes()).count();
        let _ = super::parse::xff_line(s.as_bytes()).count();
    }
}
