//! `reconcile`: proving that the share directory and the database belong
//! together ([`survey`], which only reads), then cleaning up what
//! interrupted writes and retired keys left ([`apply`]), which
//! [`Reconciled::log`] reports; [`reconcile_stores`] does both on a host's
//! opened [`Stores`].

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::keys::KeyInfo;
use crate::keys::shamir::Slot;
use crate::store::KeyStore;
use crate::store::share_dir;
use crate::store::{Entry, ShareDir, Stores};

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

impl Reconciled {
    /// Log what was cleaned up (`deployment`: the id added to upgraded
    /// share files).
    pub fn log(&self, deployment: &str) {
        for kid in &self.discarded_incomplete {
            tracing::warn!(%kid, "discarded a key whose creation was interrupted");
        }
        for kid in &self.destroyed_shares_of {
            tracing::info!(%kid, "destroyed the database share of a key that no longer signs");
        }
        for (p, why) in &self.removed_files {
            tracing::info!(path = %p.display(), "removed a file share: {why}");
        }
        for p in &self.removed_temps {
            tracing::info!(path = %p.display(), "removed an interrupted temp file");
        }
        for p in &self.upgraded {
            tracing::info!(path = %p.display(), %deployment, "added the deployment id to a share file (format 2)");
        }
        for p in &self.foreign {
            tracing::warn!(path = %p.display(), "unexpected file in the share directory (left alone)");
        }
    }
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
pub fn survey(database: &dyn KeyStore, dir: &ShareDir, now: i64) -> Result<Survey> {
    let rows = database.keys()?;
    let mut plan = Survey {
        record_legacy_alg: database.has_legacy_rows()?,
        ..Survey::default()
    };
    let mut found = Findings::default();
    let files = read_share_dir(dir, database.deployment(), &mut plan, &mut found)?;
    judge_share_files(&rows, files, now, &mut plan, &mut found);
    judge_keys(
        &rows,
        &database.kids_with_db_shares()?,
        dir,
        now,
        &mut plan,
        &mut found,
    );
    match found.disagreement(&rows, database) {
        None => Ok(plan),
        Some(problems) => Err(Error::StoresDisagree {
            db: database.describe(),
            shares: dir.path().to_owned(),
            problems,
        }),
    }
}

/// What the survey found that does not fit.
#[derive(Default)]
struct Findings {
    /// Share files with another deployment's id.
    other_deployment: Vec<(PathBuf, String)>,
    /// Share files of keys the database does not know.
    unknown: Vec<(String, PathBuf)>,
    /// Generations the database cannot account for.
    problems: Vec<String>,
    /// (kid, generation) of every share file of this deployment.
    present: Vec<(String, u32)>,
}

/// A share file of this deployment (or of none: format 1).
struct ShareFile {
    kid: String,
    generation: u32,
    path: PathBuf,
    parsed: Option<crate::keys::share_format::ShareHeader>,
}

impl Findings {
    fn has_file(&self, kid: &str, generation: u32) -> bool {
        self.present
            .iter()
            .any(|(k, g)| k == kid && *g == generation)
    }

    /// The problems, the likely cause first (another deployment, then an
    /// old database), or `None` when the stores belong together.
    fn disagreement(self, rows: &[KeyInfo], database: &dyn KeyStore) -> Option<Vec<String>> {
        let db = database.describe();
        let mut causes = Vec::new();
        if !self.other_deployment.is_empty() {
            let files: Vec<String> = self
                .other_deployment
                .iter()
                .map(|(p, d)| format!("{} (deployment {d})", p.display()))
                .collect();
            causes.push(format!(
                "share file(s) {} belong to another deployment than database {db} (deployment \
                 {}): the share directory and the database come from different deployments \
                 (a wrong --db or --shares-dir, or a share file copied from another host)",
                files.join(", "),
                database.deployment()
            ));
        }
        if !self.unknown.is_empty() {
            let files: Vec<String> = self
                .unknown
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect();
            let mut kids: Vec<&str> = self.unknown.iter().map(|(k, _)| k.as_str()).collect();
            kids.dedup();
            causes.push(if rows.is_empty() {
                format!(
                    "database {db} records no keys, but the share directory holds share \
                     file(s) {}: is the database path right? To start a new deployment, move \
                     the share files away",
                    files.join(", ")
                )
            } else {
                format!(
                    "the database looks older than the share directory: key(s) {} are missing \
                     from database {db} (share file(s) {}). Is it a restored backup? Put the \
                     current database back",
                    kids.join(", "),
                    files.join(", ")
                )
            });
        }
        causes.extend(self.problems);
        (!causes.is_empty()).then_some(causes)
    }
}

/// List the share directory: temp files and foreign files go into the
/// plan; share files of another deployment are found; the rest returned.
fn read_share_dir(
    dir: &ShareDir,
    deployment: &str,
    plan: &mut Survey,
    found: &mut Findings,
) -> Result<Vec<ShareFile>> {
    let mut files = Vec::new();
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
                // Its header is enough here: a sealed one is not unsealed
                // (a TPM that is gone must not decide what is removed).
                let parsed = share_dir::read_share_header(&path).ok();
                if let Some(d) = parsed.as_ref().and_then(|p| p.deployment.as_deref())
                    && d != deployment
                {
                    found.other_deployment.push((path, d.to_owned()));
                    continue;
                }
                found.present.push((kid.clone(), generation));
                files.push(ShareFile {
                    kid,
                    generation,
                    path,
                    parsed,
                });
            }
        }
    }
    Ok(files)
}

/// Each share file must be a key's current generation, or a leftover the
/// database accounts for (see [`Leftover`]); a file ahead of the database,
/// or of a key it does not know, means an old or wrong database.
fn judge_share_files(
    rows: &[KeyInfo],
    files: Vec<ShareFile>,
    now: i64,
    plan: &mut Survey,
    found: &mut Findings,
) {
    for f in files {
        let Some(row) = rows.iter().find(|r| r.kid == f.kid) else {
            found.unknown.push((f.kid, f.path));
            continue;
        };
        let leftover = if !row.verified {
            (f.generation == row.share_generation).then_some(Leftover::InterruptedCreation)
        } else if !crate::keys::state(row, now).needs_shares() {
            Some(Leftover::NoLongerSigns)
        } else if f.generation == row.share_generation {
            if f.parsed.is_some_and(|p| p.deployment.is_none()) {
                plan.upgrade_files.push(f.path);
            }
            continue;
        } else if Some(f.generation) == row.pending_generation {
            Some(Leftover::InterruptedReshare)
        } else if f.generation < row.share_generation
            && found.has_file(&f.kid, row.share_generation)
        {
            Some(Leftover::Superseded)
        } else {
            None
        };
        match leftover {
            Some(why) => plan.destroy_files.push((f.path, why)),
            None if f.generation > row.share_generation => found.problems.push(format!(
                "the database looks older than the share directory: key {} is at share \
                 generation {} in the database, but {} holds generation {}",
                f.kid,
                row.share_generation,
                f.path.display(),
                f.generation
            )),
            // An older generation without the current one: the check of the
            // key's current file share names it.
            None => {}
        }
    }
}

/// Each key: an interrupted creation is discarded; one that no longer signs
/// loses its database share; one that may sign must have its current file
/// share, unless the share directory holds only an older generation (the
/// database is newer than it). A file share missing outright is a lost
/// share: unsealing reports it, with the way back, before anything changes.
fn judge_keys(
    rows: &[KeyInfo],
    with_db_shares: &[String],
    dir: &ShareDir,
    now: i64,
    plan: &mut Survey,
    found: &mut Findings,
) {
    for row in rows {
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
            && !found.has_file(&row.kid, p)
        {
            plan.clear_pending.push(row.kid.clone());
        }
        let older = found
            .present
            .iter()
            .filter(|(k, g)| *k == row.kid && *g < row.share_generation)
            .map(|(_, g)| *g)
            .max();
        if !found.has_file(&row.kid, row.share_generation)
            && let Some(g) = older
        {
            found.problems.push(format!(
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
}

/// Carry out what [`survey`] planned: discard interrupted creations and
/// temp files, destroy the shares of keys that no longer sign and the
/// leftovers of interrupted re-splits, and bring format-1 share files and
/// unlabelled keys up to date. It never touches the current shares of a key
/// that may sign.
pub fn apply(database: &dyn KeyStore, dir: &ShareDir, plan: Survey) -> Result<Reconciled> {
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
    let rows = if plan.upgrade_files.is_empty() {
        Vec::new()
    } else {
        database.keys()?
    };
    for path in plan.upgrade_files {
        let mut share = share_dir::read_share_file(&path, Slot::File)?;
        share.deployment = Some(database.deployment().to_owned());
        // A format-1 file is an Ed25519 key's: it takes its row's label
        // (an Ed25519 one, or the share would not have parsed as the key
        // the kid names).
        let alg = rows.iter().find(|r| r.kid == share.kid).map(|r| r.alg);
        share.alg = Some(match alg {
            Some(a) if a.key_type() == share.public_key.key_type() => a,
            _ => crate::config::AlgLabel::EdDSA,
        });
        dir.rewrite(&share)?;
        done.upgraded.push(path);
    }
    if plan.record_legacy_alg {
        database.record_legacy_alg()?;
    }
    Ok(done)
}

/// [`survey`], then [`apply`].
pub fn reconcile(database: &dyn KeyStore, dir: &ShareDir, now: i64) -> Result<Reconciled> {
    let plan = survey(database, dir, now)?;
    apply(database, dir, plan)
}

/// [`reconcile`] on a host's opened stores, logging what was cleaned up.
pub fn reconcile_stores(stores: &Stores, now: i64) -> Result<Reconciled> {
    let done = reconcile(&*stores.keys, &stores.shares, now)?;
    done.log(stores.keys.deployment());
    Ok(done)
}
