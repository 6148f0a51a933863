//! Config loading: the shipped example, errors with key paths and suggestions, route checks.

use std::path::Path;

use iptgate::config::Config;

fn load(text: &str) -> Result<Config, String> {
    Config::from_toml(text, Path::new("/nonexistent/gateway.toml")).map_err(|e| e.to_string())
}

const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
[upstreams.app]
url = "http://127.0.0.1:3000"
"#;

#[test]
fn the_shipped_gateway_toml_loads() {
    let dir = std::env::temp_dir().join(format!(
        "iptgate-shipped-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(root.join("gateway.toml"), dir.join("gateway.toml")).unwrap();
    iptgate::tls::write_dev_cert(&dir.join("certs"), &[]).unwrap();
    // The shipped file reads the secret from IPTGATE_SECRET; only this test sets it.
    std::env::set_var("IPTGATE_SECRET", "shipped-example-secret-0123456789abcdef");
    let cfg = Config::load(&dir.join("gateway.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.routes.len(), 4);
    assert!(cfg.token.is_some() && cfg.refresh.is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let e = load(&format!(
        "{BASE}[[routes]]\nname = \"a\"\nprefx = \"/\"\nauth = \"public\"\nupstream = \"app\"\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("routes[0]") && e.contains("did you mean `prefix`"),
        "{e}"
    );
    let e = load("[servr]\nlisten = \"x\"\n").unwrap_err();
    assert!(e.contains("did you mean `server`"), "{e}");
    let e = load(&format!(
        "{BASE}[server.tls]\ncert = \"a\"\nkey = \"b\"\nkye = \"c\"\n"
    ))
    .unwrap_err();
    assert!(e.contains("server"), "{e}");
}

#[test]
fn every_error_is_reported_with_its_key_path() {
    let e = load(&format!(
        r#"{BASE}
[rate_limits.r]
key = "ip"
rate = "fast"

[[routes]]
name = "a"
prefix = "/"
auth = "public"
upstream = "ap"
rate_limit = ["rr"]

[[routes]]
name = "b"
path = "/x"
upstream = "app"
"#
    ))
    .unwrap_err();
    assert!(e.contains("rate_limits.r.rate"), "{e}");
    assert!(
        e.contains("routes[0].upstream") && e.contains("did you mean `app`"),
        "{e}"
    );
    assert!(e.contains("routes[0].rate_limit[0]"), "{e}");
    assert!(e.contains("routes[1].auth"), "{e}");
}

/// A secret whose variable is not set (as where CI runs `check`) or an unknown algorithm does
/// not hide the rest of [token]'s errors.
#[test]
fn an_unusable_secret_or_algorithm_does_not_hide_the_other_token_errors() {
    for head in [
        "secret = { env = \"IPTGATE_TEST_UNSET_VARIABLE\" }",
        "algorithm = \"HS257\"\nsecret = { env = \"IPTGATE_TEST_UNSET_VARIABLE\" }",
    ] {
        let e = load(&format!(
            "{BASE}\n[token]\n{head}\nttl = \"0s\"\nheader = \"Transfer-Encoding\"\ncookie = {{ name = \"ipt\", path = \"nopath\" }}\nip_binding = \"exactly\"\n"
        ))
        .unwrap_err();
        for key in [
            "token.ttl",
            "token.header",
            "token.cookie.path",
            "token.ip_binding",
        ] {
            assert!(e.contains(key), "{key} in: {e}");
        }
        assert!(
            e.contains("token.secret.env") || e.contains("token.algorithm"),
            "{e}"
        );
    }
}

/// Tokens count time in whole seconds: a lifetime under one second is an error.
#[test]
fn token_lifetimes_under_a_second_are_errors() {
    let e = load(&format!(
        "{BASE}\n[token]\nsecret = {{ env = \"IPTGATE_TEST_UNSET_VARIABLE\" }}\nttl = \"500ms\"\n[refresh]\nenabled = true\nttl = \"100ns\"\n"
    ))
    .unwrap_err();
    assert!(e.contains("token.ttl: must be at least 1s"), "{e}");
    assert!(e.contains("refresh.ttl: must be at least 1s"), "{e}");
}

/// A Redis URL the client could not use at startup is a config error `check` reports, not a
/// failure at `run`: TLS (`rediss://`, not built in) or a database that is no number.
#[test]
fn redis_urls_the_client_cannot_use_are_config_errors() {
    for (url, says) in [
        (
            "rediss://:hunter2@127.0.0.1:6380/0",
            "rediss:// (TLS to Redis) is not supported",
        ),
        (
            "redis://:hunter2@127.0.0.1:6379/abc",
            "not a usable Redis URL",
        ),
        ("http://127.0.0.1:6379", "is not a redis:// URL"),
    ] {
        let e = load(&format!(
            "{BASE}\n[store]\nbackend = \"redis\"\nurl = \"{url}\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("store.url") && e.contains(says), "{url}: {e}");
        assert!(!e.contains("hunter2"), "the password is never shown: {e}");
    }
    let fine = load(&format!(
        "{BASE}\n[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/3\"\n"
    ));
    assert!(
        fine.as_ref().err().is_none_or(|e| !e.contains("store.url")),
        "{fine:?}"
    );
}

#[test]
fn unknown_keys_do_not_hide_each_other_or_the_other_errors() {
    let e = load(
        r#"
[server]
listen = "127.0.0.1:0"
admin_lisen = "off"
wrokers = 2
header_read_timeout = "soon"

[ip]
alow = ["10.0.0.0/8"]

[upstreams.app]
url = "ftp://x"

[[routes]]
name = "a"
prefx = "/api"
prefix = "/"
auth = "public"
upstream = "app"
"#,
    )
    .unwrap_err();
    for expected in [
        "did you mean `admin_listen`",
        "did you mean `workers`",
        "did you mean `allow`",
        "did you mean `prefix`",
        "server.header_read_timeout",
        "upstreams.app.url",
    ] {
        assert!(e.contains(expected), "{expected} missing from: {e}");
    }
    assert!(e.contains("6 error(s)"), "{e}");
}

#[test]
fn a_secret_in_the_wrong_shape_is_not_echoed() {
    let e = load(&format!(
        "{BASE}[token]\nalgorithm = \"HS256\"\nsecret = \"inline-secret-value-which-is-long-enough-xxxx\"\n"
    ))
    .unwrap_err();
    assert!(e.contains("token"), "{e}");
    assert!(!e.contains("inline-secret-value"), "{e}");
}

#[test]
fn duplicate_routes_are_errors_and_shadowed_routes_warnings() {
    let dup = format!(
        "{BASE}[[routes]]\nname = \"a\"\nprefix = \"/api\"\nauth = \"public\"\nupstream = \"app\"\n[[routes]]\nname = \"b\"\nprefix = \"/api/\"\nauth = \"public\"\nupstream = \"app\"\n"
    );
    let e = load(&dup).unwrap_err();
    assert!(e.contains("same match"), "{e}");
    let shadow = format!(
        "{BASE}[[routes]]\nname = \"a\"\nprefix = \"/api\"\nauth = \"public\"\nupstream = \"app\"\n[[routes]]\nname = \"b\"\nprefix = \"/api\"\nhost = \"x.example\"\nauth = \"public\"\nupstream = \"app\"\n"
    );
    let cfg = load(&shadow).unwrap();
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    assert!(cfg.warnings[0].contains("`b`"));
    let same_name = format!(
        "{BASE}[[routes]]\nname = \"a\"\nprefix = \"/x\"\nauth = \"public\"\nupstream = \"app\"\n[[routes]]\nname = \"a\"\nprefix = \"/y\"\nauth = \"public\"\nupstream = \"app\"\n"
    );
    let e = load(&same_name).unwrap_err();
    assert!(e.contains("routes[1].name"), "{e}");
}

#[test]
fn short_hs_secrets_and_missing_auth_are_refused() {
    let dir = std::env::temp_dir().join(format!(
        "iptgate-cfg-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret"), "too-short").unwrap();
    let text = format!(
        "{BASE}[token]\nsecret = {{ file = \"secret\" }}\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"token\"\nupstream = \"app\"\n"
    );
    let e = Config::from_toml(&text, &dir.join("gateway.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("token.secret") && e.contains("at least 32"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cookie_path_that_misses_the_refresh_paths_is_a_warning() {
    let dir = std::env::temp_dir().join(format!(
        "iptgate-cfg-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("secret"),
        "a-secret-of-more-than-32-bytes-0123456789",
    )
    .unwrap();
    let with_path = |path: &str| {
        let text = format!(
            "{BASE}[token]\nsecret = {{ file = \"secret\" }}\nset_cookie = true\ncookie = {{ name = \"ipt\", path = \"{path}\" }}\n[refresh]\nenabled = true\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"token\"\nupstream = \"app\"\n"
        );
        Config::from_toml(&text, &dir.join("gateway.toml"))
            .unwrap()
            .warnings
    };
    let w = with_path("/app");
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].contains("refresh.path `/auth/refresh`"), "{w:?}");
    assert!(w[1].contains("refresh.logout_path `/auth/logout`"), "{w:?}");
    // `/auth` covers `/auth/refresh`, `/au` does not (path-match is by segment).
    assert!(with_path("/").is_empty());
    assert!(with_path("/auth").is_empty());
    assert!(with_path("/auth/").is_empty());
    assert_eq!(with_path("/au").len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_command_exits_2_on_errors_and_0_on_a_valid_file() {
    let dir = std::env::temp_dir().join(format!(
        "iptgate-check-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!("{BASE}[[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"nope\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[0].upstream") && err.contains("routes[0].auth"),
        "{err}"
    );
    let good = dir.join("good.toml");
    std::fs::write(&good, format!("{BASE}[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("prefix /"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_unknown_or_mistyped_key_is_reported_at_once_with_its_whole_path() {
    let e = load(
        r#"
[server]
listen = "127.0.0.1:0"
workers = -1
idle_timeout = "5x"

[token]
secret = "an-inline-secret-which-must-never-be-echoed"
cookie = { name = "ipt", httponly = true }
forward_claim = { sub = "X" }

[upstreams.app]
url = "http://127.0.0.1:3000"

[[routes]]
name = "a"
prefix = "/"
dryrun = true
ip = { alow = ["192.0.2.1"] }
methods = "GET"
auth = "tokn"
upstream = "app"

[[routes]]
name = "login"
path = "/login"
auth = "mint"
mint = { statuses = [200] }
upstream = "app"
"#,
    )
    .unwrap_err();
    for expected in [
        "server.workers:",
        "server.idle_timeout:",
        "token.secret: must be a table: { env",
        "token.cookie.httponly: unknown key `httponly`; did you mean `http_only`?",
        "token.forward_claim: unknown key `forward_claim`; did you mean `forward_claims`?",
        "routes[0].dryrun: unknown key `dryrun`; did you mean `dry_run`?",
        "routes[0].ip.alow: unknown key `alow`; did you mean `allow`?",
        "routes[0].methods: invalid type: a string, expected a sequence",
        "routes[0].auth:",
        "routes[1].mint.statuses: unknown key `statuses`; did you mean `status`?",
    ] {
        assert!(e.contains(expected), "{expected} missing from: {e}");
    }
    assert!(e.contains("10 error(s)"), "nothing reported twice: {e}");
    assert!(!e.contains("inline-secret"), "{e}");
    assert!(!e.contains("SecretFile"), "{e}");
}

#[test]
fn a_misspelt_method_is_an_error_and_a_route_covered_by_methods_a_warning() {
    let route = |name: &str, methods: &str| {
        format!("[[routes]]\nname = \"{name}\"\nprefix = \"/api\"\n{methods}\nauth = \"public\"\nupstream = \"app\"\n")
    };
    let e = load(&format!(
        "{BASE}{}",
        route("a", "methods = [\"GETT\", \"propfind\"]")
    ))
    .unwrap_err();
    assert!(
        e.contains("routes[0].methods[0]") && e.contains("did you mean `GET`?"),
        "{e}"
    );
    assert!(e.contains("1 error(s)"), "WebDAV methods are methods: {e}");
    // Any method, then GET only on the same match: the second never answers, a warning.
    let cfg = load(&format!(
        "{BASE}{}{}",
        route("all", ""),
        route("get", "methods = [\"GET\"]")
    ))
    .unwrap();
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    assert!(
        cfg.warnings[0].contains("`get` is shadowed"),
        "{:?}",
        cfg.warnings
    );
    // The same methods on the same match: an error.
    let e = load(&format!(
        "{BASE}{}{}",
        route("one", "methods = [\"GET\"]"),
        route("two", "methods = [\"get\"]")
    ))
    .unwrap_err();
    assert!(e.contains("same match"), "{e}");
}

/// A folder holding a 32-byte-plus `secret` file, for configs with a [token] section.
fn dir_with_secret() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "iptgate-cfg-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret"), crate::harness::SECRET).unwrap();
    dir
}

fn load_in(dir: &Path, text: &str) -> Result<Config, String> {
    Config::from_toml(text, &dir.join("gateway.toml")).map_err(|e| e.to_string())
}

const TOKEN_ROUTE: &str =
    "[[routes]]\nname = \"app\"\nprefix = \"/\"\nauth = \"token\"\nupstream = \"app\"\n";

#[test]
fn a_rate_limit_without_key_or_rate_and_a_bad_certificate_are_reported_with_the_rest() {
    let dir = dir_with_secret();
    std::fs::write(dir.join("bad.crt"), "not a certificate").unwrap();
    std::fs::write(dir.join("bad.key"), "not a key").unwrap();
    std::fs::write(dir.join("ca.pem"), "not a CA").unwrap();
    let e = load_in(
        &dir,
        r#"
[server]
listen = "127.0.0.1:0"
tls = { cert = "bad.crt", key = "bad.key" }
[token]
secret = { file = "secret" }
ttl = "bogus"
ip_binding = "nah"
[upstreams.app]
url = "http://127.0.0.1:3000"
ca = "ca.pem"
[rate_limits.per_ip]
rate = "100/s"
[rate_limits.other]
key = "ip"
[[routes]]
name = "app"
prefix = "/"
auth = "token"
upstream = "app"
rate_limit = ["per_ip", "nope"]
"#,
    )
    .unwrap_err();
    for expected in [
        "rate_limits.per_ip.key: missing",
        "rate_limits.other.rate: missing",
        "token.ttl:",
        "token.ip_binding:",
        "routes[0].rate_limit[1]",
        "server.tls:",
        "upstreams.app.ca:",
    ] {
        assert!(e.contains(expected), "{expected} missing from: {e}");
    }
    assert!(e.contains("7 error(s)"), "{e}");
    let e = load_in(
        &dir,
        &format!("{BASE}[server.tls]\ncert = \"bad.crt\"\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n"),
    )
    .unwrap_err();
    assert!(e.contains("server.tls.key: missing"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn passwords_in_urls_and_lines_of_bad_toml_are_never_echoed() {
    let e = load(
        "[upstreams.app]\nurl = \"http://admin:Pw-SeCrEt@127.0.0.1:3000\"\n[upstreams.b]\ntargets = [\"ftp://u:Pw-SeCrEt@x\"]\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n",
    )
    .unwrap_err();
    assert!(
        e.contains("upstreams.app.url") && e.contains("admin:***@"),
        "{e}"
    );
    assert!(e.contains("upstreams.b.targets[0]"), "{e}");
    assert!(!e.contains("Pw-SeCrEt"), "{e}");
    // A syntax error names the line and column, never the line's text.
    let e = load("[server]\nlisten = \"127.0.0.1:0\"\n[token]\nsecret = \"Pw-SeCrEt-inline\n")
        .unwrap_err();
    assert!(e.contains("not valid TOML at line 4"), "{e}");
    assert!(!e.contains("Pw-SeCrEt"), "{e}");
    let e = load("[server]\nlisten = \"127.0.0.1:0\"\nkey = Pw-SeCrEt\n").unwrap_err();
    assert!(e.contains("line 3"), "{e}");
    assert!(!e.contains("Pw-SeCrEt"), "{e}");
    // A Redis URL that is not one is shown with its password masked.
    let e = load(&format!(
        "{BASE}[store]\nbackend = \"redis\"\nurl = \"http://:Pw-SeCrEt@r:6379\"\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n"
    ))
    .unwrap_err();
    assert!(e.contains("store.url") && !e.contains("Pw-SeCrEt"), "{e}");
}

#[test]
fn the_redis_url_may_come_from_the_environment_or_a_file_and_a_password_in_the_file_warns() {
    let dir = dir_with_secret();
    let route = "[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n";
    let with = |url: &str| {
        load_in(
            &dir,
            &format!("{BASE}[store]\nbackend = \"redis\"\nurl = {url}\n{route}"),
        )
    };
    std::env::set_var("IPTGATE_TEST_REDIS_URL", "redis://:pw@127.0.0.1:6379/0");
    let cfg = with("{ env = \"IPTGATE_TEST_REDIS_URL\" }").unwrap();
    assert_eq!(
        cfg.store.backend,
        iptgate::config::StoreBackend::Redis("redis://:pw@127.0.0.1:6379/0".into())
    );
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    std::fs::write(dir.join("redis-url"), "redis://127.0.0.1:6379/1\n").unwrap();
    let cfg = with("{ file = \"redis-url\" }").unwrap();
    assert_eq!(
        cfg.store.backend,
        iptgate::config::StoreBackend::Redis("redis://127.0.0.1:6379/1".into())
    );
    let cfg = with("\"redis://:pw@127.0.0.1:6379/0\"").unwrap();
    assert!(
        cfg.warnings.len() == 1 && cfg.warnings[0].contains("store.url holds a password"),
        "{:?}",
        cfg.warnings
    );
    let e = with("{ env = \"IPTGATE_TEST_REDIS_URL_UNSET\" }").unwrap_err();
    assert!(e.contains("store.url.env"), "{e}");
    std::env::set_var("IPTGATE_TEST_REDIS_URL", "http://:Pw-SeCrEt@r");
    let e = with("{ env = \"IPTGATE_TEST_REDIS_URL\" }").unwrap_err();
    assert!(e.contains("store.url") && !e.contains("Pw-SeCrEt"), "{e}");
    let e = with("{ evn = \"X\" }").unwrap_err();
    assert!(e.contains("store.url") && e.contains("{ env = "), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zero_and_impossible_values_are_errors_and_a_long_leeway_a_warning() {
    let dir = dir_with_secret();
    let e = load_in(
        &dir,
        r#"
[server]
listen = "127.0.0.1:0"
workers = 5000
header_read_timeout = "0s"
idle_timeout = "0ms"
shutdown_grace = "0s"
[token]
secret = { file = "secret" }
ttl = "0s"
[refresh]
enabled = true
ttl = "0s"
[upstreams.app]
url = "http://127.0.0.1:3000"
timeout = "0s"
connect_timeout = "0s"
[login_protection]
window = "0s"
lockout = "0s"
failure_status = [401, 1000]
[[routes]]
name = "login"
path = "/login"
methods = ["POST"]
auth = "mint"
mint = { status = [], required_claims = [] }
upstream = "app"
[[routes]]
name = "login2"
path = "/login2"
methods = ["POST"]
auth = "mint"
mint = { status = [0] }
upstream = "app"
"#,
    )
    .unwrap_err();
    for expected in [
        "server.workers: 5000 is more than 1024",
        "server.header_read_timeout: must be longer than 0",
        "server.idle_timeout: must be longer than 0",
        "token.ttl: must be longer than 0",
        "refresh.ttl: must be longer than 0",
        "upstreams.app.timeout: must be longer than 0",
        "upstreams.app.connect_timeout: must be longer than 0",
        "login_protection.window: must be longer than 0",
        "login_protection.lockout: must be longer than 0",
        "login_protection.failure_status[1]: 1000 is not an HTTP status code",
        "routes[0].mint.status: is empty",
        "routes[1].mint.status[0]: 0 is not an HTTP status code",
    ] {
        assert!(e.contains(expected), "{expected} missing from: {e}");
    }
    assert!(e.contains("12 error(s)"), "shutdown_grace may be 0: {e}");
    let e = load_in(
        &dir,
        &format!("{BASE}[login_protection]\nfailure_status = []\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n"),
    )
    .unwrap_err();
    assert!(
        e.contains("login_protection.failure_status: is empty"),
        "{e}"
    );
    let cfg = load_in(
        &dir,
        &format!("{BASE}[token]\nsecret = {{ file = \"secret\" }}\nttl = \"1m\"\nleeway = \"5m\"\n{TOKEN_ROUTE}"),
    )
    .unwrap();
    assert!(
        cfg.warnings.len() == 1
            && cfg.warnings[0].contains("token.leeway (5m) is longer than token.ttl (1m)"),
        "{:?}",
        cfg.warnings
    );
    // Schemes that can never match; a refresh ttl checked while refresh is off.
    let e = load_in(
        &dir,
        &format!("{BASE}[token]\nsecret = {{ file = \"secret\" }}\nschemes = [\"Bearer x\", \"\"]\n[refresh]\nenabled = false\nttl = \"bogus\"\n{TOKEN_ROUTE}"),
    )
    .unwrap_err();
    for expected in ["token.schemes[0]", "token.schemes[1]", "refresh.ttl"] {
        assert!(e.contains(expected), "{expected} missing from: {e}");
    }
    // Trusting every address is allowed, and warned about.
    let cfg = load_in(
        &dir,
        &format!("{BASE}[client_ip]\ntrusted_proxies = [\"0.0.0.0/0\"]\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n"),
    )
    .unwrap();
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("trusts every address")),
        "{:?}",
        cfg.warnings
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gateway_paths_and_token_headers_must_not_clash_or_be_framing_headers() {
    let dir = dir_with_secret();
    let e = load_in(
        &dir,
        &format!(
            r#"{BASE}
[token]
secret = {{ file = "secret" }}
header = "Set-Cookie"
forward_claims = {{ sub = "Transfer-Encoding", role = "X-Role" }}
[refresh]
enabled = true
header = "IPToken"
path = "/_iptgate/verify"
logout_path = "/_iptgate/verify"
[forward_auth]
[[routes]]
name = "login"
path = "/login"
methods = ["POST"]
auth = "mint"
mint = {{ claims_from_headers = {{ sub = "Content-Length", role = "Host", team = "X Team" }}, required_claims = ["role"] }}
upstream = "app"
"#
        ),
    )
    .unwrap_err();
    for expected in [
        "token.header: `Set-Cookie` carries cookies",
        "token.forward_claims.sub: `Transfer-Encoding` is a hop-by-hop header",
        "refresh.logout_path: `/_iptgate/verify` is already served by the gateway as refresh.path",
        "forward_auth.path: `/_iptgate/verify` is already served by the gateway as refresh.path",
        "routes[0].mint.claims_from_headers.sub: `Content-Length` describes the message itself",
        "routes[0].mint.claims_from_headers.role: `Host`",
        "routes[0].mint.claims_from_headers.team: `X Team` is not a valid HTTP header name",
    ] {
        assert!(e.contains(expected), "{expected} missing from: {e}");
    }
    // A refused header is one error: its claim still counts as named for required_claims.
    assert!(e.contains("7 error(s)"), "{e}");
    // The refresh token on the access token's header (any case).
    let e = load_in(
        &dir,
        &format!("{BASE}[token]\nsecret = {{ file = \"secret\" }}\nheader = \"X-Tok\"\n[refresh]\nenabled = true\nheader = \"x-tok\"\n{TOKEN_ROUTE}"),
    )
    .unwrap_err();
    assert!(
        e.contains("refresh.header: `x-tok` is also token.header"),
        "{e}"
    );
    assert!(e.contains("1 error(s)"), "{e}");
    let e = load_in(
        &dir,
        &format!("{BASE}[token]\nsecret = {{ file = \"secret\" }}\nforward_claims = {{ sub = \"iptoken\" }}\n{TOKEN_ROUTE}"),
    )
    .unwrap_err();
    assert!(
        e.contains("token.forward_claims.sub: `iptoken` is token.header"),
        "{e}"
    );
    // Authorization may carry a bare token (legacy clients), when accept does not also read
    // it as Bearer.
    load_in(
        &dir,
        &format!("{BASE}[token]\nsecret = {{ file = \"secret\" }}\nheader = \"Authorization\"\naccept = [\"header\", \"cookie\"]\n{TOKEN_ROUTE}"),
    )
    .unwrap();
    // Asymmetric keys serve the JWKS: no other gateway path may take it.
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    std::fs::write(dir.join("token.key"), key).unwrap();
    let e = load_in(
        &dir,
        &format!("{BASE}[token]\nalgorithm = \"ES256\"\nprivate_key = \"token.key\"\n[forward_auth]\npath = \"/.well-known/jwks.json\"\n{TOKEN_ROUTE}"),
    )
    .unwrap_err();
    assert!(
        e.contains("forward_auth.path: `/.well-known/jwks.json` is already served by the gateway as the JWKS endpoint"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cookie_paths_and_domains_are_checked_before_they_reach_set_cookie() {
    let dir = dir_with_secret();
    let with = |cookie: &str| {
        load_in(
            &dir,
            &format!("{BASE}[token]\nsecret = {{ file = \"secret\" }}\ncookie = {{ {cookie} }}\n{TOKEN_ROUTE}"),
        )
    };
    assert!(with("path = \"/app\", domain = \"example.com\"").is_ok());
    assert!(with("domain = \".example.com\"").is_ok());
    for (cookie, expected) in [
        (
            "path = \"app\"",
            "token.cookie.path: `app` must start with /",
        ),
        ("path = \"/; Domain=evil.example\"", "token.cookie.path"),
        ("path = \"/a b\"", "token.cookie.path"),
        ("path = \"/a\\r\\nSet-Cookie: x=1\"", "token.cookie.path"),
        ("domain = \"example.com; Secure\"", "token.cookie.domain"),
        ("domain = \"exa_mple..com\"", "token.cookie.domain"),
        ("domain = \"\"", "token.cookie.domain"),
    ] {
        let e = with(cookie).unwrap_err();
        assert!(e.contains(expected), "{cookie}: {e}");
        assert!(!e.contains('\r') && !e.contains("\nSet-Cookie"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn route_matchers_and_hosts_that_can_never_match_are_errors() {
    let route = |i: usize, m: &str| {
        format!("[[routes]]\nname = \"r{i}\"\n{m}\nauth = \"public\"\nupstream = \"app\"\n")
    };
    let routes: String = [
        "path = \"/login?next=/\"",
        "prefix = \"/a#b\"",
        "prefix = \"/a b\"",
        "path = \"/x\"\nhost = \"\"",
        "path = \"/y\"\nhost = \"*.example.com:8443\"",
        "path = \"/z\"\nhost = \"*.example.com\"",
        "path = \"/w\"\nhost = \"https://api.example.com/\"",
    ]
    .iter()
    .enumerate()
    .map(|(i, m)| route(i, m))
    .collect();
    let e = load(&format!("{BASE}{routes}")).unwrap_err();
    for expected in [
        "routes[0].path: `/login?next=/` holds `?`",
        "routes[1].prefix: `/a#b` holds `#`",
        "routes[2].prefix: `/a b` holds whitespace",
        "routes[3].host: is empty",
        "routes[4].host: `*.example.com:8443` is not a host name",
        "routes[5].host: `*.example.com` is not a host name",
        "routes[6].host:",
    ] {
        assert!(e.contains(expected), "{expected} missing from: {e}");
    }
    assert!(e.contains("7 error(s)"), "{e}");
    let cfg = load(&format!(
        "{BASE}{}{}",
        route(0, "prefix = \"/api\"\nhost = \"API.Example.com\""),
        route(1, "prefix = \"/v6\"\nhost = \"[::1]\"")
    ))
    .unwrap();
    assert_eq!(cfg.routes[0].host.as_deref(), Some("api.example.com"));
    // A port is ignored, as in requests: a warning, not an error.
    let cfg = load(&format!(
        "{BASE}{}",
        route(0, "prefix = \"/api\"\nhost = \"api.example.com:8443\"")
    ))
    .unwrap();
    assert_eq!(cfg.routes[0].host.as_deref(), Some("api.example.com"));
    assert!(
        cfg.warnings.iter().any(|w| w.contains("whatever the port")),
        "{:?}",
        cfg.warnings
    );
}

#[test]
fn cidrs_with_host_bits_are_warnings_naming_the_network() {
    let dir = dir_with_secret();
    std::fs::write(
        dir.join("deny.txt"),
        "# list\n172.16.5.4/12\n198.51.100.0/24\n",
    )
    .unwrap();
    let cfg = load_in(
        &dir,
        &format!(
            "{BASE}[client_ip]\ntrusted_proxies = [\"192.168.1.1/24\"]\n[ip]\nallow = [\"10.0.0.1/8\", \"10.0.0.0/8\"]\ndeny_file = \"deny.txt\"\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\nip = {{ deny = [\"2001:db8::1/32\"] }}\n"
        ),
    )
    .unwrap();
    let w = cfg.warnings.join("\n");
    for expected in [
        "client_ip.trusted_proxies[0]: `192.168.1.1/24` has host bits set; it is read as 192.168.1.0/24",
        "ip.allow[0]: `10.0.0.1/8` has host bits set; it is read as 10.0.0.0/8",
        "deny.txt:2): `172.16.5.4/12` has host bits set; it is read as 172.16.0.0/12",
        "routes[0].ip.deny[0]: `2001:db8::1/32` has host bits set; it is read as 2001:db8::/32",
    ] {
        assert!(w.contains(expected), "{expected} missing from: {w}");
    }
    assert_eq!(cfg.warnings.len(), 4, "{w}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_mint_route_without_required_claims_methods_or_a_rate_limit_is_a_warning() {
    let dir = dir_with_secret();
    let with = |mint: &str| {
        load_in(
            &dir,
            &format!("{BASE}[token]\nsecret = {{ file = \"secret\" }}\n[rate_limits.login]\nkey = \"ip\"\nrate = \"5/m\"\nburst = 5\n[[routes]]\nname = \"login\"\npath = \"/login\"\n{mint}\nauth = \"mint\"\nupstream = \"app\"\n{TOKEN_ROUTE}"),
        )
        .unwrap()
        .warnings
    };
    let w = with("methods = [\"POST\"]\nmint = { claims_from_headers = { sub = \"X-User\" }, required_claims = [\"sub\"] }");
    assert!(
        w.len() == 1 && w[0].contains("routes[0] (`login`) mints with no rate_limit"),
        "{w:?}"
    );
    let with = |mint: &str| with(&format!("{mint}\nrate_limit = [\"login\"]"));
    let w = with("methods = [\"POST\"]\nmint = { claims_from_headers = { sub = \"X-User\" }, required_claims = [\"sub\"] }");
    assert!(w.is_empty(), "{w:?}");
    let w = with("methods = [\"POST\"]");
    assert!(
        w.len() == 1 && w[0].contains("routes[0] (`login`) mints with no mint.required_claims"),
        "{w:?}"
    );
    let w =
        with("mint = { claims_from_headers = { sub = \"X-User\" }, required_claims = [\"sub\"] }");
    assert!(
        w.len() == 1 && w[0].contains("routes[0] (`login`) mints on every method"),
        "{w:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn listeners_on_one_port_and_a_miscased_algorithm_are_errors() {
    let route = "[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n";
    let up = "[upstreams.app]\nurl = \"http://127.0.0.1:3000\"\n";
    let e = load(&format!(
        "[server]\nlisten = \"0.0.0.0:18443\"\nadmin_listen = \"127.0.0.1:18443\"\n{up}{route}"
    ))
    .unwrap_err();
    assert!(
        e.contains("server.admin_listen: 127.0.0.1:18443 takes the same port as server.listen"),
        "{e}"
    );
    let e = load(&format!(
        "[server]\nlisten = \"127.0.0.1:18443\"\nadmin_listen = \"[::]:18443\"\n{up}{route}"
    ))
    .unwrap_err();
    assert!(e.contains("server.admin_listen"), "{e}");
    let e = load(&format!(
        "[server]\nlisten = \"127.0.0.1:18443\"\nadmin_listen = \"127.0.0.1:19901\"\nredirect_http = \"0.0.0.0:19901\"\ntls = {{ cert = \"c\", key = \"k\" }}\n{up}{route}"
    ))
    .unwrap_err();
    assert!(
        e.contains(
            "server.redirect_http: 0.0.0.0:19901 takes the same port as server.admin_listen"
        ),
        "{e}"
    );
    // Different ports, or the same port on two specific addresses, are fine.
    load(&format!(
        "[server]\nlisten = \"127.0.0.1:18443\"\nadmin_listen = \"127.0.0.2:18443\"\n{up}{route}"
    ))
    .unwrap();
    let e = load(&format!(
        "{BASE}[token]\nalgorithm = \"hs256\"\nsecret = {{ env = \"X\" }}\n{route}"
    ))
    .unwrap_err();
    assert!(
        e.contains("token.algorithm: unknown algorithm `hs256`; did you mean `HS256`?"),
        "{e}"
    );
}

#[test]
fn a_verify_only_gateway_cannot_have_mint_routes_or_refresh() {
    // public_keys without private_key: the gateway verifies tokens minted elsewhere. A mint
    // route would run the app's login and then fail to mint; refresh could never answer.
    let dir = dir_with_secret();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(dir.join("ec.pub"), kp.public_key_pem()).unwrap();
    std::fs::write(dir.join("ec.key"), kp.serialize_pem()).unwrap();
    let login = "[[routes]]\nname = \"login\"\npath = \"/login\"\nmethods = [\"POST\"]\nauth = \"mint\"\nupstream = \"app\"\n";
    let cfg = |keys: &str, extra: &str| {
        load_in(
            &dir,
            &format!("{BASE}[token]\nalgorithm = \"ES256\"\n{keys}\n{extra}{TOKEN_ROUTE}"),
        )
    };
    let e = cfg("public_keys = [\"ec.pub\"]", login).unwrap_err();
    assert!(
        e.contains("routes[0].auth") && e.contains("needs token.private_key"),
        "{e}"
    );
    let refresh = "[refresh]\nenabled = true\n";
    let e = cfg("public_keys = [\"ec.pub\"]", refresh).unwrap_err();
    assert!(
        e.contains("refresh.enabled") && e.contains("needs token.private_key"),
        "{e}"
    );
    // Verifying only is fine; with the private key, both are.
    assert!(cfg("public_keys = [\"ec.pub\"]", "").is_ok());
    assert!(cfg("private_key = \"ec.key\"", &format!("{refresh}{login}")).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A route whose auth or matcher is wrong still has the rest of it checked: every error of
/// the file in one run of `check`, each with a suggestion where one is close.
#[test]
fn a_broken_route_still_has_its_other_errors_reported() {
    let e = load(&format!(
        r#"{BASE}
[[routes]]
name = "a"
prefix = "/api"
auth = "publik"
upstream = "apq"
methods = ["GETT"]
rewrite = "v2"
host = "a b"
ip = {{ allow = ["300.0.0.1"] }}

[[routes]]
name = "b"
upstream = "app"
auth = "public"
rate_limit = ["nope"]
"#
    ))
    .unwrap_err();
    for want in [
        "routes[0].auth",
        "did you mean \"public\"",
        "routes[0].upstream",
        "routes[0].methods[0]",
        "routes[0].rewrite",
        "routes[0].host",
        "routes[0].ip.allow",
        "write exactly one of path",
        "routes[1].rate_limit[0]",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
    // One slip from a key (two letters swapped) is suggested.
    let e = load("[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\nulr = \"http://127.0.0.1:1\"\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n").unwrap_err();
    assert!(e.contains("did you mean `url`"), "{e}");
    // No upstream at all: said so, not an empty list.
    let e = load("[server]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n").unwrap_err();
    assert!(e.contains("none is defined"), "{e}");
}

#[test]
fn route_table_shows_rewrites_and_get_covers_head_when_shadowing() {
    let route = |name: &str, extra: &str| {
        format!("[[routes]]\nname = \"{name}\"\npath = \"/m\"\nauth = \"public\"\nupstream = \"app\"\n{extra}\n")
    };
    // A GET route answers HEAD too: the later GET+HEAD one is shadowed, not partly.
    let cfg = load(&format!(
        "{BASE}{}{}[[routes]]\nname = \"api\"\nprefix = \"/api\"\nrewrite = \"/v2\"\nauth = \"public\"\nupstream = \"app\"\n[[routes]]\nname = \"s\"\nprefix = \"/s\"\nstrip_prefix = true\nauth = \"public\"\nupstream = \"app\"\n[rate_limits.daily]\nkey = \"ip\"\nrate = \"10/d\"\n",
        route("get", "methods = [\"GET\"]"),
        route("gethead", "methods = [\"GET\", \"HEAD\"]"),
    ))
    .unwrap();
    assert!(
        cfg.warnings.len() == 1
            && cfg.warnings[0].contains("`gethead` is shadowed by the earlier route `get`"),
        "{:?}",
        cfg.warnings
    );
    let table = cfg.route_table();
    assert!(table.contains("upstream=app rewrite=/v2"), "{table}");
    assert!(table.contains("upstream=app strip_prefix"), "{table}");
    let e = load(&format!(
        "{BASE}{}[rate_limits.r]\nkey = \"ip\"\nrate = \"10/w\"\n",
        route("a", "")
    ))
    .unwrap_err();
    assert!(e.contains("N/d"), "{e}");
}

#[test]
fn a_deny_file_saved_with_a_byte_order_mark_loads() {
    let dir = dir_with_secret();
    std::fs::write(
        dir.join("deny.txt"),
        "\u{feff}192.0.2.7\r\n# note\r\n198.51.100.0/24\r\n",
    )
    .unwrap();
    let cfg = load_in(
        &dir,
        &format!("{BASE}[ip]\ndeny_file = \"deny.txt\"\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.ip.deny.len(), 2, "{:?}", cfg.ip.deny);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Between-route checks name routes by their place in the file, even when an earlier route
/// could not be built; a HEAD-only route behind a GET route on the same path is shadowed.
#[test]
fn route_checks_name_routes_by_their_place_in_the_file() {
    let route = |name: &str, extra: &str| {
        format!("[[routes]]\nname = \"{name}\"\npath = \"/m\"\nupstream = \"app\"\n{extra}\n")
    };
    let e = load(&format!(
        "{BASE}{}{}{}",
        route("a", "auth = \"pubic\""),
        route("b", "auth = \"public\"\nmethods = [\"GET\"]"),
        route("b", "auth = \"public\"\nmethods = [\"POST\"]"),
    ))
    .unwrap_err();
    assert!(
        e.contains("routes[2].name: `b` is already the name of routes[1]"),
        "{e}"
    );
    let cfg = load(&format!(
        "{BASE}{}{}",
        route("get", "auth = \"public\"\nmethods = [\"GET\"]"),
        route("head", "auth = \"public\"\nmethods = [\"HEAD\"]"),
    ))
    .unwrap();
    assert!(
        cfg.warnings.len() == 1
            && cfg.warnings[0].contains("`head` is shadowed by the earlier route `get`"),
        "{:?}",
        cfg.warnings
    );
}

#[test]
fn route_methods_and_hosts_take_what_requests_may_send() {
    let route = |extra: &str| {
        load(&format!(
            "{BASE}[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n{extra}\n"
        ))
    };
    assert!(route("methods = [\"PURGE\", \"QUERY\"]").is_ok());
    let e = route("methods = [\"CONNECT\"]").unwrap_err();
    assert!(e.contains("CONNECT is not proxied"), "{e}");
    assert!(route("host = \"my_service.internal\"").is_ok());
    assert!(route("host = \"example.com.\"").is_ok());
    let e = route("host = \"::1\"").unwrap_err();
    assert!(e.contains("[::1]"), "{e}");
}

/// Keys that parsed but could only misbehave: a token header the gateway manages or reads, a
/// rewrite to a path the gateway itself would refuse, an empty route name; and warnings for no
/// Authorization scheme for the Authorization place and a route a gateway-served path hides.
#[test]
fn keys_that_could_only_misbehave_are_errors_and_hidden_routes_warnings() {
    let dir = dir_with_secret();
    let token = "[token]\nsecret = { file = \"secret\" }\n";
    let e = load_in(
        &dir,
        &format!(
            "{BASE}{token}header = \"Authorization\"\n[refresh]\nenabled = true\nheader = \"X-Forwarded-For\"\n{TOKEN_ROUTE}"
        ),
    )
    .unwrap_err();
    assert!(
        e.contains(
            "token.header: `Authorization` is also the \"authorization\" place of token.accept"
        ),
        "{e}"
    );
    assert!(
        e.contains("refresh.header: `X-Forwarded-For` is a header the gateway manages or reads"),
        "{e}"
    );

    let route = |rewrite: &str| {
        format!("[[routes]]\nname = \"r\"\nprefix = \"/r\"\nauth = \"public\"\nupstream = \"app\"\nrewrite = \"{rewrite}\"\n")
    };
    for bad in ["/v2?inj=1", "/../secret", "/a%2Fb", "v2", "/a//b", "/ä"] {
        let e = load(&format!("{BASE}{}", route(bad))).unwrap_err();
        assert!(
            e.contains("routes[0].rewrite") && e.contains("must be an absolute, normalized path"),
            "{bad}: {e}"
        );
    }
    let e = load(&format!(
        "{BASE}[[routes]]\nname = \"u\"\nprefix = \"/ü\"\nauth = \"public\"\nupstream = \"app\"\n"
    ))
    .unwrap_err();
    assert!(
        e.contains("routes[0].prefix") && e.contains("non-ASCII"),
        "{e}"
    );
    for good in ["/", "/v2", "/v2/", "/caf%c3%a9"] {
        assert!(load(&format!("{BASE}{}", route(good))).is_ok(), "{good}");
    }

    let w = load_in(&dir, &format!("{BASE}{token}schemes = []\n{TOKEN_ROUTE}"))
        .unwrap()
        .warnings;
    assert!(
        w.iter()
            .any(|w| w.contains("token.schemes: is empty while token.accept lists")),
        "{w:?}"
    );
    let w = load_in(
        &dir,
        &format!("{BASE}{token}schemes = []\naccept = [\"cookie\"]\n{TOKEN_ROUTE}"),
    )
    .unwrap()
    .warnings;
    assert!(w.is_empty(), "{w:?}");

    let e = load(&format!(
        "{BASE}[[routes]]\nname = \"\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n"
    ))
    .unwrap_err();
    assert!(e.contains("routes[0].name: is empty"), "{e}");

    let login = "[[routes]]\nname = \"login\"\npath = \"/login\"\nmethods = [\"POST\", \"POST\"]\nauth = \"mint\"\nupstream = \"app\"\n";
    let w = load_in(
        &dir,
        &format!("{BASE}{token}[forward_auth]\npath = \"/login\"\n{login}{TOKEN_ROUTE}"),
    )
    .unwrap()
    .warnings;
    assert!(
        w.iter().any(|w| w.contains(
            "routes[0] (`login`): `/login` is served by the gateway itself as forward_auth.path"
        )),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|w| w.contains("routes[0].methods[1]: `POST` is listed twice")),
        "{w:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
