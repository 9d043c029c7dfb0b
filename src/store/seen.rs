//! `seen`: the revocations a node of a cluster has seen, kept in its local
//! SQLite database (schema 7), so that a PostgreSQL database that goes back
//! (a restored dump, a rolled-back replica) never un-revokes a token on
//! this node, and so that the node can write its own back. Also the highest
//! mark of the cluster's revocation sequence the node has seen.
//!
//! A connection of its own to the local database: the daemon's follower
//! records what it reads without waiting for the key stores' lock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, params};

use super::keystore::Revocation;
use crate::error::{Error, Result};

pub struct Seen {
    conn: Connection,
    path: PathBuf,
}

impl Seen {
    /// Open the local database at `path` (its schema already brought up to
    /// date by `Database::open`).
    pub fn open(path: &Path) -> Result<Seen> {
        let db_err = Error::database(path);
        let conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        let has: bool = conn
            .query_row(
                "SELECT count(*) = 1 FROM sqlite_master WHERE name = 'cluster_revocations'",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        if !has {
            return Err(Error::KeyStore(format!(
                "database {} has no cluster_revocations table (schema 7): start the daemon once \
                 to upgrade it",
                path.display()
            )));
        }
        Ok(Seen {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> Error + Copy + '_ {
        Error::database(&self.path)
    }

    /// The highest mark of the cluster's revocation sequence seen (0: none).
    pub fn high(&self) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT coalesce((SELECT high_id FROM cluster_seen), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// Record revocations (each with the node that made it; one only
    /// grows), in one transaction.
    pub fn record<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a str, &'a Revocation)>,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(self.err())?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO cluster_revocations (digest, kind, value, node, before, expires_at)
                     VALUES (?6, ?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (digest) DO UPDATE SET
                         before = max(coalesce(before, excluded.before),
                                      coalesce(excluded.before, before)),
                         expires_at = max(expires_at, excluded.expires_at)",
                )
                .map_err(self.err())?;
            for (node, r) in rows {
                let (kind, value, before, expires_at) = r.columns();
                let d = digest(kind, value, node);
                stmt.execute(params![kind, value, node, before, expires_at, &d[..]])
                    .map_err(self.err())?;
            }
        }
        tx.commit().map_err(self.err())
    }

    /// Raise the sequence's mark seen to `high`.
    pub fn raise_high(&self, high: i64) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO cluster_seen (singleton, high_id) VALUES (1, ?1)
                 ON CONFLICT (singleton) DO UPDATE SET high_id = max(high_id, excluded.high_id)",
                [high],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// Set the sequence's mark and this node's beat (after the database
    /// went back: its lower values are the ones to compare with from now
    /// on).
    pub fn reset(&self, high: i64, beat: i64) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO cluster_seen (singleton, high_id, beat) VALUES (1, ?1, ?2)
                 ON CONFLICT (singleton) DO UPDATE SET high_id = excluded.high_id,
                     beat = excluded.beat",
                [high, beat],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// This node's beat (0: none yet).
    pub fn beat(&self) -> Result<i64> {
        self.conn
            .query_row(
                "SELECT coalesce((SELECT beat FROM cluster_seen), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// Raise this node's beat to `beat` (once PostgreSQL has it).
    pub fn set_beat(&self, beat: i64) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO cluster_seen (singleton, high_id, beat) VALUES (1, 0, ?1)
                 ON CONFLICT (singleton) DO UPDATE SET beat = max(beat, excluded.beat)",
                [beat],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    /// The revocations seen (of `node` only, if given) kept until
    /// `kept_from` or later, one at a time.
    pub fn for_each(
        &self,
        node: Option<&str>,
        kept_from: i64,
        f: &mut dyn FnMut(&str, Revocation),
    ) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT node, kind, value, before, expires_at FROM cluster_revocations
                 WHERE expires_at >= ?1 AND (?2 IS NULL OR node = ?2)",
            )
            .map_err(self.err())?;
        let mut rows = stmt.query(params![kept_from, node]).map_err(self.err())?;
        while let Some(r) = rows.next().map_err(self.err())? {
            let node: String = r.get(0).map_err(self.err())?;
            let kind: String = r.get(1).map_err(self.err())?;
            let value: String = r.get(2).map_err(self.err())?;
            let before: Option<i64> = r.get(3).map_err(self.err())?;
            let expires_at: i64 = r.get(4).map_err(self.err())?;
            if let Some(rev) = Revocation::from_columns(&kind, value, before, expires_at) {
                f(&node, rev);
            }
        }
        Ok(())
    }

    /// Forget the revocations kept until before `before`.
    pub fn purge(&self, before: i64) -> Result<u64> {
        self.conn
            .execute(
                "DELETE FROM cluster_revocations WHERE expires_at < ?1",
                [before],
            )
            .map(|n| n as u64)
            .map_err(self.err())
    }
}

/// The key of a revocation made by `node` (also what a node compares its
/// own revocations by, with the database's).
pub fn digest(kind: &str, value: &str, node: &str) -> [u8; 16] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [kind, value, node] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part.as_bytes());
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_revocations_only_grow_and_are_purged_by_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(crate::store::Database::open(&path, crate::config::AlgLabel::EdDSA).unwrap());
        let seen = Seen::open(&path).unwrap();
        assert_eq!(seen.high().unwrap(), 0);
        let sub = |before, expires_at| Revocation::Sub {
            sub: "carol".into(),
            before,
            expires_at,
        };
        let jti = Revocation::Jti {
            jti: "j".into(),
            expires_at: 50,
        };
        seen.record([("a", &sub(10, 100)), ("b", &jti)]).unwrap();
        seen.raise_high(7).unwrap();
        // An earlier `before` and a lower mark change nothing.
        seen.record([("a", &sub(5, 90))]).unwrap();
        seen.raise_high(3).unwrap();
        assert_eq!(seen.high().unwrap(), 7);
        let mut all = Vec::new();
        seen.for_each(None, 0, &mut |n, r| all.push((n.to_owned(), r)))
            .unwrap();
        all.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(all, [("a".into(), sub(10, 100)), ("b".into(), jti.clone())]);
        let mut own = Vec::new();
        seen.for_each(Some("b"), 0, &mut |_, r| own.push(r))
            .unwrap();
        assert_eq!(own, [jti]);
        assert_eq!(seen.purge(60).unwrap(), 1);
        seen.set_beat(4).unwrap();
        seen.set_beat(3).unwrap();
        assert_eq!(seen.beat().unwrap(), 4);
        seen.reset(2, 1).unwrap();
        assert_eq!((seen.high().unwrap(), seen.beat().unwrap()), (2, 1));
    }

    #[test]
    fn a_revocation_is_keyed_by_kind_value_and_node() {
        assert_eq!(digest("sub", "a", "n"), digest("sub", "a", "n"));
        assert_ne!(digest("sub", "a", "n"), digest("sub", "b", "n"));
        assert_ne!(digest("sub", "a", "n"), digest("jti", "a", "n"));
        assert_ne!(digest("sub", "a", "n"), digest("sub", "a", "m"));
        // Lengths are hashed: parts cannot run into each other.
        assert_ne!(digest("sub", "ab", "c"), digest("sub", "a", "bc"));
    }
}
