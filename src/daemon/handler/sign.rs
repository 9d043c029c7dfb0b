//! `sign`: the sign path. Store fault → the audit reserve (admins only
//! below it) → reserved claims → the client's
//! policy (claims, audiences, forced claims, `sub` from the peer) → TTL →
//! rate limit → the signing key → the token. An issued token's record goes
//! to the batch (committed before the reply leaves); a refusal is counted.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{Handled, Times, record, truncate};
use crate::config::human_bytes;
use crate::daemon::access::Denial;
use crate::daemon::state::{Peer, State};
use crate::keys::jws::{self, SignError, TokenRules};
use crate::protocol::{self, Code, Failure, SignRequest};
use crate::store::audit_log::Record;

/// How long a sign request that found no key able to sign waits for the
/// key schedule to make one (after a clock jump), before `unavailable`.
const AWAIT_KEY: Duration = Duration::from_secs(2);

type Refused = (Code, String);

/// Whether a sign request finds no key able to sign (the clock jumped past
/// the active key's period and the schedule has not run yet): it waits
/// for one with [`await_key`] first. Nothing was written or recorded.
pub(super) fn must_await_key(st: &State, at: Times) -> bool {
    !st.manager.is_faulted() && st.manager.keyring.snapshot().signer_at(at.keys).is_none()
}

/// Wait (at most [`AWAIT_KEY`]) for a key able to sign, waking the key
/// schedule to create one.
pub(super) async fn await_key(st: &State) {
    let m = &st.manager;
    let changed = m.keys_changed.notified();
    tokio::pin!(changed);
    changed.as_mut().enable();
    if m.keyring.snapshot().signer_at(m.clock.now()).is_some() {
        return;
    }
    m.wake.notify_one();
    let _ = tokio::time::timeout(AWAIT_KEY, changed).await;
}

/// Answer a `sign` (after a wait for a key, if there was one: with no
/// key yet, the refusal says so).
pub(super) fn answer_sign(
    st: &State,
    id: Option<Value>,
    mut r: SignRequest,
    peer: &Peer,
    at: Times,
    out: &mut Vec<u8>,
    audit: &mut Vec<Record>,
) -> Handled {
    let mut rec = record(peer, "sign", at.wall);
    let result = sign(st, peer, &mut r, at);
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
            st.metrics.refused("sign", code.as_str());
            if let Some(a) = &st.audit {
                a.tally(rec);
            }
            protocol::write_error(out, &Failure::new(id, code, msg));
            Handled::Reply
        }
    }
}

/// While the audit log's filesystem is down to its reserve, only
/// admins sign: the rest of the disk is theirs (and the admin ops').
fn refuse_in_reserve(st: &State, peer: &Peer) -> Result<(), Refused> {
    let Some(audit) = &st.audit else {
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
    st: &State,
    peer: &Peer,
    r: &mut SignRequest,
    at: Times,
) -> Result<(jws::Signed, String), Refused> {
    refuse_on_store_fault(st)?;
    refuse_in_reserve(st, peer)?;
    refuse_reserved(&r.claims)?;
    apply_policy(st, peer, &mut r.claims)?;
    let policy = st.rules();
    let ttl = ttl_for(peer, &policy, r.ttl)?;
    if !take_token(st, peer) {
        return Err((
            Code::RateLimited,
            "this client signs faster than its policy's sign_rate allows; retry later".into(),
        ));
    }
    let keys = st.manager.keyring.snapshot();
    if let Some(bound) = keys.max_token_ttl
        && ttl as i64 > bound
    {
        return Err((
            Code::TtlTooLong,
            format!("ttl {ttl}s exceeds the cluster's max_token_ttl {bound}s"),
        ));
    }
    let Some(signer) = keys.signer_at(at.keys) else {
        let why = match st.manager.cluster().and_then(|c| c.unreachable()) {
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
fn refuse_on_store_fault(st: &State) -> Result<(), Refused> {
    match st.manager.fault() {
        None => Ok(()),
        Some(why) => Err((Code::Unavailable, format!("not signing: {why}"))),
    }
}

/// The client's policy: allowed claim names, forced claims, `sub` from
/// the peer's user name, allowed audiences.
fn apply_policy(st: &State, peer: &Peer, claims: &mut Map<String, Value>) -> Result<(), Refused> {
    let client = &peer.policy;
    let name = if client.sub_from_peer() {
        st.access().user_name(peer.uid)
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
fn take_token(st: &State, peer: &Peer) -> bool {
    match peer.policy.sign_rate {
        None => true,
        Some((rate, burst)) => st.sign_rates.take(peer.uid, rate, burst),
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
fn ttl_for(peer: &Peer, policy: &TokenRules, asked: Option<u64>) -> Result<u64, Refused> {
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
