//! `faults`: the key manager's store checks: whether the stores are
//! still the ones opened at start (paths, files, the file shares of the
//! keys that may sign), and the fault that stops signing until a restart
//! when they are not, or when the cluster's owner removed this node.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::KeyManager;
use crate::error::{Error, Result};
use crate::store::FileId;

/// The store paths and the files they named when the daemon opened them.
pub(super) struct Places {
    pub(super) deployment: String,
    pub(super) db: PathBuf,
    pub(super) db_id: FileId,
    pub(super) shares: PathBuf,
    pub(super) shares_id: FileId,
}

impl KeyManager {
    /// Why the daemon stopped issuing tokens, if it did (a sentence): the
    /// stores changed under it, or the cluster's owner removed this node.
    /// Sticky: only a restart (and its checks) clears it.
    pub fn fault(&self) -> Option<String> {
        if !self.faulted.load(Ordering::Acquire) {
            return None;
        }
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a store fault was found (the sign path's cheap check).
    pub fn is_faulted(&self) -> bool {
        self.faulted.load(Ordering::Acquire)
    }

    pub(super) fn set_fault(&self, why: String) {
        let mut f = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!(reason = %why, "no token is issued until the daemon is restarted");
            *f = Some(why);
            self.faulted.store(true, Ordering::Release);
        }
    }

    /// PostgreSQL refuses this node its login or its rights (`why`): the
    /// owner removed it. It signs nothing more, creates no key, and says
    /// why.
    pub fn refused(&self, why: &str) {
        self.set_fault(format!(
            "PostgreSQL refuses this node ({why}): the cluster's owner removed it, or took its \
             rights away; it signs nothing more (`splitsign node list` on the owner's side)"
        ));
    }

    /// Note the outcome of an operation on PostgreSQL (see
    /// [`Cluster::note`]); a refusal of this node is a fault.
    pub(in crate::daemon) fn note<T>(&self, r: &Result<T>) {
        if let Some(c) = &self.cluster {
            c.note(r);
        }
        if let Err(e) = r
            && e.is_refusal()
        {
            self.refused(&match e {
                Error::NodeRefused { reason, .. } => reason.clone(),
                e => crate::error::chain(e),
            });
        }
    }

    /// The running check (about once a second, and before every store
    /// operation): the database path still names the database opened at
    /// start, the share directory is the same directory, and the file share
    /// of every key that may sign is still there. Only `stat`s; never waits
    /// for the stores' lock. Returns the fault, if any.
    pub fn check_stores(&self) -> Option<String> {
        if let Some(f) = self.fault() {
            return Some(f);
        }
        let p = &self.places;
        let mut problem = p
            .db_id
            .still_at(&p.db)
            .and_then(|()| p.shares_id.still_at(&p.shares))
            .err();
        if problem.is_none() {
            problem = self.missing_share_file();
        }
        if let Some(why) = problem {
            let why = stores_changed(&why);
            self.set_fault(why.clone());
            return Some(why);
        }
        None
    }

    /// The file share of a key that may sign, if one is gone. A re-split
    /// replaces file shares under the stores' lock, so a file found missing
    /// is judged again under that lock (skipped while a change runs).
    fn missing_share_file(&self) -> Option<String> {
        let share_path = |kid: &str, generation: u32| {
            self.places
                .shares
                .join(crate::store::share_dir::share_file_name(kid, generation))
        };
        let gone = |p: &Path| std::fs::symlink_metadata(p).is_err();
        let keys = self.keyring.snapshot();
        if !keys
            .signers
            .iter()
            .any(|s| gone(&share_path(&s.kid, s.share_generation)))
        {
            return None;
        }
        let _guard = match self.stores.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let keys = self.keyring.snapshot();
        keys.signers.iter().find_map(|s| {
            let path = share_path(&s.kid, s.share_generation);
            gone(&path).then(|| {
                format!(
                    "the file share {} of key {} was removed",
                    path.display(),
                    s.kid
                )
            })
        })
    }
}

/// The fault of stores that changed under the daemon (`why`: what).
pub(super) fn stores_changed(why: &str) -> String {
    format!("the key stores changed under the daemon ({why}); restart it")
}
