//! `membership` is what the owner of a cluster decides and every node
//! obeys: which nodes are members (`splitsign_members`), the bounds no node
//! can raise (`splitsign_settings`), and so which rows of other nodes a node
//! trusts. Another node's key row is judged on its own: a bad one is
//! skipped (and reported), never a reason for this node to stop.
//!
//! The owner's commands (`splitsign node add|remove|list|bounds`) are here
//! too; they run with the owner's login, which the tables' triggers and
//! row-level security do not bind.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::keys::KeyInfo;

use super::keystore::{NodeKey, RawKey};
use super::postgres::{KEY_COLUMNS, Postgres, raw_key};

/// A node of the cluster, as the owner listed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub node: String,
    pub active: bool,
    /// Server time (Unix seconds).
    pub added_at: i64,
    pub removed_at: Option<i64>,
    /// Removed at once: none of its keys is trusted any more.
    pub at_once: bool,
}

impl Member {
    /// Why the owner's list refuses this node ("the owner removed it from
    /// the cluster at once at …"), if it was removed.
    pub fn removal(&self) -> Option<String> {
        (!self.active).then(|| {
            format!(
                "the owner removed it from the cluster{} at {}",
                if self.at_once { " at once" } else { "" },
                crate::clock::rfc3339(self.removed_at.unwrap_or(0))
            )
        })
    }
}

/// The owner's bounds (see migrations/postgres/0002_trust.sql).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bounds {
    /// The longest `retire_at - activate_at` of any key, in seconds.
    pub max_key_lifetime: i64,
    /// The longest `exp - iat` of any token, in seconds.
    pub max_token_ttl: i64,
    /// Keys of one node not yet retired.
    pub max_keys: i64,
    /// Revocations of one node: rows, and bytes of their values.
    pub max_revocations: i64,
    pub max_revocation_bytes: i64,
}

/// A row of another node that this node does not use, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub node: String,
    pub kid: String,
    pub reason: String,
}

/// What a node reads of the others: the members, the bounds, and the keys
/// of other nodes it trusts (each judged on its own), with the rows it
/// skipped.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub members: Vec<Member>,
    pub bounds: Bounds,
    pub keys: Vec<NodeKey>,
    pub skipped: Vec<Skipped>,
}

/// What shows that a key row's node holds the key.
#[derive(Debug, Clone, Default)]
pub struct Proof {
    /// A signature by the key over the node and kid.
    pub pop: Option<Vec<u8>>,
    /// The row predates proofs (schema 2 marked it; no node can).
    pub legacy: bool,
}

/// Judge another node's key row on its own: the kid is the thumbprint of
/// the public key, which is a valid Ed25519 point of large order; the node
/// proved that it holds the key; the timestamps are ordered; the lifetime
/// is within the owner's bound.
pub fn judge(
    raw: RawKey,
    db: &str,
    bounds: &Bounds,
    node: &str,
    proof: &Proof,
) -> std::result::Result<KeyInfo, String> {
    let key = raw
        .check(db, crate::config::AlgLabel::EdDSA)
        .map_err(|e| match e {
            Error::KeyRow { reason, .. } => reason,
            e => e.to_string(),
        })?;
    if key.public_key.verifier().is_none() {
        return Err(format!(
            "public key is not a valid {} point",
            key.public_key.key_type().name()
        ));
    }
    let proven = proof
        .pop
        .as_deref()
        .is_some_and(|p| crate::keys::check_possession(&key.public_key, node, &key.kid, p));
    if !proven && !proof.legacy {
        return Err(format!(
            "no proof that node {node} holds this key (a signature by the key over its node and \
             kid)"
        ));
    }
    let lifetime = key.retire_at.saturating_sub(key.activate_at);
    if lifetime > bounds.max_key_lifetime {
        return Err(format!(
            "its lifetime ({lifetime} s from activation to retirement) is over the cluster's \
             max_key_lifetime ({} s)",
            bounds.max_key_lifetime
        ));
    }
    Ok(key)
}

/// Keep at most `max_keys` keys of each node (the latest to activate):
/// rows come ordered by node, then latest activation first.
fn cap_per_node(keys: Vec<NodeKey>, max_keys: i64, skipped: &mut Vec<Skipped>) -> Vec<NodeKey> {
    let mut out: Vec<NodeKey> = Vec::with_capacity(keys.len());
    let mut run = 0i64;
    for k in keys {
        if out.last().is_some_and(|l| l.node == k.node) {
            run += 1;
        } else {
            run = 1;
        }
        if run > max_keys {
            skipped.push(Skipped {
                node: k.node,
                kid: k.key.kid,
                reason: format!("node has more than the cluster's max_keys ({max_keys}) keys"),
            });
        } else {
            out.push(k);
        }
    }
    out
}

/// What `node add` did.
#[derive(Debug, Default)]
pub struct Added {
    pub already: bool,
    /// What could not be done (the owner's own tooling manages roles).
    pub notes: Vec<String>,
}

/// What `node remove` did.
#[derive(Debug, Default)]
pub struct Removed {
    pub already: bool,
    pub shares_destroyed: u64,
    pub sessions_ended: i64,
    /// Steps that could not be done (the owner's own tooling manages
    /// roles): the node may still connect, or holds sessions.
    pub not_done: Vec<String>,
    /// What else to know.
    pub notes: Vec<String>,
}

/// One member, for `node list`.
#[derive(Debug, Clone, Serialize)]
pub struct MemberUsage {
    #[serde(flatten)]
    pub member: Member,
    /// Keys not yet retired.
    pub keys: i64,
    pub revocations: i64,
    pub revocation_bytes: i64,
    /// Whether its role may log in and connect to this database (None: no
    /// such role).
    pub can_login: Option<bool>,
}

/// Changes to the bounds (`node bounds --max-…`).
#[derive(Debug, Default, Clone, Copy)]
pub struct BoundsChange {
    pub max_key_lifetime: Option<i64>,
    pub max_token_ttl: Option<i64>,
    pub max_keys: Option<i64>,
    pub max_revocations: Option<i64>,
    pub max_revocation_bytes: Option<i64>,
}

/// A node's connections at most (its daemon holds three; offline commands
/// one each): one node cannot take the server's every connection.
pub const CONNECTION_LIMIT: i32 = 8;

/// Every member, in name order.
async fn read_members(
    c: &tokio_postgres::Client,
) -> std::result::Result<Vec<Member>, tokio_postgres::Error> {
    let rows = c
        .query(
            &format!("SELECT {MEMBER_COLUMNS} FROM splitsign_members ORDER BY node"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(member).collect())
}

/// The owner's bounds.
async fn read_bounds(
    c: &impl tokio_postgres::GenericClient,
) -> std::result::Result<Bounds, tokio_postgres::Error> {
    let r = c
        .query_one(
            &format!("SELECT {BOUNDS_COLUMNS} FROM splitsign_settings"),
            &[],
        )
        .await?;
    Ok(bounds(&r))
}

fn member(r: &tokio_postgres::Row) -> Member {
    Member {
        node: r.get(0),
        active: r.get(1),
        added_at: r.get(2),
        removed_at: r.get(3),
        at_once: r.get(4),
    }
}

const MEMBER_COLUMNS: &str = "node, active, added_at, removed_at, at_once";

fn bounds(r: &tokio_postgres::Row) -> Bounds {
    Bounds {
        max_key_lifetime: r.get(0),
        max_token_ttl: r.get(1),
        max_keys: i64::from(r.get::<_, i32>(2)),
        max_revocations: r.get(3),
        max_revocation_bytes: r.get(4),
    }
}

const BOUNDS_COLUMNS: &str =
    "max_key_lifetime, max_token_ttl, max_keys, max_revocations, max_revocation_bytes";

/// A role name quoted for SQL (`valid_node` names only reach here).
fn quoted(role: &str) -> String {
    format!("\"{}\"", role.replace('"', "\"\""))
}

fn check_name(node: &str) -> Result<()> {
    if crate::config::valid_node(node) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{node:?} is not a node name: 1 to 63 letters, digits, '_', '.' or '-'"
        )))
    }
}

impl Postgres {
    /// The members, in name order.
    pub fn members(&self) -> Result<Vec<Member>> {
        self.with("reading the members", async |c| read_members(c).await)
    }

    /// The owner's bounds.
    pub fn bounds(&self) -> Result<Bounds> {
        self.with("reading the cluster's bounds", async |c| {
            read_bounds(&*c).await
        })
    }

    /// Refuse to work as a node the owner has not added, or removed.
    pub(super) fn check_member(&self) -> Result<()> {
        let me = self.members()?.into_iter().find(|m| m.node == self.node());
        let reason = match me {
            Some(m) => match m.removal() {
                None => return Ok(()),
                Some(why) => format!(
                    "{why} (`splitsign node list`); it signs nothing more. A host comes back as \
                     a new node, under a new name"
                ),
            },
            None => format!(
                "it is not a member of the cluster: the owner adds it with `splitsign node add {}`",
                self.node()
            ),
        };
        Err(Error::NodeRefused {
            node: self.node().to_owned(),
            reason,
        })
    }

    /// The members, the bounds, and the keys of other nodes this node
    /// trusts at `now`: of active members, and of members removed without
    /// `--at-once` the keys they recorded before their removal; not
    /// retired; each row judged on its own.
    pub fn view(&self, now: i64) -> Result<ClusterView> {
        let node = self.node().to_owned();
        let (members, b, rows) = self.with("reading the other nodes' keys", async |c| {
            let members = read_members(c).await?;
            let b = read_bounds(&*c).await?;
            let rows = c
                .query(
                    &format!(
                        "SELECT {KEY_COLUMNS}, k.node, k.pop, k.legacy FROM splitsign_keys k
                             JOIN splitsign_members m ON m.node = k.node
                             WHERE k.node <> $1 AND k.verified AND k.retire_at > $2
                               AND (m.active OR (NOT m.at_once AND
                                    pg_visible_in_snapshot(k.recorded_xid, m.removed_snapshot)))
                             ORDER BY k.node, k.activate_at DESC, k.kid"
                    ),
                    &[&node, &now],
                )
                .await?;
            Ok((members, b, rows))
        })?;
        let db = self.describe();
        let mut skipped = Vec::new();
        let mut keys = Vec::with_capacity(rows.len());
        for r in &rows {
            let node: String = r.get(11);
            let proof = Proof {
                pop: r.get(12),
                legacy: r.get(13),
            };
            let raw = raw_key(r);
            let kid = crate::store::keystore::printable(&raw.kid);
            match judge(raw, &db, &b, &node, &proof) {
                Ok(key) => keys.push(NodeKey { node, key }),
                Err(reason) => skipped.push(Skipped { node, kid, reason }),
            }
        }
        let keys = cap_per_node(keys, b.max_keys, &mut skipped);
        Ok(ClusterView {
            members,
            bounds: b,
            keys,
            skipped,
        })
    }

    /// `node add`: let `node`'s role use the tables (the rights of
    /// migrations/postgres/0002_trust.sql's `splitsign_grant`), list it as
    /// an active member, and cap its connections. The owner runs it.
    pub fn add_member(&self, node: &str) -> Result<Added> {
        check_name(node)?;
        let node = node.to_owned();
        let done = self.with("adding a node", async |c| {
            let tx = c.transaction().await?;
            let role = tx
                .query_opt(
                    "SELECT rolsuper OR rolbypassrls,
                            pg_has_role(rolname, (SELECT relowner FROM pg_class
                                                  WHERE oid = 'splitsign_keys'::regclass), 'MEMBER')
                     FROM pg_roles WHERE rolname = $1",
                    &[&node],
                )
                .await?;
            let Some(role) = role else {
                return Ok(Err(format!(
                    "there is no role {node:?}: create it first (CREATE ROLE {} LOGIN PASSWORD \
                     '…'), named like the node",
                    quoted(&node)
                )));
            };
            if role.get::<_, bool>(0) || role.get::<_, bool>(1) {
                return Ok(Err(format!(
                    "role {node:?} is a superuser, bypasses row-level security, or is (a member \
                     of) the tables' owner: a node's role must be bound by the policies"
                )));
            }
            let was = tx
                .query_opt(
                    "SELECT active FROM splitsign_members WHERE node = $1",
                    &[&node],
                )
                .await?
                .map(|r| r.get::<_, bool>(0));
            if was == Some(false) {
                return Ok(Err(format!(
                    "node {node:?} was removed from the cluster, and a removed node does not \
                     come back: add the host as a new node, under a new name and role"
                )));
            }
            tx.execute("SELECT splitsign_grant($1)", &[&node]).await?;
            tx.execute(
                "INSERT INTO splitsign_members (node) VALUES ($1) ON CONFLICT (node) DO NOTHING",
                &[&node],
            )
            .await?;
            let mut notes = Vec::new();
            tx.batch_execute("SAVEPOINT connection_limit").await?;
            let limit = format!(
                "ALTER ROLE {} CONNECTION LIMIT {CONNECTION_LIMIT}",
                quoted(&node)
            );
            if let Err(e) = tx.batch_execute(&limit).await {
                tx.batch_execute("ROLLBACK TO SAVEPOINT connection_limit")
                    .await?;
                notes.push(format!(
                    "could not cap the role's connections ({}): run `{limit}` as a role that \
                     may, so that one node cannot take every connection of the server",
                    super::postgres::error_text(&e)
                ));
            }
            tx.commit().await?;
            Ok(Ok(Added {
                already: was == Some(true),
                notes,
            }))
        })?;
        done.map_err(Error::Usage)
    }

    /// `node remove`: in one transaction, mark `node` removed (with
    /// `at_once`: none of its keys is trusted from now on, and its
    /// database shares are destroyed), take its rights away and disable
    /// its login; then end its sessions. What the owner may not do (its
    /// own tooling manages roles) is reported; the node is removed anyway.
    pub fn remove_member(&self, node: &str, at_once: bool) -> Result<Removed> {
        check_name(node)?;
        let node = node.to_owned();
        let done = self.with("removing a node", async |c| {
            let tx = c.transaction().await?;
            let Some(mut out) = mark_removed(&tx, &node, at_once).await? else {
                return Ok(Err(format!(
                    "there is no member {node:?} (`splitsign node list`)"
                )));
            };
            take_rights(&tx, &node, &mut out).await?;
            tx.commit().await?;
            // After the commit (a session ended before it could log in
            // again): end the sessions the node still holds.
            end_sessions(c, &node, &mut out).await;
            if at_once {
                destroy_shares(c, &node, &mut out).await;
            }
            Ok(Ok(out))
        })?;
        done.map_err(Error::Usage)
    }

    /// `node list`: every member with what it holds.
    pub fn member_usage(&self, now: i64) -> Result<Vec<MemberUsage>> {
        self.with("listing the members", async |c| {
            let rows = c
                .query(
                    &format!(
                        "SELECT {MEMBER_COLUMNS},
                            (SELECT count(*) FROM splitsign_keys k
                              WHERE k.node = m.node AND k.verified AND k.retire_at > $1),
                            coalesce(u.rows, 0), coalesce(u.bytes, 0),
                            r.rolcanlogin
                                AND has_database_privilege(r.rolname, current_database(), 'CONNECT')
                         FROM splitsign_members m
                         LEFT JOIN splitsign_revocation_usage u USING (node)
                         LEFT JOIN pg_roles r ON r.rolname = m.node
                         ORDER BY node"
                    ),
                    &[&now],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| MemberUsage {
                    member: member(r),
                    keys: r.get(5),
                    revocations: r.get(6),
                    revocation_bytes: r.get(7),
                    can_login: r.get(8),
                })
                .collect())
        })
    }

    /// `node bounds --…`: change the owner's bounds; returns them.
    pub fn set_bounds(&self, change: BoundsChange) -> Result<Bounds> {
        let cols = [
            ("max_key_lifetime", change.max_key_lifetime),
            ("max_token_ttl", change.max_token_ttl),
            ("max_revocations", change.max_revocations),
            ("max_revocation_bytes", change.max_revocation_bytes),
        ];
        self.with("changing the cluster's bounds", async |c| {
            let tx = c.transaction().await?;
            for (col, v) in cols {
                if let Some(v) = v {
                    tx.execute(&format!("UPDATE splitsign_settings SET {col} = $1"), &[&v])
                        .await?;
                }
            }
            if let Some(v) = change.max_keys {
                let v = i32::try_from(v).unwrap_or(i32::MAX);
                tx.execute("UPDATE splitsign_settings SET max_keys = $1", &[&v])
                    .await?;
            }
            let b = read_bounds(&tx).await?;
            tx.commit().await?;
            Ok(b)
        })
    }
}

/// The first step of `node remove`, in its transaction: lock the member's
/// row and mark it removed (or removed at once). `None`: no such member.
async fn mark_removed(
    tx: &tokio_postgres::Transaction<'_>,
    node: &str,
    at_once: bool,
) -> std::result::Result<Option<Removed>, tokio_postgres::Error> {
    let was = tx
        .query_opt(
            "SELECT active, at_once FROM splitsign_members WHERE node = $1 FOR UPDATE",
            &[&node],
        )
        .await?;
    let Some(was) = was else {
        return Ok(None);
    };
    let (active, was_at_once): (bool, bool) = (was.get(0), was.get(1));
    let out = Removed {
        already: !active && (was_at_once || !at_once),
        ..Removed::default()
    };
    if active {
        // What the node had committed by now stays trusted (without
        // --at-once); a transaction it holds open is not.
        tx.execute(
            "UPDATE splitsign_members SET active = false, at_once = $2,
                 removed_at = greatest(added_at, extract(epoch FROM now())::bigint),
                 removed_snapshot = pg_current_snapshot()
             WHERE node = $1",
            &[&node, &at_once],
        )
        .await?;
    } else if at_once && !was_at_once {
        tx.execute(
            "UPDATE splitsign_members SET at_once = true WHERE node = $1",
            &[&node],
        )
        .await?;
    }
    Ok(Some(out))
}

/// The second step of `node remove`, in its transaction: take the node's
/// rights away and disable its login, noting in `out` what could not be
/// done.
async fn take_rights(
    tx: &tokio_postgres::Transaction<'_>,
    node: &str,
    out: &mut Removed,
) -> std::result::Result<(), tokio_postgres::Error> {
    let role_exists = tx
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&node])
        .await?
        .is_some();
    if role_exists {
        // Its rights, and its right to connect to this database.
        tx.execute("SELECT splitsign_revoke($1)", &[&node]).await?;
        tx.batch_execute("SAVEPOINT login").await?;
        let nologin = format!("ALTER ROLE {} NOLOGIN", quoted(node));
        let login = tx.batch_execute(&nologin).await;
        if login.is_err() {
            tx.batch_execute("ROLLBACK TO SAVEPOINT login").await?;
        }
        let may_connect: bool = tx
            .query_one(
                "SELECT rolcanlogin AND has_database_privilege(rolname, \
                        current_database(), 'CONNECT')
                 FROM pg_roles WHERE rolname = $1",
                &[&node],
            )
            .await?
            .get(0);
        match (login, may_connect) {
            (Err(e), true) => out.not_done.push(format!(
                "could not disable the role's login ({}), and it may still connect to \
                 this database: run `{nologin}` with your own tooling. Its rights on the \
                 tables are taken away, and no row it writes is trusted",
                super::postgres::error_text(&e)
            )),
            (Err(e), false) => out.notes.push(format!(
                "could not disable the role's login ({}); it may no longer connect to \
                 this database",
                super::postgres::error_text(&e)
            )),
            (Ok(()), _) => {}
        }
    } else {
        out.notes.push(format!(
            "there is no role {node:?} any more: nothing to disable"
        ));
    }
    Ok(())
}

/// The step of `node remove` after its commit: end the sessions the node
/// still holds, noting in `out` how many or why not.
async fn end_sessions(c: &tokio_postgres::Client, node: &str, out: &mut Removed) {
    match c
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
             FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
            &[&node],
        )
        .await
    {
        Ok(r) => out.sessions_ended = r.get(0),
        Err(e) => out.not_done.push(format!(
            "could not end the sessions the node still holds ({}): they can do nothing \
             but read the list of members, and nothing they commit is trusted; end them \
             with pg_terminate_backend as a role that may",
            super::postgres::error_text(&e)
        )),
    }
}

/// The last step of `node remove --at-once`: destroy the node's database
/// shares, noting in `out` how many or why not.
async fn destroy_shares(c: &tokio_postgres::Client, node: &str, out: &mut Removed) {
    // Apart from the removal, which no lock the node holds on its own rows
    // can hold up (the removal is done either way: none of its keys is
    // trusted). Run it again to retry.
    match c
        .execute("DELETE FROM splitsign_db_shares WHERE node = $1", &[&node])
        .await
    {
        Ok(n) => out.shares_destroyed = n,
        Err(e) => out.not_done.push(format!(
            "could not destroy the node's database shares ({}): none of its keys is \
             trusted any more; run `node remove {node} --at-once` again to retry",
            super::postgres::error_text(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_key_lifetime: 1000,
        max_token_ttl: 100,
        max_keys: 2,
        max_revocations: 10,
        max_revocation_bytes: 100,
    };

    use crate::keys::{KeyType, PublicKey, SecretKey};

    fn raw(public_key: PublicKey, times: [i64; 4]) -> RawKey {
        let alg = match public_key.key_type() {
            KeyType::Ed25519 => "EdDSA",
            KeyType::P256 => "ES256",
        };
        RawKey {
            kid: public_key.thumbprint(),
            public_key: public_key.bytes().to_vec(),
            origin: "generated".into(),
            times,
            share_generation: 1,
            verified: true,
            alg: Some(alg.into()),
            pending_generation: None,
        }
    }

    fn secret(kt: KeyType, seed: u8) -> SecretKey {
        SecretKey::from_secret(kt, &[seed; 32]).unwrap()
    }

    fn good_key(seed: u8) -> PublicKey {
        secret(KeyType::Ed25519, seed).public_key()
    }

    /// The proof that node "a" holds the key of `seed`.
    fn proof(seed: u8) -> Proof {
        proof_of(&secret(KeyType::Ed25519, seed))
    }

    fn proof_of(key: &SecretKey) -> Proof {
        let kid = key.public_key().thumbprint();
        Proof {
            pop: Some(crate::keys::prove_possession(key, "a", &kid).to_vec()),
            legacy: false,
        }
    }

    #[test]
    fn another_nodes_es256_row_is_judged_alike() {
        let key = secret(KeyType::P256, 7);
        let pk = key.public_key();
        let times = [0, 10, 20, 30];
        let ok = judged(raw(pk, times), &proof_of(&key)).unwrap();
        assert_eq!(ok.alg, crate::config::AlgLabel::ES256);
        // Its proof is by the key itself: an Ed25519 key's proof fails.
        let e = judged(raw(pk, times), &proof(7)).unwrap_err();
        assert!(e.contains("no proof"), "{e}");
        // The same row labelled EdDSA: its key is not an Ed25519 one.
        let mut r = raw(pk, times);
        r.alg = Some("EdDSA".into());
        let e = judged(r, &proof_of(&key)).unwrap_err();
        assert!(e.contains("not 32 bytes"), "{e}");
        // A point off the curve, named by its own thumbprint.
        let mut bytes = pk.bytes().to_vec();
        bytes[64] ^= 1;
        let mut r = raw(pk, times);
        r.public_key = bytes;
        let e = judged(r, &proof_of(&key)).unwrap_err();
        assert!(e.contains("not a point on the curve"), "{e}");
    }

    fn judged(r: RawKey, p: &Proof) -> std::result::Result<KeyInfo, String> {
        judge(r, "db", &BOUNDS, "a", p)
    }

    #[test]
    fn another_nodes_row_is_judged_on_its_own() {
        let pk = good_key(1);
        let p = proof(1);
        assert!(judged(raw(pk, [0, 10, 20, 1010]), &p).is_ok());
        // Lifetime over the bound.
        let e = judged(raw(pk, [0, 10, 20, 1011]), &p).unwrap_err();
        assert!(e.contains("max_key_lifetime"), "{e}");
        // Timestamps out of order.
        let e = judged(raw(pk, [0, 30, 20, 40]), &p).unwrap_err();
        assert!(e.contains("out of order"), "{e}");
        // A kid that is not the thumbprint.
        let mut r = raw(pk, [0, 10, 20, 30]);
        r.kid = crate::keys::share_format::thumbprint(&good_key(2));
        let e = judged(r, &p).unwrap_err();
        assert!(e.contains("thumbprint"), "{e}");
        // A small-order point (the identity), whose kid is its thumbprint.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let e = judged(
            raw(PublicKey::Ed25519(identity), [0, 10, 20, 30]),
            &Proof::default(),
        )
        .unwrap_err();
        assert!(e.contains("not a valid Ed25519 point"), "{e}");
    }

    #[test]
    fn another_nodes_key_needs_its_proof_of_possession() {
        let pk = good_key(1);
        let times = [0, 10, 20, 30];
        // None, another key's, the same key's for another node: refused.
        for p in [Proof::default(), proof(2)] {
            let e = judged(raw(pk, times), &p).unwrap_err();
            assert!(e.contains("no proof that node a holds this key"), "{e}");
        }
        let e = judge(raw(pk, times), "db", &BOUNDS, "b", &proof(1)).unwrap_err();
        assert!(e.contains("no proof that node b"), "{e}");
        // Rows from before proofs, marked by the schema: trusted.
        let legacy = Proof {
            pop: None,
            legacy: true,
        };
        assert!(judged(raw(pk, times), &legacy).is_ok());
    }

    #[test]
    fn at_most_max_keys_keys_of_each_node() {
        let key = |node: &str, seed: u8| NodeKey {
            node: node.into(),
            key: judged(raw(good_key(seed), [0, 10, 20, 30]), &proof(seed)).unwrap(),
        };
        let mut skipped = Vec::new();
        let kept = cap_per_node(
            vec![key("a", 1), key("a", 2), key("a", 3), key("b", 4)],
            2,
            &mut skipped,
        );
        let kept: Vec<&str> = kept.iter().map(|k| k.node.as_str()).collect();
        assert_eq!(kept, ["a", "a", "b"]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].node, "a");
    }
}
