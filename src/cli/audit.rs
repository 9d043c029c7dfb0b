//! `audit`: list the audit log, check its chain, prune it.

use serde_json::{Map, Value};

use super::output::{CommandError, parse_time, rfc3339};
use super::{AuditArgs, Ctx};
use crate::config::Config;
use crate::error::{Error, exit};
use crate::store::Stores;

pub fn run(cx: &Ctx, a: AuditArgs) -> Result<(), CommandError> {
    match a.prune_before {
        Some(time) => prune_audit(cx, &time),
        None => audit(cx.offline()?, a.verify, a.from, a.limit, a.json),
    }
}

fn audit(
    cfg: &Config,
    verify: bool,
    from: i64,
    limit: i64,
    json: bool,
) -> Result<(), CommandError> {
    let database = crate::store::Database::open_read_only(&cfg.paths.db, cfg.tokens.alg.legacy())?;
    let conn = database.connection();
    let db_err = Error::database(&cfg.paths.db);
    if verify {
        return match crate::store::audit_log::verify(conn).map_err(db_err)? {
            crate::store::audit_log::Verdict::Intact {
                records,
                head,
                anchor,
            } => {
                match anchor {
                    None => println!("audit log intact: {records} records; head {head}"),
                    Some(a) => println!(
                        "audit log intact: {records} records from record {}, chained from the \
                         pruning anchor (record {} and the {} before it were pruned, the last \
                         prune removed records before {}); head {head}",
                        a.seq + 1,
                        a.seq,
                        a.pruned - 1,
                        rfc3339(a.pruned_before)
                    ),
                }
                Ok(())
            }
            crate::store::audit_log::Verdict::Broken { seq, reason } => Err(CommandError {
                code: exit::KEY_STORE,
                message: format!("audit log broken at record {seq}: {reason}"),
            }),
        };
    }
    let rows = crate::store::audit_log::list(conn, from, limit).map_err(db_err)?;
    for r in rows {
        if json {
            println!("{}", serde_json::to_string(&r).expect("JSON serializes"));
        } else {
            // Fields came from clients: no control characters reach the
            // terminal.
            let shown = |v: Option<&str>| -> String {
                v.map_or("-".into(), |v| {
                    v.chars()
                        .map(|c| if c.is_control() { '?' } else { c })
                        .collect()
                })
            };
            println!(
                "{:>6} {} uid={} pid={} {:<8} {:<14} x{} kid={} sub={} jti={}",
                r.seq,
                rfc3339(r.at),
                r.uid.map(|u| u.to_string()).unwrap_or("-".into()),
                r.pid.map(|u| u.to_string()).unwrap_or("-".into()),
                shown(Some(&r.op)),
                shown(Some(&r.result)),
                r.count,
                shown(r.kid.as_deref()),
                shown(r.sub.as_deref()),
                shown(r.jti.as_deref()),
            );
        }
    }
    Ok(())
}

/// `audit --prune-before TIME`: through the daemon (admin op) or offline.
fn prune_audit(cx: &Ctx, time: &str) -> Result<(), CommandError> {
    let before = parse_time(time)?;
    let pruned = match cx.daemon() {
        Ok(mut c) => {
            let mut f = Map::new();
            f.insert("before".into(), before.into());
            let r = c.call("audit_prune", f)?;
            r.get("pruned").and_then(Value::as_u64).unwrap_or(0) as usize
        }
        Err(e) if e.no_daemon() => {
            let mut stores = Stores::open(cx.offline()?, false)?;
            let n = stores.local.prune_audit(before)?;
            stores.local.audit(&[crate::store::audit_log::Record {
                at: crate::clock::wall_now(),
                uid: Some(rustix::process::getuid().as_raw()),
                pid: Some(std::process::id() as i32),
                op: "audit_prune",
                result: "ok",
                ..Default::default()
            }])?;
            n
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "pruned {pruned} audit records older than {}; `splitsign audit --verify` checks the rest \
         from the pruning anchor",
        rfc3339(before)
    );
    Ok(())
}
