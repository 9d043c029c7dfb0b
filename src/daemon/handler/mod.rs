//! `handler` answers one request with the daemon's `state`: [`parse`]
//! reads the line and checks the op against the peer's policy, once;
//! [`handle`] then runs the op to its end with the code of its op: `sign`
//! (waiting for a key after a clock jump), `verify`, `status` (with
//! `jwks` and `metrics`), `admin` (rotate, reshare, revoke, audit_prune,
//! on the key manager or the audit writer) and `reload` (also SIGHUP's).
//! It produces the audit records of what it did: an issued token's for the
//! connection to commit before the reply leaves; refusals counted in
//! aggregate.

pub mod admin;
pub mod reload;
mod sign;
mod status;
mod verify;

use std::time::Instant;

use serde_json::Value;

use super::access::Denial;
use super::state::{Peer, State};
use crate::clock::wall_now;
use crate::protocol::{self, Code, Failure, Op, Request};
use crate::store::audit_log::Record;

/// The result of handling one request.
pub enum Handled {
    /// The response is in `out`.
    Reply,
    /// The response in `out` carries a signed token, which must not leave
    /// before its audit record is committed; `id` is the request's id.
    Token { id: Option<Value> },
}

impl Handled {
    /// The request id of a token reply, for the batch to hold it until its
    /// record is committed; `None` for any other reply.
    pub fn token_id(self) -> Option<Option<Value>> {
        match self {
            Handled::Reply => None,
            Handled::Token { id } => Some(id),
        }
    }
}

/// A request line, parsed and allowed by the peer's policy, with when its
/// handling began.
pub struct Parsed {
    req: Request,
    started: Instant,
}

impl Parsed {
    /// A `revoke`: the connection stores pipelined ones together (see
    /// [`admin::run_revokes`]).
    pub fn is_revoke(&self) -> bool {
        matches!(self.req.op, Op::Revoke(_))
    }

    /// Whether answering it may wait, so that revokes held before it are
    /// stored first: an admin op, or a sign (which waits for a key when the
    /// clock jumped past the active key's period). Decided by the op alone:
    /// a check of the keys here could differ from `handle`'s a moment
    /// later, and leave the revokes unstored through the wait.
    pub fn waits(&self) -> bool {
        matches!(self.req.op, Op::Sign(_)) || self.req.op.is_admin()
    }

    pub fn into_request(self) -> Request {
        self.req
    }
}

/// The two clocks of a request: tokens and records carry the wall clock;
/// which key signs, and which verify, follow the lifecycle clock (see
/// `crate::clock::Clock`).
#[derive(Debug, Clone, Copy)]
struct Times {
    wall: i64,
    keys: i64,
}

impl Times {
    fn now(st: &State) -> Times {
        Times {
            wall: wall_now(),
            keys: st.manager.clock.now(),
        }
    }
}

/// Parse one request line and check its op against the peer's policy.
/// `None`: the refusal is answered in `out`.
pub fn parse(st: &State, line: &[u8], peer: &Peer, out: &mut Vec<u8>) -> Option<Parsed> {
    let started = Instant::now();
    let req = match protocol::parse_request(line) {
        Ok(r) => r,
        Err(f) => {
            st.metrics.refused("request", f.code.as_str());
            protocol::write_error(out, &f);
            return None;
        }
    };
    allowed(st, &req, peer, out).then_some(Parsed { req, started })
}

/// Answer a parsed request into `out`, to its end (an admin op, a wait
/// for a key), adding the records that must be committed before the reply
/// leaves to `audit`.
pub async fn handle(
    st: &State,
    parsed: Parsed,
    peer: &Peer,
    out: &mut Vec<u8>,
    audit: &mut Vec<Record>,
) -> Handled {
    let Parsed { req, mut started } = parsed;
    let mut at = Times::now(st);
    let id = req.id;
    let name = req.op.name();
    let handled = match req.op {
        Op::Ping => {
            protocol::write_ok(out, id.as_ref(), protocol::PingOk { pong: true });
            Handled::Reply
        }
        Op::Sign(r) => {
            if sign::must_await_key(st, at) {
                // Timed from the end of the wait, as the request it
                // answers then.
                sign::await_key(st).await;
                started = Instant::now();
                at = Times::now(st);
            }
            sign::answer_sign(st, id, r, peer, at, out, audit)
        }
        Op::Verify(r) => {
            verify::answer_verify(st, id, r, peer, at, out);
            Handled::Reply
        }
        Op::Jwks => {
            status::answer_jwks(st, id, out);
            Handled::Reply
        }
        Op::Status => {
            status::answer_status(st, id, at, out);
            Handled::Reply
        }
        Op::Metrics => {
            status::answer_metrics(st, id, out);
            Handled::Reply
        }
        // Not timed, as before: an admin op waits for the stores.
        op => {
            admin::run_admin(st, Request { id, op }, peer, out, audit).await;
            return Handled::Reply;
        }
    };
    st.metrics.request_took(name, started.elapsed());
    handled
}

/// Whether the peer's policy allows the op; if not, the refusal is
/// answered, counted and (at most once a second) logged.
fn allowed(st: &State, req: &Request, peer: &Peer, out: &mut Vec<u8>) -> bool {
    let Err(Denial::Op(op)) = peer.policy.allows(&req.op) else {
        return true;
    };
    st.log_refusal(
        peer.uid,
        &format!("op {op:?} refused by policy {:?}", peer.policy.name),
    );
    st.tally_refusal(
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

/// The audit record of `peer`'s `op`, done at `now`.
fn record(peer: &Peer, op: &'static str, now: i64) -> Record {
    Record {
        at: now,
        uid: Some(peer.uid),
        pid: peer.pid,
        op,
        result: "ok",
        ..Record::default()
    }
}

/// A name from a request, made safe for a message.
fn truncate(s: &str) -> String {
    s.chars().take(64).filter(|c| !c.is_control()).collect()
}
