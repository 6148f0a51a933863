//! The shape of `gateway.toml`, exactly as a user writes it. No logic lives here: every
//! struct rejects unknown keys so a typo can never silently weaken a security setting.
//! Validation into the runtime [`crate::config::Config`] happens once, in `from_file/`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub client_ip: ClientIpFile,
    #[serde(default)]
    pub ip: IpFile,
    pub token: Option<TokenFile>,
    pub refresh: Option<RefreshFile>,
    #[serde(default)]
    pub store: StoreFile,
    pub forward_auth: Option<ForwardAuthFile>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitFile>,
    pub login_protection: Option<LoginProtectionFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub tls: Option<TlsFile>,
    pub redirect_http: Option<String>,
    pub admin_listen: Option<String>,
    pub workers: Option<usize>,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_request_body: Option<String>,
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Both are required; optional here so that a missing one is reported with the others.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClientIpFile {
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub header: Option<String>,
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// An allow/deny policy: the global `[ip]` table or a route's `ip = {…}`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IpFile {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    pub deny_file: Option<PathBuf>,
}

/// `{ env = "NAME" }` or `{ file = "path" }`: secrets never sit in the file itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretFile {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub algorithm: Option<String>,
    pub secret: Option<SecretFile>,
    pub private_key: Option<PathBuf>,
    #[serde(default)]
    pub public_keys: Vec<PathBuf>,
    pub ttl: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Option<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, toml::Value>,
    pub ip_binding: Option<String>,
    pub subnet_v4: Option<u8>,
    pub subnet_v6: Option<u8>,
    pub header: Option<String>,
    pub cookie: Option<CookieFile>,
    #[serde(default)]
    pub set_cookie: bool,
    pub accept: Option<Vec<String>>,
    pub schemes: Option<Vec<String>>,
    pub forward_claims: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub forward_token: bool,
    pub device_binding: Option<DeviceBindingFile>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CookieFile {
    pub name: Option<String>,
    pub secure: Option<bool>,
    pub http_only: Option<bool>,
    pub same_site: Option<String>,
    pub path: Option<String>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBindingFile {
    pub cookie: Option<String>,
    pub header: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshFile {
    #[serde(default)]
    pub enabled: bool,
    pub ttl: Option<String>,
    pub header: Option<String>,
    pub path: Option<String>,
    pub logout_path: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub backend: Option<String>,
    pub url: Option<StoreUrlFile>,
    pub on_error: Option<String>,
}

/// `url = "redis://…"`, or, since a Redis URL may hold a password, `{ env = "NAME" }` or
/// `{ file = "path" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StoreUrlFile {
    Plain(String),
    Secret(SecretFile),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthFile {
    pub path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub url: Option<String>,
    pub targets: Option<Vec<String>>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Both are required; optional here so that a missing one is reported with the others.
    pub key: Option<String>,
    pub rate: Option<String>,
    pub burst: Option<u32>,
    pub ipv6_prefix: Option<u8>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginProtectionFile {
    pub max_failures: Option<u32>,
    pub window: Option<String>,
    pub lockout: Option<String>,
    pub failure_status: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Option<String>,
    pub path: Option<String>,
    pub prefix: Option<String>,
    pub host: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    pub upstream: Option<String>,
    pub auth: Option<String>,
    pub mint: Option<MintFile>,
    #[serde(default)]
    pub rate_limit: Vec<String>,
    #[serde(default)]
    pub require: BTreeMap<String, Vec<String>>,
    pub ip: Option<IpFile>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rewrite: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintFile {
    pub status: Option<Vec<u16>>,
    #[serde(default)]
    pub claims_from_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub required_claims: Vec<String>,
}
