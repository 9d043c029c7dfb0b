//! `algorithm` is the one place that knows the two key types: Ed25519
//! (JWS `EdDSA`/`Ed25519`, RFC 8037) and ECDSA on P-256 with SHA-256 (JWS
//! `ES256`, RFC 7518 §3.4). Everything above it holds a [`SecretKey`], a
//! [`PublicKey`] or a [`Verifier`] and never matches on a curve.
//!
//! Both private keys are 32 bytes (the Ed25519 seed, the P-256 scalar
//! big-endian), so the Shamir split is the same for both. A P-256 scalar
//! must be in [1, n−1]: 32 bytes that are not are refused, never reduced.
//! Both signatures are 64 bytes: ES256's is the raw `r‖s` of RFC 7518
//! §3.4 (not DER), always in low-S form; a high-S or out-of-range one is
//! refused. The curve code is RustCrypto's (`ed25519-dalek`, `p256`), whose
//! ECDSA signing is deterministic (RFC 6979).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use zeroize::Zeroizing;

use crate::config::AlgLabel;

/// The length of every private key (seed or scalar) and of every share's y.
pub const SECRET_LEN: usize = 32;

/// The length of every signature (Ed25519, or ES256's `r‖s`).
pub const SIGNATURE_LEN: usize = 64;

/// A key's type: the curve and the signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    Ed25519,
    P256,
}

impl KeyType {
    /// The name people know it by (`Ed25519`, `P-256`).
    pub fn name(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "Ed25519",
            KeyType::P256 => "P-256",
        }
    }
}

impl AlgLabel {
    /// The type of key a label signs with.
    pub fn key_type(self) -> KeyType {
        match self {
            AlgLabel::EdDSA | AlgLabel::Ed25519 => KeyType::Ed25519,
            AlgLabel::ES256 => KeyType::P256,
        }
    }
}

/// A public key as the stores keep it: the Ed25519 point (32 bytes), or
/// the P-256 point in SEC1 uncompressed form (`04‖x‖y`, 65 bytes), known
/// to be on the curve.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PublicKey {
    Ed25519([u8; 32]),
    P256([u8; 65]),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}({})",
            self.key_type().name(),
            B64.encode(self.bytes())
        )
    }
}

impl PublicKey {
    /// Read stored bytes as a key of type `key_type`. The error says what is
    /// wrong with them.
    pub fn parse(key_type: KeyType, bytes: &[u8]) -> Result<PublicKey, &'static str> {
        match key_type {
            KeyType::Ed25519 => bytes
                .try_into()
                .map(PublicKey::Ed25519)
                .map_err(|_| "an Ed25519 public key is not 32 bytes"),
            KeyType::P256 => {
                let sec1: [u8; 65] = bytes
                    .try_into()
                    .map_err(|_| "a P-256 public key is not 65 bytes (SEC1 uncompressed)")?;
                if sec1[0] != 0x04 {
                    return Err("a P-256 public key is not in SEC1 uncompressed form");
                }
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .map_err(|_| "the P-256 public key is not a point on the curve")?;
                Ok(PublicKey::P256(sec1))
            }
        }
    }

    pub fn key_type(&self) -> KeyType {
        match self {
            PublicKey::Ed25519(_) => KeyType::Ed25519,
            PublicKey::P256(_) => KeyType::P256,
        }
    }

    /// The bytes the stores keep.
    pub fn bytes(&self) -> &[u8] {
        match self {
            PublicKey::Ed25519(b) => b,
            PublicKey::P256(b) => b,
        }
    }

    /// The key's JWK members without `kid`, `alg` and `use`, in the
    /// lexicographic order of RFC 7638 §3.3: `crv`, `kty`, `x` (and `y`).
    pub fn jwk_members(&self) -> JwkMembers {
        match self {
            PublicKey::Ed25519(x) => JwkMembers {
                crv: "Ed25519",
                kty: "OKP",
                x: B64.encode(x),
                y: None,
            },
            PublicKey::P256(p) => JwkMembers {
                crv: "P-256",
                kty: "EC",
                x: B64.encode(&p[1..33]),
                y: Some(B64.encode(&p[33..65])),
            },
        }
    }

    /// The RFC 7638 thumbprint (every key's kid): base64url of the SHA-256
    /// of the required members in lexicographic order, no whitespace.
    pub fn thumbprint(&self) -> String {
        use sha2::Digest;
        let m = self.jwk_members();
        let canonical = match &m.y {
            None => format!(r#"{{"crv":"{}","kty":"{}","x":"{}"}}"#, m.crv, m.kty, m.x),
            Some(y) => format!(
                r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{y}"}}"#,
                m.crv, m.kty, m.x
            ),
        };
        B64.encode(sha2::Sha256::digest(canonical.as_bytes()))
    }

    /// The key that checks signatures. `None` when the bytes are not a
    /// usable key (an Ed25519 encoding that is not a point, or a weak one
    /// of small order).
    pub fn verifier(&self) -> Option<Verifier> {
        match self {
            PublicKey::Ed25519(b) => ed25519_dalek::VerifyingKey::from_bytes(b)
                .ok()
                .filter(|k| !k.is_weak())
                .map(Verifier::Ed25519),
            PublicKey::P256(b) => p256::ecdsa::VerifyingKey::from_sec1_bytes(b)
                .ok()
                .map(Verifier::P256),
        }
    }
}

/// The members of a public JWK that depend on the key (RFC 7517, 8037).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JwkMembers {
    pub crv: &'static str,
    pub kty: &'static str,
    pub x: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// A private key. Both variants wipe themselves on drop; `Debug` prints
/// nothing of them.
#[derive(Clone)]
pub enum SecretKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

/// Compile-time check that both key types wipe themselves.
fn _assert_zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}
const _: fn() = _assert_zeroize_on_drop::<ed25519_dalek::SigningKey>;
const _: fn() = _assert_zeroize_on_drop::<p256::ecdsa::SigningKey>;

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}, [redacted])", self.key_type().name())
    }
}

impl SecretKey {
    /// The key whose 32 secret bytes are `secret`. `None` for P-256 when the
    /// bytes are not a scalar in [1, n−1] (every 32 bytes are an Ed25519
    /// seed).
    pub fn from_secret(key_type: KeyType, secret: &[u8; SECRET_LEN]) -> Option<SecretKey> {
        match key_type {
            KeyType::Ed25519 => Some(SecretKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                secret,
            ))),
            // From the slice: no by-value copy of the scalar on our stack.
            KeyType::P256 => p256::ecdsa::SigningKey::from_slice(&secret[..])
                .ok()
                .map(SecretKey::P256),
        }
    }

    /// A new random key's 32 secret bytes, from the OS. For P-256, bytes
    /// outside [1, n−1] (a chance of about 2^-32) are drawn again.
    pub fn generate_secret(key_type: KeyType) -> crate::error::Result<Zeroizing<[u8; 32]>> {
        loop {
            let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
            getrandom::fill(&mut secret[..])
                .map_err(|e| crate::error::Error::Random(e.to_string()))?;
            if SecretKey::from_secret(key_type, &secret).is_some() {
                return Ok(secret);
            }
        }
    }

    /// The 32 secret bytes, to split. Wiped on drop.
    pub fn secret(&self) -> Zeroizing<[u8; SECRET_LEN]> {
        match self {
            SecretKey::Ed25519(k) => Zeroizing::new(k.to_bytes()),
            SecretKey::P256(k) => wiped_copy(&mut k.to_bytes()),
        }
    }

    pub fn key_type(&self) -> KeyType {
        match self {
            SecretKey::Ed25519(_) => KeyType::Ed25519,
            SecretKey::P256(_) => KeyType::P256,
        }
    }

    /// The public key it derives.
    pub fn public_key(&self) -> PublicKey {
        match self {
            SecretKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key().to_bytes()),
            SecretKey::P256(k) => {
                let point = k.verifying_key().to_sec1_point(false);
                PublicKey::P256(
                    point
                        .as_bytes()
                        .try_into()
                        .expect("an uncompressed P-256 point is 65 bytes"),
                )
            }
        }
    }

    /// Sign `message`: Ed25519 (RFC 8032), or ECDSA P-256 with SHA-256,
    /// deterministic (RFC 6979), as `r‖s` with s in its low form.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        match self {
            SecretKey::Ed25519(k) => ed25519_dalek::Signer::sign(k, message).to_bytes(),
            SecretKey::P256(k) => {
                let sig: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(k, message);
                sig.normalize_s().to_bytes().into()
            }
        }
    }
}

/// A public key ready to check signatures.
#[derive(Clone, Debug)]
pub enum Verifier {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl Verifier {
    /// Whether `signature` is this key's over `message`. Ed25519 is checked
    /// with `verify_strict`; ES256 refuses an `r` or `s` outside [1, n−1]
    /// and a high `s` (the other form of the same signature).
    pub fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        match self {
            Verifier::Ed25519(k) => k
                .verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
                .is_ok(),
            Verifier::P256(k) => {
                let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else {
                    return false;
                };
                if sig.normalize_s() != sig {
                    return false;
                }
                p256::ecdsa::signature::Verifier::verify(k, message, &sig).is_ok()
            }
        }
    }
}

/// `bytes` copied into a buffer wiped on drop, and wiped where they were.
fn wiped_copy(bytes: &mut [u8]) -> Zeroizing<[u8; SECRET_LEN]> {
    let mut out = Zeroizing::new([0u8; SECRET_LEN]);
    out.copy_from_slice(bytes);
    zeroize::Zeroize::zeroize(bytes);
    out
}

/// A PKCS#8 private key (PEM, `-----BEGIN PRIVATE KEY-----`) of either
/// type, as its type and 32 secret bytes. The error names what the text is
/// not; it never quotes it.
pub fn secret_from_pkcs8_pem(
    text: &str,
) -> Result<(KeyType, Zeroizing<[u8; SECRET_LEN]>), &'static str> {
    if let Ok(k) =
        <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(text)
    {
        return Ok((KeyType::Ed25519, Zeroizing::new(k.to_bytes())));
    }
    match <p256::SecretKey as p256::pkcs8::DecodePrivateKey>::from_pkcs8_pem(text) {
        Ok(k) => Ok((KeyType::P256, wiped_copy(&mut k.to_bytes()))),
        Err(_) => Err("not a PKCS#8 PEM private key of an Ed25519 or P-256 key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p256_key(byte: u8) -> SecretKey {
        SecretKey::from_secret(KeyType::P256, &[byte; 32]).unwrap()
    }

    #[test]
    fn p256_scalars_out_of_range_are_refused() {
        assert!(SecretKey::from_secret(KeyType::P256, &[0; 32]).is_none());
        // n itself, and the largest 32 bytes, are not scalars.
        let n = hex32("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        assert!(SecretKey::from_secret(KeyType::P256, &n).is_none());
        assert!(SecretKey::from_secret(KeyType::P256, &[0xff; 32]).is_none());
        let mut n_minus_1 = n;
        n_minus_1[31] -= 1;
        assert!(SecretKey::from_secret(KeyType::P256, &n_minus_1).is_some());
        let mut one = [0u8; 32];
        one[31] = 1;
        assert!(SecretKey::from_secret(KeyType::P256, &one).is_some());
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn es256_signatures_are_low_s_raw_and_checked_strictly() {
        let key = p256_key(5);
        let v = key.public_key().verifier().unwrap();
        for msg in [&b"a"[..], b"b", b"a.b", b"token"] {
            let sig = key.sign(msg);
            assert!(v.verify(msg, &sig));
            let parsed = p256::ecdsa::Signature::from_slice(&sig).unwrap();
            assert_eq!(parsed.normalize_s(), parsed, "low S");
            // The high-S twin verifies for p256 itself, never here.
            let high = high_s(&sig);
            let twin = p256::ecdsa::Signature::from_slice(&high).unwrap();
            assert!(
                p256::ecdsa::signature::Verifier::verify(
                    match &v {
                        Verifier::P256(k) => k,
                        _ => unreachable!(),
                    },
                    msg,
                    &twin
                )
                .is_ok()
            );
            assert!(!v.verify(msg, &high));
            assert!(!v.verify(b"other", &sig));
        }
        // r or s zero, or n: refused.
        let mut zero = key.sign(b"a");
        zero[32..].fill(0);
        assert!(!v.verify(b"a", &zero));
        let mut big = key.sign(b"a");
        big[..32].fill(0xff);
        assert!(!v.verify(b"a", &big));
    }

    /// The same signature with s replaced by n − s.
    fn high_s(sig: &[u8; 64]) -> [u8; 64] {
        use p256::elliptic_curve::PrimeField;
        let s =
            p256::Scalar::from_repr((*<&[u8; 32]>::try_from(&sig[32..]).unwrap()).into()).unwrap();
        let neg = -s;
        let mut out = *sig;
        out[32..].copy_from_slice(&neg.to_repr());
        out
    }

    #[test]
    fn es256_is_deterministic_and_verifies_across_keys_only_with_its_own() {
        let (a, b) = (p256_key(1), p256_key(2));
        assert_eq!(a.sign(b"m"), a.sign(b"m"));
        assert!(
            !b.public_key()
                .verifier()
                .unwrap()
                .verify(b"m", &a.sign(b"m"))
        );
    }

    #[test]
    fn p256_points_off_the_curve_are_refused() {
        let PublicKey::P256(mut p) = p256_key(3).public_key() else {
            unreachable!()
        };
        assert!(PublicKey::parse(KeyType::P256, &p).is_ok());
        p[64] ^= 1;
        assert!(PublicKey::parse(KeyType::P256, &p).is_err());
        assert!(PublicKey::parse(KeyType::P256, &p[..33]).is_err());
        assert!(PublicKey::parse(KeyType::P256, &[0u8; 65]).is_err());
        assert!(PublicKey::parse(KeyType::Ed25519, &[0u8; 65]).is_err());
    }

    #[test]
    fn thumbprint_matches_rfc7638_and_rfc8037() {
        // RFC 8037 A.3.
        let x = B64
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            PublicKey::Ed25519(x.try_into().unwrap()).thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        // An EC key: the thumbprint over {"crv","kty","x","y"}, computed
        // here independently with serde_json's sorted map.
        let key = p256_key(9).public_key();
        let m = key.jwk_members();
        let mut map = std::collections::BTreeMap::new();
        map.insert("crv", m.crv.to_owned());
        map.insert("kty", m.kty.to_owned());
        map.insert("x", m.x.clone());
        map.insert("y", m.y.clone().unwrap());
        use sha2::Digest;
        let json = serde_json::to_string(&map).unwrap();
        assert!(json.starts_with(r#"{"crv":"P-256","kty":"EC","x":"#));
        assert_eq!(
            key.thumbprint(),
            B64.encode(sha2::Sha256::digest(json.as_bytes()))
        );
    }

    #[test]
    fn pkcs8_pem_of_either_type_reads() {
        use p256::pkcs8::EncodePrivateKey;
        let sk = p256::SecretKey::from_bytes(&[4u8; 32].into()).unwrap();
        let pem = sk.to_pkcs8_pem(Default::default()).unwrap();
        let (kt, secret) = secret_from_pkcs8_pem(&pem).unwrap();
        assert_eq!((kt, *secret), (KeyType::P256, [4u8; 32]));
        let ed = ed25519_dalek::SigningKey::from_bytes(&[6u8; 32]);
        let pem = ed.to_pkcs8_pem(Default::default()).unwrap();
        let (kt, secret) = secret_from_pkcs8_pem(&pem).unwrap();
        assert_eq!((kt, *secret), (KeyType::Ed25519, [6u8; 32]));
        assert!(secret_from_pkcs8_pem("-----BEGIN PRIVATE KEY-----\nAA==\n").is_err());
    }
}
