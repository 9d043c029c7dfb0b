//! `create`: making a key (the first, the next one the schedule asks
//! for, a rotation). The sequence: seed in memory → split → file share
//! written durably under a temp name → one transaction records the key
//! (unverified) with its database share → the file share gets its final
//! name → both are read back and must rebuild the public key → one
//! transaction marks the key verified and ends the periods of the keys it
//! supersedes. That last commit is the only moment the set of keys changes.

use std::path::Path;

use zeroize::Zeroizing;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::keys::State;
use crate::keys::schedule::{Due, active, due, schedule};
use crate::keys::shamir;
use crate::keys::shamir::{KeyShare, Slot};
use crate::keys::share_format;
use crate::keys::{KeyInfo, Origin, SecretKey};
use crate::store::ShareDir;
use crate::store::share_dir;
use crate::store::share_dir::Staged;
use crate::store::{KeyStore, Supersede};

use super::NewKey;
use super::unseal::unseal_key;

/// A fresh random secret for a key of the configured `alg` (an Ed25519
/// seed, or a P-256 scalar in [1, n−1]).
pub fn random_seed(cfg: &Config) -> Result<Zeroizing<[u8; 32]>> {
    SecretKey::generate_secret(cfg.tokens.alg.key_type())
}

/// What a new key does to the keys already there.
#[derive(Debug, Default)]
pub struct Creation<'a> {
    pub activate_at: i64,
    /// New timestamps for keys the new key ends (set in the commit).
    pub supersede: Vec<Supersede>,
    pub recovery: Option<&'a Path>,
}

/// Create a key from `seed` per `c`; see the module docs for the sequence.
pub fn create_key(
    database: &mut dyn KeyStore,
    dir: &ShareDir,
    cfg: &Config,
    seed: &Zeroizing<[u8; 32]>,
    origin: Origin,
    now: i64,
    c: Creation<'_>,
) -> Result<NewKey> {
    refuse_existing_recovery(c.recovery)?;
    let row = new_row(database, cfg, seed, origin, now, c.activate_at)?;
    let split = shamir::split(seed);
    let share = |slot, y| KeyShare {
        deployment: Some(database.deployment().to_owned()),
        kid: row.kid.clone(),
        generation: 1,
        slot,
        alg: Some(row.alg),
        public_key: row.public_key,
        y,
    };
    let file_share = share(Slot::File, split.file);
    let db_share = share(Slot::Database, split.database);
    let recovery_share = share(Slot::Recovery, split.recovery);

    // 1. File share, durably, under a temp name.
    let staged = dir.stage(&file_share)?;
    let file_path = staged.final_path.clone();
    // 2. Key row (unverified) + database share, one transaction.
    if let Err(e) = database.insert_key(&row, &db_share) {
        dir.discard(staged);
        return Err(e);
    }
    // 3. The file share gets its final name, now that the database knows
    // its key; 4. read both back from the stores and rebuild; 5. commit.
    match finish(database, dir, staged, &row, &recovery_share, &c) {
        Ok(key) => Ok(NewKey {
            row: KeyInfo {
                verified: true,
                ..row
            },
            key,
        }),
        Err(e) => {
            let _ = database.discard_key(&row.kid);
            let _ = dir.destroy(&file_path);
            Err(e)
        }
    }
}

/// Refuse to overwrite an existing recovery share at `recovery`.
pub(super) fn refuse_existing_recovery(recovery: Option<&Path>) -> Result<()> {
    if let Some(p) = recovery
        && p.exists()
    {
        return Err(Error::Usage(format!(
            "recovery share {} already exists; choose a new path",
            p.display()
        )));
    }
    Ok(())
}

/// The unverified row of the key of `seed`, unless the database holds it.
fn new_row(
    database: &dyn KeyStore,
    cfg: &Config,
    seed: &Zeroizing<[u8; 32]>,
    origin: Origin,
    now: i64,
    activate_at: i64,
) -> Result<KeyInfo> {
    let alg = cfg.tokens.alg;
    let public_key = SecretKey::from_secret(alg.key_type(), seed)
        .ok_or_else(|| {
            Error::Usage(format!(
                "the key is not a {} private key (alg = {:?})",
                alg.key_type().name(),
                alg.as_str()
            ))
        })?
        .public_key();
    let kid = share_format::thumbprint(&public_key);
    if database.keys()?.iter().any(|k| k.kid == kid) {
        return Err(Error::Usage(format!(
            "key {kid} is already in the database"
        )));
    }
    let (deactivate_at, retire_at) = schedule(&cfg.schedule, &cfg.tokens, activate_at);
    Ok(KeyInfo {
        kid,
        public_key,
        origin,
        created_at: now.min(activate_at),
        activate_at,
        deactivate_at,
        retire_at,
        share_generation: 1,
        pending_generation: None,
        verified: false,
        alg,
    })
}

/// Steps 3 to 5: publish the file share, rebuild the key, then commit it.
fn finish(
    database: &mut dyn KeyStore,
    dir: &ShareDir,
    staged: Staged,
    row: &KeyInfo,
    recovery_share: &KeyShare,
    c: &Creation<'_>,
) -> Result<SecretKey> {
    dir.publish(staged)?;
    let key = unseal_key(database, dir, row)?;
    if let Some(p) = c.recovery {
        share_dir::write_recovery(p, recovery_share)?;
    }
    if let Some(node) = database.cluster_node() {
        let proof = crate::keys::prove_possession(&key, node, &row.kid);
        database.record_possession(&row.kid, &proof)?;
    }
    database.commit_key(&row.kid, &c.supersede)?;
    Ok(key)
}

/// Apply what is due: create the next or a replacement key. Returns the
/// key created, if any. Shares of keys that stopped signing are destroyed
/// by [`super::reconcile`], which the caller runs next.
pub fn run_due(
    database: &mut dyn KeyStore,
    dir: &ShareDir,
    cfg: &Config,
    now: i64,
) -> Result<Option<NewKey>> {
    let rows = database.keys()?;
    let activate_at = match due(&rows, now, &cfg.schedule) {
        Due::Nothing => return Ok(None),
        Due::Next(t) => t,
        Due::Now => now,
    };
    let new = create_generated(
        database,
        dir,
        cfg,
        now,
        Creation {
            activate_at,
            ..Creation::default()
        },
    )?;
    Ok(Some(new))
}

/// A new key from a fresh random seed.
fn create_generated(
    database: &mut dyn KeyStore,
    dir: &ShareDir,
    cfg: &Config,
    now: i64,
    c: Creation<'_>,
) -> Result<NewKey> {
    let seed = random_seed(cfg)?;
    create_key(database, dir, cfg, &seed, Origin::Generated, now, c)
}

/// Rotate now: a new key becomes active `delay` seconds from now (0: at
/// once; in a cluster, a moment later, so that the other nodes publish it
/// before it signs), pending keys are retired at once (they never signed),
/// and the current key stops
/// signing then. Its tokens keep verifying until they expire: its
/// `retire_at` becomes `max(now, latest_exp) + leeway`, where `latest_exp`
/// is the latest `exp` it may have issued (or may issue in the delay), and
/// is never made later than it was. With `emergency` (no delay), it is
/// retired at once and its tokens stop verifying. Works without rebuilding
/// the old key, so it is also the way back when a store of the active key
/// is lost.
pub fn rotate_now(
    database: &mut dyn KeyStore,
    dir: &ShareDir,
    cfg: &Config,
    now: i64,
    latest_exp: i64,
    emergency: bool,
    delay: i64,
) -> Result<(NewKey, Option<String>)> {
    let delay = if emergency { 0 } else { delay.max(0) };
    let rows = database.keys()?;
    let old = active(&rows, now).cloned();
    let mut supersede = Vec::new();
    if let Some(o) = &old {
        let end = (now + delay).max(o.activate_at);
        // Tokens it signs in the delay expire by now + delay + max_ttl.
        let latest_exp = if delay > 0 {
            latest_exp.max((now + delay).saturating_add(cfg.tokens.max_ttl.as_secs() as i64))
        } else {
            latest_exp
        };
        let needed = now
            .max(latest_exp)
            .saturating_add(cfg.tokens.leeway.as_secs() as i64);
        supersede.push(Supersede {
            kid: o.kid.clone(),
            activate_at: o.activate_at,
            deactivate_at: end,
            retire_at: if emergency {
                end
            } else {
                o.retire_at.min(needed).max(end)
            },
        });
    }
    // Pending keys never signed: they are retired now, kept as rows (so
    // that their shares are destroyed as those of any key that no longer
    // signs, and a crash in between leaves nothing unaccounted for).
    for r in rows
        .iter()
        .filter(|r| r.verified && crate::keys::state(r, now) == State::Pending)
    {
        let at = now.max(r.created_at);
        supersede.push(Supersede {
            kid: r.kid.clone(),
            activate_at: at,
            deactivate_at: at,
            retire_at: at,
        });
    }
    let new = create_generated(
        database,
        dir,
        cfg,
        now,
        Creation {
            activate_at: now + delay,
            supersede,
            recovery: None,
        },
    )?;
    Ok((new, old.map(|o| o.kid)))
}
