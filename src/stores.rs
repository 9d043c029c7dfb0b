//! `stores` opens the two key stores together, under an exclusive lock, so
//! that the daemon and offline admin commands never work on the same
//! stores at once.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::filestore::ShareDir;
use crate::lifecycle::{self, Reconciled};
use crate::store::Store;

pub struct Stores {
    pub dir: ShareDir,
    pub store: Store,
    _lock: File,
}

impl Stores {
    /// Open (creating when `create`) the share directory and the database,
    /// holding `<db>.lock` for as long as the value lives.
    pub fn open(cfg: &Config, create: bool) -> Result<Stores> {
        // Everything we create is private: shares, database, WAL, temp files.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let dir = if create {
            ShareDir::open_or_create(&cfg.shares_dir)?
        } else {
            ShareDir::open(&cfg.shares_dir)?
        };
        let db_dir = match cfg.db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        if !db_dir.exists() {
            if !create {
                return Err(Error::KeyStore(format!(
                    "database directory {} does not exist",
                    db_dir.display()
                )));
            }
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&db_dir)
                .map_err(Error::io("creating database directory", &db_dir))?;
        }
        if !create && !cfg.db.exists() {
            return Err(Error::KeyStore(format!(
                "database {} does not exist (run `splitsign init` first)",
                cfg.db.display()
            )));
        }
        let lock_path = {
            let mut p = cfg.db.clone().into_os_string();
            p.push(".lock");
            PathBuf::from(p)
        };
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(Error::io("opening lock file", &lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                Error::Usage(format!(
                    "the key stores are in use by another splitsign process (lock {} is held)",
                    lock_path.display()
                ))
            },
        )?;
        let store = Store::open(&cfg.db)?;
        Ok(Stores {
            dir,
            store,
            _lock: lock,
        })
    }

    /// Reconcile the stores and log what was cleaned up.
    pub fn reconcile(&self, now: i64) -> Result<Reconciled> {
        let r = lifecycle::reconcile(&self.store, &self.dir, now)?;
        for kid in &r.discarded_incomplete {
            tracing::warn!(%kid, "discarded a key whose creation was interrupted");
        }
        for kid in &r.destroyed_shares_of {
            tracing::info!(%kid, "destroyed the database share of a key that no longer signs");
        }
        for p in &r.removed_orphans {
            tracing::warn!(path = %p.display(), "removed a file share that no signing key owns");
        }
        for p in &r.removed_temps {
            tracing::info!(path = %p.display(), "removed an interrupted temp file");
        }
        for p in &r.foreign {
            tracing::warn!(path = %p.display(), "unexpected file in the share directory (left alone)");
        }
        Ok(r)
    }
}
