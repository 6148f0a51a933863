//! PROXY protocol v1/v2 on the main listener. INTERFACE (stub until implemented)

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncRead;

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
/// `Ok(None)`: a LOCAL/UNKNOWN header (use the TCP peer).
pub async fn read_header<S: AsyncRead + Unpin>(
    _stream: &mut S,
    _timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    Err(ProxyError::Malformed("not implemented".into()))
}

/// Does the stream start with a PROXY v1/v2 signature? (peek only)
pub async fn starts_with_proxy_signature(_stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    Ok(false)
}
