//! `service` answers requests: it applies the peer's policy, signs,
//! verifies (with revocation and token binding), serves the JWKS and
//! status, and hands admin ops to the manager. It produces the audit
//! records of what it did; the connection commits them before it replies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::access::{Access, ClientPolicy, Refusal};
use crate::admission::Admission;
use crate::error::Error;
use crate::keys::jws::{self, Policy, SignError, VerifyError};
use crate::keys::keyset;
use crate::lifecycle::wall_now;
use crate::manager::Manager;
use crate::protocol::{self, Code, Failure, Op, Request, RevokeTarget};
use crate::server::Limits;
use crate::shared::Shared;
use crate::store::audit_log::Record;

/// What every connection shares.
pub struct Service {
    pub manager: Arc<Manager>,
    /// Token settings and access policies, swapped whole on reload;
    /// requests clone the `Arc`s.
    policy: Shared<Policy>,
    access: Shared<Access>,
    limits: Shared<Limits>,
    pub started: Instant,
    pub health: Health,
    pub audit: Option<crate::audit::Writer>,
    /// Who holds which connection (per-uid caps, admin reserve).
    pub admission: Arc<Admission>,
    /// Token buckets of peers whose policy has a `sign_rate`.
    buckets: Mutex<HashMap<u32, Bucket>>,
    /// When a refusal was last logged (Unix seconds), so that a flood of
    /// refusals writes a log line a second, not one per request.
    last_refusal_log: AtomicI64,
}

/// A token bucket: `tokens` left at `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What the watchdog looks at besides a test signature: whether the accept
/// loop is stuck failing (EMFILE and the like).
#[derive(Debug, Default)]
pub struct Health {
    /// Unix seconds since when accept() has failed without a success; 0
    /// when it is fine.
    pub accept_failing_since: AtomicI64,
}

impl Health {
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
    /// An admin op to run with [`Service::run_admin`].
    Admin(Request),
    /// A sign request found no key able to sign (the clock jumped past the
    /// active key's period and the schedule has not run yet). Wait for a
    /// key with [`Service::await_key`], then handle the line again with
    /// `retry` set. Nothing was written or recorded.
    AwaitKey,
}

#[derive(Serialize)]
struct KeyStatus<'a> {
    kid: &'a str,
    state: &'static str,
    alg: &'static str,
    origin: &'static str,
    created_at: i64,
    activate_at: i64,
    deactivate_at: i64,
    retire_at: i64,
}

#[derive(Serialize)]
struct StatusBody<'a> {
    version: &'static str,
    issuer: &'a str,
    /// The label of keys created from now on.
    alg: &'static str,
    deployment: &'a str,
    active_kid: Option<&'a str>,
    uptime_s: u64,
    now: i64,
    /// How far the wall clock is behind the latest time the daemon has seen
    /// (after a clock was set back); key states follow the latter.
    clock_behind_s: i64,
    /// Why the daemon does not sign, when its stores changed under it.
    store_fault: Option<String>,
    audit: AuditStatus,
    connections: usize,
    next_transition: Option<i64>,
    keys: Vec<KeyStatus<'a>>,
}

#[derive(Serialize)]
struct AuditStatus {
    /// `ok`, `failing` (signing fails closed) or `off`.
    state: &'static str,
    failing_since: Option<i64>,
    /// The database with its WAL, and the free space on its filesystem.
    db_bytes: Option<u64>,
    free_bytes: Option<u64>,
}

#[derive(Serialize)]
struct StatusOk<'a> {
    status: StatusBody<'a>,
}

#[derive(Serialize)]
struct RotateOk<'a> {
    kid: &'a str,
    previous: Option<&'a str>,
    emergency: bool,
}

#[derive(Serialize)]
struct ReshareKey<'a> {
    kid: &'a str,
    generation: u32,
}

#[derive(Serialize)]
struct ReshareOk<'a> {
    keys: Vec<ReshareKey<'a>>,
}

#[derive(Serialize)]
struct PruneOk {
    pruned: usize,
    before: i64,
}

#[derive(Serialize)]
struct RevokeOk<'a> {
    revoked: &'static str,
    value: &'a str,
    until: i64,
}

impl Service {
    pub fn new(
        manager: Arc<Manager>,
        policy: Policy,
        access: Access,
        limits: Limits,
        started: Instant,
        audit: Option<crate::audit::Writer>,
    ) -> Service {
        Service {
            manager,
            policy: Shared::new(policy),
            access: Shared::new(access),
            limits: Shared::new(limits),
            started,
            health: Health::default(),
            audit,
            admission: Admission::new(),
            buckets: Mutex::new(HashMap::new()),
            last_refusal_log: AtomicI64::new(i64::MIN),
        }
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

    /// Take a token from the peer's bucket, if its policy limits signing.
    fn take_token(&self, peer: &Peer) -> bool {
        let Some((rate, burst)) = peer.policy.sign_rate else {
            return true;
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget full buckets (idle peers): the map stays bounded.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(peer.uid).or_insert(Bucket {
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
            return Err(format!("the key stores changed ({why})"));
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
    /// [`Service::healthy`]), then the keys.
    pub fn status_line(&self, unhealthy: Option<String>) -> String {
        let keys = self.manager.status_line();
        match unhealthy {
            Some(why) if self.manager.fault().is_none() => format!("unhealthy: {why}; {keys}"),
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

    /// Answer one request line into `out`, adding audit records to `audit`.
    /// `retry`: the line comes back after [`Handled::AwaitKey`].
    pub fn handle(
        &self,
        line: &[u8],
        peer: &Peer,
        out: &mut Vec<u8>,
        audit: &mut Vec<Record>,
        retry: bool,
    ) -> Handled {
        let done = Handled::Reply;
        let req = match protocol::parse_request(line) {
            Ok(r) => r,
            Err(f) => {
                protocol::write_error(out, &f);
                return done;
            }
        };
        // Tokens and records carry wall-clock times; which key signs and
        // which verify follow the lifecycle clock (see `lifecycle::Clock`).
        let now = wall_now();
        let key_now = self.manager.clock.now();
        let fail = |out: &mut Vec<u8>, code, msg: String| {
            protocol::write_error(out, &Failure::new(req.id.clone(), code, msg));
        };
        if let Err(Refusal::Op(op)) = peer.policy.allows(&req.op) {
            self.log_refusal(
                peer.uid,
                &format!("op {op:?} refused by policy {:?}", peer.policy.name),
            );
            self.tally_refusal(
                peer.uid,
                peer.pid,
                crate::access::op_name(&req.op),
                Code::Forbidden.as_str(),
            );
            fail(
                out,
                Code::Forbidden,
                format!("op {op:?} is not allowed for this client"),
            );
            return done;
        }
        if req.op.is_admin() {
            return Handled::Admin(req);
        }
        let id = req.id.as_ref();
        let policy = self.policy();
        match req.op {
            Op::Ping => protocol::write_ok(out, id, protocol::PingOk { pong: true }),
            Op::Sign {
                mut claims,
                ttl,
                fingerprint,
            } => {
                if !retry
                    && !self.manager.is_faulted()
                    && self.manager.keyring.snapshot().signer_at(key_now).is_none()
                {
                    return Handled::AwaitKey;
                }
                let mut rec = self.record(peer, "sign", now);
                let result = self.sign(
                    peer,
                    &policy,
                    &mut claims,
                    ttl,
                    fingerprint.as_deref(),
                    key_now,
                    now,
                );
                rec.sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
                match result {
                    Ok((s, kid)) => {
                        rec.kid = Some(kid.clone());
                        rec.jti = Some(s.jti.clone());
                        audit.push(rec);
                        protocol::write_ok(
                            out,
                            id,
                            protocol::SignOk {
                                token: &s.token,
                                kid: &kid,
                                exp: s.exp,
                                jti: &s.jti,
                            },
                        );
                        return Handled::Token { id: req.id };
                    }
                    Err((code, msg)) => {
                        // No token: counted, not recorded one by one.
                        rec.result = code.as_str();
                        if let Some(a) = &self.audit {
                            a.tally(rec);
                        }
                        fail(out, code, msg);
                    }
                }
            }
            Op::Verify {
                token,
                aud,
                fingerprint,
            } => match self.verify(
                &policy,
                &token,
                aud.as_deref(),
                fingerprint.as_deref(),
                key_now,
                now,
            ) {
                Ok(v) => protocol::write_ok(
                    out,
                    id,
                    protocol::VerifyOk {
                        claims: &v.claims,
                        kid: &v.kid,
                    },
                ),
                Err((code, msg)) => {
                    self.tally_refusal(peer.uid, peer.pid, "verify", code.as_str());
                    fail(out, code, msg);
                }
            },
            Op::Jwks => {
                let keys = self.manager.keyring.snapshot();
                protocol::write_ok(out, id, protocol::JwksOk { jwks: &keys.jwks });
            }
            Op::Status => {
                let keys = self.manager.keyring.snapshot();
                let rows: Vec<_> = keys.published.iter().map(|p| p.row.clone()).collect();
                let deployment = self.manager.deployment();
                let body = StatusBody {
                    version: env!("CARGO_PKG_VERSION"),
                    issuer: &policy.issuer,
                    alg: policy.alg.as_str(),
                    deployment,
                    active_kid: keys.signer_at(key_now).map(|s| s.kid.as_str()),
                    uptime_s: self.started.elapsed().as_secs(),
                    now,
                    clock_behind_s: key_now - now.min(key_now),
                    store_fault: self.manager.fault(),
                    audit: self.audit_status(),
                    connections: self.admission.counts().0,
                    next_transition: crate::keys::schedule::next_event(
                        &rows,
                        key_now,
                        &self.manager.config(),
                    ),
                    keys: keys
                        .published
                        .iter()
                        .map(|p| KeyStatus {
                            kid: &p.row.kid,
                            state: crate::keys::state(&p.row, key_now).as_str(),
                            alg: p.row.alg.as_str(),
                            origin: p.row.origin.as_str(),
                            created_at: p.row.created_at,
                            activate_at: p.row.activate_at,
                            deactivate_at: p.row.deactivate_at,
                            retire_at: p.row.retire_at,
                        })
                        .collect(),
                };
                protocol::write_ok(out, id, StatusOk { status: body });
            }
            Op::Rotate { .. } | Op::Reshare | Op::Revoke(_) | Op::AuditPrune { .. } => {
                unreachable!("admin ops return above")
            }
        }
        done
    }

    fn audit_status(&self) -> AuditStatus {
        let db = self.manager.db_path();
        let size = |suffix: &str| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(p).map(|m| m.len()).ok()
        };
        let dir = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        let free = rustix::fs::statvfs(dir)
            .ok()
            .map(|v| v.f_bavail.saturating_mul(v.f_frsize));
        let (state, failing_since) = match &self.audit {
            None => ("off", None),
            Some(a) => match a.health().failing_since() {
                None => ("ok", None),
                Some(t) => ("failing", Some(t)),
            },
        };
        AuditStatus {
            state,
            failing_since,
            db_bytes: size("").map(|n| n + size("-wal").unwrap_or(0)),
            free_bytes: free,
        }
    }

    /// The sign path: policy, then token. Returns the token and its kid.
    #[allow(clippy::too_many_arguments)]
    fn sign(
        &self,
        peer: &Peer,
        policy: &Policy,
        claims: &mut Map<String, Value>,
        ttl: Option<u64>,
        fingerprint: Option<&str>,
        key_now: i64,
        now: i64,
    ) -> Result<(jws::Signed, String), (Code, String)> {
        // Fail closed when the stores changed under the daemon: no token
        // may leave whose audit record would not reach the configured
        // database, and keys are no longer backed by their stores.
        if let Some(why) = self.manager.fault() {
            return Err((
                Code::Unavailable,
                format!(
                    "not signing: the key stores changed under the daemon ({why}); it must be restarted"
                ),
            ));
        }
        // Reserved claims first: a client never learns more from a policy
        // refusal than from this one.
        if let Some(name) = claims.keys().find(|k| jws::RESERVED.contains(&k.as_str())) {
            return Err((
                Code::ReservedClaim,
                format!("claim {name:?} is set by the daemon"),
            ));
        }
        let client = &peer.policy;
        let name = if client_needs_name(client) {
            self.access().user_name(peer.uid)
        } else {
            String::new()
        };
        client.apply(claims, &name).map_err(|r| match r {
            Refusal::Claim(c) => (
                Code::ForbiddenClaim,
                format!("claim {:?} is not allowed for this client", truncate(&c)),
            ),
            Refusal::Audience => (
                Code::ForbiddenClaim,
                "this `aud` is not allowed for this client".into(),
            ),
            Refusal::Op(op) => (Code::Forbidden, format!("op {op:?} is not allowed")),
        })?;
        let max = client
            .max_ttl
            .map_or(policy.max_ttl, |m| m.min(policy.max_ttl));
        let ttl = ttl.or(Some(policy.default_ttl.min(max)));
        if let Some(t) = ttl
            && t > max
        {
            return Err((
                Code::TtlTooLong,
                format!("ttl {t}s exceeds this client's max_ttl {max}s"),
            ));
        }
        if !self.take_token(peer) {
            return Err((
                Code::RateLimited,
                "this client signs faster than its policy's sign_rate allows; retry later".into(),
            ));
        }
        let keys = self.manager.keyring.snapshot();
        let Some(signer) = keys.signer_at(key_now) else {
            return Err((Code::Unavailable, "no key may sign now".into()));
        };
        match jws::sign(signer, policy, claims, ttl, now, fingerprint) {
            Ok(s) => Ok((s, signer.kid.clone())),
            Err(e) => Err(match e {
                SignError::ReservedClaim(name) => (
                    Code::ReservedClaim,
                    format!("claim {name:?} is set by the daemon"),
                ),
                SignError::TtlTooLong { ttl, max } => (
                    Code::TtlTooLong,
                    format!("ttl {ttl}s exceeds max_ttl {max}s"),
                ),
                SignError::TokenTooLarge { size, max } => (
                    Code::TokenTooLarge,
                    format!("token would be {size} bytes; max_token_bytes is {max}"),
                ),
                SignError::Random => {
                    tracing::error!("the OS random generator failed");
                    (Code::Internal, "internal error".into())
                }
            }),
        }
    }

    /// The verify path: signature and claims, then revocation and binding.
    fn verify(
        &self,
        policy: &Policy,
        token: &str,
        aud: Option<&str>,
        fingerprint: Option<&str>,
        key_now: i64,
        now: i64,
    ) -> Result<jws::Verified, (Code, String)> {
        let keys = self.manager.keyring.snapshot();
        let v = jws::verify(&keys, policy, token, aud, key_now, now).map_err(|e| match e {
            VerifyError::Invalid(why) => (Code::InvalidToken, why.to_owned()),
            VerifyError::UnknownKey => (
                Code::UnknownKey,
                "no published key with the token's kid verifies now".into(),
            ),
            VerifyError::Expired => (Code::TokenExpired, "token has expired".into()),
            VerifyError::NotYetValid => (
                Code::TokenNotYetValid,
                "token is not valid yet (nbf)".into(),
            ),
            VerifyError::AudienceMismatch => (
                Code::AudienceMismatch,
                "token is not issued for that audience".into(),
            ),
        })?;
        let claim = |k: &str| v.claims.get(k).and_then(Value::as_str);
        let iat = v
            .claims
            .get("iat")
            .and_then(Value::as_i64)
            .unwrap_or(i64::MIN);
        if self
            .manager
            .revocations()
            .is_revoked(claim("jti"), claim("sub"), iat)
        {
            return Err((Code::Revoked, "token has been revoked".into()));
        }
        let bound = claim(jws::FINGERPRINT_CLAIM);
        let given = fingerprint.map(jws::fingerprint_hash);
        if bound != given.as_deref() {
            return Err((
                Code::FingerprintMismatch,
                "the fingerprint does not match the token's binding".into(),
            ));
        }
        Ok(v)
    }

    /// Run an admin op on a blocking thread and append its response.
    pub async fn run_admin(
        &self,
        req: Request,
        peer: &Peer,
        out: &mut Vec<u8>,
        audit: &mut Vec<Record>,
    ) {
        let manager = Arc::clone(&self.manager);
        let policy = self.policy();
        let op = req.op.clone();
        let name = crate::access::op_name(&op);
        tracing::info!(uid = peer.uid, pid = ?peer.pid, op = name, "admin op");
        if let Op::AuditPrune { before } = op {
            // The writer records the prune itself, once it is done.
            return self.prune_audit(req.id, before, peer, out).await;
        }
        let result = tokio::task::spawn_blocking(move || match op {
            Op::Rotate { emergency } => manager.rotate(emergency).map(Admin::Rotated),
            Op::Reshare => manager.reshare().map(Admin::Reshared),
            Op::Revoke(target) => manager.revoke(target, &policy).map(Admin::Revoked),
            _ => unreachable!("only admin ops become jobs"),
        })
        .await;
        let id = req.id.as_ref();
        let mut rec = self.record(peer, name, wall_now());
        match result {
            Ok(Ok(Admin::Rotated(r))) => {
                rec.kid = Some(r.kid.clone());
                let emergency = matches!(req.op, Op::Rotate { emergency: true });
                protocol::write_ok(
                    out,
                    id,
                    RotateOk {
                        kid: &r.kid,
                        previous: r.previous.as_deref(),
                        emergency,
                    },
                )
            }
            Ok(Ok(Admin::Reshared(keys))) => protocol::write_ok(
                out,
                id,
                ReshareOk {
                    keys: keys
                        .iter()
                        .map(|(kid, generation)| ReshareKey {
                            kid,
                            generation: *generation,
                        })
                        .collect(),
                },
            ),
            Ok(Ok(Admin::Revoked(r))) => {
                let (kind, value, until) = match &r {
                    crate::store::Revocation::Jti { jti, expires_at } => ("jti", jti, *expires_at),
                    crate::store::Revocation::Sub {
                        sub, expires_at, ..
                    } => ("sub", sub, *expires_at),
                };
                if kind == "jti" {
                    rec.jti = Some(value.clone());
                } else {
                    rec.sub = Some(value.clone());
                }
                protocol::write_ok(
                    out,
                    id,
                    RevokeOk {
                        revoked: kind,
                        value,
                        until,
                    },
                )
            }
            Ok(Err(e)) => {
                // With its causes: "writing file share …: No space left on
                // device", not just the step.
                let message = crate::error::chain(&e);
                tracing::error!(error = %message, op = name, "admin op failed");
                let code = if matches!(e, Error::Usage(_)) {
                    Code::Refused
                } else {
                    Code::Internal
                };
                rec.result = code.as_str();
                protocol::write_error(out, &Failure::new(req.id.clone(), code, message));
            }
            Err(_) => {
                rec.result = Code::Internal.as_str();
                protocol::write_error(
                    out,
                    &Failure::new(req.id.clone(), Code::Internal, "admin op panicked"),
                );
            }
        }
        audit.push(rec);
    }

    /// `audit_prune`: prune the audit log before `before`, on the writer.
    async fn prune_audit(&self, id: Option<Value>, before: i64, peer: &Peer, out: &mut Vec<u8>) {
        let Some(audit) = &self.audit else {
            protocol::write_error(
                out,
                &Failure::new(id, Code::Refused, "the audit log is off (audit = false)"),
            );
            return;
        };
        let by = self.record(peer, "audit_prune", wall_now());
        match audit.prune(before, by).await {
            Ok(p) => protocol::write_ok(
                out,
                id.as_ref(),
                PruneOk {
                    pruned: p.records,
                    before: p.before,
                },
            ),
            Err(e) => {
                tracing::error!(error = %e, "audit prune failed");
                protocol::write_error(out, &Failure::new(id, Code::Internal, e));
            }
        }
    }

    /// Apply a revoke target, for the manager: returns what to store.
    pub fn revocation_for(
        target: &RevokeTarget,
        keys: &keyset::KeySet,
        policy: &Policy,
        max_ttl: i64,
        key_now: i64,
        now: i64,
    ) -> Result<crate::store::Revocation, Error> {
        let leeway = policy.leeway as i64;
        Ok(match target {
            RevokeTarget::Jti { jti, exp } => crate::store::Revocation::Jti {
                jti: jti.clone(),
                expires_at: exp + leeway,
            },
            RevokeTarget::Token(t) => {
                let v = jws::verify(keys, policy, t, None, key_now, now).map_err(|e| {
                    Error::Usage(format!("cannot revoke that token: {e:?} (only a valid token can be revoked by value)"))
                })?;
                let jti = v
                    .claims
                    .get("jti")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let exp = v.claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
                crate::store::Revocation::Jti {
                    jti,
                    expires_at: exp + leeway,
                }
            }
            RevokeTarget::Sub { sub, before } => {
                let before = before.unwrap_or(now);
                crate::store::Revocation::Sub {
                    sub: sub.clone(),
                    before,
                    // Every token issued before `before` expires by then.
                    expires_at: before + max_ttl + leeway,
                }
            }
        })
    }
}

enum Admin {
    Rotated(crate::manager::Rotated),
    Reshared(Vec<(String, u32)>),
    Revoked(crate::store::Revocation),
}

fn client_needs_name(p: &ClientPolicy) -> bool {
    p.sub_from_peer()
}

fn truncate(s: &str) -> String {
    s.chars().take(64).filter(|c| !c.is_control()).collect()
}
