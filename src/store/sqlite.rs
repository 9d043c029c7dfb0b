//! `sqlite` is the database store: key rows (public keys, lifecycle
//! timestamps, `alg` labels), the database share (x = 2) of each key that
//! can still sign, revocations, and the audit log's table (see
//! `audit_log`). It never sees a whole key.
//!
//! Every row read back is treated as hostile: kids must be thumbprints of
//! their public keys, timestamps ordered, share lengths exact.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

use crate::config::AlgLabel;
use crate::error::{Error, Result};
use crate::keys::KeyInfo;
use crate::keys::shamir::{KeyShare, Slot};
use crate::keys::share_format;
use crate::store::FileId;
use crate::store::keystore::{KeyStore, RawKey, RawShare, Revocation, Supersede, check_share};

const MIGRATION_ARRAY: &[M] = &[
    M::up(include_str!("../../migrations/0001_init.sql")),
    M::up(include_str!("../../migrations/0002_revocations_audit.sql")),
    M::up(include_str!("../../migrations/0003_integrity.sql")),
    M::up(include_str!("../../migrations/0004_audit_retention.sql")),
    M::up(include_str!("../../migrations/0005_moved.sql")),
    M::up(include_str!("../../migrations/0006_scale.sql")),
    M::up(include_str!("../../migrations/0007_cluster_seen.sql")),
    M::up(include_str!("../../migrations/0008_es256.sql")).foreign_key_check(),
];
const MIGRATIONS: Migrations = Migrations::from_slice(MIGRATION_ARRAY);

pub struct Database {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    /// The deployment id recorded in the database.
    deployment: String,
    /// The file the database path named when it was opened.
    identity: FileId,
    /// The label of keys created before labels were recorded (schema < 3):
    /// the configured one, which they signed with.
    legacy_alg: AlgLabel,
}

impl Database {
    /// Open (or create) the database and bring its schema up to date.
    /// `legacy_alg` is the label of keys that predate recorded labels.
    pub fn open(path: &Path, legacy_alg: AlgLabel) -> Result<Database> {
        let db_err = Error::database(path);
        let mut conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::KeyStore(format!(
                "database {}: could not enable WAL (journal_mode is {mode})",
                path.display()
            )));
        }
        // FULL: a committed key or share survives power loss. secure_delete:
        // a deleted share's bytes are overwritten, not left in free pages.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(db_err)?;
        // Foreign keys are on once the schema is current: a migration that
        // rebuilds a table (0008) must not cascade the drop of the old one
        // to the rows that reference it. It checks them itself after.
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(db_err)?;
        MIGRATIONS
            .to_latest(&mut conn)
            .map_err(|source| Error::Migrate {
                path: path.to_owned(),
                source,
            })?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db_err)?;
        Database::finish_open(conn, path, legacy_alg)
    }

    fn finish_open(conn: Connection, path: &Path, legacy_alg: AlgLabel) -> Result<Database> {
        let identity = FileId::of(path).map_err(Error::io("examining database", path))?;
        let deployment: String = conn
            .query_row("SELECT id FROM deployment", [], |r| r.get(0))
            .map_err(Error::database(path))?;
        if !share_format::is_valid_deployment(&deployment) {
            return Err(Error::KeyStore(format!(
                "database {}: the deployment id is malformed",
                path.display()
            )));
        }
        Ok(Database {
            conn,
            path: path.to_owned(),
            deployment,
            identity,
            legacy_alg,
        })
    }

    /// The file the database path named when it was opened.
    pub fn identity(&self) -> FileId {
        self.identity
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open an existing database read-only (for `check` and offline
    /// `status`, which may run beside a daemon). The schema must be the
    /// one this binary knows.
    pub fn open_read_only(path: &Path, legacy_alg: AlgLabel) -> Result<Database> {
        use rusqlite::OpenFlags;
        let db_err = Error::database(path);
        if !path.exists() {
            return Err(Error::KeyStore(format!(
                "database {} does not exist",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db_err)?;
        let latest = MIGRATION_ARRAY.len() as i64;
        if version != latest {
            let what = if version < latest {
                "an older splitsign made it: start the daemon once (`splitsign serve` upgrades \
                 the schema at start), then run this again"
            } else {
                "a newer splitsign made it"
            };
            return Err(Error::KeyStore(format!(
                "database {} has schema version {version}; this splitsign knows {latest} ({what})",
                path.display(),
            )));
        }
        Database::finish_open(conn, path, legacy_alg)
    }

    /// The schema upgrade that opening the database at `path` for writing
    /// would run, as (from, to) versions: none for a new or current
    /// database, or one that cannot be read (opening it says why).
    pub fn pending_upgrade(path: &Path) -> Option<(i64, i64)> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .ok()?;
        let latest = MIGRATION_ARRAY.len() as i64;
        (version > 0 && version < latest).then_some((version, latest))
    }

    pub(super) fn db_err(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        Error::database(&self.path)
    }

    /// Where this database's keys went, if `migrate-store --to-postgres`
    /// moved them: the node and the server.
    pub fn moved_to_postgres(&self) -> Result<Option<(String, String)>> {
        self.conn
            .query_row("SELECT node, store FROM moved_to_postgres", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(self.db_err())
    }

    /// The last step of a move to PostgreSQL, in one transaction: forget
    /// the keys, database shares and revocations (now in PostgreSQL as
    /// node `node`), and record where they went.
    pub fn finish_move(&mut self, node: &str, store: &str, now: i64) -> Result<()> {
        let deployment = self.deployment.clone();
        let err = Error::database(&self.path);
        let tx = self.conn.transaction().map_err(err)?;
        (|| {
            tx.execute("DELETE FROM db_shares", [])?;
            tx.execute("DELETE FROM keys", [])?;
            tx.execute("DELETE FROM revocations", [])?;
            tx.execute(
                "INSERT INTO moved_to_postgres (singleton, node, deployment, store, at)
                 VALUES (1, ?1, ?2, ?3, ?4)",
                params![node, deployment, store, now],
            )?;
            tx.commit()
        })()
        .map_err(err)?;
        self.checkpoint()
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn insert_share(conn: &Connection, share: &KeyShare) -> rusqlite::Result<()> {
    debug_assert_eq!(share.slot, crate::keys::shamir::Slot::Database);
    let sum = share_format::db_share_checksum(share);
    conn.execute(
        "INSERT INTO db_shares (kid, generation, x, y, checksum) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            share.kid,
            share.generation,
            share.slot.x(),
            &share.y.as_bytes()[..],
            &sum[..]
        ],
    )?;
    Ok(())
}

/// Bring a test connection to the current schema.
#[cfg(test)]
pub fn migrate_for_test(conn: &mut Connection) {
    MIGRATIONS.to_latest(conn).unwrap();
}

impl KeyStore for Database {
    /// The database, for messages.
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    /// The deployment id this database records.
    fn deployment(&self) -> &str {
        &self.deployment
    }

    fn local_file(&self) -> Option<(&Path, FileId)> {
        Some((&self.path, self.identity))
    }

    /// Every key row, oldest first, each validated.
    fn keys(&self) -> Result<Vec<KeyInfo>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT kid, public_key, origin, created_at, activate_at, deactivate_at,
                        retire_at, share_generation, verified, alg, pending_generation
                 FROM keys ORDER BY activate_at, created_at, kid",
            )
            .map_err(self.db_err())?;
        let raw = stmt
            .query_map([], |r| {
                Ok(RawKey {
                    kid: r.get(0)?,
                    public_key: r.get(1)?,
                    origin: r.get(2)?,
                    times: [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
                    share_generation: r.get(7)?,
                    verified: r.get::<_, i64>(8)? == 1,
                    alg: r.get(9)?,
                    pending_generation: r.get(10)?,
                })
            })
            .map_err(self.db_err())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.db_err())?;
        raw.into_iter()
            .map(|k| k.check(&self.describe(), self.legacy_alg))
            .collect()
    }

    /// Whether the database has ever recorded a key.
    fn is_empty(&self) -> Result<bool> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM keys", [], |r| r.get(0))
            .map_err(self.db_err())?;
        Ok(n == 0)
    }

    /// Insert a key row and its database share in one transaction.
    fn insert_key(&mut self, row: &KeyInfo, share: &KeyShare) -> Result<()> {
        debug_assert_eq!(share.slot, Slot::Database);
        let db_err = Error::database(&self.path);
        let tx = self.conn.transaction().map_err(db_err)?;
        tx.execute(
            "INSERT INTO keys (kid, public_key, origin, created_at, activate_at, deactivate_at,
                               retire_at, share_generation, verified, alg)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9)",
            params![
                row.kid,
                row.public_key.bytes(),
                row.origin.as_str(),
                row.created_at,
                row.activate_at,
                row.deactivate_at,
                row.retire_at,
                row.share_generation,
                row.alg.as_str(),
            ],
        )
        .map_err(db_err)?;
        insert_share(&tx, share).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// The commit point of a key creation, in one transaction: mark `kid`
    /// verified (both shares were read back and checked), end the signing
    /// period of the keys it supersedes, and drop the pending keys it
    /// replaces. Before this commit the new key does not exist for anyone;
    /// after it, the old timestamps and the new key hold together.
    fn commit_key(&mut self, kid: &str, supersede: &[Supersede]) -> Result<()> {
        let db_err = Error::database(&self.path);
        let tx = self.conn.transaction().map_err(db_err)?;
        let n = tx
            .execute("UPDATE keys SET verified = 1 WHERE kid = ?1", [kid])
            .map_err(db_err)?;
        if n != 1 {
            return Err(Error::KeyStore(format!(
                "database {}: key {kid} vanished before its creation was committed",
                self.path.display()
            )));
        }
        for s in supersede {
            tx.execute(
                "UPDATE keys SET activate_at = ?2, deactivate_at = ?3, retire_at = ?4
                 WHERE kid = ?1",
                params![s.kid, s.activate_at, s.deactivate_at, s.retire_at],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    /// Record that `kid` is being re-split into `generation` (its current
    /// generation + 1), durably, before that generation's file share is
    /// written: a file share of a generation ahead of the database is then
    /// known to be an interrupted re-split's, never taken for one.
    fn begin_reshare(&self, kid: &str, generation: u32) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE keys SET pending_generation = ?2
                 WHERE kid = ?1 AND share_generation + 1 = ?2 AND verified = 1",
                params![kid, generation],
            )
            .map_err(self.db_err())?;
        if n != 1 {
            return Err(Error::KeyStore(format!(
                "database {}: key {kid} cannot be re-split into generation {generation}",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Forget an interrupted re-split (its file share is gone).
    fn clear_pending_generation(&self, kid: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE keys SET pending_generation = NULL WHERE kid = ?1",
                [kid],
            )
            .map_err(self.db_err())?;
        Ok(())
    }

    /// The commit point of a re-split: the new database share becomes the
    /// key's current generation and the old one is deleted, in one
    /// transaction. (The new file share was written before; the old one is
    /// removed after.)
    fn commit_reshare(&mut self, share: &KeyShare, old_generation: u32) -> Result<()> {
        let db_err = Error::database(&self.path);
        let tx = self.conn.transaction().map_err(db_err)?;
        insert_share(&tx, share).map_err(db_err)?;
        let n = tx
            .execute(
                "UPDATE keys SET share_generation = ?2, pending_generation = NULL
                 WHERE kid = ?1 AND share_generation = ?3",
                params![share.kid, share.generation, old_generation],
            )
            .map_err(db_err)?;
        if n != 1 {
            return Err(Error::KeyStore(format!(
                "database {}: key {} is not at share generation {old_generation}",
                self.path.display(),
                share.kid
            )));
        }
        tx.execute(
            "DELETE FROM db_shares WHERE kid = ?1 AND generation <> ?2",
            params![share.kid, share.generation],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        self.checkpoint()
    }

    /// Put back a lost or damaged database share at the key's current
    /// generation (recovery from the offline share).
    fn restore_db_share(&mut self, share: &KeyShare) -> Result<()> {
        let db_err = Error::database(&self.path);
        let tx = self.conn.transaction().map_err(db_err)?;
        tx.execute(
            "DELETE FROM db_shares WHERE kid = ?1 AND generation = ?2",
            params![share.kid, share.generation],
        )
        .map_err(db_err)?;
        insert_share(&tx, share).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        self.checkpoint()
    }

    /// Delete a key and its database share (an interrupted creation), then
    /// checkpoint so that the share's bytes leave the WAL too.
    fn discard_key(&self, kid: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM keys WHERE kid = ?1", [kid])
            .map_err(self.db_err())?;
        self.checkpoint()
    }

    /// Delete every database share of `kid` (the key stopped signing).
    /// Returns whether there was one.
    fn delete_db_shares(&self, kid: &str) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM db_shares WHERE kid = ?1", [kid])
            .map_err(self.db_err())?;
        if n > 0 {
            self.checkpoint()?;
        }
        Ok(n > 0)
    }

    /// The kids that still have a database share stored.
    fn kids_with_db_shares(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT kid FROM db_shares")
            .map_err(self.db_err())?;
        let kids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.db_err())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.db_err())?;
        Ok(kids)
    }

    /// Whether some key has no recorded `alg` label (made before schema 3).
    fn has_legacy_rows(&self) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM keys WHERE alg IS NULL)",
                [],
                |r| r.get(0),
            )
            .map_err(self.db_err())
    }

    /// Record the label of keys made before labels were recorded.
    fn record_legacy_alg(&self) -> Result<usize> {
        self.conn
            .execute(
                "UPDATE keys SET alg = ?1 WHERE alg IS NULL",
                [self.legacy_alg.as_str()],
            )
            .map_err(self.db_err())
    }

    /// The database share of `row` at its current generation, checked: x = 2,
    /// 32 bytes, checksum intact.
    fn db_share(&self, row: &KeyInfo) -> Result<KeyShare> {
        let found = self
            .conn
            .query_row(
                "SELECT x, y, checksum FROM db_shares WHERE kid = ?1 AND generation = ?2",
                params![row.kid, row.share_generation],
                |r| {
                    Ok(RawShare {
                        x: r.get(0)?,
                        y: zeroize::Zeroizing::new(r.get(1)?),
                        checksum: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(self.db_err())?;
        check_share(found, row, &self.describe(), &self.deployment)
    }

    /// Record revocations in one transaction. A revocation only grows: a
    /// second one of the same jti or sub is another row, and the set in
    /// force keeps the later `before` and `expires_at`.
    fn add_revocations(&self, rows: &[Revocation], now: i64) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(self.db_err())?;
        {
            let mut stmt = tx
                .prepare_cached(
                    // Appended (schema 6): a second one of the same value is
                    // a second row, and readers keep the latest.
                    "INSERT INTO revocations (kind, value, before, expires_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(self.db_err())?;
            for r in rows {
                let (kind, value, before, expires_at) = r.columns();
                stmt.execute(params![kind, value, before, expires_at, now])
                    .map_err(self.db_err())?;
            }
        }
        tx.commit().map_err(self.db_err())
    }

    /// Delete the revocations kept until before `before`.
    fn purge_revocations(&self, before: i64) -> Result<u64> {
        self.conn
            .execute("DELETE FROM revocations WHERE expires_at < ?1", [before])
            .map(|n| n as u64)
            .map_err(self.db_err())
    }

    /// The revocations, one at a time; those kept until before `before`
    /// are purged first.
    fn for_each_revocation(&self, before: i64, f: &mut dyn FnMut(Revocation)) -> Result<()> {
        self.purge_revocations(before)?;
        let mut stmt = self
            .conn
            .prepare("SELECT kind, value, before, expires_at FROM revocations")
            .map_err(self.db_err())?;
        let mut rows = stmt.query([]).map_err(self.db_err())?;
        while let Some(r) = rows.next().map_err(self.db_err())? {
            let kind: String = r.get(0).map_err(self.db_err())?;
            let value: String = r.get(1).map_err(self.db_err())?;
            let before: Option<i64> = r.get(2).map_err(self.db_err())?;
            let expires_at: i64 = r.get(3).map_err(self.db_err())?;
            if let Some(rev) = Revocation::from_columns(&kind, value, before, expires_at) {
                f(rev);
            }
        }
        Ok(())
    }

    /// Truncating WAL checkpoint: with secure_delete, deleted share bytes are
    /// then gone from both the database file and its WAL.
    fn checkpoint(&self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(self.db_err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().unwrap();
    }
}
