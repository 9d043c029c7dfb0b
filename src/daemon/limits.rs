//! `limits`: what bounds the accept loop and each connection, from the
//! config. All but `max_frame_bytes` and `max_connections` follow a reload
//! (each connection reads them at every turn of its loop, admission at
//! every accept).

use std::time::Duration;

use super::admission::Caps;
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

/// Limits of the accept loop and connections. All but `max_frame_bytes`
/// and `max_connections` follow a reload (each connection reads them at
/// every turn of its loop, admission at every accept).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub admin_connections: usize,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl Limits {
    pub fn of(cfg: &crate::config::Config) -> Limits {
        Limits {
            max_connections: cfg.limits.max_connections,
            max_connections_per_peer: cfg.limits.max_connections_per_peer,
            admin_connections: cfg.limits.admin_connections,
            max_frame_bytes: cfg.limits.max_frame_bytes,
            idle_timeout: cfg.limits.idle_timeout,
            read_timeout: cfg.limits.read_timeout,
            write_timeout: cfg.limits.write_timeout,
        }
    }

    pub fn caps(&self) -> Caps {
        Caps {
            max_connections: self.max_connections,
            per_peer: self.max_connections_per_peer,
            admin_reserve: self.admin_connections,
        }
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
