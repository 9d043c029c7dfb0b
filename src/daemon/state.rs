//! `state` is what the whole daemon shares while it serves: the key
//! manager, the token settings, access policies and connection limits in
//! force (swapped whole on reload), the running config, the accept loop's
//! health, the audit writer, admission and the metrics. The listener, every
//! connection and the background tasks hold it; `handler` answers requests
//! with it, and owns none of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Map;

use super::access::{Access, ClientPolicy};
use super::admission::Admission;
use super::audit_writer::Writer;
use super::key_manager::KeyManager;
use super::metrics::Metrics;
use crate::clock::wall_now;
use crate::config::Limits;
use crate::config::{Config, Overrides};
use crate::keys::jws::{self, TokenRules};
use crate::snapshot::Shared;
use crate::store::audit_log::Record;

/// What every connection and background task shares.
pub struct State {
    pub manager: Arc<KeyManager>,
    /// Token settings and access policies, swapped whole on reload;
    /// requests clone the `Arc`s.
    rules: Shared<TokenRules>,
    access: Shared<Access>,
    limits: Shared<Limits>,
    pub started: Instant,
    pub health: AcceptHealth,
    pub audit: Option<Writer>,
    /// Who holds which connection (per-uid caps, admin reserve).
    pub admission: Arc<Admission>,
    /// Token buckets of peers whose policy has a `sign_rate`.
    pub sign_rates: SignRates,
    /// When a refusal was last logged (Unix seconds), so that a flood of
    /// refusals writes a log line a second, not one per request.
    last_refusal_log: AtomicI64,
    /// The running config, for a reload.
    pub running: Running,
    pub metrics: Arc<Metrics>,
    /// Notified after each applied reload.
    pub reloaded: tokio::sync::Notify,
}

/// What the watchdog looks at besides a test signature: whether the accept
/// loop is stuck failing (EMFILE and the like).
#[derive(Debug, Default)]
pub struct AcceptHealth {
    /// Unix seconds since when accept() has failed without a success; 0
    /// when it is fine.
    pub accept_failing_since: AtomicI64,
}

impl AcceptHealth {
    /// How long accept() has been failing, if it is.
    pub fn accept_failing_for(&self, now: i64) -> Option<i64> {
        match self.accept_failing_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(now - since),
        }
    }
}

/// The connected process and its policy, fixed at accept time.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub policy: Arc<ClientPolicy>,
}

/// The config the daemon runs with, and the flags it was started with (a
/// reload reads the config again with them).
pub struct Running {
    config: Mutex<Config>,
    pub overrides: Overrides,
}

impl Running {
    pub fn new(config: Config, overrides: Overrides) -> Running {
        Running {
            config: Mutex::new(config),
            overrides,
        }
    }

    /// The config in force.
    pub fn config(&self) -> Config {
        self.lock().clone()
    }

    /// The config in force, held: a reload replaces it under this lock.
    pub fn lock(&self) -> MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A token bucket: `tokens` left at `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The sign rate limits of the peers whose policy has a `sign_rate`, one
/// token bucket per uid.
#[derive(Debug, Default)]
pub struct SignRates {
    buckets: Mutex<HashMap<u32, Bucket>>,
}

impl SignRates {
    /// Take a token from `uid`'s bucket (`rate` a second, at most `burst`).
    pub fn take(&self, uid: u32, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget full buckets (idle peers): the map stays bounded.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(uid).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Start every bucket over (new policies).
    fn clear(&self) {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl State {
    /// The state of a daemon running with `running`'s config.
    pub fn new(
        manager: Arc<KeyManager>,
        running: Running,
        started: Instant,
        audit: Option<Writer>,
        metrics: Arc<Metrics>,
    ) -> crate::error::Result<State> {
        let cfg = running.config();
        Ok(State {
            manager,
            rules: Shared::new(TokenRules::new(&cfg.tokens)),
            access: Shared::new(Access::new(&cfg)?),
            limits: Shared::new(cfg.limits),
            started,
            health: AcceptHealth::default(),
            audit,
            admission: Admission::new(),
            sign_rates: SignRates::default(),
            last_refusal_log: AtomicI64::new(i64::MIN),
            running,
            metrics,
            reloaded: tokio::sync::Notify::new(),
        })
    }

    /// Count a refusal that carries no token in the audit log (aggregated
    /// per uid, op and result; see `audit`).
    pub fn tally_refusal(
        &self,
        uid: u32,
        pid: Option<i32>,
        op: &'static str,
        result: &'static str,
    ) {
        self.metrics.refused(op, result);
        if let Some(a) = &self.audit {
            a.tally(Record {
                at: wall_now(),
                uid: Some(uid),
                pid,
                op,
                result,
                ..Record::default()
            });
        }
    }

    /// Log a refusal, at most once a second (the audit log counts them all).
    pub fn log_refusal(&self, uid: u32, what: &str) {
        let now = wall_now();
        if self.last_refusal_log.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(
                uid,
                "{what} (further refusals this second are only counted)"
            );
        }
    }

    pub fn rules(&self) -> Arc<TokenRules> {
        self.rules.get()
    }

    pub fn access(&self) -> Arc<Access> {
        self.access.get()
    }

    pub fn limits(&self) -> Arc<Limits> {
        self.limits.get()
    }

    /// Take a reloaded config's connection timeouts.
    pub fn set_limits(&self, limits: Limits) {
        self.limits.set(limits);
    }

    /// Take a reloaded config's token settings and access policies (rate
    /// limits start over).
    pub fn set_rules(&self, rules: TokenRules, access: Access) {
        self.rules.set(rules);
        self.access.set(access);
        self.sign_rates.clear();
    }

    /// The watchdog's check: accept() is not stuck failing for more than
    /// `grace`, the stores are in place, the audit log can be written, and
    /// the key that should sign now signs a test token. `Err` says what is
    /// wrong, for `STATUS=`.
    pub fn healthy(&self, grace: Duration) -> Result<(), String> {
        let now = wall_now();
        if self
            .health
            .accept_failing_for(now)
            .is_some_and(|d| d as u64 >= grace.as_secs().max(1))
        {
            return Err("accepting connections fails".into());
        }
        if let Some(why) = self.manager.check_stores() {
            return Err(why);
        }
        if let Some(a) = &self.audit
            && !a.health().ok()
        {
            return Err("the audit log cannot be written (disk full?); not signing".into());
        }
        let keys = self.manager.keyring.snapshot();
        let signs = keys
            .signer_at(self.manager.clock.now())
            .is_some_and(|s| jws::sign(s, &self.rules(), &Map::new(), Some(1), now, None).is_ok());
        if signs {
            Ok(())
        } else {
            Err("no key can sign".into())
        }
    }

    /// The line for systemd's `STATUS=`: what is wrong, if anything (from
    /// [`State::healthy`]), then the keys.
    pub fn status_line(&self, unhealthy: Option<String>) -> String {
        let keys = self.manager.status_line();
        match unhealthy {
            Some(why) if self.manager.fault().is_none() => format!("unhealthy: {why}; {keys}"),
            None if self.audit.as_ref().is_some_and(|a| a.health().in_reserve()) => {
                format!("audit log down to its reserve (audit_keep_free): only admins sign; {keys}")
            }
            _ => keys,
        }
    }

    /// The metrics text, with the gauges as they are now.
    pub fn metrics_text(&self) -> String {
        let keys = self.manager.keyring.snapshot();
        let now = self.manager.clock.now();
        let (revoked_jti, revoked_sub) = self.manager.revocations().len();
        let own = keys.own_rows();
        let next = crate::keys::schedule::next_event(&own, now, &self.manager.config().schedule);
        let seals = self.manager.file_share_seals();
        self.metrics.render(super::metrics::Now {
            connections: self.admission.counts().1,
            published_keys: keys.published.len(),
            file_shares_sealed: seals.iter().filter(|(_, to)| to.is_some()).count(),
            file_shares_clear: seals.iter().filter(|(_, to)| to.is_none()).count(),
            published_by_alg: crate::config::AlgLabel::ALL
                .into_iter()
                .map(|a| (a, keys.published.iter().filter(|p| p.row.alg == a).count()))
                .collect(),
            revoked_jti,
            revoked_sub,
            active_key_age: keys.signer_at(now).map(|s| now - s.activate_at),
            next_transition_in: next.map(|t| t - now),
            nodes: self.manager.cluster().map_or(1, |c| c.nodes()),
            cluster: self.manager.cluster().map(|c| c.counts()),
            audit_space: self.audit.as_ref().map(|a| a.health().space()),
        })
    }
}
