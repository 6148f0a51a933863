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

#[tokio::test]
async fn explain_knows_the_gateway_served_paths() {
    let up = Upstream::start().await;
    let body = format!(
        "[client_ip]\ntrusted_proxies = [\"10.0.0.5/32\"]\n[refresh]\nenabled = true\n[forward_auth]\npath = \"/_iptgate/verify\"\n{}",
        open_and_token_routes(&up, "")
    );
    let gw = Gateway::start(&body).await;
    let cfg = gw.config_path();
    let verdict = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("verdict").map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no verdict: {out}"))
    };

    // Forward auth asked by an untrusted peer: refused, as the live gateway does.
    let out = explain(&cfg, &["--path", "/_iptgate/verify", "--ip", "127.0.0.1"]);
    assert_eq!(verdict(&out), "403 ip_denied", "{out}");
    // Asked by the trusted proxy: the original request is judged.
    let asked_by_proxy = |headers: &[&str]| {
        let mut args = vec!["--path", "/_iptgate/verify", "--ip", "10.0.0.5"];
        for h in headers {
            args.extend(["--header", h]);
        }
        explain(&cfg, &args)
    };
    let out = asked_by_proxy(&["X-Forwarded-Uri: /open/page", "X-Forwarded-Method: GET"]);
    assert!(out.contains("route     #0 `open`"), "{out}");
    assert!(verdict(&out).starts_with("200"), "{out}");
    let out = asked_by_proxy(&["X-Forwarded-Uri: /private"]);
    assert_eq!(verdict(&out), "401 token_missing", "{out}");

    // Refresh and logout are the gateway's own, never a route's, and judge a token.
    for p in ["/auth/refresh", "/auth/logout"] {
        let out = explain(
            &cfg,
            &["--method", "POST", "--path", p, "--ip", "127.0.0.1"],
        );
        assert!(out.contains("served    by the gateway"), "{out}");
        assert!(!out.contains("route     #"), "{out}");
        assert_eq!(verdict(&out), "401 token_missing", "{out}");
        let out = explain(&cfg, &["--path", p, "--ip", "127.0.0.1"]);
        assert_eq!(verdict(&out), "405 method_not_allowed", "{out}");
        assert!(out.contains("allow     POST"), "{out}");
    }
    // A refusal says why, as the log does.
    let out = explain(&cfg, &["--path", "/a%2Fb", "--ip", "127.0.0.1"]);
    assert_eq!(verdict(&out), "400 bad_request", "{out}");
    assert!(out.contains("cause     encoded slash"), "{out}");
    let token = mint("127.0.0.1", "alice", json!({}));
    let logout = |ip: &str| {
        explain(
            &cfg,
            &[
                "--method",
                "POST",
                "--path",
                "/auth/logout",
                "--ip",
                ip,
                "--token",
                &token,
            ],
        )
    };
    let out = logout("127.0.0.1");
    assert_eq!(verdict(&out), "answered by the gateway", "{out}");
    assert!(out.contains("token     valid (sub alice)"), "{out}");
    let out = logout("127.0.0.2");
    assert_eq!(verdict(&out), "401 ip_mismatch", "{out}");
    // No JWKS for an HS algorithm: that path goes on to the routes.
    let out = explain(
        &cfg,
        &["--path", "/.well-known/jwks.json", "--ip", "127.0.0.1"],
    );
    assert!(out.contains("route     #1 `app`"), "{out}");
}

/// `explain` and the running gateway agree where they once did not: a denied address hears
/// 403 before its bad path or Host is looked at, a dry-run route lets an address outside the
/// global allow list through, and methods are case-sensitive.
#[tokio::test]
async fn explain_agrees_with_the_gateway_on_phase_order_dry_runs_and_method_case() {
    let up = Upstream::start().await;
    let body = format!(
        r#"
[ip]
allow = ["127.0.0.1", "127.0.0.66"]
deny = ["127.0.0.66"]
[upstreams.app]
url = "{u}"

[[routes]]
name = "dry"
prefix = "/dry"
auth = "public"
upstream = "app"
dry_run = true

[[routes]]
name = "m"
path = "/m"
methods = ["POST"]
auth = "public"
upstream = "app"

[[routes]]
name = "open"
prefix = "/open"
auth = "public"
upstream = "app"
"#,
        u = up.url()
    );
    let gw = Gateway::start(&body).await;
    let cfg = gw.config_path();
    let verdict = |args: &[&str]| {
        let out = explain(&cfg, args);
        out.lines()
            .find_map(|l| l.strip_prefix("verdict   ").map(str::to_string))
            .unwrap_or_else(|| panic!("no verdict: {out}"))
    };
    // A denied address with a rejected path, or an invalid Host.
    let v = verdict(&["--path", "/a%2fb", "--ip", "127.0.0.66"]);
    assert!(v.starts_with("403 ip_denied"), "{v}");
    let r = client_at(66).get(gw.url("/a%2fb")).send().await.unwrap();
    assert_eq!(code_of(r).await, (403, "ip_denied".into()));
    let v = verdict(&["--path", "/x", "--ip", "127.0.0.66", "--host", "x@evil"]);
    assert!(v.starts_with("403 ip_denied"), "{v}");
    // An allowed address with a rejected path: 400.
    let v = verdict(&["--path", "/a%2fb", "--ip", "127.0.0.1"]);
    assert!(v.starts_with("400 bad_request"), "{v}");
    // Outside the global allow list, on a dry-run route: through, as live.
    let v = verdict(&["--path", "/dry/x", "--ip", "127.0.0.5"]);
    assert!(v.starts_with("forwarded upstream"), "{v}");
    let r = client_at(5).get(gw.url("/dry/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Methods are case-sensitive, and one with lower-case letters is refused (it would skip
    // the route naming `POST`, and be served by many apps as a POST).
    let v = verdict(&["--method", "post", "--path", "/m", "--ip", "127.0.0.1"]);
    assert!(v.starts_with("400 bad_request"), "{v}");
    let post = reqwest::Method::from_bytes(b"post").unwrap();
    let r = client().request(post, gw.url("/m")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v = verdict(&["--method", "PUT", "--path", "/m", "--ip", "127.0.0.1"]);
    assert!(v.starts_with("405 method_not_allowed"), "{v}");
}
