//! `limits`: what bounds the accept loop and each connection, from the
//! config. All but `max_frame_bytes` and `max_connections` follow a reload
//! (each connection reads them at every turn of its loop, admission at
//! every accept).

use std::time::Duration;

use super::admission::Caps;

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
            max_connections: cfg.max_connections,
            max_connections_per_peer: cfg.max_connections_per_peer,
            admin_connections: cfg.admin_connections,
            max_frame_bytes: cfg.max_frame_bytes,
            idle_timeout: cfg.idle_timeout,
            read_timeout: cfg.read_timeout,
            write_timeout: cfg.write_timeout,
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
