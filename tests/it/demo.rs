//! `iptgate demo` and `iptgate cert`: what a newcomer runs first.

use std::time::Duration;

use crate::harness::*;

#[tokio::test]
async fn demo_runs_the_walkthrough_with_a_fresh_cert_and_secret() {
    let dir = std::env::temp_dir().join(format!(
        "iptgate-demo-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, admin, app) = (free_port(), free_port(), free_port());
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml")).unwrap();
    let text = shipped
        // Another loopback address than the usual: the printed commands must name it.
        .replace("127.0.0.1:8443", &format!("127.0.0.3:{port}"))
        .replace("127.0.0.1:9901", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:3000", &format!("127.0.0.1:{app}"));
    std::fs::write(dir.join("gateway.toml"), text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
        .args(["demo", "--config"])
        .arg(dir.join("gateway.toml"))
        .env_remove("IPTGATE_SECRET")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The client trusts any certificate here: the demo made its own.
    let c = reqwest::Client::builder()
        .tls_backend_preconfigured(insecure_tls())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("https://127.0.0.3:{port}");
    let mut up = false;
    for _ in 0..100 {
        if c.get(format!("{base}/public/hello")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "demo did not come up");
    assert!(dir.join("certs/gateway.crt").exists() && dir.join("certs/gateway.key").exists());
    assert!(dir.join(".iptgate-demo-secret").exists());
    let r = c
        .post(format!("{base}/login"))
        .body("user=demo&password=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{base}/login"))
        .body("user=demo&password=demo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.headers()["iptoken"].to_str().unwrap().to_string();
    let r = c
        .get(format!("{base}/feed"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{base}/echo"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x-auth-subject"], "demo");
    assert!(echo["headers"].get("authorization").is_none());
    let r = c
        .get(format!("{base}/admin/echo"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "demo is not an admin");
    let _ = child.start_kill();
    let out = child.wait_with_output().await.unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("curl") && printed.contains(&format!("{base}/login")),
        "{printed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cert_writes_a_usable_pair() {
    let dir = std::env::temp_dir().join(format!(
        "iptgate-cert-{}",
        iptgate::pipeline::mint::random_id()
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
        .args(["cert", "--out"])
        .arg(&dir)
        .args(["--host", "gw.example.com", "--host", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paths = iptgate::config::TlsPaths {
        cert: dir.join("gateway.crt"),
        key: dir.join("gateway.key"),
    };
    iptgate::tls::server_config(&paths).expect("the pair loads as a server certificate");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&paths.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "private key readable by its owner only");
    }
    // A key in place is never replaced unasked; with --force it is.
    let key = std::fs::read(&paths.key).unwrap();
    let again = |force: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"));
        cmd.args(["cert", "--out"]).arg(&dir);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let out = again(false);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        std::fs::read(&paths.key).unwrap(),
        key,
        "the key is untouched"
    );
    assert!(again(true).status.success());
    assert_ne!(
        std::fs::read(&paths.key).unwrap(),
        key,
        "replaced with --force"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `iptgate ARGS…` with `gateway.toml` written from `text` in a fresh folder: (exit code,
/// stderr, the folder).
fn run_in(text: &str, args: &[&str]) -> (Option<i32>, String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "iptgate-cli-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gateway.toml"), text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
        .args(args)
        .arg("--config")
        .arg(dir.join("gateway.toml"))
        .env_remove("IPTGATE_SECRET")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    )
}

#[test]
fn demo_reports_config_errors_as_check_does_and_writes_nothing() {
    let inline = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "off"
tls = { cert = "certs/gateway.crt", key = "certs/gateway.key" }
[token]
secret = "an-inline-demo-secret-0123456789-abcdefgh"
[upstreams.app]
url = "http://127.0.0.1:3000"
[[routes]]
name = "app"
prefix = "/"
auth = "public"
upstream = "app"
"#;
    let (code, err, dir) = run_in(inline, &["demo"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("token.secret: must be a table"), "{err}");
    assert!(!err.contains("an-inline-demo-secret"), "{err}");
    // Not the missing certificate: the demo writes one itself once the rest is right.
    assert!(!err.contains("does not exist"), "{err}");
    assert!(!dir.join(".iptgate-demo-secret").exists());
    assert!(
        !dir.join("certs").exists(),
        "nothing written for a bad config"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // No [upstreams.app]: a config problem too, reported before anything is written.
    let no_app = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "off"
[token]
secret = { env = "IPTGATE_SECRET" }
[upstreams.web]
url = "http://127.0.0.1:3000"
[[routes]]
name = "app"
prefix = "/"
auth = "token"
upstream = "web"
"#;
    let (code, err, dir) = run_in(no_app, &["demo"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("upstreams.app: missing"), "{err}");
    assert!(!dir.join(".iptgate-demo-secret").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cert_refuses_hosts_that_are_not_names_or_addresses() {
    for bad in [
        "gw example.com",
        "https://gw.example.com",
        "gw.example.com:8443",
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
            .args(["cert", "--out"])
            .arg(std::env::temp_dir().join("iptgate-cert-never-written"))
            .args(["--host", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--host"));
    }
    assert!(!std::env::temp_dir()
        .join("iptgate-cert-never-written")
        .exists());
}

#[test]
fn token_mint_refuses_reserved_claims_instead_of_dropping_them() {
    let text = "[server]\nlisten = \"127.0.0.1:0\"\n[token]\nsecret = { file = \"secret\" }\n[upstreams.app]\nurl = \"http://127.0.0.1:3000\"\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"token\"\nupstream = \"app\"\n";
    let dir = std::env::temp_dir().join(format!(
        "iptgate-cli-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gateway.toml"), text).unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let mint = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
            .args(["token", "mint", "--ip", "192.0.2.1", "--config"])
            .arg(dir.join("gateway.toml"))
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(mint(&["--sub", "alice"]).status.success());
    let out = mint(&["--claim", "exp=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`exp` is set by the gateway"));
    assert_eq!(mint(&["--sub", ""]).status.code(), Some(2));
    assert_eq!(mint(&["--ttl", "20y"]).status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
