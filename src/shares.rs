//! `shares` splits a key seed into Shamir shares and rebuilds it, and owns
//! the share file format. It is pure: no I/O, no clock.
//!
//! `sharks` 0.5 has known traps (RUSTSEC-2024-0398 and its API): shares carry
//! no integrity, x = 0 makes `recover` return that share's y, duplicate
//! shares give a wrong secret without error, and each new split of the same
//! secret leaks a little. So the threshold is fixed at 2, every share's x is
//! pinned to its store (1 file, 2 database, 3 offline recovery), exactly two
//! distinct shares are passed to `recover`, and the rebuilt key must derive
//! the public key stored beside **both** shares, or nothing is returned.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use sharks::{Share, Sharks};
use zeroize::Zeroizing;

/// Threshold of every split. Never configurable: 1 would store the key in clear.
const THRESHOLD: u8 = 2;
pub const SEED_LEN: usize = 32;

/// Which store a share belongs to; its value is the share's x coordinate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    File = 1,
    Database = 2,
    Recovery = 3,
}

impl Slot {
    pub fn x(self) -> u8 {
        self as u8
    }
    pub fn from_x(x: u8) -> Option<Slot> {
        match x {
            1 => Some(Slot::File),
            2 => Some(Slot::Database),
            3 => Some(Slot::Recovery),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Slot::File => "file share",
            Slot::Database => "database share",
            Slot::Recovery => "recovery share",
        }
    }
}

/// One share's y bytes. Wiped on drop; `Debug` prints no bytes.
pub struct ShareY(Zeroizing<[u8; SEED_LEN]>);

impl ShareY {
    pub fn from_slice(bytes: &[u8]) -> Option<ShareY> {
        let mut y = Zeroizing::new([0u8; SEED_LEN]);
        if bytes.len() != SEED_LEN {
            return None;
        }
        y.copy_from_slice(bytes);
        Some(ShareY(y))
    }
    pub fn as_bytes(&self) -> &[u8; SEED_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for ShareY {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShareY([redacted])")
    }
}

/// A share with the identity of the key it belongs to.
#[derive(Debug)]
pub struct KeyShare {
    /// The deployment the share belongs to (the id both stores record).
    /// `None` for a file of format 1, written before deployments had ids.
    pub deployment: Option<String>,
    pub kid: String,
    pub generation: u32,
    pub slot: Slot,
    pub public_key: [u8; 32],
    pub y: ShareY,
}

/// The three shares of one split.
pub struct Split {
    pub file: ShareY,
    pub database: ShareY,
    pub recovery: ShareY,
}

/// Split a 32-byte seed at threshold 2 into the file, database and recovery
/// shares (x = 1, 2, 3).
pub fn split(seed: &[u8; SEED_LEN]) -> Split {
    let dealer = Sharks(THRESHOLD).dealer(seed);
    let mut out: Vec<ShareY> = Vec::with_capacity(3);
    for share in dealer.take(3) {
        // Clear intermediates: `Vec::from(&Share)` is a plain Vec.
        let bytes = Zeroizing::new(Vec::from(&share));
        let y =
            ShareY::from_slice(&bytes[1..]).expect("sharks yields 32-byte y for a 32-byte seed");
        out.push(y);
    }
    let recovery = out.pop().expect("three shares");
    let database = out.pop().expect("three shares");
    let file = out.pop().expect("three shares");
    Split {
        file,
        database,
        recovery,
    }
}

/// Why two shares did not give a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    #[error("the two shares come from the same store (x = {0})")]
    SameSlot(u8),
    #[error("the shares belong to different keys ({0} and {1})")]
    DifferentKeys(String, String),
    #[error("the shares belong to different share generations ({0} and {1})")]
    DifferentGenerations(u32, u32),
    #[error("the shares record different public keys")]
    PublicKeysDiffer,
    #[error("the rebuilt key does not derive the stored public key")]
    Mismatch,
    #[error("sharks refused the shares: {0}")]
    Sharks(&'static str),
}

/// Rebuild a signing key from two shares of different stores, and require
/// it to derive the public key that both shares record.
pub fn recover(a: &KeyShare, b: &KeyShare) -> Result<SigningKey, RecoverError> {
    if a.slot == b.slot {
        return Err(RecoverError::SameSlot(a.slot.x()));
    }
    if a.kid != b.kid {
        return Err(RecoverError::DifferentKeys(a.kid.clone(), b.kid.clone()));
    }
    if a.generation != b.generation {
        return Err(RecoverError::DifferentGenerations(
            a.generation,
            b.generation,
        ));
    }
    if a.public_key != b.public_key {
        return Err(RecoverError::PublicKeysDiffer);
    }
    let key = combine(a.slot, &a.y, b.slot, &b.y)?;
    if key.verifying_key().to_bytes() != a.public_key {
        return Err(RecoverError::Mismatch);
    }
    Ok(key)
}

/// The share of the same split at `target`'s x, computed from two shares
/// whose key was already checked with [`recover`] (used to rebuild a lost
/// store's share from the other store and the offline recovery share, so
/// the recovery share stays valid).
///
/// In GF(2^8) addition is XOR, so f(x XOR t) is a polynomial of the same
/// degree as f; interpolating the shifted points at 0 gives f(t). That lets
/// `sharks` itself do the field arithmetic.
pub fn derive(a: &KeyShare, b: &KeyShare, target: Slot) -> Result<ShareY, RecoverError> {
    if a.slot == b.slot {
        return Err(RecoverError::SameSlot(a.slot.x()));
    }
    let t = target.x();
    let shifted = |s: &KeyShare| {
        let mut v = Zeroizing::new(Vec::with_capacity(SEED_LEN + 1));
        v.push(s.slot.x() ^ t);
        v.extend_from_slice(s.y.as_bytes());
        v
    };
    let (ba, bb) = (shifted(a), shifted(b));
    if ba[0] == 0 || bb[0] == 0 {
        // The target is one of the inputs: nothing to derive.
        return Err(RecoverError::SameSlot(t));
    }
    let sa = Share::try_from(&ba[..]).map_err(RecoverError::Sharks)?;
    let sb = Share::try_from(&bb[..]).map_err(RecoverError::Sharks)?;
    let y = Zeroizing::new(
        Sharks(THRESHOLD)
            .recover([&sa, &sb])
            .map_err(RecoverError::Sharks)?,
    );
    ShareY::from_slice(&y).ok_or(RecoverError::Sharks("derived share has the wrong length"))
}

/// Interpolate two shares with pinned, distinct, non-zero x. No public-key
/// check: callers use [`recover`].
fn combine(xa: Slot, ya: &ShareY, xb: Slot, yb: &ShareY) -> Result<SigningKey, RecoverError> {
    let mut ba = Zeroizing::new(Vec::with_capacity(SEED_LEN + 1));
    ba.push(xa.x());
    ba.extend_from_slice(ya.as_bytes());
    let mut bb = Zeroizing::new(Vec::with_capacity(SEED_LEN + 1));
    bb.push(xb.x());
    bb.extend_from_slice(yb.as_bytes());
    let sa = Share::try_from(&ba[..]).map_err(RecoverError::Sharks)?;
    let sb = Share::try_from(&bb[..]).map_err(RecoverError::Sharks)?;
    let secret = Zeroizing::new(
        Sharks(THRESHOLD)
            .recover([&sa, &sb])
            .map_err(RecoverError::Sharks)?,
    );
    let mut seed = Zeroizing::new([0u8; SEED_LEN]);
    if secret.len() != SEED_LEN {
        return Err(RecoverError::Sharks(
            "recovered secret has the wrong length",
        ));
    }
    seed.copy_from_slice(&secret);
    Ok(SigningKey::from_bytes(&seed))
}

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
        y: ShareY(y),
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
    use proptest::prelude::*;

    fn shares_of(seed: &[u8; 32]) -> (KeyShare, KeyShare, KeyShare) {
        let pk = SigningKey::from_bytes(seed).verifying_key().to_bytes();
        let kid = thumbprint(&pk);
        let s = split(seed);
        let mk = |slot, y| KeyShare {
            deployment: Some("0123456789abcdef0123456789abcdef".into()),
            kid: kid.clone(),
            generation: 1,
            slot,
            public_key: pk,
            y,
        };
        (
            mk(Slot::File, s.file),
            mk(Slot::Database, s.database),
            mk(Slot::Recovery, s.recovery),
        )
    }

    proptest! {
        #[test]
        fn any_two_distinct_shares_rebuild_the_key(seed in any::<[u8; 32]>()) {
            let (f, d, r) = shares_of(&seed);
            for (a, b) in [(&f, &d), (&d, &f), (&f, &r), (&d, &r)] {
                prop_assert_eq!(recover(a, b).unwrap().to_bytes(), seed);
            }
        }

        #[test]
        fn a_changed_byte_never_rebuilds(seed in any::<[u8; 32]>(), i in 0usize..32, flip in 1u8..=255) {
            let (f, mut d, _) = shares_of(&seed);
            let mut y = *d.y.as_bytes();
            y[i] ^= flip;
            d.y = ShareY::from_slice(&y).unwrap();
            prop_assert_eq!(recover(&f, &d).unwrap_err(), RecoverError::Mismatch);
        }

        #[test]
        fn a_lost_share_is_derived_exactly(seed in any::<[u8; 32]>()) {
            let (f, d, r) = shares_of(&seed);
            prop_assert_eq!(*derive(&f, &r, Slot::Database).unwrap().as_bytes(), *d.y.as_bytes());
            prop_assert_eq!(*derive(&d, &r, Slot::File).unwrap().as_bytes(), *f.y.as_bytes());
            prop_assert_eq!(*derive(&f, &d, Slot::Recovery).unwrap().as_bytes(), *r.y.as_bytes());
        }

        #[test]
        fn file_format_round_trips(seed in any::<[u8; 32]>(), generation in 1u32..1000) {
            let (mut f, _, _) = shares_of(&seed);
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
    fn a_share_never_equals_the_seed() {
        let seed = [7u8; 32];
        let (f, d, _) = shares_of(&seed);
        assert_ne!(f.y.as_bytes(), &seed);
        assert_ne!(d.y.as_bytes(), &seed);
    }

    #[test]
    fn same_store_twice_is_refused_not_interpolated() {
        let (f, _, _) = shares_of(&[1u8; 32]);
        let f2 = KeyShare {
            y: ShareY::from_slice(f.y.as_bytes()).unwrap(),
            kid: f.kid.clone(),
            ..f
        };
        let f = decode_file(&encode_file(&f2)).unwrap();
        assert_eq!(recover(&f, &f2).unwrap_err(), RecoverError::SameSlot(1));
    }

    #[test]
    fn another_keys_share_is_refused() {
        let (f, _, _) = shares_of(&[1u8; 32]);
        let (_, d, _) = shares_of(&[2u8; 32]);
        assert!(matches!(
            recover(&f, &d),
            Err(RecoverError::DifferentKeys(..))
        ));
    }

    #[test]
    fn truncation_and_flips_read_as_corrupt() {
        let (f, _, _) = shares_of(&[3u8; 32]);
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
    fn format_1_files_still_read_without_a_deployment() {
        let (f, _, _) = shares_of(&[4u8; 32]);
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
}
