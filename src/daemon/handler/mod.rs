//! `handler` answers one request: it checks the op against the peer's
//! policy, then hands it to the code of its op: `sign`, `verify`, `status`
//! (with `jwks`), `admin` (rotate, reshare, revoke, audit_prune, on the key
//! manager or the audit writer). It produces the audit records of what it
//! did: an issued token's for the connection to commit before the reply
//! leaves; refusals counted in aggregate.

mod admin;
mod sign;
mod status;
mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::access::{Access, ClientPolicy, Denial};
use super::admission::Admission;
use super::audit_writer::Writer;
use super::key_manager::KeyManager;
use super::limits::Limits;
use crate::keys::jws::{self, Policy};
use crate::lifecycle::wall_now;
use crate::protocol::{self, Code, Failure, Op, Request};
use crate::snapshot::Shared;
use crate::store::audit_log::Record;

/// What every connection shares.
pub struct Handler {
    pub manager: Arc<KeyManager>,
    /// Token settings and access policies, swapped whole on reload;
    /// requests clone the `Arc`s.
    policy: Shared<Policy>,
    access: Shared<Access>,
    limits: Shared<Limits>,
    pub started: Instant,
    pub health: AcceptHealth,
    pub audit: Option<Writer>,
    /// Who holds which connection (per-uid caps, admin reserve).
    pub admission: Arc<Admission>,
    /// Token buckets of peers whose policy has a `sign_rate`.
    buckets: Mutex<HashMap<u32, sign::Bucket>>,
    /// When a refusal was last logged (Unix seconds), so that a flood of
    /// refusals writes a log line a second, not one per request.
    last_refusal_log: AtomicI64,
    /// The running config, for a reload.
    pub(super) reloader: super::reload::Reloader,
    pub metrics: Arc<super::metrics::Metrics>,
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

/// The result of handling one line.
pub enum Handled {
    /// The response is in `out`.
    Reply,
    /// The response in `out` carries a signed token, which must not leave
    /// before its audit record is committed; `id` is the request's id.
    Token { id: Option<Value> },
    /// An admin op to run with [`Handler::run_admin`].
    Admin(Request),
    /// A sign request found no key able to sign (the clock jumped past the
    /// active key's period and the schedule has not run yet). Wait for a
    /// key with [`Handler::await_key`], then handle the line again with
    /// `retry` set. Nothing was written or recorded.
    AwaitKey,
}

/// The two clocks of a request: tokens and records carry the wall clock;
/// which key signs, and which verify, follow the lifecycle clock (see
/// `lifecycle::Clock`).
#[derive(Debug, Clone, Copy)]
struct Times {
    wall: i64,
    keys: i64,
}

impl Handler {
    /// The handler of a daemon running with `reloader`'s config.
    pub fn new(
        manager: Arc<KeyManager>,
        reloader: super::reload::Reloader,
        started: Instant,
        audit: Option<crate::daemon::audit_writer::Writer>,
        metrics: Arc<super::metrics::Metrics>,
    ) -> crate::error::Result<Handler> {
        let cfg = reloader.running();
        Ok(Handler {
            manager,
            policy: Shared::new(Policy::new(&cfg)),
            access: Shared::new(Access::new(&cfg)?),
            limits: Shared::new(Limits::of(&cfg)),
            started,
            health: AcceptHealth::default(),
            audit,
            admission: Admission::new(),
            buckets: Mutex::new(HashMap::new()),
            last_refusal_log: AtomicI64::new(i64::MIN),
            reloader,
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

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.get()
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
    pub fn set_policies(&self, policy: Policy, access: Access) {
        self.policy.set(policy);
        self.access.set(access);
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
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
            .is_some_and(|s| jws::sign(s, &self.policy(), &Map::new(), Some(1), now, None).is_ok());
        if signs {
            Ok(())
        } else {
            Err("no key can sign".into())
        }
    }

    /// The line for systemd's `STATUS=`: what is wrong, if anything (from
    /// [`Handler::healthy`]), then the keys.
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

    /// Wait (at most `within`) for a key able to sign, waking the key
    /// schedule to create one.
    pub async fn await_key(&self, within: Duration) {
        let m = &self.manager;
        let changed = m.keys_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if m.keyring.snapshot().signer_at(m.clock.now()).is_some() {
            return;
        }
        m.wake.notify_one();
        let _ = tokio::time::timeout(within, changed).await;
    }

    fn record(&self, peer: &Peer, op: &'static str, now: i64) -> Record {
        Record {
            at: now,
            uid: Some(peer.uid),
            pid: peer.pid,
            op,
            result: "ok",
            ..Record::default()
        }
    }

    /// Answer one request line into `out`, adding the records that must be
    /// committed before the reply leaves to `audit`. `retry`: the line
    /// comes back after [`Handled::AwaitKey`].
    pub fn handle(
        &self,
        line: &[u8],
        peer: &Peer,
        out: &mut Vec<u8>,
        audit: &mut Vec<Record>,
        retry: bool,
    ) -> Handled {
        let started = Instant::now();
        let req = match protocol::parse_request(line) {
            Ok(r) => r,
            Err(f) => {
                self.metrics.refused("request", f.code.as_str());
                protocol::write_error(out, &f);
                return Handled::Reply;
            }
        };
        if !self.allowed(&req, peer, out) {
            return Handled::Reply;
        }
        let at = Times {
            wall: wall_now(),
            keys: self.manager.clock.now(),
        };
        let id = req.id;
        let name = req.op.name();
        let handled = match req.op {
            Op::Ping => {
                protocol::write_ok(out, id.as_ref(), protocol::PingOk { pong: true });
                Handled::Reply
            }
            Op::Sign(r) => self.answer_sign(id, r, peer, at, out, audit, retry),
            Op::Verify(r) => {
                self.answer_verify(id, r, peer, at, out);
                Handled::Reply
            }
            Op::Jwks => {
                self.answer_jwks(id, out);
                Handled::Reply
            }
            Op::Status => {
                self.answer_status(id, at, out);
                Handled::Reply
            }
            Op::Metrics => {
                self.answer_metrics(id, at, out);
                Handled::Reply
            }
            op => return Handled::Admin(Request { id, op }),
        };
        if !matches!(handled, Handled::AwaitKey) {
            self.metrics.request_took(name, started.elapsed());
        }
        handled
    }

    /// Whether the peer's policy allows the op; if not, the refusal is
    /// answered, counted and (at most once a second) logged.
    fn allowed(&self, req: &Request, peer: &Peer, out: &mut Vec<u8>) -> bool {
        let Err(Denial::Op(op)) = peer.policy.allows(&req.op) else {
            return true;
        };
        self.log_refusal(
            peer.uid,
            &format!("op {op:?} refused by policy {:?}", peer.policy.name),
        );
        self.tally_refusal(
            peer.uid,
            peer.pid,
            req.op.name().as_str(),
            Code::Forbidden.as_str(),
        );
        protocol::write_error(
            out,
            &Failure::new(
                req.id.clone(),
                Code::Forbidden,
                format!("op {op:?} is not allowed for this client"),
            ),
        );
        false
    }
}

/// A name from a request, made safe for a message.
fn truncate(s: &str) -> String {
    s.chars().take(64).filter(|c| !c.is_control()).collect()
}
