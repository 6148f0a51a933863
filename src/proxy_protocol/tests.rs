#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2::{Builder, Command, Protocol, Version};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const T: Duration = Duration::from_secs(2);
const AFTER: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// Writes `header` then `AFTER`, reads the header, and checks every byte of `AFTER`
/// is still in the stream.
async fn roundtrip(header: &[u8]) -> Result<Source, ProxyError> {
    let (mut client, mut server) = tokio::io::duplex(1 << 17);
    client.write_all(header).await.unwrap();
    client.write_all(AFTER).await.unwrap();
    drop(client);
    let r = read_header(&mut server, T).await;
    if r.is_ok() {
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, AFTER, "bytes after the header were consumed");
    }
    r
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn v2(command: Command, protocol: Protocol, addrs: v2::Addresses) -> Vec<u8> {
    Builder::with_addresses(Version::Two | command, protocol, addrs)
        .build()
        .unwrap()
}

#[tokio::test]
async fn v1_tcp4() {
    let r = roundtrip(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n").await;
    assert_eq!(r.unwrap(), Source::Client(sa("192.0.2.1:56324")));
}

#[tokio::test]
async fn v1_tcp6() {
    let r = roundtrip(b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 443\r\n").await;
    assert_eq!(r.unwrap(), Source::Client(sa("[2001:db8::1]:4711")));
}

#[tokio::test]
async fn v1_unknown() {
    assert_eq!(
        roundtrip(b"PROXY UNKNOWN\r\n").await.unwrap(),
        Source::Unknown
    );
    let r = roundtrip(b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n").await;
    assert_eq!(r.unwrap(), Source::Unknown);
}

#[tokio::test]
async fn v1_max_length() {
    // The longest legal header: 107 bytes.
    let h = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(h.len(), 107);
    assert_eq!(roundtrip(h).await.unwrap(), Source::Unknown);
    // One more byte and no CRLF in sight: refused after reading at most 107 bytes.
    let (mut client, mut server) = tokio::io::duplex(1024);
    client.write_all(b"PROXY ").await.unwrap();
    client.write_all(&[b'A'; 200]).await.unwrap();
    let r = read_header(&mut server, T).await;
    assert!(matches!(r, Err(ProxyError::Malformed(_))), "{r:?}");
    let mut rest = [0u8; 200];
    let n = server.read(&mut rest).await.unwrap();
    assert_eq!(n, 200 - (107 - 6), "consumed more than 107 bytes");
}

#[tokio::test]
async fn v1_malformed() {
    for h in [
        &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
        b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 056324 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
        b"PROXY TCP4 192.0.2.1\r198.51.100.2 1 2\r\n",
        b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",
    ] {
        let r = roundtrip(h).await;
        assert!(
            matches!(r, Err(ProxyError::Malformed(_))),
            "{:?}: {r:?}",
            String::from_utf8_lossy(h)
        );
    }
}

#[tokio::test]
async fn v2_tcp4() {
    let h = v2(
        Command::Proxy,
        Protocol::Stream,
        v2::IPv4::new([192, 0, 2, 1], [198, 51, 100, 2], 56324, 443).into(),
    );
    assert_eq!(
        roundtrip(&h).await.unwrap(),
        Source::Client(sa("192.0.2.1:56324"))
    );
}

#[tokio::test]
async fn v2_tcp6_with_tlvs() {
    let addrs: v2::Addresses = v2::IPv6::new(
        "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
        "2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap(),
        4711,
        443,
    )
    .into();
    let h = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addrs)
        .write_tlv(v2::Type::Authority, b"example.com")
        .unwrap()
        .write_tlv(v2::Type::NoOp, &[0u8; 300])
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        roundtrip(&h).await.unwrap(),
        Source::Client(sa("[2001:db8::1]:4711"))
    );
}

/// A TLV announcing more bytes than the header holds (or a stray byte after the last TLV):
/// malformed, as HAProxy has it.
#[tokio::test]
async fn v2_with_broken_tlvs_is_refused() {
    for tail in [&[0x02, 0x00, 0xff, b'a', b'b'][..], &[0x04]] {
        let mut h = V2_SIGNATURE.to_vec();
        let len = 12 + tail.len();
        h.extend([0x21, 0x11, 0, len as u8]);
        h.extend([192, 0, 2, 1, 198, 51, 100, 2, 0x13, 0x88, 0x01, 0xbb]);
        h.extend(tail);
        let r = roundtrip(&h).await;
        assert!(
            matches!(r, Err(ProxyError::Malformed(_))),
            "{tail:?}: {r:?}"
        );
    }
}

#[tokio::test]
async fn v2_by_hand() {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([
        0x21, 0x11, 0, 12, 203, 0, 113, 5, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb,
    ]);
    assert_eq!(
        roundtrip(&h).await.unwrap(),
        Source::Client(sa("203.0.113.5:8080"))
    );
}

#[tokio::test]
async fn v2_local_and_unspecified() {
    let h = v2(
        Command::Local,
        Protocol::Stream,
        v2::IPv4::new([192, 0, 2, 1], [198, 51, 100, 2], 1, 2).into(),
    );
    assert_eq!(roundtrip(&h).await.unwrap(), Source::Local);
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([0x20, 0x00, 0, 0]);
    assert_eq!(roundtrip(&h).await.unwrap(), Source::Local);
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([0x21, 0x00, 0, 0]);
    assert_eq!(roundtrip(&h).await.unwrap(), Source::Unknown);
}

#[tokio::test]
async fn v2_refused() {
    let udp = v2(
        Command::Proxy,
        Protocol::Datagram,
        v2::IPv4::new([192, 0, 2, 1], [198, 51, 100, 2], 1, 2).into(),
    );
    let mut bad_version = V2_SIGNATURE.to_vec();
    bad_version.extend([0x11, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
    let mut bad_command = V2_SIGNATURE.to_vec();
    bad_command.extend([0x22, 0x11, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
    let mut short_addrs = V2_SIGNATURE.to_vec();
    short_addrs.extend([0x21, 0x11, 0, 4, 1, 2, 3, 4]);
    let mut unix = V2_SIGNATURE.to_vec();
    unix.extend([0x21, 0x31, 0, 216]);
    unix.extend([0u8; 216]);
    for h in [udp, bad_version, bad_command, short_addrs, unix] {
        let r = roundtrip(&h).await;
        assert!(matches!(r, Err(ProxyError::Malformed(_))), "{h:?}: {r:?}");
    }
}

#[tokio::test]
async fn garbage_and_eof() {
    for h in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01",
        b"\r\n\r\n\0\r\nQUIT!",
        b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
    ] {
        let r = roundtrip(h).await;
        assert!(matches!(r, Err(ProxyError::Malformed(_))), "{h:?}: {r:?}");
    }
    // Truncated: end of stream inside the header.
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
    drop(client);
    let r = read_header(&mut server, T).await;
    assert!(matches!(r, Err(ProxyError::Io(_))), "{r:?}");
}

#[tokio::test]
async fn timeout() {
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
    let r = read_header(&mut server, Duration::from_millis(50)).await;
    assert!(matches!(r, Err(ProxyError::Timeout)), "{r:?}");
    drop(client);
}

#[tokio::test]
async fn header_split_across_writes() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let task = tokio::spawn(async move {
        for chunk in [
            &b"PRO"[..],
            b"XY TCP4 192.0.2.1 ",
            b"198.51.100.2 1 2\r",
            b"\nrest",
        ] {
            client.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let r = read_header(&mut server, T).await.unwrap();
    assert_eq!(r, Source::Client(sa("192.0.2.1:1")));
    let mut rest = [0u8; 4];
    server.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"rest");
    task.await.unwrap();
}

#[tokio::test]
async fn over_a_real_socket_nothing_past_the_header_is_consumed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = v2(
        Command::Proxy,
        Protocol::Stream,
        v2::IPv4::new([192, 0, 2, 9], [198, 51, 100, 2], 5000, 443).into(),
    );
    let mut payload = h.clone();
    payload.extend_from_slice(AFTER);
    let client = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&payload).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let (mut s, _) = listener.accept().await.unwrap();
    assert!(starts_with_proxy_signature(&s).await.unwrap());
    assert_eq!(
        read_header(&mut s, T).await.unwrap(),
        Source::Client(sa("192.0.2.9:5000"))
    );
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, AFTER);
    client.await.unwrap();
}

/// Connects, sends `chunks` (pausing between them), and returns the verdict of
/// `starts_with_proxy_signature` and the bytes still unread afterwards.
async fn peek_verdict(
    chunks: &'static [&'static [u8]],
    pause: Duration,
) -> (Option<bool>, Vec<u8>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        for c in chunks {
            s.write_all(c).await.unwrap();
            tokio::time::sleep(pause).await;
        }
        s.shutdown().await.unwrap();
    });
    let (mut s, _) = listener.accept().await.unwrap();
    // Undecided within the time (a prefix and nothing more) reads as `None`.
    let verdict = tokio::time::timeout(Duration::from_millis(500), starts_with_proxy_signature(&s))
        .await
        .ok()
        .map(Result::unwrap);
    client.await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    (verdict, rest)
}

#[tokio::test]
async fn signature_peek() {
    let quick = Duration::from_millis(1);
    let (v, rest) = peek_verdict(&[b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"], quick).await;
    assert_eq!(v, Some(true));
    assert_eq!(rest, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n");
    let verdict = |chunks, pause| async move { peek_verdict(chunks, pause).await.0 };
    assert_eq!(
        verdict(&[b"\r\n\r\n\0\r\nQUIT\n\x21\x11"], quick).await,
        Some(true)
    );
    assert_eq!(
        verdict(&[b"GET / HTTP/1.1\r\n\r\n"], quick).await,
        Some(false)
    );
    assert_eq!(verdict(&[b"\x16\x03\x01"], quick).await, Some(false));
    assert_eq!(verdict(&[b"POST / HTTP/1.1\r\n"], quick).await, Some(false));
    // Nothing at all before the end of the stream.
    assert_eq!(verdict(&[], quick).await, Some(false));
    // A prefix, then the rest a little later: still recognised, either way.
    let later = Duration::from_millis(15);
    assert_eq!(
        verdict(&[b"PRO", b"XY UNKNOWN\r\n"], later).await,
        Some(true)
    );
    assert_eq!(
        verdict(&[b"P", b"UT / HTTP/1.1\r\n"], later).await,
        Some(false)
    );
    // A `P` that stalls for 150 ms before `OST`: a slow client, not a signature.
    let slow = Duration::from_millis(150);
    assert_eq!(
        verdict(&[b"P", b"OST / HTTP/1.1\r\n"], slow).await,
        Some(false)
    );
    // A prefix and then nothing more: undecided until the caller's timeout closes it.
    assert_eq!(verdict(&[b"PROX"], quick).await, None);
}

#[test]
fn classify_prefixes() {
    assert_eq!(classify(b"PROXY "), Signature::Present);
    assert_eq!(classify(b"PROXY"), Signature::Undecided);
    assert_eq!(classify(b"PROXYX"), Signature::Absent);
    assert_eq!(classify(b"\r\n"), Signature::Undecided);
    assert_eq!(classify(b"\r\n\r\n\0\r\nQUI"), Signature::Undecided);
    assert_eq!(classify(V2_SIGNATURE), Signature::Present);
    assert_eq!(classify(b"\r\n\r\n\0\r\nQUIT!"), Signature::Absent);
    assert_eq!(classify(b"\r\nGET"), Signature::Absent);
    assert_eq!(classify(b"G"), Signature::Absent);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes never panic the reader, and a success leaves the tail in place.
    #[test]
    fn arbitrary_input_never_panics(body in prop::collection::vec(any::<u8>(), 0..200),
                                    v1 in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut input = if v1 { V1_PREFIX.to_vec() } else { V2_SIGNATURE.to_vec() };
        input.extend_from_slice(&body);
        rt.block_on(async {
            let (mut client, mut server) = tokio::io::duplex(1024);
            client.write_all(&input).await.unwrap();
            drop(client);
            let _ = read_header(&mut server, Duration::from_millis(200)).await;
        });
    }
}
