//! `iptgate demo`: the gateway from gateway.toml plus a built-in sample app at upstream
//! `app`'s address. Creates a self-signed dev certificate and a random secret when missing,
//! then prints curl commands that walk a newcomer through login -> token -> protected call.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::body::{full, Body};
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::server::Running;

/// Where the demo keeps its generated secret when `IPTGATE_SECRET` is not set.
const SECRET_FILE: &str = ".iptgate-demo-secret";

/// Why `demo` could not start: a config problem (exit 2, reported as `check` does) or a file
/// it could not write (exit 1).
#[derive(Debug)]
pub enum PrepareError {
    Config(ConfigErrors),
    Io(String),
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::Config(e) => write!(f, "{e}"),
            PrepareError::Io(e) => write!(f, "demo: {e}"),
        }
    }
}

/// Make the config runnable (dev cert, secret), then load it. Nothing is written until the
/// config validates: a missing certificate is the only error the demo fixes itself, and a
/// generated secret is handed to the validation through the environment first.
pub fn prepare(path: &Path) -> Result<Config, PrepareError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        PrepareError::Config(ConfigErrors {
            file: path.display().to_string(),
            errors: vec![ConfigError {
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        })
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = match Config::shape(&text, path) {
        Ok(f) => f,
        // Every error at once, as `check` prints them.
        Err(_) => return Err(config_errors(Config::from_toml(&text, path).err(), path)),
    };
    let mut own: Vec<ConfigError> = Vec::new();
    match file.upstreams.get("app") {
        None => own.push(ConfigError {
            path: "upstreams.app".into(),
            message: "missing: the demo runs its sample app at this upstream's address; add [upstreams.app] with url = \"http://127.0.0.1:3000\"".into(),
        }),
        Some(u) if u.url.as_deref().is_some_and(|u| u.starts_with("https://")) => {
            own.push(ConfigError {
                path: "upstreams.app.url".into(),
                message: "the sample app speaks plain HTTP: use url = \"http://127.0.0.1:3000\"".into(),
            })
        }
        Some(_) => {}
    }
    let cert = file.server.tls.as_ref().and_then(|t| {
        let (c, k) = (
            resolve(base, t.cert.as_ref()?),
            resolve(base, t.key.as_ref()?),
        );
        (!c.exists() || !k.exists()).then_some((c, k))
    });
    let mut new_secret = None;
    if let Some(env) = file
        .token
        .as_ref()
        .and_then(|t| t.secret.as_ref())
        .and_then(|s| s.env.clone())
    {
        if std::env::var_os(&env).is_none() {
            let f = base.join(SECRET_FILE);
            let secret = match std::fs::read_to_string(&f) {
                Ok(s) if s.trim().len() >= 32 => s.trim().to_string(),
                _ => {
                    let s = format!(
                        "{}{}",
                        crate::pipeline::mint::random_id(),
                        crate::pipeline::mint::random_id()
                    );
                    new_secret = Some((f, s.clone(), env.clone()));
                    s
                }
            };
            std::env::set_var(&env, secret);
        }
    }
    let mut errors = match Config::from_toml(&text, path) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors,
    };
    if cert.is_some() {
        // The certificate the demo is about to write.
        errors.retain(|e| e.path != "server.tls.cert" && e.path != "server.tls.key");
    }
    errors.extend(own);
    if !errors.is_empty() {
        return Err(PrepareError::Config(ConfigErrors {
            file: path.display().to_string(),
            errors,
        }));
    }
    let io = |e: String| PrepareError::Io(e);
    if let Some((cert, key)) = &cert {
        let dir = cert
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| base.to_path_buf());
        let c = crate::tls::generate_dev_cert(&[]).map_err(|e| io(e.to_string()))?;
        std::fs::create_dir_all(&dir).map_err(|e| io(format!("{}: {e}", dir.display())))?;
        std::fs::write(cert, c.cert_pem).map_err(|e| io(format!("{}: {e}", cert.display())))?;
        crate::tls::write_private(key, c.key_pem.as_bytes()).map_err(|e| io(e.to_string()))?;
        eprintln!(
            "demo: wrote a self-signed dev certificate to {} and {}",
            cert.display(),
            key.display()
        );
    }
    if let Some((f, s, env)) = new_secret {
        crate::tls::write_private(&f, s.as_bytes()).map_err(|e| io(e.to_string()))?;
        eprintln!(
            "demo: wrote a random token secret to {} (set {env} to use your own)",
            f.display()
        );
    }
    Config::from_toml(&text, path).map_err(PrepareError::Config)
}

/// The errors of a file the demo could not read the shape of, but for those it would fix
/// itself once the rest is right (a missing dev certificate, an unset secret variable): a
/// newcomer is not sent to make a certificate or a secret for nothing.
fn config_errors(e: Option<ConfigErrors>, path: &Path) -> PrepareError {
    let mut e = e.unwrap_or_else(|| ConfigErrors {
        file: path.display().to_string(),
        errors: vec![],
    });
    let fixed_by_demo = |c: &ConfigError| {
        (matches!(c.path.as_str(), "server.tls.cert" | "server.tls.key")
            && c.message.contains("does not exist"))
            || (c.path == "token.secret.env" && c.message.contains("is not set"))
    };
    if e.errors.iter().any(|c| !fixed_by_demo(c)) {
        e.errors.retain(|c| !fixed_by_demo(c));
    }
    PrepareError::Config(e)
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The sample app; stops when dropped.
pub struct DemoApp {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start the sample app at upstream `app`'s address (or `addr` when given).
pub async fn start_app(cfg: &Config) -> Result<DemoApp, String> {
    let up = cfg
        .upstreams
        .iter()
        .find(|u| u.name == "app")
        .ok_or("the config has no [upstreams.app]")?;
    let target = up.targets.first().ok_or("upstreams.app has no target")?;
    if target.https {
        return Err("the sample app speaks plain HTTP: use url = \"http://127.0.0.1:3000\"".into());
    }
    let addr = format!(
        "{}:{}",
        target
            .authority
            .host()
            .trim_matches(|c| c == '[' || c == ']'),
        target.authority.port_u16().unwrap_or(80)
    );
    serve_app(&addr).await
}

/// Serve the sample app on `addr` (tests use "127.0.0.1:0").
pub async fn serve_app(addr: &str) -> Result<DemoApp, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(app))
                    .await;
            });
        }
    });
    Ok(DemoApp { addr, task })
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Users of the sample app: name, password, role.
const USERS: [(&str, &str, &str); 2] = [("demo", "demo", "user"), ("admin", "admin", "admin")];

async fn app(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let resp = match (parts.method.clone(), parts.uri.path()) {
        (Method::POST, "/login") => {
            let text = String::from_utf8_lossy(&body);
            let field = |name: &str| -> Option<String> {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    return v.get(name).and_then(|x| x.as_str()).map(str::to_string);
                }
                text.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            };
            let (user, pass) = (
                field("user").unwrap_or_default(),
                field("password").unwrap_or_default(),
            );
            match USERS.iter().find(|(u, p, _)| *u == user && *p == pass) {
                Some((u, _, role)) => {
                    let mut r = json(StatusCode::OK, serde_json::json!({"welcome": u}));
                    r.headers_mut()
                        .insert("x-user-id", HeaderValue::from_static(u));
                    r.headers_mut()
                        .insert("x-user-role", HeaderValue::from_static(role));
                    r
                }
                None => json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"error": "bad credentials"}),
                ),
            }
        }
        (_, "/echo") | (_, "/admin/echo") => {
            let headers: serde_json::Map<String, serde_json::Value> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(v.to_str().unwrap_or("?").to_string()),
                    )
                })
                .collect();
            json(
                StatusCode::OK,
                serde_json::json!({
                    "method": parts.method.as_str(),
                    "path": parts.uri.path(),
                    "headers": headers,
                    "body_bytes": body.len(),
                }),
            )
        }
        (Method::GET, "/feed") => json(
            StatusCode::OK,
            serde_json::json!({"items": [
                {"id": 1, "title": "iptgate minted your token at login"},
                {"id": 2, "title": "it is bound to your IP address"},
                {"id": 3, "title": "replayed from another address it is refused"},
            ]}),
        ),
        (Method::GET, "/") | (Method::GET, "/public/hello") => json(
            StatusCode::OK,
            serde_json::json!({"hello": "from the sample app"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    };
    Ok(resp)
}

/// Print the walkthrough for a newcomer.
pub fn print_walkthrough(r: &Running) {
    let a = r.state.active.load();
    let tls = a.tls.is_some();
    let scheme = if tls { "https" } else { "http" };
    let port = r.addr.port();
    let k = if tls { " -k" } else { "" };
    // Where the listener is: loopback for a wildcard address, IPv6 in brackets.
    let host = match r.addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    let base = format!("{scheme}://{host}:{port}");
    let header = a
        .config
        .token
        .as_ref()
        .map(|t| t.header.as_str().to_string())
        .unwrap_or_else(|| "iptoken".into());
    crate::print_stdout(&format!(
        r#"
iptgate demo is running: gateway {base}  (sample app behind it)

1. Log in (the app answers 200; the gateway mints a token bound to your IP):
   curl -si{k} -X POST {base}/login -d 'user=demo&password=demo' | grep -i '^{header}:'

2. Call a protected route with it:
   TOKEN=$(curl -si{k} -X POST {base}/login -d 'user=demo&password=demo' | tr -d '\r' | awk -F': ' 'tolower($1)=="{header}"{{print $2}}')
   curl -s{k} {base}/echo -H "Authorization: Bearer $TOKEN"

3. Without a token, or with a bad password:
   curl -si{k} {base}/feed
   curl -si{k} -X POST {base}/login -d 'user=demo&password=nope'

4. The same token from another client IP is refused (ip_mismatch):
   curl -si{k} --interface 127.0.0.2 {base}/feed -H "Authorization: Bearer $TOKEN"

5. Admin-only route (log in as admin/admin to pass):
   curl -si{k} {base}/admin/echo -H "Authorization: Bearer $TOKEN"

Press Ctrl-C to stop.
"#
    ));
}
