//! Signing and verification keys for the configured algorithm, their `kid` (RFC 7638 JWK
//! thumbprints) and the JWKS document.
//!
//! Every key is parsed once, at load, into an aws-lc-rs object (HMAC key, RSA / ECDSA /
//! Ed25519 key pair, parsed public key): a mint or a verify does no key parsing, which is
//! most of the cost of an RSA signature or an ECDSA / Ed25519 verification when the key
//! DER is re-read per call. jsonwebtoken still reads the PEM public keys and builds the JWKs
//! and their thumbprints, so published keys and kids are the ones it computes.

use aws_lc_rs::error::Unspecified;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair, ParsedPublicKey,
    RsaEncoding, RsaKeyPair, VerificationAlgorithm,
};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm as JwtAlg, DecodingKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde_json::{Map, Value};

use super::{
    build_claims, check_claims, random_id, Claims, MintError, MintRequest, Minted, TokenError,
    TokenType, B64, MAX_TOKEN_LEN,
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

/// Longest signature accepted: RSA-8192 (the largest key the RSA verifiers take).
const MAX_SIG_LEN: usize = 1024;

/// The signing key, parsed once at load.
enum Signer {
    /// Boxed: an HMAC key is ~1.2 KB, the other variants are handles.
    Hmac(Box<hmac::Key>),
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Signer {
    /// Appends the base64url JWS signature of `msg` to `out` (for ECDSA the fixed-size
    /// `r || s` form JWS uses, not DER).
    fn sign_b64(&self, msg: &[u8], out: &mut String) -> Result<(), Unspecified> {
        match self {
            Signer::Hmac(k) => B64.encode_string(hmac::sign(k, msg), out),
            Signer::Rsa(kp, encoding) => {
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(*encoding, &SystemRandom::new(), msg, &mut sig)?;
                B64.encode_string(&sig, out);
            }
            Signer::Ecdsa(kp) => B64.encode_string(kp.sign(&SystemRandom::new(), msg)?, out),
            Signer::Ed25519(kp) => B64.encode_string(kp.sign(msg), out),
        }
        Ok(())
    }

    /// The public half, in the raw form jsonwebtoken builds a JWK from (PKCS#1 DER for RSA,
    /// the uncompressed point for ECDSA, the 32 key bytes for Ed25519); `None` for HMAC.
    fn public_key(&self) -> Option<DecodingKey> {
        match self {
            Signer::Hmac(_) => None,
            Signer::Rsa(kp, _) => Some(DecodingKey::from_rsa_der(kp.public_key().as_ref())),
            Signer::Ecdsa(kp) => Some(DecodingKey::from_ec_der(kp.public_key().as_ref())),
            Signer::Ed25519(kp) => Some(DecodingKey::from_ed_der(kp.public_key().as_ref())),
        }
    }
}

/// How one verifier checks a signature: its key, prepared once and bound to the
/// configured algorithm (the token header never chooses it).
enum Check {
    /// HS*: the HMAC key (the tag comparison is constant-time in aws-lc), boxed like the
    /// signer's.
    Hmac(Box<hmac::Key>),
    /// RS*, PS*, ES*, EdDSA: the public key, parsed once.
    Public(ParsedPublicKey),
}

impl Check {
    /// Whether `sig_b64` (base64url) is a valid signature of `msg`.
    fn verify_b64(&self, msg: &[u8], sig_b64: &str) -> bool {
        match self {
            Check::Hmac(k) => {
                let mut sig = [0u8; 64];
                B64.decode_slice(sig_b64, &mut sig)
                    .is_ok_and(|n| hmac::verify(k, msg, &sig[..n]).is_ok())
            }
            Check::Public(k) => {
                // Room for base64 decoding's length estimate, which may exceed the result by 2.
                let mut sig = [0u8; MAX_SIG_LEN + 2];
                B64.decode_slice(sig_b64, &mut sig)
                    .is_ok_and(|n| k.verify_sig(msg, &sig[..n]).is_ok())
            }
        }
    }
}

struct Verifier {
    kid: String,
    /// The header segment this gateway mints with this key (alg, typ, kid).
    header_b64: String,
    check: Check,
}

/// The JOSE header fields we read; everything else is ignored except `crit`.
#[derive(serde::Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    kid: Option<std::borrow::Cow<'a, str>>,
    /// Present at all, `null` included: no extension is understood here.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    <serde::de::IgnoredAny as serde::Deserialize>::deserialize(d).map(|_| true)
}

fn hmac_alg(a: Algorithm) -> Option<hmac::Algorithm> {
    match a {
        Algorithm::HS256 => Some(hmac::HMAC_SHA256),
        Algorithm::HS384 => Some(hmac::HMAC_SHA384),
        Algorithm::HS512 => Some(hmac::HMAC_SHA512),
        _ => None,
    }
}

/// The verification algorithm of an asymmetric `a`: the same ones jsonwebtoken verifies
/// with (RSA keys of 2048 to 8192 bits, fixed-size ECDSA signatures).
fn verification_alg(a: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match a {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => return None,
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &signature::ED25519,
    })
}

fn rsa_encoding(a: Algorithm) -> &'static dyn RsaEncoding {
    match a {
        Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_SHA512,
        _ => &signature::RSA_PKCS1_SHA256,
    }
}

fn ecdsa_signing(a: Algorithm) -> &'static EcdsaSigningAlgorithm {
    if a == Algorithm::ES384 {
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING
    } else {
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING
    }
}

/// Keys of one config generation, built once; `verify` and `mint` allocate no keys.
pub struct Keys {
    alg: Algorithm,
    /// The signing key and its kid (absent: a verify-only gateway).
    signer: Option<(Signer, String)>,
    /// Primary first, then rotation keys.
    verifiers: Vec<Verifier>,
    jwks: Option<String>,
    /// The pre-encoded header segment of minted tokens.
    header_b64: String,
}

/// What the key material loads into, before the minted headers are encoded.
struct Loaded {
    signer: Option<(Signer, String)>,
    verifiers: Vec<Verifier>,
    jwks: Option<String>,
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

/// The signing key of a PEM private key: PKCS#8 ("PRIVATE KEY") for every family, also
/// PKCS#1 ("RSA PRIVATE KEY") for RSA and SEC1 ("EC PRIVATE KEY") for ECDSA. The key must
/// fit the configured algorithm (type and curve).
fn signer_from_pem(alg: Algorithm, pem: &[u8]) -> Result<Signer, String> {
    let not = |why: &dyn std::fmt::Display| {
        let why = why.to_string();
        if why.contains("TooSmall") || why.contains("TooLarge") {
            // aws-lc's terse reason, said as the public keys' check says it.
            return format!(
                "private_key: an RSA key of the wrong size ({why}): {} signs with 2048- to 8192-bit keys only",
                alg.name()
            );
        }
        format!("private_key: not a {} PEM private key ({why})", alg.name())
    };
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| not(&e))?;
    let wrong_kind = || not(&"unsupported PEM key kind for this algorithm");
    match (family(alg), &der) {
        (Family::Rsa, PrivateKeyDer::Pkcs8(k)) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
            .map(|kp| Signer::Rsa(kp, rsa_encoding(alg)))
            .map_err(|e| not(&e)),
        (Family::Rsa, PrivateKeyDer::Pkcs1(k)) => RsaKeyPair::from_der(k.secret_pkcs1_der())
            .map(|kp| Signer::Rsa(kp, rsa_encoding(alg)))
            .map_err(|e| not(&e)),
        (Family::Ec, PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Sec1(_)) => {
            EcdsaKeyPair::from_private_key_der(ecdsa_signing(alg), der.secret_der())
                .map(Signer::Ecdsa)
                .map_err(|e| not(&e))
        }
        // PKCS#8 v2 Ed25519 keys (with the public key inside) are common: accept v1 and v2.
        (Family::Ed, PrivateKeyDer::Pkcs8(k)) => {
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.secret_pkcs8_der())
                .map(Signer::Ed25519)
                .map_err(|e| not(&e))
        }
        _ => Err(wrong_kind()),
    }
}

/// The verifier of an asymmetric public key, prepared once for the configured algorithm
/// (a key of the wrong type or curve is refused here).
fn prepare_public(alg: Algorithm, key: &DecodingKey) -> Result<Check, String> {
    let verification = verification_alg(alg).ok_or("an HMAC algorithm has no public key")?;
    let bytes = key.try_get_as_bytes().map_err(|e| e.to_string())?;
    ParsedPublicKey::new(verification, bytes)
        .map(Check::Public)
        .map_err(|e| e.to_string())
}

/// The key's public JWK (with `use: sig`) and its kid, the JWK's RFC 7638 thumbprint.
fn public_jwk(key: &DecodingKey, jwt: JwtAlg) -> Result<(Jwk, String), String> {
    let mut jwk = Jwk::from_decoding_key(key, Some(jwt)).map_err(|e| e.to_string())?;
    let kid = thumbprint(&jwk)?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok((jwk, kid))
}

/// RSA verifiers take moduli of 2048 to 8192 bits: a smaller public key would be published
/// in the JWKS yet verify nothing (and is weak for whoever else trusts it), so it is refused
/// at load, as a private key that size is by its self-test.
fn rsa_size(jwk: &Jwk, alg: Algorithm) -> Result<(), String> {
    let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
        return Ok(());
    };
    let n = B64.decode(&rsa.n).map_err(|e| e.to_string())?;
    let n = &n[n.iter().take_while(|&&b| b == 0).count()..];
    let bits = n
        .first()
        .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
    if !(2048..=8192).contains(&bits) {
        return Err(format!(
            "a {bits}-bit RSA key: {} verifies 2048- to 8192-bit keys only",
            alg.name()
        ));
    }
    Ok(())
}

/// Proves a private key signs and verifies under the configured algorithm before serving
/// (e.g. an RSA key below 2048 bits signs but never verifies).
fn self_test(alg: Algorithm, signer: &Signer, check: &Check) -> Result<(), String> {
    const MSG: &[u8] = b"iptgate-self-test";
    let mut sig = String::new();
    signer
        .sign_b64(MSG, &mut sig)
        .map_err(|e| format!("private_key: cannot sign with {} ({e})", alg.name()))?;
    if !check.verify_b64(MSG, &sig) {
        return Err(format!("private_key: does not verify under {}", alg.name()));
    }
    Ok(())
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
        let Loaded {
            signer,
            mut verifiers,
            jwks,
        } = match &cfg.keys {
            KeyMaterial::Secret(secret) => Self::hmac(alg, secret)?,
            KeyMaterial::Pem {
                private_key,
                public_keys,
            } => Self::pem(alg, private_key.as_deref(), public_keys)?,
        };
        for v in &mut verifiers {
            v.header_b64 = header_b64(alg, &v.kid);
        }
        let header_b64 = signer
            .as_ref()
            .map(|(_, kid)| header_b64(alg, kid))
            .unwrap_or_default();
        Ok(Keys {
            alg,
            signer,
            verifiers,
            jwks,
            header_b64,
        })
    }

    /// HS*: one prepared HMAC key signs and verifies.
    fn hmac(alg: Algorithm, secret: &[u8]) -> Result<Loaded, String> {
        let Some(h) = hmac_alg(alg) else {
            return Err(format!("{} needs a PEM key, not a secret", alg.name()));
        };
        // The kid never derives from the raw secret: thumbprint of SHA-256(secret).
        use sha2::Digest;
        let digest = sha2::Sha256::digest(secret);
        let canonical = format!("{{\"k\":\"{}\",\"kty\":\"oct\"}}", B64.encode(digest));
        let kid = B64.encode(sha2::Sha256::digest(canonical.as_bytes()));
        let verifier = Verifier {
            header_b64: String::new(),
            kid: kid.clone(),
            check: Check::Hmac(Box::new(hmac::Key::new(h, secret))),
        };
        Ok(Loaded {
            signer: Some((Signer::Hmac(Box::new(hmac::Key::new(h, secret))), kid)),
            verifiers: vec![verifier],
            jwks: None,
        })
    }

    /// RS*, PS*, ES*, EdDSA: the signing key (if any) and its public half first, then the
    /// rotation keys, with the JWKS of all of them.
    fn pem(
        alg: Algorithm,
        private_key: Option<&[u8]>,
        public_keys: &[Vec<u8>],
    ) -> Result<Loaded, String> {
        if matches!(family(alg), Family::Hmac) {
            return Err(format!("{} needs a secret, not PEM keys", alg.name()));
        }
        let mut set = Vec::new();
        let mut verifiers = Vec::new();
        let mut signer = None;
        if let Some(pem) = private_key {
            let (s, jwk, verifier) = Self::private(alg, pem)?;
            set.push(jwk);
            signer = Some((s, verifier.kid.clone()));
            verifiers.push(verifier);
        }
        for (i, pem) in public_keys.iter().enumerate() {
            let (jwk, verifier) =
                Self::public(alg, pem).map_err(|e| format!("public_keys[{i}]: {e}"))?;
            if !verifiers.iter().any(|v| v.kid == verifier.kid) {
                set.push(jwk);
                verifiers.push(verifier);
            }
        }
        if verifiers.is_empty() {
            return Err("no key to verify tokens with".into());
        }
        let jwks = serde_json::to_string(&JwkSet { keys: set }).map_err(|e| e.to_string())?;
        Ok(Loaded {
            signer,
            verifiers,
            jwks: Some(jwks),
        })
    }

    /// A PEM private key: its signer, the JWK of its public half and that half's verifier,
    /// after a self-test of the pair.
    fn private(alg: Algorithm, pem: &[u8]) -> Result<(Signer, Jwk, Verifier), String> {
        let signer = signer_from_pem(alg, pem)?;
        let public = signer
            .public_key()
            .ok_or("private_key: an HMAC key has no public key")?;
        let (jwk, kid) = public_jwk(&public, jwt_alg(alg))
            .map_err(|e| format!("private_key: not usable for {} ({e})", alg.name()))?;
        let check = prepare_public(alg, &public)
            .map_err(|e| format!("private_key: cannot derive its public key ({e})"))?;
        self_test(alg, &signer, &check)?;
        let verifier = Verifier {
            header_b64: String::new(),
            kid,
            check,
        };
        Ok((signer, jwk, verifier))
    }

    /// A PEM public key (rotation): its JWK and its verifier. The caller adds the
    /// `public_keys[i]: ` prefix to errors.
    fn public(alg: Algorithm, pem: &[u8]) -> Result<(Jwk, Verifier), String> {
        let key = decoding_from_pem(&family(alg), pem)
            .map_err(|e| format!("not a {} PEM public key ({e})", alg.name()))?;
        let (jwk, kid) = public_jwk(&key, jwt_alg(alg))
            .map_err(|e| format!("not usable for {} ({e})", alg.name()))?;
        rsa_size(&jwk, alg)?;
        let check = prepare_public(alg, &key)
            .map_err(|e| format!("not usable for {} ({e})", alg.name()))?;
        let verifier = Verifier {
            header_b64: String::new(),
            kid,
            check,
        };
        Ok((jwk, verifier))
    }

    pub fn can_mint(&self) -> bool {
        self.signer.is_some()
    }

    /// A token that verification would refuse for its length is not minted.
    pub fn mint(&self, cfg: &TokenConfig, req: MintRequest) -> Result<Minted, MintError> {
        let (signer, _) = self.signer.as_ref().ok_or_else(|| {
            MintError::Failed("no private_key configured: this gateway only verifies tokens".into())
        })?;
        let now = crate::pipeline::auth::now();
        let jti = random_id();
        let claims = build_claims(cfg, &req, now, &jti);
        let exp = now + req.ttl.as_secs();
        let payload = B64.encode(Value::Object(claims).to_string());
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() + 100);
        token.push_str(&self.header_b64);
        token.push('.');
        token.push_str(&payload);
        let mut sig = String::new();
        signer
            .sign_b64(token.as_bytes(), &mut sig)
            .map_err(|e| MintError::Failed(format!("signing failed: {e}")))?;
        token.push('.');
        token.push_str(&sig);
        if token.len() > MAX_TOKEN_LEN {
            return Err(MintError::TooLarge(token.len()));
        }
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
        self.verify_within(cfg, token, typ, now, 0)
    }

    /// [`Keys::verify`], also accepting a token that expired (beyond the leeway) at most
    /// `grace` seconds ago. Only for ending a session: a logout must work with the token a
    /// client still holds, which has usually expired while its refresh family lives on.
    pub fn verify_within(
        &self,
        cfg: &TokenConfig,
        token: &str,
        typ: TokenType,
        now: u64,
        grace: u64,
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
        if !key.check.verify_b64(signed.as_bytes(), s) {
            return Err(TokenError::Invalid("bad signature"));
        }
        let payload = B64
            .decode(p)
            .map_err(|_| TokenError::Invalid("payload not base64url"))?;
        let payload =
            String::from_utf8(payload).map_err(|_| TokenError::Invalid("payload not UTF-8"))?;
        check_claims(cfg, Claims::parse(payload)?, typ, now, grace)
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
        if header.crit {
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
