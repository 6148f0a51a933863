//! Phase 4 over real sockets: named rate-limit policies (every key kind), the IETF
//! `RateLimit-Policy` / `RateLimit` headers, `Retry-After`, and the login lock-out.
//!
//! Quotas are `1/h` with a burst of 3: the burst decides within a test run and nothing is
//! earned back meanwhile, so no test sleeps except the one waiting out a 2 s lock-out.

use std::time::Duration;

use iptgate::config::Config;
use serde_json::json;

use crate::harness::*;

/// A `1/h`, burst 3 policy with the given key.
fn policy(name: &str, key: &str) -> String {
    format!("\n[rate_limits.{name}]\nkey = \"{key}\"\nrate = \"1/h\"\nburst = 3\n")
}

/// A route `name` on `prefix` with `auth`, limited by `limits`.
fn route(name: &str, prefix: &str, auth: &str, limits: &[&str]) -> String {
    let limits: Vec<String> = limits.iter().map(|l| format!("\"{l}\"")).collect();
    format!(
        "\n[[routes]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nauth = \"{auth}\"\nupstream = \"app\"\nrate_limit = [{}]\n",
        limits.join(", ")
    )
}

fn upstream(up: &Upstream) -> String {
    format!("\n[upstreams.app]\nurl = \"{}\"\n", up.url())
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

async fn get(c: &reqwest::Client, gw: &Gateway, path: &str) -> reqwest::Response {
    c.get(gw.url(path)).send().await.unwrap()
}

/// Statuses of `n` GETs of `path`.
async fn statuses(c: &reqwest::Client, gw: &Gateway, path: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(c, gw, path).await.status().as_u16());
    }
    out
}

/// Asserts a 429 `rate_limited` with an integer `Retry-After` of at least one second.
async fn assert_limited(r: reqwest::Response) {
    let retry = header(&r, "retry-after").expect("a 429 carries Retry-After");
    let secs: u64 = retry
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not integer seconds: {retry:?}"));
    assert!(secs >= 1, "Retry-After {secs}");
    assert_eq!(code_of(r).await, (429, "rate_limited".to_string()));
}

#[tokio::test]
async fn burst_then_429_with_retry_after_and_ratelimit_headers_on_every_response() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        upstream(&up),
        policy("burst3", "ip"),
        route("limited", "/limited", "public", &["burst3"]),
        route("free", "/free", "public", &[]),
    ))
    .await;
    let c = client();

    // 1/h with burst 3: q = 3, w = 3 h to refill the whole burst.
    let want_policy = "\"burst3\";q=3;w=10800";
    for (r_left, t) in [(2, 3600), (1, 7200), (0, 10800)] {
        let resp = get(&c, &gw, "/limited/x").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "ratelimit-policy").as_deref(),
            Some(want_policy)
        );
        assert_eq!(
            header(&resp, "ratelimit").as_deref(),
            Some(format!("\"burst3\";r={r_left};t={t}").as_str())
        );
    }
    assert_eq!(up.count(), 3);

    let refused = get(&c, &gw, "/limited/x").await;
    assert_eq!(
        header(&refused, "ratelimit-policy").as_deref(),
        Some(want_policy)
    );
    assert_eq!(
        header(&refused, "ratelimit").as_deref(),
        Some("\"burst3\";r=0;t=10800")
    );
    // One request is earned back an hour after the first.
    assert_eq!(header(&refused, "retry-after").as_deref(), Some("3600"));
    assert_limited(refused).await;
    assert_limited(get(&c, &gw, "/limited/y").await).await;
    assert_eq!(up.count(), 3, "refused requests never reach the upstream");

    // A route without a policy carries no rate-limit headers and is not limited.
    let free = get(&c, &gw, "/free").await;
    assert_eq!(free.status(), 200);
    assert!(free.headers().get("ratelimit").is_none());
    assert!(free.headers().get("ratelimit-policy").is_none());
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn ip_policy_gives_each_client_ip_its_own_bucket() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        upstream(&up),
        policy("per_ip", "ip"),
        route("all", "/", "public", &["per_ip"]),
    ))
    .await;
    let (two, three) = (client_at(2), client_at(3));

    assert_eq!(statuses(&two, &gw, "/", 4).await, [200, 200, 200, 429]);
    let r = get(&three, &gw, "/").await;
    assert_eq!(r.status(), 200, "127.0.0.3 has a bucket of its own");
    assert_eq!(
        header(&r, "ratelimit").as_deref(),
        Some("\"per_ip\";r=2;t=3600")
    );
    assert_eq!(statuses(&three, &gw, "/", 3).await, [200, 200, 429]);
    assert_limited(get(&two, &gw, "/").await).await;
    assert_eq!(up.count(), 6);
}

#[tokio::test]
async fn subject_policy_gives_each_verified_user_its_own_bucket() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "{TOKEN}{}{}{}",
        upstream(&up),
        policy("per_user", "subject"),
        route("app", "/", "token", &["per_user"]),
    ))
    .await;
    let c = client();
    let alice = mint("127.0.0.1", "alice", json!({}));
    let bob = mint("127.0.0.1", "bob", json!({}));
    let as_user = |token: &str| c.get(gw.url("/data")).bearer_auth(token).send();

    for r_left in [2, 1, 0] {
        let r = as_user(&alice).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "ratelimit").and_then(|v| v.split(';').nth(1).map(str::to_string)),
            Some(format!("r={r_left}"))
        );
    }
    assert_limited(as_user(&alice).await.unwrap()).await;

    // Same IP, another subject: a fresh bucket.
    let r = as_user(&bob).await.unwrap();
    assert_eq!(r.status(), 200, "bob is not limited by alice's requests");
    assert_eq!(
        header(&r, "ratelimit").as_deref(),
        Some("\"per_user\";r=2;t=3600")
    );
    // A request without a valid token is refused by auth and spends no subject's budget.
    let r = c.get(gw.url("/data")).send().await.unwrap();
    // Refused before the subject is known: the headers still name the route's first policy,
    // with its whole quota (nothing was counted).
    assert!(header(&r, "ratelimit-policy").is_some_and(|v| v.starts_with("\"per_user\";q=3")));
    assert_eq!(
        header(&r, "ratelimit").as_deref(),
        Some("\"per_user\";r=3;t=0")
    );
    let (status, code) = code_of(r).await;
    assert_eq!((status, code.as_str()), (401, "token_missing"));
    assert_eq!(as_user(&bob).await.unwrap().status(), 200);
    assert_eq!(as_user(&bob).await.unwrap().status(), 200);
    assert_limited(as_user(&bob).await.unwrap()).await;
    assert_eq!(up.count(), 6);
}

#[tokio::test]
async fn header_policy_keys_by_the_header_value() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        upstream(&up),
        policy("per_key", "header:X-Api-Key"),
        route("api", "/", "public", &["per_key"]),
    ))
    .await;
    let c = client();
    let with_key = |key: &'static str| c.get(gw.url("/api")).header("x-api-key", key).send();

    for _ in 0..3 {
        assert_eq!(with_key("key-a").await.unwrap().status(), 200);
    }
    assert_limited(with_key("key-a").await.unwrap()).await;
    // Same client, another key value: its own bucket; from another IP the key is still spent.
    assert_eq!(with_key("key-b").await.unwrap().status(), 200);
    let other_ip = client_at(7)
        .get(gw.url("/api"))
        .header("x-api-key", "key-a")
        .send()
        .await
        .unwrap();
    assert_limited(other_ip).await;
    // Requests without the header share one bucket of their own.
    assert_eq!(statuses(&c, &gw, "/api", 4).await, [200, 200, 200, 429]);
    assert_eq!(up.count(), 7);
}

#[tokio::test]
async fn global_policy_is_one_bucket_for_every_client() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "{}{}{}",
        upstream(&up),
        policy("everyone", "global"),
        route("all", "/", "public", &["everyone"]),
    ))
    .await;

    assert_eq!(statuses(&client_at(2), &gw, "/", 2).await, [200, 200]);
    assert_eq!(statuses(&client_at(3), &gw, "/", 1).await, [200]);
    assert_limited(get(&client_at(4), &gw, "/").await).await;
    assert_limited(get(&client_at(2), &gw, "/").await).await;
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn route_policy_is_shared_per_route_across_clients() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        upstream(&up),
        policy("per_route", "route"),
        route("a", "/a", "public", &["per_route"]),
        route("b", "/b", "public", &["per_route"]),
    ))
    .await;

    assert_eq!(statuses(&client_at(2), &gw, "/a", 2).await, [200, 200]);
    assert_eq!(statuses(&client_at(3), &gw, "/a", 2).await, [200, 429]);
    // Route b uses the same policy but its own bucket.
    assert_eq!(statuses(&client_at(2), &gw, "/b", 3).await, [200, 200, 200]);
    assert_limited(get(&client_at(4), &gw, "/b").await).await;
    assert_limited(get(&client_at(4), &gw, "/a").await).await;
    assert_eq!(up.count(), 6);
}

#[tokio::test]
async fn a_request_one_policy_refuses_costs_nothing_in_the_others() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "{}{}\n[rate_limits.small]\nkey = \"ip\"\nrate = \"1/h\"\nburst = 2\n{}",
        upstream(&up),
        policy("big", "ip").replace("burst = 3", "burst = 5"),
        route("two", "/two", "public", &["big", "small"]),
    ))
    .await;
    let c = client_at(31);
    assert_eq!(statuses(&c, &gw, "/two", 2).await, [200, 200]);
    // `small` refuses from now on; `big` (the first policy, in the headers) keeps its 3 left
    // however often the client tries, so it gets in as soon as `small` lets it.
    for _ in 0..4 {
        let r = get(&c, &gw, "/two").await;
        assert_eq!(
            header(&r, "ratelimit").as_deref(),
            Some("\"big\";r=3;t=7200"),
            "refused requests are not charged to `big`"
        );
        assert_limited(r).await;
    }
    assert_eq!(up.count(), 2);
}

/// A request refused before the limits (the route's IP policy) is not counted, and its headers
/// say where the client's bucket stands: full for a new client, partly spent for one that used
/// the same policy on another route.
#[tokio::test]
async fn responses_refused_before_the_limits_report_the_bucket_uncounted() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&format!(
        "{}{}{}ip = {{ deny = [\"127.0.0.32\", \"127.0.0.33\"] }}\n{}",
        upstream(&up),
        policy("burst3", "ip"),
        route("guarded", "/guarded", "public", &["burst3"]),
        route("open", "/open", "public", &["burst3"]),
    ))
    .await;
    let r = get(&client_at(32), &gw, "/guarded").await;
    assert_eq!(
        header(&r, "ratelimit-policy").as_deref(),
        Some("\"burst3\";q=3;w=10800")
    );
    assert_eq!(
        header(&r, "ratelimit").as_deref(),
        Some("\"burst3\";r=3;t=0")
    );
    assert_eq!(code_of(r).await, (403, "ip_denied".to_string()));
    assert_eq!(up.count(), 0);

    let c = client_at(33);
    assert_eq!(statuses(&c, &gw, "/open", 2).await, [200, 200]);
    for _ in 0..2 {
        let r = get(&c, &gw, "/guarded").await;
        assert_eq!(
            header(&r, "ratelimit").as_deref(),
            Some("\"burst3\";r=1;t=7200"),
            "the bucket as /open left it, and the refusal not counted"
        );
        assert_eq!(code_of(r).await, (403, "ip_denied".to_string()));
    }
}

fn login_app(up: &Upstream) -> String {
    format!(
        r#"{TOKEN}{}
[login_protection]
max_failures = 3
window = "10m"
lockout = "2s"

[[routes]]
name = "login"
path = "/login"
methods = ["POST"]
upstream = "app"
auth = "mint"
mint = {{ status = [200], claims_from_headers = {{ sub = "X-User-Id" }}, required_claims = ["sub"] }}
"#,
        upstream(up)
    )
}

async fn login(c: &reqwest::Client, gw: &Gateway, user: &str) -> reqwest::Response {
    c.post(gw.url("/login"))
        .body(format!("user={user}"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn failed_logins_lock_the_ip_out_until_the_lockout_expires() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&login_app(&up)).await;
    let c = client();

    for _ in 0..3 {
        assert_eq!(login(&c, &gw, "bad").await.status(), 401);
    }
    assert_eq!(up.count(), 3);

    // Locked: even good credentials are refused before the upstream sees them.
    let locked = login(&c, &gw, "alice").await;
    let retry: u64 = header(&locked, "retry-after")
        .expect("login_locked carries Retry-After")
        .parse()
        .unwrap();
    assert!(
        (1..=2).contains(&retry),
        "Retry-After {retry} for a 2s lock"
    );
    assert!(locked.headers().get("iptoken").is_none());
    assert_eq!(code_of(locked).await, (429, "login_locked".to_string()));
    let (status, code) = code_of(login(&c, &gw, "bad").await).await;
    assert_eq!((status, code.as_str()), (429, "login_locked"));
    assert_eq!(
        up.count(),
        3,
        "no login attempt reaches the upstream while locked"
    );

    // Another client IP is not locked.
    let other = login(&client_at(9), &gw, "bob").await;
    assert_eq!(other.status(), 200);
    assert!(other.headers().get("iptoken").is_some());
    assert_eq!(up.count(), 4);

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let ok = login(&c, &gw, "alice").await;
    assert_eq!(ok.status(), 200, "the lock has expired");
    assert!(ok.headers().get("iptoken").is_some(), "a token is minted");
    assert_eq!(up.count(), 5);
}

#[tokio::test]
async fn a_login_refused_as_locked_out_costs_nothing_in_the_rate_limits() {
    let up = Upstream::start().await;
    let cfg = login_app(&up).replace(
        "auth = \"mint\"",
        "auth = \"mint\"\nrate_limit = [\"login\"]",
    ) + "\n[rate_limits.login]\nkey = \"ip\"\nrate = \"100/m\"\nburst = 100\n";
    let gw = Gateway::start(&cfg).await;
    let c = client_at(6);
    for _ in 0..3 {
        assert_eq!(login(&c, &gw, "bad").await.status(), 401);
    }
    for _ in 0..2 {
        let r = login(&c, &gw, "alice").await;
        assert_eq!(
            header(&r, "ratelimit").as_deref(),
            Some("\"login\";r=97;t=2"),
            "the locked-out attempt was not counted"
        );
        assert_eq!(code_of(r).await, (429, "login_locked".to_string()));
    }
}

#[tokio::test]
async fn a_successful_login_does_not_reset_the_failure_count() {
    // The count is per client, not per account: logging in to one's own account between
    // guesses at another's must not clear it.
    let up = Upstream::start().await;
    let gw = Gateway::start(&login_app(&up)).await;
    let c = client_at(5);

    for user in ["bad", "alice", "bad", "alice"] {
        let want = if user == "bad" { 401 } else { 200 };
        assert_eq!(login(&c, &gw, user).await.status(), want, "login {user}");
    }
    // The third failure within the window locks, the successes between them notwithstanding.
    assert_eq!(login(&c, &gw, "bad").await.status(), 401);
    assert_eq!(up.count(), 5);
    let (status, code) = code_of(login(&c, &gw, "alice").await).await;
    assert_eq!((status, code.as_str()), (429, "login_locked"));
    assert_eq!(up.count(), 5);
}

#[test]
fn a_subject_policy_on_a_route_without_token_auth_is_a_config_error() {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
{TOKEN}
[upstreams.app]
url = "http://127.0.0.1:3000"
{}{}{}"#,
        policy("per_user", "subject"),
        route("api", "/api", "token", &["per_user"]),
        route("site", "/", "public", &["per_user"]),
    );
    let dir = std::env::temp_dir().join(format!(
        "iptgate-rl-config-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let path = dir.join("gateway.toml");
    let err = Config::from_toml(&text, &path).expect_err("a subject policy needs auth = \"token\"");
    assert_eq!(err.errors.len(), 1, "{err}");
    assert_eq!(err.errors[0].path, "routes[1].rate_limit[0]", "{err}");
    assert!(err.errors[0].message.contains("per_user"), "{err}");

    // The same policy on token routes only is valid.
    let ok = text.replace("auth = \"public\"", "auth = \"token\"");
    let loaded = Config::from_toml(&ok, &path);
    let _ = std::fs::remove_dir_all(&dir);
    loaded.unwrap_or_else(|e| panic!("{e}"));
}
