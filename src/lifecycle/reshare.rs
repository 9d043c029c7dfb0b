//! `reshare`: re-splitting a key into a new share generation (its intent
//! recorded first), resealing (the same file share written again, now
//! sealed to the TPM or in clear), and rebuilding a lost
//! file or database share from the other store and the offline recovery
//! share.

use std::path::Path;

use crate::error::{Error, Result};
use crate::keys::shamir;
use crate::keys::shamir::{KeyShare, Slot};
use crate::keys::{KeyInfo, SecretKey};
use crate::store::KeyStore;
use crate::store::ShareDir;
use crate::store::share_dir;

use super::MAX_GENERATIONS;
use super::create::refuse_existing_recovery;
use super::unseal::{rebuild, unseal_key};

/// Re-split `key` (the key of `row`) into a new share generation, so that
/// shares stolen before are useless. With `recovery`, also write a new
/// offline share (the old one stops working). Returns the new generation.
pub fn reshare(
    database: &mut dyn KeyStore,
    dir: &ShareDir,
    row: &KeyInfo,
    key: &SecretKey,
    recovery: Option<&Path>,
) -> Result<u32> {
    check_reshare(row, key, recovery)?;
    let generation = row.share_generation + 1;
    let split = shamir::split(&key.secret());
    let share = |slot, y| KeyShare {
        deployment: Some(database.deployment().to_owned()),
        kid: row.kid.clone(),
        generation,
        slot,
        alg: Some(row.alg),
        public_key: row.public_key,
        y,
    };
    let file_share = share(Slot::File, split.file);
    let db_share = share(Slot::Database, split.database);
    let recovery_share = share(Slot::Recovery, split.recovery);

    // The intent first: a file share of the next generation is then known
    // to be this re-split's if it is interrupted.
    database.begin_reshare(&row.kid, generation)?;
    let new_file = match dir.write_new(&file_share) {
        Ok(p) => p,
        Err(e) => {
            let _ = database.clear_pending_generation(&row.kid);
            return Err(e);
        }
    };
    let staged = (|| -> Result<()> {
        // The new pair must rebuild the key before it replaces the old one.
        let back = dir.read(&row.kid, generation)?;
        shamir::recover(&back, &db_share).map_err(|_| Error::SharesMismatch {
            kid: row.kid.clone(),
            file: new_file.clone(),
            db: database.describe(),
        })?;
        if let Some(p) = recovery {
            share_dir::write_recovery(p, &recovery_share)?;
        }
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = dir.destroy(&new_file);
        let _ = database.clear_pending_generation(&row.kid);
        return Err(e);
    }
    switch_generation(database, dir, row, &db_share, generation)?;
    Ok(generation)
}

/// What a reseal did to a key's file share.
#[derive(Debug, PartialEq, Eq)]
pub enum Resealed {
    /// It already was as the config says.
    AsIs,
    /// Rewritten as the config says.
    Rewritten,
}

/// Reseal `row`'s key: write its current file share again, unchanged, as
/// `dir` writes shares (sealed to the TPM, or in clear), in place of the
/// old file: a temp file, fsync, a rename over the old one, fsync of the
/// directory. A crash leaves the old file or the new one, which hold the
/// same share of the same generation, so the database share and the
/// offline recovery share stay as they are and valid (a new generation
/// would tie the recovery share to an old one; a new split would spend a
/// re-split and void the recovery share). The new file is read back (and
/// unsealed) and must rebuild the key. A key whose file share already is
/// as configured is left alone.
pub fn reseal(database: &dyn KeyStore, dir: &ShareDir, row: &KeyInfo) -> Result<Resealed> {
    let (mut file, sealed) = dir.read_sealed(&row.kid, row.share_generation)?;
    if sealed.is_some() == dir.seals() {
        return Ok(Resealed::AsIs);
    }
    // The pair rebuilds the key before anything is written (and so the
    // row's label fits the file's key).
    rebuild(database, dir, row, &file)?;
    // A file of format 1 or 2 has no label: it is written as format 3
    // with its row's.
    file.alg.get_or_insert(row.alg);
    dir.rewrite(&file)?;
    unseal_key(database, dir, row)?;
    Ok(Resealed::Rewritten)
}

/// The checks before a re-split: generation cap, recovery path, key in memory.
fn check_reshare(row: &KeyInfo, key: &SecretKey, recovery: Option<&Path>) -> Result<()> {
    if row.share_generation >= MAX_GENERATIONS {
        return Err(Error::Usage(format!(
            "key {} has been split {} times, the cap (each split of the same key leaks a \
             little, RUSTSEC-2024-0398); rotate instead: `splitsign rotate`",
            row.kid, row.share_generation
        )));
    }
    refuse_existing_recovery(recovery)?;
    if key.public_key() != row.public_key {
        return Err(Error::KeyStore(format!(
            "the key in memory is not key {}",
            row.kid
        )));
    }
    Ok(())
}

/// The commit point: switch generation, rebuild, destroy the old file share.
fn switch_generation(
    database: &mut dyn KeyStore,
    dir: &ShareDir,
    row: &KeyInfo,
    db_share: &KeyShare,
    generation: u32,
) -> Result<()> {
    database.commit_reshare(db_share, row.share_generation)?;
    let new_row = KeyInfo {
        share_generation: generation,
        pending_generation: None,
        ..row.clone()
    };
    unseal_key(database, dir, &new_row)?;
    dir.destroy(&dir.share_path(&row.kid, row.share_generation))
}

/// Which store `recover` rebuilt.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovered {
    Nothing,
    FileShare,
    DatabaseShare,
}

/// Rebuild a lost or damaged file share or database share of a key from the
/// other store plus the offline recovery share (x = 3), after the
/// public-key check. The rebuilt share is the same point of the same split,
/// so the recovery share stays valid.
pub fn recover(
    database: &mut dyn KeyStore,
    dir: &ShareDir,
    recovery_path: &Path,
    now: i64,
) -> Result<(String, Recovered)> {
    let rec = read_recovery(database, recovery_path)?;
    let rows = database.keys()?;
    let row = key_to_recover(&rows, &rec, recovery_path, now)?;
    let file = dir.read(&row.kid, row.share_generation);
    let db = database.db_share(row);
    let mismatch = || Error::SharesMismatch {
        kid: row.kid.clone(),
        file: recovery_path.to_owned(),
        db: database.describe(),
    };
    let file_ok = file
        .as_ref()
        .ok()
        .filter(|f| shamir::recover(f, &rec).is_ok());
    let db_ok = db
        .as_ref()
        .ok()
        .filter(|d| shamir::recover(d, &rec).is_ok());
    match (file_ok, db_ok) {
        (Some(_), Some(_)) => Ok((row.kid.clone(), Recovered::Nothing)),
        (None, Some(d)) => {
            let y = shamir::derive(d, &rec, Slot::File).map_err(|_| mismatch())?;
            let share = rebuilt_share(database.deployment(), row, Slot::File, y);
            // Staged (and sealed) first: a TPM that cannot seal leaves the
            // old file as it was.
            let staged = dir.stage(&share)?;
            dir.replace_unreadable(staged)?;
            unseal_key(database, dir, row)?;
            Ok((row.kid.clone(), Recovered::FileShare))
        }
        (Some(f), None) => {
            let y = shamir::derive(f, &rec, Slot::Database).map_err(|_| mismatch())?;
            let share = rebuilt_share(database.deployment(), row, Slot::Database, y);
            database.restore_db_share(&share)?;
            unseal_key(database, dir, row)?;
            Ok((row.kid.clone(), Recovered::DatabaseShare))
        }
        (None, None) => Err(Error::KeyStore(format!(
            "neither store's share of key {} rebuilds the key with recovery share {}; \
             it cannot be recovered. `splitsign rotate` makes a new key (tokens of the old \
             one keep verifying until they expire)",
            row.kid,
            recovery_path.display()
        ))),
    }
}

/// The recovery share at `recovery_path`, if of this deployment.
fn read_recovery(database: &dyn KeyStore, recovery_path: &Path) -> Result<KeyShare> {
    let rec = share_dir::read_share_file(recovery_path, Slot::Recovery)?;
    if let Some(d) = &rec.deployment
        && d != database.deployment()
    {
        return Err(Error::Usage(format!(
            "recovery share {} belongs to deployment {d}, not to this database's ({})",
            recovery_path.display(),
            database.deployment()
        )));
    }
    Ok(rec)
}

/// The key `rec` rebuilds: verified, still needing shares, at its generation.
fn key_to_recover<'a>(
    rows: &'a [KeyInfo],
    rec: &KeyShare,
    recovery_path: &Path,
    now: i64,
) -> Result<&'a KeyInfo> {
    let Some(row) = rows.iter().find(|r| r.kid == rec.kid && r.verified) else {
        return Err(Error::Usage(format!(
            "recovery share {} belongs to key {}, which the database does not hold",
            recovery_path.display(),
            rec.kid
        )));
    };
    if !crate::keys::state(row, now).needs_shares() {
        return Err(Error::Usage(format!(
            "key {} no longer signs (it is {}); there is nothing to recover",
            row.kid,
            crate::keys::state(row, now).as_str()
        )));
    }
    if rec.generation != row.share_generation {
        return Err(Error::Usage(format!(
            "recovery share {} is of share generation {}, but key {} is at generation {} \
             (it was re-split since); it cannot rebuild this key",
            recovery_path.display(),
            rec.generation,
            row.kid,
            row.share_generation
        )));
    }
    Ok(row)
}

/// The rebuilt share `y` of `row`'s current generation, in `slot`.
fn rebuilt_share(deployment: &str, row: &KeyInfo, slot: Slot, y: shamir::ShareY) -> KeyShare {
    KeyShare {
        deployment: Some(deployment.to_owned()),
        kid: row.kid.clone(),
        generation: row.share_generation,
        slot,
        alg: Some(row.alg),
        public_key: row.public_key,
        y,
    }
}
