//! `metrics`: what the daemon counts, in the Prometheus text format
//! (0.0.4, which promtool and node_exporter's textfile collector read),
//! from no network listener: the `metrics` op (`splitsign metrics`) and
//! `metrics_file`, rewritten atomically every 15 s.
//!
//! Counters move on the request paths; gauges (connections, keys,
//! revocations, the active key's age) are read when the text is made.
//! Label values are names the daemon knows (policies, kids, ops, codes,
//! uids), never a claim or a token. Connections are labelled by peer uid
//! for the 20 uids that hold the most; the rest are summed as `other`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::audit_writer::{CommitObserver, Space};
use crate::config::AlgLabel;

/// How many peer uids get a connections series of their own.
const MAX_UID_SERIES: usize = 20;

/// How often `metrics_file` is rewritten.
pub const FILE_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    policy: String,
    kid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    op: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlgLabels {
    alg: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SealLabels {
    seal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UidLabels {
    uid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabels {
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type HistogramFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    /// The request histogram of each op (made once, not looked up by
    /// label per request).
    request_by_op: Vec<(crate::protocol::OpName, Histogram)>,
    tokens: Family<TokenLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    verify: Family<OutcomeLabels, Counter>,
    audit_batches: Counter,
    audit_commit_seconds: Histogram,
    connections: Family<UidLabels, Gauge>,
    published_keys: Gauge,
    published_by_alg: Family<AlgLabels, Gauge>,
    file_shares: Family<SealLabels, Gauge>,
    revocations: Family<KindLabels, Gauge>,
    active_key_age: Gauge,
    next_transition: Gauge,
    nodes: Gauge,
    skipped_keys: Gauge,
    cluster_reads: Family<WhatLabels, Counter>,
    notifications: Counter,
    went_back: Counter,
    database_unreachable: Gauge,
    audit_reserve: Gauge,
    audit_free_bytes: Gauge,
    /// Encoding reads the registry; one at a time.
    render: Mutex<()>,
}

impl CommitObserver for Metrics {
    fn committed(&self, took: Duration) {
        self.audit_batches.inc();
        self.audit_commit_seconds.observe(took.as_secs_f64());
    }
}

/// What the gauges show, read when the text is made.
pub struct Now {
    /// Open connections per peer uid.
    pub connections: Vec<(u32, usize)>,
    pub published_keys: usize,
    /// Of `published_keys`, how many carry each `alg` label: every label,
    /// 0 when none.
    pub published_by_alg: Vec<(AlgLabel, usize)>,
    /// The file shares of the keys held: how many are sealed to the TPM,
    /// how many in clear.
    pub file_shares_sealed: usize,
    pub file_shares_clear: usize,
    pub revoked_jti: usize,
    pub revoked_sub: usize,
    /// Seconds since the active key's `activate_at` (none: no active key).
    pub active_key_age: Option<i64>,
    /// Seconds until this node's next key transition.
    pub next_transition_in: Option<i64>,
    /// Nodes of the cluster (1 without one).
    pub nodes: usize,
    /// In a cluster: what the node read of the others.
    pub cluster: Option<ClusterNow>,
    /// The audit log's reserve, as the writer last found it (none with
    /// the audit log off).
    pub audit_space: Option<Space>,
}

/// A cluster node's counts (running totals since start).
pub struct ClusterNow {
    /// Key rows of other nodes skipped at the last read.
    pub skipped_keys: usize,
    pub key_reads: u64,
    pub revocation_reads: u64,
    pub full_reads: u64,
    pub notifications: u64,
    /// How often the database was found to have gone back.
    pub went_back: u64,
    pub unreachable: bool,
}

fn latency_histogram() -> Histogram {
    // 10 µs to ~1.3 s.
    Histogram::new(exponential_buckets(0.000_01, 4.0, 9))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("splitsign"),
            request_by_op: Vec::new(),
            tokens: Family::default(),
            refusals: Family::default(),
            verify: Family::default(),
            audit_batches: Counter::default(),
            audit_commit_seconds: latency_histogram(),
            connections: Family::default(),
            published_keys: Gauge::default(),
            published_by_alg: Family::default(),
            file_shares: Family::default(),
            revocations: Family::default(),
            active_key_age: Gauge::default(),
            next_transition: Gauge::default(),
            nodes: Gauge::default(),
            skipped_keys: Gauge::default(),
            cluster_reads: Family::default(),
            notifications: Counter::default(),
            went_back: Counter::default(),
            database_unreachable: Gauge::default(),
            audit_reserve: Gauge::default(),
            audit_free_bytes: Gauge::default(),
            render: Mutex::new(()),
        };
        // In this order in the text.
        m.register_requests();
        m.register_audit_commits();
        m.register_state();
        m.register_cluster();
        m.register_audit_space();
        m.registry.register(
            "build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        m
    }

    /// Register the request counters and the request histograms (one made
    /// per op up front).
    fn register_requests(&mut self) {
        self.registry.register(
            "tokens_issued",
            "Tokens issued, by client policy and signing key",
            self.tokens.clone(),
        );
        self.registry.register(
            "refusals",
            "Requests and connections refused, by op and error code",
            self.refusals.clone(),
        );
        self.registry.register(
            "verifications",
            "verify results, by outcome (ok or the error code)",
            self.verify.clone(),
        );
        let request_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        self.request_by_op = crate::protocol::OpName::ALL
            .iter()
            .map(|&o| {
                let op = o.as_str();
                (o, request_seconds.get_or_create_owned(&OpLabels { op }))
            })
            .collect();
        self.registry.register_with_unit(
            "request_duration",
            "Time to handle a request, by op (the wait for the audit commit excluded)",
            Unit::Seconds,
            request_seconds.clone(),
        );
    }

    /// Register the audit writer's commit counter and histogram.
    fn register_audit_commits(&mut self) {
        self.registry.register(
            "audit_batches",
            "Audit log batches committed",
            self.audit_batches.clone(),
        );
        self.registry.register_with_unit(
            "audit_commit_duration",
            "Time to commit an audit batch (with its fsync)",
            Unit::Seconds,
            self.audit_commit_seconds.clone(),
        );
    }

    /// Register the gauges of the daemon's state: connections, keys,
    /// revocations, the key schedule.
    fn register_state(&mut self) {
        self.registry.register(
            "connections",
            "Open client connections, by peer uid (the 20 uids with the most; the rest as other)",
            self.connections.clone(),
        );
        self.registry.register(
            "published_keys",
            "Keys in the JWKS (every node's, in a cluster)",
            self.published_keys.clone(),
        );
        self.registry.register(
            "published_keys_by_alg",
            "Keys in the JWKS by their alg label (every label, 0 when none): a migration from \
             one algorithm to another is over when the old label reaches 0",
            self.published_by_alg.clone(),
        );
        self.registry.register(
            "file_shares",
            "File shares of the keys this daemon holds, by how they are kept: sealed to the \
             host's TPM (tpm2) or in clear (none)",
            self.file_shares.clone(),
        );
        self.registry.register(
            "revocations",
            "Revocations in force, by kind (jti or sub)",
            self.revocations.clone(),
        );
        self.registry.register_with_unit(
            "active_key_age",
            "Age of the active key (since its activation); -1 without one",
            Unit::Seconds,
            self.active_key_age.clone(),
        );
        self.registry.register_with_unit(
            "next_transition",
            "Time until this node's next key transition; -1 when none is scheduled",
            Unit::Seconds,
            self.next_transition.clone(),
        );
    }

    /// Register what a cluster node counts of the others and of the
    /// database.
    fn register_cluster(&mut self) {
        self.registry.register(
            "nodes",
            "Active members of the cluster, this node included (1 without a cluster)",
            self.nodes.clone(),
        );
        self.registry.register(
            "cluster_skipped_keys",
            "Key rows of other nodes skipped at the last read (malformed, out of bounds, \
             over max_keys): not published, not trusted",
            self.skipped_keys.clone(),
        );
        self.registry.register(
            "cluster_reads",
            "Reads of what other nodes changed: keys (with members and bounds), revocations \
             (incremental), revocations_full",
            self.cluster_reads.clone(),
        );
        self.registry.register(
            "cluster_notifications",
            "NOTIFYs received (hints only: a flood of forged ones is one read per 100 ms)",
            self.notifications.clone(),
        );
        self.registry.register(
            "cluster_database_went_back",
            "Times the cluster's database was found to have gone back (a restored dump); \
             revocations seen stayed in force",
            self.went_back.clone(),
        );
        self.registry.register(
            "cluster_database_unreachable",
            "1 while PostgreSQL cannot be reached (the node is degraded)",
            self.database_unreachable.clone(),
        );
    }

    /// Register the gauges of the audit log's free space and reserve.
    fn register_audit_space(&mut self) {
        self.registry.register(
            "audit_reserve_in_use",
            "1 while the audit log's filesystem is down to its reserve (audit_keep_free): \
             only admins may sign",
            self.audit_reserve.clone(),
        );
        self.registry.register(
            "audit_free_bytes",
            "Bytes free on the audit log's filesystem, at the audit writer's last check",
            self.audit_free_bytes.clone(),
        );
    }

    /// `n` tokens issued under `policy` with `kid`.
    pub fn tokens_issued(&self, policy: &str, kid: &str, n: u64) {
        self.tokens
            .get_or_create(&TokenLabels {
                policy: policy.to_owned(),
                kid: kid.to_owned(),
            })
            .inc_by(n);
    }

    pub fn refused(&self, op: &'static str, code: &'static str) {
        self.refused_n(op, code, 1);
    }

    pub fn refused_n(&self, op: &'static str, code: &'static str, n: u64) {
        if n > 0 {
            self.refusals
                .get_or_create(&RefusalLabels { op, code })
                .inc_by(n);
        }
    }

    pub fn verified(&self, outcome: &'static str) {
        self.verify.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn request_took(&self, op: crate::protocol::OpName, d: Duration) {
        if let Some((_, h)) = self.request_by_op.iter().find(|(o, _)| *o == op) {
            h.observe(d.as_secs_f64());
        }
    }

    /// The key gauges: published keys, by label, and the file shares by
    /// how they are kept.
    fn set_keys(&self, now: &Now) {
        self.published_keys.set(now.published_keys as i64);
        for (seal, n) in [
            ("tpm2", now.file_shares_sealed),
            ("none", now.file_shares_clear),
        ] {
            self.file_shares
                .get_or_create(&SealLabels { seal })
                .set(n as i64);
        }
        for (alg, n) in &now.published_by_alg {
            self.published_by_alg
                .get_or_create(&AlgLabels { alg: alg.as_str() })
                .set(*n as i64);
        }
    }

    /// The exposition text, with the gauges set from `now`.
    pub fn render(&self, now: Now) -> String {
        let _one = self.render.lock().unwrap_or_else(|p| p.into_inner());
        self.set_keys(&now);
        let mut by_uid = now.connections;
        by_uid.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        self.connections.clear();
        let other: usize = by_uid.iter().skip(MAX_UID_SERIES).map(|(_, n)| n).sum();
        for (uid, n) in by_uid.iter().take(MAX_UID_SERIES) {
            self.connections
                .get_or_create(&UidLabels {
                    uid: uid.to_string(),
                })
                .set(*n as i64);
        }
        if other > 0 {
            self.connections
                .get_or_create(&UidLabels {
                    uid: "other".into(),
                })
                .set(other as i64);
        }
        for (kind, n) in [("jti", now.revoked_jti), ("sub", now.revoked_sub)] {
            self.revocations
                .get_or_create(&KindLabels { kind })
                .set(n as i64);
        }
        self.active_key_age.set(now.active_key_age.unwrap_or(-1));
        self.next_transition
            .set(now.next_transition_in.unwrap_or(-1));
        self.nodes.set(now.nodes as i64);
        if let Some(c) = now.cluster {
            // Running totals kept by the cluster follower, as counters.
            let follow = |counter: &Counter, total: u64| {
                counter.inc_by(total.saturating_sub(counter.get()));
            };
            self.skipped_keys.set(c.skipped_keys as i64);
            for (what, total) in [
                ("keys", c.key_reads),
                (
                    "revocations",
                    c.revocation_reads.saturating_sub(c.full_reads),
                ),
                ("revocations_full", c.full_reads),
            ] {
                follow(
                    &self.cluster_reads.get_or_create(&WhatLabels { what }),
                    total,
                );
            }
            follow(&self.notifications, c.notifications);
            follow(&self.went_back, c.went_back);
            self.database_unreachable.set(i64::from(c.unreachable));
        }
        if let Some(space) = now.audit_space {
            self.audit_reserve.set(i64::from(space.in_reserve));
            self.audit_free_bytes
                .set(i64::try_from(space.free_bytes).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}
