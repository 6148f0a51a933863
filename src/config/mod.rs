//! The validated runtime configuration. Every value here has already been checked by
//! `from_file/`: nothing after startup (or a reload) re-validates config.

pub mod checks;
mod file;
mod from_file;
pub mod units;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use ipnet::IpNet;

pub use file::*;
pub use from_file::RESERVED_CLAIMS;

/// One validation problem, named by its key path (`routes[2].upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file; loading reports them all at once.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {} error(s)\n{}", errors.len(), errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

/// Collects errors while validating; a validator pushes and keeps going.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<ConfigError>);

impl Errors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// The validated configuration of one generation.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from, and its folder (relative paths resolve against it).
    pub source: PathBuf,
    pub base_dir: PathBuf,
    pub server: ServerConfig,
    pub client_ip: ClientIpConfig,
    pub ip: IpLists,
    pub token: Option<TokenConfig>,
    pub refresh: Option<RefreshConfig>,
    pub store: StoreConfig,
    pub forward_auth: Option<String>,
    pub upstreams: Vec<UpstreamConfig>,
    pub rate_limits: Vec<RateLimitPolicy>,
    pub login_protection: Option<LoginProtection>,
    pub routes: Vec<RouteConfig>,
    /// Non-fatal findings (shadowed routes) that `check` and `explain` print.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsPaths>,
    pub redirect_http: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub workers: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_request_body: u64,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardHeader {
    XForwardedFor,
    Forwarded,
    XRealIp,
}

#[derive(Debug, Clone)]
pub struct ClientIpConfig {
    pub trusted_proxies: Vec<IpNet>,
    pub header: ForwardHeader,
    pub proxy_protocol: bool,
}

/// Allow/deny CIDR lists (deny_file already merged into `deny`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpLists {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl IpLists {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [(&'static str, Algorithm); 12] = [
        ("HS256", Algorithm::HS256),
        ("HS384", Algorithm::HS384),
        ("HS512", Algorithm::HS512),
        ("RS256", Algorithm::RS256),
        ("RS384", Algorithm::RS384),
        ("RS512", Algorithm::RS512),
        ("PS256", Algorithm::PS256),
        ("PS384", Algorithm::PS384),
        ("PS512", Algorithm::PS512),
        ("ES256", Algorithm::ES256),
        ("ES384", Algorithm::ES384),
        ("EdDSA", Algorithm::EdDSA),
    ];

    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// Key material as read from disk or the environment; `token::Keys` turns it into
/// signing and verification keys.
#[derive(Clone)]
pub enum KeyMaterial {
    /// HS*: the shared secret (≥ 32 bytes).
    Secret(Vec<u8>),
    /// Asymmetric: the PEM signing key (optional: verify-only gateways) plus extra PEM public keys.
    Pem {
        private_key: Option<Vec<u8>>,
        public_keys: Vec<Vec<u8>>,
    },
}

impl KeyMaterial {
    /// Whether tokens can be minted (HS* secret, or an asymmetric private key).
    pub fn can_sign(&self) -> bool {
        match self {
            KeyMaterial::Secret(_) => true,
            KeyMaterial::Pem { private_key, .. } => private_key.is_some(),
        }
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMaterial::Secret(_) => f.write_str("Secret(<redacted>)"),
            KeyMaterial::Pem {
                private_key,
                public_keys,
            } => write!(
                f,
                "Pem {{ private_key: {}, public_keys: {} }}",
                private_key.is_some(),
                public_keys.len()
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpBinding {
    Exact,
    Subnet,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Authorization,
    Header,
    Cookie,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

#[derive(Debug, Clone)]
pub struct CookieConfig {
    pub name: String,
    /// `<name>_refresh`: the refresh token's cookie.
    pub refresh_name: String,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
    pub path: String,
    pub domain: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DeviceBinding {
    Cookie(String),
    Header(HeaderName),
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub algorithm: Algorithm,
    pub keys: KeyMaterial,
    pub ttl: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    /// Static claims added to every minted token (JSON values).
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub ip_binding: IpBinding,
    pub subnet_v4: u8,
    pub subnet_v6: u8,
    pub header: HeaderName,
    pub cookie: CookieConfig,
    pub set_cookie: bool,
    pub accept: Vec<TokenSource>,
    /// Lower-cased Authorization schemes.
    pub schemes: Vec<String>,
    /// claim -> upstream header.
    pub forward_claims: Vec<(String, HeaderName)>,
    pub forward_token: bool,
    pub device_binding: Option<DeviceBinding>,
}

#[derive(Debug, Clone)]
pub struct RefreshConfig {
    pub ttl: Duration,
    pub header: HeaderName,
    pub path: String,
    pub logout_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Closed,
    Open,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Memory,
    Redis(String),
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub on_error: OnError,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// scheme://authority plus an optional base path ("" or "/base", no trailing slash).
    pub targets: Vec<Target>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub authority: http::uri::Authority,
    pub base_path: String,
}

impl Target {
    pub fn uri(&self) -> Uri {
        let scheme = if self.https { "https" } else { "http" };
        Uri::builder()
            .scheme(scheme)
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Ip,
    Subject,
    Route,
    Global,
    Header(HeaderName),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimitPolicy {
    pub name: String,
    pub key: LimitKey,
    /// Requests per `per`.
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
    pub ipv6_prefix: u8,
}

impl RateLimitPolicy {
    /// Time to earn one request back.
    pub fn interval(&self) -> Duration {
        self.per / self.count.max(1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginProtection {
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
    pub failure_status: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// Segment-aware prefix, stored without a trailing slash ("" for "/").
    Prefix(String),
}

#[derive(Debug, Clone)]
pub struct MintRule {
    pub status: Vec<u16>,
    /// claim -> upstream response header.
    pub claims_from_headers: Vec<(String, HeaderName)>,
    pub required_claims: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum AuthMode {
    Public,
    Mint(MintRule),
    Token,
}

impl AuthMode {
    pub fn name(&self) -> &'static str {
        match self {
            AuthMode::Public => "public",
            AuthMode::Mint(_) => "mint",
            AuthMode::Token => "token",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: PathMatch,
    /// Lower-cased host without port.
    pub host: Option<String>,
    /// Empty = every method.
    pub methods: Vec<Method>,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub auth: AuthMode,
    /// Indexes into `Config::rate_limits`.
    pub rate_limit: Vec<usize>,
    /// claim -> accepted values.
    pub require: Vec<(String, Vec<String>)>,
    pub ip: Option<IpLists>,
    pub strip_prefix: bool,
    pub rewrite: Option<String>,
    pub dry_run: bool,
}

impl RouteConfig {
    pub fn describe_match(&self) -> String {
        let m = match &self.matcher {
            PathMatch::Exact(p) => format!("path {p}"),
            PathMatch::Prefix(p) => format!("prefix {}", if p.is_empty() { "/" } else { p }),
        };
        let host = self
            .host
            .as_ref()
            .map(|h| format!(" host {h}"))
            .unwrap_or_default();
        let methods = if self.methods.is_empty() {
            " methods *".to_string()
        } else {
            format!(
                " methods {}",
                self.methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        format!("{m}{host}{methods}")
    }
}

impl Config {
    /// Read, parse and validate a config file. Never panics; every problem is reported.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.display().to_string(),
            errors: vec![ConfigError {
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Self::from_toml(&text, path)
    }

    /// Parse and validate config text as if it were read from `path` (relative paths in
    /// it resolve against `path`'s folder).
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        from_file::build(text, path)
    }

    /// The file's shape without validation (unknown keys and wrong types are still errors).
    pub fn shape(text: &str, path: &Path) -> Result<FileConfig, ConfigErrors> {
        from_file::shape_only(text, path)
    }

    pub fn upstream(&self, route: &RouteConfig) -> &UpstreamConfig {
        &self.upstreams[route.upstream]
    }

    /// The resolved route table as `check` prints it.
    pub fn route_table(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.routes.iter().enumerate() {
            let limits: Vec<&str> = r
                .rate_limit
                .iter()
                .map(|&i| self.rate_limits[i].name.as_str())
                .collect();
            // What the upstream receives instead of the matched prefix.
            let to = match (&r.rewrite, r.strip_prefix) {
                (Some(rw), _) => format!(" rewrite={rw}"),
                (None, true) => " strip_prefix".to_string(),
                (None, false) => String::new(),
            };
            out.push_str(&format!(
                "{i:>3}  {:<16} {:<40} auth={:<6} upstream={}{to}{}{}{}\n",
                r.name,
                r.describe_match(),
                r.auth.name(),
                self.upstreams[r.upstream].name,
                if limits.is_empty() {
                    String::new()
                } else {
                    format!(" rate_limit={}", limits.join(","))
                },
                if r.ip.is_some() { " ip=route" } else { "" },
                if r.dry_run { " DRY-RUN" } else { "" },
            ));
        }
        out
    }
}

/// Keys the file may hold at each level, for "did you mean" suggestions.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        // Similar enough, or one slip away (`ulr` for `url`: two letters swapped).
        .filter(|(s, c)| *s > 0.8 || (word.len() >= 3 && strsim::osa_distance(word, c) <= 1))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
