//! The upstream side: connection reuse, upstreams that close idle connections, https
//! upstreams with a private CA.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::*;

/// A plain HTTP/1.1 upstream counting its connections. It answers every request with a
/// keep-alive `200 ok` and closes a connection that stays idle for `keep_alive`, as a
/// server's keep-alive timeout does.
async fn counting_upstream(keep_alive: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        for _ in 0..64 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for _ in 0..1000 {
                    let Ok(Ok(n)) = tokio::time::timeout(keep_alive, stream.read(&mut chunk)).await
                    else {
                        return; // idle too long: close
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, conns)
}

/// An https upstream with the test PKI's certificate (localhost, 127.0.0.1).
async fn tls_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = pki();
    let certs = rustls_pemfile_certs(&p.cert_pem);
    let key = PrivateKeyDer::from_pem_slice(p.key_pem.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(iptgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(s) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let (addr, conns) = counting_upstream(Duration::from_secs(30)).await;
    let gw = Gateway::start(&route_to(&format!("http://{addr}"), "")).await;
    let c = client();
    for _ in 0..5 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one pooled connection for all five"
    );
}

#[tokio::test]
async fn upstream_closing_idle_connections_is_not_a_502() {
    let (addr, conns) = counting_upstream(Duration::from_millis(100)).await;
    let gw = Gateway::start(&route_to(&format!("http://{addr}"), "")).await;
    let c = client();
    for i in 0..4 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        // Longer than the upstream's keep-alive: the pooled connection is gone by the next.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        4,
        "a fresh connection after each close"
    );
}

/// An upstream that answers the first request on a connection with a keep-alive `200 ok`,
/// then reads the next request on it and closes without an answer: its keep-alive timeout
/// running out as that request arrived. Returns the requests it read (request lines).
async fn closing_under_the_second_request() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for answered in [true, false] {
                    let head = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break buf.drain(..end + 4).collect::<Vec<u8>>();
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let line = String::from_utf8_lossy(&head);
                    log.lock()
                        .unwrap()
                        .push(line.lines().next().unwrap_or("").to_string());
                    if !answered {
                        return; // closed under the request
                    }
                    let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(resp).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// The upstream closes an idle keep-alive connection as a request is written on it: a `GET`
/// (idempotent, no body) is sent again on a new connection and answered; a `POST` is not
/// (the upstream may have acted on it) and is a 502.
#[tokio::test]
async fn a_request_crossing_an_idle_close_is_sent_again_when_idempotent() {
    let (addr, seen) = closing_under_the_second_request().await;
    let gw = Gateway::start(&route_to(&format!("http://{addr}"), "")).await;
    let c = client();
    assert_eq!(c.get(gw.url("/a")).send().await.unwrap().status(), 200);
    // Idle long enough for the gateway to keep a copy of the next request.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c.get(gw.url("/b")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        *seen.lock().unwrap(),
        ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /b HTTP/1.1"]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c.post(gw.url("/c")).body("x").send().await.unwrap();
    assert_eq!(code_of(r).await, (502, "upstream_unavailable".into()));
    assert_eq!(seen.lock().unwrap().len(), 4, "the POST was sent once");
}

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let addr = tls_upstream().await;
    let ca = std::env::temp_dir().join(format!(
        "iptgate-it-ca-{}.pem",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::write(&ca, &pki().ca_pem).unwrap();
    let url = format!("https://localhost:{}", addr.port());

    let trusted = Gateway::start(&route_to(
        &url,
        &format!("ca = {:?}", ca.display().to_string()),
    ))
    .await;
    let r = client().get(trusted.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");

    // Without the CA the upstream's certificate is not trusted (public roots only).
    let untrusted = Gateway::start(&route_to(&url, "")).await;
    let r = client().get(untrusted.url("/x")).send().await.unwrap();
    assert_eq!(code_of(r).await, (502, "upstream_unavailable".to_string()));
    let _ = std::fs::remove_file(ca);
}

/// An upstream that answers a POST as soon as it has the head (`413`, before reading the
/// body), then reads and discards the body, and answers a GET with `200 ok`.
async fn early_answer_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16384];
                let mut skip = 0usize;
                for _ in 0..10_000 {
                    let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await
                    else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    loop {
                        let drop_now = skip.min(buf.len());
                        buf.drain(..drop_now);
                        skip -= drop_now;
                        if skip > 0 {
                            break;
                        }
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            break;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        buf.drain(..end + 4);
                        skip = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        let resp: &[u8] = if head.starts_with("post") {
                            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if stream.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_answering_before_the_body_is_sent_leaves_the_gateway_working() {
    let addr = early_answer_upstream().await;
    let gw = Gateway::start(&route_to(&format!("http://{addr}"), "")).await;
    let c = client();
    for i in 0..3 {
        let r = c
            .post(gw.url("/upload"))
            .body(vec![b'x'; 4 * 1024 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "upload {i}");
        assert_eq!(r.text().await.unwrap(), "big!");
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request after upload {i}");
        assert_eq!(r.text().await.unwrap(), "ok");
    }
}

/// The upstream answers an upload before reading it, and the client sends the rest slowly: the
/// upstream connection stays busy with that body, so it is not handed to another client's
/// request, which would wait for the upload to end.
#[tokio::test]
async fn another_clients_request_does_not_wait_for_a_slow_upload_answered_early() {
    let addr = early_answer_upstream().await;
    let gw = Gateway::start(&route_to(&format!("http://{addr}"), "")).await;
    let url = gw.url("/upload");
    let uploader = tokio::spawn(async move {
        let slow = futures_util::stream::unfold(0u8, |i| async move {
            match i {
                0 => Some((Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1024])), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Some((Ok(Bytes::from(vec![b'x'; 1024])), 2))
                }
                _ => None,
            }
        });
        let r = client()
            .post(url)
            .header("content-length", "2048")
            .body(reqwest::Body::wrap_stream(slow))
            .send()
            .await
            .unwrap();
        r.status()
    });
    // The uploader has its early answer (the upload still going on) before the other asks.
    assert_eq!(uploader.await.unwrap(), 413);
    let started = std::time::Instant::now();
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?} behind another client's upload",
        started.elapsed()
    );
}

/// An upstream answering each request (up to 4 connections) with `answer`, then holding the
/// connection `linger` before closing it.
async fn scripted_upstream(answer: &'static [u8], linger: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer).await;
                tokio::time::sleep(linger).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_response_with_both_length_and_chunks_reaches_the_client_whole() {
    let addr = scripted_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    let gw = Gateway::start(&route_to(&format!("http://{addr}"), "")).await;
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        let r = client().get(gw.url("/x")).send().await.unwrap();
        let status = r.status();
        (status, r.text().await.unwrap())
    })
    .await
    .expect("the client gets the whole response");
    assert_eq!(r, (http::StatusCode::OK, "ok".to_string()));
}

/// A 204 from the app that claims a length (and sends bytes) reaches HTTP/2 and HTTP/1.1
/// clients as a 204 with no body and no Content-Length: an HTTP/2 client refuses the stream
/// of one that has it.
#[tokio::test]
async fn a_204_claiming_a_length_reaches_http2_clients_as_a_plain_204() {
    let addr = scripted_upstream(
        b"HTTP/1.1 204 No Content\r\ncontent-length: 4\r\n\r\noops",
        Duration::from_millis(200),
    )
    .await;
    let gw = Gateway::start(&route_to(&format!("http://{addr}"), "")).await;
    for (c, version) in [
        (client(), http::Version::HTTP_2),
        (client_h1(), http::Version::HTTP_11),
    ] {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(
            (r.status(), r.version()),
            (http::StatusCode::NO_CONTENT, version)
        );
        assert!(r.headers().get("content-length").is_none(), "{version:?}");
        assert_eq!(r.bytes().await.unwrap().len(), 0);
    }
}

#[tokio::test]
async fn an_http_1_0_upstream_is_answered_to_the_client_as_http_1_1() {
    // Close-delimited, as an HTTP/1.0 server answers.
    let addr = scripted_upstream(b"HTTP/1.0 200 OK\r\n\r\nold server", Duration::ZERO).await;
    let gw = Gateway::start_with(plain(), &route_to(&format!("http://{addr}"), "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("old server"), "{text}");
}

#[tokio::test]
async fn a_target_that_refuses_connections_is_passed_over_for_the_next() {
    let (a, _) = counting_upstream(Duration::from_secs(30)).await;
    let (b, _) = counting_upstream(Duration::from_secs(30)).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gateway::start(&format!(
        r#"
[upstreams.app]
targets = ["http://{a}", "http://{dead}", "http://{b}"]

[upstreams.gone]
targets = ["http://{dead}"]

[[routes]]
name = "gone"
prefix = "/gone"
auth = "public"
upstream = "gone"

[[routes]]
name = "all"
prefix = "/"
auth = "public"
upstream = "app"
"#
    ))
    .await;
    let c = client();
    for i in 0..9 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    // With no target left, still a 502.
    let r = c.get(gw.url("/gone")).send().await.unwrap();
    assert_eq!(code_of(r).await, (502, "upstream_unavailable".into()));
}
