//! `iptgate explain`: allowed, denied IP, rate limited, expired token.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

fn explain(cfg: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
        .args(["explain", "--config"])
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn explain_walks_the_phases() {
    let up = Upstream::start().await;
    let body = format!(
        r#"
[ip]
deny = ["127.0.0.66"]
{TOKEN}
[upstreams.app]
url = "{u}"

[rate_limits.tight]
key = "ip"
rate = "1/m"
burst = 2

[[routes]]
name = "open"
prefix = "/open"
auth = "public"
upstream = "app"
rate_limit = ["tight"]

[[routes]]
name = "app"
prefix = "/"
auth = "token"
upstream = "app"
"#,
        u = up.url()
    );
    let gw = Gateway::start(&body).await;
    let cfg = gw.config_path();
    let token = mint("127.0.0.1", "alice", json!({}));
    let out = explain(
        &cfg,
        &[
            "--method",
            "GET",
            "--path",
            "/feed",
            "--ip",
            "127.0.0.1",
            "--token",
            &token,
        ],
    );
    assert!(
        out.contains("route     #1 `app`") && out.contains("token     valid"),
        "{out}"
    );
    assert!(out.contains("verdict   forwarded upstream"), "{out}");

    // A reader that goes away first (`| head`) is not a crash.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
        .args(["explain", "--config"])
        .arg(&cfg)
        .args(["--path", "/feed", "--ip", "127.0.0.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let closed = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert!(
        closed.status.success() && !stderr.contains("panicked"),
        "{:?} {stderr}",
        closed.status
    );

    let out = explain(&cfg, &["--path", "/open/x", "--ip", "127.0.0.66"]);
    assert!(
        out.contains("DENIED") && out.contains("verdict   403 ip_denied"),
        "{out}"
    );

    let out = explain(
        &cfg,
        &["--path", "/open/x", "--ip", "127.0.0.1", "--repeat", "3"],
    );
    assert!(out.contains("`tight`") && out.contains("REFUSED"), "{out}");
    assert!(out.contains("verdict   429 rate_limited"), "{out}");

    let expired = mint_with(
        &token_config(""),
        "127.0.0.1",
        "alice",
        json!({}),
        Duration::from_secs(0),
    );
    // ttl 0 plus the default 30 s leeway is still valid; use a config without leeway.
    let gw2 =
        Gateway::start(&body.replace("forward_claims", "leeway = \"0s\"\nforward_claims")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = explain(
        &gw2.config_path(),
        &["--path", "/feed", "--ip", "127.0.0.1", "--token", &expired],
    );
    assert!(out.contains("verdict   401 token_expired"), "{out}");
}
