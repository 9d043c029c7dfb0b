//! `audit` keeps the audit log in SQLite, each record chained to the
//! previous one by SHA-256, so that a deleted or edited record is found by
//! [`verify`].
//!
//! What is recorded, and how it stays bounded:
//! - every issued token and every admin op gets its own record, committed
//!   (group commit, on one writer thread) before the reply it covers
//!   leaves; if it cannot be written, signing fails closed;
//! - failures that carry no token (a refused verify, a refused sign, a
//!   refused connection) are aggregated per peer uid, op and result over a
//!   second, into one record with a `count`, so one peer adds at most a few
//!   records a second however fast it sends;
//! - every stored string is bounded ([`bound`]);
//! - records older than the retention are pruned in the background; an
//!   anchor keeps the hash of the last pruned record, and [`verify`] checks
//!   the chain from there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::filestore::FileId;

/// One audit record, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub at: i64,
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    pub op: &'static str,
    pub kid: Option<String>,
    pub sub: Option<String>,
    pub jti: Option<String>,
    /// "ok", or the error code.
    pub result: &'static str,
    /// How many events this record stands for (aggregated failures).
    pub count: u32,
}

impl Default for Record {
    fn default() -> Record {
        Record {
            at: 0,
            uid: None,
            pid: None,
            op: "",
            kid: None,
            sub: None,
            jti: None,
            result: "",
            count: 1,
        }
    }
}

/// A stored record, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stored {
    pub seq: i64,
    pub at: i64,
    pub uid: Option<i64>,
    pub pid: Option<i64>,
    pub op: String,
    pub kid: Option<String>,
    pub sub: Option<String>,
    pub jti: Option<String>,
    pub result: String,
    pub count: i64,
}

/// The longest string stored in a record field, in bytes.
pub const MAX_FIELD: usize = 256;

/// A field as stored: itself if at most [`MAX_FIELD`] bytes, else a prefix
/// and the SHA-256 of the whole value (so a long value is still told apart
/// from others, but costs 256 bytes, not 60 KB).
pub fn bound(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_owned();
    }
    let digest: String = Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    const MARK: &str = "…sha256:";
    let mut keep = MAX_FIELD - MARK.len() - digest.len();
    while !s.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{MARK}{digest}", &s[..keep])
}

fn chain_hash(prev: &[u8], seq: i64, r: &Stored) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"splitsign-audit 1\0");
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(r.at.to_be_bytes());
    for v in [r.uid, r.pid] {
        match v {
            Some(x) => {
                h.update([1]);
                h.update(x.to_be_bytes());
            }
            None => h.update([0]),
        }
    }
    for s in [
        Some(&r.op),
        r.kid.as_ref(),
        r.sub.as_ref(),
        r.jti.as_ref(),
        Some(&r.result),
    ] {
        match s {
            Some(s) => {
                h.update([1]);
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
            None => h.update([0]),
        }
    }
    // A count above 1 is hashed after a tag no earlier field can end with;
    // records of count 1 hash as they did before counts existed, so chains
    // written then still verify.
    if r.count != 1 {
        h.update([2]);
        h.update(r.count.to_be_bytes());
    }
    h.finalize().into()
}

/// The last record of the chain (or its anchor when every record was
/// pruned): its seq and hash.
fn chain_head(conn: &Connection) -> rusqlite::Result<(i64, Vec<u8>)> {
    let last = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match last {
        Some(head) => Ok(head),
        None => Ok(anchor(conn)?
            .map(|a| (a.seq, a.hash))
            .unwrap_or((0, vec![0u8; 32]))),
    }
}

/// Append records in one transaction, chained to the last stored one.
/// String fields are bounded here, whoever made the record.
pub fn append(conn: &mut Connection, records: &[Record]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (mut seq, mut prev) = chain_head(&tx)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO audit (seq, at, uid, pid, op, kid, sub, jti, result, count, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for r in records {
            seq += 1;
            let stored = Stored {
                seq,
                at: r.at,
                uid: r.uid.map(i64::from),
                pid: r.pid.map(i64::from),
                op: bound(r.op),
                kid: r.kid.as_deref().map(bound),
                sub: r.sub.as_deref().map(bound),
                jti: r.jti.as_deref().map(bound),
                result: bound(r.result),
                count: i64::from(r.count.max(1)),
            };
            let hash = chain_hash(&prev, seq, &stored);
            stmt.execute(params![
                seq,
                stored.at,
                stored.uid,
                stored.pid,
                stored.op,
                stored.kid,
                stored.sub,
                stored.jti,
                stored.result,
                stored.count,
                &prev[..],
                &hash[..]
            ])?;
            prev = hash.to_vec();
        }
    }
    tx.commit()
}

/// A record from the first ten columns (seq … count) of a row.
fn stored(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        seq: r.get(0)?,
        at: r.get(1)?,
        uid: r.get(2)?,
        pid: r.get(3)?,
        op: r.get(4)?,
        kid: r.get(5)?,
        sub: r.get(6)?,
        jti: r.get(7)?,
        result: r.get(8)?,
        count: r.get(9)?,
    })
}

/// Records in order, from `from_seq` on, at most `limit`.
pub fn list(conn: &Connection, from_seq: i64, limit: i64) -> rusqlite::Result<Vec<Stored>> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, uid, pid, op, kid, sub, jti, result, count FROM audit
         WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![from_seq, limit], stored)?;
    rows.collect()
}

/// Where the chain starts after pruning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The last pruned record.
    pub seq: i64,
    pub hash: Vec<u8>,
    /// The last prune removed the records before this time.
    pub pruned_before: i64,
    /// Records pruned so far, in all.
    pub pruned: i64,
}

pub fn anchor(conn: &Connection) -> rusqlite::Result<Option<Anchor>> {
    conn.query_row(
        "SELECT seq, hash, pruned_before, pruned FROM audit_anchor",
        [],
        |r| {
            Ok(Anchor {
                seq: r.get(0)?,
                hash: r.get(1)?,
                pruned_before: r.get(2)?,
                pruned: r.get(3)?,
            })
        },
    )
    .optional()
}

/// Outcome of checking the chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record chains; `head` is the last hash (hex), worth recording
    /// elsewhere: a truncated tail is only visible against such an anchor.
    /// With `anchor`, the chain was checked from the last pruned record.
    Intact {
        records: i64,
        head: String,
        anchor: Option<Anchor>,
    },
    Broken {
        seq: i64,
        reason: String,
    },
}

/// Walk the whole chain, from its start or from the pruning anchor.
pub fn verify(conn: &Connection) -> rusqlite::Result<Verdict> {
    let anchor = anchor(conn)?;
    let mut stmt = conn.prepare(
        "SELECT seq, at, uid, pid, op, kid, sub, jti, result, count, prev_hash, hash
         FROM audit ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let (mut expect_seq, mut prev) = match &anchor {
        Some(a) => (a.seq + 1, a.hash.clone()),
        None => (1, vec![0u8; 32]),
    };
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let s = stored(r)?;
        let stored_prev: Vec<u8> = r.get(10)?;
        let stored_hash: Vec<u8> = r.get(11)?;
        if s.seq != expect_seq {
            return Ok(Verdict::Broken {
                seq: expect_seq,
                reason: format!("record {expect_seq} is missing (next is {})", s.seq),
            });
        }
        if stored_prev != prev {
            return Ok(Verdict::Broken {
                seq: s.seq,
                reason: if n == 0 && anchor.is_some() {
                    format!("record {} does not chain to the pruning anchor", s.seq)
                } else {
                    format!("record {} does not chain to record {}", s.seq, s.seq - 1)
                },
            });
        }
        if s.count < 1 || s.count > i64::from(u32::MAX) {
            return Ok(Verdict::Broken {
                seq: s.seq,
                reason: format!("record {} has an impossible count", s.seq),
            });
        }
        if stored_hash[..] != chain_hash(&prev, s.seq, &s)[..] {
            return Ok(Verdict::Broken {
                seq: s.seq,
                reason: format!("record {} was altered (its hash does not match)", s.seq),
            });
        }
        prev = stored_hash;
        expect_seq += 1;
        n += 1;
    }
    Ok(Verdict::Intact {
        records: n,
        head: prev.iter().map(|b| format!("{b:02x}")).collect(),
        anchor,
    })
}

/// Prune up to `limit` of the oldest records, all older than `before`, in
/// one transaction: the prefix of the chain up to the last of them goes,
/// and the anchor takes that record's seq and hash. Records are pruned in
/// chain order only (a record older than `before` behind a newer one stays
/// until that one goes too), so what remains is always one chain. Returns
/// how many went, and whether more may remain.
pub fn prune_batch(
    conn: &mut Connection,
    before: i64,
    limit: usize,
) -> rusqlite::Result<(usize, bool)> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (taken, last) = {
        let mut stmt = tx.prepare("SELECT seq, at, hash FROM audit ORDER BY seq LIMIT ?1")?;
        let mut rows = stmt.query([limit as i64])?;
        let mut taken = 0usize;
        let mut last: Option<(i64, Vec<u8>)> = None;
        let mut stopped = false;
        while let Some(r) = rows.next()? {
            let at: i64 = r.get(1)?;
            if at >= before {
                stopped = true;
                break;
            }
            last = Some((r.get(0)?, r.get(2)?));
            taken += 1;
        }
        (taken, last.map(|l| (l, stopped)))
    };
    let Some(((seq, hash), stopped)) = last else {
        return Ok((0, false));
    };
    tx.execute("DELETE FROM audit WHERE seq <= ?1", [seq])?;
    tx.execute(
        "INSERT INTO audit_anchor (singleton, seq, hash, pruned_before, pruned)
         VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT (singleton) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
             pruned_before = excluded.pruned_before, pruned = audit_anchor.pruned + excluded.pruned",
        params![seq, &hash[..], before, taken as i64],
    )?;
    tx.commit()?;
    Ok((taken, !stopped && taken == limit))
}

/// Prune every record older than `before` (in batches), offline.
pub fn prune(conn: &mut Connection, before: i64) -> rusqlite::Result<usize> {
    let mut total = 0;
    loop {
        let (n, more) = prune_batch(conn, before, PRUNE_BATCH)?;
        total += n;
        if !more {
            return Ok(total);
        }
    }
}

/// Records deleted per pruning transaction: small enough that a commit
/// waiting behind it is not held long.
const PRUNE_BATCH: usize = 5000;

/// How hard an audit commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsync'ed at every commit; a committed
    /// record survives power loss. One fsync per batch.
    Full,
    /// `synchronous=NORMAL` (WAL): a committed record survives a crash of
    /// the daemon (it is in the OS before the reply leaves), but the last
    /// batches may be lost on power loss. No fsync per batch.
    Normal,
}

/// Open a connection for audit writes: WAL, the chosen durability, and a
/// short busy timeout so a stuck lock fails closed quickly.
pub fn open(path: &Path, durability: Durability) -> Result<Connection> {
    let db_err = |source| Error::Database {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(db_err)?;
    conn.busy_timeout(Duration::from_secs(2)).map_err(db_err)?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
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

/// Whether the log can be written, as the writer last found it.
#[derive(Debug)]
pub struct Health {
    ok: AtomicBool,
    /// Unix seconds of the first failure since the last success.
    failing_since: AtomicI64,
}

impl Health {
    pub fn ok(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
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
                r.sub = r.sub.as_deref().map(bound);
                r.jti = r.jti.as_deref().map(bound);
                r.kid = r.kid.as_deref().map(bound);
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

/// The daemon's audit writer: a thread that commits whatever records have
/// queued up in one transaction, then acknowledges them all; that writes
/// the aggregated failures once a second; that prunes past the retention;
/// and that, while writes fail, probes the database until they work again.
pub struct Writer {
    tx: mpsc::Sender<Job>,
    tally: Arc<Mutex<Tally>>,
    health: Arc<Health>,
    retention_s: Arc<AtomicI64>,
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
    pub fn start(
        path: PathBuf,
        durability: Durability,
        expected: FileId,
        retention: Duration,
    ) -> Result<Writer> {
        let conn = open(&path, durability)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let health = Arc::new(Health {
            ok: AtomicBool::new(true),
            failing_since: AtomicI64::new(0),
        });
        let retention_s = Arc::new(AtomicI64::new(retention.as_secs() as i64));
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
        };
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || thread.run(rx))
            .map_err(Error::io("starting the audit writer", "thread"))?;
        Ok(Writer {
            tx,
            tally,
            health,
            retention_s,
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

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Take a reloaded retention.
    pub fn set_retention(&self, retention: Duration) {
        self.retention_s
            .store(retention.as_secs() as i64, Ordering::Relaxed);
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
    health: Arc<Health>,
    retention_s: Arc<AtomicI64>,
    next_prune: Instant,
    pruning: Option<Pruning>,
}

fn wall_now() -> i64 {
    crate::lifecycle::wall_now()
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
        for job in later {
            if let Job::Prune { before, by, ack } = job {
                self.start_prune(before, Some(by), Some(ack));
            }
        }
    }

    /// Append `records`; true if they are durable in the database at the
    /// configured path.
    fn write(&mut self, records: &[Record]) -> bool {
        let ok = match append(&mut self.conn, records) {
            Ok(()) => match self.expected.still_at(&self.path) {
                Ok(()) => true,
                Err(why) => {
                    tracing::error!(reason = %why, records = records.len(), "audit records went to a database no longer at its path; withholding their tokens");
                    false
                }
            },
            Err(e) => {
                if self.health.ok() {
                    tracing::error!(error = %e, db = %self.path.display(), records = records.len(), "audit log write failed; signing fails closed until it can be written");
                }
                false
            }
        };
        self.health.set(ok, wall_now());
        ok
    }

    /// The aggregated failures whose window is over (all, with `flush`).
    fn due_tally(&self, flush: bool) -> Vec<Record> {
        let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        if t.records.is_empty() || (!flush && wall_now() < t.window + WINDOW.as_secs() as i64) {
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

    /// While writes fail (a full disk): try a write that adds no record.
    fn probe(&mut self) {
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
            let before = wall_now() - self.retention_s.load(Ordering::Relaxed);
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
                    tracing::info!(records = p.records, before, "pruned the audit log");
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

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::migrate_for_test(&mut c);
        c
    }

    fn rec(i: i64) -> Record {
        Record {
            at: i,
            uid: Some(1000),
            pid: Some(42),
            op: "sign",
            kid: Some("k".into()),
            sub: Some(format!("u{i}")),
            jti: Some(format!("j{i}")),
            result: "ok",
            count: 1,
        }
    }

    #[test]
    fn a_chain_verifies_and_any_edit_or_deletion_is_named() {
        let mut c = db();
        append(&mut c, &(1..=5).map(rec).collect::<Vec<_>>()).unwrap();
        append(&mut c, &[rec(6)]).unwrap();
        assert!(matches!(
            verify(&c).unwrap(),
            Verdict::Intact { records: 6, .. }
        ));
        c.execute("UPDATE audit SET sub = 'mallory' WHERE seq = 3", [])
            .unwrap();
        assert_eq!(
            verify(&c).unwrap(),
            Verdict::Broken {
                seq: 3,
                reason: "record 3 was altered (its hash does not match)".into()
            }
        );
        let mut c = db();
        append(&mut c, &(1..=5).map(rec).collect::<Vec<_>>()).unwrap();
        c.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        assert!(matches!(
            verify(&c).unwrap(),
            Verdict::Broken { seq: 2, .. }
        ));
    }

    #[test]
    fn counts_are_chained() {
        let mut c = db();
        let mut r = rec(1);
        r.count = 500;
        append(&mut c, &[rec(0), r, rec(2)]).unwrap();
        assert!(matches!(verify(&c).unwrap(), Verdict::Intact { .. }));
        for n in [1, 499] {
            let mut c2 = db();
            let mut r = rec(1);
            r.count = 500;
            append(&mut c2, &[rec(0), r, rec(2)]).unwrap();
            c2.execute("UPDATE audit SET count = ?1 WHERE seq = 2", [n])
                .unwrap();
            assert!(matches!(
                verify(&c2).unwrap(),
                Verdict::Broken { seq: 2, .. }
            ));
        }
    }

    #[test]
    fn pruning_keeps_the_rest_verifiable_from_the_anchor() {
        let mut c = db();
        append(&mut c, &(1..=20).map(rec).collect::<Vec<_>>()).unwrap();
        assert_eq!(prune(&mut c, 11).unwrap(), 10);
        let Verdict::Intact {
            records, anchor, ..
        } = verify(&c).unwrap()
        else {
            panic!("broken after pruning")
        };
        assert_eq!(records, 10);
        assert_eq!(anchor.as_ref().unwrap().seq, 10);
        // New records chain on; pruning everything leaves the anchor, and
        // the next record chains to it.
        append(&mut c, &[rec(21)]).unwrap();
        assert_eq!(prune(&mut c, 1000).unwrap(), 11);
        append(&mut c, &[rec(22)]).unwrap();
        assert!(matches!(
            verify(&c).unwrap(),
            Verdict::Intact { records: 1, .. }
        ));
        // An edit after pruning is still found.
        c.execute("UPDATE audit SET result = 'forbidden'", [])
            .unwrap();
        assert!(matches!(verify(&c).unwrap(), Verdict::Broken { .. }));
    }

    #[test]
    fn pruning_takes_a_prefix_of_the_chain_only() {
        let mut c = db();
        // Times out of order (a clock set back): record 3 is older than
        // `before` but follows a newer one, so it stays.
        append(&mut c, &[rec(1), rec(2), rec(100), rec(3), rec(101)]).unwrap();
        assert_eq!(prune(&mut c, 50).unwrap(), 2);
        assert!(matches!(
            verify(&c).unwrap(),
            Verdict::Intact { records: 3, .. }
        ));
    }

    #[test]
    fn long_fields_are_bounded_and_told_apart() {
        let a = "a".repeat(60_000);
        let mut b = a.clone();
        b.push('b');
        assert_eq!(bound(&a).len(), MAX_FIELD);
        assert_ne!(bound(&a), bound(&b));
        assert_eq!(bound("alice"), "alice");
        let multibyte = "é".repeat(200);
        assert!(bound(&multibyte).len() <= MAX_FIELD);
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
