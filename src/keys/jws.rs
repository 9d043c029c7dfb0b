//! `jws` builds and checks compact JWS tokens (RFC 7515 §7.1) and applies
//! the claims policy. Signing is done by hand: a pre-encoded header,
//! serde_json claims, base64url and the key's signature (Ed25519, or
//! ES256's raw `r‖s`: both 64 bytes, see `algorithm`); it never re-parses a
//! key per token.
//!
//! The daemon alone sets `iss`, `iat`, `nbf`, `exp` and `jti` (RFC 8725
//! §3.10, §3.12); a request that supplies one is rejected, never silently
//! overwritten. Verification accepts only the key's own `alg` label (fixed
//! when the key was created) with a header of exactly `alg`, `typ` and `kid`
//! (no `jku`, `jwk`, `x5u`, `crit`: RFC 8725 §3.1), checks Ed25519 with
//! `verify_strict` and ES256 in low-S form only, and
//! reads the payload as strictly as a request: duplicate claim names are
//! refused.
//!
//! Two times are involved. `iat`, `nbf` and `exp` are always the wall
//! clock's. Which key signs, and which keys verify, follows the key
//! lifecycle's clock, which never goes backwards (see `clock::Clock`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::AlgLabel;
use crate::keys::keyring::{KeySet, Published, Signer};

/// Claims only the daemon sets (the protocol's list; `fph` is the
/// SHA-256 of a client fingerprint, from the sign request's `fingerprint`).
pub use crate::protocol::RESERVED_CLAIMS as RESERVED;

/// The claim holding base64url(SHA-256(fingerprint)).
pub const FINGERPRINT_CLAIM: &str = "fph";

/// base64url(SHA-256(fingerprint)), as stored in the `fph` claim.
pub fn fingerprint_hash(fingerprint: &str) -> String {
    use sha2::Digest;
    B64.encode(sha2::Sha256::digest(fingerprint.as_bytes()))
}

/// Length of a signature (64 bytes, either algorithm) in base64url.
const SIG_B64_LEN: usize = 86;
const _: () = assert!(SIG_B64_LEN == (crate::keys::algorithm::SIGNATURE_LEN * 4).div_ceil(3));

/// The token settings the token code needs (the config's `tokens`
/// section, with the issuer encoded once). Not a client policy: those are
/// `daemon::access`'s.
#[derive(Debug, Clone)]
pub struct TokenRules {
    pub issuer: String,
    /// `issuer` as a JSON string literal, encoded once.
    issuer_json: String,
    pub alg: AlgLabel,
    pub default_ttl: u64,
    pub max_ttl: u64,
    pub max_token_bytes: usize,
    pub leeway: u64,
}

impl TokenRules {
    pub fn new(t: &crate::config::Tokens) -> TokenRules {
        TokenRules {
            issuer: t.issuer.clone(),
            issuer_json: serde_json::to_string(&t.issuer).expect("a string serializes"),
            alg: t.alg,
            default_ttl: t.default_ttl.as_secs(),
            max_ttl: t.max_ttl.as_secs(),
            max_token_bytes: t.max_token_bytes,
            leeway: t.leeway.as_secs(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignError {
    ReservedClaim(String),
    TtlTooLong { ttl: u64, max: u64 },
    TokenTooLarge { size: usize, max: usize },
    Random,
}

/// A signed token.
#[derive(Debug)]
pub struct Signed {
    pub token: String,
    pub exp: i64,
    pub jti: String,
}

/// Sign `claims` (already known to be a JSON object) with `signer`. With
/// `fingerprint`, the token is bound to it: only its hash goes in `fph`.
pub fn sign(
    signer: &Signer,
    policy: &TokenRules,
    claims: &Map<String, Value>,
    ttl: Option<u64>,
    now: i64,
    fingerprint: Option<&str>,
) -> Result<Signed, SignError> {
    if let Some(name) = claims.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(SignError::ReservedClaim(name.clone()));
    }
    let ttl = ttl.unwrap_or(policy.default_ttl);
    if ttl > policy.max_ttl {
        return Err(SignError::TtlTooLong {
            ttl,
            max: policy.max_ttl,
        });
    }
    // Never outlive the key's publication: no exp past its retire_at.
    let exp = now.saturating_add(ttl as i64).min(signer.retire_at);
    signer.issued(exp);

    let mut jti_bytes = [0u8; 16];
    getrandom::fill(&mut jti_bytes).map_err(|_| SignError::Random)?;
    let jti = B64.encode(jti_bytes);

    let mut payload = Vec::with_capacity(128 + policy.issuer_json.len());
    payload.extend_from_slice(b"{\"iss\":");
    payload.extend_from_slice(policy.issuer_json.as_bytes());
    for (name, value) in [("iat", now), ("nbf", now), ("exp", exp)] {
        payload.extend_from_slice(b",\"");
        payload.extend_from_slice(name.as_bytes());
        payload.extend_from_slice(b"\":");
        payload.extend_from_slice(itoa(value).as_bytes());
    }
    payload.extend_from_slice(b",\"jti\":\"");
    payload.extend_from_slice(jti.as_bytes());
    payload.push(b'"');
    if let Some(f) = fingerprint {
        payload.extend_from_slice(b",\"fph\":\"");
        payload.extend_from_slice(fingerprint_hash(f).as_bytes());
        payload.push(b'"');
    }
    for (name, value) in claims {
        payload.push(b',');
        serde_json::to_writer(&mut payload, name).expect("writing to a Vec cannot fail");
        payload.push(b':');
        serde_json::to_writer(&mut payload, value).expect("writing to a Vec cannot fail");
    }
    payload.push(b'}');

    let size = signer.header_b64.len() + 2 + b64_len(payload.len()) + SIG_B64_LEN;
    if size > policy.max_token_bytes {
        return Err(SignError::TokenTooLarge {
            size,
            max: policy.max_token_bytes,
        });
    }
    let mut token = String::with_capacity(size);
    token.push_str(&signer.header_b64);
    token.push('.');
    B64.encode_string(&payload, &mut token);
    let signature = signer.key.key().sign(token.as_bytes());
    token.push('.');
    B64.encode_string(signature, &mut token);
    debug_assert_eq!(token.len(), size);
    Ok(Signed { token, exp, jti })
}

fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

fn itoa(v: i64) -> String {
    v.to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Malformed, wrong header, bad signature, wrong issuer.
    Invalid(&'static str),
    /// No published key with that kid verifies now.
    UnknownKey,
    Expired,
    NotYetValid,
    AudienceMismatch,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VerifyError::Invalid(why) => why,
            VerifyError::UnknownKey => "no published key with the token's kid verifies now",
            VerifyError::Expired => "the token has expired",
            VerifyError::NotYetValid => "the token is not valid yet (nbf)",
            VerifyError::AudienceMismatch => "the token is not issued for that audience",
        })
    }
}

/// A token that passed every check.
#[derive(Debug)]
pub struct Verified {
    pub kid: String,
    pub claims: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    kid: String,
}

/// Check a compact JWS against the key set (at `key_time`, the lifecycle
/// clock), the issuer, and the wall-clock time `now`.
pub fn verify(
    keys: &KeySet,
    policy: &TokenRules,
    token: &str,
    audience: Option<&str>,
    key_time: i64,
    now: i64,
) -> Result<Verified, VerifyError> {
    let (h, p, s) = split_compact(token)?;
    let header = parse_header(h)?;
    let key = keys
        .verifier(&header.kid, key_time)
        .ok_or(VerifyError::UnknownKey)?;
    check_signature(key, &header, token, h, p, s)?;
    let claims = parse_claims(p)?;
    check_claims(keys, key, policy, &claims, now)?;
    check_audience(&claims, audience)?;
    Ok(Verified {
        kid: header.kid,
        claims,
    })
}

/// Step 1: the token's three base64url parts (header, payload, signature).
#[inline]
fn split_compact(token: &str) -> Result<(&str, &str, &str), VerifyError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Invalid(
            "not a compact JWS (three base64url parts)",
        ));
    };
    Ok((h, p, s))
}

/// Step 2: decode the header and check its shape, `alg` and `typ`.
fn parse_header(h: &str) -> Result<Header, VerifyError> {
    use VerifyError::Invalid;
    if h.len() > 1024 {
        return Err(Invalid("header is too long"));
    }
    let header_bytes = B64
        .decode(h)
        .map_err(|_| Invalid("header is not base64url"))?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|_| Invalid("header must be a JSON object of exactly alg, typ and kid"))?;
    if AlgLabel::parse(&header.alg).is_none() {
        return Err(Invalid("alg is not one this daemon signs with"));
    }
    if header.typ.as_deref().is_some_and(|t| t != "JWT") {
        return Err(Invalid("typ must be JWT"));
    }
    Ok(header)
}

/// Step 3: `alg` is the key's own label and the signature verifies strictly.
fn check_signature(
    key: &Published,
    header: &Header,
    token: &str,
    h: &str,
    p: &str,
    s: &str,
) -> Result<(), VerifyError> {
    use VerifyError::Invalid;
    if header.alg != key.row.alg.as_str() {
        return Err(Invalid("alg is not the label this key signs with"));
    }
    let mut sig = [0u8; 64];
    match B64.decode_slice(s, &mut sig) {
        Ok(64) => {}
        _ => return Err(Invalid("signature is not 64 base64url bytes")),
    }
    let signing_input = &token[..h.len() + 1 + p.len()];
    if key.key.verify(signing_input.as_bytes(), &sig) {
        Ok(())
    } else {
        Err(Invalid("signature does not verify"))
    }
}

/// Step 4: the payload as a claims object, without duplicate names.
fn parse_claims(p: &str) -> Result<Map<String, Value>, VerifyError> {
    use VerifyError::Invalid;
    let payload = B64
        .decode(p)
        .map_err(|_| Invalid("payload is not base64url"))?;
    let payload = std::str::from_utf8(&payload).map_err(|_| Invalid("payload is not UTF-8"))?;
    match crate::protocol::strict_json::parse(payload) {
        Ok(Value::Object(claims)) => Ok(claims),
        Err(e) if crate::protocol::strict_json::is_duplicate(&e) => {
            Err(Invalid("payload has the same claim name twice"))
        }
        _ => Err(Invalid("payload is not a JSON object")),
    }
}

/// Step 5: the issuer, `exp`, `nbf`, `iat`, `retire_at` and `max_token_ttl`.
fn check_claims(
    keys: &KeySet,
    key: &Published,
    policy: &TokenRules,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<(), VerifyError> {
    use VerifyError::Invalid;
    let int = |name: &str| claims.get(name).and_then(Value::as_i64);
    let leeway = policy.leeway as i64;
    let exp = int("exp").ok_or(Invalid("exp is missing or not an integer"))?;
    let iat = int("iat").ok_or(Invalid("iat is missing or not an integer"))?;
    if claims.get("iss").and_then(Value::as_str) != Some(policy.issuer.as_str()) {
        return Err(Invalid("iss is not this daemon's issuer"));
    }
    if now.saturating_sub(leeway) >= exp {
        return Err(VerifyError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_i64().ok_or(Invalid("nbf is not an integer"))?;
        if now.saturating_add(leeway) < nbf {
            return Err(VerifyError::NotYetValid);
        }
    }
    // A token cannot be issued in the future: one that says so was minted
    // while a clock was ahead (or forged by someone who had the key).
    if iat > now.saturating_add(leeway) {
        return Err(Invalid("iat is in the future"));
    }
    // No token outlives its key's publication (sign never issues one), and
    // in a cluster none lives longer than the owner's bound: a token that
    // says otherwise was forged with a key another node published.
    if exp > key.row.retire_at {
        return Err(Invalid("exp is past its key's retire_at"));
    }
    if let Some(bound) = keys.max_token_ttl
        && exp.saturating_sub(iat) > bound.saturating_add(leeway)
    {
        return Err(Invalid(
            "the token's lifetime (exp - iat) is over the cluster's max_token_ttl",
        ));
    }
    Ok(())
}

/// Step 6: with an expected `audience`, the `aud` claim names it.
#[inline]
fn check_audience(claims: &Map<String, Value>, audience: Option<&str>) -> Result<(), VerifyError> {
    if let Some(want) = audience {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => a == want,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
            _ => false,
        };
        if !ok {
            return Err(VerifyError::AudienceMismatch);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::keyring::{KeySet, Published};
    use crate::keys::locked::LockedKey;
    use crate::keys::{KeyInfo, Origin};
    use std::sync::Arc;

    fn setup(retire_at: i64) -> (Arc<Signer>, KeySet, TokenRules) {
        setup_with(AlgLabel::EdDSA, retire_at)
    }

    fn setup_with(alg: AlgLabel, retire_at: i64) -> (Arc<Signer>, KeySet, TokenRules) {
        let (signer, published) = key_of(alg, 7, retire_at);
        let set = KeySet::new(vec![Arc::clone(&signer)], vec![published]);
        (signer, set, rules(alg))
    }

    fn key_of(alg: AlgLabel, seed: u8, retire_at: i64) -> (Arc<Signer>, Published) {
        let key = crate::keys::SecretKey::from_secret(alg.key_type(), &[seed; 32]).unwrap();
        let pk = key.public_key();
        let row = KeyInfo {
            kid: crate::keys::share_format::thumbprint(&pk),
            public_key: pk,
            origin: Origin::Generated,
            created_at: 0,
            activate_at: 0,
            deactivate_at: retire_at - 1,
            retire_at,
            share_generation: 1,
            pending_generation: None,
            verified: true,
            alg,
        };
        let signer = Arc::new(Signer::new(&row, LockedKey::new(key).0, i64::MIN));
        let published = Published {
            row,
            key: pk.verifier().unwrap(),
            node: None,
        };
        (signer, published)
    }

    fn rules(alg: AlgLabel) -> TokenRules {
        TokenRules {
            issuer: "iss".into(),
            issuer_json: "\"iss\"".into(),
            alg,
            default_ttl: 60,
            max_ttl: 3600,
            max_token_bytes: 4096,
            leeway: 0,
        }
    }

    #[test]
    fn exp_never_passes_the_keys_retire_at() {
        let (signer, set, policy) = setup(1000);
        let s = sign(&signer, &policy, &Map::new(), Some(3600), 900, None).unwrap();
        assert_eq!(s.exp, 1000);
        let v = verify(&set, &policy, &s.token, None, 950, 950).unwrap();
        assert_eq!(v.claims["exp"], 1000);
        assert_eq!(
            verify(&set, &policy, &s.token, None, 1000, 1000).unwrap_err(),
            VerifyError::UnknownKey
        );
    }

    #[test]
    fn exp_and_nbf_are_checked_with_leeway() {
        let (signer, set, mut policy) = setup(1_000_000);
        let s = sign(&signer, &policy, &Map::new(), Some(60), 1000, None).unwrap();
        assert!(verify(&set, &policy, &s.token, None, 1059, 1059).is_ok());
        assert_eq!(
            verify(&set, &policy, &s.token, None, 1060, 1060).unwrap_err(),
            VerifyError::Expired
        );
        assert_eq!(
            verify(&set, &policy, &s.token, None, 999, 999).unwrap_err(),
            VerifyError::NotYetValid
        );
        policy.leeway = 5;
        assert!(verify(&set, &policy, &s.token, None, 1064, 1064).is_ok());
        assert!(verify(&set, &policy, &s.token, None, 995, 995).is_ok());
    }

    /// A token with `header` and `payload`, signed by the test key.
    fn forge_with(signer: &Signer, header: &str, payload: &str) -> String {
        let mut t = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let sig = signer.key.key().sign(t.as_bytes());
        t.push('.');
        t.push_str(&B64.encode(sig));
        t
    }

    fn forge(signer: &Signer, payload: &str) -> String {
        let header = B64.decode(&signer.header_b64).unwrap();
        forge_with(signer, std::str::from_utf8(&header).unwrap(), payload)
    }

    #[test]
    fn es256_tokens_are_raw_r_s_and_verify() {
        let (signer, set, policy) = setup_with(AlgLabel::ES256, 1_000_000);
        let s = sign(&signer, &policy, &Map::new(), Some(60), 1000, None).unwrap();
        let parts: Vec<&str> = s.token.split('.').collect();
        let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(B64.decode(parts[2]).unwrap().len(), 64, "r‖s, not DER");
        assert!(verify(&set, &policy, &s.token, None, 1000, 1000).is_ok());
        // Every other one-bit change of the signature is refused.
        let sig = B64.decode(parts[2]).unwrap();
        for i in [0, 31, 32, 63] {
            let mut bad = sig.clone();
            bad[i] ^= 1;
            let t = format!("{}.{}.{}", parts[0], parts[1], B64.encode(&bad));
            assert_eq!(
                verify(&set, &policy, &t, None, 1000, 1000).unwrap_err(),
                VerifyError::Invalid("signature does not verify")
            );
        }
        // The high-S twin of the same signature: refused.
        use p256::elliptic_curve::PrimeField;
        let s_scalar =
            p256::Scalar::from_repr(<[u8; 32]>::try_from(&sig[32..]).unwrap().into()).unwrap();
        let mut twin = sig.clone();
        twin[32..].copy_from_slice(&(-s_scalar).to_repr());
        let t = format!("{}.{}.{}", parts[0], parts[1], B64.encode(&twin));
        assert!(verify(&set, &policy, &t, None, 1000, 1000).is_err());
        // A DER signature (what a generic ECDSA library emits): refused.
        let der = p256::ecdsa::Signature::from_slice(&sig).unwrap().to_der();
        let t = format!("{}.{}.{}", parts[0], parts[1], B64.encode(der.as_bytes()));
        assert_eq!(
            verify(&set, &policy, &t, None, 1000, 1000).unwrap_err(),
            VerifyError::Invalid("signature is not 64 base64url bytes")
        );
    }

    #[test]
    fn a_mixed_set_verifies_each_key_with_its_own_alg_only() {
        let (ed, ed_pub) = key_of(AlgLabel::EdDSA, 1, 1_000_000);
        let (ec, ec_pub) = key_of(AlgLabel::ES256, 2, 1_000_000);
        let set = KeySet::new(vec![Arc::clone(&ed), Arc::clone(&ec)], vec![ed_pub, ec_pub]);
        let jwks: Value = serde_json::from_str(set.jwks.get()).unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys[0]["kty"], "OKP");
        assert!(keys[0].get("y").is_none());
        assert_eq!(
            keys[1].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["alg", "crv", "kid", "kty", "use", "x", "y"]
        );
        assert_eq!(
            (&keys[1]["kty"], &keys[1]["crv"], &keys[1]["alg"]),
            (&"EC".into(), &"P-256".into(), &"ES256".into())
        );
        let policy = rules(AlgLabel::EdDSA);
        let payload = r#"{"iss":"iss","iat":1000,"exp":2000}"#;
        for signer in [&ed, &ec] {
            assert!(verify(&set, &policy, &forge(signer, payload), None, 1000, 1000).is_ok());
        }
        // The ES256 key's token claiming EdDSA, and the other way round.
        for (signer, label) in [(&ec, "EdDSA"), (&ed, "ES256")] {
            let h = format!(r#"{{"alg":"{label}","typ":"JWT","kid":"{}"}}"#, signer.kid);
            assert_eq!(
                verify(
                    &set,
                    &policy,
                    &forge_with(signer, &h, payload),
                    None,
                    1000,
                    1000
                )
                .unwrap_err(),
                VerifyError::Invalid("alg is not the label this key signs with")
            );
        }
    }

    #[test]
    fn verify_is_as_strict_as_sign_about_iat_and_duplicate_names() {
        let (signer, set, policy) = setup(1_000_000);
        let ok = forge(&signer, r#"{"iss":"iss","iat":1000,"exp":2000}"#);
        assert!(verify(&set, &policy, &ok, None, 1000, 1000).is_ok());
        // iat beyond now + leeway (a token minted while the clock was ahead).
        let future = forge(&signer, r#"{"iss":"iss","iat":1001,"nbf":1000,"exp":2000}"#);
        assert_eq!(
            verify(&set, &policy, &future, None, 1000, 1000).unwrap_err(),
            VerifyError::Invalid("iat is in the future")
        );
        let dup = forge(
            &signer,
            r#"{"iss":"iss","iat":1000,"exp":2000,"sub":"a","sub":"b"}"#,
        );
        assert_eq!(
            verify(&set, &policy, &dup, None, 1000, 1000).unwrap_err(),
            VerifyError::Invalid("payload has the same claim name twice")
        );
    }

    #[test]
    fn each_key_verifies_with_its_own_alg_label_only() {
        let (signer, set, policy) = setup(1_000_000);
        let payload = r#"{"iss":"iss","iat":1000,"exp":2000}"#;
        assert!(verify(&set, &policy, &forge(&signer, payload), None, 1000, 1000).is_ok());
        // The same key and claims under the other label: refused, since the
        // key was created with `EdDSA`.
        let other = format!(r#"{{"alg":"Ed25519","typ":"JWT","kid":"{}"}}"#, signer.kid);
        assert_eq!(
            verify(
                &set,
                &policy,
                &forge_with(&signer, &other, payload),
                None,
                1000,
                1000
            )
            .unwrap_err(),
            VerifyError::Invalid("alg is not the label this key signs with")
        );
    }

    #[test]
    fn reserved_claims_are_refused_not_overwritten() {
        let (signer, _, policy) = setup(1_000_000);
        for name in RESERVED {
            let mut m = Map::new();
            m.insert(name.into(), 1.into());
            assert_eq!(
                sign(&signer, &policy, &m, None, 0, None).unwrap_err(),
                SignError::ReservedClaim(name.into())
            );
        }
    }
}
