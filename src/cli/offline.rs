//! `offline`: the commands that work on the stores themselves, under the
//! lock the daemon takes: `init`, `import`, `recover`, `check`, `backup`,
//! and the offline forms of `status`, `rotate`, `reshare` and `revoke`.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::output::{CommandError, previous_note, usage};
use super::{BackupArgs, Ctx, ImportArgs, InitArgs, RecoverArgs, ResealArgs};
use crate::config::Config;
use crate::error::Error;
use crate::keys::Origin;
use crate::lifecycle;
use crate::protocol::RevokeTarget;
use crate::store::audit_log::Record;
use crate::store::{KeyStore, Stores};

pub fn init(cx: &Ctx, a: InitArgs) -> Result<(), CommandError> {
    create_first(&cx.cfg, None, a.recovery_share)
}

pub fn import(cx: &Ctx, a: ImportArgs) -> Result<(), CommandError> {
    create_first(&cx.cfg, Some(a.pem), a.recovery_share)
}

/// `reseal`: each key that may sign gets its file share kept as
/// `share_seal` says (the same share, written again in place).
pub fn reseal(cx: &Ctx, a: ResealArgs) -> Result<(), CommandError> {
    let cfg = cx.offline()?;
    let want = cfg.sealing.seal.as_str();
    if let Some(to) = a.to.as_deref()
        && to != want
    {
        return Err(usage(format!(
            "--to {to}, but the config says share_seal = \"{want}\": set share_seal = \"{to}\" \
             in the config first, so that the shares written from then on (rotations, \
             reshares) are kept the same way"
        )));
    }
    if !cx.daemon().is_err_and(|e| e.no_daemon()) {
        return Err(usage(
            "a daemon is running: stop it first (reseal works offline, on the stores)".into(),
        ));
    }
    crate::keys::locked::harden_process()?;
    let stores = Stores::open(cfg, false)?;
    let now = crate::clock::wall_now();
    lifecycle::reconcile_stores(&stores, now)?;
    let rows = stores.keys.keys()?;
    let mut moved = 0;
    for row in rows
        .iter()
        .filter(|r| r.verified && crate::keys::state(r, now).needs_shares())
    {
        let s = &stores;
        let now_is = || seal_words(&s.shares, &row.kid, row.share_generation);
        match lifecycle::reseal(&*s.keys, &s.shares, row)? {
            lifecycle::Resealed::AsIs => {
                println!("key {}: its file share already is {}", row.kid, now_is())
            }
            lifecycle::Resealed::Rewritten => {
                moved += 1;
                println!("key {}: its file share is now {}", row.kid, now_is());
            }
        }
    }
    if moved > 0 && stores.shares.seals() {
        println!(
            "copies of the share directory taken before (backups, images, a copy-on-write \
             filesystem's old blocks) still hold the shares in clear: with a copy of the \
             database they rebuild the keys. `splitsign rotate` makes them useless. Keep the \
             recovery share offline: if this TPM is cleared or replaced, it is the way back"
        );
    }
    Ok(())
}

/// How a file share is kept, in words.
fn seal_words(dir: &crate::store::ShareDir, kid: &str, generation: u32) -> String {
    match dir.sealed_to(kid, generation) {
        Ok(Some(s)) => format!("sealed to {}", s.describe_to()),
        Ok(None) => "in clear (share_seal = \"none\")".into(),
        Err(e) => format!("unreadable ({e})"),
    }
}

pub fn recover(cx: &Ctx, a: RecoverArgs) -> Result<(), CommandError> {
    if !cx.daemon().is_err_and(|e| e.no_daemon()) {
        return Err(usage(
            "a daemon is running, so the key is intact in its memory: run `splitsign \
             reshare` to write fresh shares, or stop the daemon to recover from the recovery \
             share"
                .into(),
        ));
    }
    crate::keys::locked::harden_process()?;
    let mut stores = Stores::open(cx.offline()?, false)?;
    let now = crate::clock::wall_now();
    let (kid, what) = {
        let s = &mut stores;
        lifecycle::recover(&mut *s.keys, &s.shares, &a.recovery_share, now)?
    };
    match what {
        lifecycle::Recovered::Nothing => {
            println!("key {kid}: both shares are intact; nothing to recover")
        }
        lifecycle::Recovered::FileShare => println!(
            "key {kid}: rebuilt the file share {}",
            stores
                .shares
                .share_path(&kid, current_generation(&stores, &kid)?)
                .display()
        ),
        lifecycle::Recovered::DatabaseShare => println!(
            "key {kid}: rebuilt the database share in {}",
            stores.keys.describe()
        ),
    }
    Ok(())
}

pub fn check(cx: &Ctx) -> Result<(), CommandError> {
    check_stores(cx.offline()?)
}

pub fn backup(cx: &Ctx, a: BackupArgs) -> Result<(), CommandError> {
    backup_db(cx.offline()?, &a.file)
}

/// `rotate` with no daemon. What the key issued is unknown: its tokens may
/// carry any exp up to now + max_ttl.
pub fn rotate(cfg: &Config, emergency: bool) -> Result<(), CommandError> {
    crate::keys::locked::harden_process()?;
    let mut stores = Stores::open(cfg, false)?;
    let now = crate::clock::wall_now();
    let latest_exp = now.saturating_add(cfg.tokens.max_ttl.as_secs() as i64);
    let (new, previous) = {
        let s = &mut stores;
        let delay = if s.cluster.is_some() {
            lifecycle::CLUSTER_PUBLISH_DELAY
        } else {
            0
        };
        lifecycle::rotate_now(
            &mut *s.keys,
            &s.shares,
            cfg,
            now,
            latest_exp,
            emergency,
            delay,
        )?
    };
    lifecycle::reconcile_stores(&stores, now)?;
    println!(
        "rotated (offline): key {} {}{}",
        new.row.kid,
        super::output::signs_from(Some(new.row.activate_at)),
        previous_note(previous.as_deref(), emergency)
    );
    Ok(())
}

/// `revoke` with no daemon: a jti or a subject (a whole token needs the
/// daemon to check it).
pub fn revoke(cfg: &Config, target: &RevokeTarget) -> Result<(), CommandError> {
    revoke_many(cfg, std::slice::from_ref(target))
}

/// `revoke` with no daemon, of one or many (a file): a jti or a subject (a
/// whole token needs the daemon to check it), in one transaction, each
/// with its audit record.
pub fn revoke_many(cfg: &Config, targets: &[RevokeTarget]) -> Result<(), CommandError> {
    let now = crate::clock::wall_now();
    let rows = targets
        .iter()
        .map(|t| {
            crate::daemon::revocations::stored_for(
                t,
                cfg.tokens.max_ttl.as_secs() as i64,
                cfg.tokens.leeway.as_secs() as i64,
                now,
            )
            .ok_or_else(|| {
                usage(
                    "offline, revoke takes --jti with --exp, or --sub (a whole --token needs the \
                     daemon to check it)"
                        .into(),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut stores = Stores::open(cfg, false)?;
    let rows = match &stores.cluster {
        // Within the bounds the cluster's database enforces.
        Some(pg) => {
            let ttl = pg.bounds()?.max_token_ttl;
            let leeway = cfg.tokens.leeway.as_secs() as i64;
            rows.iter()
                .map(|r| crate::daemon::revocations::within_cluster_bounds(r, ttl, now, leeway))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => rows,
    };
    stores.keys.add_revocations(&rows, now)?;
    if let Some(pg) = &stores.cluster {
        // Kept here too: a database that goes back never un-revokes them,
        // and the daemon writes them back.
        let seen = crate::store::seen::Seen::open(&cfg.paths.db)?;
        seen.record(rows.iter().map(|r| (pg.node(), r)))?;
    }
    let records: Vec<Record> = rows
        .iter()
        .map(|row| {
            let (jti, sub) = match row {
                crate::store::Revocation::Jti { jti, .. } => (Some(jti.clone()), None),
                crate::store::Revocation::Sub { sub, .. } => (None, Some(sub.clone())),
            };
            Record {
                at: now,
                uid: Some(rustix::process::getuid().as_raw()),
                pid: Some(std::process::id() as i32),
                op: "revoke",
                jti,
                sub,
                result: "ok",
                ..Default::default()
            }
        })
        .collect();
    stores.local.audit(&records)?;
    let what = if rows.len() == 1 {
        "revoked".to_owned()
    } else {
        format!("revoked {} value(s)", rows.len())
    };
    if cfg.cluster.postgres.is_some() {
        println!("{what} (in PostgreSQL): every running node applies it within a second");
    } else {
        println!("{what} (offline); the daemon applies it when it starts");
    }
    Ok(())
}

pub fn reshare(cfg: &Config, recovery: Option<PathBuf>) -> Result<(), CommandError> {
    crate::keys::locked::harden_process()?;
    let mut stores = Stores::open(cfg, false)?;
    let now = crate::clock::wall_now();
    lifecycle::reconcile_stores(&stores, now)?;
    let rows = stores.keys.keys()?;
    let active = crate::keys::schedule::active(&rows, now).map(|r| r.kid.clone());
    for row in rows
        .iter()
        .filter(|r| r.verified && crate::keys::state(r, now).needs_shares())
    {
        let key = lifecycle::unseal_key(&*stores.keys, &stores.shares, row)?;
        let rec = recovery
            .as_deref()
            .filter(|_| active.as_deref() == Some(row.kid.as_str()));
        let s = &mut stores;
        let g = lifecycle::reshare(&mut *s.keys, &s.shares, row, &key, rec)?;
        println!("re-split key {} into share generation {g}", row.kid);
        if let Some(p) = rec {
            println!(
                "  new recovery share: {} (the previous one no longer works)",
                p.display()
            );
        }
    }
    Ok(())
}

/// The key store, to read: the SQLite database (read-only), or this node
/// in PostgreSQL.
fn key_store_to_read(cfg: &Config) -> Result<Box<dyn KeyStore>, CommandError> {
    Ok(match &cfg.cluster.postgres {
        None => Box::new(crate::store::Database::open_read_only(
            &cfg.paths.db,
            cfg.tokens.alg.legacy(),
        )?),
        Some(settings) => {
            let pg = crate::store::Postgres::open(settings, &cfg.cluster.node)?;
            if !pg.registered() {
                return Err(Error::KeyStore(format!(
                    "{} has no node {} (run `splitsign init` on this host first)",
                    pg.describe(),
                    cfg.cluster.node
                ))
                .into());
            }
            Box::new(std::sync::Arc::new(pg))
        }
    })
}

/// `status` without a daemon: the same fields, read from the database
/// (in a cluster, every node's keys).
pub fn status(cfg: &Config) -> Result<Value, CommandError> {
    let database = key_store_to_read(cfg)?;
    let now = crate::clock::wall_now();
    let rows: Vec<_> = database
        .keys()?
        .into_iter()
        .filter(|r| r.verified)
        .collect();
    let own_node = cfg
        .cluster
        .postgres
        .as_ref()
        .map(|_| cfg.cluster.node.as_str());
    let others = database.other_nodes_keys()?;
    // How this node's file shares are kept, from their headers (when the
    // share directory can be read by whoever runs this).
    let dir = crate::store::ShareDir::open(&cfg.paths.shares_dir).ok();
    let file_share = |r: &crate::keys::KeyInfo| -> Option<String> {
        let dir = dir.as_ref()?;
        if !crate::keys::state(r, now).needs_shares() {
            return None;
        }
        let sealed = dir.sealed_to(&r.kid, r.share_generation).ok()?;
        Some(sealed.map_or_else(|| "none".into(), |s| s.describe_to()))
    };
    let key = |r: &crate::keys::KeyInfo, node: Option<&str>| {
        let mut v = serde_json::json!({
            "kid": r.kid,
            "state": crate::keys::state(r, now).as_str(),
            "alg": r.alg.as_str(),
            "origin": r.origin.as_str(),
            "created_at": r.created_at,
            "activate_at": r.activate_at,
            "deactivate_at": r.deactivate_at,
            "retire_at": r.retire_at,
        });
        if node == own_node
            && let Some(f) = file_share(r)
        {
            v["file_share"] = f.into();
        }
        if let Some(n) = node {
            v["node"] = n.into();
        }
        v
    };
    let keys: Vec<Value> = rows
        .iter()
        .map(|r| key(r, own_node))
        .chain(
            others
                .iter()
                .filter(|o| crate::keys::state(&o.key, now).is_published())
                .map(|o| key(&o.key, Some(&o.node))),
        )
        .collect();
    let mut nodes: Vec<&str> = others.iter().map(|o| o.node.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let cluster = own_node.map(|n| {
        serde_json::json!({
            "node": n,
            "database": "ok",
            "nodes": nodes.len() + 1,
        })
    });
    Ok(serde_json::json!({
        "cluster": cluster,
        "daemon": "not running",
        "issuer": cfg.tokens.issuer,
        "alg": cfg.tokens.alg.as_str(),
        "active_kid": crate::keys::schedule::active(&rows, now).map(|r| r.kid.clone()),
        "now": now,
        "next_transition": crate::keys::schedule::next_event(&rows, now, &cfg.schedule),
        "keys": keys,
    }))
}

/// `backup FILE`: a consistent copy of the database store.
fn backup_db(cfg: &Config, file: &Path) -> Result<(), CommandError> {
    // Both shares of a key in one place is what the split is there to
    // prevent: no database backup inside the share directory.
    let dest_dir = std::path::absolute(file)
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_owned()))
        .and_then(|d| d.canonicalize().ok());
    if dest_dir.is_some() && dest_dir == cfg.paths.shares_dir.canonicalize().ok() {
        return Err(usage(format!(
            "{} is in the share directory; keep the database backup apart from the file shares",
            file.display()
        )));
    }
    let database = crate::store::Database::open_read_only(&cfg.paths.db, cfg.tokens.alg.legacy())?;
    let s = database.backup(file)?;
    println!(
        "backed up database {} to {} (schema {}, deployment {}, {} keys, {} revocations, {} audit records)",
        cfg.paths.db.display(),
        file.display(),
        s.schema,
        s.deployment,
        s.keys,
        s.revocations,
        s.audit_records
    );
    println!(
        "the file shares are not in it: back up {} separately, and keep the two apart",
        cfg.paths.shares_dir.display()
    );
    Ok(())
}

/// `check`: prove the stores belong together and rebuild every key that
/// may sign from its two shares, read-only.
fn check_stores(cfg: &Config) -> Result<(), CommandError> {
    crate::keys::locked::harden_process()?;
    let dir = crate::store::ShareDir::open(&cfg.paths.shares_dir)?.with_sealing(&cfg.sealing);
    let database = key_store_to_read(cfg)?;
    let database = &*database;
    let now = crate::clock::wall_now();
    let plan = lifecycle::survey(database, &dir, now)?;
    let rows = database.keys()?;
    if rows.iter().all(|r| !r.verified) {
        return Err(Error::KeyStore(format!("{} holds no key", database.describe())).into());
    }
    for row in rows.iter().filter(|r| r.verified) {
        let state = crate::keys::state(row, now);
        if state.needs_shares() {
            lifecycle::unseal_key(database, &dir, row)?;
            println!(
                "key {} ({}, {}): file share and database share rebuild its public key; the \
                 file share is {}",
                row.kid,
                state.as_str(),
                row.alg.as_str(),
                seal_words(&dir, &row.kid, row.share_generation)
            );
        } else {
            println!(
                "key {} ({}, {}): public key only",
                row.kid,
                state.as_str(),
                row.alg.as_str()
            );
        }
    }
    if crate::keys::schedule::active(&rows, now).is_none() {
        println!("no key is active now: the daemon will create one when it starts");
    }
    let leftovers = plan.destroy_files.len() + plan.remove_temps.len();
    if leftovers + plan.discard_rows.len() + plan.destroy_db_shares_of.len() > 0 {
        println!(
            "the next start cleans up {} leftover file(s) of interrupted writes or of keys that \
             no longer sign, and {} unfinished key(s)",
            leftovers,
            plan.discard_rows.len()
        );
    }
    println!(
        "ok: the share directory and the database belong together (deployment {})",
        database.deployment()
    );
    Ok(())
}

/// `init` and `import`: create the first key of a deployment offline.
fn create_first(
    cfg: &Config,
    pem: Option<PathBuf>,
    recovery: Option<PathBuf>,
) -> Result<(), CommandError> {
    crate::keys::locked::harden_process()?;
    // Read the PEM before touching the stores, so a bad file changes nothing.
    let imported = match &pem {
        None => None,
        Some(path) => Some(read_pem(path, cfg.tokens.alg)?),
    };
    let mut stores = Stores::open(cfg, true)?;
    let now = crate::clock::wall_now();
    lifecycle::reconcile_stores(&stores, now)?;
    if stores.shares.seals() && recovery.is_none() {
        eprintln!(
            "splitsign: warning: share_seal = \"tpm2\" and no --recovery-share: the file share \
             is sealed to this host's TPM, so if the TPM is cleared or replaced the key cannot \
             be rebuilt (a new key can be rotated in, but verifiers pinning this one lose it). \
             Give --recovery-share PATH and keep the file offline"
        );
    }
    if !stores.keys.is_empty()? {
        let kids: Vec<String> = stores.keys.keys()?.into_iter().map(|k| k.kid).collect();
        return Err(usage(format!(
            "the stores are already initialised (key {}); nothing was changed",
            kids.join(", ")
        )));
    }
    let (seed, origin) = match imported {
        Some(seed) => (seed, Origin::Imported),
        None => (lifecycle::random_seed(cfg)?, Origin::Generated),
    };
    let row = lifecycle::create_key(
        &mut *stores.keys,
        &stores.shares,
        cfg,
        &seed,
        origin,
        now,
        lifecycle::Creation {
            activate_at: now,
            recovery: recovery.as_deref(),
            ..Default::default()
        },
    )?
    .row;
    println!(
        "{} key {}",
        if pem.is_some() { "imported" } else { "created" },
        row.kid
    );
    println!(
        "  file share:     {}",
        stores
            .shares
            .share_path(&row.kid, row.share_generation)
            .display()
    );
    println!("  database share: {}", stores.keys.describe());
    if let Some(r) = &recovery {
        println!(
            "  recovery share: {} (move it offline; with either store it rebuilds the key)",
            r.display()
        );
    }
    if let Some(p) = &pem {
        println!(
            "  the key is now split; delete {} once you have checked `splitsign serve` starts",
            p.display()
        );
    }
    Ok(())
}

/// The secret of the PKCS#8 PEM key at `path`, which must be of the type
/// the configured `alg` names (keys are created with that label).
fn read_pem(
    path: &Path,
    alg: crate::config::AlgLabel,
) -> Result<zeroize::Zeroizing<[u8; 32]>, CommandError> {
    let mut text = zeroize::Zeroizing::new(String::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024).read_to_string(&mut text))
        .map_err(|e| usage(format!("reading {}: {e}", path.display())))?;
    let (key_type, secret) =
        crate::keys::algorithm::secret_from_pkcs8_pem(&text).map_err(|_| {
            usage(format!(
                "{} is not a PKCS#8 PEM private key (\"-----BEGIN PRIVATE KEY-----\") of an \
                 Ed25519 or P-256 key",
                path.display()
            ))
        })?;
    if key_type != alg.key_type() {
        return Err(usage(format!(
            "{} holds {} key, but keys are created with alg = \"{}\" ({} keys); set \
             `alg` in the config to {} to import it",
            path.display(),
            match key_type {
                crate::keys::KeyType::Ed25519 => "an Ed25519",
                crate::keys::KeyType::P256 => "a P-256",
            },
            alg.as_str(),
            alg.key_type().name(),
            match key_type {
                crate::keys::KeyType::Ed25519 => "\"EdDSA\" or \"Ed25519\"",
                crate::keys::KeyType::P256 => "\"ES256\"",
            }
        )));
    }
    Ok(secret)
}

fn current_generation(stores: &Stores, kid: &str) -> Result<u32, CommandError> {
    Ok(stores
        .keys
        .keys()?
        .into_iter()
        .find(|r| r.kid == kid)
        .map(|r| r.share_generation)
        .unwrap_or(1))
}
