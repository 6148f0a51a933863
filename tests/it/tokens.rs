//! IP-bound tokens end to end: mint on the login route's status, verify on protected routes.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::json;

use crate::harness::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn app(up: &Upstream, token_extra: &str) -> String {
    format!(
        r#"{TOKEN}{token_extra}
[upstreams.app]
url = "{u}"

[[routes]]
name = "login"
path = "/login"
methods = ["POST"]
upstream = "app"
auth = "mint"
mint = {{ status = [200], claims_from_headers = {{ sub = "X-User-Id", role = "X-User-Role" }}, required_claims = ["sub"] }}

[[routes]]
name = "other-login"
path = "/other/login"
upstream = "app"
auth = "public"

[[routes]]
name = "admin"
prefix = "/admin"
upstream = "app"
auth = "token"
require = {{ role = ["admin"] }}

[[routes]]
name = "app"
prefix = "/"
upstream = "app"
auth = "token"
"#,
        u = up.url()
    )
}

async fn login(c: &reqwest::Client, gw: &Gateway, body: &str) -> reqwest::Response {
    c.post(gw.url("/login"))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// The claims of a token, decoded without checking it.
fn claims_of(token: &str) -> serde_json::Value {
    serde_json::from_slice(&B64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// `POST /auth/refresh` with a refresh token in its header.
async fn refresh_with(c: &reqwest::Client, gw: &Gateway, refresh: &str) -> reqwest::Response {
    c.post(gw.url("/auth/refresh"))
        .header("IPToken-Refresh", refresh)
        .send()
        .await
        .unwrap()
}

fn token_of(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("iptoken")
        .map(|v| v.to_str().unwrap().to_string())
}

/// The refresh token a login or a refresh answered with.
fn refresh_of(r: &reqwest::Response) -> String {
    r.headers()["iptoken-refresh"].to_str().unwrap().to_string()
}

/// The `Set-Cookie` values of an answer.
fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// Sign arbitrary header/claims with HMAC-SHA256 over the test secret (an independent JWT
/// implementation: aws-lc-rs HMAC + base64 + serde_json).
fn hs256(header: serde_json::Value, claims: serde_json::Value, key: &[u8]) -> String {
    let h = B64.encode(header.to_string());
    let p = B64.encode(claims.to_string());
    let input = format!("{h}.{p}");
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let sig = aws_lc_rs::hmac::sign(&k, input.as_bytes());
    format!("{input}.{}", B64.encode(sig.as_ref()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn good_claims(ip: &str) -> serde_json::Value {
    let n = now();
    json!({"iss": "iptgate", "sub": "alice", "typ": "access", "ip": ip, "iat": n, "nbf": n, "exp": n + 600, "jti": "j1"})
}

#[tokio::test]
async fn a_utf8_claim_from_the_login_answer_is_minted_and_forwarded() {
    let handler: Handler = Arc::new(|s: &Seen| {
        let mut r = respond(200, &[], "welcome");
        if s.uri.starts_with("/login") {
            r.headers_mut().insert(
                "x-user-id",
                http::HeaderValue::from_bytes("élise".as_bytes()).unwrap(),
            );
        }
        r
    });
    let up = Upstream::with(handler).await;
    let gw = Gateway::start(&app(&up, "")).await;
    let c = client();
    let r = login(&c, &gw, "").await;
    assert_eq!(r.status(), 200);
    let token = token_of(&r).expect("minted");
    let claims = claims_of(&token);
    assert_eq!(claims["sub"], "élise");
    let r = c
        .get(gw.url("/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().headers.get("x-auth-subject").unwrap().as_bytes(),
        "élise".as_bytes()
    );
}

#[tokio::test]
async fn a_login_answer_naming_two_identities_mints_nothing() {
    let handler: Handler = Arc::new(|s: &Seen| {
        let mut r = respond(200, &[], "welcome");
        if s.uri.starts_with("/login") {
            r.headers_mut()
                .append("x-user-id", http::HeaderValue::from_static("alice"));
            r.headers_mut()
                .append("x-user-id", http::HeaderValue::from_static("mallory"));
        }
        r
    });
    let up = Upstream::with(handler).await;
    let gw = Gateway::start(&app(&up, "")).await;
    let r = login(&client(), &gw, "").await;
    assert!(token_of(&r).is_none(), "no token for an ambiguous identity");
    assert_eq!(code_of(r).await, (502, "upstream_unavailable".into()));
}

#[tokio::test]
async fn a_login_answer_whose_claims_make_a_token_too_large_to_verify_mints_nothing() {
    let role = "r".repeat(7000);
    let handler: Handler = Arc::new(move |s: &Seen| {
        let mut r = respond(200, &[], "welcome");
        if s.uri.starts_with("/login") {
            r.headers_mut()
                .insert("x-user-id", http::HeaderValue::from_static("alice"));
            r.headers_mut()
                .insert("x-user-role", http::HeaderValue::from_str(&role).unwrap());
        }
        r
    });
    let up = Upstream::with(handler).await;
    let gw = Gateway::start(&app(&up, "")).await;
    let r = login(&client(), &gw, "").await;
    assert!(token_of(&r).is_none(), "no token the gateway would refuse");
    assert_eq!(code_of(r).await, (502, "upstream_unavailable".into()));
}

#[tokio::test]
async fn login_mints_a_token_bound_to_the_client_ip() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&app(&up, "")).await;
    let c = client();
    let r = login(&c, &gw, "user=alice&role=admin").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("x-user-id").is_none(),
        "claim headers never reach the client"
    );
    assert!(r.headers().get("x-user-role").is_none());
    let token = token_of(&r).expect("minted");
    assert_eq!(r.text().await.unwrap(), "welcome", "body untouched");

    // A standard JWT: decoded and checked with an independent HMAC implementation.
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
    aws_lc_rs::hmac::verify(
        &k,
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &B64.decode(parts[2]).unwrap(),
    )
    .expect("signature verifies with the secret alone");
    let header: serde_json::Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["ip"], "127.0.0.1");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["role"], "admin");
    assert_eq!(claims["typ"], "access");
    assert_eq!(claims["iss"], "iptgate");
    assert_eq!(
        B64.decode(claims["jti"].as_str().unwrap()).unwrap().len(),
        16
    );
    assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());

    // The token works from this IP, for the admin route too; the upstream gets the claims.
    let r = c
        .get(gw.url("/admin/panel"))
        .bearer_auth(&token)
        .header("X-Auth-Subject", "mallory")
        .header("x_auth_subject", "mallory")
        .header("X-AUTH-ROLE", "root")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.header("x-auth-subject"), Some("alice"));
    assert_eq!(seen.header("x-auth-role"), Some("admin"));
    assert_eq!(seen.headers.get_all("x-auth-subject").iter().count(), 1);
    assert!(
        seen.header("x_auth_subject").is_none(),
        "underscore spelling removed"
    );
    assert!(
        seen.header("authorization").is_none(),
        "token stripped upstream"
    );

    // The IPToken header and the Token scheme are accepted too.
    let r = c
        .get(gw.url("/feed"))
        .header("IPToken", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(gw.url("/feed"))
        .header("Authorization", format!("token {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(up.last().header("iptoken").is_none());
}

#[tokio::test]
async fn mint_only_on_the_configured_status_route_and_method() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&app(&up, "")).await;
    let c = client();
    let r = login(&c, &gw, "user=bad").await;
    assert_eq!(r.status(), 401);
    assert!(token_of(&r).is_none(), "no token on 401");
    // 200 but the required claim header is missing: nothing minted.
    let r = login(&c, &gw, "nouser=1").await;
    assert!(token_of(&r).is_none());
    let r = c
        .post(gw.url("/other/login"))
        .body("user=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(token_of(&r).is_none(), "not a mint route");
    assert_eq!(
        r.headers()["x-user-id"],
        "alice",
        "public routes pass headers untouched"
    );
    let r = c.get(gw.url("/login")).send().await.unwrap();
    assert_eq!(
        r.status(),
        401,
        "GET /login is not the mint route: the token catch-all answers"
    );
    assert!(token_of(&r).is_none());
}

#[tokio::test]
async fn a_token_from_another_ip_is_refused_and_subnet_mode_accepts_the_neighbour() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&app(&up, "")).await;
    let token = token_of(&login(&client(), &gw, "user=alice").await).unwrap();
    let before = up.count();
    let r = client_at(2)
        .get(gw.url("/feed"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(code_of(r).await, (401, "ip_mismatch".into()));
    assert!(www.unwrap().contains("invalid_token"));
    assert_eq!(up.count(), before, "the upstream saw nothing");

    let gw2 = Gateway::start(&app(&up, "ip_binding = \"subnet\"\nsubnet_v4 = 24\n")).await;
    let token = token_of(&login(&client(), &gw2, "user=alice").await).unwrap();
    let r = client_at(2)
        .get(gw2.url("/feed"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn forged_and_broken_tokens_get_the_right_401_and_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&app(&up, "")).await;
    let c = client();
    let n = now();
    let key = SECRET.as_bytes();
    let hdr = json!({"alg": "HS256", "typ": "JWT"});
    let mut cases: Vec<(&str, String, &str)> = vec![
        (
            "valid control",
            hs256(hdr.clone(), good_claims("127.0.0.1"), key),
            "",
        ),
        (
            "expired",
            hs256(
                hdr.clone(),
                json!({"iss":"iptgate","sub":"a","typ":"access","ip":"127.0.0.1","iat":n-7200,"nbf":n-7200,"exp":n-3600}),
                key,
            ),
            "token_expired",
        ),
        (
            "not yet valid",
            hs256(
                hdr.clone(),
                json!({"iss":"iptgate","sub":"a","typ":"access","ip":"127.0.0.1","iat":n,"nbf":n+3600,"exp":n+7200}),
                key,
            ),
            "token_invalid",
        ),
        (
            "bad signature",
            hs256(
                hdr.clone(),
                good_claims("127.0.0.1"),
                b"another-secret-0123456789-abcdefghijkl",
            ),
            "token_invalid",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                B64.encode(json!({"alg":"none","typ":"JWT"}).to_string()),
                B64.encode(good_claims("127.0.0.1").to_string())
            ),
            "token_invalid",
        ),
        (
            "HS512 when HS256",
            {
                let h = B64.encode(json!({"alg":"HS512","typ":"JWT"}).to_string());
                let p = B64.encode(good_claims("127.0.0.1").to_string());
                let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA512, key);
                let s = aws_lc_rs::hmac::sign(&k, format!("{h}.{p}").as_bytes());
                format!("{h}.{p}.{}", B64.encode(s.as_ref()))
            },
            "token_invalid",
        ),
        (
            "refresh typ",
            hs256(
                hdr.clone(),
                json!({"iss":"iptgate","sub":"a","typ":"refresh","fam":"f","ip":"127.0.0.1","iat":n,"nbf":n,"exp":n+600}),
                key,
            ),
            "token_invalid",
        ),
        (
            "wrong iss",
            hs256(
                hdr.clone(),
                json!({"iss":"evil","sub":"a","typ":"access","ip":"127.0.0.1","iat":n,"nbf":n,"exp":n+600}),
                key,
            ),
            "token_invalid",
        ),
        (
            "no ip claim",
            hs256(
                hdr.clone(),
                json!({"iss":"iptgate","sub":"a","typ":"access","iat":n,"nbf":n,"exp":n+600}),
                key,
            ),
            "token_invalid",
        ),
        ("garbage", "not.a.jwt".to_string(), "token_invalid"),
        (
            "oversized",
            format!("{}.{}.x", "a".repeat(6000), "b".repeat(6000)),
            "token_invalid",
        ),
        (
            "crit header",
            hs256(
                json!({"alg":"HS256","typ":"JWT","crit":["exp"]}),
                good_claims("127.0.0.1"),
                key,
            ),
            "token_invalid",
        ),
    ];
    // RS256 header over HMAC keyed with some public-looking bytes: key confusion.
    cases.push((
        "RS256 header",
        hs256(
            json!({"alg":"RS256","typ":"JWT"}),
            good_claims("127.0.0.1"),
            key,
        ),
        "token_invalid",
    ));
    for (name, token, code) in cases {
        let before = up.count();
        let r = c
            .get(gw.url("/feed"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if code.is_empty() {
            assert_eq!(r.status(), 200, "{name}");
            continue;
        }
        let body_has_token = {
            let (status, got) = (r.status().as_u16(), r);
            let text = got.text().await.unwrap();
            assert_eq!(status, 401, "{name}: {text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["code"], code, "{name}");
            text.contains(&token[..20.min(token.len())])
        };
        assert!(!body_has_token, "{name}: the answer never echoes the token");
        assert_eq!(up.count(), before, "{name}: the upstream saw nothing");
    }
    // No token at all: token_missing, and WWW-Authenticate without an error attribute.
    let r = c.get(gw.url("/feed")).send().await.unwrap();
    let www = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(code_of(r).await, (401, "token_missing".into()));
    assert!(!www.contains("error="));
    // An Authorization scheme we do not accept counts as no token.
    let r = c
        .get(gw.url("/feed"))
        .header("Authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "token_missing".into()));
    // Two different tokens in one request.
    let a = hs256(hdr.clone(), good_claims("127.0.0.1"), key);
    let mut other = good_claims("127.0.0.1");
    other["jti"] = json!("j2");
    let b = hs256(hdr, other, key);
    let r = c
        .get(gw.url("/feed"))
        .bearer_auth(&a)
        .header("IPToken", &b)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "token_invalid".into()));
    // Two cookies of our name carrying different tokens, too.
    let r = c
        .get(gw.url("/feed"))
        .header("Cookie", format!("ipt={a}; ipt={b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "token_invalid".into()));
    // A carrier holding bytes that are not ASCII is a token too (a malformed one), never one
    // skipped: beside a valid token it is two different tokens, so another IP's token cannot
    // ride to the app after one that passes.
    let bytes = |s: Vec<u8>| http::HeaderValue::from_bytes(&s).unwrap();
    let smuggled = [
        (
            "Authorization",
            [format!("Bearer {b} ").as_bytes(), b"\xe9"].concat(),
        ),
        (
            "Authorization",
            [format!("Token {b}").as_bytes(), b"\xe9"].concat(),
        ),
        // No space: the no-break space, which passport-jwt and Python's split() take for one.
        (
            "Authorization",
            [b"Bearer\xa0".as_slice(), b.as_bytes()].concat(),
        ),
        ("IPToken", [b.as_bytes(), b"\xe9"].concat()),
        (
            "Cookie",
            [b"x=\xe9; ipt=".as_slice(), b.as_bytes()].concat(),
        ),
    ];
    for (name, value) in smuggled {
        // The valid token `a` goes in another carrier than the one under test.
        let (beside, valid) = match name {
            "Authorization" => ("IPToken", a.clone()),
            _ => ("Authorization", format!("Bearer {a}")),
        };
        let before = up.count();
        let r = c
            .get(gw.url("/feed"))
            .header(beside, valid)
            .header(name, bytes(value))
            .send()
            .await
            .unwrap();
        assert_eq!(code_of(r).await, (401, "token_invalid".into()), "{name}");
        assert_eq!(up.count(), before);
    }
    // Another cookie's UTF-8 value does not hide ours.
    let r = c
        .get(gw.url("/feed"))
        .header(
            "Cookie",
            bytes([b"lang=caf\xc3\xa9; ipt=".as_slice(), a.as_bytes()].concat()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // On a public route such an Authorization value is ours all the same: stripped.
    let r = c
        .post(gw.url("/other/login"))
        .body("user=alice")
        .header(
            "Authorization",
            bytes([format!("Bearer {b} ").as_bytes(), b"\xe9"].concat()),
        )
        .header("X-Keep", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last();
    assert_eq!(seen.header("x-keep"), Some("1"));
    assert!(seen.headers.get("authorization").is_none(), "{seen:?}");
}

#[tokio::test]
async fn require_rules_and_audience() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&app(&up, "audience = \"my-app\"\n")).await;
    let c = client();
    let token = token_of(&login(&c, &gw, "user=bob&role=user").await).unwrap();
    let r = c
        .get(gw.url("/admin/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (403, "insufficient_claims".into()));
    assert_eq!(
        c.get(gw.url("/x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A token for another audience.
    let n = now();
    let t = hs256(
        json!({"alg":"HS256","typ":"JWT"}),
        json!({"iss":"iptgate","aud":"other","sub":"a","typ":"access","ip":"127.0.0.1","iat":n,"nbf":n,"exp":n+600}),
        SECRET.as_bytes(),
    );
    let r = c.get(gw.url("/x")).bearer_auth(&t).send().await.unwrap();
    assert_eq!(code_of(r).await, (401, "token_invalid".into()));
}

#[tokio::test]
async fn cookies_refresh_rotation_reuse_detection_and_logout() {
    let up = Upstream::start().await;
    let extra = "set_cookie = true\ncookie = { name = \"ipt\", secure = true, http_only = true, same_site = \"Strict\", path = \"/\" }\n\n[refresh]\nenabled = true\n";
    let gw = Gateway::start(&app(&up, extra)).await;
    let c = client();
    let r = login(&c, &gw, "user=carol").await;
    let cookies = set_cookies(&r);
    assert!(
        cookies.iter().any(|c| c.starts_with("ipt=")
            && c.contains("HttpOnly")
            && c.contains("Secure")
            && c.contains("SameSite=Strict")),
        "{cookies:?}"
    );
    let access = token_of(&r).unwrap();
    let refresh = refresh_of(&r);
    // The cookie alone authenticates.
    let r = c
        .get(gw.url("/x"))
        .header("Cookie", format!("ipt={access}; other=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().header("cookie"),
        Some("other=1"),
        "our cookie stripped upstream"
    );
    // The refresh token never reaches the upstream, whatever carries the access token.
    let r = c
        .get(gw.url("/x"))
        .bearer_auth(&access)
        .header("IPToken-Refresh", &refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        up.last().header("iptoken-refresh").is_none(),
        "refresh header stripped upstream"
    );
    // A refresh token is not an access token.
    let r = c
        .get(gw.url("/x"))
        .bearer_auth(&refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "token_invalid".into()));
    // Two different refresh tokens in one request are as ambiguous as two access tokens:
    // refused, and neither spent.
    let other_refresh = refresh_of(&login(&c, &gw, "user=dave").await);
    let r = c
        .post(gw.url("/auth/refresh"))
        .header("IPToken-Refresh", &refresh)
        .header("Cookie", format!("ipt_refresh={other_refresh}"))
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "token_invalid".into()));
    assert_eq!(refresh_with(&c, &gw, &other_refresh).await.status(), 200);
    // Rotate.
    let r = refresh_with(&c, &gw, &refresh).await;
    assert_eq!(r.status(), 200);
    let access2 = token_of(&r).unwrap();
    let refresh2 = refresh_of(&r);
    assert_ne!(refresh, refresh2);
    assert_eq!(
        c.get(gw.url("/x"))
            .bearer_auth(&access2)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Reusing the spent refresh token revokes the whole family.
    let r = refresh_with(&c, &gw, &refresh).await;
    assert_eq!(code_of(r).await, (401, "token_revoked".into()));
    let r = c
        .get(gw.url("/x"))
        .bearer_auth(&access2)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "token_revoked".into()));
    // The rotation is counted, and the tokens it minted by type.
    let text = scrape(&gw.admin_url("")).await;
    assert!(
        metric(&text, "iptgate_tokens_refreshed_total", &[]) >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "iptgate_tokens_minted_total", &["kind=\"refresh\""]) >= 2.0,
        "login and rotation each mint a refresh token: {text}"
    );
    // Logout revokes a fresh session's access token.
    let r = login(&c, &gw, "user=dave").await;
    let access3 = token_of(&r).unwrap();
    let r = c
        .post(gw.url("/auth/logout"))
        .bearer_auth(&access3)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .get(gw.url("/x"))
        .bearer_auth(&access3)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "token_revoked".into()));
}

#[tokio::test]
async fn logout_ends_the_session_with_an_expired_access_token_or_the_refresh_token_alone() {
    let up = Upstream::start().await;
    // Expired tokens count for logout up to `ttl` after their expiry: 3 s here.
    let extra = "ttl = \"3s\"\nleeway = \"0s\"\nset_cookie = true\n\n[refresh]\nenabled = true\n";
    let gw = Gateway::start(&app(&up, extra)).await;
    let c = client();
    let logout = |auth: Option<String>, refresh: Option<String>| {
        let mut r = c.post(gw.url("/auth/logout"));
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        if let Some(t) = refresh {
            r = r.header("IPToken-Refresh", t);
        }
        r.send()
    };

    let r = login(&c, &gw, "user=carol").await;
    let (access, refresh) = (token_of(&r).unwrap(), refresh_of(&r));
    let r = login(&c, &gw, "user=dave").await;
    let refresh2 = refresh_of(&r);
    tokio::time::sleep(Duration::from_millis(4100)).await;
    let r = c
        .get(gw.url("/x"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "token_expired".into()));

    // The expired access token still ends its session: 204, cookies cleared, family revoked.
    let r = logout(Some(access.clone()), None).await.unwrap();
    assert_eq!(r.status(), 204);
    let cleared = set_cookies(&r);
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("ipt=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let r = refresh_with(&c, &gw, &refresh).await;
    assert_eq!(code_of(r).await, (401, "token_revoked".into()));

    // The refresh token alone ends its session too.
    let r = logout(None, Some(refresh2.clone())).await.unwrap();
    assert_eq!(r.status(), 204);
    let r = refresh_with(&c, &gw, &refresh2).await;
    assert_eq!(code_of(r).await, (401, "token_revoked".into()));

    // An old tab's revoked access token beside the live refresh token: the refresh token's
    // session ends.
    let r = login(&c, &gw, "user=erin").await;
    let refresh3 = refresh_of(&r);
    let r = logout(Some(access.clone()), Some(refresh3.clone()))
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = refresh_with(&c, &gw, &refresh3).await;
    assert_eq!(code_of(r).await, (401, "token_revoked".into()));
    // Logging out again is no error: the session is over, and the cookies are cleared again.
    let r = logout(None, Some(refresh3.clone())).await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("set-cookie").is_some());

    // Still no logout without a genuine token: a forged expired one, or nothing.
    let n = now();
    let forged = hs256(
        json!({"alg":"HS256","typ":"JWT"}),
        json!({"iss":"iptgate","sub":"carol","typ":"access","ip":"127.0.0.1","iat":n-60,"nbf":n-60,"exp":n-30,"jti":"x","fam":"y"}),
        b"another secret of at least thirty-two bytes",
    );
    let r = logout(Some(forged), None).await.unwrap();
    assert_eq!(code_of(r).await, (401, "token_invalid".into()));
    let r = logout(None, None).await.unwrap();
    assert_eq!(code_of(r).await, (401, "token_missing".into()));
}

#[tokio::test]
async fn with_forward_token_the_access_cookie_goes_on_and_the_refresh_cookie_never() {
    let up = Upstream::start().await;
    let extra = "forward_token = true\nset_cookie = true\ncookie = { name = \"ipt\", secure = true, http_only = true, same_site = \"Strict\", path = \"/\" }\n\n[refresh]\nenabled = true\n";
    let gw = Gateway::start(&app(&up, extra)).await;
    let c = client();
    let r = login(&c, &gw, "user=carol").await;
    let access = token_of(&r).unwrap();
    let refresh = refresh_of(&r);
    let both = format!("ipt={access}; ipt_refresh={refresh}; other=1");
    // A token route and a public one (whose app answers 401 to a GET without a user).
    for (path, status) in [("/x", 200), ("/other/login", 401)] {
        let r = c
            .get(gw.url(path))
            .header("Cookie", &both)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(
            up.last().header("cookie"),
            Some(format!("ipt={access}; other=1").as_str()),
            "{path}: the access cookie forwarded, the refresh cookie not"
        );
    }
}

#[tokio::test]
async fn a_refresh_takes_static_claims_from_the_current_config() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&app(
        &up,
        "claims = { app = \"demo\" }\n\n[refresh]\nenabled = true\n",
    ))
    .await;
    let c = client();
    let r = login(&c, &gw, "user=carol&role=admin").await;
    let refresh = refresh_of(&r);
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let changed = text.replace(
        "claims = { app = \"demo\" }",
        "claims = { app = \"v2\", tier = \"gold\" }",
    );
    assert_ne!(text, changed);
    assert_eq!(gw.reload_with(&changed).await, 200);
    let r = refresh_with(&c, &gw, &refresh).await;
    assert_eq!(r.status(), 200);
    let token = token_of(&r).unwrap();
    let claims = claims_of(&token);
    assert_eq!(claims["app"], "v2", "{claims}");
    assert_eq!(claims["tier"], "gold", "{claims}");
    // What the login took from the app's answer is carried over.
    assert_eq!(claims["sub"], "carol", "{claims}");
    assert_eq!(claims["role"], "admin", "{claims}");
}

#[tokio::test]
async fn an_upstream_set_cookie_for_our_cookie_is_dropped() {
    let up = Upstream::with(std::sync::Arc::new(|_s: &Seen| {
        respond(
            200,
            &[
                ("set-cookie", "ipt=forged; Path=/"),
                ("set-cookie", "app=1"),
                ("x-user-id", "eve"),
            ],
            "ok",
        )
    }))
    .await;
    let gw = Gateway::start(&app(&up, "")).await;
    let r = client().post(gw.url("/login")).send().await.unwrap();
    assert_eq!(set_cookies(&r), vec!["app=1"]);
    assert!(token_of(&r).is_some());
}

#[tokio::test]
async fn an_upstream_token_header_never_reaches_the_client() {
    // The app answers the login with a failure status and its own `IPToken` header.
    let up = Upstream::with(std::sync::Arc::new(|_s: &Seen| {
        respond(
            401,
            &[
                ("iptoken", "from-the-upstream"),
                ("iptoken-refresh", "from-the-upstream"),
            ],
            "no",
        )
    }))
    .await;
    let gw = Gateway::start(&app(&up, "\n[refresh]\nenabled = true\n")).await;
    let r = client().post(gw.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(token_of(&r).is_none(), "nothing minted, nothing passed on");
    // Nor on routes that do not mint (a public one here), refresh header included.
    let r = client().get(gw.url("/other/login")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(token_of(&r).is_none());
    assert!(r.headers().get("iptoken-refresh").is_none());
}

#[tokio::test]
async fn token_cli_mints_and_verifies() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&app(&up, "")).await;
    let cfg = gw.config_path();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
        .args(["token", "mint", "--config"])
        .arg(&cfg)
        .args([
            "--ip",
            "127.0.0.1",
            "--sub",
            "ops",
            "--claim",
            "role=admin",
            "--ttl",
            "5m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = client()
        .get(gw.url("/admin/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let verify = |ip: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
            .args(["token", "verify", "--config"])
            .arg(&cfg)
            .args(["--ip", ip, &token])
            .output()
            .unwrap()
    };
    let ok = verify("127.0.0.1");
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("\"sub\": \"ops\""));
    let bad = verify("10.9.9.9");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("ip_mismatch"));
    // A subject the route could not put in X-Auth-Subject: refused there, and here.
    let mut claims = good_claims("127.0.0.1");
    claims["sub"] = json!("a\r\nX-Evil: 1");
    let odd = hs256(json!({"alg": "HS256"}), claims, SECRET.as_bytes());
    let r = client()
        .get(gw.url("/x"))
        .bearer_auth(&odd)
        .send()
        .await
        .unwrap();
    assert_eq!(code_of(r).await, (401, "token_invalid".into()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
        .args(["token", "verify", "--config"])
        .arg(&cfg)
        .args(["--ip", "127.0.0.1", &odd])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("401 token_invalid"));
    let _ = Duration::from_secs(0);
}

#[tokio::test]
async fn asymmetric_keys_publish_a_jwks_for_get_only() {
    let up = Upstream::start().await;
    let dir = std::env::temp_dir().join(format!(
        "iptgate-it-jwks-{}",
        iptgate::pipeline::mint::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // `key.pem` is the test PKI's ECDSA P-256 key, written by `config_text`.
    let body = format!(
        "[token]\nalgorithm = \"ES256\"\nprivate_key = \"key.pem\"\n\n{}",
        public_routes(&up)
    );
    let plain = Opts {
        tls: false,
        ..Opts::default()
    };
    let text = Gateway::config_text(&dir, &plain, &body);
    let gw = Gateway::start_text(dir, false, &text).await;
    let c = plain_client();
    let r = c
        .get(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let jwks: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert!(jwks["keys"][0].get("d").is_none(), "no private material");
    let r = c
        .post(gw.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn token_cli_binds_to_and_checks_the_device_when_the_config_does() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&app(&up, "device_binding = { header = \"X-Device-Id\" }\n")).await;
    let cfg = gw.config_path();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_iptgate"))
            .arg("token")
            .arg(args[0])
            .arg("--config")
            .arg(&cfg)
            .args(&args[1..])
            .output()
            .unwrap()
    };
    // Without the device id the command cannot mint what the gateway would: a usage error.
    let out = cli(&["mint", "--ip", "127.0.0.1", "--sub", "ops"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--device"));
    let out = cli(&[
        "mint",
        "--ip",
        "127.0.0.1",
        "--sub",
        "ops",
        "--device",
        "d1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let on = |dev: &'static str| {
        client()
            .get(gw.url("/x"))
            .bearer_auth(&token)
            .header("x-device-id", dev)
            .send()
    };
    assert_eq!(on("d1").await.unwrap().status(), 200);
    assert_eq!(
        code_of(on("d2").await.unwrap()).await,
        (401, "device_mismatch".into())
    );
    let ok = cli(&["verify", "--ip", "127.0.0.1", "--device", "d1", &token]);
    assert!(ok.status.success());
    let other = cli(&["verify", "--ip", "127.0.0.1", "--device", "d2", &token]);
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stdout).contains("401 device_mismatch"));
    assert_eq!(
        cli(&["verify", "--ip", "127.0.0.1", &token]).status.code(),
        Some(2)
    );
}
