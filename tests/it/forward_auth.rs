//! Forward auth: Traefik/Caddy-style headers directly, and a real nginx `auth_request`.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

fn body(up: &Upstream) -> String {
    format!(
        r#"
[client_ip]
trusted_proxies = ["127.0.0.1/32"]
{TOKEN}
[forward_auth]
path = "/_iptgate/verify"

[upstreams.app]
url = "{u}"

[rate_limits.one]
key = "ip"
rate = "1/m"
burst = 1

[[routes]]
name = "open"
prefix = "/open"
auth = "public"
upstream = "app"

[[routes]]
name = "limited"
prefix = "/limited"
auth = "public"
upstream = "app"
rate_limit = ["one"]

[[routes]]
name = "www"
host = "www.example"
prefix = "/"
auth = "public"
upstream = "app"

[[routes]]
name = "admin"
prefix = "/admin"
auth = "token"
require = {{ role = ["admin"] }}
upstream = "app"

[[routes]]
name = "app"
prefix = "/"
auth = "token"
upstream = "app"
"#,
        u = up.url()
    )
}

#[tokio::test]
async fn traefik_style_headers_are_judged_as_the_original_request() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&body(&up)).await;
    let c = client();
    let ask = |uri: &str, method: &str, xff: &str| {
        c.get(gw.url("/_iptgate/verify"))
            .header("X-Forwarded-Method", method)
            .header("X-Forwarded-Uri", uri)
            .header("X-Forwarded-Host", "app.example.com")
            .header("X-Forwarded-For", xff)
    };
    let r = ask("/open/page", "GET", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = ask("/feed?x=1", "GET", "203.0.113.9").send().await.unwrap();
    assert_eq!(code_of(r).await, (401, "token_missing".into()));
    let token = mint("203.0.113.9", "alice", json!({"role": "admin"}));
    let r = ask("/admin/x", "POST", "203.0.113.9")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-subject"], "alice");
    assert_eq!(r.headers()["x-auth-role"], "admin");
    // The same token for a client at another address.
    let r = ask("/admin/x", "GET", "203.0.113.10")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "ip_mismatch".into()));
    // Both header families, naming different requests: ambiguous.
    let r = ask("/feed", "GET", "203.0.113.9")
        .header("X-Original-URI", "/open/page")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (400, "bad_request".into()));
    let r = ask("/open/page", "GET", "203.0.113.9")
        .header("X-Original-URI", "/open/page")
        .header("X-Original-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the same request twice is not ambiguous");
    // A method with lower-case letters is refused, as a request's own is; so is one sent
    // empty (it was judged as GET).
    for method in ["get", ""] {
        let r = ask("/open/page", method, "203.0.113.9")
            .send()
            .await
            .unwrap();
        assert_eq!(code_of(r).await, (400, "bad_request".into()), "{method:?}");
    }
    // Routes match on host here: a proxy naming no original host is not judged on the
    // gateway's own Host.
    let r = c
        .get(gw.url("/_iptgate/verify"))
        .header("X-Forwarded-Uri", "/open/page")
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (400, "bad_request".into()));
    assert_eq!(up.count(), 0, "forward auth never forwards");
    // From an untrusted peer: refused.
    let r = client_at(3)
        .get(gw.url("/_iptgate/verify"))
        .header("X-Forwarded-Uri", "/open/page")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (403, "ip_denied".into()));
}

/// A real nginx with `auth_request` in front of the upstream, asking the gateway.
#[tokio::test]
async fn nginx_auth_request_in_front_of_a_real_upstream() {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(nginx) = nginx else {
        if std::env::var("IPTGATE_SKIP_NGINX").is_ok() {
            return;
        }
        panic!("nginx is not installed (apt-get install nginx; .ci/run does it) — set IPTGATE_SKIP_NGINX=1 to skip");
    };
    let up = Upstream::start().await;
    let gw = Gateway::start_with(
        Opts {
            tls: false,
            ..Opts::default()
        },
        &body(&up),
    )
    .await;
    let dir = std::env::temp_dir().join(format!(
        "iptgate-nginx-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let conf = format!(
        r#"
user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_auth;
      auth_request_set $sub $upstream_http_x_auth_subject;
      auth_request_set $auth_status $upstream_status;
      auth_request_set $retry_after $upstream_http_retry_after;
      error_page 500 = @auth_refused;
      proxy_set_header X-Auth-Subject $sub;
      proxy_pass http://{up};
    }}
    location @auth_refused {{
      add_header Retry-After $retry_after always;
      if ($auth_status = 429) {{ return 429; }}
      if ($auth_status = 400) {{ return 400; }}
      if ($auth_status = 503) {{ return 503; }}
      return 500;
    }}
    location = /_auth {{
      internal;
      proxy_pass http://{gw}/_iptgate/verify;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
  }}
}}
"#,
        d = dir.display(),
        up = up.addr,
        gw = gw.addr,
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut child = tokio::process::Command::new(nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let c = plain_client();
    let mut ready = false;
    for _ in 0..100 {
        if c.get(format!("{base}/open/x")).send().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ready,
        "nginx did not start: {}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );
    let r = c.get(format!("{base}/open/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{base}/private")).send().await.unwrap();
    assert_eq!(r.status(), 401, "nginx relays the gateway's refusal");
    // nginx passes the client's own headers on to the auth request: a client's
    // `X-Forwarded-Uri` naming a public path must not be judged instead of the real URI.
    let before = up.count();
    for (name, value) in [
        ("X-Forwarded-Uri", "/open/x"),
        ("X-Forwarded-Method", "OPTIONS"),
    ] {
        let r = c
            .get(format!("{base}/private"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 200, "{name}: {value}");
    }
    assert_eq!(up.count(), before, "nothing reached the upstream");
    let token = mint("127.0.0.1", "alice", json!({}));
    let r = c
        .get(format!("{base}/private"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/private");
    assert_eq!(seen.header("x-auth-subject"), Some("alice"));
    // The host judged is the one nginx names (`X-Forwarded-Host $host`), never one the client
    // adds: admin.example falls to the token route, whatever X-Forwarded-Host it sends.
    let r = c
        .get(format!("{base}/x"))
        .header("Host", "www.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "www.example is public");
    let r = c
        .get(format!("{base}/x"))
        .header("Host", "admin.example")
        .header("X-Forwarded-Host", "www.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "judged as admin.example");
    // A refusal other than 401/403 comes through nginx with its own status (the recipe's
    // `error_page`), not as nginx's 500.
    let r = c.get(format!("{base}/limited/a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{base}/limited/a")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let wrong_ip = mint("127.0.0.9", "alice", json!({}));
    let r = c
        .get(format!("{base}/private"))
        .bearer_auth(&wrong_ip)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // SIGTERM lets the nginx master stop its workers too (SIGKILL would orphan them).
    let pid = child.id().unwrap().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
