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
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"))
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
    let base = format!("https://127.0.0.1:{port}");
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
        printed.contains("curl") && printed.contains("/login"),
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
    let _ = std::fs::remove_dir_all(&dir);
}
