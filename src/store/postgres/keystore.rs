//! `keystore`: the [`KeyStore`] of one node (its key rows and database
//! shares, which row-level security lets only it change), and moving a
//! host's keys in from SQLite (`migrate-store`).

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::keys::KeyInfo;
use crate::keys::shamir::{KeyShare, Slot};
use crate::keys::share_format;
use crate::store::FileId;
use crate::store::keystore::{
    KeyStore, NodeKey, RawKey, RawShare, Revocation, Supersede, check_share,
};

use super::Postgres;
use super::revocations::insert_revocation;

impl Postgres {
    /// Move a node's key store here (`migrate-store`), in one
    /// transaction: register the node with `deployment` (kept, so that its
    /// file shares stay valid), and replace whatever rows it has (a copy an
    /// interrupted move left) with `keys` (verified), their database
    /// `shares` and the `revocations`.
    pub fn import_node(
        &mut self,
        deployment: &str,
        keys: &[KeyInfo],
        shares: &[KeyShare],
        revocations: &[Revocation],
        now: i64,
    ) -> Result<()> {
        let node = self.node.clone();
        let found = self.with("moving the node's keys", async |c| {
            let tx = c.transaction().await?;
            let found = tx
                .query_opt(
                    "SELECT deployment FROM splitsign_nodes WHERE node = $1",
                    &[&node],
                )
                .await?
                .map(|r| r.get::<_, String>(0));
            if found.as_deref().is_some_and(|d| d != deployment) {
                return Ok(found);
            }
            if found.is_none() {
                tx.execute(
                    "INSERT INTO splitsign_nodes (node, deployment, created_at)
                     VALUES ($1, $2, $3)",
                    &[&node, &deployment, &now],
                )
                .await?;
            }
            tx.execute("SELECT splitsign_clear_own_rows()", &[]).await?;
            for row in keys {
                insert_key_row(&tx, &node, row, true).await?;
            }
            for share in shares {
                insert_share(&tx, &node, share, false).await?;
            }
            for r in revocations {
                insert_revocation(&tx, &node, r, now).await?;
            }
            tx.commit().await?;
            Ok(found)
        })?;
        match found {
            Some(d) if d != deployment => Err(Error::KeyStore(format!(
                "{} already holds node {} of another deployment ({d}): choose another `node` \
                 name for this host",
                self.describe(),
                self.node
            ))),
            _ => {
                self.deployment = deployment.to_owned();
                Ok(())
            }
        }
    }
}

pub(in crate::store) const KEY_COLUMNS: &str = "kid, public_key, origin, created_at, activate_at, \
                                      deactivate_at, retire_at, share_generation, verified, alg, \
                                      pending_generation";

pub(in crate::store) fn raw_key(r: &tokio_postgres::Row) -> RawKey {
    RawKey {
        kid: r.get(0),
        public_key: r.get(1),
        origin: r.get(2),
        times: [r.get(3), r.get(4), r.get(5), r.get(6)],
        share_generation: i64::from(r.get::<_, i32>(7)),
        verified: r.get(8),
        alg: Some(r.get(9)),
        pending_generation: r.get::<_, Option<i32>>(10).map(i64::from),
    }
}

/// Run one statement in a transaction, requiring it to change one row.
fn one_row(n: u64, what: &str, kid: &str, node: &str) -> Result<()> {
    if n == 1 {
        Ok(())
    } else {
        Err(Error::KeyStore(format!(
            "PostgreSQL: {what} of key {kid} of node {node} changed {n} rows, not one"
        )))
    }
}

impl KeyStore for Arc<Postgres> {
    fn describe(&self) -> String {
        Postgres::describe(self)
    }

    fn cluster_node(&self) -> Option<&str> {
        Some(&self.node)
    }

    fn record_possession(&self, kid: &str, proof: &[u8; 64]) -> Result<()> {
        let node = self.node.clone();
        let n = self.with("recording the proof of a key", async |c| {
            c.execute(
                "UPDATE splitsign_keys SET pop = $3 WHERE kid = $1 AND node = $2",
                &[&kid, &node, &&proof[..]],
            )
            .await
        })?;
        one_row(n, "the proof", kid, &self.node)
    }

    fn deployment(&self) -> &str {
        &self.deployment
    }

    fn local_file(&self) -> Option<(&Path, FileId)> {
        None
    }

    fn keys(&self) -> Result<Vec<KeyInfo>> {
        let node = self.node.clone();
        let rows = self.with("reading keys", async |c| {
            c.query(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM splitsign_keys WHERE node = $1
                     ORDER BY activate_at, created_at, kid"
                ),
                &[&node],
            )
            .await
        })?;
        let db = self.describe();
        rows.iter()
            .map(|r| raw_key(r).check(&db, crate::config::AlgLabel::EdDSA))
            .collect()
    }

    fn other_nodes_keys(&self) -> Result<Vec<NodeKey>> {
        Ok(self.view(crate::clock::wall_now())?.keys)
    }

    fn is_empty(&self) -> Result<bool> {
        let node = self.node.clone();
        self.with("counting keys", async |c| {
            let row = c
                .query_one(
                    "SELECT count(*) FROM splitsign_keys WHERE node = $1",
                    &[&node],
                )
                .await?;
            Ok(row.get::<_, i64>(0) == 0)
        })
    }

    fn insert_key(&mut self, row: &KeyInfo, share: &KeyShare) -> Result<()> {
        debug_assert_eq!(share.slot, Slot::Database);
        let node = self.node.clone();
        self.with("recording a key", async |c| {
            let tx = c.transaction().await?;
            insert_key_row(&tx, &node, row, false).await?;
            insert_share(&tx, &node, share, false).await?;
            tx.commit().await
        })
    }

    fn commit_key(&mut self, kid: &str, supersede: &[Supersede]) -> Result<()> {
        let node = self.node.clone();
        let n =
            self.with("committing a key", async |c| {
                let tx = c.transaction().await?;
                let n = tx
                    .execute(
                        "UPDATE splitsign_keys SET verified = true WHERE kid = $1 AND node = $2",
                        &[&kid, &node],
                    )
                    .await?;
                if n != 1 {
                    return Ok(n);
                }
                for s in supersede {
                    tx.execute(
                    "UPDATE splitsign_keys SET activate_at = $3, deactivate_at = $4, retire_at = $5
                     WHERE kid = $1 AND node = $2",
                    &[&s.kid, &node, &s.activate_at, &s.deactivate_at, &s.retire_at],
                )
                .await?;
                }
                tx.commit().await?;
                Ok(1)
            })?;
        one_row(n, "the commit", kid, &self.node)
    }

    fn begin_reshare(&self, kid: &str, generation: u32) -> Result<()> {
        let node = self.node.clone();
        let n = self.with("recording a re-split", async |c| {
            c.execute(
                "UPDATE splitsign_keys SET pending_generation = $3
                 WHERE kid = $1 AND node = $2 AND share_generation + 1 = $3 AND verified",
                &[&kid, &node, &(generation as i32)],
            )
            .await
        })?;
        one_row(n, "the re-split", kid, &self.node)
    }

    fn clear_pending_generation(&self, kid: &str) -> Result<()> {
        let node = self.node.clone();
        self.with("clearing a re-split", async |c| {
            c.execute(
                "UPDATE splitsign_keys SET pending_generation = NULL WHERE kid = $1 AND node = $2",
                &[&kid, &node],
            )
            .await
        })
        .map(|_| ())
    }

    fn commit_reshare(&mut self, share: &KeyShare, old_generation: u32) -> Result<()> {
        let node = self.node.clone();
        let n = self.with("committing a re-split", async |c| {
            let tx = c.transaction().await?;
            insert_share(&tx, &node, share, false).await?;
            let n = tx
                .execute(
                    "UPDATE splitsign_keys SET share_generation = $3, pending_generation = NULL
                     WHERE kid = $1 AND node = $2 AND share_generation = $4",
                    &[
                        &share.kid,
                        &node,
                        &(share.generation as i32),
                        &(old_generation as i32),
                    ],
                )
                .await?;
            if n != 1 {
                return Ok(n);
            }
            tx.execute(
                "SELECT splitsign_delete_shares($1, $2)",
                &[&share.kid, &(share.generation as i32)],
            )
            .await?;
            tx.commit().await?;
            Ok(1)
        })?;
        one_row(n, "the re-split", &share.kid, &self.node)
    }

    fn restore_db_share(&mut self, share: &KeyShare) -> Result<()> {
        let node = self.node.clone();
        self.with("restoring a database share", async |c| {
            // In place of a damaged one at the same generation, if any.
            insert_share(&*c, &node, share, true).await.map(|_| ())
        })
    }

    fn discard_key(&self, kid: &str) -> Result<()> {
        self.with("discarding a key", async |c| {
            c.execute("SELECT splitsign_discard_key($1)", &[&kid]).await
        })
        .map(|_| ())
    }

    fn delete_db_shares(&self, kid: &str) -> Result<bool> {
        self.with("destroying database shares", async |c| {
            let n: i64 = c
                .query_one("SELECT splitsign_delete_shares($1, NULL::integer)", &[&kid])
                .await?
                .get(0);
            Ok(n > 0)
        })
    }

    fn kids_with_db_shares(&self) -> Result<Vec<String>> {
        let node = self.node.clone();
        self.with("listing database shares", async |c| {
            let rows = c
                .query(
                    "SELECT DISTINCT kid FROM splitsign_db_shares WHERE node = $1",
                    &[&node],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn has_legacy_rows(&self) -> Result<bool> {
        Ok(false)
    }

    fn record_legacy_alg(&self) -> Result<usize> {
        Ok(0)
    }

    fn db_share(&self, row: &KeyInfo) -> Result<KeyShare> {
        let node = self.node.clone();
        let found = self.with("reading a database share", async |c| {
            let r = c
                .query_opt(
                    "SELECT x, y, checksum FROM splitsign_db_shares
                     WHERE kid = $1 AND generation = $2 AND node = $3",
                    &[&row.kid, &(row.share_generation as i32), &node],
                )
                .await?;
            Ok(r.map(|r| RawShare {
                x: i64::from(r.get::<_, i16>(0)),
                y: zeroize::Zeroizing::new(r.get(1)),
                checksum: r.get(2),
            }))
        })?;
        check_share(found, row, &self.describe(), &self.deployment)
    }

    fn add_revocations(&self, rows: &[Revocation], now: i64) -> Result<()> {
        let node = self.node.clone();
        self.with("recording revocations", async |c| {
            let tx = c.transaction().await?;
            for r in rows {
                insert_revocation(&tx, &node, r, now).await?;
            }
            tx.commit().await
        })
    }

    fn purge_revocations(&self, before: i64) -> Result<u64> {
        Postgres::purge_revocations(self, before)
    }

    fn for_each_revocation(&self, before: i64, f: &mut dyn FnMut(Revocation)) -> Result<()> {
        Postgres::purge_revocations(self, before)?;
        self.read_revocations(0, before, &mut |r| f(r.rev))?;
        Ok(())
    }
}

async fn insert_key_row(
    tx: &tokio_postgres::Transaction<'_>,
    node: &str,
    row: &KeyInfo,
    verified: bool,
) -> std::result::Result<u64, tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO splitsign_keys (node, kid, public_key, origin, created_at, activate_at,
             deactivate_at, retire_at, share_generation, verified, alg, pending_generation)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL)",
        &[
            &node,
            &row.kid,
            &row.public_key.bytes(),
            &row.origin.as_str(),
            &row.created_at,
            &row.activate_at,
            &row.deactivate_at,
            &row.retire_at,
            &(row.share_generation as i32),
            &verified,
            &row.alg.as_str(),
        ],
    )
    .await
}

/// Store a database share; with `replace`, in place of one at the same
/// generation (a damaged one being repaired).
async fn insert_share(
    tx: &impl tokio_postgres::GenericClient,
    node: &str,
    share: &KeyShare,
    replace: bool,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let sum = share_format::db_share_checksum(share);
    let sql = if replace {
        "INSERT INTO splitsign_db_shares (node, kid, generation, x, y, checksum)
         VALUES ($1, $2, $3, 2, $4, $5)
         ON CONFLICT (node, kid, generation) DO UPDATE SET
             y = EXCLUDED.y, checksum = EXCLUDED.checksum"
    } else {
        "INSERT INTO splitsign_db_shares (node, kid, generation, x, y, checksum)
         VALUES ($1, $2, $3, 2, $4, $5)"
    };
    tx.execute(
        sql,
        &[
            &node,
            &share.kid,
            &(share.generation as i32),
            &&share.y.as_bytes()[..],
            &&sum[..],
        ],
    )
    .await
}
