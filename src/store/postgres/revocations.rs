//! `revocations`: every node's revocations, read in the order they were
//! recorded (all at once, or those since an id), with the marks that tell
//! a node that the database went back; recording and purging them.

use tokio_postgres::Client;

use crate::error::Result;
use crate::store::keystore::Revocation;

use super::Postgres;

impl Postgres {
    /// Stream the revocations changed since `after` (an id), in order, to
    /// `f`: those this node trusts (of active members, and those a removed
    /// member recorded before its removal), kept until `kept_from` or later.
    /// Returns the revocation sequence's high mark and this node's beat,
    /// read first: a mark or a beat below what the node has seen means the
    /// database went back (a restored dump).
    pub fn read_revocations(
        &self,
        after: i64,
        kept_from: i64,
        f: &mut dyn FnMut(RevocationRow),
    ) -> Result<Marks> {
        use futures_util::StreamExt;
        let node = self.node.clone();
        // Every revocation (from id 0) on the second connection: the
        // incremental reads and the node's other statements go on beside.
        let slot = if after == 0 { &self.bulk } else { &self.client };
        self.with_on(slot, "reading revocations", async |c| {
            let marks = read_marks(c, &node).await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&after, &kept_from];
            let rows = c
                .query_raw(
                    "SELECT r.id, r.kind, r.value, r.before, r.expires_at, r.node
                     FROM splitsign_revocations r JOIN splitsign_members m ON m.node = r.node
                     WHERE r.id > $1 AND r.expires_at >= $2
                       AND (m.active OR pg_visible_in_snapshot(r.recorded_xid, m.removed_snapshot))
                     ORDER BY r.id",
                    params,
                )
                .await?;
            let mut rows = std::pin::pin!(rows);
            // One row at a time: a full read of a million holds no list.
            while let Some(r) = rows.next().await {
                let r = r?;
                if let Some(rev) = revocation(r.get(1), r.get(2), r.get(3), r.get(4)) {
                    f(RevocationRow {
                        id: r.get(0),
                        node: r.get(5),
                        rev,
                    });
                }
            }
            Ok(marks)
        })
    }

    /// The database's marks (see [`Marks`]), alone: a cheap check that it
    /// did not go back.
    pub fn marks(&self) -> Result<Marks> {
        let node = self.node.clone();
        self.with("reading the revocation marks", async |c| {
            read_marks(c, &node).await
        })
    }

    /// Raise this node's beat to `beat` (see [`Marks`]).
    pub fn set_beat(&self, beat: i64) -> Result<()> {
        let node = self.node.clone();
        self.with("raising the node's beat", async |c| {
            c.execute(
                "UPDATE splitsign_nodes SET beat = $2 WHERE node = $1 AND beat < $2",
                &[&node, &beat],
            )
            .await
            .map(|_| ())
        })
    }

    /// Delete the revocations kept until before `before`: this node's,
    /// and those of nodes no longer active (never a row another session
    /// holds: none of them can hold this node up).
    pub fn purge_revocations(&self, before: i64) -> Result<u64> {
        self.with("purging revocations", async |c| {
            let n: i64 = c
                .query_one("SELECT splitsign_purge_revocations($1)", &[&before])
                .await?
                .get(0);
            Ok(n.max(0) as u64)
        })
    }
}

/// What a node compares to notice that the database went back: the
/// revocation sequence's mark (ids are never handed out twice), and this
/// node's beat, which only this node raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    pub high: i64,
    pub beat: i64,
}

impl Marks {
    /// Whether these (the database's) are below what a node has `seen`:
    /// the database went back.
    pub fn below(&self, seen: &Marks) -> bool {
        self.high < seen.high || self.beat < seen.beat
    }
}

async fn read_marks(c: &Client, node: &str) -> std::result::Result<Marks, tokio_postgres::Error> {
    let r = c
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END,
                    coalesce((SELECT beat FROM splitsign_nodes WHERE node = $1), 0)
             FROM splitsign_revocations_id_seq",
            &[&node],
        )
        .await?;
    Ok(Marks {
        high: r.get(0),
        beat: r.get(1),
    })
}

/// A revocation as another node (or this one) stored it.
#[derive(Debug, Clone)]
pub struct RevocationRow {
    pub id: i64,
    pub node: String,
    pub rev: Revocation,
}

/// A revocation row (see [`Revocation::from_columns`]).
fn revocation(
    kind: String,
    value: String,
    before: Option<i64>,
    expires_at: i64,
) -> Option<Revocation> {
    Revocation::from_columns(&kind, value, before, expires_at)
}

/// Record a revocation; one only grows (the later `before` and
/// `expires_at` win). Its new id (drawn by the table's trigger) tells the
/// other nodes.
pub(super) async fn insert_revocation(
    tx: &impl tokio_postgres::GenericClient,
    node: &str,
    r: &Revocation,
    now: i64,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let (kind, value, before, expires_at) = r.columns();
    tx.execute(
        "INSERT INTO splitsign_revocations (kind, value, before, expires_at, created_at, node)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (kind, value, node) DO UPDATE SET
             before = GREATEST(splitsign_revocations.before, EXCLUDED.before),
             expires_at = GREATEST(splitsign_revocations.expires_at, EXCLUDED.expires_at),
             created_at = EXCLUDED.created_at",
        &[&kind, &value, &before, &expires_at, &now, &node],
    )
    .await
}
