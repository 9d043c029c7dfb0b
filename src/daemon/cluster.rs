//! `cluster`: how a node of a PostgreSQL deployment keeps up with the
//! others, and what it trusts of them. Their `NOTIFY`s are a hint, never
//! trusted data (`background::follow` listens, a flood of them is one read
//! per [`READ_GAP`]); this module re-reads what changed: the members and bounds the
//! owner set and the keys of other nodes (each row judged on its own; a bad
//! one is skipped, counted and logged once), or the revocations added since
//! it last looked (from an order the database keeps, which no node can
//! move). A reconnection re-reads everything, and so does the schedule
//! every [`FULL_READ_EVERY`].
//!
//! What it has seen, it keeps: every revocation read is recorded in the
//! local database (`store::seen`), stays in force here even when the
//! database goes back (a restored dump), and this node writes its own back.
//!
//! While PostgreSQL cannot be reached the node is degraded, not down: it
//! signs with the keys it holds, verifies with the keys and revocations it
//! last read, and says "degraded: database unreachable" in `STATUS=` and
//! `status`.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::revocations::{Bulk, News, RevocationSet};
use crate::error::{Error, Result};
use crate::store::membership::{Bounds, Member, Skipped};
use crate::store::postgres::{Changed, Marks, RevocationRow};
use crate::store::seen::{Seen, digest};
use crate::store::{NodeKey, Postgres, Revocation};

/// How long a revocation id may stay uncommitted while later ids are
/// read: a sequence hands out ids in one order, transactions commit in
/// another. An incremental read looks this far back again.
const COMMIT_LAG: Duration = Duration::from_secs(2);

/// The least time between a read that brought nothing new and the next
/// read that notifications ask for: a flood of forged ones (any role may
/// send any) costs one read per gap.
pub const READ_GAP: Duration = Duration::from_millis(100);

/// How often the schedule re-reads every revocation (what an incremental
/// read could have missed: a transaction that committed long after its id
/// was drawn).
const FULL_READ_EVERY: Duration = Duration::from_secs(300);

/// Revocations applied, and recorded locally, this many at a time.
const CHUNK: usize = 4096;

/// Skipped rows remembered (so that each is logged once) at most.
const LOGGED_MAX: usize = 10_000;

/// A node's view of the cluster.
pub struct Cluster {
    pub pg: Arc<Postgres>,
    /// The members, bounds and trusted keys of other nodes, as last read.
    view: Mutex<Arc<View>>,
    /// Why PostgreSQL is unreachable, while it is.
    down: Mutex<Option<String>>,
    /// Whether the listening connection is up (and its first read done).
    listening: AtomicBool,
    cursor: Mutex<Cursor>,
    /// What this node has seen (its local database).
    seen: Mutex<Seen>,
    /// The highest mark of the revocation sequence seen.
    high: AtomicI64,
    /// This node's beat (see `store::postgres::Marks`).
    beat: AtomicI64,
    went_back: Mutex<Option<WentBack>>,
    /// Skipped rows already logged.
    logged: Mutex<HashSet<(String, String, String)>>,
    last_full: Mutex<Option<Instant>>,
    /// Held by the full read under way (one at a time; incremental reads
    /// go on meanwhile).
    full: Mutex<()>,
    /// Counted for the metrics (see [`Cluster::counts`]).
    stats: Stats,
}

/// What the other nodes and the owner have, as last read.
#[derive(Debug, Default)]
pub struct View {
    pub members: Vec<Member>,
    /// `None` until the first read.
    pub bounds: Option<Bounds>,
    pub keys: Vec<NodeKey>,
    pub skipped: Vec<Skipped>,
}

impl View {
    /// Whether `other` holds the same members, bounds and trusted keys.
    pub fn same_as(&self, other: &View) -> bool {
        let keys = |v: &View| -> Vec<(String, String, [i64; 3])> {
            v.keys
                .iter()
                .map(|k| {
                    (
                        k.node.clone(),
                        k.key.kid.clone(),
                        [k.key.activate_at, k.key.deactivate_at, k.key.retire_at],
                    )
                })
                .collect()
        };
        self.members == other.members
            && self.bounds == other.bounds
            && self.skipped == other.skipped
            && keys(self) == keys(other)
    }
}

/// The database went back (a restored dump, a rolled-back replica).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WentBack {
    /// When this node noticed (Unix seconds).
    pub at: i64,
    /// The revocation sequence's mark this node had seen, and the
    /// database's; this node's beat, and the database's.
    pub seen_mark: i64,
    pub database_mark: i64,
    pub seen_beat: i64,
    pub database_beat: i64,
    /// This node's own revocations it found missing and wrote back.
    pub written_back: usize,
}

/// What one read of the revocations found.
struct Pass {
    /// The database's marks, read first.
    marks: Marks,
    /// This node's own revocations written back.
    written_back: usize,
    /// What the revocations read changed.
    news: Applied,
}

/// What applying revocations changed.
#[derive(Debug, Default, Clone, Copy)]
struct Applied {
    /// Revocations that changed the set (new, or grown).
    changed: usize,
    /// Of those, new token ids or subjects.
    fresh: usize,
}

impl Applied {
    fn plus(self, o: Applied) -> Applied {
        Applied {
            changed: self.changed + o.changed,
            fresh: self.fresh + o.fresh,
        }
    }
}

/// Counters for the metrics.
#[derive(Debug, Default)]
struct Stats {
    key_reads: AtomicU64,
    revocation_reads: AtomicU64,
    full_reads: AtomicU64,
    notifications: AtomicU64,
    went_back: AtomicU64,
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

    /// The ids were handed out again (the database went back): start
    /// over.
    fn reset(&mut self) {
        self.recent.clear();
        self.floor = 0;
    }
}

impl Cluster {
    /// The cluster of `pg`, keeping what it sees in the local database at
    /// `local_db`.
    pub fn new(pg: Arc<Postgres>, local_db: &std::path::Path) -> Result<Cluster> {
        let seen = Seen::open(local_db)?;
        let high = seen.high()?;
        let beat = seen.beat()?;
        Ok(Cluster {
            pg,
            view: Mutex::new(Arc::new(View::default())),
            down: Mutex::new(None),
            listening: AtomicBool::new(false),
            cursor: Mutex::new(Cursor::default()),
            seen: Mutex::new(seen),
            high: AtomicI64::new(high),
            beat: AtomicI64::new(beat),
            went_back: Mutex::new(None),
            logged: Mutex::new(HashSet::new()),
            last_full: Mutex::new(None),
            full: Mutex::new(()),
            stats: Stats::default(),
        })
    }

    pub fn node(&self) -> &str {
        self.pg.node()
    }

    /// The members, bounds and other nodes' keys, as last read.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The other nodes' trusted keys, as last read.
    pub fn others(&self) -> Vec<NodeKey> {
        self.view().keys.clone()
    }

    /// The owner's bounds, once read.
    pub fn bounds(&self) -> Option<Bounds> {
        self.view().bounds
    }

    /// Read the members, the bounds and the other nodes' keys (judged one
    /// by one; each row skipped is logged once). This node must be an
    /// active member.
    pub fn refresh_view(&self, now: i64) -> Result<Arc<View>> {
        self.stats.key_reads.fetch_add(1, Ordering::Relaxed);
        let v = self.pg.view(now)?;
        if let Some(reason) = v
            .members
            .iter()
            .find(|m| m.node == self.node())
            .and_then(Member::removal)
        {
            return Err(Error::NodeRefused {
                node: self.node().to_owned(),
                reason,
            });
        }
        {
            let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            if logged.len() > LOGGED_MAX {
                logged.clear();
            }
            for s in &v.skipped {
                if logged.insert((s.node.clone(), s.kid.clone(), s.reason.clone())) {
                    tracing::warn!(
                        node = %s.node,
                        kid = %s.kid,
                        reason = %s.reason,
                        "skipped a key row of another node (not published, not trusted)"
                    );
                }
            }
        }
        let view = Arc::new(View {
            members: v.members,
            bounds: Some(v.bounds),
            keys: v.keys,
            skipped: v.skipped,
        });
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&view);
        Ok(view)
    }

    /// How many active members the cluster has (this node included), as
    /// last read.
    pub fn nodes(&self) -> usize {
        self.view().members.iter().filter(|m| m.active).count()
    }

    /// Why PostgreSQL is unreachable, if it is.
    pub fn unreachable(&self) -> Option<String> {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the metrics show of this node's following.
    pub fn counts(&self) -> super::metrics::ClusterNow {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        super::metrics::ClusterNow {
            skipped_keys: self.view().skipped.len(),
            key_reads: n(&self.stats.key_reads),
            revocation_reads: n(&self.stats.revocation_reads),
            full_reads: n(&self.stats.full_reads),
            notifications: n(&self.stats.notifications),
            went_back: n(&self.stats.went_back),
            unreachable: self.unreachable().is_some(),
        }
    }

    /// When (and how) the database was last found to have gone back.
    pub fn went_back(&self) -> Option<WentBack> {
        self.went_back
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

    /// Load the revocations in force at start: what this node has seen
    /// (kept until `kept_from` or later), then everything the database
    /// holds (see [`Cluster::read_revocations`]).
    pub(super) fn load_revocations(&self, set: &RevocationSet, kept_from: i64) -> Result<()> {
        let mut bulk = Bulk::default();
        self.seen()
            .for_each(None, kept_from, &mut |_, r| bulk.add(r))?;
        set.replace(bulk.build());
        self.read_revocations(set, true, kept_from).map(|_| ())
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record this node's own new revocations (stored in PostgreSQL just
    /// now) in the local database.
    pub(super) fn record_own(&self, rows: &[Revocation]) -> Result<()> {
        let node = self.node().to_owned();
        self.seen()
            .record(rows.iter().map(|r| (node.as_str(), r)))?;
        self.raise_beat()
    }

    /// The marks this node has seen.
    fn seen_marks(&self) -> Marks {
        Marks {
            high: self.high.load(Ordering::Acquire),
            beat: self.beat.load(Ordering::Acquire),
        }
    }

    /// This node learned of revocations: raise its beat, in PostgreSQL
    /// first (a crash in between leaves the database ahead, never behind).
    fn raise_beat(&self) -> Result<()> {
        let beat = self.beat.load(Ordering::Acquire) + 1;
        self.pg.set_beat(beat)?;
        self.seen().set_beat(beat)?;
        self.beat.fetch_max(beat, Ordering::AcqRel);
        Ok(())
    }

    /// Check the database's marks alone (cheap): if it went back, read
    /// everything (which reports it and writes this node's own back).
    pub(super) fn check_marks(&self, set: &RevocationSet, kept_from: i64) -> Result<()> {
        if self.pg.marks()?.below(&self.seen_marks()) {
            self.read_revocations(set, true, kept_from)?;
        }
        Ok(())
    }

    /// A full read asked for failed: the schedule's next step does one.
    pub(super) fn full_read_failed(&self) {
        *self.last_full.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether the schedule should re-read every revocation now.
    pub(super) fn full_read_due(&self) -> bool {
        self.last_full
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= FULL_READ_EVERY)
    }

    /// Read the revocations changed since the last read (with `full`, all
    /// of them) that are kept until `kept_from` or later, record the new
    /// ones locally and add them to `set` (a revocation is never removed
    /// here but by time: a database that went back un-revokes nothing).
    /// A database found to have gone back is reported, read again whole,
    /// and given back this node's own revocations. Incremental reads are
    /// one at a time (the caller's revocation lock); a full read holds no
    /// lock they need (one full read at a time: another asked for
    /// meanwhile is skipped).
    /// Returns how many revocations were new to this node (a revocation
    /// only grown is not counted: see `follow`).
    pub(super) fn read_revocations(
        &self,
        set: &RevocationSet,
        full: bool,
        kept_from: i64,
    ) -> Result<usize> {
        let _full = if full {
            match self.full.try_lock() {
                Ok(g) => Some(g),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(0),
            }
        } else {
            None
        };
        let seen = self.seen_marks();
        let mut read = self.read_pass(set, full, kept_from)?;
        if read.marks.below(&seen) {
            // Ids are handed out again below what the cursor passed: read
            // everything again from the start (and write this node's own
            // back).
            self.cursor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reset();
            if !full {
                read = self.read_pass(set, true, kept_from)?;
            }
        }
        if read.marks.below(&seen) || read.written_back > 0 {
            self.report_going_back(seen, read.marks, read.written_back)?;
        } else {
            if read.marks.high > seen.high {
                self.high.fetch_max(read.marks.high, Ordering::AcqRel);
                self.seen().raise_high(read.marks.high)?;
            }
            if read.marks.beat > seen.beat {
                // A local database older than the node's (restored from a
                // backup of the host): count on from the database's beat.
                self.beat.fetch_max(read.marks.beat, Ordering::AcqRel);
                self.seen().set_beat(read.marks.beat)?;
            }
        }
        if read.news.changed > 0 {
            self.raise_beat()?;
        }
        Ok(read.news.fresh)
    }

    /// One read (see [`Cluster::read_revocations`]); a full one also
    /// writes back this node's own revocations that it did not find.
    fn read_pass(&self, set: &RevocationSet, full: bool, kept_from: i64) -> Result<Pass> {
        let now = Instant::now();
        let from = if full {
            0
        } else {
            self.cursor
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .from(now)
        };
        let me = self.node().to_owned();
        let mut own: HashSet<[u8; 16]> = HashSet::new();
        let mut chunk: Vec<RevocationRow> = Vec::with_capacity(256);
        let mut last_id = from;
        let mut failed: Option<Error> = None;
        let mut news = Applied::default();
        let marks = self.pg.read_revocations(from, kept_from, &mut |row| {
            if failed.is_some() {
                return;
            }
            last_id = last_id.max(row.id);
            if full && row.node == me {
                let (kind, value, _, _) = row.rev.columns();
                own.insert(digest(kind, value, &me));
            }
            chunk.push(row);
            if chunk.len() >= CHUNK {
                match self.apply(set, &mut chunk) {
                    Ok(a) => news = news.plus(a),
                    Err(e) => failed = Some(e),
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        news = news.plus(self.apply(set, &mut chunk)?);
        self.stats.revocation_reads.fetch_add(1, Ordering::Relaxed);
        let written_back = if full {
            self.stats.full_reads.fetch_add(1, Ordering::Relaxed);
            *self.last_full.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
            // A write-back the database refuses (a cap, a bound lowered
            // since) must not stop this node from reading: it is retried
            // at the next full read.
            self.write_back(&own, kept_from).unwrap_or_else(|e| {
                tracing::warn!(error = %crate::error::chain(&e), "could not write this node's own revocations back; retrying at the next full read");
                0
            })
        } else {
            0
        };
        self.cursor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saw(now, last_id);
        Ok(Pass {
            marks,
            written_back,
            news,
        })
    }

    /// Say loudly that the database went back; compare with its marks
    /// from now on.
    fn report_going_back(&self, seen: Marks, now: Marks, written_back: usize) -> Result<()> {
        tracing::error!(
            seen_mark = seen.high,
            database_mark = now.high,
            seen_beat = seen.beat,
            database_beat = now.beat,
            own_revocations_written_back_count = written_back,
            "the cluster's database went back (restored from a backup, or rolled back): \
             revocations this node has seen stay in force here, and it wrote its own missing \
             ones back"
        );
        self.stats.went_back.fetch_add(1, Ordering::Relaxed);
        *self.went_back.lock().unwrap_or_else(|p| p.into_inner()) = Some(WentBack {
            at: crate::clock::wall_now(),
            seen_mark: seen.high,
            database_mark: now.high,
            seen_beat: seen.beat,
            database_beat: now.beat,
            written_back,
        });
        self.high.store(now.high, Ordering::Release);
        self.beat.store(now.beat, Ordering::Release);
        self.seen().reset(now.high, now.beat)
    }

    /// Record the rows of `chunk` that are news locally, then add them to
    /// the set in force; empties `chunk`. Returns how many changed the set,
    /// and how many of those were new values.
    fn apply(&self, set: &RevocationSet, chunk: &mut Vec<RevocationRow>) -> Result<Applied> {
        if chunk.is_empty() {
            return Ok(Applied::default());
        }
        let kinds = set.news(chunk.iter().map(|r| &r.rev));
        let fresh = kinds.iter().filter(|k| **k == News::New).count();
        let news: Vec<&RevocationRow> = chunk
            .iter()
            .zip(kinds)
            .filter(|(_, k)| *k != News::Nothing)
            .map(|(r, _)| r)
            .collect();
        let changed = news.len();
        if changed > 0 {
            self.seen()
                .record(news.iter().map(|r| (r.node.as_str(), &r.rev)))?;
            set.add(news.into_iter().map(|r| r.rev.clone()));
        }
        chunk.clear();
        Ok(Applied { changed, fresh })
    }

    /// Write back this node's own revocations (as recorded locally, kept
    /// until `kept_from` or later) that a full read did not find (`found`:
    /// their digests). Returns how many.
    fn write_back(&self, found: &HashSet<[u8; 16]>, kept_from: i64) -> Result<usize> {
        let mut missing = Vec::new();
        self.seen()
            .for_each(Some(self.node()), kept_from, &mut |node, r| {
                let (kind, value, _, _) = r.columns();
                if !found.contains(&digest(kind, value, node)) {
                    missing.push(r);
                }
            })?;
        if missing.is_empty() {
            return Ok(0);
        }
        let now = crate::clock::wall_now();
        for batch in missing.chunks(1024) {
            crate::store::KeyStore::add_revocations(&self.pg, batch, now)?;
        }
        tracing::warn!(
            revocation_count = missing.len(),
            "this node's own revocations were missing from the cluster's database; wrote them back"
        );
        Ok(missing.len())
    }

    /// Purge the revocations kept until before `before`: in PostgreSQL
    /// (this node's, and those of removed nodes), in the local record, and
    /// in `set`. Returns how many rows PostgreSQL purged.
    pub(super) fn purge(&self, set: &RevocationSet, before: i64) -> Result<u64> {
        let n = self.pg.purge_revocations(before)?;
        self.seen().purge(before)?;
        set.purge(before);
        Ok(n)
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

impl Cluster {
    /// What the notifications and connection changes in `c` ask to
    /// re-read, noting the connection's state (lost: degraded). The second
    /// value: why PostgreSQL refused this node, if it did (the caller makes
    /// it the key manager's fault).
    pub fn wanted(&self, c: Changed) -> (Wanted, Option<String>) {
        self.stats
            .notifications
            .fetch_add(c.notifications, Ordering::Relaxed);
        let mut w = Wanted {
            keys: c.keys,
            revocations: c.revocations,
            all: false,
        };
        if c.connected {
            self.listening.store(true, Ordering::Release);
            w.all = true;
        }
        if let Some(why) = c.lost {
            self.listening.store(false, Ordering::Release);
            self.set_down(why);
        }
        if c.refused.is_some() {
            self.listening.store(false, Ordering::Release);
        }
        (w, c.refused)
    }
}

impl Wanted {
    pub fn any(&self) -> bool {
        self.keys || self.revocations || self.all
    }

    pub fn or(self, other: Wanted) -> Wanted {
        Wanted {
            keys: self.keys || other.keys,
            revocations: self.revocations || other.revocations,
            all: self.all || other.all,
        }
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
        c.reset();
        c.saw(t0 + Duration::from_secs(9), 40);
        assert_eq!(c.from(t0 + Duration::from_secs(9)), 0);
        assert_eq!(c.from(t0 + Duration::from_secs(12)), 40);
    }
}
