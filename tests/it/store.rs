//! The shared Redis store over real sockets: two gateway instances see each other's
//! revocations and refresh spends, and `[store] on_error` decides what happens when Redis is
//! down. Each test starts its own `redis-server` on a free port (no persistence) and stops it
//! through its child handle.
//!
//! `IPTGATE_SKIP_REDIS=1` skips these tests where `redis-server` is not installed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

/// A store operation gives up after 1 s; a request refused or let through because the store
/// is down must be answered well within this.
const STORE_DOWN_BOUND: Duration = Duration::from_secs(4);

/// A `redis-server` child on 127.0.0.1, killed when dropped.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one on a free port; `None` when it is not installed and `IPTGATE_SKIP_REDIS=1`.
    fn start() -> Option<Redis> {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Option<Redis> {
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var("IPTGATE_SKIP_REDIS").as_deref() == Ok("1") {
                    eprintln!("redis-server not found: skipped (IPTGATE_SKIP_REDIS=1)");
                    return None;
                }
                panic!(
                    "redis-server not found on PATH: install it (apt-get install redis-server, \
                     brew install redis) or set IPTGATE_SKIP_REDIS=1 to skip the store tests"
                );
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let mut r = Redis {
            port,
            child: Some(child),
        };
        r.wait_ready();
        Some(r)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Polls with `PING` until the server answers `+PONG` (at most 10 s).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            if ping(self.port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server and waits until it has exited.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A login (mint) route and a token catch-all, refresh on, the store in Redis.
fn app(up: &Upstream, redis_url: &str, on_error: &str) -> String {
    format!(
        r#"{TOKEN}
[refresh]
enabled = true

[store]
backend = "redis"
url = "{redis_url}"
on_error = "{on_error}"

[upstreams.app]
url = "{u}"

[[routes]]
name = "login"
path = "/login"
methods = ["POST"]
upstream = "app"
auth = "mint"
mint = {{ status = [200], claims_from_headers = {{ sub = "X-User-Id" }}, required_claims = ["sub"] }}

[[routes]]
name = "app"
prefix = "/"
upstream = "app"
auth = "token"
"#,
        u = up.url()
    )
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

/// Logs in as `user`: (access token, refresh token).
async fn login(c: &reqwest::Client, gw: &Gateway, user: &str) -> (String, String) {
    let r = c
        .post(gw.url("/login"))
        .body(format!("user={user}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    (header(&r, "iptoken"), header(&r, "iptoken-refresh"))
}

/// Status and code of a protected request with `token`.
async fn use_token(c: &reqwest::Client, gw: &Gateway, token: &str) -> (u16, String) {
    code_of(
        c.get(gw.url("/data"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn ok() -> (u16, String) {
    (200, String::new())
}

fn refused(status: u16, code: &str) -> (u16, String) {
    (status, code.to_string())
}

#[tokio::test]
async fn two_gateways_share_revocations_and_refresh_spends_through_redis() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let a = Gateway::start(&app(&up, &redis.url(), "closed")).await;
    let b = Gateway::start(&app(&up, &redis.url(), "closed")).await;
    let c = client();

    // A token minted by A works on both.
    let (access, _) = login(&c, &a, "alice").await;
    assert_eq!(use_token(&c, &a, &access).await, ok());
    assert_eq!(use_token(&c, &b, &access).await, ok());
    assert_eq!(up.last().header("x-auth-subject"), Some("alice"));

    // Logout on A revokes it on B too.
    let out = c
        .post(a.url("/auth/logout"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(
        use_token(&c, &b, &access).await,
        refused(401, "token_revoked")
    );
    assert_eq!(
        use_token(&c, &a, &access).await,
        refused(401, "token_revoked")
    );

    // Rotation on A, then the spent refresh token replayed on B: the family is revoked.
    let (access1, refresh1) = login(&c, &a, "bob").await;
    let rotated = c
        .post(a.url("/auth/refresh"))
        .header("iptoken-refresh", &refresh1)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let (access2, refresh2) = (
        header(&rotated, "iptoken"),
        header(&rotated, "iptoken-refresh"),
    );
    assert_eq!(use_token(&c, &b, &access2).await, ok());
    let replay = c
        .post(b.url("/auth/refresh"))
        .header("iptoken-refresh", &refresh1)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(replay).await, refused(401, "token_revoked"));
    assert_eq!(
        use_token(&c, &a, &access2).await,
        refused(401, "token_revoked"),
        "the rotated access token belongs to the revoked family"
    );
    assert_eq!(
        use_token(&c, &b, &access1).await,
        refused(401, "token_revoked")
    );
    let again = c
        .post(a.url("/auth/refresh"))
        .header("iptoken-refresh", &refresh2)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(again).await, refused(401, "token_revoked"));

    // Another user's tokens are untouched.
    let (carol, _) = login(&c, &b, "carol").await;
    assert_eq!(use_token(&c, &a, &carol).await, ok());
    drop(redis);
}

#[tokio::test]
async fn redis_down_is_503_when_closed_and_skips_the_check_when_open() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let up = Upstream::start().await;
    let closed = Gateway::start(&app(&up, &redis.url(), "closed")).await;
    let open = Gateway::start(&app(&up, &redis.url(), "open")).await;
    let c = client();
    let token = mint("127.0.0.1", "alice", json!({}));
    assert_eq!(use_token(&c, &closed, &token).await, ok());
    assert_eq!(use_token(&c, &open, &token).await, ok());
    let before = up.count();

    redis.stop();
    for _ in 0..2 {
        let started = Instant::now();
        assert_eq!(
            use_token(&c, &closed, &token).await,
            refused(503, "store_unavailable")
        );
        assert!(
            started.elapsed() < STORE_DOWN_BOUND,
            "closed answered after {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert_eq!(use_token(&c, &open, &token).await, ok());
        assert!(
            started.elapsed() < STORE_DOWN_BOUND,
            "open answered after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(up.count(), before + 2, "only the open gateway forwarded");

    // Logout cannot record a revocation without the store, whatever on_error says.
    let started = Instant::now();
    let out = c
        .post(closed.url("/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(out).await, refused(503, "store_unavailable"));
    assert!(started.elapsed() < STORE_DOWN_BOUND);

    // Redis back on the same port, and both gateways idle meanwhile: the first request of
    // each is served with the store, not with the failure of a reconnect tried while Redis
    // was down (closed: a 503; open: a revocation check skipped).
    // (Down a while longer first, so that the reconnects the failures above set off have
    // all given up.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _redis = Redis::start_on(redis.port).expect("redis-server was there a moment ago");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(use_token(&c, &closed, &token).await, ok());
    let bob = mint("127.0.0.1", "bob", json!({}));
    let out = c
        .post(closed.url("/auth/logout"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(
        use_token(&c, &open, &bob).await,
        refused(401, "token_revoked"),
        "the open gateway checked the store again"
    );
}

/// Closes every client connection of the server on `port` (`CLIENT KILL TYPE normal`), as a
/// Redis restart, an idle `timeout` or a proxy in between would; the data stays.
fn kill_clients(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"CLIENT KILL TYPE normal\r\n").unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    let killed: u32 = answer.trim_start_matches(':').trim().parse().unwrap();
    assert!(killed >= 2, "both gateways' connections killed: {answer:?}");
}

#[tokio::test]
async fn a_dropped_redis_connection_is_not_an_outage() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let up = Upstream::start().await;
    let closed = Gateway::start(&app(&up, &redis.url(), "closed")).await;
    let open = Gateway::start(&app(&up, &redis.url(), "open")).await;
    let c = client();
    let (valid, _) = login(&c, &closed, "alice").await;
    let (revoked, _) = login(&c, &closed, "mallory").await;
    let out = c
        .post(closed.url("/auth/logout"))
        .bearer_auth(&revoked)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);

    for round in 0..3 {
        kill_clients(redis.port);
        // The first request after the drop finds its connection gone: it is sent again on a
        // new one instead of failing (closed: 503) or skipping the revocation check (open).
        assert_eq!(
            use_token(&c, &open, &revoked).await,
            refused(401, "token_revoked"),
            "round {round}"
        );
        assert_eq!(use_token(&c, &closed, &valid).await, ok(), "round {round}");
        assert_eq!(
            use_token(&c, &closed, &revoked).await,
            refused(401, "token_revoked"),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn a_redis_backed_gateway_does_not_start_without_redis() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let up = Upstream::start().await;
    let url = redis.url();
    redis.stop();
    let dir = std::env::temp_dir().join(format!(
        "iptgate-it-store-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let text = Gateway::config_text(&dir, &Opts::default(), &app(&up, &url, "open"));
    std::fs::write(dir.join("gateway.toml"), &text).unwrap();
    let cfg = iptgate::config::Config::load(&dir.join("gateway.toml")).unwrap();
    let started = Instant::now();
    let result = iptgate::server::start(cfg).await;
    let _ = std::fs::remove_dir_all(&dir);
    let err = match result {
        Ok(_) => panic!("started with its store unreachable"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("store unavailable"), "{err}");
    assert!(!err.contains(&url), "the error never shows the URL: {err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// SPEC (intro): global rate limits and login lock-outs live in the store, shared by instances;
/// otherwise N instances would allow N times the configured failures and global rate.
const NOT_SHARED: &str = "login lock-outs and global rate limits must be shared through redis";

/// A login refused as locked out never reaches the route's shared `global` policy, whose count
/// cannot be given back: one locked-out client cannot spend everyone's login budget.
#[tokio::test]
async fn a_locked_out_login_spends_nothing_of_a_shared_global_limit() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let body = app(&up, &redis.url(), "closed").replace(
        "auth = \"mint\"",
        "auth = \"mint\"\nrate_limit = [\"everyone\"]",
    ) + "\n[rate_limits.everyone]\nkey = \"global\"\nrate = \"10/m\"\nburst = 10\n\n[login_protection]\nmax_failures = 3\nwindow = \"10m\"\nlockout = \"10m\"\n";
    let gw = Gateway::start(&body).await;
    let locked = client_at(7);
    for _ in 0..3 {
        let r = locked.post(gw.url("/login")).body("user=bad").send();
        assert_eq!(r.await.unwrap().status(), 401);
    }
    for _ in 0..5 {
        let r = locked.post(gw.url("/login")).body("user=bad").send();
        assert_eq!(
            code_of(r.await.unwrap()).await,
            refused(429, "login_locked")
        );
    }
    // Another client: the three failures counted, the five lock-outs did not.
    let r = client_at(8)
        .post(gw.url("/login"))
        .body("user=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit"), "\"everyone\";r=6;t=24");
}

#[tokio::test]
async fn login_failures_on_two_gateways_add_up_through_redis() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let body = format!(
        "{}\n[login_protection]\nmax_failures = 3\nwindow = \"10m\"\nlockout = \"10m\"\n",
        app(&up, &redis.url(), "closed")
    );
    let a = Gateway::start(&body).await;
    let b = Gateway::start(&body).await;
    let c = client();
    let bad = |gw: &Gateway| c.post(gw.url("/login")).body("user=bad").send();
    assert_eq!(bad(&a).await.unwrap().status(), 401);
    assert_eq!(bad(&a).await.unwrap().status(), 401);
    assert_eq!(bad(&b).await.unwrap().status(), 401);
    let (status, code) = code_of(bad(&b).await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (429, "login_locked"),
        "{NOT_SHARED}"
    );
    let (status, code) = code_of(bad(&a).await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (429, "login_locked"),
        "{NOT_SHARED}"
    );
}

/// The lock-out window slides: failures at 0, 1.2, 1.6 and 1.7 s with `max_failures = 3` and a
/// 1.5 s window lock at the last one (three within 1.5 s), where a window fixed at the first
/// failure would have restarted at 1.5 s and counted only two.
#[tokio::test]
async fn login_failures_count_in_a_sliding_window_in_redis() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let body = format!(
        "{}\n[login_protection]\nmax_failures = 3\nwindow = \"1500ms\"\nlockout = \"10m\"\n",
        app(&up, &redis.url(), "closed")
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    let started = tokio::time::Instant::now();
    for at in [0, 1200, 1600, 1700] {
        tokio::time::sleep_until(started + Duration::from_millis(at)).await;
        assert_eq!(
            c.post(gw.url("/login"))
                .body("user=bad")
                .send()
                .await
                .unwrap()
                .status(),
            401,
            "failure at {at} ms"
        );
    }
    let (status, code) = code_of(
        c.post(gw.url("/login"))
            .body("user=bad")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (429, "login_locked"));
}

#[tokio::test]
async fn a_global_rate_limit_is_shared_by_two_gateways_through_redis() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let body = format!(
        "{TOKEN}\n[store]\nbackend = \"redis\"\nurl = \"{}\"\n\n[rate_limits.everyone]\nkey = \"global\"\nrate = \"1/h\"\nburst = 3\n\n[upstreams.app]\nurl = \"{}\"\n\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nauth = \"public\"\nupstream = \"app\"\nrate_limit = [\"everyone\"]\n",
        redis.url(),
        up.url()
    );
    let a = Gateway::start(&body).await;
    let b = Gateway::start(&body).await;
    let c = client();
    for gw in [&a, &a, &b] {
        assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
    }
    let (status, code) = code_of(c.get(b.url("/")).send().await.unwrap()).await;
    assert_eq!(
        (status, code.as_str()),
        (429, "rate_limited"),
        "{NOT_SHARED}"
    );
    assert_eq!(up.count(), 3, "{NOT_SHARED}");
}

/// Holds the server's writes (scripts included) for `ms`, as a Redis failover does; reads go on.
fn pause_writes(port: u16, ms: u64) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(format!("CLIENT PAUSE {ms} WRITE\r\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+OK\r\n");
}

#[tokio::test]
async fn a_refresh_or_logout_cut_short_by_a_redis_stall_can_be_retried() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start().await;
    let gw = Gateway::start(&app(&up, &redis.url(), "closed")).await;
    let c = client();
    let refresh = |token: String| {
        let c = c.clone();
        let url = gw.url("/auth/refresh");
        async move {
            c.post(url)
                .header("iptoken-refresh", token)
                .send()
                .await
                .unwrap()
        }
    };

    // Scripts loaded (Redis caches them), as in a gateway that has served for a while.
    let (warm, warm_refresh) = login(&c, &gw, "carol").await;
    assert_eq!(refresh(warm_refresh).await.status(), 200);
    let out = c.post(gw.url("/auth/logout")).bearer_auth(&warm).send();
    assert_eq!(out.await.unwrap().status(), 204);

    // A refresh told 503 got no tokens: its retry with the same refresh token is a refresh,
    // not a reuse that revokes the client's own family.
    let (access, refresh1) = login(&c, &gw, "alice").await;
    pause_writes(redis.port, 1500);
    let cut = refresh(refresh1.clone()).await;
    assert_eq!(code_of(cut).await, refused(503, "store_unavailable"));
    tokio::time::sleep(Duration::from_millis(900)).await;
    let retried = refresh(refresh1).await;
    assert_eq!(retried.status(), 200, "the retry is a refresh");
    let access2 = header(&retried, "iptoken");
    assert_eq!(use_token(&c, &gw, &access).await, ok());
    assert_eq!(use_token(&c, &gw, &access2).await, ok());

    // A logout told 503 still ends the whole session once Redis resumes: the access token
    // and its refresh family together, so the retry's "already logged out" is true.
    let (access, refresh2) = login(&c, &gw, "bob").await;
    pause_writes(redis.port, 1500);
    let logout = |c: &reqwest::Client| c.post(gw.url("/auth/logout")).bearer_auth(&access).send();
    assert_eq!(
        code_of(logout(&c).await.unwrap()).await,
        refused(503, "store_unavailable")
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(logout(&c).await.unwrap().status(), 204);
    assert_eq!(
        code_of(refresh(refresh2).await).await,
        refused(401, "token_revoked"),
        "the family went with the access token"
    );
}
