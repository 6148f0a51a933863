use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Map, Value};

use super::*;
use crate::config::{
    Algorithm, CookieConfig, DeviceBinding, IpBinding, KeyMaterial, SameSite, TokenConfig,
};

const SECRET: &[u8] = b"unit-test-secret-0123456789-abcdefghij";

fn cfg(algorithm: Algorithm, keys: KeyMaterial) -> TokenConfig {
    TokenConfig {
        algorithm,
        keys,
        ttl: Duration::from_secs(600),
        issuer: Some("iptgate".into()),
        audience: None,
        leeway: Duration::from_secs(30),
        claims: Map::new(),
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

fn hs(alg: Algorithm) -> TokenConfig {
    cfg(alg, KeyMaterial::Secret(SECRET.to_vec()))
}

fn req(ip: &str) -> MintRequest {
    MintRequest {
        typ: TokenType::Access,
        ip: ip.parse().unwrap(),
        sub: Some("alice".into()),
        extra: Map::new(),
        dev: None,
        fam: None,
        ttl: Duration::from_secs(600),
    }
}

fn now() -> u64 {
    crate::pipeline::auth::now()
}

/// A fresh PEM key pair for an asymmetric algorithm: (PKCS#8 private, SPKI public).
fn pem_pair(alg: Algorithm) -> (Vec<u8>, Vec<u8>) {
    let rc = match alg {
        Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        Algorithm::EdDSA => &rcgen::PKCS_ED25519,
        _ => &rcgen::PKCS_RSA_SHA256,
    };
    let kp = rcgen::KeyPair::generate_for(rc).unwrap();
    (
        kp.serialize_pem().into_bytes(),
        kp.public_key_pem().into_bytes(),
    )
}

fn asym(alg: Algorithm, private: Option<Vec<u8>>, public: Vec<Vec<u8>>) -> TokenConfig {
    cfg(
        alg,
        KeyMaterial::Pem {
            private_key: private,
            public_keys: public,
        },
    )
}

#[test]
fn every_algorithm_round_trips() {
    let rsa = pem_pair(Algorithm::RS256);
    for (name, alg) in Algorithm::ALL {
        let c = if alg.is_hmac() {
            hs(alg)
        } else if matches!(alg, Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA) {
            asym(alg, Some(pem_pair(alg).0), vec![])
        } else {
            asym(alg, Some(rsa.0.clone()), vec![])
        };
        let keys = Keys::new(&c).unwrap_or_else(|e| panic!("{name}: {e}"));
        let m = keys.mint(&c, req("127.0.0.1")).unwrap();
        let claims = keys
            .verify(&c, &m.token, TokenType::Access, now())
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(claims.sub.as_deref(), Some("alice"), "{name}");
        assert_eq!(claims.ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(claims.jti.as_deref(), Some(m.jti.as_str()));
        let header: Value =
            serde_json::from_slice(&B64.decode(m.token.split('.').next().unwrap()).unwrap())
                .unwrap();
        assert_eq!(header["alg"], name);
        assert!(header["kid"].is_string());
        assert_eq!(keys.jwks().is_some(), !alg.is_hmac(), "{name}");
    }
}

#[test]
fn minted_claims_follow_the_contract() {
    let mut c = hs(Algorithm::HS256);
    c.audience = Some("my-app".into());
    c.claims.insert("tier".into(), json!("gold"));
    c.claims.insert("ip".into(), json!("6.6.6.6"));
    let keys = Keys::new(&c).unwrap();
    let mut r = req("::ffff:10.1.2.3");
    r.extra.insert("role".into(), json!("admin"));
    r.extra.insert("typ".into(), json!("refresh"));
    let m = keys.mint(&c, r).unwrap();
    let payload: Value =
        serde_json::from_slice(&B64.decode(m.token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(
        payload["ip"], "10.1.2.3",
        "canonical, and the gateway's own claim wins"
    );
    assert_eq!(payload["typ"], "access");
    assert_eq!(payload["iss"], "iptgate");
    assert_eq!(payload["aud"], "my-app");
    assert_eq!(payload["tier"], "gold");
    assert_eq!(payload["role"], "admin");
    assert_eq!(payload["nbf"], payload["iat"]);
    assert_eq!(
        payload["exp"].as_u64().unwrap(),
        payload["iat"].as_u64().unwrap() + 600
    );
    assert_eq!(
        B64.decode(payload["jti"].as_str().unwrap()).unwrap().len(),
        16
    );
}

#[test]
fn the_hs_kid_is_not_the_secret() {
    let keys = Keys::new(&hs(Algorithm::HS256)).unwrap();
    let m = keys.mint(&hs(Algorithm::HS256), req("127.0.0.1")).unwrap();
    let header: Value =
        serde_json::from_slice(&B64.decode(m.token.split('.').next().unwrap()).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap();
    assert!(!kid.contains(&B64.encode(SECRET)));
    use sha2::Digest;
    assert_ne!(kid, B64.encode(sha2::Sha256::digest(SECRET)));
    assert_eq!(B64.decode(kid).unwrap().len(), 32);
}

fn sign_hs(alg_name: &str, header_extra: Value, claims: Value, key: &[u8]) -> String {
    let mut h = json!({"alg": alg_name, "typ": "JWT"});
    if let Value::Object(m) = header_extra {
        for (k, v) in m {
            h[k] = v;
        }
    }
    let input = format!(
        "{}.{}",
        B64.encode(h.to_string()),
        B64.encode(claims.to_string())
    );
    let algo = match alg_name {
        "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
        "HS512" => aws_lc_rs::hmac::HMAC_SHA512,
        _ => aws_lc_rs::hmac::HMAC_SHA256,
    };
    let sig = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(algo, key), input.as_bytes());
    format!("{input}.{}", B64.encode(sig.as_ref()))
}

fn claims(n: u64) -> Value {
    json!({"iss":"iptgate","sub":"a","typ":"access","ip":"127.0.0.1","iat":n,"nbf":n,"exp":n+600})
}

#[test]
fn forged_tokens_are_refused() {
    let c = hs(Algorithm::HS256);
    let keys = Keys::new(&c).unwrap();
    let n = now();
    let v = |t: &str| keys.verify(&c, t, TokenType::Access, n);
    assert!(v(&sign_hs("HS256", json!({}), claims(n), SECRET)).is_ok());
    let invalid = |t: &str| matches!(v(t), Err(TokenError::Invalid(_)));
    assert!(invalid(&sign_hs(
        "HS256",
        json!({}),
        claims(n),
        b"wrong-secret-0123456789-abcdefghijklmn"
    )));
    assert!(
        invalid(&sign_hs("HS512", json!({}), claims(n), SECRET)),
        "HS512 when HS256"
    );
    for crit in [json!(["exp"]), json!([]), json!(null)] {
        assert!(
            invalid(&sign_hs(
                "HS256",
                json!({ "crit": crit }),
                claims(n),
                SECRET
            )),
            "crit {crit}"
        );
    }
    for iat in [json!("yesterday"), json!(-1), json!(null)] {
        let mut c = claims(n);
        c["iat"] = iat.clone();
        assert!(
            invalid(&sign_hs("HS256", json!({}), c, SECRET)),
            "iat {iat}"
        );
    }
    assert!(
        invalid(&sign_hs("HS256", json!({"kid": "nope"}), claims(n), SECRET)),
        "unknown kid"
    );
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none"}"#),
        B64.encode(claims(n).to_string())
    );
    assert!(invalid(&none));
    assert!(invalid("garbage"));
    assert!(invalid(&"a.b.c".repeat(3000)));
    let mut c2 = claims(n);
    c2["typ"] = json!("refresh");
    assert!(invalid(&sign_hs("HS256", json!({}), c2, SECRET)));
    let mut c3 = claims(n);
    c3["iss"] = json!("evil");
    assert!(invalid(&sign_hs("HS256", json!({}), c3, SECRET)));
    let mut c4 = claims(n);
    c4["nbf"] = json!(n + 3600);
    assert!(invalid(&sign_hs("HS256", json!({}), c4, SECRET)));
    let mut c5 = claims(n);
    c5["exp"] = json!(n - 31);
    assert_eq!(
        v(&sign_hs("HS256", json!({}), c5, SECRET)).unwrap_err(),
        TokenError::Expired
    );
    let mut c6 = claims(n);
    c6["exp"] = json!(n - 29);
    assert!(
        v(&sign_hs("HS256", json!({}), c6, SECRET)).is_ok(),
        "within leeway"
    );
    let mut c7 = claims(n);
    c7["ip"] = json!("not-an-ip");
    assert!(invalid(&sign_hs("HS256", json!({}), c7, SECRET)));
    // Duplicate claim names (RFC 7519 §4): refused, never "last one wins".
    let body = claims(n).to_string();
    let dup = format!("{{\"sub\":\"admin\",{}", &body[1..]);
    let input = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        B64.encode(&dup)
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
    let sig = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    assert!(invalid(&format!("{input}.{}", B64.encode(sig.as_ref()))));
}

#[test]
fn rs256_public_key_as_hmac_secret_is_refused() {
    let (private, public) = pem_pair(Algorithm::RS256);
    let c = asym(Algorithm::RS256, Some(private), vec![]);
    let keys = Keys::new(&c).unwrap();
    let n = now();
    let forged = sign_hs("HS256", json!({}), claims(n), &public);
    assert!(matches!(
        keys.verify(&c, &forged, TokenType::Access, n),
        Err(TokenError::Invalid(_))
    ));
    let forged = sign_hs("RS256", json!({}), claims(n), &public);
    assert!(matches!(
        keys.verify(&c, &forged, TokenType::Access, n),
        Err(TokenError::Invalid(_))
    ));
}

#[test]
fn rotated_keys_verify_by_kid_and_verify_only_gateways_cannot_mint() {
    let old = pem_pair(Algorithm::ES256);
    let new = pem_pair(Algorithm::ES256);
    let stranger = pem_pair(Algorithm::ES256);
    let old_cfg = asym(Algorithm::ES256, Some(old.0.clone()), vec![]);
    let old_token = Keys::new(&old_cfg)
        .unwrap()
        .mint(&old_cfg, req("127.0.0.1"))
        .unwrap()
        .token;
    let rotated = asym(Algorithm::ES256, Some(new.0.clone()), vec![old.1.clone()]);
    let keys = Keys::new(&rotated).unwrap();
    assert!(keys
        .verify(&rotated, &old_token, TokenType::Access, now())
        .is_ok());
    let jwks: Value = serde_json::from_str(&keys.jwks().unwrap()).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert!(jwks["keys"][0].get("d").is_none(), "no private material");
    let s_cfg = asym(Algorithm::ES256, Some(stranger.0), vec![]);
    let s_token = Keys::new(&s_cfg)
        .unwrap()
        .mint(&s_cfg, req("127.0.0.1"))
        .unwrap()
        .token;
    assert!(keys
        .verify(&rotated, &s_token, TokenType::Access, now())
        .is_err());
    let verify_only = asym(Algorithm::ES256, None, vec![old.1]);
    let vk = Keys::new(&verify_only).unwrap();
    assert!(!vk.can_mint());
    assert!(vk.mint(&verify_only, req("127.0.0.1")).is_err());
    assert!(vk
        .verify(&verify_only, &old_token, TokenType::Access, now())
        .is_ok());
}

#[test]
fn a_key_of_the_wrong_type_is_a_config_error() {
    let (ec_private, _) = pem_pair(Algorithm::ES256);
    assert!(Keys::new(&asym(Algorithm::RS256, Some(ec_private.clone()), vec![])).is_err());
    assert!(Keys::new(&asym(Algorithm::EdDSA, Some(ec_private), vec![])).is_err());
    assert!(Keys::new(&asym(Algorithm::ES256, Some(b"not a pem".to_vec()), vec![])).is_err());
}

#[test]
fn ip_and_device_binding() {
    let mut c = hs(Algorithm::HS256);
    let keys = Keys::new(&c).unwrap();
    let t = keys.mint(&c, req("127.0.0.1")).unwrap().token;
    let cl = keys.verify(&c, &t, TokenType::Access, now()).unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(check_binding(&c, &cl, ip("127.0.0.1"), None).is_ok());
    assert!(check_binding(&c, &cl, ip("::ffff:127.0.0.1"), None).is_ok());
    assert_eq!(
        check_binding(&c, &cl, ip("127.0.0.2"), None),
        Err(TokenError::IpMismatch)
    );
    c.ip_binding = IpBinding::Subnet;
    assert!(check_binding(&c, &cl, ip("127.0.0.2"), None).is_ok());
    assert_eq!(
        check_binding(&c, &cl, ip("127.0.1.2"), None),
        Err(TokenError::IpMismatch)
    );
    assert_eq!(
        check_binding(&c, &cl, ip("::1"), None),
        Err(TokenError::IpMismatch)
    );
    c.ip_binding = IpBinding::Off;
    assert!(check_binding(&c, &cl, ip("10.0.0.1"), None).is_ok());
    c.device_binding = Some(DeviceBinding::Cookie("deviceID".into()));
    assert_eq!(
        check_binding(&c, &cl, ip("127.0.0.1"), Some("d1")),
        Err(TokenError::DeviceMismatch)
    );
    let mut r = req("127.0.0.1");
    r.dev = Some(device_hash("d1"));
    let t = keys.mint(&c, r).unwrap().token;
    let cl = keys.verify(&c, &t, TokenType::Access, now()).unwrap();
    assert!(check_binding(&c, &cl, ip("127.0.0.1"), Some("d1")).is_ok());
    assert_eq!(
        check_binding(&c, &cl, ip("127.0.0.1"), Some("d2")),
        Err(TokenError::DeviceMismatch)
    );
    assert_eq!(
        check_binding(&c, &cl, ip("127.0.0.1"), None),
        Err(TokenError::DeviceMismatch)
    );
}

#[test]
fn require_rules() {
    let cl = Claims::from_map(
        json!({"role": ["user", "admin"], "tier": "gold", "level": 3})
            .as_object()
            .unwrap(),
    );
    let r = |v: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
        v.iter()
            .map(|(k, vals)| (k.to_string(), vals.iter().map(|s| s.to_string()).collect()))
            .collect()
    };
    assert!(check_require(&cl, &r(&[("role", &["admin"])])));
    assert!(check_require(
        &cl,
        &r(&[("role", &["ops", "user"]), ("tier", &["gold"])])
    ));
    assert!(check_require(&cl, &r(&[("level", &["3"])])));
    assert!(!check_require(&cl, &r(&[("role", &["root"])])));
    assert!(!check_require(&cl, &r(&[("missing", &["x"])])));
    assert!(check_require(&cl, &[]));
    // One level of array only: a nested array does not carry its inner values.
    let nested = Claims::from_map(json!({"role": [["admin"]]}).as_object().unwrap());
    assert!(!check_require(&nested, &r(&[("role", &["admin"])])));
}

/// `jsonwebtoken`'s algorithm and PEM key constructors for `alg`: the standard JWT library
/// the gateway's tokens must interoperate with.
fn jwt_keys(
    alg: Algorithm,
    private: &[u8],
    public: &[u8],
) -> (
    jsonwebtoken::Algorithm,
    jsonwebtoken::EncodingKey,
    jsonwebtoken::DecodingKey,
) {
    use jsonwebtoken::{DecodingKey, EncodingKey};
    let jwt: jsonwebtoken::Algorithm = alg.name().parse().unwrap();
    let (ek, dk) = match alg {
        Algorithm::ES256 | Algorithm::ES384 => (
            EncodingKey::from_ec_pem(private),
            DecodingKey::from_ec_pem(public),
        ),
        Algorithm::EdDSA => (
            EncodingKey::from_ed_pem(private),
            DecodingKey::from_ed_pem(public),
        ),
        _ => (
            EncodingKey::from_rsa_pem(private),
            DecodingKey::from_rsa_pem(public),
        ),
    };
    (jwt, ek.unwrap(), dk.unwrap())
}

fn asymmetric_algorithms() -> impl Iterator<Item = (&'static str, Algorithm)> {
    Algorithm::ALL.into_iter().filter(|(_, a)| !a.is_hmac())
}

fn first_kid(keys: &Keys) -> String {
    let jwks: Value = serde_json::from_str(&keys.jwks().unwrap()).unwrap();
    jwks["keys"][0]["kid"].as_str().unwrap().to_owned()
}

/// Both ways with a standard JWT library: a token signed by `jsonwebtoken::crypto::sign` with
/// an `EncodingKey` from the same PEM (how tokens were minted before keys were prepared
/// once) verifies here, and a token minted here verifies with `jsonwebtoken::crypto::verify`.
#[test]
fn asymmetric_tokens_interoperate_with_jsonwebtoken() {
    let rsa = pem_pair(Algorithm::RS256);
    let n = now();
    for (name, alg) in asymmetric_algorithms() {
        let (private, public) = match alg {
            Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA => pem_pair(alg),
            _ => rsa.clone(),
        };
        let c = asym(alg, Some(private.clone()), vec![]);
        let keys = Keys::new(&c).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (jwt, ek, dk) = jwt_keys(alg, &private, &public);
        let kid = first_kid(&keys);
        let headers = [
            json!({"alg": name, "typ": "JWT", "kid": kid}),
            json!({"kid": kid, "alg": name}),
            json!({"alg": name}),
        ];
        for header in headers {
            let input = format!(
                "{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims(n).to_string())
            );
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &ek, jwt).unwrap();
            let token = format!("{input}.{sig}");
            assert!(
                keys.verify(&c, &token, TokenType::Access, n).is_ok(),
                "{name}: jsonwebtoken's token, header {header}"
            );
            let mut tampered = claims(n);
            tampered["sub"] = json!("mallory");
            let forged = format!(
                "{}.{}.{sig}",
                B64.encode(header.to_string()),
                B64.encode(tampered.to_string())
            );
            assert_eq!(
                keys.verify(&c, &forged, TokenType::Access, n).err(),
                Some(TokenError::Invalid("bad signature")),
                "{name}"
            );
        }
        let minted = keys.mint(&c, req("127.0.0.1")).unwrap().token;
        let (signed, sig) = minted.rsplit_once('.').unwrap();
        assert!(
            jsonwebtoken::crypto::verify(sig, signed.as_bytes(), &dk, jwt).unwrap(),
            "{name}: jsonwebtoken verifies our token"
        );
    }
}

/// A private key's kid is the thumbprint jsonwebtoken computes from the key (and from its
/// public PEM), so tokens minted before keys were prepared once keep verifying by kid.
#[test]
fn kids_are_jsonwebtoken_thumbprints() {
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
    let rsa = pem_pair(Algorithm::RS256);
    for (name, alg) in asymmetric_algorithms() {
        let (private, public) = match alg {
            Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA => pem_pair(alg),
            _ => rsa.clone(),
        };
        let (jwt, ek, dk) = jwt_keys(alg, &private, &public);
        let kid = first_kid(&Keys::new(&asym(alg, Some(private), vec![])).unwrap());
        let from_public = Jwk::from_decoding_key(&dk, Some(jwt)).unwrap();
        assert_eq!(
            kid,
            from_public.thumbprint(ThumbprintHash::SHA256).unwrap(),
            "{name}"
        );
        if alg != Algorithm::EdDSA {
            let from_private = Jwk::from_encoding_key(&ek, jwt).unwrap();
            assert_eq!(
                kid,
                from_private.thumbprint(ThumbprintHash::SHA256).unwrap(),
                "{name}"
            );
        }
        let verify_only = Keys::new(&asym(alg, None, vec![public])).unwrap();
        assert_eq!(first_kid(&verify_only), kid, "{name}");
    }
}

/// A DER document as PEM with `label` (64-character lines).
fn to_pem(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

/// A token minted with `private` verifies under the same key given as PKCS#8 and under its
/// public key, with the same kid.
fn assert_same_key(alg: Algorithm, private: Vec<u8>, pkcs8: Vec<u8>, public: Vec<u8>) {
    let c = asym(alg, Some(private), vec![]);
    let keys = Keys::new(&c).unwrap_or_else(|e| panic!("{}: {e}", alg.name()));
    let token = keys.mint(&c, req("127.0.0.1")).unwrap().token;
    let same = asym(alg, Some(pkcs8), vec![]);
    let same_keys = Keys::new(&same).unwrap();
    assert_eq!(first_kid(&keys), first_kid(&same_keys));
    assert!(same_keys
        .verify(&same, &token, TokenType::Access, now())
        .is_ok());
    let verify_only = asym(alg, None, vec![public]);
    assert!(Keys::new(&verify_only)
        .unwrap()
        .verify(&verify_only, &token, TokenType::Access, now())
        .is_ok());
}

#[test]
fn sec1_ec_private_keys_load() {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{self, EcdsaKeyPair};
    let cases = [
        (
            Algorithm::ES256,
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ),
        (
            Algorithm::ES384,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        ),
    ];
    for (alg, rc, signing) in cases {
        let kp = rcgen::KeyPair::generate_for(rc).unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(signing, &kp.serialize_der()).unwrap();
        let sec1 = to_pem(
            "EC PRIVATE KEY",
            ec.private_key().as_der().unwrap().as_ref(),
        );
        assert!(String::from_utf8_lossy(&sec1).starts_with("-----BEGIN EC PRIVATE KEY-----"));
        assert_same_key(
            alg,
            sec1.clone(),
            kp.serialize_pem().into_bytes(),
            kp.public_key_pem().into_bytes(),
        );
        assert!(Keys::new(&asym(Algorithm::RS256, Some(sec1.clone()), vec![])).is_err());
        assert!(Keys::new(&asym(Algorithm::EdDSA, Some(sec1), vec![])).is_err());
    }
}

#[test]
fn pkcs1_rsa_private_and_public_keys_load() {
    let (pkcs8, spki) = pem_pair(Algorithm::RS256);
    // jsonwebtoken keeps the PKCS#1 RSAPrivateKey embedded in a PKCS#8 RSA key.
    let pkcs1_der = jsonwebtoken::EncodingKey::from_rsa_pem(&pkcs8).unwrap();
    let pkcs1 = to_pem("RSA PRIVATE KEY", pkcs1_der.as_bytes());
    let kp = aws_lc_rs::signature::RsaKeyPair::from_der(pkcs1_der.as_bytes()).unwrap();
    let pkcs1_public = to_pem(
        "RSA PUBLIC KEY",
        aws_lc_rs::signature::KeyPair::public_key(&kp).as_ref(),
    );
    for alg in [Algorithm::RS256, Algorithm::PS512] {
        assert_same_key(alg, pkcs1.clone(), pkcs8.clone(), spki.clone());
        assert_same_key(alg, pkcs1.clone(), pkcs8.clone(), pkcs1_public.clone());
    }
    assert!(Keys::new(&asym(Algorithm::ES256, Some(pkcs1.clone()), vec![])).is_err());
    assert!(Keys::new(&asym(Algorithm::EdDSA, Some(pkcs1), vec![])).is_err());
}

#[test]
fn a_key_on_the_wrong_curve_is_a_config_error() {
    let (p256_private, p256_public) = pem_pair(Algorithm::ES256);
    assert!(Keys::new(&asym(Algorithm::ES384, Some(p256_private), vec![])).is_err());
    let (p384_private, _) = pem_pair(Algorithm::ES384);
    let err = Keys::new(&asym(
        Algorithm::ES384,
        Some(p384_private),
        vec![p256_public],
    ))
    .err()
    .unwrap();
    assert!(err.starts_with("public_keys[0]: "), "{err}");
}

/// A 1024-bit RSA public key (the verifiers take 2048 to 8192 bits).
const RSA_1024_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCZsn2zYVDt0QZlo7+d0R2YcMal
DijmOrgSFhpwHoN3kH0rUQWQMNjU2ctSxrZhg26gwuje2AB9o7Dytpk773nqYKu7
oSUvcxVkd6T2LwSGZvXiEd8i53JjJiKjFtdShSB1IQDwNX0YC0/or7EHXb1VA5G1
hjOFYPOTeFOmmDeQ5wIDAQAB
-----END PUBLIC KEY-----
";

#[test]
fn an_rsa_public_key_too_small_to_verify_is_a_config_error() {
    // Published in the JWKS it would verify nothing here and be weak for whoever trusts it.
    let (private, public) = pem_pair(Algorithm::RS256);
    for alg in [Algorithm::RS256, Algorithm::PS384] {
        let err = Keys::new(&asym(
            alg,
            Some(private.clone()),
            vec![RSA_1024_PUBLIC.as_bytes().to_vec()],
        ))
        .err()
        .unwrap_or_else(|| panic!("{}: a 1024-bit public key loaded", alg.name()));
        assert!(err.starts_with("public_keys[0]: "), "{err}");
        assert!(err.contains("1024-bit"), "{err}");
    }
    // A 2048-bit one (rcgen's) loads, alone or beside the signing key.
    assert!(Keys::new(&asym(Algorithm::RS256, None, vec![public.clone()])).is_ok());
    assert!(Keys::new(&asym(Algorithm::RS256, Some(private), vec![public])).is_ok());
}
