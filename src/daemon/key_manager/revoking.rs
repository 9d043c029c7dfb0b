//! `revoking`: the key manager's revocations: `revoke` (one, or
//! pipelined ones in one transaction), the revocations in force at start,
//! the reads of the other nodes' revocations and the purge of expired
//! ones. The set in force is `daemon::revocations`.

use super::KeyManager;
use crate::clock::wall_now;
use crate::daemon::cluster::Cluster;
use crate::daemon::revocations::{self, RevocationSet, Revocations};
use crate::error::{Error, Result};
use crate::keys::jws::TokenRules;
use crate::protocol::RevokeTarget;
use crate::store::{Revocation, Stores};

impl KeyManager {
    /// The revocations in force.
    pub fn revocations(&self) -> &RevocationSet {
        &self.revoked
    }

    /// Revoke (admin): store durably, then take effect for `verify`.
    pub fn revoke(&self, target: RevokeTarget, policy: &TokenRules) -> Result<Revocation> {
        self.revoke_many(vec![target], policy)
            .pop()
            .expect("one answer per target")
    }

    /// Revoke several (a pipelined admin session): each target checked on
    /// its own, the valid ones stored in one transaction (one fsync), then
    /// added to the set in force in place. One answer per target, in order.
    pub fn revoke_many(
        &self,
        targets: Vec<RevokeTarget>,
        policy: &TokenRules,
    ) -> Vec<Result<Revocation>> {
        let stores = match self.stores() {
            Ok(s) => s,
            Err(e) => {
                let why = crate::error::chain(&e);
                return targets
                    .iter()
                    .map(|_| Err(Error::KeyStore(why.clone())))
                    .collect();
            }
        };
        let now = wall_now();
        let mut answers = self.revocations_for(&targets, policy, now);
        let rows: Vec<Revocation> = answers.iter().flatten().cloned().collect();
        if rows.is_empty() {
            return answers;
        }
        let stored = stores.keys.add_revocations(&rows, now);
        self.note(&stored);
        if let Err(why) = stored {
            self.refuse_unstored(&mut answers, &why);
            return answers;
        }
        drop(stores);
        if let Some(c) = &self.cluster
            && let Err(e) = c.record_own(&rows)
        {
            // Stored in PostgreSQL: in force. Only the local copy that
            // outlives a restored database is missing; a full read makes it.
            tracing::warn!(error = %e, "could not record this node's revocations locally");
        }
        self.revoked.add(rows.iter().cloned());
        if let Some(c) = &self.cluster {
            // This node's own rows come back with the others'.
            let _ = self.sync_revocations(c, false);
        }
        let (jti_count, sub_count) = rows.iter().fold((0, 0), |(j, s), r| match r {
            Revocation::Jti { .. } => (j + 1, s),
            Revocation::Sub { .. } => (j, s + 1),
        });
        tracing::warn!(jti_count, sub_count, "revoked by an admin");
        answers
    }

    /// What revoking each target means (checked on its own), within the
    /// cluster's bounds.
    fn revocations_for(
        &self,
        targets: &[RevokeTarget],
        policy: &TokenRules,
        now: i64,
    ) -> Vec<Result<Revocation>> {
        let cfg = self.config();
        let keys = self.keyring.snapshot();
        let mut answers: Vec<Result<Revocation>> = targets
            .iter()
            .map(|t| {
                revocations::revocation_for(
                    t,
                    &keys,
                    policy,
                    cfg.tokens.max_ttl.as_secs() as i64,
                    self.clock.now(),
                    now,
                )
            })
            .collect();
        if let Some(c) = &self.cluster {
            // Within the cluster's bounds, which the database enforces too.
            let ttl = c
                .bounds()
                .map_or(cfg.tokens.max_ttl.as_secs() as i64, |b| b.max_token_ttl);
            for a in answers.iter_mut() {
                if let Ok(r) = a {
                    *a = revocations::within_cluster_bounds(r, ttl, now, policy.leeway as i64);
                }
            }
        }
        answers
    }

    /// The valid answers become the error of a store that failed (`why`).
    fn refuse_unstored(&self, answers: &mut [Result<Revocation>], why: &Error) {
        let unreachable = matches!(why, Error::PostgresUnreachable { .. });
        let text = crate::error::chain(why);
        for a in answers.iter_mut().filter(|a| a.is_ok()) {
            *a = Err(if unreachable {
                Error::PostgresUnreachable {
                    node: self
                        .cluster
                        .as_ref()
                        .map(|c| c.node().to_owned())
                        .unwrap_or_default(),
                    reason: text.clone(),
                }
            } else {
                Error::KeyStore(text.clone())
            });
        }
    }

    /// Purge the revocations that have covered no valid token for a day
    /// (a step of the schedule).
    pub(super) fn purge_revocations(&self, stores: &Stores) -> Result<()> {
        // Tokens carry wall-clock times; see `PurgeClock` for a clock
        // stepped forward.
        let before = crate::clock::revocations_purged_before(self.purge_clock.now());
        let purged = match &self.cluster {
            Some(c) => {
                let n = {
                    let _swap = self.rev_swap.lock().unwrap_or_else(|p| p.into_inner());
                    c.purge(&self.revoked, before)?
                };
                if c.full_read_due() {
                    self.sync_revocations(c, true)?;
                } else {
                    // A database restored without a reconnection (and with
                    // nothing written since) is noticed here too.
                    c.check_marks(&self.revoked, before)?;
                }
                n
            }
            None => {
                // This daemon is the store's only writer: purge in place,
                // never re-read.
                let n = stores.keys.purge_revocations(before)?;
                self.revoked.purge(before);
                n
            }
        };
        if purged > 0 {
            tracing::info!(
                revocation_count = purged,
                expired_before = before,
                "purged the revocations of expired tokens"
            );
        }
        Ok(())
    }

    /// Read the revocations (all, or those added since the last read) and
    /// add the new ones to the set in force (a revocation leaves it only
    /// by time). Incremental reads take turns; a full read (long, with
    /// many revocations) holds none of them up.
    /// Returns how many were news.
    pub(in crate::daemon) fn sync_revocations(&self, c: &Cluster, full: bool) -> Result<usize> {
        let _swap = (!full).then(|| self.rev_swap.lock().unwrap_or_else(|p| p.into_inner()));
        let kept_from = crate::clock::revocations_purged_before(self.purge_clock.now());
        c.read_revocations(&self.revoked, full, kept_from)
    }

    /// Read every revocation (a reconnection: anything may have been
    /// missed), beside the incremental reads.
    pub fn read_all_revocations(&self) -> Result<()> {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        let r = self.sync_revocations(c, true).map(|_| ());
        if r.is_err() {
            // The schedule's next step reads everything instead.
            c.full_read_failed();
        }
        self.note(&r);
        r
    }
}

/// The revocations in force at start: in a cluster, what this node has
/// seen, then what the database holds; else the local store's.
pub(super) fn load(
    stores: &Stores,
    cluster: Option<&Cluster>,
    purge_clock: &crate::clock::PurgeClock,
) -> Result<RevocationSet> {
    let kept_from = crate::clock::revocations_purged_before(purge_clock.now());
    let revoked = RevocationSet::new(Revocations::default());
    match cluster {
        // What this node has seen, then what the database holds.
        Some(c) => c.load_revocations(&revoked, kept_from)?,
        None => {
            // Streamed into the compact set: no row list of a million.
            let mut bulk = revocations::Bulk::default();
            stores
                .keys
                .for_each_revocation(kept_from, &mut |row| bulk.add(row))?;
            revoked.replace(bulk.build());
        }
    }
    Ok(revoked)
}
