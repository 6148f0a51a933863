//! Token costs: verify + IP binding and mint for HS256, ES256, EdDSA and RS256, next to a
//! bare `jsonwebtoken::decode` of the same HS256 token (the overhead ratio).
//! `cargo bench --bench token`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use iptgate::config::{Algorithm, CookieConfig, IpBinding, KeyMaterial, SameSite, TokenConfig};
use iptgate::token::{check_binding, Keys, MintRequest, TokenType};

/// The allocator the gateway binary runs with (src/main.rs), so the figures are the gateway's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cfg(algorithm: Algorithm, keys: KeyMaterial) -> TokenConfig {
    TokenConfig {
        algorithm,
        keys,
        ttl: Duration::from_secs(3600),
        issuer: Some("iptgate".into()),
        audience: None,
        leeway: Duration::from_secs(30),
        claims: Default::default(),
        ip_binding: IpBinding::Exact,
        subnet_v4: 24,
        subnet_v6: 64,
        header: http::HeaderName::from_static("iptoken"),
        cookie: CookieConfig {
            name: "ipt".into(),
            refresh_name: "ipt_refresh".into(),
            secure: true,
            http_only: true,
            same_site: SameSite::Strict,
            path: "/".into(),
            domain: None,
        },
        set_cookie: false,
        accept: vec![],
        schemes: vec!["bearer".into()],
        forward_claims: vec![],
        forward_token: false,
        device_binding: None,
    }
}

fn req(ip: IpAddr) -> MintRequest {
    MintRequest {
        typ: TokenType::Access,
        ip,
        sub: Some("bench-user".into()),
        extra: Default::default(),
        dev: None,
        fam: None,
        ttl: Duration::from_secs(3600),
    }
}

fn bench(c: &mut Criterion) {
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    let now = iptgate::pipeline::auth::now();
    let pem = |alg| {
        let kp = rcgen::KeyPair::generate_for(alg).unwrap();
        KeyMaterial::Pem {
            private_key: Some(kp.serialize_pem().into_bytes()),
            public_keys: vec![],
        }
    };
    let secret = b"bench-shared-secret-0123456789abcdef".to_vec();
    let configs = [
        (
            "HS256",
            cfg(Algorithm::HS256, KeyMaterial::Secret(secret.clone())),
        ),
        (
            "ES256",
            cfg(Algorithm::ES256, pem(&rcgen::PKCS_ECDSA_P256_SHA256)),
        ),
        ("EdDSA", cfg(Algorithm::EdDSA, pem(&rcgen::PKCS_ED25519))),
        ("RS256", cfg(Algorithm::RS256, pem(&rcgen::PKCS_RSA_SHA256))),
    ];
    let mut g = c.benchmark_group("token");
    for (name, tc) in &configs {
        let keys = Keys::new(tc).unwrap();
        let token = keys.mint(tc, req(ip)).unwrap().token;
        g.bench_function(format!("verify_bind/{name}"), |b| {
            b.iter(|| {
                let claims = keys
                    .verify(tc, black_box(&token), TokenType::Access, now)
                    .unwrap();
                check_binding(tc, &claims, black_box(ip), None).unwrap();
                claims
            })
        });
        g.bench_function(format!("mint/{name}"), |b| {
            b.iter(|| keys.mint(tc, req(black_box(ip))).unwrap())
        });
        if *name == "HS256" {
            let key = jsonwebtoken::DecodingKey::from_secret(&secret);
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            v.required_spec_claims.clear();
            v.validate_aud = false;
            g.bench_function("bare_jsonwebtoken_decode/HS256", |b| {
                b.iter(|| {
                    jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                        black_box(&token),
                        &key,
                        &v,
                    )
                    .unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
