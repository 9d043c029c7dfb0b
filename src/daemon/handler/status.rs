//! `status` and `jwks`: what the daemon holds, for operators and
//! verifiers.

use serde::Serialize;
use serde_json::Value;

use super::Times;
use crate::daemon::state::State;
use crate::protocol;

#[derive(Serialize)]
struct KeyStatus<'a> {
    kid: &'a str,
    /// In a cluster: the node whose key it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    state: &'static str,
    alg: &'static str,
    /// This node's keys that it holds: how the file share is kept (`none`,
    /// or `tpm2 <storage root key Name>` when sealed to the TPM).
    #[serde(skip_serializing_if = "Option::is_none")]
    file_share: Option<String>,
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
    /// Why the daemon does not sign: its stores changed under it, or the
    /// cluster's owner removed this node.
    store_fault: Option<String>,
    audit: AuditStatus,
    connections: usize,
    next_transition: Option<i64>,
    /// In a cluster (PostgreSQL): this node and the database's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterStatus<'a>>,
    keys: Vec<KeyStatus<'a>>,
}

#[derive(Serialize)]
struct ClusterStatus<'a> {
    node: &'a str,
    /// `ok`, or `unreachable`: signing goes on with the keys held, verify
    /// uses the keys and revocations last read.
    database: &'static str,
    reason: Option<String>,
    /// The active members, this one included.
    nodes: usize,
    /// Revoked token ids and subjects in force.
    revoked_jti: usize,
    revoked_sub: usize,
    /// The owner's bounds (none before the first read).
    bounds: Option<crate::store::membership::Bounds>,
    /// Key rows of other nodes skipped at the last read, and why.
    skipped_keys: Vec<crate::store::membership::Skipped>,
    /// When this node last found the database gone back (a restored
    /// dump); revocations it had seen stayed in force.
    database_went_back: Option<crate::daemon::cluster::WentBack>,
}

#[derive(Serialize)]
struct AuditStatus {
    /// `ok`, `failing` (signing fails closed) or `off`.
    state: &'static str,
    failing_since: Option<i64>,
    /// The database with its WAL, and the free space on its filesystem
    /// (with the audit log on: plus the pages the database freed, which it
    /// reuses before it grows; as of the writer's last check).
    db_bytes: Option<u64>,
    free_bytes: Option<u64>,
    /// The reserve (`audit_keep_free`) in bytes, and whether the free
    /// space is below it (only admins sign).
    keep_free_bytes: Option<u64>,
    reserve_in_use: bool,
}

#[derive(Serialize)]
struct StatusOk<'a> {
    status: StatusBody<'a>,
}

#[derive(Serialize)]
struct MetricsOk {
    metrics: String,
}

pub(super) fn answer_metrics(st: &State, id: Option<Value>, out: &mut Vec<u8>) {
    protocol::write_ok(
        out,
        id.as_ref(),
        MetricsOk {
            metrics: st.metrics_text(),
        },
    );
}

pub(super) fn answer_jwks(st: &State, id: Option<Value>, out: &mut Vec<u8>) {
    let keys = st.manager.keyring.snapshot();
    protocol::write_ok(out, id.as_ref(), protocol::JwksOk { jwks: &keys.jwks });
}

pub(super) fn answer_status(st: &State, id: Option<Value>, at: Times, out: &mut Vec<u8>) {
    let keys = st.manager.keyring.snapshot();
    let policy = st.rules();
    let rows = keys.own_rows();
    let own_node = st.manager.cluster().map(|c| c.node());
    let cluster = st.manager.cluster().map(|c| {
        let reason = c.unreachable();
        let (revoked_jti, revoked_sub) = st.manager.revocations().len();
        let view = c.view();
        ClusterStatus {
            node: c.node(),
            database: if reason.is_some() {
                "unreachable"
            } else {
                "ok"
            },
            reason,
            nodes: c.nodes(),
            revoked_jti,
            revoked_sub,
            bounds: view.bounds,
            skipped_keys: view.skipped.clone(),
            database_went_back: c.went_back(),
        }
    });
    let seals = st.manager.file_share_seals();
    let body = StatusBody {
        version: env!("CARGO_PKG_VERSION"),
        issuer: &policy.issuer,
        alg: policy.alg.as_str(),
        deployment: st.manager.deployment(),
        active_kid: keys.signer_at(at.keys).map(|s| s.kid.as_str()),
        uptime_s: st.started.elapsed().as_secs(),
        now: at.wall,
        clock_behind_s: at.keys - at.wall.min(at.keys),
        store_fault: st.manager.fault(),
        audit: audit_status(st),
        connections: st.admission.counts().0,
        next_transition: crate::keys::schedule::next_event(
            &rows,
            at.keys,
            &st.manager.config().schedule,
        ),
        cluster,
        keys: keys
            .published
            .iter()
            .map(|p| KeyStatus {
                kid: &p.row.kid,
                node: p.node.as_deref().or(own_node),
                state: crate::keys::state(&p.row, at.keys).as_str(),
                alg: p.row.alg.as_str(),
                file_share: seals
                    .iter()
                    .find(|(k, _)| p.node.is_none() && *k == p.row.kid)
                    .map(|(_, to)| to.clone().unwrap_or_else(|| "none".into())),
                origin: p.row.origin.as_str(),
                created_at: p.row.created_at,
                activate_at: p.row.activate_at,
                deactivate_at: p.row.deactivate_at,
                retire_at: p.row.retire_at,
            })
            .collect(),
    };
    protocol::write_ok(out, id.as_ref(), StatusOk { status: body });
}

fn audit_status(st: &State) -> AuditStatus {
    let db = st.manager.db_path();
    let size = |suffix: &str| {
        std::fs::metadata(crate::config::with_suffix(db, suffix))
            .map(|m| m.len())
            .ok()
    };
    let dir = crate::config::dir_of(db);
    let space = st.audit.as_ref().map(|a| a.health().space());
    // With the audit log on, the writer's count (the pages the
    // database freed included), else the filesystem's.
    let free = space.map(|s| s.free_bytes).or_else(|| {
        rustix::fs::statvfs(dir)
            .ok()
            .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
    });
    let (state, failing_since) = match &st.audit {
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
        keep_free_bytes: space.map(|s| s.keep_free_bytes),
        reserve_in_use: space.is_some_and(|s| s.in_reserve),
    }
}
