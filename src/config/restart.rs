//! `restart`: which settings a reload cannot apply. Each section lists
//! every field (the destructuring has no `..`), so a new setting must be
//! classified before the crate compiles.

use super::{Audit, Cluster, Config, Limits, Paths, Sealing};

impl Config {
    /// The first setting that differs between `self` (running) and `new`
    /// and that a reload cannot apply: it needs a restart. Every setting is
    /// listed (the destructuring has no `..`), so a new setting must be
    /// classified here before the crate compiles.
    pub fn needs_restart(&self, new: &Config) -> Option<&'static str> {
        let Config {
            // Applied by a reload: token settings, policies (and their rate
            // limits), the schedule, the JWKS and metrics files, mlock for
            // keys unsealed from then on; and parts of the limits and the
            // audit log (below).
            source: _,
            outputs: _,
            tokens: _,
            schedule: _,
            clients: _,
            mlock: _,
            // Fixed while running, in whole or in part: the stores, the
            // socket, the connection table, the audit writer, the cluster.
            paths,
            limits,
            audit,
            cluster,
            sealing,
        } = self;
        paths
            .needs_restart(&new.paths)
            .or_else(|| sealing.needs_restart(&new.sealing))
            .or_else(|| limits.needs_restart(&new.limits))
            .or_else(|| audit.needs_restart(&new.audit))
            .or_else(|| cluster.needs_restart(&new.cluster))
    }
}

/// The first of `changes` that is true: the setting a reload cannot apply.
fn first_change<const N: usize>(changes: [(&'static str, bool); N]) -> Option<&'static str> {
    changes
        .into_iter()
        .find_map(|(key, changed)| changed.then_some(key))
}

// Each section lists every field (the destructuring has no `..`), so a new
// setting must be classified before the crate compiles.
impl Paths {
    fn needs_restart(&self, new: &Paths) -> Option<&'static str> {
        let Paths {
            shares_dir,
            db,
            socket,
            socket_mode,
            // Follow from the paths.
            relative_stores: _,
            legacy_layout: _,
        } = self;
        first_change([
            ("shares_dir", *shares_dir != new.shares_dir),
            ("db", *db != new.db),
            ("socket", *socket != new.socket),
            ("socket_mode", *socket_mode != new.socket_mode),
        ])
    }
}

impl Sealing {
    fn needs_restart(&self, new: &Sealing) -> Option<&'static str> {
        let Sealing { seal, tcti } = self;
        first_change([
            ("share_seal", *seal != new.seal),
            ("tpm_tcti", *tcti != new.tcti),
        ])
    }
}

impl Limits {
    fn needs_restart(&self, new: &Limits) -> Option<&'static str> {
        let Limits {
            max_frame_bytes,
            max_connections,
            // Read by each connection at every turn, by admission at every
            // accept.
            max_connections_per_peer: _,
            admin_connections: _,
            idle_timeout: _,
            read_timeout: _,
            write_timeout: _,
        } = self;
        first_change([
            ("max_frame_bytes", *max_frame_bytes != new.max_frame_bytes),
            ("max_connections", *max_connections != new.max_connections),
        ])
    }
}

impl Audit {
    fn needs_restart(&self, new: &Audit) -> Option<&'static str> {
        let Audit {
            enabled,
            sync,
            retention: _,
            keep_free: _,
        } = self;
        first_change([
            ("audit", *enabled != new.enabled),
            ("audit_sync", *sync != new.sync),
        ])
    }
}

impl Cluster {
    fn needs_restart(&self, new: &Cluster) -> Option<&'static str> {
        let Cluster { postgres, node } = self;
        first_change([
            ("postgres", *postgres != new.postgres),
            ("node", *node != new.node),
        ])
    }
}
