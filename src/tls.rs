//! TLS material: PEM files -> rustls server config (TLS 1.2/1.3, ALPN h2 + http/1.1), the
//! upstream client config (webpki roots or a private CA), and self-signed dev certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsPaths;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Gen(String),
}

fn file_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The crypto provider every TLS config of ours uses (aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "no CERTIFICATE block found"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_err(path, format!("cannot read a private key: {e}")))
}

/// Server config for the main listener: TLS 1.2 and 1.3 only, ALPN h2 then http/1.1.
pub fn server_config(paths: &TlsPaths) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(&paths.cert)?;
    let key = load_key(&paths.key)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            file_err(
                &paths.key,
                format!("key does not match the certificate: {e}"),
            )
        })?;
    // `http/1.0` too: a client offering only it (`curl --http1.0`) is refused the handshake
    // otherwise; it is served by the HTTP/1 server, as one offering no ALPN at all.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client config for https:// upstreams: the webpki roots, or only `ca` when given.
pub fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(p) => {
            for c in load_certs(p)? {
                roots
                    .add(c)
                    .map_err(|e| file_err(p, format!("bad CA certificate: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A self-signed development certificate (ECDSA P-256) for the given hosts/IPs.
pub struct DevCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Every `--host` must be a DNS name (a leading `*.` label allowed) or an IP address: a
/// certificate for anything else matches no server name.
pub fn check_hosts(hosts: &[String]) -> Result<(), String> {
    for h in hosts {
        let name = h.strip_prefix("*.").unwrap_or(h);
        let ok = h.parse::<std::net::IpAddr>().is_ok() || crate::config::checks::is_dns_name(name);
        if !ok {
            return Err(format!(
                "`{}` is neither a DNS name (e.g. gw.example.com) nor an IP address",
                h.escape_debug()
            ));
        }
    }
    Ok(())
}

pub fn generate_dev_cert(hosts: &[String]) -> Result<DevCert, TlsError> {
    let mut names: Vec<String> = hosts.to_vec();
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    }
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Gen(e.to_string()))?;
    Ok(DevCert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
    })
}

/// Write `gateway.crt` and `gateway.key` (mode 0600) into `dir`.
pub fn write_dev_cert(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))?;
    let c = generate_dev_cert(hosts)?;
    let cert = dir.join("gateway.crt");
    let key = dir.join("gateway.key");
    std::fs::write(&cert, c.cert_pem).map_err(|e| file_err(&cert, e.to_string()))?;
    write_private(&key, c.key_pem.as_bytes())?;
    Ok((cert, key))
}

/// Write a file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(|e| file_err(path, e.to_string()))?;
    f.write_all(data).map_err(|e| file_err(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cert_hosts_are_dns_names_or_ips() {
        let ok =
            |h: &[&str]| super::check_hosts(&h.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&[
            "gw.example.com",
            "localhost",
            "127.0.0.1",
            "::1",
            "*.example.com"
        ])
        .is_ok());
        for bad in [
            "",
            "gw example.com",
            "https://gw.example.com",
            "gw.example.com:8443",
            "a..b",
            "*",
        ] {
            assert!(ok(&[bad]).is_err(), "{bad}");
        }
    }
}
