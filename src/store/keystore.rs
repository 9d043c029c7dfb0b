//! `keystore` is what the key lifecycle needs from the database side of
//! the stores: key rows, database shares (x = 2), revocations, and the
//! deployment id. Two implement it: SQLite (`sqlite`, one host) and
//! PostgreSQL (`postgres`, a cluster of nodes, each with its own keys).
//! Neither ever sees a whole key.

use std::path::Path;

use crate::error::Result;
use crate::keys::KeyInfo;
use crate::keys::shamir::KeyShare;

use super::FileId;
use super::sqlite::{Revocation, Supersede};

/// A key of another node (PostgreSQL only): published and verified here,
/// never signed with.
#[derive(Debug, Clone)]
pub struct NodeKey {
    pub node: String,
    pub key: KeyInfo,
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
    fn commit_key(&mut self, kid: &str, supersede: &[Supersede], drop: &[String]) -> Result<()>;
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
    /// Record a revocation (every node's, in a cluster).
    fn add_revocation(&self, r: &Revocation, now: i64) -> Result<()>;
    /// The revocations in force at `now` (of every node); this node's
    /// expired ones are purged.
    fn revocations(&self, now: i64) -> Result<Vec<Revocation>>;
    /// Move everything into the database's own file (SQLite); nothing to do
    /// elsewhere.
    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }
}
