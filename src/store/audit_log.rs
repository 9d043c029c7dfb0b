//! `audit_log` is the audit log's table: records chained to the previous
//! one by SHA-256, so that a deleted or edited record is found by
//! [`verify`]; appending, listing, checking and pruning. (The daemon's
//! writer, which batches, aggregates and retries, is
//! `daemon::audit_writer`.)
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

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

use super::sqlite::Database;

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
pub fn bound(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_FIELD {
        return std::borrow::Cow::Borrowed(s);
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
    std::borrow::Cow::Owned(format!("{}{MARK}{digest}", &s[..keep]))
}

/// What a record's hash covers, borrowed (from a record being appended, or
/// from one read back).
struct Hashed<'a> {
    at: i64,
    uid: Option<i64>,
    pid: Option<i64>,
    op: &'a str,
    kid: Option<&'a str>,
    sub: Option<&'a str>,
    jti: Option<&'a str>,
    result: &'a str,
    count: i64,
}

impl Stored {
    fn hashed(&self) -> Hashed<'_> {
        Hashed {
            at: self.at,
            uid: self.uid,
            pid: self.pid,
            op: &self.op,
            kid: self.kid.as_deref(),
            sub: self.sub.as_deref(),
            jti: self.jti.as_deref(),
            result: &self.result,
            count: self.count,
        }
    }
}

fn chain_hash(prev: &[u8], seq: i64, r: &Hashed<'_>) -> [u8; 32] {
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
    for s in [Some(r.op), r.kid, r.sub, r.jti, Some(r.result)] {
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
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match last {
        Some(head) => Ok(head),
        None => Ok(anchor(conn)?
            .map(|a| (a.seq, a.hash))
            .unwrap_or((0, vec![0u8; 32]))),
    }
}

/// The number that stands for `kid` in records (made on first use).
fn kid_id(tx: &Connection, kid: &str, known: &mut Vec<(String, i64)>) -> rusqlite::Result<i64> {
    if let Some((_, id)) = known.iter().find(|(k, _)| k == kid) {
        return Ok(*id);
    }
    tx.prepare_cached("INSERT OR IGNORE INTO audit_kid (kid) VALUES (?1)")?
        .execute([kid])?;
    let id = tx
        .prepare_cached("SELECT id FROM audit_kid WHERE kid = ?1")?
        .query_row([kid], |r| r.get(0))?;
    known.push((kid.to_owned(), id));
    Ok(id)
}

/// Every kid number and its kid.
fn kid_names(conn: &Connection) -> rusqlite::Result<std::collections::HashMap<i64, String>> {
    let mut stmt = conn.prepare("SELECT id, kid FROM audit_kid")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Rows per INSERT statement when appending (fewer statement runs).
const ROWS_PER_INSERT: usize = 32;

/// The two statements `append` runs, made once.
static INSERT_MANY: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| insert_sql(ROWS_PER_INSERT));
static INSERT_ONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| insert_sql(1));

/// `INSERT … VALUES (…), (…)` for `n` records.
fn insert_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO audit (seq, at, uid, pid, op, kid, sub, jti, result, count, hash) VALUES ",
    );
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?,?,?,?)");
    }
    sql
}

/// Append records in one transaction, chained to the last stored one.
/// String fields are bounded here, whoever made the record.
pub fn append(conn: &mut Connection, records: &[Record]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (seq, prev) = chain_head(&tx)?;
    let rows = chain_rows(&tx, records, seq, prev)?;
    insert_rows(&tx, &rows)?;
    tx.commit()
}

/// One record as [`append`] stores it: its fields bounded, its kid as the
/// kid's number, its place and hash in the chain.
struct Chained<'a> {
    seq: i64,
    at: i64,
    uid: Option<i64>,
    pid: Option<i64>,
    op: std::borrow::Cow<'a, str>,
    kid: Option<i64>,
    sub: Option<std::borrow::Cow<'a, str>>,
    jti: Option<std::borrow::Cow<'a, str>>,
    result: std::borrow::Cow<'a, str>,
    count: i64,
    hash: [u8; 32],
}

/// The step of [`append`] that chains: each record bounded, hashed after
/// the one before it (from `seq` and `prev`, the chain's head), and its
/// kid numbered (a new kid is stored in `tx`).
fn chain_rows<'a>(
    tx: &Connection,
    records: &'a [Record],
    mut seq: i64,
    mut prev: Vec<u8>,
) -> rusqlite::Result<Vec<Chained<'a>>> {
    let mut kids = Vec::new();
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        seq += 1;
        let op = bound(r.op);
        let kid = r.kid.as_deref().map(bound);
        let sub = r.sub.as_deref().map(bound);
        let jti = r.jti.as_deref().map(bound);
        let result = bound(r.result);
        let count = i64::from(r.count.max(1));
        let hash = chain_hash(
            &prev,
            seq,
            &Hashed {
                at: r.at,
                uid: r.uid.map(i64::from),
                pid: r.pid.map(i64::from),
                op: &op,
                kid: kid.as_deref(),
                sub: sub.as_deref(),
                jti: jti.as_deref(),
                result: &result,
                count,
            },
        );
        let kid = match &kid {
            Some(k) => Some(kid_id(tx, k, &mut kids)?),
            None => None,
        };
        rows.push(Chained {
            seq,
            at: r.at,
            uid: r.uid.map(i64::from),
            pid: r.pid.map(i64::from),
            op,
            kid,
            sub,
            jti,
            result,
            count,
            hash,
        });
        prev.clear();
        prev.extend_from_slice(&hash);
    }
    Ok(rows)
}

/// The step of [`append`] that inserts the chained rows in `tx`: whole
/// chunks with one statement, the rest one row at a time (two statements
/// in the cache, never re-parsed).
fn insert_rows(tx: &Connection, rows: &[Chained<'_>]) -> rusqlite::Result<()> {
    use rusqlite::ToSql;
    let whole = rows.len() - rows.len() % ROWS_PER_INSERT;
    let (full, rest) = rows.split_at(whole);
    for chunk in full.chunks(ROWS_PER_INSERT).chain(rest.chunks(1)) {
        let sql = if chunk.len() == ROWS_PER_INSERT {
            &INSERT_MANY
        } else {
            &INSERT_ONE
        };
        let mut stmt = tx.prepare_cached(sql)?;
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 11);
        for r in chunk {
            params.extend_from_slice(&[
                &r.seq as &dyn ToSql,
                &r.at,
                &r.uid,
                &r.pid,
                &r.op,
                &r.kid,
                &r.sub,
                &r.jti,
                &r.result,
                &r.count,
                &r.hash,
            ]);
        }
        stmt.execute(params.as_slice())?;
    }
    Ok(())
}

/// A record from the first ten columns (seq … count) of a row, its kid
/// number named from `kids`.
fn stored(
    r: &rusqlite::Row<'_>,
    kids: &std::collections::HashMap<i64, String>,
) -> rusqlite::Result<Stored> {
    let kid: Option<i64> = r.get(5)?;
    Ok(Stored {
        seq: r.get(0)?,
        at: r.get(1)?,
        uid: r.get(2)?,
        pid: r.get(3)?,
        op: r.get(4)?,
        // A number with no kid reads as one, so that the chain breaks there.
        kid: kid.map(|k| kids.get(&k).cloned().unwrap_or_else(|| format!("#{k}"))),
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
    let kids = kid_names(conn)?;
    let rows = stmt.query_map(params![from_seq, limit], |r| stored(r, &kids))?;
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
    let kids = kid_names(conn)?;
    let mut stmt = conn.prepare(
        "SELECT seq, at, uid, pid, op, kid, sub, jti, result, count, hash
         FROM audit ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let (mut expect_seq, mut prev) = match &anchor {
        Some(a) => (a.seq + 1, a.hash.clone()),
        None => (1, vec![0u8; 32]),
    };
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let s = stored(r, &kids)?;
        let stored_hash: Vec<u8> = r.get(10)?;
        if s.seq != expect_seq {
            return Ok(Verdict::Broken {
                seq: expect_seq,
                reason: format!("record {expect_seq} is missing (next is {})", s.seq),
            });
        }
        if s.count < 1 || s.count > i64::from(u32::MAX) {
            return Ok(Verdict::Broken {
                seq: s.seq,
                reason: format!("record {} has an impossible count", s.seq),
            });
        }
        // A record's hash is made from its predecessor's: an edit, or a
        // record that does not follow the one before, shows here.
        if stored_hash[..] != chain_hash(&prev, s.seq, &s.hashed())[..] {
            return Ok(Verdict::Broken {
                seq: s.seq,
                reason: if n == 0 && anchor.is_some() {
                    format!(
                        "record {} was altered or does not chain to the pruning anchor",
                        s.seq
                    )
                } else {
                    format!("record {} was altered (its hash does not match)", s.seq)
                },
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
pub const PRUNE_BATCH: usize = 5000;

/// The log in the database the admin commands open (offline): the
/// daemon's writer goes through the functions above instead.
impl Database {
    /// Prune audit records older than `before` (offline), keeping the
    /// chain verifiable from its anchor.
    pub fn prune_audit(&mut self, before: i64) -> Result<usize> {
        prune(&mut self.conn, before).map_err(Error::database(&self.path))
    }

    /// Append audit records (offline admin commands).
    pub fn audit(&mut self, records: &[Record]) -> Result<()> {
        append(&mut self.conn, records).map_err(Error::database(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        crate::store::sqlite::migrate_for_test(&mut c);
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
    fn batches_of_any_size_are_stored_whole_and_in_order() {
        // Around the multi-row statement's size: whole chunks, a remainder,
        // and both together, appended one after another into one chain.
        let sizes = [
            1,
            ROWS_PER_INSERT - 1,
            ROWS_PER_INSERT,
            ROWS_PER_INSERT + 1,
            3 * ROWS_PER_INSERT + 5,
        ];
        let mut c = db();
        let mut next = 1;
        for n in sizes {
            let batch: Vec<Record> = (next..next + n as i64).map(rec).collect();
            append(&mut c, &batch).unwrap();
            next += n as i64;
        }
        let total = next - 1;
        assert!(matches!(
            verify(&c).unwrap(),
            Verdict::Intact { records, .. } if records == total
        ));
        let rows = list(&c, 1, total + 10).unwrap();
        assert_eq!(rows.len() as i64, total);
        for (i, s) in rows.iter().enumerate() {
            let i = i as i64 + 1;
            assert_eq!((s.seq, s.at), (i, i));
            assert_eq!(s.sub.as_deref(), Some(format!("u{i}").as_str()));
            assert_eq!(s.kid.as_deref(), Some("k"));
        }
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
}
