//! `share_format` writes and reads a share as a file (format 3), and names
//! keys: the RFC 7638 thumbprint that is every key's `kid`, the deployment
//! id, the checksum of a database share row. Pure: bytes in, bytes out.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::shamir::{KeyShare, SEED_LEN, ShareY, Slot};
use crate::config::AlgLabel;
use crate::keys::{KeyType, PublicKey};

/// RFC 7638 JWK thumbprint of a public key: base64url(SHA-256 of
/// `{"crv":"Ed25519","kty":"OKP","x":"…"}` (RFC 8037) or
/// `{"crv":"P-256","kty":"EC","x":"…","y":"…"}`).
pub fn thumbprint(public_key: &PublicKey) -> String {
    public_key.thumbprint()
}

/// A kid as this daemon writes it: 43 base64url characters (a SHA-256).
pub fn is_valid_kid(kid: &str) -> bool {
    kid.len() == 43
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ---------------------------------------------------------------------------
// Share file format (version 3)
//
//   splitsign-share 3
//   deployment <32 lowercase hex digits>
//   kid <43 base64url chars>
//   generation <decimal>
//   x <1|2|3>
//   alg <EdDSA|Ed25519|ES256>
//   public-key <base64url of 32 bytes (Ed25519) or 65 (P-256, SEC1 04‖x‖y)>
//   y <base64url of 32 bytes>
//
// or, for a file share sealed to the host's TPM (`share_seal = "tpm2"`),
// in place of the `y` line:
//
//   seal tpm2 <base64url of the Name of the TPM's storage root key>
//   sealed-y <base64url of the sealed object (TPM2B_PUBLIC, TPM2B_PRIVATE)>
//   sha256 <base64url of SHA-256 over every byte above this line>
//
// The checksum makes a truncated or bit-flipped file read as corrupt rather
// than as a different share. It is not a MAC: the public-key check after
// recovery is what stops a forged share. The deployment line ties the file
// to one pair of stores, so a share file of another deployment, or a
// database of another deployment beside this share directory, is named as
// such instead of being taken for an orphan. The alg line ties the share to
// one algorithm: a share of an ES256 key is never combined as an Ed25519
// one, nor the other way round. Version 2 is the same without the alg line,
// version 1 also without the deployment line; both were written when every
// key was Ed25519 and are still read as such. A version-1 file is
// rewritten as version 3 once the stores are shown to belong together; a
// version-2 file stays until its key is re-split.
// ---------------------------------------------------------------------------

const MAGIC_V1: &str = "splitsign-share 1";
const MAGIC_V2: &str = "splitsign-share 2";
const MAGIC: &str = "splitsign-share 3";

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
pub const MAX_SHARE_FILE: usize = 4096;

/// The longest sealed object a file may hold (a TPM's sealed data object
/// is a few hundred bytes).
pub const MAX_SEALED_BYTES: usize = 2048;

/// A file share's y bytes as sealed to a TPM: what it is sealed to (the
/// Name of the TPM's storage root key, a digest that differs between
/// TPMs), and the sealed object, which only that TPM unseals.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedY {
    pub to: Vec<u8>,
    pub blob: Vec<u8>,
}

impl SealedY {
    /// What it is sealed to, as the files and `check` print it.
    pub fn describe_to(&self) -> String {
        describe_srk(&self.to)
    }
}

/// A TPM's storage root key Name as the files, `check` and the logs print
/// it: `tpm2 <base64url>`.
pub fn describe_srk(name: &[u8]) -> String {
    format!("tpm2 {}", B64.encode(name))
}

impl std::fmt::Debug for SealedY {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SealedY({}, {} bytes)",
            self.describe_to(),
            self.blob.len()
        )
    }
}

/// Serialize a share (format 3; the share must carry its deployment and
/// its alg). The returned buffer is wiped on drop.
pub fn encode_file(share: &KeyShare) -> Zeroizing<Vec<u8>> {
    encode(share, None)
}

/// Serialize a file share whose y bytes are `sealed` (format 3, sealed):
/// the file holds no y, only the sealed object.
pub fn encode_sealed_file(share: &KeyShare, sealed: &SealedY) -> Zeroizing<Vec<u8>> {
    encode(share, Some(sealed))
}

fn encode(share: &KeyShare, sealed: Option<&SealedY>) -> Zeroizing<Vec<u8>> {
    let deployment = share
        .deployment
        .as_deref()
        .expect("a share is written with its deployment id");
    debug_assert!(is_valid_deployment(deployment));
    let alg = share.alg.expect("a share is written with its alg label");
    debug_assert_eq!(alg.key_type(), share.public_key.key_type());
    let mut body = Zeroizing::new(String::with_capacity(360));
    body.push_str(MAGIC);
    body.push('\n');
    body.push_str("deployment ");
    body.push_str(deployment);
    body.push('\n');
    body.push_str(&format!(
        "kid {}\ngeneration {}\nx {}\nalg {}\npublic-key {}\n",
        share.kid,
        share.generation,
        share.slot.x(),
        alg.as_str(),
        B64.encode(share.public_key.bytes())
    ));
    match sealed {
        None => {
            body.push_str("y ");
            B64.encode_string(share.y.as_bytes(), &mut body);
        }
        Some(s) => {
            body.push_str("seal ");
            body.push_str(&s.describe_to());
            body.push_str("\nsealed-y ");
            B64.encode_string(&s.blob, &mut body);
        }
    }
    body.push('\n');
    let sum = B64.encode(Sha256::digest(body.as_bytes()));
    body.push_str("sha256 ");
    body.push_str(&sum);
    body.push('\n');
    Zeroizing::new(body.as_bytes().to_vec())
}

/// Parse a share file's bytes, which must hold its y in clear. The error
/// says what is wrong, never the bytes.
pub fn decode_file(bytes: &[u8]) -> Result<KeyShare, String> {
    decode_file_with(bytes, &|_| {
        Err("is sealed to a TPM, and this command does not unseal".into())
    })
    .map(|(share, _)| share)
}

/// How a sealed y is unsealed: its 32 bytes, or why not.
pub type Unseal<'a> = dyn Fn(&SealedY) -> Result<Zeroizing<[u8; SEED_LEN]>, String> + 'a;

/// Parse a share file's bytes; a sealed y is given to `unseal`, after every
/// other field has been checked. Also returns what it was sealed to, if it
/// was. The error says what is wrong, never the bytes.
pub fn decode_file_with(
    bytes: &[u8],
    unseal: &Unseal<'_>,
) -> Result<(KeyShare, Option<SealedY>), String> {
    let (h, stored) = decode_parts(bytes)?;
    let (y, sealed) = match stored {
        Stored::Plain(y) => (y, None),
        Stored::Sealed(s) => (unseal(&s)?, Some(s)),
    };
    let share = KeyShare {
        deployment: h.deployment,
        kid: h.kid,
        generation: h.generation,
        slot: h.slot,
        alg: h.alg,
        public_key: h.public_key,
        y: ShareY::from_array(y),
    };
    Ok((share, sealed))
}

/// What a share file says about itself, without its y: enough to judge
/// whether it belongs to the stores, without asking a TPM.
#[derive(Debug, Clone)]
pub struct ShareHeader {
    pub deployment: Option<String>,
    pub kid: String,
    pub generation: u32,
    pub slot: Slot,
    pub alg: Option<AlgLabel>,
    pub public_key: PublicKey,
    /// What its y is sealed to, if it is sealed.
    pub sealed: Option<SealedY>,
}

/// Parse a share file's bytes as [`decode_file`] does, but leave its y
/// alone (a sealed one is not unsealed).
pub fn decode_header(bytes: &[u8]) -> Result<ShareHeader, String> {
    let (mut h, stored) = decode_parts(bytes)?;
    if let Stored::Sealed(s) = stored {
        h.sealed = Some(s);
    }
    Ok(h)
}

/// Every check of a share file, and its y as stored.
fn decode_parts(bytes: &[u8]) -> Result<(ShareHeader, Stored), String> {
    let (body, version) = checked_body(bytes)?;
    let mut lines = body.lines().skip(1);
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
    let alg = if version >= 3 {
        let a = field("alg")?;
        Some(AlgLabel::parse(a).ok_or("field `alg` is not EdDSA, Ed25519 or ES256")?)
    } else {
        None
    };
    let key_type = alg.map_or(KeyType::Ed25519, AlgLabel::key_type);
    let public_key = B64
        .decode(field("public-key")?)
        .map_err(|_| "field `public-key` is not base64url".to_owned())
        .and_then(|v| {
            PublicKey::parse(key_type, &v).map_err(|e| format!("field `public-key`: {e}"))
        })?;
    let stored = parse_stored(&mut lines, version, slot)?;
    if lines.next().is_some() {
        return Err("unexpected lines after `y`".into());
    }
    if thumbprint(&public_key) != kid {
        return Err("field `kid` is not the thumbprint of `public-key`".into());
    }
    let header = ShareHeader {
        deployment,
        kid,
        generation,
        slot,
        alg,
        public_key,
        sealed: None,
    };
    Ok((header, stored))
}

/// The body of a share file (every line above its checksum line), once
/// its size, encoding and checksum are right, and its format version.
fn checked_body(bytes: &[u8]) -> Result<(&str, u32), String> {
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
        Some(MAGIC) => 3,
        Some(MAGIC_V2) => 2,
        Some(MAGIC_V1) => 1,
        _ => return Err(format!("not a share file (first line must be {MAGIC:?})")),
    };
    Ok((body, version))
}

/// The y as stored, from the line after `public-key`: `y`, or (format 3,
/// a file share) `seal` and `sealed-y`.
fn parse_stored<'a>(
    lines: &mut impl Iterator<Item = &'a str>,
    version: u32,
    slot: Slot,
) -> Result<Stored, String> {
    match lines.next() {
        Some(l) if l.starts_with("y ") => Ok(Stored::Plain(parse_y(&l[2..])?)),
        Some(l) if version >= 3 && l.starts_with("seal ") => {
            let to = parse_seal(&l[5..])?;
            let blob = lines
                .next()
                .and_then(|l| l.strip_prefix("sealed-y "))
                .ok_or("missing or misplaced field `sealed-y`")?;
            let blob = B64
                .decode(blob)
                .ok()
                .filter(|b| !b.is_empty() && b.len() <= MAX_SEALED_BYTES)
                .ok_or_else(|| {
                    format!("field `sealed-y` is not 1 to {MAX_SEALED_BYTES} base64url bytes")
                })?;
            if slot != Slot::File {
                return Err("only a file share (x = 1) may be sealed".into());
            }
            Ok(Stored::Sealed(SealedY { to, blob }))
        }
        _ => Err("missing or misplaced field `y`".into()),
    }
}

/// A file's y as stored: in clear, or sealed.
enum Stored {
    Plain(Zeroizing<[u8; SEED_LEN]>),
    Sealed(SealedY),
}

fn parse_y(text: &str) -> Result<Zeroizing<[u8; SEED_LEN]>, String> {
    let mut y = Zeroizing::new([0u8; SEED_LEN]);
    match B64.decode_slice(text, &mut y[..]) {
        Ok(SEED_LEN) => Ok(y),
        _ => Err("field `y` is not 32 base64url bytes".into()),
    }
}

/// `tpm2 <Name>`: the only sealing there is, and the Name of the storage
/// root key (a TPM2B_NAME: at most 66 bytes).
fn parse_seal(text: &str) -> Result<Vec<u8>, String> {
    let name = text
        .strip_prefix("tpm2 ")
        .ok_or("field `seal` does not name tpm2")?;
    B64.decode(name)
        .ok()
        .filter(|n| !n.is_empty() && n.len() <= 66)
        .ok_or_else(|| "field `seal` does not hold a TPM Name".to_owned())
}

/// The checksum of `share` as a database row at x = 2.
pub fn db_share_checksum(share: &KeyShare) -> [u8; 32] {
    // A share without a recorded label is an Ed25519 key's (format 1 or
    // 2), and every Ed25519 label has the same checksum.
    let alg = share.alg.unwrap_or(AlgLabel::EdDSA);
    db_checksum(
        &share.kid,
        share.generation,
        Slot::Database.x(),
        alg,
        &share.y,
    )
}

/// Checksum of a database share row, over its identity, its key's alg and
/// its bytes, so that an accidental change to the row reads as corruption
/// and a row is never read as a share of another algorithm. The rows of
/// Ed25519 keys keep the checksum they had before ES256 (version 1); those
/// of ES256 keys name their label (version 2).
pub fn db_checksum(kid: &str, generation: u32, x: u8, alg: AlgLabel, y: &ShareY) -> [u8; 32] {
    let mut h = Sha256::new();
    match alg.key_type() {
        KeyType::Ed25519 => h.update(b"splitsign-db-share 1\0"),
        KeyType::P256 => {
            h.update(b"splitsign-db-share 2\0");
            h.update(alg.as_str().as_bytes());
            h.update(b"\0");
        }
    }
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
    use crate::keys::shamir::tests::shares_with;
    use crate::keys::shamir::{RecoverError, recover};
    use proptest::prelude::*;

    /// The three shares of `seed`, named by the key's thumbprint as the
    /// stores name them.
    fn named_shares_of(seed: &[u8; 32]) -> (KeyShare, KeyShare, KeyShare) {
        named_shares_with(AlgLabel::EdDSA, seed)
    }

    fn named_shares_with(alg: AlgLabel, seed: &[u8; 32]) -> (KeyShare, KeyShare, KeyShare) {
        let (mut f, mut d, mut r) = shares_with(alg, seed);
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
            prop_assert_eq!(back.alg, Some(AlgLabel::EdDSA));
        }

        #[test]
        fn es256_file_format_round_trips(seed in any::<[u8; 32]>()) {
            prop_assume!(crate::keys::SecretKey::from_secret(KeyType::P256, &seed).is_some());
            let (f, d, _) = named_shares_with(AlgLabel::ES256, &seed);
            let back = decode_file(&encode_file(&f)).unwrap();
            prop_assert_eq!(back.alg, Some(AlgLabel::ES256));
            prop_assert_eq!(back.public_key, f.public_key);
            prop_assert_eq!(*recover(&back, &d).unwrap().secret(), seed);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_file(&bytes);
        }
    }

    /// `file` rewritten without the lines `drop` starts, under `magic`,
    /// with its checksum made again.
    fn rewrite(file: &str, drop: &[&str], magic: &str) -> String {
        let body: String = file
            .lines()
            .filter(|l| !l.starts_with("sha256 ") && !drop.iter().any(|d| l.starts_with(d)))
            .map(|l| format!("{}\n", l.replace(MAGIC, magic)))
            .collect();
        format!(
            "{body}sha256 {}\n",
            B64.encode(Sha256::digest(body.as_bytes()))
        )
    }

    #[test]
    fn a_sealed_file_holds_no_y_and_reads_only_through_its_unsealer() {
        let (f, d, _) = named_shares_of(&[8u8; 32]);
        let sealed = SealedY {
            to: vec![0, 11, 1, 2, 3],
            blob: b"an opaque sealed object".to_vec(),
        };
        let bytes = encode_sealed_file(&f, &sealed);
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(!text.contains("\ny "), "{text}");
        assert!(!text.contains(&B64.encode(f.y.as_bytes())));
        assert!(text.contains("\nseal tpm2 AAsBAgM\nsealed-y "), "{text}");
        // Without an unsealer: refused, saying why.
        assert!(decode_file(&bytes).unwrap_err().contains("sealed to a TPM"));
        // The unsealer gets exactly what was sealed, after the other checks.
        let y = *f.y.as_bytes();
        let (back, to) = decode_file_with(&bytes, &|s: &SealedY| {
            assert_eq!(s, &sealed);
            Ok(Zeroizing::new(y))
        })
        .unwrap();
        assert_eq!(to, Some(sealed.clone()));
        assert!(recover(&back, &d).is_ok());
        // Its refusal is the file's error.
        let e = decode_file_with(&bytes, &|_: &SealedY| Err("sealed to another TPM".into()))
            .unwrap_err();
        assert_eq!(e, "sealed to another TPM");
        // A damaged file is refused before the TPM is asked.
        let mut bad = bytes.to_vec();
        let at = bad.len() - 60;
        bad[at] ^= 1;
        assert!(decode_file_with(&bad, &|_: &SealedY| panic!("not asked")).is_err());
        // Only a file share is ever sealed.
        let (_, _, r) = named_shares_of(&[8u8; 32]);
        let e = decode_file_with(&encode_sealed_file(&r, &sealed), &|_: &SealedY| {
            panic!("not asked")
        })
        .unwrap_err();
        assert!(e.contains("only a file share"), "{e}");
    }

    #[test]
    fn format_2_files_still_read_as_ed25519() {
        let (f, d, _) = named_shares_of(&[4u8; 32]);
        let v3 = String::from_utf8(encode_file(&f).to_vec()).unwrap();
        let v2 = rewrite(&v3, &["alg "], MAGIC_V2);
        let back = decode_file(v2.as_bytes()).unwrap();
        assert_eq!(back.alg, None);
        assert_eq!(back.public_key, f.public_key);
        assert!(recover(&back, &d).is_ok());
        // A format-3 file without its alg line is corrupt, not format 2.
        let bad = rewrite(&v3, &["alg "], MAGIC);
        assert!(decode_file(bad.as_bytes()).unwrap_err().contains("alg"));
    }

    #[test]
    fn an_es256_share_relabelled_as_eddsa_is_refused() {
        let (f, _, _) = named_shares_with(AlgLabel::ES256, &[4u8; 32]);
        let v3 = String::from_utf8(encode_file(&f).to_vec()).unwrap();
        assert!(v3.contains("\nalg ES256\n"));
        let relabelled = rewrite(&v3.replace("alg ES256", "alg EdDSA"), &[], MAGIC);
        assert!(
            decode_file(relabelled.as_bytes())
                .unwrap_err()
                .contains("public-key")
        );
        // As a format-2 file (Ed25519 by definition): refused alike.
        let v2 = rewrite(&v3, &["alg "], MAGIC_V2);
        assert!(
            decode_file(v2.as_bytes())
                .unwrap_err()
                .contains("public-key")
        );
    }

    #[test]
    fn format_1_files_still_read_without_a_deployment() {
        let (f, _, _) = named_shares_of(&[4u8; 32]);
        let v2 = String::from_utf8(encode_file(&f).to_vec()).unwrap();
        // Format 1: no deployment or alg line, its own magic, checksum.
        let body: String = v2
            .lines()
            .filter(|l| {
                !l.starts_with("deployment ") && !l.starts_with("alg ") && !l.starts_with("sha256 ")
            })
            .map(|l| format!("{}\n", l.replace(MAGIC, MAGIC_V1)))
            .collect();
        let v1 = format!(
            "{body}sha256 {}\n",
            B64.encode(Sha256::digest(body.as_bytes()))
        );
        let back = decode_file(v1.as_bytes()).unwrap();
        assert_eq!(back.deployment, None);
        assert_eq!(back.y.as_bytes(), f.y.as_bytes());
        // A format-3 file without its deployment line is corrupt, not format 1.
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
