//! `unseal`: rebuilding keys from their two shares, checked against the
//! public key both record, and building the key set the daemon holds.

use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::keys::keyring::{KeySet, Published, Signer};
use crate::keys::locked::LockedKey;
use crate::keys::shamir::{self, KeyShare};
use crate::keys::{KeyInfo, SecretKey};
use crate::store::ShareDir;
use crate::store::{KeyStore, NodeKey};

use super::NewKey;

/// Read both shares of `row`, rebuild its key and check it against the
/// public key stored with both. Fails closed with an error naming the store.
pub fn unseal_key(database: &dyn KeyStore, dir: &ShareDir, row: &KeyInfo) -> Result<SecretKey> {
    let file = dir.read(&row.kid, row.share_generation)?;
    rebuild(database, dir, row, &file)
}

/// [`unseal_key`] with the file share already read (and unsealed).
pub(super) fn rebuild(
    database: &dyn KeyStore,
    dir: &ShareDir,
    row: &KeyInfo,
    file: &KeyShare,
) -> Result<SecretKey> {
    let db = database.db_share(row)?;
    if let Some(d) = &file.deployment
        && d != database.deployment()
    {
        return Err(Error::FileShare {
            path: dir.share_path(&row.kid, row.share_generation),
            reason: format!(
                "belongs to deployment {d}, not to the database's ({})",
                database.deployment()
            ),
        });
    }
    if let Some(alg) = file.alg
        && alg != row.alg
    {
        return Err(Error::FileShare {
            path: dir.share_path(&row.kid, row.share_generation),
            reason: format!(
                "is a share of an {} key, but key row {} is {}",
                alg.as_str(),
                row.kid,
                row.alg.as_str()
            ),
        });
    }
    if file.public_key != row.public_key {
        return Err(Error::FileShare {
            path: dir.share_path(&row.kid, row.share_generation),
            reason: format!("records a different public key than key row {}", row.kid),
        });
    }
    shamir::recover(file, &db).map_err(|_| Error::SharesMismatch {
        kid: row.kid.clone(),
        file: dir.share_path(&row.kid, row.share_generation),
        db: database.describe(),
    })
}

/// Build the in-memory key set at `now`. Keys that may sign are taken from
/// `held` (already in memory) or else unsealed from the stores; `others`,
/// the keys of the other nodes of a cluster, are published beside this
/// node's. Returns the set and the kids whose key pages could not be
/// mlock'ed.
pub fn build_keyset(
    database: &dyn KeyStore,
    dir: &ShareDir,
    cfg: &Config,
    now: i64,
    held: &[Arc<Signer>],
    mut fresh: Vec<NewKey>,
    others: &[NodeKey],
) -> Result<(KeySet, Vec<(String, std::io::Error)>)> {
    let mut signers = Vec::new();
    let mut published = Vec::new();
    let mut unlocked = Vec::new();
    for row in database.keys()?.into_iter().filter(|r| r.verified) {
        let state = crate::keys::state(&row, now);
        if state.needs_shares() {
            let same = |s: &&Arc<Signer>| {
                s.kid == row.kid
                    && s.activate_at == row.activate_at
                    && s.deactivate_at == row.deactivate_at
                    && s.retire_at == row.retire_at
                    && s.share_generation == row.share_generation
            };
            let signer = if let Some(s) = held.iter().find(same) {
                Arc::clone(s)
            } else {
                // Tokens an earlier process signed with a key active before
                // now expire by now + max_ttl at the latest.
                let before_us = if row.activate_at < now {
                    now.saturating_add(cfg.tokens.max_ttl.as_secs() as i64)
                        .min(row.retire_at)
                } else {
                    i64::MIN
                };
                let (key, latest_exp) = match fresh.iter().position(|n| n.row.kid == row.kid) {
                    Some(i) => (fresh.swap_remove(i).key, i64::MIN),
                    None => match held.iter().find(|s| s.kid == row.kid) {
                        // Same key, new timestamps or shares (a rotation
                        // ended its period, a re-split).
                        Some(s) => (s.key.key().clone(), s.latest_exp()),
                        None => (unseal_key(database, dir, &row)?, before_us),
                    },
                };
                let (locked, err) = LockedKey::new(key);
                if let Some(e) = err {
                    unlocked.push((row.kid.clone(), e));
                }
                Arc::new(Signer::new(&row, locked, latest_exp))
            };
            signers.push(signer);
        }
        if state.is_published() {
            let key = row.public_key.verifier().ok_or_else(|| Error::KeyRow {
                kid: row.kid.clone(),
                db: database.describe(),
                reason: format!(
                    "public key is not a valid {} point",
                    row.public_key.key_type().name()
                ),
            })?;
            published.push(Published {
                row,
                key,
                node: None,
            });
        }
    }
    add_published_others(&mut published, others, now);
    Ok((KeySet::new(signers, published), unlocked))
}

/// Add the keys of other nodes that are published at `now` to `published`
/// (a key whose point is not valid is skipped: another node's row never
/// stops this one). A kid published already (this node's own, or another
/// node's: the same key imported on two nodes) is not published twice.
pub fn add_published_others(published: &mut Vec<Published>, others: &[NodeKey], now: i64) {
    for o in others
        .iter()
        .filter(|o| o.key.verified && crate::keys::state(&o.key, now).is_published())
    {
        if published.iter().any(|p| p.row.kid == o.key.kid) {
            continue;
        }
        if let Some(key) = o.key.public_key.verifier() {
            published.push(Published {
                row: o.key.clone(),
                key,
                node: Some(o.node.clone()),
            });
        }
    }
}
