//! PROXY protocol v1/v2 on the main listener: the very first bytes of a connection, before
//! TLS and HTTP, and the input to phase 1 ([`crate::pipeline::client_ip`]).
//!
//! With `client_ip.proxy_protocol = true`, a connection from a trusted proxy must open
//! with one PROXY header; [`read_header`] reads exactly that header and not one byte
//! more (v1 byte by byte up to its 107-byte limit, v2 by its announced length), so the TLS
//! or HTTP bytes behind it are left in the stream. Parsing is delegated to `ppp`. From any
//! other peer a PROXY header is refused: [`starts_with_proxy_signature`] peeks without
//! consuming so the listener can tell.
//!
//! Fail closed: anything but a complete, well-formed header within the timeout is an
//! error, and the connection should be dropped. A v2 `LOCAL` header is the balancer's own
//! connection ([`Source::Local`]); v1 `UNKNOWN` and v2 `PROXY` with an unspecified address
//! family relay a client the balancer cannot name ([`Source::Unknown`]).
//! A v2 `PROXY` header announcing UDP or UNIX-socket addresses cannot name a TCP client
//! and is refused.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The start of every v1 header.
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The 12-byte v2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// v2 signature, version/command, family/protocol, 2-byte length.
const V2_FIXED_LEN: usize = 16;

/// How long [`starts_with_proxy_signature`] first waits before it looks again while what has
/// arrived is still a strict prefix of a signature; the pause doubles up to [`PEEK_PAUSE_MAX`].
const PEEK_PAUSE: Duration = Duration::from_millis(5);
const PEEK_PAUSE_MAX: Duration = Duration::from_millis(100);

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client's address.
    Client(SocketAddr),
    /// v1 `UNKNOWN`, v2 `PROXY` with an unspecified family: a client it cannot name.
    Unknown,
    /// v2 `LOCAL`: the balancer's own connection (a health check).
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out reading the PROXY header")]
    Timeout,
}

/// Read exactly one PROXY v1 or v2 header from the start of the stream (never a byte more).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Source, ProxyError> {
    match tokio::time::timeout(timeout, read_any(stream)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyError::Timeout),
    }
}

async fn read_any<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Source, ProxyError> {
    // Both headers are at least 15 bytes long, so these first 6 are never too many.
    let mut start = [0u8; 12];
    stream.read_exact(&mut start[..6]).await?;
    if start[..6] == V1_PREFIX[..] {
        return read_v1(stream).await;
    }
    if start[..6] != V2_SIGNATURE[..6] {
        return Err(ProxyError::Malformed("no PROXY signature".into()));
    }
    stream.read_exact(&mut start[6..]).await?;
    if start != *V2_SIGNATURE {
        return Err(ProxyError::Malformed("no PROXY signature".into()));
    }
    read_v2(stream).await
}

async fn read_v1<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Source, ProxyError> {
    let mut buf = [0u8; V1_MAX_LEN];
    buf[..V1_PREFIX.len()].copy_from_slice(V1_PREFIX);
    let mut len = V1_PREFIX.len();
    // One byte at a time: the header's end is only known when its LF arrives.
    loop {
        if len == V1_MAX_LEN {
            return Err(ProxyError::Malformed(
                "v1 header longer than 107 bytes".into(),
            ));
        }
        let b = stream.read_u8().await?;
        buf[len] = b;
        len += 1;
        if b == b'\n' {
            break;
        }
    }
    let line = &buf[..len];
    if !line.ends_with(b"\r\n") || line[..len - 2].contains(&b'\r') {
        return Err(ProxyError::Malformed("v1 header not ended by CRLF".into()));
    }
    let header = v1::Header::try_from(line).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if header.header.len() != len {
        return Err(ProxyError::Malformed("v1 header has trailing bytes".into()));
    }
    Ok(match header.addresses {
        v1::Addresses::Tcp4(a) => {
            Source::Client(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        v1::Addresses::Tcp6(a) => {
            Source::Client(SocketAddr::new(a.source_address.into(), a.source_port))
        }
        v1::Addresses::Unknown => Source::Unknown,
    })
}

async fn read_v2<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Source, ProxyError> {
    let mut fixed = [0u8; 4];
    stream.read_exact(&mut fixed).await?;
    let body_len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
    let mut buf = Vec::with_capacity(V2_FIXED_LEN + body_len);
    buf.extend_from_slice(V2_SIGNATURE);
    buf.extend_from_slice(&fixed);
    buf.resize(V2_FIXED_LEN + body_len, 0);
    stream.read_exact(&mut buf[V2_FIXED_LEN..]).await?;
    let header =
        v2::Header::try_from(buf.as_slice()).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if header.header.len() != buf.len() {
        return Err(ProxyError::Malformed("v2 length mismatch".into()));
    }
    // The TLVs after the addresses must fill the rest exactly, as HAProxy requires.
    if let Some(Err(e)) = header.tlvs().find(Result::is_err) {
        return Err(ProxyError::Malformed(format!("v2 TLVs: {e}")));
    }
    match header.command {
        v2::Command::Local => Ok(Source::Local),
        v2::Command::Proxy => {
            match (header.protocol, header.addresses) {
                (_, v2::Addresses::Unspecified) => Ok(Source::Unknown),
                (v2::Protocol::Stream, v2::Addresses::IPv4(a)) => Ok(Source::Client(
                    SocketAddr::new(a.source_address.into(), a.source_port),
                )),
                (v2::Protocol::Stream, v2::Addresses::IPv6(a)) => Ok(Source::Client(
                    SocketAddr::new(a.source_address.into(), a.source_port),
                )),
                (_, v2::Addresses::Unix(_)) => {
                    Err(ProxyError::Malformed("v2 UNIX-socket source".into()))
                }
                (_, _) => Err(ProxyError::Malformed("v2 source is not TCP".into())),
            }
        }
    }
}

/// What the first bytes of a connection say about a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signature {
    Present,
    Absent,
    /// A strict prefix of a signature: more bytes will tell.
    Undecided,
}

fn classify(got: &[u8]) -> Signature {
    let v1 = got.len() >= V1_PREFIX.len() && got[..V1_PREFIX.len()] == V1_PREFIX[..];
    let v2 = got.len() >= V2_SIGNATURE.len() && got[..V2_SIGNATURE.len()] == V2_SIGNATURE[..];
    if v1 || v2 {
        Signature::Present
    } else if (got.len() < V1_PREFIX.len() && V1_PREFIX.starts_with(got))
        || (got.len() < V2_SIGNATURE.len() && V2_SIGNATURE.starts_with(got))
    {
        Signature::Undecided
    } else {
        Signature::Absent
    }
}

/// Does the connection open with a PROXY v1 (`"PROXY "`) or v2 signature? Peeks, never
/// consumes. Waits for the first bytes to arrive, and while they are a strict prefix of a
/// signature (`P` may begin `PROXY ` or `POST`), for more: bound it with the header timeout,
/// and close a connection still undecided then, as any head that slow. End of stream before
/// any byte: `false`.
pub async fn starts_with_proxy_signature(stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 12];
    let mut pause = PEEK_PAUSE;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        match classify(&buf[..n]) {
            Signature::Present => return Ok(true),
            Signature::Absent => return Ok(false),
            Signature::Undecided => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(PEEK_PAUSE_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests;
