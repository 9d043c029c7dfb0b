//! `audit` keeps the audit log in SQLite: every sign, every verify
//! failure, every revoke and every admin op, each record chained to the
//! previous one by SHA-256, so that a deleted or edited record is found by
//! [`verify`]. The daemon commits records in batches (group commit) on one
//! writer thread, and sends the replies a batch covers only after it is
//! committed; if the log cannot be written, signing fails closed.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::filestore::FileId;

/// One audit record, before it is chained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    h.finalize().into()
}

/// Append records in one transaction, chained to the last stored one.
pub fn append(conn: &mut Connection, records: &[Record]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (mut seq, mut prev): (i64, Vec<u8>) = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or((0, vec![0u8; 32]));
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO audit (seq, at, uid, pid, op, kid, sub, jti, result, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for r in records {
            seq += 1;
            let stored = Stored {
                seq,
                at: r.at,
                uid: r.uid.map(i64::from),
                pid: r.pid.map(i64::from),
                op: r.op.to_owned(),
                kid: r.kid.clone(),
                sub: r.sub.clone(),
                jti: r.jti.clone(),
                result: r.result.to_owned(),
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
                &prev[..],
                &hash[..]
            ])?;
            prev = hash.to_vec();
        }
    }
    tx.commit()
}

/// A record from the first nine columns (seq … result) of a row.
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
    })
}

/// Records in order, from `from_seq` on, at most `limit`.
pub fn list(conn: &Connection, from_seq: i64, limit: i64) -> rusqlite::Result<Vec<Stored>> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, uid, pid, op, kid, sub, jti, result FROM audit
         WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![from_seq, limit], stored)?;
    rows.collect()
}

/// Outcome of checking the chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record chains; `head` is the last hash (hex), worth recording
    /// elsewhere: a truncated tail is only visible against such an anchor.
    Intact {
        records: i64,
        head: String,
    },
    Broken {
        seq: i64,
        reason: String,
    },
}

/// Walk the whole chain.
pub fn verify(conn: &Connection) -> rusqlite::Result<Verdict> {
    let mut stmt = conn.prepare(
        "SELECT seq, at, uid, pid, op, kid, sub, jti, result, prev_hash, hash FROM audit ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut prev = vec![0u8; 32];
    let mut expect_seq = 1i64;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let s = stored(r)?;
        let stored_prev: Vec<u8> = r.get(9)?;
        let stored_hash: Vec<u8> = r.get(10)?;
        if s.seq != expect_seq {
            return Ok(Verdict::Broken {
                seq: expect_seq,
                reason: format!("record {expect_seq} is missing (next is {})", s.seq),
            });
        }
        if stored_prev != prev {
            return Ok(Verdict::Broken {
                seq: s.seq,
                reason: format!("record {} does not chain to record {}", s.seq, s.seq - 1),
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
    })
}

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

/// The daemon's audit writer: a thread that commits whatever records have
/// queued up in one transaction, then acknowledges them all.
pub struct Writer {
    tx: mpsc::Sender<(Vec<Record>, Ack)>,
}

impl Writer {
    /// Start the writer on the database at `path`, which must keep naming
    /// the file `expected` (the one the daemon opened): after each commit
    /// the writer checks that it still does, and otherwise fails the batch,
    /// so no token leaves whose record is not in the database at the
    /// configured path (a database deleted or replaced under the daemon).
    pub fn start(path: PathBuf, durability: Durability, expected: FileId) -> Result<Writer> {
        let mut conn = open(&path, durability)?;
        let (tx, rx) = mpsc::channel::<(Vec<Record>, Ack)>();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                        if batch.len() >= 4096 {
                            break;
                        }
                    }
                    let records: Vec<Record> =
                        batch.iter().flat_map(|(r, _)| r.iter().cloned()).collect();
                    let ok = match append(&mut conn, &records) {
                        Ok(()) => match expected.still_at(&path) {
                            Ok(()) => true,
                            Err(why) => {
                                tracing::error!(reason = %why, records = records.len(), "audit records went to a database no longer at its path; withholding their tokens");
                                false
                            }
                        },
                        Err(e) => {
                            tracing::error!(error = %e, db = %path.display(), records = records.len(), "audit log write failed");
                            false
                        }
                    };
                    for (_, ack) in batch {
                        let _ = ack.send(ok);
                    }
                }
            })
            .map_err(Error::io("starting the audit writer", "thread"))?;
        Ok(Writer { tx })
    }

    /// Commit `records`; true once they are durable.
    pub async fn commit(&self, records: Vec<Record>) -> bool {
        let (ack, done) = tokio::sync::oneshot::channel();
        if self.tx.send((records, ack)).is_err() {
            return false;
        }
        done.await.unwrap_or(false)
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
}
