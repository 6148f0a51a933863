//! `[server]` and `[client_ip]`.

use super::*;

impl Validator {
    pub(super) fn server(&mut self, s: &ServerFile) -> Option<ServerConfig> {
        let listen = self.addr(
            "server.listen",
            s.listen.as_deref().unwrap_or("0.0.0.0:8443"),
        )?;
        let tls = s.tls.as_ref().and_then(|t| {
            let mut file = |k: &str, p: &Option<PathBuf>| match p {
                None => {
                    self.err(
                        k,
                        "missing: [server].tls needs both cert and key (PEM files)",
                    );
                    None
                }
                Some(p) => Some(self.resolve(p)),
            };
            let cert = file("server.tls.cert", &t.cert);
            let key = file("server.tls.key", &t.key);
            Some(TlsPaths {
                cert: cert?,
                key: key?,
            })
        });
        if let Some(t) = &tls {
            let mut missing = false;
            for (k, p) in [("server.tls.cert", &t.cert), ("server.tls.key", &t.key)] {
                if !p.exists() {
                    missing = true;
                    self.err(
                        k,
                        format!(
                            "{} does not exist (run `iptgate cert --out DIR`)",
                            p.display()
                        ),
                    );
                }
            }
            // Parsed now, so a bad PEM or a key that does not match is reported with the rest.
            if !missing {
                if let Err(e) = crate::tls::server_config(t) {
                    self.err("server.tls", e.to_string());
                }
            }
        }
        let redirect_http = s
            .redirect_http
            .as_ref()
            .and_then(|a| self.addr("server.redirect_http", a));
        if redirect_http.is_some() && tls.is_none() {
            self.err(
                "server.redirect_http",
                "needs [server].tls: without TLS there is nothing to redirect to",
            );
        }
        let admin_listen = match s.admin_listen.as_deref() {
            Some("" | "off") => None,
            Some(a) => self.addr("server.admin_listen", a),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
        };
        let mut bound = vec![("server.listen", listen)];
        for (k, a) in [
            ("server.admin_listen", admin_listen),
            ("server.redirect_http", redirect_http),
        ] {
            let Some(a) = a else { continue };
            if let Some((other, _)) = bound.iter().find(|(_, b)| same_socket(a, *b)) {
                let why = if k == "server.admin_listen" {
                    "; the admin endpoints never share the main listener"
                } else {
                    ""
                };
                self.err(
                    k,
                    format!("{a} takes the same port as {other} (a wildcard address covers every address of its family){why}"),
                );
            }
            bound.push((k, a));
        }
        let max_request_body = match &s.max_request_body {
            None => 10 << 20,
            Some(v) => parse_size(v).unwrap_or_else(|e| {
                self.err("server.max_request_body", e);
                0
            }),
        };
        let max_connections = s.max_connections.unwrap_or(10_000);
        if max_connections == 0 {
            self.err("server.max_connections", "must be at least 1");
        }
        let workers = s.workers.unwrap_or(0);
        if workers > MAX_WORKERS {
            self.err(
                "server.workers",
                format!("{workers} is more than {MAX_WORKERS}: each worker is an OS thread with its own stack, and past the core count more only add switching; 0 means one per core"),
            );
        }
        Some(ServerConfig {
            listen,
            tls,
            redirect_http,
            admin_listen,
            workers: workers.min(MAX_WORKERS),
            max_connections,
            header_read_timeout: self.positive_duration(
                "server.header_read_timeout",
                &s.header_read_timeout,
                Duration::from_secs(10),
            ),
            idle_timeout: self.positive_duration(
                "server.idle_timeout",
                &s.idle_timeout,
                Duration::from_secs(60),
            ),
            max_request_body,
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                &s.shutdown_grace,
                Duration::from_secs(30),
            ),
        })
    }

    pub(super) fn client_ip(&mut self, c: &ClientIpFile) -> ClientIpConfig {
        let trusted_proxies = self.nets("client_ip.trusted_proxies", &c.trusted_proxies);
        for n in trusted_proxies.iter().filter(|n| n.prefix_len() == 0) {
            self.warnings.push(format!(
                "client_ip.trusted_proxies: `{n}` trusts every address, so any client can name its own IP in the forwarding header"
            ));
        }
        let header = match c.header.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("x-forwarded-for") => ForwardHeader::XForwardedFor,
            Some("forwarded") => ForwardHeader::Forwarded,
            Some("x-real-ip") => ForwardHeader::XRealIp,
            Some(other) => {
                self.err(
                    "client_ip.header",
                    format!("`{other}`: use \"x-forwarded-for\", \"forwarded\" or \"x-real-ip\""),
                );
                ForwardHeader::XForwardedFor
            }
        };
        ClientIpConfig {
            trusted_proxies,
            header,
            proxy_protocol: c.proxy_protocol,
        }
    }
}

/// More worker threads than this is a typo or a misunderstanding, not a tuning.
const MAX_WORKERS: usize = 1024;

/// Whether two listeners would fight for one port: the same address, or a wildcard address
/// (`0.0.0.0`, `[::]`, which on Linux also takes IPv4) and any address it covers.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |w: SocketAddr, o: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

pub(super) fn default_server() -> ServerConfig {
    ServerConfig {
        listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
        tls: None,
        redirect_http: None,
        admin_listen: None,
        workers: 0,
        max_connections: 10_000,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_request_body: 10 << 20,
        shutdown_grace: Duration::from_secs(30),
    }
}
