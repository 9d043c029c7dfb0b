//! `cluster`: how a node of a PostgreSQL deployment keeps up with the
//! others. It listens for their `NOTIFY`s (a key row changed, a revocation
//! was added) and re-reads what changed: the other nodes' keys (published
//! and verified here), the revocations added since it last looked. A
//! reconnection re-reads everything, and the key schedule's timer re-reads
//! everything at least every 30 s, which catches a lost notification.
//!
//! While PostgreSQL cannot be reached the node is degraded, not down: it
//! signs with the keys it holds, verifies with the keys and revocations it
//! last read, and says "degraded: database unreachable" in `STATUS=` and
//! `status`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::key_manager::KeyManager;
use crate::error::{Error, Result};
use crate::store::postgres::Change;
use crate::store::{NodeKey, Postgres};

/// How long a revocation id may stay uncommitted while later ids are
/// read: a sequence hands out ids in one order, transactions commit in
/// another. An incremental read looks this far back again.
const COMMIT_LAG: Duration = Duration::from_secs(2);

/// A node's view of the cluster.
pub struct Cluster {
    pub pg: Arc<Postgres>,
    /// The other nodes' keys, as last read.
    others: Mutex<Vec<NodeKey>>,
    /// Why PostgreSQL is unreachable, while it is.
    down: Mutex<Option<String>>,
    /// Whether the listening connection is up (and its first read done).
    listening: AtomicBool,
    cursor: Mutex<Cursor>,
}

/// Where incremental revocation reads start: the highest id read at least
/// [`COMMIT_LAG`] ago (rows since are read again; adding one twice is
/// harmless).
#[derive(Default)]
pub struct Cursor {
    floor: i64,
    recent: VecDeque<(Instant, i64)>,
}

impl Cursor {
    fn from(&mut self, now: Instant) -> i64 {
        while let Some(&(at, id)) = self.recent.front() {
            if now.duration_since(at) < COMMIT_LAG {
                break;
            }
            self.floor = self.floor.max(id);
            self.recent.pop_front();
        }
        self.floor
    }

    fn saw(&mut self, now: Instant, id: i64) {
        self.recent.push_back((now, id));
    }

    /// After a full read at `now` up to `id`.
    fn reset(&mut self, now: Instant, id: i64) {
        self.recent.clear();
        self.floor = 0;
        self.saw(now, id);
    }
}

impl Cluster {
    pub fn new(pg: Arc<Postgres>) -> Cluster {
        Cluster {
            pg,
            others: Mutex::new(Vec::new()),
            down: Mutex::new(None),
            listening: AtomicBool::new(false),
            cursor: Mutex::new(Cursor::default()),
        }
    }

    pub fn node(&self) -> &str {
        self.pg.node()
    }

    /// The other nodes' keys, as last read.
    pub fn others(&self) -> Vec<NodeKey> {
        self.others
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_others(&self, keys: Vec<NodeKey>) {
        *self.others.lock().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// How many nodes the cluster has, as last read (this one included).
    pub fn nodes(&self) -> usize {
        let others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&str> = others.iter().map(|k| k.node.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.len() + 1
    }

    /// Why PostgreSQL is unreachable, if it is.
    pub fn unreachable(&self) -> Option<String> {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_down(&self, why: String) {
        let mut d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            tracing::warn!(reason = %why, "PostgreSQL is unreachable: degraded (signing with the keys held, verifying with the keys and revocations last read)");
        }
        *d = Some(why);
    }

    fn set_up(&self) {
        let mut d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if d.take().is_some() {
            tracing::info!("PostgreSQL is reachable again; caught up");
        }
    }

    /// Note the outcome of an operation on PostgreSQL: one that could not
    /// reach it makes the node degraded; one that succeeded while the
    /// listening connection is up ends that.
    pub fn note<T>(&self, r: &Result<T>) {
        match r {
            Err(Error::PostgresUnreachable { reason, .. }) => self.set_down(reason.clone()),
            Ok(_) if self.listening.load(Ordering::Acquire) => self.set_up(),
            _ => {}
        }
    }

    /// The revocations added since the last read (with `full`, all of
    /// them), to apply over the set in force.
    pub(super) fn read_revocations(&self, full: bool) -> Result<RevocationsRead> {
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let from = if full { 0 } else { cursor.from(now) };
        let (rows, last) = self.pg.revocations_after(from)?;
        if full {
            cursor.reset(now, last);
        } else {
            cursor.saw(now, last);
        }
        Ok(RevocationsRead { rows, full })
    }
}

pub(super) struct RevocationsRead {
    pub rows: Vec<crate::store::Revocation>,
    /// The rows are every revocation (replace the set), not only new ones.
    pub full: bool,
}

/// Follow the other nodes until shutdown: listen, and re-read what each
/// notification says changed (several at once are read once).
pub async fn follow(manager: Arc<KeyManager>, shutdown: CancellationToken) {
    let Some(cluster) = manager.cluster() else {
        return;
    };
    let mut changes = cluster.pg.listen();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = changes.recv() => match c {
                Some(c) => c,
                None => return,
            },
        };
        let mut wanted = Wanted::default();
        wanted.add(cluster, first);
        while let Ok(c) = changes.try_recv() {
            wanted.add(cluster, c);
        }
        if !wanted.any() {
            continue;
        }
        let m = Arc::clone(&manager);
        let done = tokio::task::spawn_blocking(move || m.follow_cluster(wanted)).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "could not read the other nodes' changes; retrying when PostgreSQL answers");
        }
    }
}

/// What to re-read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Wanted {
    pub keys: bool,
    pub revocations: bool,
    /// Everything (after a reconnection).
    pub all: bool,
}

impl Wanted {
    fn add(&mut self, cluster: &Cluster, change: Change) {
        match change {
            Change::Keys => self.keys = true,
            Change::Revocations => self.revocations = true,
            Change::Connected => {
                cluster.listening.store(true, Ordering::Release);
                self.all = true;
            }
            Change::Lost(why) => {
                cluster.listening.store(false, Ordering::Release);
                cluster.set_down(why);
            }
        }
    }

    fn any(&self) -> bool {
        self.keys || self.revocations || self.all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_reads_back_over_the_commit_lag() {
        let mut c = Cursor::default();
        let t0 = Instant::now();
        assert_eq!(c.from(t0), 0);
        c.saw(t0, 10);
        // Within the lag, a read starts where the reads of the lag began.
        assert_eq!(c.from(t0 + Duration::from_millis(500)), 0);
        c.saw(t0 + Duration::from_millis(500), 12);
        // Past it, from the highest id read at least the lag ago.
        assert_eq!(c.from(t0 + COMMIT_LAG), 10);
        assert_eq!(c.from(t0 + COMMIT_LAG + Duration::from_secs(1)), 12);
        c.reset(t0 + Duration::from_secs(9), 40);
        assert_eq!(c.from(t0 + Duration::from_secs(9)), 0);
        assert_eq!(c.from(t0 + Duration::from_secs(12)), 40);
    }
}
