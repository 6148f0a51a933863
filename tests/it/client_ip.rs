//! Phases 1, 2 and 6 over real sockets: which address is the client (peer, forwarding
//! header from a trusted proxy, PROXY protocol), the allow/deny decision on it, and the
//! forwarding headers the upstream receives.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::harness::*;

/// Longest a raw exchange may take before the test fails.
const RAW_WAIT: Duration = Duration::from_secs(5);

fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// What a raw exchange got back: the bytes read before the gateway closed the connection.
struct Raw {
    text: String,
}

impl Raw {
    /// The status of the HTTP/1.1 answer, `None` when the gateway sent nothing.
    fn status(&self) -> Option<u16> {
        self.text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse().ok())
    }
}

/// Connect from `local` to `dst`, send `bytes`, read until the gateway closes (a reset
/// counts as a close). Panics if nothing closes within [`RAW_WAIT`].
async fn raw_from(local: IpAddr, dst: SocketAddr, bytes: &[u8]) -> Raw {
    let sock = if local.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .unwrap();
    sock.bind(SocketAddr::new(local, 0)).unwrap();
    let mut s = sock.connect(dst).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(RAW_WAIT, s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the gateway neither answered nor closed within {RAW_WAIT:?}"
    );
    Raw {
        text: String::from_utf8_lossy(&buf).to_string(),
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

/// A PROXY v2 header (`PROXY`, TCP over IPv4) announcing `src:sport -> dst:dport`.
fn v2_tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, command PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h
}

/// Phase 1 + 6: forwarding headers from an untrusted peer decide nothing and reach no one,
/// even when the gateway does trust some proxy (127.0.0.1).
#[tokio::test]
async fn untrusted_peer_forwarding_headers_are_ignored_and_dropped() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        r#"
[client_ip]
trusted_proxies = ["127.0.0.1/32"]

[[routes]]
name = "only1"
prefix = "/only1"
auth = "public"
upstream = "app"
ip = {{ allow = ["127.0.0.1"] }}
{}"#,
        public_routes(&up)
    ))
    .await;

    // Each spoofing header alone, then all at once: still 127.0.0.2, so refused.
    let spoofs: [&[(&str, &str)]; 4] = [
        &[("X-Forwarded-For", "127.0.0.1")],
        &[("X-Real-IP", "127.0.0.1")],
        &[("Forwarded", "for=127.0.0.1")],
        &[
            ("X-Forwarded-For", "127.0.0.1"),
            ("X-Real-IP", "127.0.0.1"),
            ("Forwarded", "for=127.0.0.1"),
        ],
    ];
    for headers in spoofs {
        let mut req = client_at(2).get(gw.url("/only1/x"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let got = code_of(req.send().await.unwrap()).await;
        assert_eq!(got, (403, "ip_denied".into()), "{headers:?}");
    }
    assert_eq!(up.count(), 0);

    // The real 127.0.0.1 passes: the refusal above was about the address.
    let resp = client_at(1).get(gw.url("/only1/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    // On a route that lets it through, none of the spoofed headers reach the upstream,
    // in any spelling; the gateway's own X-Forwarded-For names the real peer only.
    let resp = client_at(2)
        .get(gw.url("/other"))
        .header("X-Forwarded-For", "127.0.0.1, 6.6.6.6")
        .header("X-Real-IP", "6.6.6.6")
        .header("Forwarded", "for=6.6.6.6")
        .header("X_Forwarded_For", "6.6.6.6")
        .header("X_Real_IP", "6.6.6.6")
        .header("X-Forwarded-Host", "evil.example")
        .header("X-Forwarded-Proto", "http")
        .header("X-Original-URL", "/admin")
        .header("X_Rewrite_URL", "/admin")
        .header("X-HTTP-Method-Override", "DELETE")
        .header("X_HTTP_Method", "DELETE")
        .header("Client-IP", "6.6.6.6")
        .header("CF-Connecting-IP", "6.6.6.6")
        .header("X-Original-Forwarded-For", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/other");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.2"));
    assert_eq!(
        seen.headers.get_all("x-forwarded-for").iter().count(),
        1,
        "exactly one X-Forwarded-For line"
    );
    for h in [
        "x-real-ip",
        "forwarded",
        "x_forwarded_for",
        "x_real_ip",
        "x-original-url",
        "x_rewrite_url",
        "x-http-method-override",
        "x_http_method",
        "client-ip",
        "cf-connecting-ip",
        "x-original-forwarded-for",
    ] {
        assert_eq!(seen.header(h), None, "{h} reached the upstream");
    }
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_ne!(seen.header("x-forwarded-host"), Some("evil.example"));
}

/// Phase 1 behind trusted proxies: the right-most address that is not a trusted proxy is
/// the client, for the global deny list and for a route allow list naming only that
/// client; the upstream gets the chain with the peer appended.
#[tokio::test]
async fn trusted_proxy_rightmost_untrusted_hop_is_the_client() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        r#"
[client_ip]
trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]

[ip]
deny = ["198.51.100.66"]

[upstreams.app]
url = "{}"

[[routes]]
name = "pub"
prefix = "/pub"
auth = "public"
upstream = "app"

[[routes]]
name = "api"
prefix = "/api"
auth = "public"
upstream = "app"
ip = {{ allow = ["203.0.113.9"] }}
"#,
        up.url()
    ))
    .await;
    let c = client(); // from 127.0.0.1, a trusted proxy
    let pub_with = |xff: &'static str| c.get(gw.url("/pub")).header("X-Forwarded-For", xff);
    let denied = (403, "ip_denied".to_string());

    // The right-most untrusted address is denied.
    let got = code_of(pub_with("198.51.100.66").send().await.unwrap()).await;
    assert_eq!(got, denied);
    let got = code_of(pub_with("203.0.113.9, 198.51.100.66").send().await.unwrap()).await;
    assert_eq!(got, denied);
    // A trusted proxy (10.1.2.3) to its right is skipped.
    let got = code_of(pub_with("198.51.100.66, 10.1.2.3").send().await.unwrap()).await;
    assert_eq!(got, denied);
    assert_eq!(up.count(), 0);

    // The denied address left of the client is whatever the client wrote: not believed.
    let resp = pub_with("198.51.100.66, 203.0.113.9").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.last().header("x-forwarded-for"),
        Some("198.51.100.66, 203.0.113.9, 127.0.0.1")
    );

    // From a trusted proxy its own forwarding headers stay; an underscore spelling (the
    // client's, passed on by a proxy that forwards any name) and a method override do not.
    // Nor do the client-address headers of the families the gateway does not read the
    // client from (`header` is x-forwarded-for here), and empty XFF elements are nobody.
    let resp = pub_with("203.0.113.9, ")
        .header("X_Forwarded_For", "7.7.7.7")
        .header("X_Real_IP", "7.7.7.7")
        .header("X-Real-IP", "7.7.7.7")
        .header("Forwarded", "for=7.7.7.7")
        .header("X-HTTP-Method-Override", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    for h in [
        "x_forwarded_for",
        "x_real_ip",
        "x-real-ip",
        "forwarded",
        "x-http-method-override",
    ] {
        assert_eq!(seen.header(h), None, "{h} reached the upstream");
    }

    // A `Connection` header naming X-Forwarded-For does not erase the chain we pass on.
    let resp = client_h1()
        .get(gw.url("/pub"))
        .header("X-Forwarded-For", "203.0.113.9")
        .header("Connection", "X-Forwarded-For")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.last().header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );

    // /api admits 203.0.113.9 alone: passing proves it is the client, with another
    // trusted proxy in the chain; the upstream sees the chain plus our peer.
    let api = |xff: &'static str| c.get(gw.url("/api/me")).header("X-Forwarded-For", xff);
    // Empty elements are skipped when judging, as when passing the chain on: the client
    // judged is the one the upstream is told of.
    let resp = api(",203.0.113.9,, ").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.last().header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    let resp = api("1.1.1.1, 203.0.113.9, 10.1.2.3").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/api/me");
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("1.1.1.1, 203.0.113.9, 10.1.2.3, 127.0.0.1")
    );
    // Several X-Forwarded-For lines are one list, the last line its right end.
    let resp = c
        .get(gw.url("/api/me"))
        .header("X-Forwarded-For", "1.1.1.1")
        .header("X-Forwarded-For", "203.0.113.9, 10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.last().header("x-forwarded-for"),
        Some("1.1.1.1, 203.0.113.9, 10.1.2.3, 127.0.0.1")
    );

    let count = up.count();
    // Another untrusted hop to the right of it: that one is the client.
    let got = code_of(api("203.0.113.9, 1.1.1.1").send().await.unwrap()).await;
    assert_eq!(got, denied);
    // A malformed element where the walk reads: the peer (127.0.0.1) is the client.
    let got = code_of(api("203.0.113.9, not-an-ip").send().await.unwrap()).await;
    assert_eq!(got, denied);
    // Every hop a trusted proxy: no untrusted address to name, and 10.9.9.9 is not allowed.
    let got = code_of(api("10.9.9.9, 10.1.2.3").send().await.unwrap()).await;
    assert_eq!(got, denied);
    // The same header from an untrusted peer is ignored: the client is 127.0.0.2.
    let resp = client_at(2)
        .get(gw.url("/api/me"))
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(resp).await, denied);
    assert_eq!(up.count(), count);
}

#[tokio::test]
async fn a_client_named_in_forwarded_or_x_real_ip_reaches_the_upstream_in_x_forwarded_for() {
    let up = Upstream::start().await;
    for (header, name, value) in [
        (
            "forwarded",
            "Forwarded",
            "for=203.0.113.9;proto=http;by=10.0.0.1",
        ),
        ("x-real-ip", "X-Real-IP", "203.0.113.9"),
    ] {
        let gw = Gateway::start(&format!(
            "[client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]\nheader = \"{header}\"\n{}",
            route_to(&up.url(), "")
        ))
        .await;
        // The proxy lets the client's own X-Forwarded-* and other client-address headers
        // through (nginx's `proxy_set_header X-Real-IP $remote_addr` does): they name a
        // client the gateway did not decide on, and never reach the upstream.
        let resp = client()
            .get(gw.url("/x"))
            .header(name, value)
            .header("X-Forwarded-For", "6.6.6.6")
            .header("X-Forwarded-Proto", "http")
            .header("X-Forwarded-Host", "app.example")
            .header(
                if header == "forwarded" {
                    "X-Real-IP"
                } else {
                    "Forwarded"
                },
                "6.6.6.6",
            )
            .header("True-Client-IP", "6.6.6.6")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = up.last();
        assert_eq!(
            seen.header("x-forwarded-for"),
            Some("203.0.113.9, 127.0.0.1"),
            "{header}"
        );
        // The proxy's own scheme and host (its Forwarded `proto`, its X-Forwarded-Proto and
        // -Host) are believed: only the headers naming the client follow the family.
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{header}");
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some("app.example"),
            "{header}"
        );
        assert_eq!(
            seen.header(&name.to_ascii_lowercase()),
            Some(value),
            "{header} kept"
        );
        let other = if header == "forwarded" {
            "x-real-ip"
        } else {
            "forwarded"
        };
        assert_eq!(seen.header(other), None, "{header}: {other} dropped");
        assert_eq!(seen.header("true-client-ip"), None);
    }
}

/// Phase 2: a denied peer stays denied whatever it says it forwards for; deny beats allow;
/// route allow lists; `deny_file` with comments, relative to the config's folder.
#[tokio::test]
async fn deny_lists_allow_lists_and_deny_file() {
    let up = Upstream::start().await;
    let dir = std::env::temp_dir().join(format!(
        "iptgate-it-ip-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("deny.txt"),
        "# abusive clients\n\n127.0.0.77   # single address, trailing comment\n  127.0.0.80/30\n#127.0.0.90\n",
    )
    .unwrap();
    let body = format!(
        r#"
[ip]
allow = ["127.0.0.0/8"]
deny = ["127.0.0.66", "127.0.0.3"]
deny_file = "deny.txt"

[[routes]]
name = "only1"
prefix = "/only1"
auth = "public"
upstream = "app"
ip = {{ allow = ["127.0.0.1"] }}

[[routes]]
name = "both"
prefix = "/both"
auth = "public"
upstream = "app"
ip = {{ allow = ["127.0.0.4", "127.0.0.5"], deny = ["127.0.0.5/32"] }}
{}"#,
        public_routes(&up)
    );
    let text = Gateway::config_text(&dir, &plain(), &body);
    let gw = Gateway::start_text(dir, false, &text).await;
    let status = |n: u8, path: &'static str| {
        let url = gw.url(path);
        async move {
            code_of(
                client_at(n)
                    .get(url)
                    .header("X-Forwarded-For", "1.2.3.4")
                    .header("X-Real-IP", "1.2.3.4")
                    .header("Forwarded", "for=1.2.3.4")
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let denied = (403, "ip_denied".to_string());

    // A denied peer cannot escape by naming someone else.
    assert_eq!(status(66, "/").await, denied);
    // Deny beats allow: 127.0.0.3 is inside the global allow 127.0.0.0/8, and denied.
    assert_eq!(status(3, "/").await, denied);
    // deny_file entries, comments and blank lines skipped.
    assert_eq!(status(77, "/").await, denied);
    assert_eq!(status(80, "/").await, denied);
    assert_eq!(status(83, "/").await, denied);
    // A denied address hears 403 even for a path that is itself refused (400 for others).
    assert_eq!(status(66, "/a%2Fb").await, denied);
    assert_eq!(status(2, "/a%2Fb").await.0, 400);
    assert_eq!(up.count(), 0);
    assert_eq!(status(84, "/").await.0, 200);
    assert_eq!(status(90, "/").await.0, 200, "commented-out entry");
    assert_eq!(status(2, "/").await.0, 200);

    // Route allow list on top of the global policy.
    assert_eq!(status(1, "/only1").await.0, 200);
    assert_eq!(status(2, "/only1").await, denied);
    // Route deny beats route allow.
    assert_eq!(status(4, "/both").await.0, 200);
    assert_eq!(status(5, "/both").await, denied);
    assert_eq!(up.count(), 5);
}

/// The global allow list refuses a peer outside it (and outside means 403 ip_denied, with
/// nothing forwarded).
#[tokio::test]
async fn global_allow_list_refuses_others() {
    let up = Upstream::start().await;
    let gw = Gateway::start_with(
        plain(),
        &format!("[ip]\nallow = [\"127.0.0.1/32\"]\n{}", public_routes(&up)),
    )
    .await;
    let resp = client_at(2).get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers()["content-type"],
        "application/problem+json",
        "problem body"
    );
    assert_eq!(code_of(resp).await.1, "ip_denied");
    assert_eq!(up.count(), 0);
    let resp = client_at(1).get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// IPv4-mapped IPv6 peers on a dual-stack listener are their IPv4 address: for IPv4 deny
/// entries, for mapped deny entries, for trusted proxies, and in X-Forwarded-For.
#[tokio::test]
async fn ipv4_mapped_peers_are_ipv4() {
    let up = Upstream::start().await;
    let gw = Gateway::start_with(
        Opts {
            tls: false,
            listen: "[::]:0",
            server: "",
        },
        &format!(
            r#"
[client_ip]
trusted_proxies = ["127.0.0.1/32"]

[ip]
deny = ["127.0.0.66/32", "::ffff:127.0.0.70/128"]
{}"#,
            public_routes(&up)
        ),
    )
    .await;
    let port = gw.addr.port();
    let mapped = |n: u8| IpAddr::V6(Ipv4Addr::new(127, 0, 0, n).to_ipv6_mapped());

    // Source and destination ::ffff:127.0.0.66: the gateway's peer is the mapped address.
    let r = raw_from(mapped(66), SocketAddr::new(mapped(66), port), GET).await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert!(r.text.contains("ip_denied"), "{}", r.text);
    assert_eq!(up.count(), 0);

    // A plain IPv4 socket to the dual-stack listener also arrives as a mapped peer; the
    // mapped deny entry covers it.
    let r = raw_from(lo(70), SocketAddr::new(lo(1), port), GET).await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert_eq!(up.count(), 0);

    // ::ffff:127.0.0.1 passes, and is written as 127.0.0.1 upstream.
    let r = raw_from(mapped(1), SocketAddr::new(mapped(1), port), GET).await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(up.last().header("x-forwarded-for"), Some("127.0.0.1"));

    // ::ffff:127.0.0.1 is the trusted proxy 127.0.0.1: its header is believed, and a mapped
    // address in it is IPv4 too.
    for xff in [
        "X-Forwarded-For: 127.0.0.66\r\n",
        "X-Forwarded-For: ::ffff:127.0.0.66\r\n",
    ] {
        let r = raw_from(mapped(1), SocketAddr::new(mapped(1), port), &get("/", xff)).await;
        assert_eq!(r.status(), Some(403), "{xff}: {}", r.text);
    }
    assert_eq!(up.count(), 1);
    let r = raw_from(
        mapped(1),
        SocketAddr::new(mapped(1), port),
        &get("/", "X-Forwarded-For: 203.0.113.5\r\n"),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(
        up.last().header("x-forwarded-for"),
        Some("203.0.113.5, 127.0.0.1")
    );
}

fn proxy_config(up: &Upstream) -> String {
    format!(
        r#"
[client_ip]
trusted_proxies = ["127.0.0.1/32"]
proxy_protocol = true

[ip]
deny = ["203.0.113.66"]

[[routes]]
name = "blocked"
prefix = "/blocked"
auth = "public"
upstream = "app"
ip = {{ deny = ["203.0.113.7"] }}
{}"#,
        public_routes(up)
    )
}

/// PROXY v1 and v2 from a trusted proxy name the client: it is what the IP policy judges
/// and what the upstream sees.
#[tokio::test]
async fn proxy_protocol_from_trusted_proxy_names_the_client() {
    let up = Upstream::start().await;
    let gw = Gateway::start_with(plain(), &proxy_config(&up)).await;
    let from_proxy = |header: Vec<u8>, req: Vec<u8>| {
        let addr = gw.addr;
        async move { raw_from(lo(1), addr, &[header, req].concat()).await }
    };
    let v1 = |src: &str| format!("PROXY TCP4 {src} 127.0.0.1 5555 80\r\n").into_bytes();

    // v1: the announced source is the client; it is untrusted, so its own forwarding
    // headers are dropped.
    let r = from_proxy(
        v1("203.0.113.7"),
        get("/", "X-Forwarded-For: 9.9.9.9\r\nX-Real-IP: 9.9.9.9\r\n"),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.7"));
    assert_eq!(seen.header("x-real-ip"), None);
    assert_eq!(up.count(), 1);

    // The route denying 203.0.113.7 and the global deny of 203.0.113.66 both apply.
    let r = from_proxy(v1("203.0.113.7"), get("/blocked", "")).await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert!(r.text.contains("ip_denied"), "{}", r.text);
    let r = from_proxy(v1("203.0.113.66"), get("/", "")).await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert_eq!(up.count(), 1);

    // v2, built by hand.
    let r = from_proxy(
        v2_tcp4([203, 0, 113, 8], 5555, [127, 0, 0, 1], 80),
        get("/", ""),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(up.last().header("x-forwarded-for"), Some("203.0.113.8"));
    let r = from_proxy(
        v2_tcp4([203, 0, 113, 7], 5555, [127, 0, 0, 1], 80),
        get("/blocked/x", ""),
    )
    .await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    let r = from_proxy(
        v2_tcp4([203, 0, 113, 66], 5555, [127, 0, 0, 1], 80),
        get("/", ""),
    )
    .await;
    assert_eq!(r.status(), Some(403), "{}", r.text);
    assert_eq!(up.count(), 2);

    // UNKNOWN: the balancer relays a client it cannot name. An L4 balancer writes no
    // forwarding header, so one there is the client's own: not believed, not passed on.
    let r = from_proxy(
        b"PROXY UNKNOWN\r\n".to_vec(),
        get("/blocked/x", "X-Forwarded-For: 198.51.100.5, 10.0.0.1\r\n"),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(up.last().header("x-forwarded-for"), Some("127.0.0.1"));
    let r = from_proxy(
        b"PROXY UNKNOWN\r\n".to_vec(),
        get("/", "X-Forwarded-For: 203.0.113.66\r\n"),
    )
    .await;
    assert_eq!(
        r.status(),
        Some(200),
        "the client's XFF is not the client: {}",
        r.text
    );
    assert_eq!(up.count(), 4);

    // A trusted proxy must send the header: a bare request is closed unanswered.
    let r = raw_from(lo(1), gw.addr, GET).await;
    assert_eq!(r.status(), None, "answered: {}", r.text);
    assert_eq!(up.count(), 4);
}

/// PROXY headers from anyone else are refused by closing the connection; plain requests
/// from them are served with the TCP peer as the client.
#[tokio::test]
async fn proxy_protocol_from_untrusted_peer_is_closed() {
    let up = Upstream::start().await;
    let gw = Gateway::start_with(plain(), &proxy_config(&up)).await;
    let v1 = [
        b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n".as_slice(),
        GET,
    ]
    .concat();
    let v2 = [
        v2_tcp4([203, 0, 113, 9], 5555, [127, 0, 0, 1], 80).as_slice(),
        GET,
    ]
    .concat();
    for bytes in [v1, v2] {
        let r = raw_from(lo(2), gw.addr, &bytes).await;
        assert_eq!(r.status(), None, "answered: {}", r.text);
        assert!(r.text.is_empty(), "{}", r.text);
    }
    assert_eq!(up.count(), 0);

    let r = raw_from(
        lo(2),
        gw.addr,
        &get("/", "X-Forwarded-For: 203.0.113.9\r\n"),
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert_eq!(up.count(), 1);
    assert_eq!(up.last().header("x-forwarded-for"), Some("127.0.0.2"));
}

/// The redirect listener takes PROXY headers as the main one does: a load balancer speaking
/// PROXY protocol to both ports still gets its 308s.
#[tokio::test]
async fn the_redirect_listener_speaks_proxy_protocol_too() {
    let up = Upstream::start().await;
    let redirect = free_port();
    let server = format!("redirect_http = \"127.0.0.1:{redirect}\"");
    let o = Opts {
        server: &server,
        ..Opts::default()
    };
    let gw = Gateway::start_with(o, &proxy_config(&up)).await;
    let to = SocketAddr::new(lo(1), redirect);
    let v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n".to_vec();
    let r = raw_from(lo(1), to, &[v1.clone(), get("/x?a=1", "")].concat()).await;
    assert_eq!(r.status(), Some(308), "{}", r.text);
    let location = format!("location: https://gw:{}/x?a=1\r\n", gw.addr.port());
    assert!(
        r.text.to_ascii_lowercase().contains(&location),
        "{}",
        r.text
    );
    // `OPTIONS *` is sent to the root.
    let options = b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_vec();
    let r = raw_from(lo(1), to, &[v1.clone(), options].concat()).await;
    let location = format!("location: https://gw:{}/\r\n", gw.addr.port());
    assert!(
        r.text.to_ascii_lowercase().contains(&location),
        "{}",
        r.text
    );
    // Not required here: a balancer speaking PROXY on the TLS port only still gets its 308.
    let r = raw_from(lo(1), to, &get("/y", "")).await;
    assert_eq!(r.status(), Some(308), "{}", r.text);
    // A PROXY header from an untrusted peer closes the connection, as on the main listener.
    let r = raw_from(lo(2), to, &[v1, get("/x", "")].concat()).await;
    assert_eq!(r.status(), None, "{}", r.text);
}
