//! `lifecycle` runs the sequences that touch both stores: creating a key,
//! rotating, re-splitting, recovering a lost share, reconciling the stores
//! at start, and unsealing keys into memory. It also decides, as a pure
//! function of the stored timestamps and the time, what is due next.
//!
//! Creating a key (DESIGN, "Key lifecycle"): seed in memory → split → file
//! share written durably → one transaction inserts the key row (unverified)
//! and the database share → both shares are read back and must rebuild the
//! public key → one transaction marks the row verified and, for a rotation,
//! ends the old key's signing period. That last commit is the only moment
//! the set of keys changes; a crash before it leaves an unverified row and
//! perhaps a file, which the next start discards. Activation needs no write
//! at all: a key is active because of its timestamps.
//!
//! Deactivating: the key's database share is deleted (secure_delete and a
//! WAL checkpoint), then its file removed; a crash between leaves a file
//! share no signing key owns, which reconciliation removes.

//!
//! The parts: `clock` (wall time, the lifecycle's clock that never goes
//! backwards, and the purge clock that never runs ahead of measured time),
//! `create` (new keys: first, scheduled, rotation), `reshare`
//! (re-splitting a key, rebuilding a lost share from the offline share),
//! `reconcile` (proving the stores belong together, then cleaning up),
//! `unseal` (rebuilding keys into memory), `migrate` (moving a host's keys
//! from SQLite to PostgreSQL). The daemon's key manager and the
//! offline admin commands both call these.

mod create;
mod migrate;
mod reconcile;
mod reshare;
mod unseal;

use crate::keys::{KeyInfo, SecretKey};

pub use create::{Creation, create_key, random_seed, rotate_now, run_due};
pub use migrate::{Moved, move_to_postgres};
pub use reconcile::{Leftover, Reconciled, Survey, apply, reconcile, reconcile_stores, survey};
pub use reshare::{Recovered, Resealed, recover, reseal, reshare};
pub use unseal::{add_published_others, build_keyset, unseal_key};

/// How many times one key may be split (its share generations). Each split
/// of the same secret with `sharks` 0.5 leaks a little (RUSTSEC-2024-0398:
/// a share rules out one value per secret byte); 16 splits still leave more
/// than 253 bits. Past the cap the answer is a rotation.
pub const MAX_GENERATIONS: u32 = 16;

/// In a cluster, how long after a (non-emergency) `rotate` the new key
/// starts to sign: the other nodes learn of it within a second (NOTIFY),
/// so they verify its first token.
pub const CLUSTER_PUBLISH_DELAY: i64 = 2;

/// A key just created: its row and the key rebuilt from its stored shares
/// (what `create` hands to `unseal`'s key set builder).
pub struct NewKey {
    pub row: KeyInfo,
    pub key: SecretKey,
}
