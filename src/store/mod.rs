//! `store` keeps what lives on disk, never a whole key: the share
//! directory (`share_dir`: the file shares, x = 1); the database side
//! behind one trait (`keystore`: `KeyStore` and its value types, and the
//! checks every row read back gets), kept in SQLite on one host (`sqlite`:
//! key rows, the database shares, x = 2, revocations) or in PostgreSQL for
//! a cluster (`postgres`; `membership`: the owner's members and bounds,
//! other nodes' rows judged one by one; `seen`: the revocations a node has
//! seen); the audit chain (`audit_log`); `backup`. [`Stores`] opens them
//! together under one lock (`lock`: by the stores' identity, not their
//! paths), so that the daemon and offline admin commands never work on the
//! same stores at once.

pub mod audit_log;
pub mod backup;
pub mod keystore;
pub mod lock;
pub mod membership;
pub mod postgres;
pub mod seen;
pub mod share_dir;
pub mod sqlite;
pub mod tpm;

pub use keystore::{KeyStore, NodeKey, Revocation, Supersede};
pub use lock::StoreLock;
pub use postgres::Postgres;
pub use share_dir::{Entry, FileId, ShareDir, temp_path};
pub use sqlite::Database;

use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use crate::config::Config;
use crate::error::{Error, Result};

/// The share directory and the key store of one deployment, and the local
/// SQLite database (the audit log; in a single-host deployment, the key
/// store too), held under their [`StoreLock`] for as long as the value lives.
pub struct Stores {
    pub shares: ShareDir,
    pub keys: Box<dyn KeyStore>,
    pub local: Database,
    /// The cluster's store, when `postgres` is set (also `keys`).
    pub cluster: Option<Arc<Postgres>>,
    _lock: StoreLock,
}

/// This host's stores: the share directory and the local SQLite database,
/// under their [`StoreLock`]. What [`Stores`] is made of; `migrate-store` works on
/// it directly.
pub struct LocalStores {
    pub shares: ShareDir,
    pub local: Database,
    lock: StoreLock,
}

impl LocalStores {
    /// Open (creating when `create`) the share directory and the local
    /// database, holding their [`StoreLock`] for as long as the value lives.
    pub fn open(cfg: &Config, create: bool) -> Result<LocalStores> {
        // Everything we create is private: shares, database, WAL, temp files.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let dir = if create {
            ShareDir::open_or_create(&cfg.paths.shares_dir)?.with_sealing(&cfg.sealing)
        } else {
            ShareDir::open(&cfg.paths.shares_dir)?.with_sealing(&cfg.sealing)
        };
        let db_dir = crate::config::dir_of(&cfg.paths.db).to_owned();
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
        if !cfg.paths.db.exists() {
            if !create {
                return Err(Error::KeyStore(format!(
                    "database {} does not exist",
                    cfg.paths.db.display()
                )));
            }
            // A new database beside shares is a wrong path (or a lost
            // database), never a new deployment: create nothing.
            let shares = share_files(&dir)?;
            if !shares.is_empty() && cfg.cluster.postgres.is_none() {
                return Err(Error::StoresDisagree {
                    db: cfg.paths.db.display().to_string(),
                    shares: cfg.paths.shares_dir.clone(),
                    problems: vec![format!(
                        "database {} does not exist, but the share directory holds share \
                         file(s) {}: is the database path right? To start a new deployment, \
                         move the share files away",
                        cfg.paths.db.display(),
                        shares.join(", ")
                    )],
                });
            }
        }
        refuse_swapped(cfg, &dir, &db_dir)?;
        let lock = StoreLock::take(&cfg.paths.db, &cfg.paths.shares_dir)?;
        let local = Database::open(&cfg.paths.db, cfg.tokens.alg.legacy())?;
        Ok(LocalStores {
            shares: dir,
            local,
            lock,
        })
    }
}

impl Stores {
    /// Open (creating when `create`) the share directory, the local
    /// database and the key store (PostgreSQL when `postgres` is set, else
    /// the local database), holding their [`StoreLock`] for as long as the value
    /// lives.
    pub fn open(cfg: &Config, create: bool) -> Result<Stores> {
        let LocalStores {
            shares: dir,
            local,
            lock,
        } = LocalStores::open(cfg, create)?;
        let (keys, cluster) = match &cfg.cluster.postgres {
            None => {
                if let Some((node, store)) = local.moved_to_postgres()? {
                    return Err(Error::KeyStore(format!(
                        "the keys of database {} moved to PostgreSQL ({store}) as node {node}: \
                         set `postgres` (and `node = \"{node}\"`) in the config",
                        cfg.paths.db.display()
                    )));
                }
                let keys: Box<dyn KeyStore> =
                    Box::new(Database::open(&cfg.paths.db, cfg.tokens.alg.legacy())?);
                (keys, None)
            }
            Some(settings) => {
                let pg = open_cluster(cfg, settings, &local, &dir, create)?;
                let keys: Box<dyn KeyStore> = Box::new(Arc::clone(&pg));
                (keys, Some(pg))
            }
        };
        Ok(Stores {
            shares: dir,
            keys,
            local,
            cluster,
            _lock: lock,
        })
    }

    /// Whether the store paths still name the files opened: a database
    /// deleted or replaced, or a share directory replaced, under a running
    /// process is refused rather than written to.
    pub fn still_in_place(&self) -> std::result::Result<(), String> {
        self.local.identity().still_at(self.local.path())?;
        if let Some((path, id)) = self.keys.local_file() {
            id.still_at(path)?;
        }
        self.shares.identity().still_at(self.shares.path())
    }
}

/// The share files in `dir`, by path.
fn share_files(dir: &ShareDir) -> Result<Vec<String>> {
    Ok(dir
        .list()?
        .into_iter()
        .filter_map(|e| match e {
            Entry::Share { path, .. } => Some(path.display().to_string()),
            _ => None,
        })
        .collect())
}

/// Connect to the cluster's PostgreSQL as this node. The local database
/// must hold no keys (they belong in PostgreSQL: `migrate-store`). A node
/// PostgreSQL does not know is registered (with `create`) only if the
/// share directory holds no share: share files beside an unknown node mean
/// a wrong `node` or server, never a new node.
fn open_cluster(
    cfg: &Config,
    settings: &crate::config::PostgresSettings,
    local: &Database,
    dir: &ShareDir,
    create: bool,
) -> Result<Arc<Postgres>> {
    if !local.is_empty()? {
        return Err(Error::KeyStore(format!(
            "`postgres` is set, but the local database {} still holds keys: move them with \
             `splitsign migrate-store --to-postgres` (it finishes an interrupted move too)",
            cfg.paths.db.display()
        )));
    }
    let mut pg = Postgres::open(settings, &cfg.cluster.node)?;
    if !pg.registered() {
        let shares = share_files(dir)?;
        if !shares.is_empty() {
            return Err(Error::StoresDisagree {
                db: pg.describe(),
                shares: cfg.paths.shares_dir.clone(),
                problems: vec![format!(
                    "PostgreSQL has no node {}, but the share directory holds share file(s) {}: \
                     are `node` and `postgres` right? To make this host a new node, move the \
                     share files away",
                    cfg.cluster.node,
                    shares.join(", ")
                )],
            });
        }
        if !create {
            return Err(Error::KeyStore(format!(
                "{} has no node {} (run `splitsign init` on this host first)",
                pg.describe(),
                cfg.cluster.node
            )));
        }
        pg.register(None)?;
    }
    Ok(Arc::new(pg))
}

/// A store found in the other's directory is refused, never used: a SQLite
/// database in the share directory, or a share file in the database's
/// directory (the layout splitsign 0.1 left under systemd is adopted by
/// the config instead, see `Config::legacy_layout`).
fn refuse_swapped(cfg: &Config, dir: &ShareDir, db_dir: &std::path::Path) -> Result<()> {
    let mut found = Vec::new();
    for entry in dir.list()? {
        if let Entry::Foreign(path) = entry
            && is_sqlite(&path)
        {
            found.push(format!(
                "the share directory {} holds a SQLite database ({})",
                cfg.paths.shares_dir.display(),
                path.display()
            ));
        }
    }
    if let Ok(rd) = std::fs::read_dir(db_dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".share") {
                found.push(format!(
                    "the database directory {} holds a share file ({})",
                    db_dir.display(),
                    e.path().display()
                ));
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    found.push(
        "the stores are swapped or mixed: each store must be in its own directory (the file \
         shares in `shares_dir`, the database in the directory of `db`). Move the files back; \
         nothing was changed"
            .into(),
    );
    Err(Error::StoresDisagree {
        db: cfg.paths.db.display().to_string(),
        shares: cfg.paths.shares_dir.clone(),
        problems: found,
    })
}

/// Whether `path` is a SQLite database file (by its header).
fn is_sqlite(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"SQLite format 3\0")
}
