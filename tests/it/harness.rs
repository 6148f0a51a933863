#![allow(dead_code)]
//! Shared test harness: a recording upstream, the real gateway started from a TOML string
//! through `Config::load`, a CA generated at test time, and HTTP clients that trust it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use iptgate::config::Config;
use iptgate::server::Running;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The HS secret every test gateway reads from `secret` in its folder.
pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

/// A test CA and a leaf for localhost / 127.0.0.1 / ::1, made once per test process.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "iptgate test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        }
    })
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type Handler = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// A recording upstream on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}

/// The default app: `/status/N` answers N; `/sleep/MS` waits; `POST /login` with body
/// `user=NAME[&role=R]` answers 200 with X-User-Id/X-User-Role, `user=bad` 401; else 200 "ok".
pub fn default_handler() -> Handler {
    Arc::new(|s: &Seen| {
        let path = s.uri.split('?').next().unwrap_or("");
        if let Some(code) = path.strip_prefix("/status/") {
            return respond(code.parse().unwrap_or(500), &[], "status");
        }
        if path == "/login" || path.ends_with("/login") {
            let body = String::from_utf8_lossy(&s.body).to_string();
            let kv: HashMap<&str, &str> =
                body.split('&').filter_map(|p| p.split_once('=')).collect();
            return match kv.get("user") {
                Some(&"bad") | None => respond(401, &[], "bad credentials"),
                Some(user) => {
                    let mut h = vec![("x-user-id", *user)];
                    if let Some(r) = kv.get("role") {
                        h.push(("x-user-role", r));
                    }
                    respond(200, &h, "welcome")
                }
            };
        }
        respond(200, &[("x-upstream", "yes")], "ok")
    })
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::with(default_handler()).await
    }

    pub async fn with(handler: Handler) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let s = Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            let path = s.uri.split('?').next().unwrap_or("").to_string();
                            if let Some(ms) = path.strip_prefix("/sleep/") {
                                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0)))
                                    .await;
                            }
                            let resp = handler(&s);
                            seen.lock().unwrap().push(s);
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A gateway started from TOML through the real `Config::load` path.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub dir: PathBuf,
    pub tls: bool,
    running: Option<Running>,
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "iptgate-it-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Options for [`Gateway::start_with`].
pub struct Opts<'a> {
    pub tls: bool,
    pub listen: &'a str,
    /// Extra lines inside `[server]`.
    pub server: &'a str,
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            tls: true,
            listen: "127.0.0.1:0",
            server: "",
        }
    }
}

impl Gateway {
    /// TLS gateway on 127.0.0.1:0 with an admin listener; `body` is the config after
    /// `[server]` (`{upstream}` and `{dir}` are substituted by the caller's values).
    pub async fn start(body: &str) -> Gateway {
        Self::start_with(Opts::default(), body).await
    }

    pub async fn start_with(o: Opts<'_>, body: &str) -> Gateway {
        let dir = temp_dir();
        let text = Self::config_text(&dir, &o, body);
        Self::start_text(dir, o.tls, &text).await
    }

    pub fn config_text(dir: &Path, o: &Opts<'_>, body: &str) -> String {
        let p = pki();
        std::fs::write(dir.join("cert.pem"), &p.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &p.key_pem).unwrap();
        std::fs::write(dir.join("secret"), SECRET).unwrap();
        let tls = if o.tls {
            "tls = { cert = \"cert.pem\", key = \"key.pem\" }\n"
        } else {
            ""
        };
        format!(
            "[server]\nlisten = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n{tls}{}\n\n{body}",
            o.listen, o.server
        )
    }

    pub async fn start_text(dir: PathBuf, tls: bool, text: &str) -> Gateway {
        let path = dir.join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let cfg =
            Config::load(&path).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let running = iptgate::server::start(cfg).await.expect("gateway starts");
        Gateway {
            addr: running.addr,
            admin: running.admin_addr,
            dir,
            tls,
            running: Some(running),
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            self.addr.ip().to_string()
        };
        format!("{scheme}://{host}:{}{path}", self.addr.port())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin listener"))
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    /// The gateway's config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("gateway.toml")
    }

    /// Rewrite gateway.toml with `text` and reload through the admin endpoint: its status.
    pub async fn reload_with(&self, text: &str) -> u16 {
        std::fs::write(self.config_path(), text).unwrap();
        plain_client()
            .post(self.admin_url("/reload"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn take_running(&mut self) -> Running {
        self.running.take().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.begin_shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client trusting the test CA, optionally bound to a local source address.
pub fn client_from(local: Option<IpAddr>) -> reqwest::Client {
    client_builder(local).build().unwrap()
}

pub fn client_builder(local: Option<IpAddr>) -> reqwest::ClientBuilder {
    client_builder_alpn(local, &[b"h2", b"http/1.1"])
}

/// An HTTP/1.1-only client (ALPN offers http/1.1 alone).
pub fn client_h1() -> reqwest::Client {
    client_builder_alpn(None, &[b"http/1.1"])
        .http1_only()
        .build()
        .unwrap()
}

/// A client for plain-HTTP endpoints (admin listener, plain gateways).
pub fn plain_client() -> reqwest::Client {
    client_builder(None).build().unwrap()
}

/// A TLS client config trusting the test PKI, offering `alpn`.
pub fn tls_client_config(alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki().ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls::pki_types::pem::PemObject;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tls
}

/// A raw TLS connection to a TLS gateway (handshake done, nothing sent).
pub async fn tls_connect(
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(&[b"http/1.1"])));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

pub fn client_builder_alpn(local: Option<IpAddr>, alpn: &[&[u8]]) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_client_config(alpn))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .no_proxy();
    if let Some(ip) = local {
        b = b.local_address(ip);
    }
    b
}

pub fn client() -> reqwest::Client {
    client_from(None)
}

/// A client whose source address is 127.0.0.N.
pub fn client_at(n: u8) -> reqwest::Client {
    client_from(Some(IpAddr::from([127, 0, 0, n])))
}

/// The problem+json `code` of a gateway answer.
pub async fn code_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_string))
        .unwrap_or_default();
    (status, code)
}

/// A minimal config: one public catch-all route to `up`.
pub fn public_routes(up: &Upstream) -> String {
    format!(
        r#"
[upstreams.app]
url = "{}"

[[routes]]
name = "all"
prefix = "/"
auth = "public"
upstream = "app"
"#,
        up.url()
    )
}

/// The standard `[token]` section (HS256, secret from the `secret` file).
pub const TOKEN: &str = r#"
[token]
algorithm = "HS256"
secret = { file = "secret" }
forward_claims = { sub = "X-Auth-Subject", role = "X-Auth-Role" }
"#;

/// The token config a gateway started with `TOKEN` uses (same secret, same defaults).
pub fn token_config(extra: &str) -> iptgate::config::TokenConfig {
    let dir = temp_dir();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{TOKEN}{extra}\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"token\"\nupstream = \"app\"\n"
    );
    let cfg = Config::from_toml(&text, &dir.join("gateway.toml")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    cfg.token.unwrap()
}

/// A token as the gateway (configured with `TOKEN`) would mint it.
pub fn mint(ip: &str, sub: &str, extra: serde_json::Value) -> String {
    mint_with(&token_config(""), ip, sub, extra, Duration::from_secs(600))
}

pub fn mint_with(
    tc: &iptgate::config::TokenConfig,
    ip: &str,
    sub: &str,
    extra: serde_json::Value,
    ttl: Duration,
) -> String {
    let keys = iptgate::token::Keys::new(tc).unwrap();
    let extra = match extra {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    keys.mint(
        tc,
        iptgate::token::MintRequest {
            typ: iptgate::token::TokenType::Access,
            ip: ip.parse().unwrap(),
            sub: Some(sub.to_string()),
            extra,
            dev: None,
            fam: None,
            ttl,
        },
    )
    .unwrap()
    .token
}

/// Parse Prometheus text: the value of the series whose name and labels contain all `parts`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && labels.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Find a free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A TLS config that accepts any server certificate (for the demo's self-made one).
pub fn insecure_tls() -> rustls::ClientConfig {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth()
}

/// The token config, a public route `open` on `/open` and a token route `app` on `/`, both to
/// upstream `app` at `up`; `extra_route` goes between them.
pub fn open_and_token_routes(up: &Upstream, extra_route: &str) -> String {
    format!(
        r#"{TOKEN}
[upstreams.app]
url = "{}"

[[routes]]
name = "open"
prefix = "/open"
auth = "public"
upstream = "app"
{extra_route}
[[routes]]
name = "app"
prefix = "/"
auth = "token"
upstream = "app"
"#,
        up.url()
    )
}

/// Options for a gateway on plain HTTP (no `[server.tls]`).
pub fn plain() -> Opts<'static> {
    Opts {
        tls: false,
        ..Opts::default()
    }
}

/// One public route `/` to upstream `app` at `url`, with `extra` lines in `[upstreams.app]`.
pub fn route_to(url: &str, extra: &str) -> String {
    format!(
        r#"
[upstreams.app]
url = "{url}"
{extra}

[[routes]]
name = "all"
prefix = "/"
auth = "public"
upstream = "app"
"#
    )
}

/// The admin listener's `/metrics` text (`admin`: its base URL).
pub async fn scrape(admin: &str) -> String {
    plain_client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
