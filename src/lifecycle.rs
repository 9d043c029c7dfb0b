//! `lifecycle` runs the sequences that touch both stores: creating a key,
//! reconciling the stores at start, and unsealing the keys into memory.
//!
//! Creating a key (DESIGN, "Key lifecycle"): seed in memory → split → file
//! share written durably → one transaction inserts the key row and the
//! database share → both shares are read back and must rebuild the public
//! key → only then is the row marked verified and may the key be published.
//! A crash at any point leaves either no key or an unverified row, which
//! the next start discards.

use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::filestore::{Entry, ShareDir};
use crate::keyring::{self, KeySet, Published, Signer, State};
use crate::secmem::LockedKey;
use crate::shares::{self, KeyShare, Slot};
use crate::store::{KeyRow, Origin, Store};

/// The current time in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A fresh random seed.
pub fn random_seed() -> Result<Zeroizing<[u8; 32]>> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut seed[..]).map_err(|e| Error::Random(e.to_string()))?;
    Ok(seed)
}

/// The timestamps of a key that activates at `activate_at`.
pub fn schedule(cfg: &Config, created_at: i64, activate_at: i64) -> (i64, i64) {
    let deactivate_at = activate_at + cfg.rotation_interval.as_secs() as i64;
    // No token outlives its key's publication: retire only after the last
    // token the key may sign has expired (plus clock leeway).
    let retire_at = deactivate_at + cfg.max_ttl.as_secs() as i64 + cfg.leeway.as_secs() as i64;
    debug_assert!(created_at <= activate_at);
    (deactivate_at, retire_at)
}

/// Create a key from `seed`, store its shares, read them back and check
/// them. With `recovery`, also write the offline share (x = 3) there.
pub fn create_key(
    store: &mut Store,
    dir: &ShareDir,
    cfg: &Config,
    seed: &Zeroizing<[u8; 32]>,
    origin: Origin,
    now: i64,
    recovery: Option<&Path>,
) -> Result<KeyRow> {
    if let Some(p) = recovery
        && p.exists()
    {
        return Err(Error::Usage(format!(
            "recovery share {} already exists; choose a new path",
            p.display()
        )));
    }
    let public_key = SigningKey::from_bytes(seed).verifying_key().to_bytes();
    let kid = shares::thumbprint(&public_key);
    if store.keys()?.iter().any(|k| k.kid == kid) {
        return Err(Error::Usage(format!(
            "key {kid} is already in the database"
        )));
    }
    let (deactivate_at, retire_at) = schedule(cfg, now, now);
    let row = KeyRow {
        kid: kid.clone(),
        public_key,
        origin,
        created_at: now,
        activate_at: now,
        deactivate_at,
        retire_at,
        share_generation: 1,
        verified: false,
    };
    let split = shares::split(seed);
    let share = |slot, y| KeyShare {
        kid: kid.clone(),
        generation: 1,
        slot,
        public_key,
        y,
    };
    let file_share = share(Slot::File, split.file);
    let db_share = share(Slot::Database, split.database);
    let recovery_share = share(Slot::Recovery, split.recovery);

    // 1. File share, durably.
    let file_path = dir.write_new(&file_share)?;
    // 2. Key row + database share, one transaction. On failure the file is
    //    an orphan: remove it now (the next start would, too).
    if let Err(e) = store.insert_key(&row, &db_share) {
        let _ = dir.destroy(&file_path);
        return Err(e);
    }
    // 3. Read both back from the stores and rebuild.
    let check = || -> Result<()> {
        let f = dir.read(&kid, 1)?;
        let d = store.db_share(&row)?;
        shares::recover(&f, &d).map_err(|_| Error::SharesMismatch {
            kid: kid.clone(),
            file: file_path.clone(),
            db: store.path().to_owned(),
        })?;
        if let Some(p) = recovery {
            crate::filestore::write_recovery(p, &recovery_share)?;
        }
        store.mark_verified(&kid)
    };
    if let Err(e) = check() {
        let _ = store.discard_key(&kid);
        let _ = dir.destroy(&file_path);
        return Err(e);
    }
    Ok(KeyRow {
        verified: true,
        ..row
    })
}

/// What reconciliation did, for the log.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub discarded_incomplete: Vec<String>,
    pub destroyed_shares_of: Vec<String>,
    pub removed_orphans: Vec<std::path::PathBuf>,
    pub removed_temps: Vec<std::path::PathBuf>,
    pub foreign: Vec<std::path::PathBuf>,
}

/// Bring the two stores into agreement before anything is unsealed: drop
/// interrupted creations, temp files and file shares that no signing key
/// owns. It never touches the shares of a key that may sign.
pub fn reconcile(store: &Store, dir: &ShareDir, now: i64) -> Result<Reconciled> {
    let mut done = Reconciled::default();
    let rows = store.keys()?;
    let entries = dir.list()?;
    let share_files = entries
        .iter()
        .filter(|e| matches!(e, Entry::Share { .. }))
        .count();
    // A database that has never recorded a key, beside a share directory
    // that holds shares, is most likely the wrong database. Deleting those
    // shares as orphans could destroy the real key: refuse instead.
    if rows.is_empty() && share_files > 0 {
        return Err(Error::KeyStore(format!(
            "database {} records no keys, but share directory {} holds {share_files} share \
             file(s). Is the database path right? Nothing was deleted; move the share files \
             away to start a new deployment",
            store.path().display(),
            dir.path().display()
        )));
    }
    for row in rows.iter().filter(|r| !r.verified) {
        store.discard_key(&row.kid)?;
        done.discarded_incomplete.push(row.kid.clone());
    }
    // A key that no longer signs needs no private part: its database share
    // goes (secure_delete + checkpoint); its file share goes below.
    for row in rows
        .iter()
        .filter(|r| r.verified && !keyring::state(r, now).needs_shares())
    {
        if store.delete_db_shares(&row.kid)? {
            done.destroyed_shares_of.push(row.kid.clone());
        }
    }
    for entry in entries {
        match entry {
            Entry::Temp(path) => {
                dir.destroy(&path)?;
                done.removed_temps.push(path);
            }
            Entry::Share {
                kid,
                generation,
                path,
            } => {
                let owned = rows.iter().any(|r| {
                    r.verified
                        && r.kid == kid
                        && r.share_generation == generation
                        && keyring::state(r, now).needs_shares()
                });
                if !owned {
                    dir.destroy(&path)?;
                    done.removed_orphans.push(path);
                }
            }
            Entry::Foreign(path) => done.foreign.push(path),
            Entry::Known(_) => {}
        }
    }
    Ok(done)
}

/// Read both shares of `row`, rebuild its key and check it against the
/// public key stored with both. Fails closed with an error naming the store.
pub fn unseal_key(store: &Store, dir: &ShareDir, row: &KeyRow) -> Result<SigningKey> {
    let file = dir.read(&row.kid, row.share_generation)?;
    let db = store.db_share(row)?;
    if file.public_key != row.public_key {
        return Err(Error::FileShare {
            path: dir.share_path(&row.kid, row.share_generation),
            reason: format!("records a different public key than key row {}", row.kid),
        });
    }
    shares::recover(&file, &db).map_err(|_| Error::SharesMismatch {
        kid: row.kid.clone(),
        file: dir.share_path(&row.kid, row.share_generation),
        db: store.path().to_owned(),
    })
}

/// Unseal every key that may sign and build the in-memory key set.
/// Returns the set and, for the log, the kids whose pages could not be
/// locked.
pub fn load_keyset(
    store: &Store,
    dir: &ShareDir,
    cfg: &Config,
    now: i64,
) -> Result<(KeySet, Vec<(String, std::io::Error)>)> {
    let mut signer = None;
    let mut pending = Vec::new();
    let mut published = Vec::new();
    let mut unlocked = Vec::new();
    for row in store.keys()?.into_iter().filter(|r| r.verified) {
        let state = keyring::state(&row, now);
        if state.needs_shares() {
            let (key, lock_err) = LockedKey::new(unseal_key(store, dir, &row)?);
            if let Some(e) = lock_err {
                unlocked.push((row.kid.clone(), e));
            }
            let s = Arc::new(Signer::new(&row, key, cfg.alg));
            if state == State::Active {
                if signer.is_some() {
                    return Err(Error::KeyStore(format!(
                        "database {}: more than one key is active now (second: {})",
                        store.path().display(),
                        row.kid
                    )));
                }
                signer = Some(s);
            } else {
                pending.push(s);
            }
        }
        if state.is_published() {
            let key = ed25519_dalek::VerifyingKey::from_bytes(&row.public_key).map_err(|_| {
                Error::KeyRow {
                    kid: row.kid.clone(),
                    db: store.path().to_owned(),
                    reason: "public key is not a valid Ed25519 point".into(),
                }
            })?;
            published.push(Published { row, key });
        }
    }
    Ok((KeySet::new(signer, pending, published, cfg.alg), unlocked))
}
