//! `sign`: the sign path. Store fault → the audit reserve (admins only
//! below it) → reserved claims → the client's
//! policy (claims, audiences, forced claims, `sub` from the peer) → TTL →
//! rate limit → the signing key → the token. An issued token's record goes
//! to the batch (committed before the reply leaves); a refusal is counted.

use std::time::Instant;

use serde_json::{Map, Value};

use super::{Handled, Handler, Peer, Times, truncate};
use crate::config::human_bytes;
use crate::daemon::access::Denial;
use crate::keys::jws::{self, Policy, SignError};
use crate::protocol::{self, Code, Failure, SignRequest};
use crate::store::audit_log::Record;

/// A token bucket: `tokens` left at `at`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
}

type Refused = (Code, String);

impl Handler {
    /// Answer a `sign`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer_sign(
        &self,
        id: Option<Value>,
        mut r: SignRequest,
        peer: &Peer,
        at: Times,
        out: &mut Vec<u8>,
        audit: &mut Vec<Record>,
        retry: bool,
    ) -> Handled {
        if !retry
            && !self.manager.is_faulted()
            && self.manager.keyring.snapshot().signer_at(at.keys).is_none()
        {
            return Handled::AwaitKey;
        }
        let mut rec = self.record(peer, "sign", at.wall);
        let result = self.sign(peer, &mut r, at);
        rec.sub = r
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match result {
            Ok((s, kid)) => {
                rec.kid = Some(kid.clone());
                rec.jti = Some(s.jti.clone());
                audit.push(rec);
                protocol::write_ok(
                    out,
                    id.as_ref(),
                    protocol::SignOk {
                        token: &s.token,
                        kid: &kid,
                        exp: s.exp,
                        jti: &s.jti,
                    },
                );
                Handled::Token { id }
            }
            Err((code, msg)) => {
                // No token: counted, not recorded one by one.
                rec.result = code.as_str();
                self.metrics.refused("sign", code.as_str());
                if let Some(a) = &self.audit {
                    a.tally(rec);
                }
                protocol::write_error(out, &Failure::new(id, code, msg));
                Handled::Reply
            }
        }
    }

    /// While the audit log's filesystem is down to its reserve, only
    /// admins sign: the rest of the disk is theirs (and the admin ops').
    fn refuse_in_reserve(&self, peer: &Peer) -> Result<(), Refused> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        let space = audit.health().space();
        if audit.health().at_floor() {
            return Err((
                Code::AuditReserve,
                format!(
                    "the audit log's disk is down to its floor ({} free): no one may sign until \
                     space is freed (`splitsign audit --prune-before` still works)",
                    human_bytes(space.free_bytes)
                ),
            ));
        }
        if peer.policy.admin || !space.in_reserve {
            return Ok(());
        }
        Err((
            Code::AuditReserve,
            format!(
                "the audit log's disk is down to its reserve ({} free; audit_keep_free keeps {}, \
                 starting a batch early): only admins may sign until space is freed",
                human_bytes(space.free_bytes),
                human_bytes(space.keep_free_bytes)
            ),
        ))
    }

    /// The sign path as steps; returns the token and its kid.
    fn sign(
        &self,
        peer: &Peer,
        r: &mut SignRequest,
        at: Times,
    ) -> Result<(jws::Signed, String), Refused> {
        self.refuse_on_store_fault()?;
        self.refuse_in_reserve(peer)?;
        refuse_reserved(&r.claims)?;
        self.apply_policy(peer, &mut r.claims)?;
        let policy = self.policy();
        let ttl = ttl_for(peer, &policy, r.ttl)?;
        if !self.take_token(peer) {
            return Err((
                Code::RateLimited,
                "this client signs faster than its policy's sign_rate allows; retry later".into(),
            ));
        }
        let keys = self.manager.keyring.snapshot();
        if let Some(bound) = keys.max_token_ttl
            && ttl as i64 > bound
        {
            return Err((
                Code::TtlTooLong,
                format!("ttl {ttl}s exceeds the cluster's max_token_ttl {bound}s"),
            ));
        }
        let Some(signer) = keys.signer_at(at.keys) else {
            let why = match self.manager.cluster().and_then(|c| c.unreachable()) {
                // The key's signing period ended and its successor could
                // not be stored: never sign past `deactivate_at`.
                Some(why) => format!(
                    "no key may sign now: the next key cannot be stored while PostgreSQL is \
                     unreachable ({why})"
                ),
                None => "no key may sign now".into(),
            };
            return Err((Code::Unavailable, why));
        };
        let s = jws::sign(
            signer,
            &policy,
            &r.claims,
            Some(ttl),
            at.wall,
            r.fingerprint.as_deref(),
        )
        .map_err(sign_refusal)?;
        Ok((s, signer.kid.clone()))
    }

    /// Fail closed when the stores changed under the daemon (no token may
    /// leave whose audit record would not reach the configured database,
    /// and the keys are no longer backed by their stores), or when the
    /// cluster's owner removed this node.
    fn refuse_on_store_fault(&self) -> Result<(), Refused> {
        match self.manager.fault() {
            None => Ok(()),
            Some(why) => Err((Code::Unavailable, format!("not signing: {why}"))),
        }
    }

    /// The client's policy: allowed claim names, forced claims, `sub` from
    /// the peer's user name, allowed audiences.
    fn apply_policy(&self, peer: &Peer, claims: &mut Map<String, Value>) -> Result<(), Refused> {
        let client = &peer.policy;
        let name = if client.sub_from_peer() {
            self.access().user_name(peer.uid)
        } else {
            String::new()
        };
        client.apply(claims, &name).map_err(|r| match r {
            Denial::Claim(c) => (
                Code::ForbiddenClaim,
                format!("claim {:?} is not allowed for this client", truncate(&c)),
            ),
            Denial::Audience => (
                Code::ForbiddenClaim,
                "this `aud` is not allowed for this client".into(),
            ),
            Denial::Op(op) => (Code::Forbidden, format!("op {op:?} is not allowed")),
        })
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
}

/// Reserved claims first: a client never learns more from a policy refusal
/// than from this one.
fn refuse_reserved(claims: &Map<String, Value>) -> Result<(), Refused> {
    match claims
        .keys()
        .find(|k| protocol::RESERVED_CLAIMS.contains(&k.as_str()))
    {
        None => Ok(()),
        Some(name) => Err((
            Code::ReservedClaim,
            format!("claim {name:?} is set by the daemon"),
        )),
    }
}

/// The TTL asked for, or the default, within the client's and the global
/// `max_ttl`.
fn ttl_for(peer: &Peer, policy: &Policy, asked: Option<u64>) -> Result<u64, Refused> {
    let max = peer
        .policy
        .max_ttl
        .map_or(policy.max_ttl, |m| m.min(policy.max_ttl));
    let ttl = asked.unwrap_or(policy.default_ttl.min(max));
    if ttl > max {
        return Err((
            Code::TtlTooLong,
            format!("ttl {ttl}s exceeds this client's max_ttl {max}s"),
        ));
    }
    Ok(ttl)
}

fn sign_refusal(e: SignError) -> Refused {
    match e {
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
    }
}
