//! `admin`: the admin ops, run on a blocking thread against the key
//! manager (rotate, reshare, revoke) or on the audit writer (audit_prune).
//! Each gets its own audit record.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::record;
use crate::clock::wall_now;
use crate::daemon::key_manager::Rotated;
use crate::daemon::state::{Peer, State};
use crate::error::Error;
use crate::protocol::{self, Code, Failure, Op, Request};
use crate::store::Revocation;
use crate::store::audit_log::Record;

#[derive(Serialize)]
struct RotateOk<'a> {
    kid: &'a str,
    previous: Option<&'a str>,
    emergency: bool,
    /// When the new key signs (a cluster: a moment after now).
    activate_at: i64,
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
struct ReloadOk {
    reloaded: bool,
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

/// Run an admin op and append its response; its record goes to the
/// batch (committed before the reply leaves).
pub(super) async fn run_admin(
    st: &State,
    req: Request,
    peer: &Peer,
    out: &mut Vec<u8>,
    audit: &mut Vec<Record>,
) {
    let name = req.op.name().as_str();
    tracing::info!(uid = peer.uid, pid = peer.pid, op = name, "admin op");
    if let Op::AuditPrune { before } = req.op {
        // The writer records the prune itself, once it is done.
        return prune_audit(st, req.id, before, peer, out).await;
    }
    let result = match req.op {
        // A reload reads the config file (briefly blocking).
        Op::Reload => tokio::task::block_in_place(|| super::reload::reload(st, "the reload op"))
            .map(|()| Admin::Reloaded),
        op => on_key_manager(st, op).await,
    };
    answer_admin(st, name, req.id, result, peer, out, audit);
}

/// Revoke requests that came pipelined, one after another: stored in
/// one transaction (one fsync), each answered on its own, in order.
pub async fn run_revokes(
    st: &State,
    reqs: Vec<Request>,
    peer: &Peer,
    out: &mut Vec<u8>,
    audit: &mut Vec<Record>,
) {
    tracing::info!(
        uid = peer.uid,
        pid = peer.pid,
        op = "revoke",
        request_count = reqs.len(),
        "admin op"
    );
    let mut ids = Vec::with_capacity(reqs.len());
    let mut targets = Vec::with_capacity(reqs.len());
    for r in reqs {
        let Op::Revoke(t) = r.op else {
            unreachable!("only revokes are batched")
        };
        ids.push(r.id);
        targets.push(t);
    }
    let manager = Arc::clone(&st.manager);
    let policy = st.rules();
    let n = targets.len();
    let results = tokio::task::spawn_blocking(move || manager.revoke_many(targets, &policy))
        .await
        .unwrap_or_else(|_| {
            (0..n)
                .map(|_| Err(Error::KeyStore("the admin op panicked".into())))
                .collect()
        });
    for (id, result) in ids.into_iter().zip(results) {
        answer_admin(
            st,
            "revoke",
            id,
            result.map(Admin::Revoked),
            peer,
            out,
            audit,
        );
    }
}

/// Append the reply to an admin op and its record.
fn answer_admin(
    st: &State,
    name: &'static str,
    id: Option<Value>,
    result: Result<Admin, Error>,
    peer: &Peer,
    out: &mut Vec<u8>,
    audit: &mut Vec<Record>,
) {
    let mut rec = record(peer, name, wall_now());
    match result {
        Ok(done) => write_done(&done, id.as_ref(), &mut rec, out),
        Err(e) => {
            // With its causes: "writing file share …: No space left on
            // device", not just the step.
            let message = crate::error::chain(&e);
            tracing::error!(error = %message, op = name, "admin op failed");
            let code = match e {
                Error::Usage(_)
                | Error::Setting { .. }
                | Error::Config { .. }
                | Error::ReadConfig { .. } => Code::Refused,
                // Nothing was stored: try again once it is back.
                Error::PostgresUnreachable { .. } => Code::Unavailable,
                _ => Code::Internal,
            };
            rec.result = code.as_str();
            st.metrics.refused(name, code.as_str());
            protocol::write_error(out, &Failure::new(id, code, message));
        }
    }
    audit.push(rec);
}

/// A key change, on a blocking thread (it writes to the stores).
async fn on_key_manager(st: &State, op: Op) -> Result<Admin, Error> {
    let manager = Arc::clone(&st.manager);
    let policy = st.rules();
    tokio::task::spawn_blocking(move || match op {
        Op::Rotate { emergency } => manager
            .rotate(emergency)
            .map(|r| Admin::Rotated(r, emergency)),
        Op::Reshare => manager.reshare().map(Admin::Reshared),
        Op::Revoke(target) => manager.revoke(target, &policy).map(Admin::Revoked),
        _ => unreachable!("only key changes run on the key manager"),
    })
    .await
    .unwrap_or_else(|_| Err(Error::KeyStore("the admin op panicked".into())))
}

/// `audit_prune`: prune the audit log before `before`, on the writer.
async fn prune_audit(st: &State, id: Option<Value>, before: i64, peer: &Peer, out: &mut Vec<u8>) {
    let Some(audit) = &st.audit else {
        protocol::write_error(
            out,
            &Failure::new(id, Code::Refused, "the audit log is off (audit = false)"),
        );
        return;
    };
    let by = record(peer, "audit_prune", wall_now());
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

enum Admin {
    /// With whether it was an emergency rotation.
    Rotated(Rotated, bool),
    Reshared(Vec<(String, u32)>),
    Revoked(Revocation),
    Reloaded,
}

/// The reply to a key change that was done, and what its record names.
fn write_done(done: &Admin, id: Option<&Value>, rec: &mut Record, out: &mut Vec<u8>) {
    match done {
        Admin::Rotated(r, emergency) => {
            rec.kid = Some(r.kid.clone());
            protocol::write_ok(
                out,
                id,
                RotateOk {
                    kid: &r.kid,
                    previous: r.previous.as_deref(),
                    emergency: *emergency,
                    activate_at: r.activate_at,
                },
            )
        }
        Admin::Reloaded => protocol::write_ok(out, id, ReloadOk { reloaded: true }),
        Admin::Reshared(keys) => protocol::write_ok(
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
        Admin::Revoked(r) => {
            let (kind, value, until) = match r {
                Revocation::Jti { jti, expires_at } => ("jti", jti, *expires_at),
                Revocation::Sub {
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
    }
}
