//! `keystore` is what the key lifecycle needs from the database side of
//! the stores: key rows, database shares (x = 2), revocations, and the
//! deployment id. Two implement it: SQLite (`sqlite`, one host) and
//! PostgreSQL (`postgres`, a cluster of nodes, each with its own keys).
//! Neither ever sees a whole key. The values its methods take and give
//! ([`Supersede`], [`Revocation`]) are defined here too: the backends
//! import them from here, and this module imports no backend.

use std::path::Path;

use zeroize::Zeroizing;

use crate::config::AlgLabel;
use crate::error::{Error, Result};
use crate::keys::shamir::{KeyShare, ShareY, Slot};
use crate::keys::{KeyInfo, Origin, PublicKey, share_format};

use super::FileId;

/// A key of another node (PostgreSQL only): published and verified here,
/// never signed with.
#[derive(Debug, Clone)]
pub struct NodeKey {
    pub node: String,
    pub key: KeyInfo,
}

/// New end of a superseded key's signing period (and publication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supersede {
    pub kid: String,
    pub activate_at: i64,
    pub deactivate_at: i64,
    pub retire_at: i64,
}

/// A revocation, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Jti {
        jti: String,
        expires_at: i64,
    },
    Sub {
        sub: String,
        before: i64,
        expires_at: i64,
    },
}

impl Revocation {
    /// The columns a revocation is stored in: kind, value, before,
    /// expires_at.
    pub fn columns(&self) -> (&'static str, &str, Option<i64>, i64) {
        match self {
            Revocation::Jti { jti, expires_at } => ("jti", jti, None, *expires_at),
            Revocation::Sub {
                sub,
                before,
                expires_at,
            } => ("sub", sub, Some(*before), *expires_at),
        }
    }

    /// A stored row, or `None` for a kind this version does not know (or a
    /// subject row without `before`).
    pub fn from_columns(
        kind: &str,
        value: String,
        before: Option<i64>,
        expires_at: i64,
    ) -> Option<Revocation> {
        match kind {
            "jti" => Some(Revocation::Jti {
                jti: value,
                expires_at,
            }),
            "sub" => Some(Revocation::Sub {
                sub: value,
                before: before?,
                expires_at,
            }),
            _ => None,
        }
    }
}

pub trait KeyStore: Send {
    /// The store, for messages: "database /var/lib/…/splitsign.db", or
    /// "PostgreSQL node web-1 (host=db.internal dbname=splitsign)".
    fn describe(&self) -> String;
    /// The deployment id (this node's, in a cluster) that every file share
    /// of this host must carry.
    fn deployment(&self) -> &str;
    /// The local file whose identity the running daemon checks (SQLite's
    /// database; nothing for a remote server).
    fn local_file(&self) -> Option<(&Path, FileId)>;
    /// This node's keys, oldest first, each validated.
    fn keys(&self) -> Result<Vec<KeyInfo>>;
    /// The keys of the other nodes (PostgreSQL), verified ones only.
    fn other_nodes_keys(&self) -> Result<Vec<NodeKey>> {
        Ok(Vec::new())
    }
    /// Whether this node has ever recorded a key.
    fn is_empty(&self) -> Result<bool>;
    /// Record a key (unverified) with its database share, in one transaction.
    fn insert_key(&mut self, row: &KeyInfo, share: &KeyShare) -> Result<()>;
    /// A creation's commit point; see `Database::commit_key`.
    fn commit_key(&mut self, kid: &str, supersede: &[Supersede]) -> Result<()>;
    /// The node whose keys these are, in a cluster (PostgreSQL): other
    /// nodes trust a key row of it only with a proof of possession.
    fn cluster_node(&self) -> Option<&str> {
        None
    }
    /// Record the proof that this node holds the key `kid` (see
    /// `keys::prove_possession`); nothing to do on a single host.
    fn record_possession(&self, _kid: &str, _proof: &[u8; 64]) -> Result<()> {
        Ok(())
    }
    /// Record that a re-split into `generation` begins.
    fn begin_reshare(&self, kid: &str, generation: u32) -> Result<()>;
    /// Forget an interrupted re-split.
    fn clear_pending_generation(&self, kid: &str) -> Result<()>;
    /// A re-split's commit point.
    fn commit_reshare(&mut self, share: &KeyShare, old_generation: u32) -> Result<()>;
    /// Put back a lost database share at the key's current generation.
    fn restore_db_share(&mut self, share: &KeyShare) -> Result<()>;
    /// Delete an interrupted creation (row and share).
    fn discard_key(&self, kid: &str) -> Result<()>;
    /// Delete the database shares of a key that stopped signing.
    fn delete_db_shares(&self, kid: &str) -> Result<bool>;
    /// The kids that still have a database share.
    fn kids_with_db_shares(&self) -> Result<Vec<String>>;
    /// Whether some key has no recorded `alg` label.
    fn has_legacy_rows(&self) -> Result<bool>;
    /// Record the label of keys made before labels were recorded.
    fn record_legacy_alg(&self) -> Result<usize>;
    /// The database share of `row` at its current generation, checked.
    fn db_share(&self, row: &KeyInfo) -> Result<KeyShare>;
    /// Record revocations, in one transaction.
    fn add_revocations(&self, rows: &[Revocation], now: i64) -> Result<()>;
    /// Delete the revocations kept until before `before` (the daemon passes
    /// a day before its purge clock: see `lifecycle::PurgeClock`).
    fn purge_revocations(&self, before: i64) -> Result<u64>;
    /// The revocations (of every node); those kept until before `before`
    /// are purged first.
    fn revocations(&self, before: i64) -> Result<Vec<Revocation>> {
        let mut out = Vec::new();
        self.for_each_revocation(before, &mut |r| out.push(r))?;
        Ok(out)
    }
    /// [`KeyStore::revocations`], one row at a time (a million need no list).
    fn for_each_revocation(&self, before: i64, f: &mut dyn FnMut(Revocation)) -> Result<()>;
    /// Move everything into the database's own file (SQLite); nothing to do
    /// elsewhere.
    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }
}

/// A key row as read, before it is checked: every row read back is
/// treated as hostile.
pub struct RawKey {
    pub kid: String,
    pub public_key: Vec<u8>,
    pub origin: String,
    /// created, activate, deactivate, retire.
    pub times: [i64; 4],
    pub share_generation: i64,
    pub verified: bool,
    /// `None`: made before labels were recorded (SQLite schema < 3).
    pub alg: Option<String>,
    pub pending_generation: Option<i64>,
}

impl RawKey {
    /// The row, checked: the kid is the thumbprint of the public key, the
    /// timestamps are in order, the numbers in range.
    pub fn check(self, db: &str, legacy_alg: AlgLabel) -> Result<KeyInfo> {
        let bad = |reason: &str| Error::KeyRow {
            kid: printable(&self.kid),
            db: db.to_owned(),
            reason: reason.to_owned(),
        };
        let alg = match self.alg.as_deref() {
            None => legacy_alg,
            Some(a) => AlgLabel::parse(a).ok_or_else(|| bad("unknown alg label"))?,
        };
        let public_key = PublicKey::parse(alg.key_type(), &self.public_key).map_err(bad)?;
        if !share_format::is_valid_kid(&self.kid)
            || share_format::thumbprint(&public_key) != self.kid
        {
            return Err(bad("kid is not the thumbprint of the stored public key"));
        }
        let origin = match self.origin.as_str() {
            "generated" => Origin::Generated,
            "imported" => Origin::Imported,
            _ => return Err(bad("unknown origin")),
        };
        let [created_at, activate_at, deactivate_at, retire_at] = self.times;
        if !(created_at <= activate_at
            && activate_at <= deactivate_at
            && deactivate_at <= retire_at)
        {
            return Err(bad("timestamps are out of order"));
        }
        let share_generation = u32::try_from(self.share_generation)
            .map_err(|_| bad("share generation out of range"))?;
        let pending_generation = self
            .pending_generation
            .map(u32::try_from)
            .transpose()
            .map_err(|_| bad("pending share generation out of range"))?;
        Ok(KeyInfo {
            kid: self.kid,
            public_key,
            origin,
            created_at,
            activate_at,
            deactivate_at,
            retire_at,
            share_generation,
            pending_generation,
            verified: self.verified,
            alg,
        })
    }
}

/// A database share as read, before it is checked.
pub struct RawShare {
    pub x: i64,
    pub y: Zeroizing<Vec<u8>>,
    pub checksum: Vec<u8>,
}

/// The database share of `row`, checked: present, x = 2, 32 bytes,
/// checksum intact.
pub fn check_share(
    found: Option<RawShare>,
    row: &KeyInfo,
    db: &str,
    deployment: &str,
) -> Result<KeyShare> {
    let bad = |reason: &str| Error::DbShare {
        kid: row.kid.clone(),
        db: db.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(RawShare { x, y, checksum }) = found else {
        return Err(bad(&format!(
            "is missing (no row for generation {})",
            row.share_generation
        )));
    };
    if x != i64::from(Slot::Database.x()) {
        return Err(bad(&format!("has x = {x}, expected 2")));
    }
    let y = ShareY::from_slice(&y).ok_or_else(|| bad("is not 32 bytes"))?;
    if checksum[..] != share_format::db_checksum(&row.kid, row.share_generation, 2, row.alg, &y)[..]
    {
        return Err(bad("fails its checksum (altered)"));
    }
    Ok(KeyShare {
        deployment: Some(deployment.to_owned()),
        kid: row.kid.clone(),
        generation: row.share_generation,
        slot: Slot::Database,
        alg: Some(row.alg),
        public_key: row.public_key,
        y,
    })
}

/// A kid from a database, made safe to print in an error.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}
