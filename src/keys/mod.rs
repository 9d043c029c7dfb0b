//! `keys` is everything about keys that needs no store: the two key types
//! and what differs between them (`algorithm`), Shamir splitting
//! with every `sharks` trap guarded (`shamir`), the share file format and
//! key ids (`share_format`), keys in locked memory (`locked`), the set of
//! keys the daemon holds and publishes (`keyring`), building and checking
//! tokens (`jws`), and the lifecycle as a pure function of timestamps
//! (`schedule`). It never imports a store, the daemon or the CLI.

pub mod algorithm;
pub mod jws;
pub mod keyring;
pub mod locked;
pub mod schedule;
pub mod shamir;
pub mod share_format;

pub use algorithm::{KeyType, PublicKey, SecretKey, Verifier};
pub use schedule::{State, state};

/// What a cluster node signs with a key of its own to prove that it holds
/// it: the key row's node and kid. Another node cannot publish a key row
/// of a public key it does not hold (one seen in a JWKS), nor a node's key
/// under another node's name.
fn possession_message(node: &str, kid: &str) -> Vec<u8> {
    let mut m = b"splitsign key row 1\0".to_vec();
    m.extend_from_slice(node.as_bytes());
    m.push(0);
    m.extend_from_slice(kid.as_bytes());
    m
}

/// The proof that `node` holds `key`, whose kid is `kid`: a signature by
/// the key itself, of its own algorithm.
pub fn prove_possession(key: &SecretKey, node: &str, kid: &str) -> [u8; 64] {
    key.sign(&possession_message(node, kid))
}

/// Whether `proof` shows that `node` holds the key `public_key` (kid
/// `kid`).
pub fn check_possession(public_key: &PublicKey, node: &str, kid: &str, proof: &[u8]) -> bool {
    let (Some(key), Ok(sig)) = (public_key.verifier(), <&[u8; 64]>::try_from(proof)) else {
        return false;
    };
    key.verify(&possession_message(node, kid), sig)
}

use crate::config::AlgLabel;

/// Where a key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Generated,
    Imported,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Generated => "generated",
            Origin::Imported => "imported",
        }
    }
}

/// One key as the stores record it: its public key, where it came from,
/// its lifecycle timestamps (stored once, never recomputed), its share
/// generation and its `alg` label. Never its private part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kid: String,
    /// Of the type `alg` names (checked when the row is read).
    pub public_key: PublicKey,
    pub origin: Origin,
    pub created_at: i64,
    pub activate_at: i64,
    pub deactivate_at: i64,
    pub retire_at: i64,
    pub share_generation: u32,
    /// A re-split in progress (its file share may exist), see
    /// `Database::begin_reshare`.
    pub pending_generation: Option<u32>,
    pub verified: bool,
    /// The `alg` label the key signs with, fixed when it was created.
    pub alg: AlgLabel,
}
