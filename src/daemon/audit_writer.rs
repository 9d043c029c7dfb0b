//! `audit_writer` is the daemon's side of the audit log: one thread that
//! commits the records of issued tokens and admin ops in batches (group
//! commit) before their replies leave, that writes the aggregated failures
//! once a second, that prunes past the retention in small steps, that
//! watches the free space of the log's filesystem against its reserve
//! (`audit_keep_free`: below it, only admins may sign), and that, while the
//! log cannot be written (a full disk), probes until it can. The table and
//! its chain are `store::audit_log`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::config::{AuditSync, KeepFree, dir_of, with_suffix};
use crate::error::{Error, Result};
use crate::store::FileId;
use crate::store::audit_log::{MAX_FIELD, PRUNE_BATCH, Record, append, bound, prune_batch};

/// Open a connection for audit writes: WAL, the chosen durability, and a
/// short busy timeout so a stuck lock fails closed quickly.
pub fn open(path: &Path, durability: AuditSync) -> Result<Connection> {
    let db_err = Error::database(path);
    let conn = Connection::open(path).map_err(db_err)?;
    conn.busy_timeout(Duration::from_secs(2)).map_err(db_err)?;
    let sync = match durability {
        AuditSync::Full => "FULL",
        AuditSync::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(db_err)?;
    Ok(conn)
}

type Ack = tokio::sync::oneshot::Sender<bool>;

/// What `prune` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub records: usize,
    pub before: i64,
}

enum Job {
    /// Records that must be durable before the replies they cover leave.
    Commit(Vec<Record>, Ack),
    /// Prune the records before a time (an admin op); answered when done.
    Prune {
        before: i64,
        by: Record,
        ack: tokio::sync::oneshot::Sender<std::result::Result<Pruned, String>>,
    },
}

/// Whether the log can be written, and whether its filesystem is down to
/// the reserve, as the writer last found them.
#[derive(Debug, Default)]
pub struct AuditHealth {
    ok: AtomicBool,
    /// Unix seconds of the first failure since the last success.
    failing_since: AtomicI64,
    /// The free space is below the reserve: only admins sign.
    in_reserve: AtomicBool,
    /// Down to the floor (room for the WAL and a prune): no one signs.
    at_floor: AtomicBool,
    /// Bytes free on the log's filesystem (for unprivileged writers) plus
    /// the pages the database freed, and the reserve in bytes, at the last
    /// check.
    free_bytes: AtomicU64,
    keep_free_bytes: AtomicU64,
}

/// The reserve as last checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub in_reserve: bool,
    pub free_bytes: u64,
    pub keep_free_bytes: u64,
}

impl AuditHealth {
    pub fn ok(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }

    /// True while the free space is below the reserve (one atomic load:
    /// the sign path asks it).
    pub fn in_reserve(&self) -> bool {
        self.in_reserve.load(Ordering::Relaxed)
    }

    /// True while the room left is only the floor's: no one signs.
    pub fn at_floor(&self) -> bool {
        self.at_floor.load(Ordering::Relaxed)
    }

    pub fn space(&self) -> Space {
        Space {
            in_reserve: self.in_reserve(),
            free_bytes: self.free_bytes.load(Ordering::Relaxed),
            keep_free_bytes: self.keep_free_bytes.load(Ordering::Relaxed),
        }
    }

    /// Since when writes fail, if they do.
    pub fn failing_since(&self) -> Option<i64> {
        (!self.ok()).then(|| self.failing_since.load(Ordering::Relaxed))
    }

    fn set(&self, ok: bool, now: i64) {
        let was = self.ok.swap(ok, Ordering::Relaxed);
        if was && !ok {
            self.failing_since.store(now, Ordering::Relaxed);
        } else if !was && ok {
            tracing::info!("the audit log can be written again");
        }
    }
}

/// Failures being aggregated for the current one-second window.
#[derive(Default)]
struct Tally {
    window: i64,
    records: HashMap<(Option<u32>, &'static str, &'static str), Record>,
}

/// Distinct (uid, op, result) keys a window holds; past it, further uids
/// are counted together (uid unknown), so memory stays bounded too.
const MAX_TALLY_KEYS: usize = 4096;

impl Tally {
    fn add(&mut self, mut r: Record) {
        let mut key = (r.uid, r.op, r.result);
        if !self.records.contains_key(&key) && self.records.len() >= MAX_TALLY_KEYS {
            key.0 = None;
            r.uid = None;
            r.pid = None;
        }
        match self.records.get_mut(&key) {
            Some(agg) => agg.count = agg.count.saturating_add(r.count.max(1)),
            None => {
                if self.records.is_empty() {
                    self.window = r.at;
                }
                // The first record of the window keeps its fields, bounded.
                let own = |v: &mut Option<String>| {
                    if let Some(long) = v.as_deref().filter(|s| s.len() > MAX_FIELD) {
                        *v = Some(bound(long).into_owned());
                    }
                };
                own(&mut r.sub);
                own(&mut r.jti);
                own(&mut r.kid);
                self.records.insert(key, r);
            }
        }
    }

    fn take(&mut self) -> Vec<Record> {
        let mut v: Vec<Record> = self.records.drain().map(|(_, r)| r).collect();
        v.sort_by_key(|r| r.at);
        v
    }
}

/// Told of each batch the writer commits, with how long its commit took
/// (the daemon's metrics count them; the writer knows nothing of them).
pub trait CommitObserver: Send + Sync {
    /// A batch was committed, in `took` (its fsync included).
    fn committed(&self, took: Duration);
}

/// The daemon's audit writer: a thread that commits whatever records have
/// queued up in one transaction, then acknowledges them all; that writes
/// the aggregated failures once a second; that prunes past the retention;
/// and that, while writes fail, probes the database until they work again.
pub struct Writer {
    tx: mpsc::Sender<Job>,
    tally: Arc<Mutex<Tally>>,
    health: Arc<AuditHealth>,
    retention_s: Arc<AtomicI64>,
    keep_free: Arc<Mutex<KeepFree>>,
}

/// How often aggregated failures are written, and the writer wakes.
const WINDOW: Duration = Duration::from_secs(1);
/// How often the retention is applied.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

impl Writer {
    /// Start the writer on the database at `path`, which must keep naming
    /// the file `expected` (the one the daemon opened): after each commit
    /// the writer checks that it still does, and otherwise fails the batch,
    /// so no token leaves whose record is not in the database at the
    /// configured path (a database deleted or replaced under the daemon).
    /// `on_commit` is told of each batch committed.
    pub fn start(
        path: PathBuf,
        durability: AuditSync,
        expected: FileId,
        retention: Duration,
        keep_free: KeepFree,
        on_commit: Arc<impl CommitObserver + 'static>,
    ) -> Result<Writer> {
        let conn = open(&path, durability)?;
        let page_size = conn
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .map_or(4096, |n| u64::try_from(n).unwrap_or(4096));
        let (tx, rx) = mpsc::channel::<Job>();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let health = Arc::new(AuditHealth {
            ok: AtomicBool::new(true),
            ..AuditHealth::default()
        });
        let retention_s = Arc::new(AtomicI64::new(retention.as_secs() as i64));
        let keep_free = Arc::new(Mutex::new(keep_free));
        // Where the database and its WAL really are (symlinks resolved).
        let real = crate::store::lock::canonical_db(&path).unwrap_or_else(|_| path.clone());
        let space_dir = dir_of(&real).to_owned();
        let wal_path = with_suffix(&real, "-wal");
        let mut thread = WriterThread {
            conn,
            path,
            expected,
            tally: Arc::clone(&tally),
            health: Arc::clone(&health),
            retention_s: Arc::clone(&retention_s),
            // The first retention pass a little after start, not during it.
            next_prune: Instant::now() + Duration::from_secs(10),
            pruning: None,
            on_commit,
            purge_clock: crate::clock::PurgeClock::new("audit records past the retention"),
            keep_free: Arc::clone(&keep_free),
            space_dir,
            last_avail: 0,
            margin: 0,
            wal_path,
            page_size,
            checked: Instant::now(),
        };
        // The reserve is known before the first sign.
        thread.check_space();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || thread.run(rx))
            .map_err(Error::io("starting the audit writer", "thread"))?;
        Ok(Writer {
            tx,
            tally,
            health,
            retention_s,
            keep_free,
        })
    }

    /// Commit `records`; true once they are durable in the database at the
    /// configured path.
    pub async fn commit(&self, records: Vec<Record>) -> bool {
        let (ack, done) = tokio::sync::oneshot::channel();
        if self.tx.send(Job::Commit(records, ack)).is_err() {
            return false;
        }
        done.await.unwrap_or(false)
    }

    /// Count a failure that carries no token; written within a second, as
    /// one record per peer uid, op and result. Never waits.
    pub fn tally(&self, record: Record) {
        self.tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(record);
    }

    /// Prune the records older than `before`; `by` is the admin's record.
    pub async fn prune(&self, before: i64, by: Record) -> std::result::Result<Pruned, String> {
        let (ack, done) = tokio::sync::oneshot::channel();
        if self.tx.send(Job::Prune { before, by, ack }).is_err() {
            return Err("the audit writer has stopped".into());
        }
        done.await
            .unwrap_or_else(|_| Err("the audit writer has stopped".into()))
    }

    pub fn health(&self) -> &AuditHealth {
        &self.health
    }

    /// Take a reloaded retention and reserve (the reserve is checked
    /// again within a second).
    pub fn set_retention(&self, retention: Duration, keep_free: KeepFree) {
        self.retention_s
            .store(retention.as_secs() as i64, Ordering::Relaxed);
        *self.keep_free.lock().unwrap_or_else(|p| p.into_inner()) = keep_free;
    }
}

/// A prune in progress: done in batches between commits, so that signing
/// does not wait behind a large one.
struct Pruning {
    before: i64,
    records: usize,
    by: Option<Record>,
    ack: Option<tokio::sync::oneshot::Sender<std::result::Result<Pruned, String>>>,
}

struct WriterThread {
    conn: Connection,
    path: PathBuf,
    expected: FileId,
    tally: Arc<Mutex<Tally>>,
    health: Arc<AuditHealth>,
    retention_s: Arc<AtomicI64>,
    next_prune: Instant,
    /// Told of each batch committed (the daemon's metrics).
    on_commit: Arc<dyn CommitObserver>,
    pruning: Option<Pruning>,
    /// The retention counts back from this clock, not the wall clock: a
    /// clock stepped forward prunes nothing early.
    purge_clock: crate::clock::PurgeClock,
    keep_free: Arc<Mutex<KeepFree>>,
    /// The directory that holds the database and its WAL (its symlinks
    /// resolved), whose filesystem the reserve is measured on.
    space_dir: PathBuf,
    /// Bytes free at the last check, and how early the reserve starts.
    last_avail: u64,
    margin: u64,
    /// The WAL (what it holds is not yet in the database).
    wal_path: PathBuf,
    page_size: u64,
    /// When the space was last checked.
    checked: Instant,
}

/// The space is checked after a commit at most this often (and every
/// second, and at start).
const SPACE_CHECK: Duration = Duration::from_millis(20);

/// The WAL's usual peak: 1,000 pages (SQLite's autocheckpoint) of 4 KiB.
const WAL_PEAK: u64 = 4 << 20;

/// Room on the filesystem itself, beyond the WAL's peak, that the reserve
/// always keeps: a prune's batch writes its pages to the WAL first.
const PRUNE_ROOM: u64 = 4 << 20;

/// While the log is in its reserve, refusals (which carry no token) are
/// aggregated over this many seconds instead of one: they would otherwise
/// eat the admins' reserve, a record per uid, op and code each second.
const RESERVE_WINDOW_S: i64 = 600;

/// What the space check found: the free space, the reserve, whether the
/// free space is below it, and whether it is down to the floor that even
/// admins' signs may not cross (room for the WAL and a prune).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Judged {
    free: u64,
    keep: u64,
    low: bool,
    floor: bool,
}

/// `avail`: bytes free on the filesystem for unprivileged writers;
/// `reusable`: the database's free pages; `wal`: the WAL's size now;
/// `margin`: how early the reserve starts (what the last batch took: the
/// next is likely to take as much).
///
/// What the WAL will still take is counted as taken: it may grow back to
/// its usual peak (a WAL truncated at a key change gives its space back
/// only until it regrows, so the reserve does not open and close with it),
/// and a checkpoint may copy all of it into new pages of the database, less
/// the free pages it reuses (a WAL that a long reader kept from being
/// checkpointed grows the database by that much once it is).
fn judge(
    avail: u64,
    reusable: u64,
    wal: u64,
    total: u64,
    setting: KeepFree,
    margin: u64,
) -> Judged {
    // On a small filesystem (under 64 MiB), the WAL's peak and a prune's
    // room shrink with it (a WAL of 4 MiB does not fit on 4 MiB).
    let (wal_peak, prune_room) = (WAL_PEAK.min(total / 8), PRUNE_ROOM.min(total / 16));
    let regrow = wal_peak.saturating_sub(wal);
    let checkpoint = wal.saturating_sub(reusable);
    let room = avail.saturating_sub(regrow).saturating_sub(checkpoint);
    let free = room.saturating_add(reusable.saturating_sub(wal));
    let keep = match setting.bytes(total) {
        0 => {
            return Judged {
                free,
                keep: 0,
                low: false,
                floor: false,
            };
        }
        n => n.max(wal_peak + prune_room),
    };
    // (The least reserve: without the WAL's peak and a prune's room no one
    // could write, admins included, and a prune could not free anything.)
    // Freed pages help the database, not the filesystem: below the floor,
    // no one signs, so that a prune (and every admin op) still has room.
    let floor = room < prune_room;
    let low = floor || free < keep.saturating_add(margin);
    Judged {
        free,
        keep,
        low,
        floor,
    }
}

fn wall_now() -> i64 {
    crate::clock::wall_now()
}

impl WriterThread {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        loop {
            let wait = if self.pruning.is_some() {
                Duration::ZERO
            } else {
                WINDOW
            };
            match rx.recv_timeout(wait) {
                Ok(Job::Commit(records, ack)) => self.commit_batch(records, ack, &rx),
                Ok(Job::Prune { before, by, ack }) => self.start_prune(before, Some(by), Some(ack)),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let rest = self.due_tally(true);
                    if !rest.is_empty() {
                        let _ = self.write(&rest);
                    }
                    return;
                }
            }
            let due = self.due_tally(false);
            if !due.is_empty() && !self.write(&due) {
                self.put_back(due);
            }
            if !self.health.ok() {
                self.probe();
            }
            self.check_space();
            self.prune_step();
        }
    }

    /// Commit this batch and every commit queued behind it (group commit),
    /// with the aggregated failures if their second is over.
    fn commit_batch(&mut self, records: Vec<Record>, ack: Ack, rx: &mpsc::Receiver<Job>) {
        let mut acks = vec![ack];
        let mut all = records;
        let mut later = Vec::new();
        while acks.len() < 4096 {
            match rx.try_recv() {
                Ok(Job::Commit(r, a)) => {
                    all.extend(r);
                    acks.push(a);
                }
                Ok(other) => {
                    later.push(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let tallied = self.due_tally(false);
        let n = tallied.len();
        all.extend(tallied);
        let ok = self.write(&all);
        if !ok && n > 0 {
            let back = all.split_off(all.len() - n);
            self.put_back(back);
        }
        for a in acks {
            let _ = a.send(ok);
        }
        // The next batches are judged by the space this one left: after the
        // acknowledgements, and at most every SPACE_CHECK (the margin
        // covers what the batches between two checks take), so that the
        // check is not on the signing path's latency.
        if self.checked.elapsed() >= SPACE_CHECK {
            self.check_space();
        }
        for job in later {
            if let Job::Prune { before, by, ack } = job {
                self.start_prune(before, Some(by), Some(ack));
            }
        }
    }

    /// Append `records`; true if they are durable in the database at the
    /// configured path.
    fn write(&mut self, records: &[Record]) -> bool {
        let started = Instant::now();
        let ok = match append(&mut self.conn, records) {
            Ok(()) => match self.expected.still_at(&self.path) {
                Ok(()) => true,
                Err(why) => {
                    tracing::error!(reason = %why, record_count = records.len(), "audit records went to a database no longer at its path; withholding their tokens");
                    false
                }
            },
            Err(e) => {
                if self.health.ok() {
                    tracing::error!(error = %e, db = %self.path.display(), record_count = records.len(), "audit log write failed; signing fails closed until it can be written");
                }
                false
            }
        };
        self.health.set(ok, wall_now());
        if ok {
            self.on_commit.committed(started.elapsed());
        }
        ok
    }

    /// The aggregated failures whose window is over (all, with `flush`).
    fn due_tally(&self, flush: bool) -> Vec<Record> {
        let window = if self.health.in_reserve() {
            RESERVE_WINDOW_S
        } else {
            WINDOW.as_secs() as i64
        };
        let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        if t.records.is_empty() || (!flush && wall_now() < t.window + window) {
            return Vec::new();
        }
        t.take()
    }

    /// Aggregated failures that could not be written wait for the next
    /// window, merged with the new ones (the tally stays bounded).
    fn put_back(&self, records: Vec<Record>) {
        let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        for r in records {
            t.add(r);
        }
    }

    /// Compare the free space of the log's filesystem with the reserve, and
    /// say so when it crosses it. A filesystem that cannot be asked leaves
    /// the last answer (the writes themselves still fail closed).
    fn check_space(&mut self) {
        self.checked = Instant::now();
        let Ok(fs) = rustix::fs::statvfs(&self.space_dir) else {
            return;
        };
        // Pages the database freed (a prune's) are reused before its file
        // grows.
        let reusable = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
            .map_or(0, |n| u64::try_from(n).unwrap_or(0))
            .saturating_mul(self.page_size);
        let avail = fs.f_bavail.saturating_mul(fs.f_frsize);
        let setting = *self.keep_free.lock().unwrap_or_else(|p| p.into_inner());
        // The reserve starts early by what the last batch took; in the
        // reserve, that margin stays until space comes back (hysteresis:
        // the margin falls when only admins write).
        let used = self.last_avail.saturating_sub(avail);
        self.margin = if self.health.in_reserve() {
            self.margin.max(used)
        } else {
            used
        };
        self.last_avail = avail;
        let wal = std::fs::metadata(&self.wal_path).map_or(0, |m| m.len());
        let j = judge(
            avail,
            reusable,
            wal,
            fs.f_blocks.saturating_mul(fs.f_frsize),
            setting,
            self.margin,
        );
        let h = &self.health;
        h.free_bytes.store(j.free, Ordering::Relaxed);
        h.keep_free_bytes.store(j.keep, Ordering::Relaxed);
        let was_floor = h.at_floor.swap(j.floor, Ordering::Relaxed);
        if j.floor && !was_floor {
            tracing::error!(
                free = %crate::config::human_bytes(avail),
                db = %self.path.display(),
                "the audit log's filesystem is down to its floor: no one may sign until space is freed (admin ops and `splitsign audit --prune-before` still work)"
            );
        }
        let was = h.in_reserve.swap(j.low, Ordering::Relaxed);
        if j.low && !was {
            tracing::warn!(
                free = %crate::config::human_bytes(j.free),
                keep_free = %crate::config::human_bytes(j.keep),
                db = %self.path.display(),
                "the audit log's filesystem is down to its reserve (audit_keep_free): only admins may sign until space is freed"
            );
        } else if was && !j.low {
            tracing::info!(
                free = %crate::config::human_bytes(j.free),
                keep_free = %crate::config::human_bytes(j.keep),
                "the audit log's filesystem is above its reserve again: everyone may sign"
            );
        }
    }

    /// While writes fail (a full disk): give the WAL's space back if it
    /// can, then try a write that adds no record.
    fn probe(&mut self) {
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        let ok = self
            .conn
            .execute("UPDATE audit_probe SET n = n + 1", [])
            .is_ok();
        if ok {
            self.health.set(true, wall_now());
        }
    }

    fn start_prune(
        &mut self,
        before: i64,
        by: Option<Record>,
        ack: Option<tokio::sync::oneshot::Sender<std::result::Result<Pruned, String>>>,
    ) {
        if let Some(p) = self.pruning.take()
            && let Some(old) = p.ack
        {
            let _ = old.send(Err("superseded by another prune".into()));
        }
        self.pruning = Some(Pruning {
            before,
            records: 0,
            by,
            ack,
        });
    }

    /// One batch of the prune in progress, or start the retention's.
    fn prune_step(&mut self) {
        if self.pruning.is_none() && Instant::now() >= self.next_prune {
            self.next_prune = Instant::now() + PRUNE_EVERY;
            let before = self.purge_clock.now() - self.retention_s.load(Ordering::Relaxed);
            self.start_prune(before, None, None);
        }
        let Some(p) = &mut self.pruning else {
            return;
        };
        let before = p.before;
        match prune_batch(&mut self.conn, before, PRUNE_BATCH) {
            Ok((n, true)) => p.records += n,
            Ok((n, false)) => {
                p.records += n;
                let p = self.pruning.take().expect("a prune in progress");
                if p.records > 0 || p.by.is_some() {
                    tracing::info!(record_count = p.records, before, "pruned the audit log");
                    let mut rec = p.by.unwrap_or(Record {
                        op: "audit_prune",
                        result: "ok",
                        ..Record::default()
                    });
                    rec.at = wall_now();
                    if !self.write(&[rec]) {
                        tracing::warn!("could not record the prune in the audit log");
                    }
                }
                // The WAL a prune grew goes back to the filesystem.
                if p.records > 0 {
                    let _ = self
                        .conn
                        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                }
                if let Some(ack) = p.ack {
                    let _ = ack.send(Ok(Pruned {
                        records: p.records,
                        before,
                    }));
                }
            }
            Err(e) => {
                let p = self.pruning.take().expect("a prune in progress");
                tracing::warn!(error = %e, "pruning the audit log failed; retrying later");
                if let Some(ack) = p.ack {
                    let _ = ack.send(Err(e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_keeps_room_for_the_wal_and_starts_early() {
        let mib = 1u64 << 20;
        let pct = |p: f64| KeepFree::Percent {
            percent: p,
            cap: None,
        };
        let bytes = KeepFree::Bytes;
        // The WAL at its peak, nothing freed: what is free is what is left
        // after a checkpoint copied the WAL into the database.
        let peak = WAL_PEAK;
        // Off: never low.
        assert!(!judge(0, 0, peak, 64 * mib, bytes(0), 0).low);
        // A 4 MiB filesystem: the WAL's peak and the prune's room shrink.
        let j = judge(2 * mib, 0, 0, 4 * mib, pct(5.0), 0);
        assert_eq!((j.free, j.keep, j.floor), (3 * mib / 2, 3 * mib / 4, false));
        // 5% of 64 MiB is 3.2 MiB: the reserve is at least the WAL's peak
        // and a prune's room.
        let j = judge(13 * mib, 0, peak, 64 * mib, pct(5.0), 0);
        assert_eq!(
            (j.free, j.keep, j.low),
            (9 * mib, WAL_PEAK + PRUNE_ROOM, false)
        );
        assert!(judge(11 * mib, 0, peak, 64 * mib, pct(5.0), 0).low);
        // Freed pages count, but not below the floor: no one signs there.
        let j = judge(10 * mib, 30 * mib, peak, 100 * mib, bytes(32 * mib), 0);
        assert_eq!((j.free, j.low, j.floor), (36 * mib, false, false));
        let j = judge(3 * mib, 90 * mib, peak, 100 * mib, bytes(32 * mib), 0);
        assert!(j.low && j.floor);
        // A truncated WAL's space is counted as the WAL's, until it regrows.
        let j = judge(14 * mib, 0, 0, 100 * mib, bytes(12 * mib), 0);
        assert_eq!((j.free, j.low), (10 * mib, true));
        // A WAL a long reader kept from its checkpoint: the database will
        // grow by it (less the freed pages).
        let j = judge(30 * mib, 2 * mib, 25 * mib, 100 * mib, bytes(8 * mib), 0);
        assert_eq!((j.free, j.low, j.floor), (7 * mib, true, false));
        // What the last batch took, the reserve starts early by.
        assert!(!judge(38 * mib, 0, peak, 100 * mib, bytes(32 * mib), mib).low);
        assert!(judge(38 * mib, 0, peak, 100 * mib, bytes(32 * mib), 3 * mib).low);
    }

    #[test]
    fn failures_aggregate_per_uid_op_and_result() {
        let mut t = Tally::default();
        for i in 0..10_000 {
            t.add(Record {
                at: 5,
                uid: Some(7),
                op: "verify",
                result: "invalid_token",
                sub: Some(format!("s{i}")),
                ..Record::default()
            });
        }
        t.add(Record {
            at: 5,
            uid: Some(8),
            op: "verify",
            result: "invalid_token",
            ..Record::default()
        });
        let v = t.take();
        assert_eq!(v.len(), 2);
        let seven = v.iter().find(|r| r.uid == Some(7)).unwrap();
        assert_eq!(seven.count, 10_000);
        assert_eq!(seven.sub.as_deref(), Some("s0"));
        // Many uids: the tally stays bounded.
        for uid in 0..(MAX_TALLY_KEYS as u32 * 2) {
            t.add(Record {
                at: 6,
                uid: Some(uid),
                op: "connect",
                result: "busy",
                ..Record::default()
            });
        }
        assert!(t.records.len() <= MAX_TALLY_KEYS + 1);
        let total: u32 = t.take().iter().map(|r| r.count).sum();
        assert_eq!(total, MAX_TALLY_KEYS as u32 * 2);
    }
}
