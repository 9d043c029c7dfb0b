//! `shamir` splits a key's 32 secret bytes (the Ed25519 seed or the P-256
//! scalar, alike) into Shamir shares and rebuilds it. It is pure: no I/O,
//! no clock. (The share file format is `share_format`.)
//!
//! `sharks` 0.5 has known traps (RUSTSEC-2024-0398 and its API): shares carry
//! no integrity, x = 0 makes `recover` return that share's y, duplicate
//! shares give a wrong secret without error, and each new split of the same
//! secret leaks a little. So the threshold is fixed at 2, every share's x is
//! pinned to its store (1 file, 2 database, 3 offline recovery), exactly two
//! distinct shares are passed to `recover`, and the rebuilt key must derive
//! the public key stored beside **both** shares, or nothing is returned.
//! Both shares must name the same algorithm, and a rebuilt P-256 scalar
//! outside [1, n−1] is refused, never reduced.

use sharks::{Share, Sharks};
use zeroize::Zeroizing;

/// Threshold of every split. Never configurable: 1 would store the key in clear.
const THRESHOLD: u8 = 2;
pub const SEED_LEN: usize = crate::keys::algorithm::SECRET_LEN;

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

    pub(crate) fn from_array(y: Zeroizing<[u8; SEED_LEN]>) -> ShareY {
        ShareY(y)
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
    /// The key's `alg` label as the share's store records it. `None` for a
    /// file of format 1 or 2, written when every key was Ed25519 (its
    /// `public_key` is one).
    pub alg: Option<crate::config::AlgLabel>,
    pub public_key: crate::keys::PublicKey,
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
    #[error("the shares record different algorithms ({0} and {1})")]
    DifferentAlgorithms(&'static str, &'static str),
    #[error("the shares record different public keys")]
    PublicKeysDiffer,
    #[error("the rebuilt secret is not a {0} private key (a P-256 scalar must be in [1, n-1])")]
    NotAKey(&'static str),
    #[error("the rebuilt key does not derive the stored public key")]
    Mismatch,
    #[error("sharks refused the shares: {0}")]
    Sharks(&'static str),
}

/// Rebuild a signing key from two shares of different stores, and require
/// it to derive the public key that both shares record.
pub fn recover(a: &KeyShare, b: &KeyShare) -> Result<crate::keys::SecretKey, RecoverError> {
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
    if let (Some(x), Some(y)) = (a.alg, b.alg)
        && x != y
    {
        return Err(RecoverError::DifferentAlgorithms(x.as_str(), y.as_str()));
    }
    for alg in [a.alg, b.alg].into_iter().flatten() {
        if alg.key_type() != a.public_key.key_type() {
            return Err(RecoverError::DifferentAlgorithms(
                alg.as_str(),
                a.public_key.key_type().name(),
            ));
        }
    }
    if a.public_key != b.public_key {
        return Err(RecoverError::PublicKeysDiffer);
    }
    let key_type = a.public_key.key_type();
    let secret = combine(a.slot, &a.y, b.slot, &b.y)?;
    let key = crate::keys::SecretKey::from_secret(key_type, &secret)
        .ok_or(RecoverError::NotAKey(key_type.name()))?;
    if key.public_key() != a.public_key {
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

/// Interpolate two shares with pinned, distinct, non-zero x into the 32
/// secret bytes. No public-key check: callers use [`recover`].
fn combine(
    xa: Slot,
    ya: &ShareY,
    xb: Slot,
    yb: &ShareY,
) -> Result<zeroize::Zeroizing<[u8; SEED_LEN]>, RecoverError> {
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
    Ok(seed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::config::AlgLabel;
    use crate::keys::{KeyType, SecretKey};

    /// The three shares of the Ed25519 key `seed`, as the stores would hold
    /// them.
    pub(crate) fn shares_of(seed: &[u8; 32]) -> (KeyShare, KeyShare, KeyShare) {
        shares_with(AlgLabel::EdDSA, seed)
    }

    /// The three shares of the `alg` key whose secret is `seed`.
    pub(crate) fn shares_with(alg: AlgLabel, seed: &[u8; 32]) -> (KeyShare, KeyShare, KeyShare) {
        let pk = SecretKey::from_secret(alg.key_type(), seed)
            .expect("a valid secret")
            .public_key();
        // Any name unique to the key does (the stores use its thumbprint).
        let kid: String = pk.bytes().iter().map(|b| format!("{b:02x}")).collect();
        let s = split(seed);
        let mk = |slot, y| KeyShare {
            deployment: Some("0123456789abcdef0123456789abcdef".into()),
            kid: kid.clone(),
            generation: 1,
            slot,
            alg: Some(alg),
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
                prop_assert_eq!(*recover(a, b).unwrap().secret(), seed);
            }
        }

        #[test]
        fn any_two_distinct_p256_shares_rebuild_the_scalar(seed in any::<[u8; 32]>()) {
            prop_assume!(SecretKey::from_secret(KeyType::P256, &seed).is_some());
            let (f, d, r) = shares_with(AlgLabel::ES256, &seed);
            for (a, b) in [(&f, &d), (&d, &f), (&f, &r), (&d, &r)] {
                let key = recover(a, b).unwrap();
                prop_assert_eq!(key.key_type(), KeyType::P256);
                prop_assert_eq!(*key.secret(), seed);
            }
        }

        #[test]
        fn a_changed_p256_byte_never_rebuilds(seed in any::<[u8; 32]>(), i in 0usize..32, flip in 1u8..=255) {
            prop_assume!(SecretKey::from_secret(KeyType::P256, &seed).is_some());
            let (f, mut d, _) = shares_with(AlgLabel::ES256, &seed);
            let mut y = *d.y.as_bytes();
            y[i] ^= flip;
            d.y = ShareY::from_slice(&y).unwrap();
            // A scalar out of range, or one that derives another point.
            prop_assert!(matches!(
                recover(&f, &d).unwrap_err(),
                RecoverError::Mismatch | RecoverError::NotAKey(_)
            ));
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


    }

    #[test]
    fn a_share_never_equals_the_seed() {
        let seed = [7u8; 32];
        let (f, d, _) = shares_of(&seed);
        assert_ne!(f.y.as_bytes(), &seed);
        assert_ne!(d.y.as_bytes(), &seed);
    }

    #[test]
    fn a_share_of_one_algorithm_never_combines_as_the_other() {
        let (f, d, _) = shares_with(AlgLabel::ES256, &[5u8; 32]);
        // The same bytes labelled as the other algorithm: refused before
        // any interpolation.
        let relabelled = KeyShare {
            alg: Some(AlgLabel::EdDSA),
            y: ShareY::from_slice(d.y.as_bytes()).unwrap(),
            kid: d.kid.clone(),
            deployment: d.deployment.clone(),
            ..d
        };
        assert!(matches!(
            recover(&f, &relabelled),
            Err(RecoverError::DifferentAlgorithms("ES256", "EdDSA"))
        ));
        // Both relabelled: the label does not name the public key's type.
        let f2 = KeyShare {
            alg: Some(AlgLabel::EdDSA),
            ..f
        };
        assert!(matches!(
            recover(&f2, &relabelled),
            Err(RecoverError::DifferentAlgorithms("EdDSA", "P-256"))
        ));
        // An Ed25519 key's shares under the ES256 label: refused alike.
        let (mut f, d, _) = shares_of(&[5u8; 32]);
        f.alg = Some(AlgLabel::ES256);
        assert!(matches!(
            recover(&f, &d),
            Err(RecoverError::DifferentAlgorithms(..))
        ));
    }

    #[test]
    fn a_p256_scalar_of_zero_is_refused_not_used() {
        // Shares of an all-zero secret (not a P-256 key) under a real key's
        // public key: the rebuilt bytes are refused as no key at all.
        let (f, d, _) = shares_with(AlgLabel::ES256, &[5u8; 32]);
        let zero = split(&[0u8; 32]);
        let f = KeyShare { y: zero.file, ..f };
        let d = KeyShare {
            y: zero.database,
            ..d
        };
        assert_eq!(recover(&f, &d).unwrap_err(), RecoverError::NotAKey("P-256"));
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
}
