//! `share_format` writes and reads a share as a file (format 2), and names
//! keys: the RFC 7638 thumbprint that is every key's `kid`, the deployment
//! id, the checksum of a database share row. Pure: bytes in, bytes out.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::shamir::{KeyShare, SEED_LEN, ShareY, Slot};

/// RFC 7638 JWK thumbprint of an Ed25519 public key (RFC 8037 OKP form):
/// base64url(SHA-256 of `{"crv":"Ed25519","kty":"OKP","x":"…"}`).
pub fn thumbprint(public_key: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        B64.encode(public_key)
    );
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

/// A kid as this daemon writes it: 43 base64url characters (a SHA-256).
pub fn is_valid_kid(kid: &str) -> bool {
    kid.len() == 43
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---------------------------------------------------------------------------
// Share file format (version 2)
//
//   splitsign-share 2
//   deployment <32 lowercase hex digits>
//   kid <43 base64url chars>
//   generation <decimal>
//   x <1|2|3>
//   public-key <base64url of 32 bytes>
//   y <base64url of 32 bytes>
//   sha256 <base64url of SHA-256 over every byte above this line>
//
// The checksum makes a truncated or bit-flipped file read as corrupt rather
// than as a different share. It is not a MAC: the public-key check after
// recovery is what stops a forged share. The deployment line ties the file
// to one pair of stores, so a share file of another deployment, or a
// database of another deployment beside this share directory, is named as
// such instead of being taken for an orphan. Version 1 is the same without
// the deployment line; it is still read (and rewritten as version 2 once the
// stores are shown to belong together).
// ---------------------------------------------------------------------------

const MAGIC_V1: &str = "splitsign-share 1";
const MAGIC: &str = "splitsign-share 2";

/// A deployment id: 16 random bytes as 32 lowercase hex digits.
pub fn is_valid_deployment(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A new deployment id.
pub fn new_deployment() -> crate::error::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| crate::error::Error::Random(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Any share file larger than this is corrupt.
pub const MAX_SHARE_FILE: usize = 1024;

/// Serialize a share (format 2; the share must carry its deployment). The
/// returned buffer is wiped on drop.
pub fn encode_file(share: &KeyShare) -> Zeroizing<Vec<u8>> {
    let deployment = share
        .deployment
        .as_deref()
        .expect("a share is written with its deployment id");
    debug_assert!(is_valid_deployment(deployment));
    let mut body = Zeroizing::new(String::with_capacity(360));
    body.push_str(MAGIC);
    body.push('\n');
    body.push_str("deployment ");
    body.push_str(deployment);
    body.push('\n');
    body.push_str(&format!(
        "kid {}\ngeneration {}\nx {}\npublic-key {}\ny ",
        share.kid,
        share.generation,
        share.slot.x(),
        B64.encode(share.public_key)
    ));
    B64.encode_string(share.y.as_bytes(), &mut body);
    body.push('\n');
    let sum = B64.encode(Sha256::digest(body.as_bytes()));
    body.push_str("sha256 ");
    body.push_str(&sum);
    body.push('\n');
    Zeroizing::new(body.as_bytes().to_vec())
}

/// Parse a share file's bytes. The error says what is wrong, never the bytes.
pub fn decode_file(bytes: &[u8]) -> Result<KeyShare, String> {
    if bytes.is_empty() {
        return Err("empty (truncated?)".into());
    }
    if bytes.len() > MAX_SHARE_FILE {
        return Err(format!("larger than {MAX_SHARE_FILE} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
    let Some(sum_at) = text.rfind("sha256 ") else {
        return Err("no checksum line (truncated?)".into());
    };
    let (body, sum_line) = text.split_at(sum_at);
    let sum = sum_line
        .strip_prefix("sha256 ")
        .and_then(|s| s.strip_suffix('\n'))
        .ok_or("checksum line is not terminated (truncated?)")?;
    let expected = B64.encode(Sha256::digest(body.as_bytes()));
    if sum != expected {
        return Err("checksum mismatch (altered or truncated)".into());
    }
    let mut lines = body.lines();
    let version = match lines.next() {
        Some(MAGIC) => 2,
        Some(MAGIC_V1) => 1,
        _ => return Err(format!("not a share file (first line must be {MAGIC:?})")),
    };
    let mut field = |name: &str| -> Result<&str, String> {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(' '))
            .ok_or_else(|| format!("missing or misplaced field `{name}`"))
    };
    let deployment = if version >= 2 {
        let d = field("deployment")?;
        if !is_valid_deployment(d) {
            return Err("field `deployment` is not 32 lowercase hex digits".into());
        }
        Some(d.to_owned())
    } else {
        None
    };
    let kid = field("kid")?.to_owned();
    if !is_valid_kid(&kid) {
        return Err("field `kid` is not a 43-character base64url thumbprint".into());
    }
    let generation: u32 = field("generation")?
        .parse()
        .map_err(|_| "field `generation` is not a number".to_owned())?;
    let x: u8 = field("x")?
        .parse()
        .map_err(|_| "field `x` is not a number".to_owned())?;
    let slot = Slot::from_x(x).ok_or_else(|| format!("field `x` is {x}, expected 1, 2 or 3"))?;
    let public_key: [u8; 32] = B64
        .decode(field("public-key")?)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or("field `public-key` is not 32 base64url bytes")?;
    let y_b64 = field("y")?;
    let mut y = Zeroizing::new([0u8; SEED_LEN]);
    match B64.decode_slice(y_b64, &mut y[..]) {
        Ok(SEED_LEN) => {}
        _ => return Err("field `y` is not 32 base64url bytes".into()),
    }
    if lines.next().is_some() {
        return Err("unexpected lines after `y`".into());
    }
    if thumbprint(&public_key) != kid {
        return Err("field `kid` is not the thumbprint of `public-key`".into());
    }
    Ok(KeyShare {
        deployment,
        kid,
        generation,
        slot,
        public_key,
        y: ShareY::from_array(y),
    })
}

/// Checksum of a database share row, over its identity and bytes, so that
/// an accidental change to the row reads as corruption.
pub fn db_checksum(kid: &str, generation: u32, x: u8, y: &ShareY) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"splitsign-db-share 1\0");
    h.update(kid.as_bytes());
    h.update(b"\0");
    h.update(generation.to_be_bytes());
    h.update([x]);
    h.update(y.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::shamir::tests::shares_of;
    use crate::keys::shamir::{RecoverError, recover};
    use proptest::prelude::*;

    /// The three shares of `seed`, named by the key's thumbprint as the
    /// stores name them.
    fn named_shares_of(seed: &[u8; 32]) -> (KeyShare, KeyShare, KeyShare) {
        let (mut f, mut d, mut r) = shares_of(seed);
        let kid = thumbprint(&f.public_key);
        for s in [&mut f, &mut d, &mut r] {
            s.kid = kid.clone();
        }
        (f, d, r)
    }

    proptest! {
        #[test]
        fn file_format_round_trips(seed in any::<[u8; 32]>(), generation in 1u32..1000) {
            let (mut f, _, _) = named_shares_of(&seed);
            f.generation = generation;
            let back = decode_file(&encode_file(&f)).unwrap();
            prop_assert_eq!(back.deployment, f.deployment);
            prop_assert_eq!(back.kid, f.kid);
            prop_assert_eq!(back.generation, generation);
            prop_assert_eq!(back.slot, Slot::File);
            prop_assert_eq!(back.y.as_bytes(), f.y.as_bytes());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_file(&bytes);
        }
    }

    #[test]
    fn format_1_files_still_read_without_a_deployment() {
        let (f, _, _) = named_shares_of(&[4u8; 32]);
        let v2 = String::from_utf8(encode_file(&f).to_vec()).unwrap();
        // Format 1: no deployment line, its own magic, its own checksum.
        let body: String = v2
            .lines()
            .filter(|l| !l.starts_with("deployment ") && !l.starts_with("sha256 "))
            .map(|l| format!("{}\n", l.replace(MAGIC, MAGIC_V1)))
            .collect();
        let v1 = format!(
            "{body}sha256 {}\n",
            B64.encode(Sha256::digest(body.as_bytes()))
        );
        let back = decode_file(v1.as_bytes()).unwrap();
        assert_eq!(back.deployment, None);
        assert_eq!(back.y.as_bytes(), f.y.as_bytes());
        // A format-2 file without its deployment line is corrupt, not format 1.
        let bad: String = v2
            .lines()
            .filter(|l| !l.starts_with("deployment ") && !l.starts_with("sha256 "))
            .map(|l| format!("{l}\n"))
            .collect();
        let bad = format!(
            "{bad}sha256 {}\n",
            B64.encode(Sha256::digest(bad.as_bytes()))
        );
        assert!(
            decode_file(bad.as_bytes())
                .unwrap_err()
                .contains("deployment")
        );
    }

    #[test]
    fn truncation_and_flips_read_as_corrupt() {
        let (f, _, _) = named_shares_of(&[3u8; 32]);
        let bytes = encode_file(&f);
        for n in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode_file(&bytes[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            assert!(decode_file(&b).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn thumbprint_matches_rfc8037_appendix_a3() {
        // RFC 8037 A.3: the thumbprint of the A.2 public key.
        let x = B64
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        let pk: [u8; 32] = x.try_into().unwrap();
        assert_eq!(
            thumbprint(&pk),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn same_store_twice_is_refused_not_interpolated() {
        let (f, _, _) = named_shares_of(&[1u8; 32]);
        let f2 = KeyShare {
            y: ShareY::from_slice(f.y.as_bytes()).unwrap(),
            kid: f.kid.clone(),
            ..f
        };
        let f = decode_file(&encode_file(&f2)).unwrap();
        assert_eq!(recover(&f, &f2).unwrap_err(), RecoverError::SameSlot(1));
    }
}
