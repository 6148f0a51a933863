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
