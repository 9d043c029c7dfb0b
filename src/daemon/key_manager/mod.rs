//! `key_manager` changes keys while the daemon runs: the scheduled
//! rotation (pre-publish, activation, share destruction, retirement), the
//! admin operations `rotate` and `reshare`, the other nodes' keys beside
//! this node's, and the JWKS file. Each change runs against the stores
//! under one mutex, on a blocking thread, then swaps a new key set into
//! the keyring; the sign path never waits for it. Beside it: `faults` (the
//! running store checks) and `revoking` (revocations, stored under the
//! same mutex).

mod faults;
mod revoking;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::cluster::Cluster;
use super::revocations::RevocationSet;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::keys::keyring::Keyring;
use crate::lifecycle::{self, NewKey};
use crate::snapshot::Shared;
use crate::store::{FileId, KeyStore, Stores};
use faults::{Places, stores_changed};

pub struct KeyManager {
    /// std Mutex: held only by blocking tasks, never across an `.await`.
    stores: Mutex<Stores>,
    pub keyring: Arc<Keyring>,
    pub clock: Arc<Clock>,
    /// Swapped on reload; stored key timestamps never change with it.
    cfg: Shared<Config>,
    jwks_written: Mutex<Option<String>>,
    revoked: RevocationSet,
    /// What the store paths named at start, for the running checks.
    places: Places,
    /// Set once the stores changed under the daemon; sticky until restart.
    faulted: AtomicBool,
    fault: Mutex<Option<String>>,
    /// Wakes the lifecycle timer (a reload, a sign request that found no
    /// key able to sign after a clock jump).
    pub wake: Notify,
    /// Notified whenever a new key set is swapped in.
    pub keys_changed: Notify,
    /// The other nodes, in a PostgreSQL deployment.
    cluster: Option<Cluster>,
    /// Held while a key set is built and swapped in (the schedule, and the
    /// other nodes' changes, both swap).
    swap: Mutex<()>,
    /// Held while the revocations in force are read and swapped.
    rev_swap: Mutex<()>,
    /// The time by which revocations of expired tokens are forgotten.
    purge_clock: crate::clock::PurgeClock,
    /// How the file share of each key held is kept (what it is sealed to,
    /// `None`: in clear), as its file said when the key set was built.
    seals: Mutex<Vec<(String, Option<String>)>>,
}

/// Result of a `rotate`.
#[derive(Debug)]
pub struct Rotated {
    pub kid: String,
    pub previous: Option<String>,
    /// When the new key signs: now, or (in a cluster) a moment later, once
    /// the other nodes have it.
    pub activate_at: i64,
}

impl KeyManager {
    /// Reconcile, unseal, create the first or an overdue key, and build the
    /// first key set. Fails (exit 65) without creating anything if a key
    /// that may sign cannot be rebuilt.
    pub fn start(mut stores: Stores, cfg: Config) -> Result<KeyManager> {
        let floor = stores
            .keys
            .keys()?
            .iter()
            .map(|r| r.created_at)
            .max()
            .unwrap_or(0);
        let clock = Arc::new(Clock::new(floor));
        let now = clock.now();
        let cluster = match stores.cluster.clone() {
            Some(pg) => Some(Cluster::new(pg, stores.local.path())?),
            None => None,
        };
        if let Some(c) = &cluster {
            let view = c.refresh_view(now)?;
            if let Some(b) = &view.bounds {
                check_bounds(&cfg, b)?;
            }
        }
        let others = cluster.as_ref().map(Cluster::others).unwrap_or_default();
        // Prove the stores belong together, then unseal what exists, before
        // anything is deleted or created: a wrong or broken store must stop
        // the daemon with nothing changed, never be papered over.
        let plan = lifecycle::survey(&*stores.keys, &stores.shares, now)?;
        let (set, unlocked) = lifecycle::build_keyset(
            &*stores.keys,
            &stores.shares,
            &cfg,
            now,
            &[],
            Vec::new(),
            &others,
        )?;
        check_unlocked(&unlocked, &cfg)?;
        lifecycle::apply(&*stores.keys, &stores.shares, plan)?.log(stores.keys.deployment());
        let first = stores.keys.is_empty()?;
        let created = lifecycle::run_due(&mut *stores.keys, &stores.shares, &cfg, now)?;
        if let Some(n) = &created {
            if first {
                tracing::info!(kid = %n.row.kid, "first start: created the first signing key");
            } else if n.row.activate_at <= now {
                tracing::info!(kid = %n.row.kid, "no key was active (rotation overdue); created a new signing key");
            } else {
                tracing::info!(kid = %n.row.kid, activate_at = n.row.activate_at, "pre-published the next key");
            }
        }
        let purge_clock = crate::clock::PurgeClock::new("revocations of expired tokens");
        let revoked = revoking::load(&stores, cluster.as_ref(), &purge_clock)?;
        let places = Places {
            deployment: stores.keys.deployment().to_owned(),
            db: stores.local.path().to_owned(),
            db_id: stores.local.identity(),
            shares: stores.shares.path().to_owned(),
            shares_id: stores.shares.identity(),
        };
        let m = KeyManager {
            revoked,
            stores: Mutex::new(stores),
            keyring: Arc::new(Keyring::new(set)),
            clock,
            cfg: Shared::new(cfg),
            jwks_written: Mutex::new(None),
            places,
            faulted: AtomicBool::new(false),
            fault: Mutex::new(None),
            purge_clock,
            wake: Notify::new(),
            keys_changed: Notify::new(),
            cluster,
            swap: Mutex::new(()),
            rev_swap: Mutex::new(()),
            seals: Mutex::new(Vec::new()),
        };
        let stores = m.lock();
        m.refresh(&stores, now, created.into_iter().collect())?;
        drop(stores);
        Ok(m)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stores> {
        // A panic while holding the stores leaves them as the last
        // committed transaction left them; carry on with the guard.
        self.stores.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stores, locked, after checking that their paths still name the
    /// files opened at start: no key change is ever written to a database
    /// or share directory that was swapped or removed under the daemon.
    fn stores(&self) -> Result<std::sync::MutexGuard<'_, Stores>> {
        if let Some(why) = self.fault() {
            return Err(Error::KeyStore(why));
        }
        let stores = self.lock();
        if let Err(why) = stores.still_in_place() {
            let why = stores_changed(&why);
            self.set_fault(why.clone());
            return Err(Error::KeyStore(why));
        }
        Ok(stores)
    }

    /// Do what the schedule asks for now; returns when to run next.
    pub fn tick(&self) -> Result<Option<i64>> {
        let r = self.run_schedule();
        self.note(&r);
        r
    }

    fn run_schedule(&self) -> Result<Option<i64>> {
        let mut stores = self.stores()?;
        let now = self.clock.now();
        let cfg = self.config();
        if let Some(c) = &self.cluster {
            // The periodic re-read: whatever a lost notification missed.
            let view = c.refresh_view(now)?;
            if let Some(b) = &view.bounds
                && let Err(e) = check_bounds(&cfg, b)
            {
                // The owner lowered a bound: this node's next key would be
                // refused. Say so at each step until it is fixed.
                tracing::error!(error = %e, "this node's config is outside the cluster's bounds");
            }
        }
        let created = {
            let s = &mut *stores;
            lifecycle::run_due(&mut *s.keys, &s.shares, &cfg, now)?
        };
        if let Some(n) = &created {
            if n.row.activate_at > now {
                tracing::info!(kid = %n.row.kid, activate_at = n.row.activate_at, "pre-published the next key");
            } else {
                tracing::info!(kid = %n.row.kid, "no key was active; created a new signing key");
            }
        }
        self.refresh(&stores, now, created.into_iter().collect())?;
        self.purge_revocations(&stores)?;
        let rows = stores.keys.keys()?;
        let own = crate::keys::schedule::next_event(&rows, now, &cfg.schedule);
        // The other nodes' keys enter and leave the JWKS at their times.
        let others = self
            .cluster
            .as_ref()
            .map(Cluster::others)
            .unwrap_or_default()
            .iter()
            .flat_map(|o| [o.key.activate_at, o.key.retire_at])
            .filter(|&t| t > now)
            .min();
        Ok(own.into_iter().chain(others).min())
    }

    /// Rotate now (admin). See [`lifecycle::rotate_now`].
    pub fn rotate(&self, emergency: bool) -> Result<Rotated> {
        let mut stores = self.stores()?;
        let now = self.clock.now();
        let cfg = self.config();
        // The latest exp the active key issued (tracked since this process
        // started; bounded by now + max_ttl for what earlier ones issued).
        let latest_exp = self
            .keyring
            .snapshot()
            .signer_at(now)
            .map_or(i64::MIN, |s| s.latest_exp());
        let delay = if self.cluster.is_some() && !emergency {
            lifecycle::CLUSTER_PUBLISH_DELAY
        } else {
            0
        };
        let r = {
            let s = &mut *stores;
            lifecycle::rotate_now(
                &mut *s.keys,
                &s.shares,
                &cfg,
                now,
                latest_exp,
                emergency,
                delay,
            )
        };
        self.note(&r);
        let (new, previous) = r?;
        let kid = new.row.kid.clone();
        let activate_at = new.row.activate_at;
        tracing::warn!(%kid, previous = previous.as_deref().map(tracing::field::display), emergency, activate_at, "rotated by an admin");
        self.refresh(&stores, now, vec![new])?;
        Ok(Rotated {
            kid,
            previous,
            activate_at,
        })
    }

    /// Re-split every key that holds shares (admin), from the keys in
    /// memory. Returns each kid with its new share generation.
    pub fn reshare(&self) -> Result<Vec<(String, u32)>> {
        let mut stores = self.stores()?;
        let now = self.clock.now();
        let keys = self.keyring.snapshot();
        let mut done = Vec::new();
        for row in stores.keys.keys()? {
            let Some(signer) = keys.signer_of(&row.kid) else {
                continue;
            };
            if !row.verified || !crate::keys::state(&row, now).needs_shares() {
                continue;
            }
            let s = &mut *stores;
            let g = lifecycle::reshare(&mut *s.keys, &s.shares, &row, signer.key.key(), None)?;
            tracing::warn!(kid = %row.kid, generation = g, "re-split by an admin");
            done.push((row.kid, g));
        }
        self.refresh(&stores, now, Vec::new())?;
        Ok(done)
    }

    /// Destroy what no longer signs, rebuild the key set, swap it in, and
    /// rewrite the JWKS file if it changed.
    fn refresh(&self, stores: &Stores, now: i64, fresh: Vec<NewKey>) -> Result<()> {
        lifecycle::reconcile_stores(stores, now)?;
        let cfg = self.config();
        let _swap = self.swap.lock().unwrap_or_else(|p| p.into_inner());
        let held = self.keyring.snapshot().signers.clone();
        let others = self
            .cluster
            .as_ref()
            .map(Cluster::others)
            .unwrap_or_default();
        let (set, unlocked) = lifecycle::build_keyset(
            &*stores.keys,
            &stores.shares,
            &cfg,
            now,
            &held,
            fresh,
            &others,
        )?;
        check_unlocked(&unlocked, &cfg)?;
        // Read from the headers of the files just unsealed (or held): the
        // TPM is not asked again.
        let seals = set
            .signers
            .iter()
            .map(|s| {
                let to = stores
                    .shares
                    .sealed_to(&s.kid, s.share_generation)
                    .ok()
                    .flatten()
                    .map(|t| t.describe_to());
                (s.kid.clone(), to)
            })
            .collect();
        *self.seals.lock().unwrap_or_else(|p| p.into_inner()) = seals;
        self.install(set, &cfg)
    }

    /// How the file share of each key held is kept: `Some(what it is sealed
    /// to)`, or `None` in clear.
    pub fn file_share_seals(&self) -> Vec<(String, Option<String>)> {
        self.seals.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swap a new key set in (the caller holds `swap`), and rewrite the
    /// JWKS file if it changed.
    fn install(&self, mut set: crate::keys::keyring::KeySet, cfg: &Config) -> Result<()> {
        // The cluster's bound on a token's lifetime, for sign and verify.
        set.max_token_ttl = self
            .cluster
            .as_ref()
            .and_then(Cluster::bounds)
            .map(|b| b.max_token_ttl);
        let jwks = set.jwks.get().to_owned();
        self.keyring.replace(set);
        self.keys_changed.notify_waiters();
        if let Some(path) = &cfg.outputs.jwks_file {
            let mut last = self.jwks_written.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_deref() != Some(jwks.as_str()) {
                super::public_file::write(path, jwks.as_bytes())?;
                tracing::info!(path = %path.display(), "wrote the JWKS file");
                *last = Some(jwks);
            }
        }
        Ok(())
    }

    /// The other nodes, in a PostgreSQL deployment.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// Publish the other nodes' keys as last read, beside this node's.
    pub fn publish_others(&self) -> Result<()> {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        let cfg = self.config();
        let now = self.clock.now();
        let _swap = self.swap.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.keyring.snapshot();
        let mut published: Vec<_> = current
            .published
            .iter()
            .filter(|p| p.node.is_none())
            .cloned()
            .collect();
        lifecycle::add_published_others(&mut published, &c.others(), now);
        let set = crate::keys::keyring::KeySet::new(current.signers.clone(), published);
        if set.jwks.get() == current.jwks.get()
            && set.published.len() == current.published.len()
            && c.bounds().map(|b| b.max_token_ttl) == current.max_token_ttl
        {
            return Ok(());
        }
        self.install(set, &cfg)
    }

    pub fn config(&self) -> Arc<Config> {
        self.cfg.get()
    }

    /// Take a new (validated) config: the schedule, TTLs and JWKS file
    /// follow it from now on. Keys already created keep their timestamps.
    pub fn set_config(&self, cfg: Config) {
        self.cfg.set(cfg);
        // Rewrite the JWKS file on the next refresh (its path or alg may differ).
        *self.jwks_written.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The database's path.
    pub fn db_path(&self) -> &Path {
        &self.places.db
    }

    /// The file the database path named at start (for the audit writer).
    pub fn db_identity(&self) -> FileId {
        self.places.db_id
    }

    /// The deployment id of the stores.
    pub fn deployment(&self) -> &str {
        &self.places.deployment
    }

    /// Checkpoint the database, so that its file alone is complete (a
    /// clean stop leaves nothing in the WAL).
    pub fn checkpoint(&self) -> Result<()> {
        {
            let s = self.lock();
            s.keys.checkpoint()?;
            s.local.checkpoint()
        }
    }

    /// Refuse a config that the cluster's bounds would not let work (its
    /// keys or tokens would be refused by every other node).
    pub fn check_config(&self, cfg: &Config) -> Result<()> {
        match self.cluster.as_ref().and_then(Cluster::bounds) {
            Some(b) => check_bounds(cfg, &b),
            None => Ok(()),
        }
    }

    /// A one-line summary for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        if let Some(why) = self.fault() {
            return format!("not signing: {why}");
        }
        let now = self.clock.now();
        let keys = self.keyring.snapshot();
        let rows = keys.own_rows();
        let next = crate::keys::schedule::next_event(&rows, now, &self.config().schedule)
            .and_then(|t| {
                std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(t as u64))
            })
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "-".into());
        let keys_line = match keys.signer_at(now) {
            Some(s) => format!("active key {}; next transition {next}", s.kid),
            None => "no active key".into(),
        };
        match self.cluster.as_ref().and_then(Cluster::unreachable) {
            Some(why) => format!("degraded: database unreachable ({why}); {keys_line}"),
            None => keys_line,
        }
    }
}

/// The config within the cluster's bounds: `max_ttl` within its
/// `max_token_ttl`, a key's lifetime (`rotation_interval` + `max_ttl` +
/// `leeway`) within its `max_key_lifetime`.
fn check_bounds(cfg: &Config, b: &crate::store::membership::Bounds) -> Result<()> {
    let fmt = |s: i64| humantime::format_duration(std::time::Duration::from_secs(s.max(0) as u64));
    let ttl = cfg.tokens.max_ttl.as_secs() as i64;
    if ttl > b.max_token_ttl {
        return Err(Error::Setting {
            key: "max_ttl",
            message: format!(
                "{} is over the cluster's max_token_ttl ({}): every other node would refuse \
                 such tokens. Lower it, or ask the owner (`splitsign node bounds \
                 --max-token-ttl`)",
                fmt(ttl),
                fmt(b.max_token_ttl)
            ),
        });
    }
    // What the schedule gives a key, from its activation to its retirement.
    let (_, lifetime) = crate::keys::schedule::schedule(&cfg.schedule, &cfg.tokens, 0);
    if lifetime > b.max_key_lifetime {
        return Err(Error::Setting {
            key: "rotation_interval",
            message: format!(
                "a key lives {} (rotation_interval + max_ttl + leeway), over the cluster's \
                 max_key_lifetime ({}): the database would refuse this node's next key. Lower \
                 it, or ask the owner (`splitsign node bounds --max-key-lifetime`)",
                fmt(lifetime),
                fmt(b.max_key_lifetime)
            ),
        });
    }
    Ok(())
}

/// Key pages that could not be locked: a warning, or (with
/// `mlock = "require"`) a refusal.
fn check_unlocked(unlocked: &[(String, std::io::Error)], cfg: &Config) -> Result<()> {
    if let Some((kid, e)) = unlocked.first()
        && cfg.mlock == crate::config::MlockMode::Require
    {
        return Err(Error::Usage(format!(
            "cannot lock the page of key {kid} in memory ({e}); raise RLIMIT_MEMLOCK \
             (LimitMEMLOCK=) or set mlock = \"warn\""
        )));
    }
    for (kid, e) in unlocked {
        tracing::warn!(%kid, error = %e, "could not mlock the key page (raise LimitMEMLOCK / RLIMIT_MEMLOCK); the key may be swapped");
    }
    Ok(())
}
