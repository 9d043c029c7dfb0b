//! `keys` is everything about keys that needs no store: Shamir splitting
//! with every `sharks` trap guarded (`shamir`), the share file format and
//! key ids (`share_format`), keys in locked memory (`locked`), the set of
//! keys the daemon holds and publishes (`keyset`), building and checking
//! tokens (`jws`), and the lifecycle as a pure function of timestamps
//! (`schedule`). It never imports a store, the daemon or the CLI.

pub mod jws;
pub mod keyset;
pub mod locked;
pub mod schedule;
pub mod shamir;
pub mod share_format;

pub use schedule::{State, state};

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
    pub public_key: [u8; 32],
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
