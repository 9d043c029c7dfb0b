//! `cluster_cmds`: the commands of a PostgreSQL deployment. `pg-schema` applies
//! the schema (as the tables' owner); `node` lists, adds and removes the
//! members and sets the bounds (as the owner); `migrate-store
//! --to-postgres` moves this host's keys from its SQLite database into
//! PostgreSQL.

use super::output::{CommandError, rfc3339, usage};
use super::{BoundsArgs, Ctx, MigrateStoreArgs, NodeCommand, PgSchemaArgs};
use crate::config::PostgresSettings;
use crate::lifecycle;
use crate::store::membership::{Bounds, BoundsChange};
use crate::store::{LocalStores, Postgres};

fn settings(cx: &Ctx) -> Result<&PostgresSettings, CommandError> {
    cx.cfg.cluster.postgres.as_ref().ok_or_else(|| {
        usage(
            "`postgres` is not set in the config: set it to the cluster's connection string \
             (docs/CLUSTER.md)"
                .into(),
        )
    })
}

/// `pg-schema [--grant ROLE]...`: bring the schema up to date, then let
/// each ROLE (a node's login role, named like the node) use the tables;
/// row-level security limits it to its own node's rows.
pub fn pg_schema(cx: &Ctx, a: PgSchemaArgs) -> Result<(), CommandError> {
    let pg = Postgres::connect(settings(cx)?, &cx.cfg.cluster.node)?;
    let before = pg.schema_version()?;
    let now = pg.migrate().map_err(|e| match e {
        crate::error::Error::Postgres {
            code: Some(c),
            reason,
            ..
        } if c == "55P03" => crate::error::Error::KeyStore(format!(
            "applying the schema: {reason}. Another session holds a lock on the splitsign tables \
             (a node's open transaction?): find it in pg_locks and pg_stat_activity and end it \
             (pg_terminate_backend), or stop the nodes, then run pg-schema again"
        )),
        e => e,
    })?;
    if before == now {
        println!(
            "schema version {now}: up to date ({})",
            pg.describe_server()
        );
    } else {
        println!(
            "applied schema version {now} (was {before}) in {}",
            pg.describe_server()
        );
    }
    for node in &a.grant {
        add(&pg, node)?;
    }
    Ok(())
}

/// `node list|add|remove|bounds`, with the owner's login.
pub fn node(cx: &Ctx, c: NodeCommand) -> Result<(), CommandError> {
    let pg = Postgres::connect(settings(cx)?, &cx.cfg.cluster.node)?;
    let have = pg.schema_version()?;
    if have < 2 {
        return Err(usage(format!(
            "the cluster's schema is version {have}; membership needs version 2: run \
             `splitsign pg-schema` with this config first"
        )));
    }
    match c {
        NodeCommand::List { json } => list(&pg, json),
        NodeCommand::Add { node } => add(&pg, &node),
        NodeCommand::Remove { node, at_once } => remove(&pg, &node, at_once),
        NodeCommand::Bounds(a) => bounds(&pg, a),
    }
}

fn add(pg: &Postgres, node: &str) -> Result<(), CommandError> {
    let added = pg.add_member(node)?;
    if added.already {
        println!("node {node} is already a member; its rights are granted again");
    } else {
        println!(
            "added node {node}: its role may use the splitsign tables (row-level security: it \
             changes only its own rows), and the other nodes trust its keys and revocations"
        );
    }
    for n in &added.notes {
        println!("note: {n}");
    }
    Ok(())
}

fn remove(pg: &Postgres, node: &str, at_once: bool) -> Result<(), CommandError> {
    let r = pg.remove_member(node, at_once)?;
    if r.already {
        println!("node {node} was already removed");
    } else if at_once {
        println!(
            "removed node {node} at once: no node trusts its keys from now on (its tokens are \
             refused within a second); {} database share(s) destroyed",
            r.shares_destroyed
        );
    } else {
        println!(
            "removed node {node}: its keys stay published until their retire_at, then leave \
             every JWKS; it signs nothing more"
        );
    }
    println!(
        "its rights on the tables are taken away; {} session(s) of it ended",
        r.sessions_ended
    );
    for n in &r.notes {
        println!("note: {n}");
    }
    for n in &r.not_done {
        println!("NOT DONE: {n}");
    }
    if !r.not_done.is_empty() {
        println!(
            "node {node} is marked removed: the other nodes trust nothing it writes from now on"
        );
    }
    Ok(())
}

fn list(pg: &Postgres, json: bool) -> Result<(), CommandError> {
    let now = crate::clock::wall_now();
    let members = pg.member_usage(now)?;
    let b = pg.bounds()?;
    if json {
        let v = serde_json::json!({ "members": members, "bounds": b });
        println!("{v:#}");
        return Ok(());
    }
    println!(
        "{:<24} {:<28} {:>4} {:>12} {:>12} LOGIN",
        "NODE", "STATE", "KEYS", "REVOCATIONS", "BYTES"
    );
    for m in &members {
        let state = match (m.member.active, m.member.removed_at) {
            (true, _) => "active".to_owned(),
            (false, at) => format!(
                "removed{} {}",
                if m.member.at_once { " at once" } else { "" },
                rfc3339(at.unwrap_or(0))
            ),
        };
        let login = match m.can_login {
            Some(true) => "yes",
            Some(false) => "no",
            None => "(none)",
        };
        println!(
            "{:<24} {:<28} {:>4} {:>12} {:>12} {}",
            m.member.node, state, m.keys, m.revocations, m.revocation_bytes, login
        );
    }
    print_bounds(&b);
    Ok(())
}

fn print_bounds(b: &Bounds) {
    let d = |s: i64| humantime::format_duration(std::time::Duration::from_secs(s.max(0) as u64));
    println!(
        "bounds: max_key_lifetime {}, max_token_ttl {}, max_keys {} a node, max_revocations {} \
         and max_revocation_bytes {} a node",
        d(b.max_key_lifetime),
        d(b.max_token_ttl),
        b.max_keys,
        b.max_revocations,
        b.max_revocation_bytes
    );
}

fn bounds(pg: &Postgres, a: BoundsArgs) -> Result<(), CommandError> {
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs() as i64);
    let change = BoundsChange {
        max_key_lifetime: secs(a.max_key_lifetime),
        max_token_ttl: secs(a.max_token_ttl),
        max_keys: a.max_keys,
        max_revocations: a.max_revocations,
        max_revocation_bytes: a.max_revocation_bytes,
    };
    let any = [
        change.max_key_lifetime,
        change.max_token_ttl,
        change.max_keys,
        change.max_revocations,
        change.max_revocation_bytes,
    ]
    .iter()
    .any(Option::is_some);
    let b = if any {
        pg.set_bounds(change)?
    } else {
        pg.bounds()?
    };
    if a.json {
        println!("{:#}", serde_json::json!(b));
    } else {
        print_bounds(&b);
    }
    Ok(())
}

/// `migrate-store --to-postgres`: see [`lifecycle::move_to_postgres`].
pub fn migrate_store(cx: &Ctx, a: MigrateStoreArgs) -> Result<(), CommandError> {
    if !a.to_postgres {
        return Err(usage("say where to: --to-postgres".into()));
    }
    let settings = settings(cx)?;
    if !cx.daemon().is_err_and(|e| e.no_daemon()) {
        return Err(usage(
            "a daemon is running on these stores: stop it first (the move is offline)".into(),
        ));
    }
    crate::keys::locked::harden_process()?;
    // Held (with the stores' lock) until the move is done.
    let mut stores = LocalStores::open(cx.offline()?, false)?;
    if let Some((node, store)) = stores.local.moved_to_postgres()? {
        println!("already moved: the keys of this host are in {store} as node {node}");
        return Ok(());
    }
    let pg = Postgres::open(settings, &cx.cfg.cluster.node)?;
    let now = crate::clock::wall_now();
    let m = lifecycle::move_to_postgres(&mut stores.local, &stores.shares, pg, now)?;
    println!(
        "moved {} key(s), {} database share(s) and {} revocation(s) to PostgreSQL as node {} \
         (deployment {}); the kids are unchanged, so issued tokens keep verifying",
        m.keys, m.shares, m.revocations, m.node, m.deployment
    );
    println!(
        "{} now keeps only the audit log; start the daemon with this config",
        cx.cfg.paths.db.display()
    );
    Ok(())
}
