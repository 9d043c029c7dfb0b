//! `migrate`: moving a host's key store from its SQLite database to
//! PostgreSQL (`splitsign migrate-store --to-postgres`) without changing a
//! kid, a timestamp or a share, so that every token issued keeps
//! verifying and the file shares stay as they are.
//!
//! Crash-safe by order. (1) The SQLite stores are reconciled and every key
//! that may sign is rebuilt from its two shares, changing nothing in
//! PostgreSQL. (2) One PostgreSQL transaction registers the node with the
//! SQLite deployment id and writes its keys, database shares and
//! revocations (replacing any copy an interrupted move left). (3) Every key
//! is rebuilt again from its file share and the PostgreSQL share. (4) One
//! SQLite transaction deletes the keys, shares and revocations there and
//! records the move. A kill before (2) commits leaves PostgreSQL without
//! the node and SQLite as it was; between (2) and (4) SQLite is still the
//! store (a daemon configured with `postgres` refuses to start until the
//! move is finished, by running it again); after (4) PostgreSQL is.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::store::{Database, KeyStore, Postgres, ShareDir};

use super::{reconcile, unseal_key};
use crate::clock::revocations_purged_before;

/// What a move carried.
#[derive(Debug)]
pub struct Moved {
    pub node: String,
    pub deployment: String,
    pub keys: usize,
    pub shares: usize,
    pub revocations: usize,
}

/// Move this host's keys from `sqlite` to `pg` (see the module comment).
pub fn move_to_postgres(
    sqlite: &mut Database,
    dir: &ShareDir,
    mut pg: Postgres,
    now: i64,
) -> Result<Moved> {
    // (1) The stores as a start would leave them, and every key proven.
    reconcile(&*sqlite, dir, now)?;
    let rows = sqlite.keys()?;
    if rows.is_empty() {
        return Err(Error::KeyStore(format!(
            "{} holds no key to move (a new node needs no move: `splitsign init`)",
            sqlite.describe()
        )));
    }
    let mut shares = Vec::new();
    for row in rows
        .iter()
        .filter(|r| crate::keys::state(r, now).needs_shares())
    {
        unseal_key(&*sqlite, dir, row)?;
        shares.push(sqlite.db_share(row)?);
    }
    // Kept a day past their tokens, as the daemon keeps them.
    let revocations = sqlite.revocations(revocations_purged_before(now))?;
    // (2) One transaction in PostgreSQL.
    let deployment = sqlite.deployment().to_owned();
    pg.import_node(&deployment, &rows, &shares, &revocations, now)?;
    // (3) Read back: the same rows, and every key rebuilt from its file
    // share and the share PostgreSQL now holds.
    let pg = Arc::new(pg);
    let stored = pg.keys()?;
    let same = stored.len() == rows.len()
        && stored.iter().all(|s| {
            rows.iter().any(|r| {
                r.kid == s.kid
                    && r.public_key == s.public_key
                    && (r.created_at, r.activate_at, r.deactivate_at, r.retire_at)
                        == (s.created_at, s.activate_at, s.deactivate_at, s.retire_at)
                    && r.share_generation == s.share_generation
                    && r.alg == s.alg
                    && s.verified
            })
        });
    if !same {
        return Err(Error::KeyStore(format!(
            "{} does not read back the keys just written; nothing was removed from {}",
            pg.describe(),
            sqlite.describe()
        )));
    }
    for row in stored
        .iter()
        .filter(|r| crate::keys::state(r, now).needs_shares())
    {
        // Rebuilt: proven to the other nodes too. (A key that no longer
        // signs has no shares left, so no proof: the other nodes do not
        // publish it; its tokens verify on this node.)
        let key = unseal_key(&pg, dir, row)?;
        let proof = crate::keys::prove_possession(&key, pg.node(), &row.kid);
        KeyStore::record_possession(&pg, &row.kid, &proof)?;
    }
    // (4) The commit point of the move.
    sqlite.finish_move(pg.node(), &pg.describe(), now)?;
    Ok(Moved {
        node: pg.node().to_owned(),
        deployment,
        keys: rows.len(),
        shares: shares.len(),
        revocations: revocations.len(),
    })
}
