//! Signing and verification keys for the configured algorithm, their `kid` (RFC 7638 JWK
//! thumbprints) and the JWKS document.

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm as JwtAlg, DecodingKey, EncodingKey};
use serde_json::{Map, Value};

use super::{
    build_claims, check_claims, random_id, Claims, MintRequest, Minted, TokenError, TokenType, B64,
    MAX_TOKEN_LEN,
};
use crate::config::{Algorithm, KeyMaterial, TokenConfig};

fn jwt_alg(a: Algorithm) -> JwtAlg {
    match a {
        Algorithm::HS256 => JwtAlg::HS256,
        Algorithm::HS384 => JwtAlg::HS384,
        Algorithm::HS512 => JwtAlg::HS512,
        Algorithm::RS256 => JwtAlg::RS256,
        Algorithm::RS384 => JwtAlg::RS384,
        Algorithm::RS512 => JwtAlg::RS512,
        Algorithm::PS256 => JwtAlg::PS256,
        Algorithm::PS384 => JwtAlg::PS384,
        Algorithm::PS512 => JwtAlg::PS512,
        Algorithm::ES256 => JwtAlg::ES256,
        Algorithm::ES384 => JwtAlg::ES384,
        Algorithm::EdDSA => JwtAlg::EdDSA,
    }
}

enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(a: Algorithm) -> Family {
    match a {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
    }
}

struct Verifier {
    kid: String,
    /// The header segment this gateway mints with this key (alg, typ, kid).
    header_b64: String,
    key: DecodingKey,
    /// HS*: the HMAC key, prepared once (verification is constant-time in aws-lc).
    hmac: Option<aws_lc_rs::hmac::Key>,
}

/// The JOSE header fields we read; everything else is ignored except `crit`.
#[derive(serde::Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    kid: Option<std::borrow::Cow<'a, str>>,
    crit: Option<serde::de::IgnoredAny>,
}

fn hmac_alg(a: Algorithm) -> Option<aws_lc_rs::hmac::Algorithm> {
    match a {
        Algorithm::HS256 => Some(aws_lc_rs::hmac::HMAC_SHA256),
        Algorithm::HS384 => Some(aws_lc_rs::hmac::HMAC_SHA384),
        Algorithm::HS512 => Some(aws_lc_rs::hmac::HMAC_SHA512),
        _ => None,
    }
}

/// Keys of one config generation, built once; `verify` and `mint` allocate no keys.
pub struct Keys {
    alg: Algorithm,
    jwt: JwtAlg,
    /// The signing key and its kid (absent: a verify-only gateway).
    signer: Option<(EncodingKey, String)>,
    /// Primary first, then rotation keys.
    verifiers: Vec<Verifier>,
    jwks: Option<String>,
    /// The pre-encoded header segment of minted tokens.
    header_b64: String,
}

fn thumbprint(jwk: &Jwk) -> Result<String, String> {
    jwk.thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| format!("cannot compute the key thumbprint: {e}"))
}

fn decoding_from_pem(f: &Family, pem: &[u8]) -> jsonwebtoken::errors::Result<DecodingKey> {
    match f {
        Family::Rsa => DecodingKey::from_rsa_pem(pem),
        Family::Ec => DecodingKey::from_ec_pem(pem),
        Family::Ed => DecodingKey::from_ed_pem(pem),
        Family::Hmac => Ok(DecodingKey::from_secret(pem)),
    }
}

fn encoding_from_pem(f: &Family, pem: &[u8]) -> jsonwebtoken::errors::Result<EncodingKey> {
    match f {
        Family::Rsa => EncodingKey::from_rsa_pem(pem),
        Family::Ec => EncodingKey::from_ec_pem(pem),
        Family::Ed => EncodingKey::from_ed_pem(pem),
        Family::Hmac => Ok(EncodingKey::from_secret(pem)),
    }
}

/// The public key of a PEM Ed25519 private key (PKCS#8 v1 or v2).
fn ed25519_public(pem: &[u8]) -> Result<DecodingKey, String> {
    use aws_lc_rs::signature::KeyPair;
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map_err(|e| format!("private_key: not a PKCS#8 PEM Ed25519 key ({e})"))?;
    let kp =
        aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| format!("private_key: not an Ed25519 key ({e})"))?;
    DecodingKey::from_ed_components(&B64.encode(kp.public_key().as_ref()))
        .map_err(|e| format!("private_key: {e}"))
}

/// The base64url JOSE header of a token minted with key `kid`.
fn header_b64(alg: Algorithm, kid: &str) -> String {
    let mut header = Map::new();
    header.insert("alg".into(), Value::String(alg.name().into()));
    header.insert("typ".into(), Value::String("JWT".into()));
    header.insert("kid".into(), Value::String(kid.into()));
    B64.encode(Value::Object(header).to_string())
}

impl Keys {
    pub fn new(cfg: &TokenConfig) -> Result<Keys, String> {
        let alg = cfg.algorithm;
        let jwt = jwt_alg(alg);
        let fam = family(alg);
        let mut signer = None;
        let mut verifiers = Vec::new();
        let mut jwks = None;
        match &cfg.keys {
            KeyMaterial::Secret(secret) => {
                if !matches!(fam, Family::Hmac) {
                    return Err(format!("{} needs a PEM key, not a secret", alg.name()));
                }
                // The kid never derives from the raw secret: thumbprint of SHA-256(secret).
                use sha2::Digest;
                let digest = sha2::Sha256::digest(secret);
                let canonical = format!("{{\"k\":\"{}\",\"kty\":\"oct\"}}", B64.encode(digest));
                let kid = B64.encode(sha2::Sha256::digest(canonical.as_bytes()));
                signer = Some((EncodingKey::from_secret(secret), kid.clone()));
                verifiers.push(Verifier {
                    header_b64: String::new(),
                    kid,
                    key: DecodingKey::from_secret(secret),
                    hmac: hmac_alg(alg).map(|h| aws_lc_rs::hmac::Key::new(h, secret)),
                });
            }
            KeyMaterial::Pem {
                private_key,
                public_keys,
            } => {
                let mut set = Vec::new();
                if let Some(pem) = private_key {
                    let ek = encoding_from_pem(&fam, pem).map_err(|e| {
                        format!("private_key: not a {} PEM private key ({e})", alg.name())
                    })?;
                    let (mut jwk, dk) = if matches!(fam, Family::Ed) {
                        // PKCS#8 v2 Ed25519 keys (with the public key inside) are common;
                        // derive the public half with aws-lc-rs for both versions.
                        let dk = ed25519_public(pem)?;
                        let jwk = Jwk::from_decoding_key(&dk, Some(jwt))
                            .map_err(|e| format!("private_key: not usable for EdDSA ({e})"))?;
                        (jwk, dk)
                    } else {
                        let jwk = Jwk::from_encoding_key(&ek, jwt).map_err(|e| {
                            format!("private_key: not usable for {} ({e})", alg.name())
                        })?;
                        let dk = DecodingKey::from_jwk(&jwk).map_err(|e| {
                            format!("private_key: cannot derive its public key ({e})")
                        })?;
                        (jwk, dk)
                    };
                    let kid = thumbprint(&jwk)?;
                    jwk.common.key_id = Some(kid.clone());
                    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
                    // Prove the pair signs and verifies under this algorithm before serving.
                    let sig = jsonwebtoken::crypto::sign(b"iptgate-self-test", &ek, jwt).map_err(
                        |e| format!("private_key: cannot sign with {} ({e})", alg.name()),
                    )?;
                    if !jsonwebtoken::crypto::verify(&sig, b"iptgate-self-test", &dk, jwt)
                        .unwrap_or(false)
                    {
                        return Err(format!("private_key: does not verify under {}", alg.name()));
                    }
                    set.push(jwk);
                    verifiers.push(Verifier {
                        header_b64: String::new(),
                        kid: kid.clone(),
                        key: dk,
                        hmac: None,
                    });
                    signer = Some((ek, kid));
                }
                for (i, pem) in public_keys.iter().enumerate() {
                    let dk = decoding_from_pem(&fam, pem).map_err(|e| {
                        format!(
                            "public_keys[{i}]: not a {} PEM public key ({e})",
                            alg.name()
                        )
                    })?;
                    let mut jwk = Jwk::from_decoding_key(&dk, Some(jwt)).map_err(|e| {
                        format!("public_keys[{i}]: not usable for {} ({e})", alg.name())
                    })?;
                    let kid = thumbprint(&jwk)?;
                    jwk.common.key_id = Some(kid.clone());
                    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
                    if !verifiers.iter().any(|v| v.kid == kid) {
                        set.push(jwk);
                        verifiers.push(Verifier {
                            header_b64: String::new(),
                            kid,
                            key: dk,
                            hmac: None,
                        });
                    }
                }
                if verifiers.is_empty() {
                    return Err("no key to verify tokens with".into());
                }
                jwks =
                    Some(serde_json::to_string(&JwkSet { keys: set }).map_err(|e| e.to_string())?);
            }
        }
        for v in &mut verifiers {
            v.header_b64 = header_b64(alg, &v.kid);
        }
        let header_b64 = signer
            .as_ref()
            .map(|(_, kid)| header_b64(alg, kid))
            .unwrap_or_default();
        Ok(Keys {
            alg,
            jwt,
            signer,
            verifiers,
            jwks,
            header_b64,
        })
    }

    pub fn can_mint(&self) -> bool {
        self.signer.is_some()
    }

    pub fn mint(&self, cfg: &TokenConfig, req: MintRequest) -> Result<Minted, String> {
        let (key, _) = self
            .signer
            .as_ref()
            .ok_or("no private_key configured: this gateway only verifies tokens")?;
        let now = crate::pipeline::auth::now();
        let jti = random_id();
        let claims = build_claims(cfg, &req, now, &jti);
        let exp = now + req.ttl.as_secs();
        let payload = B64.encode(Value::Object(claims).to_string());
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() + 100);
        token.push_str(&self.header_b64);
        token.push('.');
        token.push_str(&payload);
        let sig = jsonwebtoken::crypto::sign(token.as_bytes(), key, self.jwt)
            .map_err(|e| format!("signing failed: {e}"))?;
        token.push('.');
        token.push_str(&sig);
        Ok(Minted { token, jti, exp })
    }

    /// Verify signature (configured algorithm only) and registered claims.
    pub fn verify(
        &self,
        cfg: &TokenConfig,
        token: &str,
        typ: TokenType,
        now: u64,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid("oversized token"));
        }
        let mut parts = token.splitn(3, '.');
        let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Invalid("not a JWS compact token"));
        };
        if s.is_empty() || s.contains('.') {
            return Err(TokenError::Invalid("malformed signature"));
        }
        let key = match self.verifiers.iter().find(|v| v.header_b64 == h) {
            // The exact header this gateway mints for that key: alg and kid are known.
            Some(v) => v,
            None => self.verifier_for(h)?,
        };
        let signed = &token[..h.len() + 1 + p.len()];
        let valid = match &key.hmac {
            Some(k) => {
                let mut sig = [0u8; 64];
                B64.decode_slice(s, &mut sig)
                    .is_ok_and(|n| aws_lc_rs::hmac::verify(k, signed.as_bytes(), &sig[..n]).is_ok())
            }
            None => jsonwebtoken::crypto::verify(s, signed.as_bytes(), &key.key, self.jwt)
                .unwrap_or(false),
        };
        if !valid {
            return Err(TokenError::Invalid("bad signature"));
        }
        let payload = B64
            .decode(p)
            .map_err(|_| TokenError::Invalid("payload not base64url"))?;
        let payload =
            String::from_utf8(payload).map_err(|_| TokenError::Invalid("payload not UTF-8"))?;
        check_claims(cfg, Claims::parse(payload)?, typ, now)
    }

    /// The verifier a header names, from its decoded `alg` and `kid`.
    fn verifier_for(&self, h: &str) -> Result<&Verifier, TokenError> {
        let header_bytes = B64
            .decode(h)
            .map_err(|_| TokenError::Invalid("header not base64url"))?;
        let header: JoseHeader<'_> = serde_json::from_slice(&header_bytes)
            .map_err(|_| TokenError::Invalid("header not a JSON object"))?;
        if header.alg.as_deref() != Some(self.alg.name()) {
            return Err(TokenError::Invalid("wrong alg"));
        }
        if header.crit.is_some() {
            return Err(TokenError::Invalid("crit header"));
        }
        match header.kid.as_deref() {
            None => Ok(&self.verifiers[0]),
            Some(kid) => self
                .verifiers
                .iter()
                .find(|v| v.kid == kid)
                .ok_or(TokenError::Invalid("unknown kid")),
        }
    }

    /// The public keys as a JWKS document (asymmetric algorithms only).
    pub fn jwks(&self) -> Option<String> {
        self.jwks.clone()
    }
}
