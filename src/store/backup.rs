//! `backup` copies the database store consistently with SQLite's online
//! backup API, beside a running daemon. It never holds a file share.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::Database;
use crate::error::{Error, Result};

/// What `splitsign backup` wrote.
#[derive(Debug)]
pub struct BackupSummary {
    pub deployment: String,
    pub keys: usize,
    pub revocations: i64,
    pub audit_records: i64,
    pub schema: i64,
}

impl Database {
    /// Write a consistent copy of this database to `dest`, a new file (mode
    /// 0600; an existing file is never replaced), with SQLite's online
    /// backup API: it works beside a running daemon, which may go on
    /// writing. The copy is made under a temp name in `dest`'s directory,
    /// cleaned of interrupted key creations (an unfinished key is not a key
    /// to restore), checked, made self-contained (nothing left in a WAL),
    /// fsync'ed, and only then renamed to `dest`.
    pub fn backup(&self, dest: &Path) -> Result<BackupSummary> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = crate::config::dir_of(dest).to_owned();
        let name = dest
            .file_name()
            .ok_or_else(|| Error::Usage(format!("{} names no file", dest.display())))?;
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(Error::Usage(format!(
                "{} already exists; a backup never replaces a file",
                dest.display()
            )));
        }
        let tmp = super::temp_path(&dir, &name.to_string_lossy())?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(Error::io("creating backup", &tmp))?;
        let result = self.backup_into(&tmp).and_then(|summary| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .and_then(|()| {
                    rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        &tmp,
                        rustix::fs::CWD,
                        dest,
                        rustix::fs::RenameFlags::NOREPLACE,
                    )
                    .map_err(std::io::Error::from)
                })
                .and_then(|()| std::fs::File::open(&dir)?.sync_all())
                .map_err(Error::io("writing backup", dest))?;
            Ok(summary)
        });
        if result.is_err() {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(crate::config::with_suffix(&tmp, suffix));
            }
        }
        result
    }

    fn backup_into(&self, tmp: &Path) -> Result<BackupSummary> {
        use rusqlite::backup::{Backup, StepResult};
        let tmp_err = Error::database(tmp);
        {
            let mut dst = Connection::open(tmp).map_err(tmp_err)?;
            let backup = Backup::new(&self.conn, &mut dst).map_err(self.db_err())?;
            // All pages in one step: one read transaction on the source, so
            // the copy is one consistent state. A writer holding the lock
            // (the daemon's commit) makes the step busy; wait and retry.
            let mut tries = 0;
            loop {
                match backup.step(-1).map_err(self.db_err())? {
                    StepResult::Done => break,
                    _ if tries < 100 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        return Err(Error::KeyStore(format!(
                            "database {} stayed busy; the backup was not made",
                            self.path.display()
                        )));
                    }
                }
            }
        }
        let conn = Connection::open(tmp).map_err(tmp_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(tmp_err)?;
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(tmp_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(tmp_err)?;
        conn.execute("DELETE FROM keys WHERE verified = 0", [])
            .map_err(tmp_err)?;
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(tmp_err)?;
        if check != "ok" {
            return Err(Error::KeyStore(format!(
                "the copy of {} fails SQLite's integrity check ({check}); no backup was made",
                self.path.display()
            )));
        }
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
        let summary = BackupSummary {
            deployment: conn
                .query_row("SELECT id FROM deployment", [], |r| r.get(0))
                .map_err(tmp_err)?,
            keys: count("SELECT count(*) FROM keys").map_err(tmp_err)? as usize,
            revocations: count("SELECT count(*) FROM revocations").map_err(tmp_err)?,
            audit_records: count("SELECT count(*) FROM audit").map_err(tmp_err)?,
            schema: count("PRAGMA user_version").map_err(tmp_err)?,
        };
        // Everything into the file itself: the copy is one file, in WAL
        // mode like the original, with no -wal beside it once closed.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(tmp_err)?;
        conn.close().map_err(|(_, e)| tmp_err(e))?;
        Ok(summary)
    }
}
