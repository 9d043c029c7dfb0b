//! `limits`: the daemon's thread counts, and the caps admission applies
//! from the config's limits (all but `max_frame_bytes` and
//! `max_connections` follow a reload: each connection reads them at every
//! turn of its loop, admission at every accept).

use super::admission::Caps;
use crate::config::Limits;
use crate::store::postgres::PG_BLOCKING;

/// The async runtime's workers: one per core, at most this many. Signing
/// is CPU-bound and parallel, but past this the audit writer and the
/// shared state bound it anyway, and the thread count must stay within the
/// unit's `TasksMax` (64) whatever the host's core count.
pub const MAX_WORKERS: usize = 16;
/// Threads for store work off the async workers (schedule steps, revoke
/// batches, reloads, health checks); more wait their turn.
pub const MAX_BLOCKING: usize = 8;
/// Every thread the daemon can have at once: the main thread, the audit
/// writer, the start-up keep-alive, the workers, the blocking threads and
/// the PostgreSQL runtime's. The unit's `TasksMax` must be above it.
pub const MAX_THREADS: usize = 3 + MAX_WORKERS + MAX_BLOCKING + 1 + PG_BLOCKING;
const _: () = assert!(MAX_THREADS < 64, "above the unit's TasksMax");

/// How many async workers to run on a host with `cores` usable cores.
pub fn workers(cores: usize) -> usize {
    cores.clamp(1, MAX_WORKERS)
}

/// What admission applies, from the config's limits (they follow a
/// reload).
pub fn caps(limits: &Limits) -> Caps {
    Caps {
        max_connections: limits.max_connections,
        per_peer: limits.max_connections_per_peer,
        admin_reserve: limits.admin_connections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_follow_the_cores_up_to_the_cap() {
        assert_eq!(workers(0), 1);
        assert_eq!(workers(2), 2);
        assert_eq!(workers(MAX_WORKERS), MAX_WORKERS);
        // A 96-core host: still within the unit's TasksMax.
        assert_eq!(workers(96), MAX_WORKERS);
    }
}
