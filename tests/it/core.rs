//! Gateway core: routing, forwarding, streaming, timeouts, TLS/ALPN, drain, upgrades.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Send raw bytes to a plain-HTTP gateway and read the answer until close or `wait`.
async fn raw(addr: std::net::SocketAddr, req: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

/// The default app behind a plain-HTTP gateway with `server` lines in `[server]`.
async fn plain_public(server: &str) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let o = Opts { server, ..plain() };
    let gw = Gateway::start_with(o, &public_routes(&up)).await;
    (up, gw)
}

#[tokio::test]
async fn public_route_forwards_with_forwarding_headers() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public_routes(&up)).await;
    let resp = client()
        .get(gw.url("/hello?q=1"))
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Real-IP", "6.6.6.6")
        .header("Forwarded", "for=6.6.6.6")
        .header("Connection", "x-drop-me")
        .header("X-Drop-Me", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "yes");
    assert_eq!(resp.text().await.unwrap(), "ok");
    let seen = up.last();
    assert_eq!(seen.uri, "/hello?q=1");
    // Spoofed forwarding headers from an untrusted peer never pass; ours are set.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), None);
    assert_eq!(seen.header("forwarded"), None);
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert!(seen
        .header("x-forwarded-host")
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(
        seen.header("x-drop-me"),
        None,
        "Connection-named header removed"
    );
}

/// A client offering only `http/1.0` in ALPN (`curl --http1.0`) completes the handshake and
/// is served, as nginx does.
#[tokio::test]
async fn a_tls_client_offering_only_http_1_0_is_served() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public_routes(&up)).await;
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_client_config(&[b"http/1.0"])));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector.connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.0"[..]));
    s.write_all(b"GET /x HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let got = String::from_utf8_lossy(&buf);
    assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn h2_is_negotiated_by_alpn_and_forwarded_as_http1() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public_routes(&up)).await;
    let resp = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let h1 = client_h1();
    let resp = h1.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert_eq!(up.count(), 2);
    // HTTP/2 clients send each cookie as its own field; the HTTP/1.1 upstream gets one.
    for c in [client(), client_h1()] {
        let resp = c
            .get(gw.url("/x"))
            .header("cookie", "sid=abc")
            .header("cookie", "csrf=xyz")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = up.last();
        let cookies: Vec<&[u8]> = seen
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(
            cookies,
            vec![&b"sid=abc; csrf=xyz"[..]],
            "{:?}",
            resp.version()
        );
    }
}

#[tokio::test]
async fn a_head_refused_by_the_gateway_gets_the_headers_only_over_h2_and_http1() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public_routes(&up)).await;
    for (c, version) in [
        (client(), http::Version::HTTP_2),
        (client_h1(), http::Version::HTTP_11),
    ] {
        let get = c.get(gw.url("/a%2Fb")).send().await.unwrap();
        let whole = get.bytes().await.unwrap().len();
        assert!(whole > 0);
        let r = c.head(gw.url("/a%2Fb")).send().await.unwrap();
        assert_eq!((r.version(), r.status().as_u16()), (version, 400));
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{version:?}"
        );
        assert_eq!(
            r.headers()["content-length"].to_str().unwrap(),
            whole.to_string(),
            "{version:?}: the length a GET gets"
        );
        let body = r.bytes().await.expect("the stream ends cleanly");
        assert!(body.is_empty(), "{version:?}");
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn routing_exact_prefix_405_404_host_rewrite_strip() {
    let up = Upstream::start().await;
    let body = format!(
        r#"
[upstreams.app]
url = "{u}"

[[routes]]
name = "login"
path = "/login"
methods = ["POST"]
upstream = "app"
auth = "public"

[[routes]]
name = "api"
prefix = "/api"
methods = ["GET", "PUT"]
upstream = "app"
auth = "public"
strip_prefix = true

[[routes]]
name = "v1"
prefix = "/v1"
upstream = "app"
auth = "public"
rewrite = "/v2"

[[routes]]
name = "host"
prefix = "/h"
host = "api.example.com"
upstream = "app"
auth = "public"
"#,
        u = up.url()
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    assert_eq!(
        c.post(gw.url("/login"))
            .body("user=a")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c.get(gw.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(code_of(r).await, (405, "method_not_allowed".into()));
    let r = c.delete(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "GET, PUT, HEAD");
    // A route that allows GET answers HEAD too.
    let r = c.head(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        code_of(c.get(gw.url("/nothing")).send().await.unwrap()).await,
        (404, "no_route".into())
    );
    // Segment-aware prefix: /apix is not under /api.
    assert_eq!(c.get(gw.url("/apix")).send().await.unwrap().status(), 404);
    assert_eq!(
        c.get(gw.url("/api/users/7")).send().await.unwrap().status(),
        200
    );
    assert_eq!(up.last().uri, "/users/7");
    // The app learns the prefix taken off, to build its links under it.
    assert_eq!(up.last().header("x-forwarded-prefix"), Some("/api"));
    assert_eq!(
        c.get(gw.url("/v1/things?a=b"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(up.last().uri, "/v2/things?a=b");
    assert_eq!(
        up.last().header("x-forwarded-prefix"),
        None,
        "a rewrite is no strip"
    );
    // Host matching ignores case and port. (HTTP/1.1: over HTTP/2 a Host set by hand beside
    // the URL's :authority names another host, which is refused.)
    let r = c.get(gw.url("/h/x")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let c = client_h1();
    let r = c
        .get(gw.url("/h/x"))
        .header("Host", "API.Example.com:8443")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The root's trailing dot names the same host.
    let r = c
        .get(gw.url("/h/x"))
        .header("Host", "api.example.com.")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn rejected_paths_are_400_and_the_upstream_sees_the_normalized_path() {
    let up = Upstream::start().await;
    let gw = Gateway::start_with(plain(), &public_routes(&up)).await;
    for bad in [
        "/a%2Fb",
        "/a%2fb",
        "/a%5Cb",
        "/a%00b",
        "/a\\b",
        "/..",
        "/a/../../b",
        "/%2e%2e/x",
        "/%zz",
        "/x/..;/admin",
        "/admin;x/secret",
    ] {
        let req = format!("GET {bad} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let out = raw(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{bad}: {out}");
        if out.contains("problem+json") {
            assert!(out.contains("bad_request"), "{bad}: {out}");
        }
    }
    assert_eq!(up.count(), 0);
    let out = raw(
        gw.addr,
        b"GET //a/./b/../%63//d?x=%2F HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(up.last().uri, "/a/c/d?x=%2F");
}

#[tokio::test]
async fn an_ambiguous_or_missing_host_is_400() {
    let up = Upstream::start().await;
    let gw = Gateway::start_with(plain(), &public_routes(&up)).await;
    let cases = [
        ("no Host in HTTP/1.1", "GET / HTTP/1.1\r\n", 400),
        (
            "two Host lines",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
            400,
        ),
        ("invalid Host", "GET / HTTP/1.1\r\nHost: a b\r\n", 400),
        ("userinfo in Host", "GET / HTTP/1.1\r\nHost: u@a\r\n", 400),
        // An app reading these as `a` would serve a request the gateway routed as another host.
        (
            "a port of letters",
            "GET / HTTP/1.1\r\nHost: a:abc\r\n",
            400,
        ),
        ("a signed port", "GET / HTTP/1.1\r\nHost: a:+80\r\n", 400),
        (
            "a port past digits",
            "GET / HTTP/1.1\r\nHost: a:80x\r\n",
            400,
        ),
        (
            "an IPv6 host with a bad port",
            "GET / HTTP/1.1\r\nHost: [::1]:x\r\n",
            400,
        ),
        (
            "absolute-form with a bad port",
            "GET http://a:abc/ HTTP/1.1\r\nHost: a\r\n",
            400,
        ),
        (
            "absolute-form naming another host",
            "GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n",
            400,
        ),
        (
            "a transfer coding besides chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n",
            400,
        ),
        ("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n", 200),
        (
            "absolute-form naming the same host (case and port aside)",
            "GET http://A.example:80/ HTTP/1.1\r\nHost: a.example\r\n",
            200,
        ),
    ];
    for (why, req, status) in cases {
        let req = format!("{req}Connection: close\r\n\r\n");
        let out = raw(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
        assert!(out.contains(&format!(" {status} ")), "{why}: {out}");
        if status == 400 {
            assert!(out.contains("bad_request"), "{why}: {out}");
        }
    }
    assert_eq!(
        up.count(),
        2,
        "only the two valid requests reached the upstream"
    );
    // The upstream hears HTTP/1.1, which needs a Host: the HTTP/1.0 request without one
    // gets the target's authority.
    let authority = up.url().trim_start_matches("http://").to_string();
    assert_eq!(
        up.all()[0].header("host"),
        Some(authority.as_str()),
        "{:?}",
        up.all()[0]
    );
}

/// One HTTP/2 request over TLS (ALPN h2) with exactly this URI, whose authority becomes
/// `:authority`, and these headers; the answer's status.
async fn h2_status(gw: &Gateway, uri: &str, headers: &[(&str, &str)]) -> u16 {
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_client_config(&[b"h2"])));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Empty::<Bytes>::new()).unwrap();
    send.send_request(req).await.unwrap().status().as_u16()
}

/// A `host` route needs a token; everything else is public. An HTTP/2 request whose
/// `:authority` carries userinfo or a port of letters is refused: an app reading
/// `x@admin.example` or `admin.example:abc` as `admin.example` would serve the admin host a
/// request the gateway routed as public. A Host header beside `:authority` (reqwest sends one
/// set by hand there) must name the same host.
#[tokio::test]
async fn http2_authority_must_be_one_valid_host() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "{TOKEN}\n[upstreams.app]\nurl = \"{}\"\n\n[[routes]]\nname = \"admin\"\nprefix = \"/\"\nhost = \"admin.example\"\nauth = \"token\"\nupstream = \"app\"\n\n[[routes]]\nname = \"rest\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n",
        up.url()
    ))
    .await;
    assert_eq!(h2_status(&gw, "https://admin.example/", &[]).await, 401);
    assert_eq!(h2_status(&gw, "https://public.example/", &[]).await, 200);
    assert_eq!(
        h2_status(
            &gw,
            "https://public.example/",
            &[("host", "public.example:443")]
        )
        .await,
        200,
        "the same host twice"
    );
    assert_eq!(
        h2_status(&gw, "https://public.example/", &[("host", "admin.example")]).await,
        400,
        "a Host naming another host than :authority is malformed (RFC 9113 §8.3.1)"
    );
    for (why, uri, headers) in [
        ("userinfo", "https://x@admin.example/", &[][..]),
        ("a port of letters", "https://admin.example:abc/", &[][..]),
        (
            "a Host with a port of letters",
            "https://public.example/",
            &[("host", "admin.example:abc")][..],
        ),
        ("a comma", "https://admin.example,evil/", &[][..]),
        (
            "a Host with a comma",
            "https://public.example/",
            &[("host", "evil,admin.example")][..],
        ),
    ] {
        assert_eq!(h2_status(&gw, uri, headers).await, 400, "{why}");
    }
    assert_eq!(up.count(), 2);
}

/// HTTP/1: a Host holding a sub-delimiter (`,` `;` `!` `&` `=` …) is refused, since apps split
/// such values differently and would read the admin host in them; a method with lower-case
/// letters is refused, since it would skip a route naming the method while frameworks that
/// upper-case it serve it as that route's; so is CONNECT (no forward proxying). An IPv6
/// literal and `_` in a name are fine.
#[tokio::test]
async fn hosts_with_sub_delimiters_and_lower_case_methods_are_refused() {
    let (up, gw) = plain_public("").await;
    for host in [
        "api.example.com,evil",
        "evil,api.example.com",
        "api.example.com;x",
        "a!b",
        "a&b=c",
        "a%41b",
        "a b",
    ] {
        let got = raw(
            gw.addr,
            format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 400"), "{host}: {got}");
    }
    for method in ["post", "Post", "gEt", "CONNECT"] {
        let got = raw(
            gw.addr,
            format!(
                "{method} /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 400"), "{method}: {got}");
    }
    assert_eq!(up.count(), 0);
    for host in ["[::1]:8443", "[::1]", "my_host.internal", "a~b:80"] {
        let got = raw(
            gw.addr,
            format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200"), "{host}: {got}");
    }
}

/// An HTTP/2 peer that has gone (it never answers a PING, so the idle drain's GOAWAY never
/// completes) does not keep its connection: it is closed soon after the idle timeout.
#[tokio::test]
async fn a_silent_http2_peer_is_closed_after_the_idle_timeout() {
    let (_up, gw) = plain_public("idle_timeout = \"1s\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // The connection preface and an empty SETTINGS frame, then nothing ever again.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "still open after {:?}", started.elapsed());
}

/// A client that stops reading a large response does not hold its connection (nor the
/// upstream's) for good: quiet for twice `idle_timeout`, the response is cut, and the upstream
/// connection with it.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_twice_the_idle_timeout() {
    stalled_reader_is_cut(false).await;
}

#[tokio::test]
async fn a_tls_client_that_stops_reading_is_cut_after_twice_the_idle_timeout() {
    stalled_reader_is_cut(true).await;
}

/// An upstream for one request on one connection: it reads the request head, then `answer`
/// writes to the connection as it likes. Its address.
async fn one_request_upstream<F, Fut>(answer: F) -> std::net::SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        answer(s).await;
    });
    addr
}

async fn stalled_reader_is_cut(tls: bool) {
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<()>();
    let addr = one_request_upstream(|mut s| async move {
        // A 1 GiB body, written until the gateway stops taking it and then lets go.
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n")
            .await;
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..16_384 {
            if s.write_all(&chunk).await.is_err() {
                let _ = cut_tx.send(());
                return;
            }
        }
    })
    .await;
    let body = route_to(&format!("http://{addr}"), "");
    let o = Opts {
        tls,
        server: "idle_timeout = \"1s\"",
        ..Opts::default()
    };
    let gw = Gateway::start_with(o, &body).await;
    let get = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
    let client: Box<dyn std::any::Any> = if tls {
        let mut c = tls_connect(gw.addr).await;
        c.write_all(get).await.unwrap();
        Box::new(c)
    } else {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(get).await.unwrap();
        Box::new(c)
    };
    // Never read: the buffers fill up and nothing moves.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), cut_rx)
        .await
        .expect("the stalled response was never cut")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(client);
}

/// An upstream answering one request with `n` server-sent events 700 ms apart.
async fn quiet_event_stream(n: usize) -> std::net::SocketAddr {
    one_request_upstream(move |mut s| async move {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            let event = format!("data: {i}\n\n");
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            if s.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
    })
    .await
}

/// A streamed response (server-sent events) whose upstream is quiet for longer than
/// `idle_timeout` between events is not cut: the client is reading, there is just nothing to
/// send. Over TLS and HTTP/1.1, as browsers' EventSource often connects.
#[tokio::test]
async fn a_quiet_event_stream_is_not_cut_while_the_client_reads() {
    let addr = quiet_event_stream(4).await;
    let o = Opts {
        server: "idle_timeout = \"300ms\"",
        ..Opts::default()
    };
    let gw = Gateway::start_with(o, &route_to(&format!("http://{addr}"), "")).await;
    let mut c = tls_connect(gw.addr).await;
    c.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"0\r\n\r\n") {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the stream never ended");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    for i in 0..4 {
        assert!(
            got.contains(&format!("data: {i}\n")),
            "event {i} missing: {got}"
        );
    }
    assert!(got.ends_with("0\r\n\r\n"), "cut before its end: {got}");
}

/// An HTTP/2 client of `gw` that PINGs every 100 ms, idle or not, with flow-control windows
/// of `window` bytes (hyper's large defaults when `None`); and a receiver told when its
/// connection has closed.
async fn pinging_h2_client(
    gw: &Gateway,
    window: Option<u32>,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_client_config(&[b"h2"])));
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let mut b = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true);
    if let Some(w) = window {
        b.initial_stream_window_size(w)
            .initial_connection_window_size(w);
    }
    let (send, conn) = b
        .handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = closed_tx.send(());
    });
    (send, closed)
}

/// An HTTP/2 connection is idle by its streams, not its bytes: one that only PINGs after its
/// last request is closed at `idle_timeout` (PINGs cost nothing and would hold a place among
/// `max_connections` for good), while a quiet event stream on one is not cut.
#[tokio::test]
async fn an_http2_connection_that_only_pings_is_idle_but_a_quiet_stream_is_not() {
    let addr = quiet_event_stream(3).await;
    let o = Opts {
        server: "idle_timeout = \"300ms\"",
        ..Opts::default()
    };
    let gw = Gateway::start_with(o, &route_to(&format!("http://{addr}"), "")).await;

    let (mut send, closed) = pinging_h2_client(&gw, None).await;
    // The quiet stream is read to its end, its gaps longer than idle_timeout notwithstanding.
    let req = http::Request::get(format!("https://localhost:{}/events", gw.addr.port()))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("the stream ran to its end")
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    for i in 0..3 {
        assert!(body.contains(&format!("data: {i}\n")), "event {i}: {body}");
    }
    // Then only PINGs: the connection is closed as idle.
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("a connection that only pings is closed as idle")
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
}

/// The response to a pinging HTTP/2 client (flow-control windows of `window` bytes) asking
/// for a `size`-byte body, through a gateway with `idle_timeout = "300ms"`; and a receiver
/// told when the connection has closed. The gateway and its upstream live as long as the
/// returned guard.
async fn big_download_over_h2(
    size: usize,
    window: u32,
) -> (
    http::Response<hyper::body::Incoming>,
    tokio::sync::oneshot::Receiver<()>,
    (Upstream, Gateway),
) {
    let big = "x".repeat(size);
    let handler: Handler = std::sync::Arc::new(move |_: &Seen| respond(200, &[], &big));
    let up = Upstream::with(handler).await;
    let o = Opts {
        server: "idle_timeout = \"300ms\"",
        ..Opts::default()
    };
    let gw = Gateway::start_with(o, &public_routes(&up)).await;
    let (mut send, closed) = pinging_h2_client(&gw, Some(window)).await;
    let req = http::Request::get(format!("https://localhost:{}/big", gw.addr.port()))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    (resp, closed, (up, gw))
}

/// An HTTP/2 client that reads slowly, but steadily, through a small window is never cut,
/// however long one chunk of the upstream's answer takes to pass its window.
#[tokio::test]
async fn an_http2_client_that_reads_slowly_is_not_cut() {
    let (resp, _closed, _gw) = big_download_over_h2(1 << 19, 16_384).await;
    // 16 KiB every 40 ms: ~400 KB/s, the whole 512 KiB in ~1.3 s, over four idle timeouts.
    let mut body = resp.into_body();
    let mut got = 0;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.expect("the download is not cut");
        if let Some(d) = frame.data_ref() {
            got += d.len();
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(got, 1 << 19);
}

/// An HTTP/2 client that stops reading a response (its flow-control window shut) while it
/// PINGs is cut as an HTTP/1.1 one is, so that it cannot hold its connection and the upstream
/// connection behind it for good.
#[tokio::test]
async fn an_http2_client_that_stops_reading_is_cut() {
    // Windows as small as HTTP/2 starts them: the 1 MiB body cannot all be sent ahead. The
    // head is read, the body never: the window shuts after 64 KiB.
    let (resp, closed, _gw) = big_download_over_h2(1 << 20, 65_535).await;
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("a client that stopped reading is cut")
        .unwrap();
    drop(resp);
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let up = Upstream::start().await;
    let body = format!(
        r#"
[upstreams.dead]
url = "http://{dead_addr}"
connect_timeout = "1s"

[upstreams.slow]
url = "{u}"
timeout = "300ms"

[[routes]]
name = "dead"
prefix = "/dead"
upstream = "dead"
auth = "public"

[[routes]]
name = "slow"
prefix = "/"
upstream = "slow"
auth = "public"
"#,
        u = up.url()
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    assert_eq!(
        code_of(c.get(gw.url("/dead")).send().await.unwrap()).await,
        (502, "upstream_unavailable".into())
    );
    let t = Instant::now();
    let r = c.get(gw.url("/sleep/3000")).send().await.unwrap();
    assert_eq!(code_of(r).await, (504, "upstream_timeout".into()));
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "504 came after {:?}",
        t.elapsed()
    );
    assert_eq!(
        c.get(gw.url("/sleep/10")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let up = Upstream::start().await;
    let o = Opts {
        server: "max_request_body = \"1KiB\"",
        ..Opts::default()
    };
    let gw = Gateway::start_with(o, &public_routes(&up)).await;
    let c = client();
    let r = c
        .post(gw.url("/up"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (413, "payload_too_large".into()));
    // Without a Content-Length (chunked stream), the limit still holds.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 512]))),
    );
    let h1 = client_h1();
    let r = h1
        .post(gw.url("/up"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .post(gw.url("/up"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().body.len(), 1000);
}

/// An upstream (one connection) that streams each request body through, counting it, and
/// answers the count; `first` hears when the first chunk arrives. Returns the gateway config
/// body routing everything to it.
async fn counting_upstream(first: Option<tokio::sync::oneshot::Sender<()>>) -> String {
    counting_upstream_with(first, "").await
}

/// [`counting_upstream`] with `extra` lines in its `[upstreams.app]`.
async fn counting_upstream_with(
    first: Option<tokio::sync::oneshot::Sender<()>>,
    extra: &str,
) -> String {
    use http_body_util::BodyExt;
    let first = std::sync::Arc::new(std::sync::Mutex::new(first));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let first = first.clone();
            async move {
                let mut body = req.into_body();
                let mut total = 0u64;
                while let Some(f) = body.frame().await {
                    if let Ok(d) = f.unwrap().into_data() {
                        total += d.len() as u64;
                        if let Some(tx) = first.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    Bytes::from(total.to_string()),
                )))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    });
    route_to(&format!("http://{addr}"), extra)
}

#[tokio::test]
async fn the_upstream_timeout_counts_from_the_end_of_the_request_body() {
    // `timeout` is "until response headers": an upload longer than it, still moving (at 1 KiB/s
    // at least), is not cut off; a body that stops moving for longer than it is, and so is one
    // that trickles.
    let body = counting_upstream_with(None, "timeout = \"400ms\"").await;
    let gw = Gateway::start(&body).await;
    let slow = futures_util::stream::unfold(0u32, |i| async move {
        if i == 8 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 4096])),
            i + 1,
        ))
    });
    let t = Instant::now();
    let resp = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(slow))
        .send()
        .await
        .unwrap();
    assert!(
        t.elapsed() > Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(resp.status(), 200, "a 1.2 s upload under a 400 ms timeout");
    assert_eq!(resp.text().await.unwrap(), "32768");

    // Ten bytes every 150 ms keep moving, but far below 1 KiB/s: cut off.
    let body = counting_upstream_with(None, "timeout = \"400ms\"").await;
    let gw = Gateway::start(&body).await;
    let trickle = futures_util::stream::unfold(0u32, |i| async move {
        if i == 20 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789")),
            i + 1,
        ))
    });
    let t = Instant::now();
    let resp = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(trickle))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(resp).await, (504, "upstream_timeout".into()));
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );

    let body = counting_upstream_with(None, "timeout = \"400ms\"").await;
    let gw = Gateway::start(&body).await;
    let stalled = futures_util::stream::unfold(0u32, |i| async move {
        match i {
            0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"start")), 1)),
            _ => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                None
            }
        }
    });
    let t = Instant::now();
    let resp = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(stalled))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(resp).await, (504, "upstream_timeout".into()));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test]
async fn request_bodies_stream_through_unbuffered() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let body = counting_upstream(Some(tx)).await;
    let gw = Gateway::start(&body).await;
    let (btx, brx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stream =
        futures_util::stream::unfold(
            brx,
            |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
        );
    let req = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let sender = async move {
        btx.send(Ok(Bytes::from_static(b"first chunk")))
            .await
            .unwrap();
        // The upstream must see the first chunk while the client still holds the rest.
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("upstream saw the first chunk before the body ended")
            .unwrap();
        btx.send(Ok(Bytes::from_static(b"-last"))).await.unwrap();
    };
    let (resp, ()) = tokio::join!(req, sender);
    let resp = resp.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "16");
}

/// Resident memory of this process (the gateway runs in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test]
async fn a_large_upload_passes_in_bounded_memory() {
    const SIZE: u64 = 512 << 20;
    let body = counting_upstream(None).await;
    let o = Opts {
        server: "max_request_body = \"1GiB\"",
        ..plain()
    };
    let gw = Gateway::start_with(o, &body).await;

    let before = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 256 << 10];
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < SIZE {
            wr.write_all(&chunk).await.unwrap();
            sent += chunk.len() as u64;
        }
        wr
    });
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), rd.read_to_end(&mut out))
        .await
        .expect("upload finished")
        .unwrap();
    drop(writer.await.unwrap());
    sampler.abort();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with(&SIZE.to_string()), "{out}");
    let grew = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    assert!(
        grew < 128 << 20,
        "memory grew by {} MiB for a {} MiB upload",
        grew >> 20,
        SIZE >> 20
    );
}

#[tokio::test]
async fn header_read_timeout_closes_a_slow_client() {
    let (up, gw) = plain_public("header_read_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    // Closed (EOF or reset, either is a close) rather than left open.
    let _closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the gateway closed the slow connection");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(up.count(), 0);
}

/// The first head is due `header_read_timeout` from the connection's start: a slow TLS
/// handshake comes out of that time, and does not buy the head a timeout of its own.
#[tokio::test]
async fn the_first_head_is_due_from_the_connections_start_tls_included() {
    let up = Upstream::start().await;
    let o = Opts {
        server: "header_read_timeout = \"1200ms\"",
        ..Opts::default()
    };
    let gw = Gateway::start_with(o, &public_routes(&up)).await;
    let t = Instant::now();
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_client_config(&[b"http/1.1"])));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector
        .connect(name, tcp)
        .await
        .expect("handshake in time");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        t.elapsed() < Duration::from_millis(1700),
        "closed {:?} after the connection began",
        t.elapsed()
    );
    assert_eq!(up.count(), 0);
}

/// With `idle_timeout` shorter than `header_read_timeout`, a head that stops (long enough to
/// look idle) and then dribbles on is still closed by the header read timeout: the idle
/// timeout does not take a head in progress out of its deadline.
#[tokio::test]
async fn a_head_dribbled_after_an_idle_pause_is_still_closed() {
    let up = Upstream::start().await;
    for tls in [false, true] {
        let o = Opts {
            tls,
            server: "header_read_timeout = \"1500ms\"\nidle_timeout = \"300ms\"",
            ..Opts::default()
        };
        let gw = Gateway::start_with(o, &public_routes(&up)).await;
        let head: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let t = Instant::now();
        let dribble = |mut s: Box<dyn AsyncWriteRead>| async move {
            s.write_all(&head[..20]).await.unwrap();
            // Quiet past the idle timeout, then one byte every 200 ms.
            tokio::time::sleep(Duration::from_millis(500)).await;
            for b in &head[20..] {
                if s.write_all(&[*b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if t.elapsed() > Duration::from_secs(6) {
                    return false;
                }
            }
            false
        };
        let s: Box<dyn AsyncWriteRead> = if tls {
            Box::new(tls_connect(gw.addr).await)
        } else {
            Box::new(TcpStream::connect(gw.addr).await.unwrap())
        };
        assert!(dribble(s).await, "tls={tls}: never closed");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "tls={tls}: {:?}",
            t.elapsed()
        );
    }
    assert_eq!(up.count(), 0);
}

trait AsyncWriteRead: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncWriteRead for T {}

#[tokio::test]
async fn header_read_timeout_closes_a_connection_that_sends_nothing() {
    let up = Upstream::start().await;
    for tls in [false, true] {
        let o = Opts {
            tls,
            server: "header_read_timeout = \"300ms\"\nidle_timeout = \"60s\"",
            ..Opts::default()
        };
        let gw = Gateway::start_with(o, &public_routes(&up)).await;
        let t = Instant::now();
        if tls {
            // The handshake completes; then nothing is sent.
            let mut s = tls_connect(gw.addr).await;
            let mut buf = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
            assert!(r.is_ok(), "tls: the silent connection was closed");
        } else {
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            let mut buf = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
            assert!(r.is_ok(), "plain: the silent connection was closed");
        }
        assert!(t.elapsed() < Duration::from_secs(3), "tls={tls}");
    }
}

#[tokio::test]
async fn keep_alive_quiet_longer_than_the_header_timeout_stays_open() {
    let (up, gw) = plain_public("header_read_timeout = \"300ms\"\nidle_timeout = \"60s\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for round in 0..2 {
        if round == 1 {
            // Quiet between requests is the idle timeout's business, not the header one's.
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head:?}");
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_slow_request_body_is_not_a_slow_head() {
    let (up, gw) = plain_public("header_read_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        .await
        .unwrap();
    // The body takes 800 ms, well past the header read timeout.
    for b in b"abcdefgh" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(&[*b]).await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    assert_eq!(&up.last().body[..], b"abcdefgh");
}

#[tokio::test]
async fn connections_past_max_connections_wait_until_one_closes() {
    let (_up, gw) = plain_public("max_connections = 2").await;
    let get = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
    // Read one keep-alive response (the default app answers "ok" with a length).
    async fn answer(s: &mut TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let mut got = String::new();
        while !got.ends_with("ok") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        got
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(get).await.unwrap();
        assert!(answer(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // A third connection is left in the kernel's backlog: no answer while two are open...
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    third.write_all(get).await.unwrap();
    let mut buf = [0u8; 64];
    let waited = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(waited.is_err(), "answered past max_connections");
    // ...and served as soon as one of them closes.
    drop(held.pop());
    let got = tokio::time::timeout(Duration::from_secs(5), answer(&mut third))
        .await
        .expect("served after a connection closed");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (_up, gw) = plain_public("idle_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed by the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_refuses_new_ones() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(&public_routes(&up)).await;
    let c = client();
    let admin = gw.admin_url("/readyz");
    assert_eq!(
        plain_client().get(&admin).send().await.unwrap().status(),
        200
    );
    let url = gw.url("/sleep/800");
    let inflight = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let running = gw.take_running();
    running.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = plain_client()
        .get(&admin)
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(matches!(ready, Ok(503)), "readyz while draining: {ready:?}");
    assert_eq!(
        inflight.await.unwrap().unwrap(),
        200,
        "in-flight request completed"
    );
    running.wait().await;
    assert!(
        client().get(gw.url("/")).send().await.is_err(),
        "no longer accepting"
    );
    assert!(
        plain_client().get(&admin).send().await.is_err(),
        "the admin listener is closed once the drain is over"
    );
}

#[tokio::test]
async fn a_reloaded_shutdown_grace_bounds_the_next_drain() {
    let up = Upstream::start().await;
    let o = Opts {
        server: "shutdown_grace = \"30s\"",
        ..Opts::default()
    };
    let mut gw = Gateway::start_with(o, &public_routes(&up)).await;
    let text = std::fs::read_to_string(gw.config_path())
        .unwrap()
        .replace("shutdown_grace = \"30s\"", "shutdown_grace = \"300ms\"");
    assert_eq!(gw.reload_with(&text).await, 200);
    let url = gw.url("/sleep/10000");
    let c = client();
    let stuck = tokio::spawn(async move { c.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let running = gw.take_running();
    let t = Instant::now();
    running.shutdown().await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the drain took {:?}: the reloaded 300ms grace did not apply",
        t.elapsed()
    );
    stuck.abort();
}

#[tokio::test]
async fn sigterm_drains_the_process() {
    signal_drains(0, "TERM", false).await;
}

/// `workers = 1` runs on tokio's current-thread scheduler: the same process-level behaviour.
#[tokio::test]
async fn sigterm_drains_the_single_threaded_process() {
    signal_drains(1, "TERM", false).await;
}

/// Ctrl-C in a terminal: the same drain.
#[tokio::test]
async fn sigint_drains_the_process() {
    signal_drains(0, "INT", false).await;
}

/// A second signal during a drain stops the process at once (a second Ctrl-C), exit 1.
#[tokio::test]
async fn a_second_signal_during_the_drain_stops_at_once() {
    signal_drains(0, "TERM", true).await;
}

async fn signal_drains(workers: usize, signal: &str, twice: bool) {
    let up = Upstream::start().await;
    let dir = std::env::temp_dir().join(format!(
        "iptgate-sig-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = Gateway::config_text(
        &dir,
        &Opts {
            tls: false,
            listen: &format!("127.0.0.1:{port}"),
            server: &format!("shutdown_grace = \"5s\"\nworkers = {workers}"),
        },
        &public_routes(&up),
    )
    .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"off\"");
    std::fs::write(dir.join("gateway.toml"), text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
        .args(["run", "--config"])
        .arg(dir.join("gateway.toml"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let c = plain_client();
    let mut up_ok = false;
    for _ in 0..100 {
        if c.get(format!("{url}/")).send().await.is_ok() {
            up_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up_ok, "gateway process did not come up");
    let slow = tokio::spawn({
        let c = c.clone();
        let u = format!("{url}/sleep/{}", if twice { 4000 } else { 1000 });
        async move { c.get(u).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = child.id().unwrap().to_string();
    let kill = || {
        let st = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(st.success());
    };
    kill();
    if twice {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        kill();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("process exited")
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(status.code(), Some(1));
        assert!(
            slow.await.unwrap().is_err(),
            "the in-flight request was cut"
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "in-flight request survived SIG{signal}"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("process exited after draining")
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    let addr = ws_echo_upstream().await;
    let body = route_to(&format!("http://{addr}"), "");
    let o = Opts {
        tls: false,
        server: "header_read_timeout = \"300ms\"\nidle_timeout = \"1500ms\"",
        ..Opts::default()
    };
    let gw = Gateway::start_with(o, &body).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for (i, text) in ["hello through iptgate", "still there", "and there"]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            // Past the header read timeout: an upgraded connection has no heads to time. Each
            // pause is within the idle timeout, their sum beyond it: a tunnel in use stays.
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), text);
    }
    // Quiet for longer than idle_timeout: the gateway closes the tunnel.
    let t = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the quiet tunnel is closed");
    assert!(!matches!(end, Some(Ok(ref m)) if m.is_text()), "{end:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
}

/// A WebSocket echo server upstream: its address.
async fn ws_echo_upstream() -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A connection that became a WebSocket tunnel still holds its place among `max_connections`
/// and in the active-connections gauge until the tunnel closes: otherwise any client could
/// hold sockets past the limit, unseen.
#[tokio::test]
async fn a_websocket_tunnel_keeps_its_connection_slot_until_it_closes() {
    use futures_util::{SinkExt, StreamExt};
    let addr = ws_echo_upstream().await;
    let o = Opts {
        tls: false,
        server: "max_connections = 1\nshutdown_grace = \"30s\"",
        ..Opts::default()
    };
    let gw = Gateway::start_with(o, &route_to(&format!("http://{addr}"), "")).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(echo, Ok(Some(Ok(ref m))) if m.is_text()),
        "{echo:?}"
    );
    // The gateway's own count (the metrics gauge is process-wide, shared by the tests).
    let state = &gw.running().state;
    assert_eq!(state.connections.load(Ordering::SeqCst), 1);
    assert_eq!(state.tunnels.load(Ordering::SeqCst), 1);
    // A second connection waits while the tunnel is open...
    let get = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut second = TcpStream::connect(gw.addr).await.unwrap();
    second.write_all(get).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let waited = tokio::time::timeout(Duration::from_millis(700), second.read(&mut buf)).await;
    assert!(waited.is_err(), "answered past max_connections");
    // ...and is served once the tunnel has closed.
    drop(ws);
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("served after the tunnel closed")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 "), "{head:?}");
    drop(second);
    // A drain does not wait for a tunnel (it has no request to finish): with one open and a
    // 30 s grace, the gateway stops at once.
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    let mut gw = gw;
    let running = gw.take_running();
    let t = Instant::now();
    running.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the drain waited for the tunnel");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// A tunnel one side has closed ends once the other goes quiet: a client gone does not hold
/// the tunnel (and its place among `max_connections`) until the idle timeout while the
/// upstream keeps its end open.
#[tokio::test]
async fn a_tunnel_one_side_closed_ends_once_the_other_is_quiet() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Completes the handshake, then never reads nor closes.
                let ws = tokio_tungstenite::accept_async(s).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(ws);
            });
        }
    });
    let o = Opts {
        tls: false,
        server: "idle_timeout = \"20s\"",
        ..Opts::default()
    };
    let gw = Gateway::start_with(o, &route_to(&format!("http://{addr}"), "")).await;
    let (ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    let state = &gw.running().state;
    assert_eq!(state.tunnels.load(Ordering::SeqCst), 1);
    drop(ws);
    let t = Instant::now();
    while state.connections.load(Ordering::SeqCst) > 0 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state.connections.load(Ordering::SeqCst), 0);
    assert_eq!(state.tunnels.load(Ordering::SeqCst), 0);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// A side that closes its end (a half-close) still gets what the other side sends in answer:
/// the end is passed on, and the tunnel lasts while the answer moves.
#[tokio::test]
async fn a_half_closed_tunnel_still_delivers_the_answer_in_flight() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        // Raw bytes from here: read to the client's end, then answer 100 KB and close.
        let s = ws.get_mut();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
        // Half a second to answer: within the linger, counted from the close.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = s.write_all(&vec![b'z'; 100_000]).await;
        let _ = s.shutdown().await;
    });
    let o = Opts {
        tls: false,
        server: "idle_timeout = \"2s\"",
        ..Opts::default()
    };
    let gw = Gateway::start_with(o, &route_to(&format!("http://{addr}"), "")).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    c.write_all(&[b'a'; 1000]).await.unwrap();
    // Quiet for longer than the linger before closing: the quiet before the close does not
    // count against the answer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer))
        .await
        .expect("the tunnel ended")
        .unwrap();
    assert_eq!(answer.len(), 100_000);
}

/// A `101` opens a tunnel nothing on the connection is judged in after it, so only one that
/// completes the WebSocket handshake for the key sent does: not a bare `101`, not one without
/// `Upgrade`, not one with a wrong `Sec-WebSocket-Accept`.
#[tokio::test]
async fn a_101_without_a_matching_websocket_handshake_is_a_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 101 Switching Protocols\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        ];
        for answer in answers {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer).await;
            tokio::spawn(async move {
                // Held open, as a tunnel would be.
                tokio::time::sleep(Duration::from_secs(3)).await;
                drop(s);
            });
        }
    });
    let body = route_to(&format!("http://{addr}"), "");
    let gw = Gateway::start_with(plain(), &body).await;
    for i in 0..3 {
        let out = raw(
            gw.addr,
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 502"), "answer {i}: {out}");
        assert!(out.contains("upstream_unavailable"), "answer {i}: {out}");
    }
}

/// `Expect: 100-continue` is the gateway's to answer: the client is told to go on, and the
/// upstream gets the body with no question it could still refuse.
#[tokio::test]
async fn expect_100_continue_is_answered_by_the_gateway() {
    let (up, gw) = plain_public("").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 25];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
        .await
        .expect("a 100 Continue")
        .unwrap();
    assert!(buf.starts_with(b"HTTP/1.1 100 Continue\r\n"), "{buf:?}");
    s.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    let seen = up.last();
    assert_eq!(seen.body.as_ref(), b"hello");
    assert_eq!(seen.header("expect"), None, "Expect reached the upstream");
}

/// A client whose chunked body is malformed gets 400, its own error, not a 502 that would
/// count against the upstream.
#[tokio::test]
async fn a_malformed_chunked_request_body_is_a_400() {
    let (_up, gw) = plain_public("").await;
    let out = raw(
        gw.addr,
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nFFFFFFFFFFFFFFFFF1\r\nabcde\r\n0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("bad_request"), "{out}");
}

#[tokio::test]
async fn only_websocket_upgrades_are_passed_on() {
    let up = Upstream::start().await;
    let gw = Gateway::start_with(plain(), &public_routes(&up)).await;
    let out = raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "served as a plain request: {out}"
    );
    let seen = up.last();
    assert!(seen.header("upgrade").is_none(), "h2c not offered upstream");
    assert!(seen.header("http2-settings").is_none());
    // HTTP2-Settings is connection-specific even when `Connection` does not name it.
    let out = raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(up.last().header("http2-settings").is_none());
    // A WebSocket handshake is a GET: a POST asking for one goes as a plain request.
    let out = raw(
        gw.addr,
        b"POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 2\r\n\r\nhi",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = up.last();
    assert_eq!(
        (seen.method.as_str(), seen.body.as_ref()),
        ("POST", &b"hi"[..])
    );
    assert!(seen.header("upgrade").is_none(), "{seen:?}");
    // A WebSocket upgrade without its key is the client's fault, refused before the upstream.
    let count = up.count();
    let out = raw(
        gw.addr,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("bad_request"), "{out}");
    assert_eq!(up.count(), count);
}

#[tokio::test]
async fn admin_health_and_redirect_listener() {
    let up = Upstream::start().await;
    let redirect_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = Opts {
        server: &format!("redirect_http = \"127.0.0.1:{redirect_port}\""),
        ..Opts::default()
    };
    let server = o.server.to_string();
    let gw = Gateway::start_with(
        Opts {
            server: &server,
            ..Opts::default()
        },
        &public_routes(&up),
    )
    .await;
    assert_eq!(
        plain_client()
            .get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        plain_client()
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = plain_client()
            .head(gw.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "HEAD {path}");
    }
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/metrics", "GET, HEAD"),
        (reqwest::Method::GET, "/reload", "POST"),
        (reqwest::Method::POST, "/readyz", "GET, HEAD"),
    ] {
        let r = plain_client()
            .request(method, gw.admin_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{path}");
        assert_eq!(r.headers()["allow"], allow, "{path}");
    }
    // The admin endpoints are not on the main listener.
    assert_eq!(
        client()
            .get(gw.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(up.last().uri, "/healthz");
    let c = plain_client();
    let r = c
        .post(format!("http://127.0.0.1:{redirect_port}/login?x=1"))
        .header("Host", "example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://example.com:{}/login?x=1", gw.addr.port()).as_str()
    );
    let ask = |head: String| async move {
        let mut s = TcpStream::connect(("127.0.0.1", redirect_port))
            .await
            .unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got))
            .await
            .unwrap()
            .unwrap();
        got
    };
    // The Location is built from the host the request names: anything but one plain
    // host[:port] is refused, and so is naming none.
    for (line, host) in [
        ("HTTP/1.1", "Host: evil.example/foo?\r\n"),
        ("HTTP/1.1", "Host: a@evil.example\r\n"),
        ("HTTP/1.1", "Host: example.com\r\nHost: evil.example\r\n"),
        ("HTTP/1.0", ""),
    ] {
        let got = ask(format!("GET /x {line}\r\n{host}Connection: close\r\n\r\n")).await;
        assert!(got.starts_with(&format!("{line} 400")), "{host:?}: {got}");
        assert!(!got.to_ascii_lowercase().contains("location"), "{got}");
    }
    // An absolute-form target names the host (RFC 9112 §3.2.2), whatever Host says.
    let got = ask(
        "GET http://other.example/abs?q=1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
            .into(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 308"), "{got}");
    assert!(
        got.to_ascii_lowercase().contains(&format!(
            "location: https://other.example:{}/abs?q=1",
            gw.addr.port()
        )),
        "{got}"
    );
}

/// The redirect listener is held to the same limits as the main one: `max_connections` of its
/// own, the header read timeout from the connection's start, one request per connection; and
/// its Location keeps an absolute-form target's query, and a lower-case method is refused.
#[tokio::test]
async fn the_redirect_listener_has_the_main_listeners_limits() {
    let up = Upstream::start().await;
    let redirect_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = format!(
        "redirect_http = \"127.0.0.1:{redirect_port}\"\nheader_read_timeout = \"600ms\"\nmax_connections = 2"
    );
    let gw = Gateway::start_with(
        Opts {
            server: &server,
            ..Opts::default()
        },
        &public_routes(&up),
    )
    .await;
    let connect = || TcpStream::connect(("127.0.0.1", redirect_port));
    let answer = |mut s: TcpStream, head: &'static str| async move {
        s.write_all(head.as_bytes()).await.unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got))
            .await
            .expect("the connection ends after its answer")
            .unwrap();
        got
    };

    // A silent connection is closed at the header read timeout.
    let t = Instant::now();
    let mut silent = connect().await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf))
        .await
        .expect("closed")
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(500) && t.elapsed() < Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );

    // Two silent connections hold both places: a third waits for one of them to close.
    let _a = connect().await.unwrap();
    let _b = connect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let got = answer(
        connect().await.unwrap(),
        "GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 308"), "{got}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "served only once a place was free: {:?}",
        t.elapsed()
    );

    // One request per connection (answered, then closed without a Connection: close asked);
    // the query of an absolute-form target without a path is kept.
    let got = answer(
        connect().await.unwrap(),
        "GET http://other.example?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n",
    )
    .await;
    assert!(
        got.to_ascii_lowercase().contains(&format!(
            "location: https://other.example:{}/?q=1",
            gw.addr.port()
        )),
        "{got}"
    );
    let got = answer(
        connect().await.unwrap(),
        "get /x HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
}
