//! Operations: reload, metrics, access logs, dry run, explain, forward auth.

use std::time::Duration;

use crate::harness::*;

const NEW_ROUTE: &str = r#"
[[routes]]
name = "fresh"
prefix = "/fresh"
auth = "public"
upstream = "app"
"#;

#[tokio::test]
async fn reload_under_load_loses_nothing_and_bad_configs_keep_the_old_one() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&open_and_token_routes(&up, "")).await;
    let path = gw.config_path();
    let base = std::fs::read_to_string(&path).unwrap();
    let with_new = base.replace(
        "\n[[routes]]\nname = \"app\"",
        &format!("{NEW_ROUTE}\n[[routes]]\nname = \"app\""),
    );
    assert_ne!(base, with_new);
    let c = client();
    assert_eq!(
        c.get(gw.url("/fresh/x")).send().await.unwrap().status(),
        401,
        "not yet routed: token route answers"
    );

    // A bounded client loop runs while the config is swapped 20 times.
    let url = gw.url("/open/ping");
    let load = tokio::spawn({
        let c = c.clone();
        async move {
            let mut failed = 0;
            for _ in 0..400 {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => failed += 1,
                }
            }
            failed
        }
    });
    let admin = plain_client();
    for i in 0..20 {
        std::fs::write(&path, if i % 2 == 0 { &with_new } else { &base }).unwrap();
        let r = admin.post(gw.admin_url("/reload")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(load.await.unwrap(), 0, "requests failed during reloads");
    // Last write (i = 19) was `base`; write the new one and reload once more.
    std::fs::write(&path, &with_new).unwrap();
    assert_eq!(
        admin
            .post(gw.admin_url("/reload"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(gw.url("/fresh/x")).send().await.unwrap().status(),
        200
    );

    let before = metric(
        &admin
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "iptgate_config_reloads_total",
        &["failed"],
    );
    std::fs::write(
        &path,
        with_new.replace("auth = \"public\"", "auth = \"publik\""),
    )
    .unwrap();
    let r = admin.post(gw.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("auth"));
    assert_eq!(
        c.get(gw.url("/fresh/x")).send().await.unwrap().status(),
        200,
        "old config still serving"
    );
    let after = metric(
        &admin
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "iptgate_config_reloads_total",
        &["failed"],
    );
    assert!(after >= before + 1.0, "failed reloads {before} -> {after}");
}

#[tokio::test]
async fn metrics_count_refusals_by_route_and_code() {
    let up = Upstream::start().await;
    let body = open_and_token_routes(&up, "").replace("name = \"app\"", "name = \"metrics-app\"");
    let gw = Gateway::start(&body).await;
    let admin = gw.admin_url("");
    let scrape = || scrape(&admin);
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 401);
    }
    let text = scrape().await;
    assert!(
        text.contains("# TYPE iptgate_requests_total counter"),
        "{text}"
    );
    let n = metric(
        &text,
        "iptgate_requests_total",
        &[
            "route=\"metrics-app\"",
            "code=\"token_missing\"",
            "status=\"401\"",
        ],
    );
    assert_eq!(n, 3.0, "{text}");
    assert!(metric(&text, "iptgate_denials_total", &["code=\"token_missing\""]) >= 3.0);
    assert!(text.contains("iptgate_request_duration_seconds_bucket"));
    assert!(text.contains("iptgate_active_connections"));
    // Never labelled by path or IP.
    assert!(
        !text.contains("127.0.0.1") && !text.contains("path="),
        "{text}"
    );
}

#[tokio::test]
async fn dry_run_lets_a_refusal_through_and_records_it() {
    let up = Upstream::start().await;
    let body = open_and_token_routes(&up, "").replace(
        "name = \"app\"\nprefix = \"/\"\nauth = \"token\"",
        "name = \"dry\"\nprefix = \"/\"\nauth = \"token\"\ndry_run = true\nip = { allow = [\"10.0.0.0/8\"] }\nrate_limit = [\"dry_one\"]",
    );
    let body = format!(
        "[ip]\ndeny = [\"127.0.0.66\"]\n[rate_limits.dry_one]\nkey = \"ip\"\nrate = \"1/h\"\nburst = 1\n{body}"
    );
    let gw = Gateway::start(&body).await;
    // The global deny list is a blocklist: it holds on a dry-run route too.
    let r = client_at(66).get(gw.url("/x")).send().await.unwrap();
    assert_eq!(code_of(r).await, (403, "ip_denied".to_string()));
    let r = client()
        .get(gw.url("/would-be-refused"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "dry run lets the request through");
    assert_eq!(up.last().uri, "/would-be-refused");
    // Over the rate limit too; counted as a dry-run refusal, not as a real one.
    let r = client().get(gw.url("/again")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = scrape(&gw.admin_url("")).await;
    assert!(
        metric(&text, "iptgate_dry_run_total", &["code=\"rate_limited\""]) >= 1.0,
        "{text}"
    );
    assert!(
        !text.contains("policy=\"dry_one\""),
        "a dry-run refusal is not a real one: {text}"
    );
    assert!(
        metric(&text, "iptgate_dry_run_total", &["code=\"token_missing\""]) >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "iptgate_dry_run_total", &["code=\"ip_denied\""]) >= 1.0,
        "{text}"
    );
}

/// A gateway as its own process (plain HTTP), logging JSON at `info` to a pipe, so that a
/// test can read its log lines; its metrics are its own.
struct Logged {
    child: tokio::process::Child,
    base: String,
    admin: String,
    dir: std::path::PathBuf,
}

impl Logged {
    async fn start(body: &str) -> Logged {
        Self::start_at(body, "info").await
    }

    /// With `RUST_LOG=rust_log`.
    async fn start_at(body: &str, rust_log: &str) -> Logged {
        Self::start_limited(body, rust_log, None).await
    }

    /// With `RUST_LOG=rust_log`, and at most `nofile` open files when given (`prlimit`).
    async fn start_limited(body: &str, rust_log: &str, nofile: Option<u32>) -> Logged {
        let dir = std::env::temp_dir().join(format!(
            "iptgate-log-{}",
            iptgate::pipeline::mint::random_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let admin_port = free_port();
        let text = Gateway::config_text(
            &dir,
            &Opts {
                tls: false,
                listen: &format!("127.0.0.1:{port}"),
                server: "",
            },
            body,
        )
        .replace(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:{admin_port}\""),
        );
        std::fs::write(dir.join("gateway.toml"), text).unwrap();
        let mut cmd = match nofile {
            // prlimit execs the gateway: the child's PID is the gateway's.
            Some(n) => {
                let mut c = tokio::process::Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_iptgate"));
                c
            }
            None => tokio::process::Command::new(env!("CARGO_BIN_EXE_iptgate")),
        };
        let child = cmd
            .args(["--log-format", "json", "run", "--config"])
            .arg(dir.join("gateway.toml"))
            .env("RUST_LOG", rust_log)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let c = plain_client();
        for _ in 0..100 {
            if c.get(format!("{base}/open/up")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let admin = format!("http://127.0.0.1:{admin_port}");
        Logged {
            child,
            base,
            admin,
            dir,
        }
    }

    /// Stop it (SIGTERM) and return everything it logged.
    async fn stop(self) -> String {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(10), self.child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// The access line (parsed) of the first request to `path`.
fn access_line(log: &str, path: &str) -> serde_json::Value {
    let line = log
        .lines()
        .find(|l| {
            l.contains("\"target\":\"access\"") && l.contains(&format!("\"path\":\"{path}\""))
        })
        .unwrap_or_else(|| panic!("no access line for {path}: {log}"));
    serde_json::from_str(line).unwrap()
}

/// A request head hyper refuses itself (`400`, `431` when too large) before any phase runs is
/// still logged and counted, with the connection's address as client.
#[tokio::test]
async fn requests_hyper_cannot_parse_are_logged_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let gw = Logged::start(&open_and_token_routes(&up, "")).await;
    let addr = gw.base.trim_start_matches("http://").to_string();
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    for (req, status) in [("GARBAGE\r\n\r\n".to_string(), "400"), (huge, "431")] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = s.write_all(req.as_bytes()).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        let out = String::from_utf8_lossy(&buf);
        assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "{out}");
    }
    // Counted when the connection ends, which the client may see a moment before the
    // gateway's task has run: looked at again for up to 5 s.
    let count = |text: &str, status: &str| {
        metric(
            text,
            "iptgate_requests_total",
            &[
                "route=\"\"",
                "code=\"bad_request\"",
                &format!("status=\"{status}\""),
            ],
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut text = scrape(&gw.admin).await;
    while ["400", "431"].iter().any(|s| count(&text, s) < 1.0)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = scrape(&gw.admin).await;
    }
    for status in ["400", "431"] {
        assert_eq!(count(&text, status), 1.0, "{status}: {text}");
    }
    let log = gw.stop().await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.contains("\"target\":\"access\"") && l.contains("bad_request"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    for v in &lines {
        assert_eq!(v["client_ip"], "127.0.0.1", "{v}");
        assert_eq!(v["method"], "-", "{v}");
    }
}

/// A listener change is only applied by a restart: a reload warns, naming the running and the
/// configured address, and a later reload back to the running one warns no more.
#[tokio::test]
async fn a_listener_change_warns_with_both_addresses_until_it_is_reverted() {
    let up = Upstream::start().await;
    let gw = Logged::start(&open_and_token_routes(&up, "")).await;
    let path = gw.dir.join("gateway.toml");
    let running = std::fs::read_to_string(&path).unwrap();
    let listen = gw.base.trim_start_matches("http://").to_string();
    let other = format!("127.0.0.1:{}", free_port());
    let c = plain_client();
    for text in [running.replace(&listen, &other), running.clone()] {
        std::fs::write(&path, text).unwrap();
        let r = c.post(format!("{}/reload", gw.admin)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let log = gw.stop().await;
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("takes effect after a restart"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains(&listen) && warnings[0].contains(&other),
        "{}",
        warnings[0]
    );
}

/// A streamed response is logged when it ends: the bytes sent and the time to the last one.
/// A small one the upstream cuts short (logged with its head) warns on target `upstream`.
#[tokio::test]
async fn a_streamed_response_is_logged_with_its_bytes_and_time_to_the_end() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..32 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if buf[..n].starts_with(b"GET /short") {
                        // 300 of the 1000 bytes announced, then the connection closes.
                        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
                        let _ = s.write_all(head).await;
                        let _ = s.write_all(&[b'x'; 300]).await;
                        return;
                    }
                    let head =
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
                    if s.write_all(head).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if s.write_all(b"6\r\n world\r\n0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = Logged::start(&route_to(&format!("http://{addr}"), "")).await;
    let r = plain_client()
        .get(format!("{}/stream/x", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello world");
    let r = plain_client()
        .get(format!("{}/short/x", gw.base))
        .send()
        .await
        .unwrap();
    assert!(
        r.bytes().await.is_err(),
        "the client sees the body cut short"
    );
    let log = gw.stop().await;
    let v = access_line(&log, "/stream/x");
    assert_eq!(v["bytes"], 11, "{v}");
    assert!(v["total_ms"].as_f64().unwrap() >= 290.0, "{v}");
    assert!(
        log.lines().any(|l| l.contains("\"target\":\"upstream\"")
            && l.contains("cut short")
            && l.contains(&addr.to_string())),
        "no upstream warning for the body cut short: {log}"
    );
}

/// A client that goes away in the middle of its upload is counted as a request it abandoned
/// (499, no code), not as a bad request: it is no refusal and no attack.
#[tokio::test]
async fn an_upload_the_client_abandons_is_a_499_not_a_refusal() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let gw = Logged::start(&open_and_token_routes(&up, "")).await;
    let addr = gw.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /open/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    let count = |text: &str, labels: &[&str]| metric(text, "iptgate_requests_total", labels);
    let abandoned = ["route=\"open\"", "status=\"499\"", "code=\"\""];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut text = scrape(&gw.admin).await;
    while count(&text, &abandoned) < 1.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = scrape(&gw.admin).await;
    }
    assert_eq!(count(&text, &abandoned), 1.0, "{text}");
    assert_eq!(
        count(&text, &["route=\"open\"", "code=\"bad_request\""]),
        0.0,
        "{text}"
    );
    let log = gw.stop().await;
    assert!(
        !log.lines().any(|l| l.contains("\"target\":\"security\"")),
        "no security line: {log}"
    );
}

/// One HPACK literal field (never indexed, no Huffman), for hand-made HTTP/2 requests.
fn hpack_literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x10);
    for s in [name, value] {
        assert!(s.len() < 127);
        block.push(s.len() as u8);
        block.extend_from_slice(s.as_bytes());
    }
}

/// The log of a gateway at `rust_log` sent one HTTP/2 request (prior knowledge) whose :path
/// lacks its leading slash, which the HTTP/2 library refuses itself (and logs, at debug).
async fn log_of_a_malformed_http2_request(rust_log: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let gw = Logged::start_at(&open_and_token_routes(&up, ""), rust_log).await;
    let addr = gw.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The preface, empty SETTINGS, then HEADERS (END_STREAM | END_HEADERS) on stream 1.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let mut block = Vec::new();
    hpack_literal(&mut block, ":method", "GET");
    hpack_literal(&mut block, ":scheme", "http");
    hpack_literal(&mut block, ":path", "open/x?q=QUERYMARKER");
    hpack_literal(&mut block, ":authority", "u:PASSMARKER@example");
    let len = block.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[1, 0x05, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    s.write_all(&out).await.unwrap();
    let mut buf = vec![0u8; 4096];
    // The server's SETTINGS and the stream's reset come back.
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    gw.stop().await
}

#[tokio::test]
async fn a_malformed_http2_request_is_never_logged_with_its_query_even_at_debug() {
    let log = log_of_a_malformed_http2_request("debug").await;
    assert!(
        !log.contains("QUERYMARKER") && !log.contains("PASSMARKER"),
        "{log}"
    );
    // Only when asked for by name: the request did reach the library's own log.
    let log = log_of_a_malformed_http2_request("info,h2=debug").await;
    assert!(log.contains("QUERYMARKER"), "{log}");
}

#[tokio::test]
async fn access_log_is_json_with_the_fields_and_never_a_token() {
    let up = Upstream::start().await;
    let gw = Logged::start(&open_and_token_routes(&up, "")).await;
    let base = &gw.base;
    let c = plain_client();
    let secret_query = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXF1ZXJ5.sig-in-query";
    let secret_header = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LWhlYWRlcg.sig-in-header";
    let r = c
        .get(format!("{base}/private/page?access_token={secret_query}"))
        .header("Authorization", format!("Bearer {secret_header}"))
        .header("Cookie", "ipt=cookie-secret-value")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let log = gw.stop().await;
    assert!(
        !log.contains("sig-in-query")
            && !log.contains("sig-in-header")
            && !log.contains("cookie-secret"),
        "{log}"
    );
    assert!(
        !log.contains("access_token"),
        "query strings are never logged: {log}"
    );
    let v = access_line(&log, "/private/page");
    for field in [
        "timestamp",
        "client_ip",
        "method",
        "path",
        "route",
        "status",
        "code",
        "upstream_ms",
        "total_ms",
        "bytes",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["status"], 401);
    assert_eq!(
        v["code"], "token_invalid",
        "two different tokens (header and cookie)"
    );
    assert_eq!(v["route"], "app");
    assert!(log
        .lines()
        .any(|l| l.contains("\"target\":\"security\"") && l.contains("token_invalid")));
}

#[tokio::test]
async fn the_access_log_covers_refused_failed_and_abandoned_requests() {
    let up = Upstream::start().await;
    let extra = format!(
        r#"
[[routes]]
name = "adm"
prefix = "/adm"
auth = "token"
upstream = "app"
require = {{ role = ["root"] }}

[[routes]]
name = "slow"
prefix = "/slow"
auth = "public"
upstream = "slow"
strip_prefix = true

[[routes]]
name = "sleepy"
prefix = "/sleep"
auth = "public"
upstream = "app"

[upstreams.slow]
url = "{}"
timeout = "300ms"
"#,
        up.url()
    );
    let gw = Logged::start(&open_and_token_routes(&up, &extra)).await;
    let base = &gw.base;
    let c = plain_client();
    // A genuine token refused by `require`: the log says whose it was.
    let token = mint("127.0.0.1", "bob", serde_json::json!({"role": "user"}));
    let r = c
        .get(format!("{base}/adm/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A rejected path is logged as sent.
    let r = c
        .get(format!("{base}/open/a%2fb?q=secret-q"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // An upstream timeout: the upstream's time is recorded; it is no refusal of the client.
    let r = c
        .get(format!("{base}/slow/sleep/3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    // A client that gives up before the answer.
    let gave_up = plain_client()
        .get(format!("{base}/sleep/1500"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = gw.stop().await;
    assert!(!log.contains("secret-q"), "{log}");

    let v = access_line(&log, "/adm/x");
    assert_eq!(
        (v["status"].as_u64(), v["sub"].as_str()),
        (Some(403), Some("bob")),
        "{v}"
    );
    assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    let v = access_line(&log, "/open/a%2fb");
    assert_eq!(v["status"], 400, "{v}");
    let v = access_line(&log, "/slow/sleep/3000");
    assert_eq!(
        (v["status"].as_u64(), v["code"].as_str()),
        (Some(504), Some("upstream_timeout"))
    );
    assert!(v["upstream_ms"].as_f64().unwrap() >= 250.0, "{v}");
    assert!(
        !log.lines()
            .any(|l| l.contains("\"target\":\"security\"") && l.contains("upstream_timeout")),
        "an upstream failure is not a refusal: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("\"target\":\"upstream\"") && l.contains("upstream_timeout")),
        "{log}"
    );
    let v = access_line(&log, "/sleep/1500");
    assert_eq!(
        (v["status"].as_u64(), v["route"].as_str()),
        (Some(499), Some("sleepy")),
        "{v}"
    );
    assert!(
        v["upstream_ms"].as_f64().unwrap() >= 250.0,
        "the upstream's time so far: {v}"
    );
}

#[tokio::test]
async fn login_refresh_and_logout_log_their_subject_and_a_refused_forward_auth_its_client_ip() {
    let up = Upstream::start().await;
    let login = r#"
[[routes]]
name = "login"
path = "/login"
methods = ["POST"]
auth = "mint"
mint = { status = [200], claims_from_headers = { sub = "X-User-Id" } }
upstream = "app"
"#;
    let body = format!(
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[forward_auth]\npath = \"/_iptgate/verify\"\n[refresh]\nenabled = true\n{}",
        open_and_token_routes(&up, login)
    );
    let gw = Logged::start(&body).await;
    let base = &gw.base;
    let c = plain_client();
    let r = c
        .post(format!("{base}/login"))
        .body("user=carol")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let refresh = r.headers()["iptoken-refresh"].to_str().unwrap().to_string();
    let r = c
        .post(format!("{base}/auth/refresh"))
        .header("IPToken-Refresh", &refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let access = r.headers()["iptoken"].to_str().unwrap().to_string();
    let r = c
        .post(format!("{base}/auth/logout"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .get(format!("{base}/_iptgate/verify"))
        .header("X-Forwarded-Uri", "/x/../..")
        .header("X-Forwarded-For", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A judged request is logged with the original method and path, not the proxy's GET.
    let r = c
        .get(format!("{base}/_iptgate/verify"))
        .header("X-Forwarded-Method", "DELETE")
        .header("X-Forwarded-Uri", "/judged/x?q=secret")
        .header("X-Forwarded-For", "203.0.113.8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let log = gw.stop().await;
    let judged = access_line(&log, "/judged/x");
    assert_eq!(judged["method"], "DELETE", "{log}");
    assert!(!log.contains("secret"), "{log}");
    assert_eq!(access_line(&log, "/login")["sub"], "carol", "{log}");
    assert_eq!(access_line(&log, "/auth/refresh")["sub"], "carol", "{log}");
    assert_eq!(access_line(&log, "/auth/logout")["sub"], "carol", "{log}");
    assert_eq!(
        access_line(&log, "/_iptgate/verify")["client_ip"],
        "203.0.113.7",
        "{log}"
    );
}

#[tokio::test]
async fn fixed_series_are_exported_at_zero_from_the_start() {
    let up = Upstream::start().await;
    let gw = Logged::start(&open_and_token_routes(&up, "")).await;
    let text = scrape(&gw.admin).await;
    for (name, labels) in [
        ("iptgate_config_reloads_total", &["result=\"ok\""][..]),
        ("iptgate_config_reloads_total", &["result=\"failed\""]),
        ("iptgate_tokens_minted_total", &["kind=\"access\""]),
        ("iptgate_tokens_minted_total", &["kind=\"refresh\""]),
        ("iptgate_tokens_revoked_total", &[]),
        ("iptgate_tokens_refreshed_total", &[]),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x))),
            "{name} {labels:?} missing: {text}"
        );
        assert_eq!(metric(&text, name, labels), 0.0, "{name} {labels:?}");
    }
    let admin = gw.admin.trim_start_matches("http://").to_string();
    let log = gw.stop().await;
    // The startup line names the admin address as an address, not a Rust Option.
    let listening = log
        .lines()
        .find(|l| l.contains("iptgate listening"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        listening.contains(&format!("\"admin\":\"{admin}\"")),
        "{listening}"
    );
}

#[tokio::test]
async fn a_dry_run_refusal_is_logged_with_the_request() {
    let up = Upstream::start().await;
    let body = open_and_token_routes(&up, "").replace(
        "name = \"app\"\nprefix = \"/\"\nauth = \"token\"",
        "name = \"dry\"\nprefix = \"/\"\nauth = \"token\"\ndry_run = true",
    );
    let gw = Logged::start(&body).await;
    let r = plain_client()
        .get(format!("{}/would-be-refused", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = gw.stop().await;
    let line = log
        .lines()
        .find(|l| l.contains("\"target\":\"security\"") && l.contains("dry run"))
        .unwrap_or_else(|| panic!("no dry-run line: {log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["client_ip"], "127.0.0.1", "{line}");
    assert_eq!(v["path"], "/would-be-refused", "{line}");
    assert_eq!(v["route"], "dry", "{line}");
    assert_eq!(v["method"], "GET", "{line}");
    assert_eq!(v["code"], "token_missing", "{line}");
    assert_eq!(
        access_line(&log, "/would-be-refused")["dry_run"],
        "token_missing"
    );
}

#[tokio::test]
async fn a_reload_that_takes_tls_out_keeps_the_tls_listener_serving() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&public_routes(&up)).await;
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let plain: String = text
        .lines()
        .filter(|l| !l.starts_with("tls = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(text, plain);
    assert_eq!(gw.reload_with(&plain).await, 200);
    // The listener was bound with TLS: it speaks TLS, with its certificate, until a restart.
    for _ in 0..3 {
        let r = client().get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[test]
fn startup_logs_are_plain_off_a_terminal_and_a_bind_failure_names_its_listener() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!(
        "iptgate-bind-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("gateway.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:{port}\"\n[ip]\nallow = [\"127.0.0.1/8\"]\n[upstreams.app]\nurl = \"http://127.0.0.1:9\"\n[[routes]]\nname = \"a\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
        .args(["--log-format", "pretty", "run", "--config"])
        .arg(dir.join("gateway.toml"))
        .env("RUST_LOG", "iptgate=loud")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("RUST_LOG: `iptgate=loud` is not a log filter"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "127.0.0.1:{port} (admin listener, server.admin_listen)"
        )),
        "{err}"
    );
    // The config's warnings are logged at startup, in plain text on a pipe.
    assert!(err.contains("`127.0.0.1/8` has host bits set"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes off a terminal: {err:?}"
    );
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A trusted proxy's TCP health check (connect, close, no byte) is not a refused PROXY
/// header: no `security` warning for every probe. A malformed header still gets one.
#[tokio::test]
async fn a_tcp_health_check_from_a_trusted_proxy_is_no_security_warning() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let body = format!(
        "[client_ip]\ntrusted_proxies = [\"127.0.0.2/32\"]\nproxy_protocol = true\n{}",
        open_and_token_routes(&up, "")
    );
    let gw = Logged::start(&body).await;
    let addr: std::net::SocketAddr = gw.base.trim_start_matches("http://").parse().unwrap();
    let from_proxy = || async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        sock.connect(addr).await.unwrap()
    };
    for _ in 0..3 {
        drop(from_proxy().await);
    }
    // One closed with a reset (SO_LINGER 0), as some probes do.
    let s = from_proxy().await;
    s.set_zero_linger().unwrap();
    drop(s);
    let mut s = from_proxy().await;
    s.write_all(b"PROXY BOGUS\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.stop().await;
    assert_eq!(log.matches("PROXY header refused").count(), 1, "{log}");
}

/// Out of file descriptors, a listener warns at most once a second (with the count of failed
/// accepts), and does not spin: one line per failed accept flooded the log, 80 a second.
#[tokio::test]
async fn accept_failures_warn_once_a_second() {
    let up = Upstream::start().await;
    let gw = Logged::start_limited(&open_and_token_routes(&up, ""), "info", Some(64)).await;
    let addr = gw.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.stop().await;
    let warned = log.matches("accept failed").count();
    assert!((1..=4).contains(&warned), "{warned} warnings: {log}");
    assert!(log.contains("\"failures\":"), "{log}");
}
