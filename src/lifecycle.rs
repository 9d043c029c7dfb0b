//! `lifecycle` runs the sequences that touch both stores: creating a key,
//! rotating, re-splitting, recovering a lost share, reconciling the stores
//! at start, and unsealing keys into memory. It also decides, as a pure
//! function of the stored timestamps and the time, what is due next.
//!
//! Creating a key (DESIGN, "Key lifecycle"): seed in memory → split → file
//! share written durably → one transaction inserts the key row (unverified)
//! and the database share → both shares are read back and must rebuild the
//! public key → one transaction marks the row verified and, for a rotation,
//! ends the old key's signing period. That last commit is the only moment
//! the set of keys changes; a crash before it leaves an unverified row and
//! perhaps a file, which the next start discards. Activation needs no write
//! at all: a key is active because of its timestamps.
//!
//! Deactivating: the key's database share is deleted (secure_delete and a
//! WAL checkpoint), then its file removed; a crash between leaves a file
//! share no signing key owns, which reconciliation removes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::keys::State;
use crate::keys::keyset::{KeySet, Published, Signer};
use crate::keys::locked::LockedKey;
use crate::keys::schedule::{Due, active, due, schedule};
use crate::keys::shamir;
use crate::keys::shamir::{KeyShare, Slot};
use crate::keys::share_format;
use crate::keys::{KeyInfo, Origin};
use crate::store::share_files;
use crate::store::{Database, Supersede};
use crate::store::{Entry, ShareDir};

/// How many times one key may be split (its share generations). Each split
/// of the same secret with `sharks` 0.5 leaks a little (RUSTSEC-2024-0398:
/// a share rules out one value per secret byte); 16 splits still leave more
/// than 253 bits. Past the cap the answer is a rotation.
pub const MAX_GENERATIONS: u32 = 16;

/// The current wall-clock time in Unix seconds.
pub fn wall_now() -> i64 {
    wall_now_ms().div_euclid(1000)
}

/// The current wall-clock time in Unix milliseconds.
pub fn wall_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The daemon's clock: wall time that never goes backwards. After the
/// system clock is set back, key states keep following the latest time
/// seen, so the active key stays active (and a warning is logged) instead
/// of an older key, whose shares are gone, becoming "active" again.
#[derive(Debug)]
pub struct Clock {
    high: AtomicI64,
    warned_at: AtomicI64,
}

impl Clock {
    /// Start at least at `floor` (the newest key's `created_at`).
    pub fn new(floor: i64) -> Clock {
        Clock {
            high: AtomicI64::new(floor),
            warned_at: AtomicI64::new(i64::MIN),
        }
    }

    pub fn now(&self) -> i64 {
        let wall = wall_now();
        let prev = self.high.fetch_max(wall, Ordering::Relaxed);
        if wall >= prev {
            return wall;
        }
        if prev - wall > 1 && self.warned_at.swap(prev, Ordering::Relaxed) != prev {
            tracing::warn!(
                behind_s = prev - wall,
                "the system clock went backwards; keeping the current keys and using the latest time seen"
            );
        }
        prev
    }
}

/// A fresh random seed.
pub fn random_seed() -> Result<Zeroizing<[u8; 32]>> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut seed[..]).map_err(|e| Error::Random(e.to_string()))?;
    Ok(seed)
}

/// What a new key does to the keys already there.
#[derive(Debug, Default)]
pub struct Creation<'a> {
    pub activate_at: i64,
    pub supersede: Vec<Supersede>,
    /// Pending keys that the new key replaces (deleted in the commit).
    pub drop: Vec<String>,
    pub recovery: Option<&'a Path>,
}

/// A key just created: its row and the key rebuilt from its stored shares.
pub struct NewKey {
    pub row: KeyInfo,
    pub key: SigningKey,
}

/// Create a key from `seed` per `c`; see the module docs for the sequence.
pub fn create_key(
    database: &mut Database,
    dir: &ShareDir,
    cfg: &Config,
    seed: &Zeroizing<[u8; 32]>,
    origin: Origin,
    now: i64,
    c: Creation<'_>,
) -> Result<NewKey> {
    if let Some(p) = c.recovery
        && p.exists()
    {
        return Err(Error::Usage(format!(
            "recovery share {} already exists; choose a new path",
            p.display()
        )));
    }
    let public_key = SigningKey::from_bytes(seed).verifying_key().to_bytes();
    let kid = share_format::thumbprint(&public_key);
    if database.keys()?.iter().any(|k| k.kid == kid) {
        return Err(Error::Usage(format!(
            "key {kid} is already in the database"
        )));
    }
    let (deactivate_at, retire_at) = schedule(cfg, c.activate_at);
    let row = KeyInfo {
        kid: kid.clone(),
        public_key,
        origin,
        created_at: now.min(c.activate_at),
        activate_at: c.activate_at,
        deactivate_at,
        retire_at,
        share_generation: 1,
        pending_generation: None,
        verified: false,
        alg: cfg.alg,
    };
    let split = shamir::split(seed);
    let share = |slot, y| KeyShare {
        deployment: Some(database.deployment().to_owned()),
        kid: kid.clone(),
        generation: 1,
        slot,
        public_key,
        y,
    };
    let file_share = share(Slot::File, split.file);
    let db_share = share(Slot::Database, split.database);
    let recovery_share = share(Slot::Recovery, split.recovery);

    // 1. File share, durably, under a temp name.
    let staged = dir.stage(&file_share)?;
    let file_path = staged.final_path.clone();
    // 2. Key row (unverified) + database share, one transaction.
    if let Err(e) = database.insert_key(&row, &db_share) {
        dir.discard(staged);
        return Err(e);
    }
    // 3. The file share gets its final name, now that the database knows
    // its key; 4. read both back from the stores and rebuild; 5. commit.
    let finish = |database: &mut Database| -> Result<SigningKey> {
        dir.publish(staged)?;
        let key = unseal_key(database, dir, &row)?;
        if let Some(p) = c.recovery {
            share_files::write_recovery(p, &recovery_share)?;
        }
        database.commit_key(&kid, &c.supersede, &c.drop)?;
        Ok(key)
    };
    match finish(database) {
        Ok(key) => Ok(NewKey {
            row: KeyInfo {
                verified: true,
                ..row
            },
            key,
        }),
        Err(e) => {
            let _ = database.discard_key(&kid);
            let _ = dir.destroy(&file_path);
            Err(e)
        }
    }
}

/// Apply what is due: create the next or a replacement key. Returns the
/// key created, if any. Shares of keys that stopped signing are destroyed
/// by [`reconcile`], which the caller runs next.
pub fn run_due(
    database: &mut Database,
    dir: &ShareDir,
    cfg: &Config,
    now: i64,
) -> Result<Option<NewKey>> {
    let rows = database.keys()?;
    let activate_at = match due(&rows, now, cfg) {
        Due::Nothing => return Ok(None),
        Due::Next(t) => t,
        Due::Now => now,
    };
    let seed = random_seed()?;
    let new = create_key(
        database,
        dir,
        cfg,
        &seed,
        Origin::Generated,
        now,
        Creation {
            activate_at,
            ..Creation::default()
        },
    )?;
    Ok(Some(new))
}

/// Rotate now: a new key becomes active at once, pending keys are dropped,
/// and the current key stops signing. Its tokens keep verifying until they
/// expire: its `retire_at` becomes `max(now, latest_exp) + leeway`, where
/// `latest_exp` is the latest `exp` it may have issued, and is never made
/// later than it was. With `emergency`, it is retired at once and its
/// tokens stop verifying. Works without rebuilding the old key, so it is
/// also the way back when a store of the active key is lost.
pub fn rotate_now(
    database: &mut Database,
    dir: &ShareDir,
    cfg: &Config,
    now: i64,
    latest_exp: i64,
    emergency: bool,
) -> Result<(NewKey, Option<String>)> {
    let rows = database.keys()?;
    let old = active(&rows, now).cloned();
    let mut supersede = Vec::new();
    if let Some(o) = &old {
        let end = now.max(o.activate_at);
        let needed = now
            .max(latest_exp)
            .saturating_add(cfg.leeway.as_secs() as i64);
        supersede.push(Supersede {
            kid: o.kid.clone(),
            deactivate_at: end,
            retire_at: if emergency {
                end
            } else {
                o.retire_at.min(needed).max(end)
            },
        });
    }
    let drop = rows
        .iter()
        .filter(|r| r.verified && crate::keys::state(r, now) == State::Pending)
        .map(|r| r.kid.clone())
        .collect();
    let seed = random_seed()?;
    let new = create_key(
        database,
        dir,
        cfg,
        &seed,
        Origin::Generated,
        now,
        Creation {
            activate_at: now,
            supersede,
            drop,
            recovery: None,
        },
    )?;
    Ok((new, old.map(|o| o.kid)))
}

/// Re-split `key` (the key of `row`) into a new share generation, so that
/// shares stolen before are useless. With `recovery`, also write a new
/// offline share (the old one stops working). Returns the new generation.
pub fn reshare(
    database: &mut Database,
    dir: &ShareDir,
    row: &KeyInfo,
    key: &SigningKey,
    recovery: Option<&Path>,
) -> Result<u32> {
    if row.share_generation >= MAX_GENERATIONS {
        return Err(Error::Usage(format!(
            "key {} has been split {} times, the cap (each split of the same key leaks a \
             little, RUSTSEC-2024-0398); rotate instead: `splitsign rotate`",
            row.kid, row.share_generation
        )));
    }
    if let Some(p) = recovery
        && p.exists()
    {
        return Err(Error::Usage(format!(
            "recovery share {} already exists; choose a new path",
            p.display()
        )));
    }
    if key.verifying_key().to_bytes() != row.public_key {
        return Err(Error::KeyStore(format!(
            "the key in memory is not key {}",
            row.kid
        )));
    }
    let generation = row.share_generation + 1;
    let seed = Zeroizing::new(key.to_bytes());
    let split = shamir::split(&seed);
    let share = |slot, y| KeyShare {
        deployment: Some(database.deployment().to_owned()),
        kid: row.kid.clone(),
        generation,
        slot,
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
            db: database.path().to_owned(),
        })?;
        if let Some(p) = recovery {
            share_files::write_recovery(p, &recovery_share)?;
        }
        Ok(())
    })();
    if let Err(e) = staged {
        let _ = dir.destroy(&new_file);
        let _ = database.clear_pending_generation(&row.kid);
        return Err(e);
    }
    // Commit point: the database switches generation in one transaction.
    database.commit_reshare(&db_share, row.share_generation)?;
    let new_row = KeyInfo {
        share_generation: generation,
        pending_generation: None,
        ..row.clone()
    };
    unseal_key(database, dir, &new_row)?;
    dir.destroy(&dir.share_path(&row.kid, row.share_generation))?;
    Ok(generation)
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
    database: &mut Database,
    dir: &ShareDir,
    recovery_path: &Path,
    now: i64,
) -> Result<(String, Recovered)> {
    let rec = share_files::read_share_file(recovery_path, Slot::Recovery)?;
    if let Some(d) = &rec.deployment
        && d != database.deployment()
    {
        return Err(Error::Usage(format!(
            "recovery share {} belongs to deployment {d}, not to this database's ({})",
            recovery_path.display(),
            database.deployment()
        )));
    }
    let rows = database.keys()?;
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
    let file = dir.read(&row.kid, row.share_generation);
    let db = database.db_share(row);
    let mismatch = || Error::SharesMismatch {
        kid: row.kid.clone(),
        file: recovery_path.to_owned(),
        db: database.path().to_owned(),
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
            let share = KeyShare {
                deployment: Some(database.deployment().to_owned()),
                kid: row.kid.clone(),
                generation: row.share_generation,
                slot: Slot::File,
                public_key: row.public_key,
                y,
            };
            dir.destroy(&dir.share_path(&row.kid, row.share_generation))?;
            dir.write_new(&share)?;
            unseal_key(database, dir, row)?;
            Ok((row.kid.clone(), Recovered::FileShare))
        }
        (Some(f), None) => {
            let y = shamir::derive(f, &rec, Slot::Database).map_err(|_| mismatch())?;
            let share = KeyShare {
                deployment: Some(database.deployment().to_owned()),
                kid: row.kid.clone(),
                generation: row.share_generation,
                slot: Slot::Database,
                public_key: row.public_key,
                y,
            };
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

/// What reconciliation will change, worked out by [`survey`] without
/// changing anything, and carried out by [`apply`].
#[derive(Debug, Default)]
pub struct Survey {
    /// Interrupted creations: unverified rows (with their database share).
    pub discard_rows: Vec<String>,
    /// Keys that no longer sign whose database share is still stored.
    pub destroy_db_shares_of: Vec<String>,
    /// File shares to destroy, with why each may go.
    pub destroy_files: Vec<(PathBuf, Leftover)>,
    /// Temp files of interrupted writes.
    pub remove_temps: Vec<PathBuf>,
    /// Keys whose recorded re-split never wrote its file share.
    pub clear_pending: Vec<String>,
    /// Current file shares in format 1, to rewrite with the deployment id.
    pub upgrade_files: Vec<PathBuf>,
    /// Keys made before labels were recorded.
    pub record_legacy_alg: bool,
    /// Files that are no share of ours (left alone, reported).
    pub foreign: Vec<PathBuf>,
}

/// Why reconciliation may remove a file share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftover {
    /// Its key's creation never finished (the row is unverified).
    InterruptedCreation,
    /// Its key no longer signs (the database records it retiring or retired).
    NoLongerSigns,
    /// The generation of a re-split that the database records as begun
    /// and not finished.
    InterruptedReshare,
    /// An older generation of a key whose current generation is present.
    Superseded,
}

impl Leftover {
    fn as_str(self) -> &'static str {
        match self {
            Leftover::InterruptedCreation => "its key's creation was interrupted",
            Leftover::NoLongerSigns => "its key no longer signs",
            Leftover::InterruptedReshare => "it is of an interrupted re-split",
            Leftover::Superseded => "a newer generation of its key replaced it",
        }
    }
}

/// What reconciliation did, for the log.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub discarded_incomplete: Vec<String>,
    pub destroyed_shares_of: Vec<String>,
    pub removed_files: Vec<(PathBuf, &'static str)>,
    pub removed_temps: Vec<PathBuf>,
    pub upgraded: Vec<PathBuf>,
    pub foreign: Vec<PathBuf>,
}

/// Prove that the share directory and the database belong together, and
/// work out what reconciliation may then clean up. Reads only.
///
/// They belong together when every share file carries the database's
/// deployment id (or none, format 1), names a key the database knows, at a
/// generation the database accounts for, and every key that may sign has
/// its file share at its current generation. Anything else means a wrong
/// or old store: an old database backup, a wrong `--db`, a share file of
/// another deployment. Then nothing may be deleted, since what looks like
/// an orphan may be the only file share of a key a newer database holds:
/// the error names the files, says what is likely wrong, and that nothing
/// was changed.
pub fn survey(database: &Database, dir: &ShareDir, now: i64) -> Result<Survey> {
    let rows = database.keys()?;
    let with_db_shares = database.kids_with_db_shares()?;
    let deployment = database.deployment();
    let mut plan = Survey {
        record_legacy_alg: database.has_legacy_rows()?,
        ..Survey::default()
    };
    let mut other_deployment: Vec<(PathBuf, String)> = Vec::new();
    let mut unknown: Vec<(String, PathBuf)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut present: Vec<(String, u32)> = Vec::new();
    let mut files: Vec<(String, u32, PathBuf, Option<KeyShare>)> = Vec::new();
    for entry in dir.list()? {
        match entry {
            Entry::Temp(path) => plan.remove_temps.push(path),
            Entry::Foreign(path) => plan.foreign.push(path),
            Entry::Known(_) => {}
            Entry::Share {
                kid,
                generation,
                path,
            } => {
                // A file that cannot be parsed is judged by its name; if its
                // key may sign, unsealing it reports what is wrong with it.
                let parsed = share_files::read_share_file(&path, Slot::File).ok();
                if let Some(d) = parsed.as_ref().and_then(|p| p.deployment.as_deref())
                    && d != deployment
                {
                    other_deployment.push((path, d.to_owned()));
                    continue;
                }
                present.push((kid.clone(), generation));
                files.push((kid, generation, path, parsed));
            }
        }
    }
    let has_file = |kid: &str, g: u32| present.iter().any(|(k, n)| k == kid && *n == g);
    for (kid, generation, path, parsed) in files {
        let Some(row) = rows.iter().find(|r| r.kid == kid) else {
            unknown.push((kid, path));
            continue;
        };
        let leftover = if !row.verified {
            (generation == row.share_generation).then_some(Leftover::InterruptedCreation)
        } else if !crate::keys::state(row, now).needs_shares() {
            Some(Leftover::NoLongerSigns)
        } else if generation == row.share_generation {
            if parsed.is_some_and(|p| p.deployment.is_none()) {
                plan.upgrade_files.push(path);
            }
            continue;
        } else if Some(generation) == row.pending_generation {
            Some(Leftover::InterruptedReshare)
        } else if generation < row.share_generation && has_file(&kid, row.share_generation) {
            Some(Leftover::Superseded)
        } else {
            None
        };
        match leftover {
            Some(why) => plan.destroy_files.push((path, why)),
            None if generation > row.share_generation => problems.push(format!(
                "the database looks older than the share directory: key {kid} is at share \
                 generation {} in the database, but {} holds generation {generation}",
                row.share_generation,
                path.display()
            )),
            // An older generation without the current one: the check of the
            // key's current file share below names it.
            None => {}
        }
    }
    for row in &rows {
        if !row.verified {
            plan.discard_rows.push(row.kid.clone());
            continue;
        }
        let state = crate::keys::state(row, now);
        if !state.needs_shares() {
            if with_db_shares.contains(&row.kid) {
                plan.destroy_db_shares_of.push(row.kid.clone());
            }
            continue;
        }
        if let Some(p) = row.pending_generation
            && !has_file(&row.kid, p)
        {
            plan.clear_pending.push(row.kid.clone());
        }
        // A key's current file share missing while another generation of
        // it is there: the database is newer than the share directory. (A
        // file share missing outright is a lost share; unsealing reports it,
        // with the way back, before anything is changed.)
        let others = present
            .iter()
            .filter(|(k, g)| *k == row.kid && *g < row.share_generation)
            .map(|(_, g)| *g)
            .max();
        if !has_file(&row.kid, row.share_generation)
            && let Some(g) = others
        {
            problems.push(format!(
                "the database looks newer than the share directory: key {} ({}) is at share \
                 generation {} in the database, but the share directory holds only generation \
                 {g} (no {})",
                row.kid,
                state.as_str(),
                row.share_generation,
                dir.share_path(&row.kid, row.share_generation).display()
            ));
        }
    }
    // The likely cause first: another deployment, then an old database;
    // the generation and missing-file details after.
    let mut causes = Vec::new();
    if !other_deployment.is_empty() {
        let files: Vec<String> = other_deployment
            .iter()
            .map(|(p, d)| format!("{} (deployment {d})", p.display()))
            .collect();
        causes.push(format!(
            "share file(s) {} belong to another deployment than database {} (deployment \
                 {deployment}): the share directory and the database come from different \
                 deployments (a wrong --db or --shares-dir, or a share file copied from another \
                 host)",
            files.join(", "),
            database.path().display()
        ));
    }
    if !unknown.is_empty() {
        let files: Vec<String> = unknown
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect();
        let mut kids: Vec<&str> = unknown.iter().map(|(k, _)| k.as_str()).collect();
        kids.dedup();
        causes.push(if rows.is_empty() {
            format!(
                "database {} records no keys, but the share directory holds share file(s) \
                     {}: is the database path right? To start a new deployment, move the share \
                     files away",
                database.path().display(),
                files.join(", ")
            )
        } else {
            format!(
                "the database looks older than the share directory: key(s) {} are missing \
                     from database {} (share file(s) {}). Is it a restored backup? Put the \
                     current database back",
                kids.join(", "),
                database.path().display(),
                files.join(", ")
            )
        });
    }
    causes.extend(problems);
    if !causes.is_empty() {
        return Err(Error::StoresDisagree {
            db: database.path().to_owned(),
            shares: dir.path().to_owned(),
            problems: causes,
        });
    }
    Ok(plan)
}

/// Carry out what [`survey`] planned: discard interrupted creations and
/// temp files, destroy the shares of keys that no longer sign and the
/// leftovers of interrupted re-splits, and bring format-1 share files and
/// unlabelled keys up to date. It never touches the current shares of a key
/// that may sign.
pub fn apply(database: &Database, dir: &ShareDir, plan: Survey) -> Result<Reconciled> {
    let mut done = Reconciled {
        foreign: plan.foreign,
        ..Reconciled::default()
    };
    for kid in plan.discard_rows {
        database.discard_key(&kid)?;
        done.discarded_incomplete.push(kid);
    }
    // A key that no longer signs needs no private part: its database share
    // goes (secure_delete + checkpoint), and its file share below.
    for kid in plan.destroy_db_shares_of {
        if database.delete_db_shares(&kid)? {
            done.destroyed_shares_of.push(kid);
        }
    }
    for (path, why) in plan.destroy_files {
        dir.destroy(&path)?;
        done.removed_files.push((path, why.as_str()));
    }
    for kid in plan.clear_pending {
        database.clear_pending_generation(&kid)?;
    }
    for path in plan.remove_temps {
        dir.destroy(&path)?;
        done.removed_temps.push(path);
    }
    for path in plan.upgrade_files {
        let mut share = share_files::read_share_file(&path, Slot::File)?;
        share.deployment = Some(database.deployment().to_owned());
        dir.rewrite(&share)?;
        done.upgraded.push(path);
    }
    if plan.record_legacy_alg {
        database.record_legacy_alg()?;
    }
    Ok(done)
}

/// [`survey`], then [`apply`].
pub fn reconcile(database: &Database, dir: &ShareDir, now: i64) -> Result<Reconciled> {
    let plan = survey(database, dir, now)?;
    apply(database, dir, plan)
}

/// Read both shares of `row`, rebuild its key and check it against the
/// public key stored with both. Fails closed with an error naming the store.
pub fn unseal_key(database: &Database, dir: &ShareDir, row: &KeyInfo) -> Result<SigningKey> {
    let file = dir.read(&row.kid, row.share_generation)?;
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
    if file.public_key != row.public_key {
        return Err(Error::FileShare {
            path: dir.share_path(&row.kid, row.share_generation),
            reason: format!("records a different public key than key row {}", row.kid),
        });
    }
    shamir::recover(&file, &db).map_err(|_| Error::SharesMismatch {
        kid: row.kid.clone(),
        file: dir.share_path(&row.kid, row.share_generation),
        db: database.path().to_owned(),
    })
}

/// Build the in-memory key set at `now`. Keys that may sign are taken from
/// `held` (already in memory) or else unsealed from the stores. Returns the
/// set and the kids whose key pages could not be mlock'ed.
pub fn build_keyset(
    database: &Database,
    dir: &ShareDir,
    cfg: &Config,
    now: i64,
    held: &[Arc<Signer>],
    mut fresh: Vec<NewKey>,
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
                    now.saturating_add(cfg.max_ttl.as_secs() as i64)
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
            let key = ed25519_dalek::VerifyingKey::from_bytes(&row.public_key).map_err(|_| {
                Error::KeyInfo {
                    kid: row.kid.clone(),
                    db: database.path().to_owned(),
                    reason: "public key is not a valid Ed25519 point".into(),
                }
            })?;
            published.push(Published { row, key });
        }
    }
    Ok((KeySet::new(signers, published), unlocked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_never_goes_backwards() {
        let c = Clock::new(wall_now() + 3600);
        assert!(c.now() >= wall_now() + 3599);
        let c = Clock::new(0);
        let a = c.now();
        assert!(c.now() >= a);
    }
}
